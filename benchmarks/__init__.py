"""Benchmark suite: `python -m benchmarks.run` (see run.py)."""
