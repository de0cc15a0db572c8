"""Data-parallel scaling: the speed-up of a training step over one rank, and the share spent communicating.

    mpiexec -n 2 python -m benchmarks.scaling              # 784-1024-1024-10, global batch 512, float32
    mpiexec -n 2 python -m benchmarks.scaling --quick      # tiny sizes, a few seconds (the smoke test)

Every rank runs one BLAS thread (this module sets ``OMP_NUM_THREADS`` and friends to 1 before NumPy loads), so
a rank is one core. Rounds alternate between two candidates, in an order that rotates from round to round:

* ``one rank``: rank 0 alone takes ``--steps`` steps on the whole batch (``loss_and_backward`` then
  ``optimizer.step()``, what single-process ``fit`` does per batch) while the other ranks wait without spinning;
* ``all ranks``: every rank takes ``--steps`` data-parallel steps (`backprop.data_parallel.DataParallel.step`:
  its rows, the weighted gradient packed into one host buffer, one Allreduce, unpacked, the update); the round's
  time is the slowest rank's. Each step's time is split into compute (forward and backward on the rank's rows),
  staging (packing and unpacking the flat buffer), Allreduce (including waiting for the slower rank) and update.

Then the Allreduce of the gradient buffer alone is timed ``--steps`` times per round (a barrier before each).
Speed-up = fastest one-rank step / fastest all-ranks step; the shares split rank 0's own time per step in the
fastest all-ranks round.
Results go to ``benchmarks/results/scaling-<N>ranks.json`` and ``.md`` (``--output DIR`` elsewhere).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"  # before NumPy loads its BLAS: one thread per rank

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import backprop as bp  # noqa: E402
from backprop.data_parallel import DataParallel  # noqa: E402
from backprop.gradients import loss_and_backward  # noqa: E402
from benchmarks.run import RESULTS, environment, write_atomically  # noqa: E402

FULL = {"widths": (784, 1024, 1024, 10), "batch": 512, "steps": 5, "rounds": 7}
QUICK = {"widths": (32, 64, 64, 10), "batch": 64, "steps": 3, "rounds": 2}


def build(widths: tuple[int, ...], seed: int = 0) -> tuple[bp.Sequential, bp.optim.SGD]:
    layers: list[bp.Layer] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        layers.append(bp.Dense(fan_in, fan_out))
        if index < len(widths) - 2:
            layers.append(bp.ReLU())
    model = bp.Sequential(*layers, device="cpu", dtype="float32", seed=seed)
    return model, bp.optim.SGD(model.parameters(), lr=1e-3)


class Stopwatch:
    """Accumulated seconds per name; ``wrap(owner, method, name)`` times every call of that bound method."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, method: str, name: str) -> None:
        inner = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

        setattr(owner, method, timed)


def wait_quietly(comm: bp.distributed.MPICommunicator) -> None:
    """A barrier that sleeps while it waits (MPI's own spins, taking a core from the rank being timed)."""
    request = comm.comm.Ibarrier()
    while not request.Test():
        time.sleep(0.0005)


def one_rank_round(comm: Any, model: Any, optimizer: Any, loss: Any, x: Any, y: Any, steps: int) -> float:
    """Seconds per step of rank 0 alone on the whole batch (nan on the other ranks)."""
    elapsed = float("nan")
    if comm.is_root:
        start = time.perf_counter()
        for _ in range(steps):
            loss_and_backward(model, loss, x, y, prepared=True)
            optimizer.step()
        elapsed = (time.perf_counter() - start) / steps
    wait_quietly(comm)
    return elapsed


def all_ranks_round(comm: Any, parallel: DataParallel, optimizer: Any, loss: Any, x: Any, y: Any, steps: int,
                    watch: Stopwatch) -> dict[str, float]:
    """Seconds per step: the slowest rank's wall time, and this rank's split of its own time."""
    watch.seconds.clear()
    comm.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        parallel.step(loss, x, y, optimizer)
    mine = time.perf_counter() - start
    split = {name: seconds / steps for name, seconds in watch.seconds.items()}
    split["compute"] = mine / steps - sum(split.values())
    slowest = comm.allreduce(np.array([mine]), op="max")[0]
    return {"wall": slowest / steps, **split}


def allreduce_round(comm: Any, buffer: np.ndarray, steps: int) -> float:
    """Fastest seconds of one in-place Allreduce of ``buffer`` (a barrier before each)."""
    fastest = float("inf")
    for _ in range(steps):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce(buffer)
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def measure(comm: Any, settings: dict) -> dict:
    widths, batch, steps, rounds = settings["widths"], settings["batch"], settings["steps"], settings["rounds"]
    rng = np.random.default_rng(1)
    loss = bp.losses.CrossEntropy()
    single, single_optimizer = build(widths)
    replica, optimizer = build(widths)
    x = single.as_input(rng.normal(size=(batch, widths[0])).astype(np.float32))
    with single.backend.activate():
        y = loss.prepare_target(rng.integers(0, widths[-1], size=batch), single.backend, single._dtype,
                                (batch, widths[-1]))
    parallel = DataParallel(comm, replica, local=None)  # only its step is timed
    watch = Stopwatch()
    watch.wrap(parallel.gradients, "pack", "staging")
    watch.wrap(parallel.gradients, "unpack", "staging")
    watch.wrap(comm, "allreduce", "allreduce")
    watch.wrap(optimizer, "step", "update")
    buffer = parallel.gradients.buffer.copy()
    one_rank_round(comm, single, single_optimizer, loss, x, y, 1)  # warm-up: allocations, BLAS start-up
    all_ranks_round(comm, parallel, optimizer, loss, x, y, 1, watch)
    one, everyone, reduce_alone = [], [], []
    candidates: list[Callable[[], None]] = [
        lambda: one.append(one_rank_round(comm, single, single_optimizer, loss, x, y, steps)),
        lambda: everyone.append(all_ranks_round(comm, parallel, optimizer, loss, x, y, steps, watch)),
    ]
    for round_index in range(rounds):
        for offset in range(len(candidates)):
            candidates[(round_index + offset) % len(candidates)]()
        reduce_alone.append(allreduce_round(comm, buffer, steps))
    fastest = min(everyone, key=lambda split: split["wall"])
    best_one = min(one) if comm.is_root else float("nan")
    own = sum(value for name, value in fastest.items() if name != "wall")  # rank 0's own time per step
    return {
        "ranks": comm.size,
        "workload": f"{batch}x[{','.join(map(str, widths))}] relu cross_entropy float32, SGD",
        "steps_per_round": steps,
        "rounds": rounds,
        "gradient_buffer_mb": buffer.nbytes / 1e6,
        "one_rank_step_s": {"fastest": best_one, "median": statistics.median(one) if comm.is_root else None},
        "all_ranks_step_s": {"fastest": fastest["wall"], "median": statistics.median(s["wall"] for s in everyone)},
        "speed_up": best_one / fastest["wall"],
        "fastest_round_split_s": fastest,
        "shares_of_fastest_round": {name: value / own for name, value in fastest.items() if name != "wall"},
        "allreduce_alone_s": {"fastest": min(reduce_alone), "median": statistics.median(reduce_alone)},
    }


def markdown(report: dict) -> str:
    r, env = report["result"], report["environment"]
    split = r["fastest_round_split_s"]
    shares = r["shares_of_fastest_round"]
    timing = "| {} | {:.2f} ms | {:.2f} ms |"
    return "\n".join([
        f"# Data-parallel scaling, {r['ranks']} ranks ({env['date']})",
        "",
        (f"`{report['command']}`; {r['workload']}; one BLAS thread per rank; {r['rounds']} alternating rounds of "
         f"{r['steps_per_round']} steps; {env['machine']}; load average {r['load_average_before_after'][0]} "
         f"before, {r['load_average_before_after'][1]} after (other work on the machine shares its cores)."),
        "",
        "| | fastest | median |",
        "|---|---|---|",
        timing.format("one rank, whole batch, per step",
                      *(r["one_rank_step_s"][k] * 1e3 for k in ("fastest", "median"))),
        timing.format(f"{r['ranks']} ranks, per step (slowest rank)",
                      *(r["all_ranks_step_s"][k] * 1e3 for k in ("fastest", "median"))),
        timing.format(f"Allreduce of the {r['gradient_buffer_mb']:.2f} MB buffer alone",
                      *(r["allreduce_alone_s"][k] * 1e3 for k in ("fastest", "median"))),
        "",
        (f"Speed-up (fastest rounds): **{r['speed_up']:.2f}x**. Rank 0's fastest {r['ranks']}-rank round per step: "
         + ", ".join(f"{name} {split[name] * 1e3:.2f} ms ({shares[name]:.0%})" for name in shares) + "."),
        "",
    ])


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(prog="mpiexec -n N python -m benchmarks.scaling",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (the smoke test)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help=f"folder for the JSON and Markdown (default {RESULTS})")
    arguments = parser.parse_args(argv)
    settings = dict(QUICK if arguments.quick else FULL)
    settings.update({k: v for k, v in (("rounds", arguments.rounds), ("steps", arguments.steps)) if v is not None})
    comm = bp.distributed.init()
    if comm.size < 2:
        parser.error("run it under an MPI launcher with two or more ranks: mpiexec -n 2 python -m benchmarks.scaling")
    load_before = os.getloadavg()
    result = measure(comm, settings)
    if not comm.is_root:
        return None
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    flags = " ".join(argv if argv is not None else sys.argv[1:])
    command = f"mpiexec -n {comm.size} python -m benchmarks.scaling {flags}"
    report = {"command": command.strip(), "environment": environment("cpu"), "result": result}
    stem = f"scaling-{comm.size}ranks{'-quick' if arguments.quick else ''}"
    write_atomically(arguments.output / f"{stem}.json", json.dumps(report, indent=1) + "\n")
    write_atomically(arguments.output / f"{stem}.md", markdown(report))
    print(markdown(report))
    print(f"written: {arguments.output / stem}.json and .md")
    return report


if __name__ == "__main__":
    main()
