"""What every example script shares: its command line (``--device``, ``--epochs``) and the optional plot."""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence


def parse_args(description: str, epochs: int, argv: Sequence[str] | None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """``--device`` (default ``cpu``; e.g. ``cuda``, ``torch:cpu``, ``array_api_strict``) and ``--epochs``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu",
                        help="where to train: cpu, cuda, cuda:N, torch:cpu, array_api_strict, ...")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def pyplot() -> Any:
    """``matplotlib.pyplot`` drawing to files only (Agg), or None after one line saying the plot is skipped."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'backprop-arrays[examples]' to get one)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, name: str) -> str:
    """Write ``figure`` to ``name`` in the current directory and say so."""
    figure.tight_layout()
    figure.savefig(name, dpi=110)
    figure.clf()
    print(f"plot saved to {name}")
    return name
