"""Convolution benchmarks: our layers against PyTorch CPU autograd, float32, in one process.

    python -m benchmarks.conv                 # every workload, a few minutes
    python -m benchmarks.conv --quick         # tiny sizes, a few seconds (the smoke test)
    python -m benchmarks.conv --workloads conv1 digits --repeats 21
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python -m benchmarks.conv    # one thread each, as the issue measured

Candidates per workload, timed in rounds whose order is shuffled every round (``benchmarks.run.time_candidates``):

* ``ours``: our layers on the NumPy backend, the array-API reference (im2col in blocks, one product per block);
* ``pytorch``: the same layers in ``torch.nn`` with our initial weights, autograd;
* ``ours_torch``: our layers on the ``torch:cpu`` backend, whose ``conv2d``/``max_pool2d`` are PyTorch's kernels
  (the fast path), with our backward pass around them.

A "forward + backward" workload runs ``forward(x, training=True)`` and ``backward(dy)`` after zeroing the gradients
(dL/dx only where the row says so, as PyTorch computes it only for an input that requires it); the "training step"
workload is one ``fit`` batch: cross-entropy, backward, SGD with momentum. Peak: memory above the resting level
during one step (tracemalloc for NumPy; the growth of the peak RSS for PyTorch).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import backprop as bp
from benchmarks.run import RESULTS, _bytes, _json_default, environment, median_cell, ratio, ratio_cell, ratios
from benchmarks.run import time_candidates
from benchmarks.run import threads_line, torch_available, write_atomically
from benchmarks.workloads import fit_step, torch_training_step


@dataclass(frozen=True)
class ConvWorkload:
    """``layers()`` on a batch of ``input_shape`` (N, C, H, W); ``step`` is "forward_backward" or "train"."""

    name: str
    label: str
    input_shape: tuple[int, int, int, int]
    layers: Callable[[], list]
    step: str = "forward_backward"
    need_dx: bool = False
    rounds: int = 11


def digits_cnn() -> list:
    """The convolution issue's digits network (examples/digits_cnn.py)."""
    return [bp.Conv2d(1, 16, 3, padding=1), bp.ReLU(), bp.MaxPool2d(2),
            bp.Conv2d(16, 32, 3, padding=1), bp.BatchNorm2d(32), bp.ReLU(), bp.MaxPool2d(2),
            bp.Flatten(), bp.Dense(32 * 2 * 2, 10)]


def mnist_block() -> list:
    return [bp.Conv2d(1, 32, 3), bp.ReLU(), bp.Conv2d(32, 64, 3), bp.ReLU(), bp.MaxPool2d(2)]


WORKLOADS = {w.name: w for w in (
    ConvWorkload("conv1", "conv 1->16 3x3 on (64, 1, 8, 8), forward + backward", (64, 1, 8, 8),
                 lambda: [bp.Conv2d(1, 16, 3)], rounds=15),
    ConvWorkload("digits", "digits CNN, one training step, batch 32", (32, 1, 8, 8), digits_cnn, step="train",
                 rounds=15),
    ConvWorkload("mnist", "(128, 1, 28, 28): conv 32 3x3, ReLU, conv 64 3x3, ReLU, max-pool 2, forward + backward",
                 (128, 1, 28, 28), mnist_block, rounds=7),
    ConvWorkload("cifar", "(64, 3, 32, 32): conv 64 3x3 pad 1, forward + backward incl. dx", (64, 3, 32, 32),
                 lambda: [bp.Conv2d(3, 64, 3, padding=1)], need_dx=True, rounds=9),
)}

QUICK_WORKLOADS = {
    "conv1": WORKLOADS["conv1"],
    "digits": WORKLOADS["digits"],
    "mnist": ConvWorkload("mnist", "(8, 1, 12, 12): the MNIST block, small", (8, 1, 12, 12), mnist_block, rounds=3),
    "cifar": ConvWorkload("cifar", "(4, 3, 8, 8): conv 64 3x3 pad 1 incl. dx", (4, 3, 8, 8),
                          lambda: [bp.Conv2d(3, 64, 3, padding=1)], need_dx=True, rounds=3),
}


def host_data(workload: ConvWorkload) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal(workload.input_shape).astype(np.float32), rng.integers(0, 10, workload.input_shape[0])


def build(workload: ConvWorkload, device: str) -> bp.Sequential:
    return bp.Sequential(*workload.layers(), input_shape=workload.input_shape[1:], device=device, seed=0)


def our_step(workload: ConvWorkload, device: str) -> Callable[[], Any]:
    model = build(workload, device)
    x_host, y_host = host_data(workload)
    x = model.as_input(x_host)
    if workload.step == "train":
        loss = bp.losses.CrossEntropy()
        optimizer = bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with model.backend.activate():
            y = loss.prepare_target(y_host, model.backend, model._dtype, (x_host.shape[0], 10))
        return fit_step(model, loss, optimizer, x, y)
    dy = model.backend.to_device(np.random.default_rng(1).standard_normal((x_host.shape[0], *model.output_shape)),
                                 model._dtype)

    def forward_backward() -> Any:
        model.zero_grad()
        _, backward = model.forward(x, training=True)
        return backward(dy, need_input_grad=workload.need_dx)

    return forward_backward


def torch_model(model: bp.Sequential) -> Any:
    """``model``'s layers as ``torch.nn`` modules holding its current weights."""
    import torch

    def tensor(parameter: Any) -> Any:
        return torch.from_numpy(np.array(bp.to_numpy(parameter.value)))

    modules = []
    for layer in model.layers:
        if isinstance(layer, bp.Conv2d):
            module = torch.nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                     layer.padding, layer.dilation, bias=layer.bias)
            with torch.no_grad():
                module.weight.copy_(tensor(layer.params["weight"]))
                if layer.bias:
                    module.bias.copy_(tensor(layer.params["bias"]))
        elif isinstance(layer, bp.Dense):
            module = torch.nn.Linear(layer.in_features, layer.out_features)
            with torch.no_grad():
                module.weight.copy_(tensor(layer.params["weight"]).T)
                module.bias.copy_(tensor(layer.params["bias"]))
        elif isinstance(layer, bp.MaxPool2d):
            module = torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif isinstance(layer, bp.BatchNorm2d):
            module = torch.nn.BatchNorm2d(layer.num_features)
        else:
            module = {bp.ReLU: torch.nn.ReLU, bp.Flatten: torch.nn.Flatten}[type(layer)]()
        modules.append(module)
    return torch.nn.Sequential(*modules)


def pytorch_step(workload: ConvWorkload) -> Callable[[], Any]:
    import torch

    ours = build(workload, "cpu")
    model = torch_model(ours)
    x_host, y_host = host_data(workload)
    x = torch.from_numpy(x_host).requires_grad_(workload.need_dx)
    if workload.step == "train":
        loss = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return torch_training_step(model, loss, optimizer, x, torch.from_numpy(y_host))
    dy = torch.from_numpy(np.random.default_rng(1).standard_normal((x_host.shape[0], *ours.output_shape))
                          .astype(np.float32))

    def forward_backward() -> Any:
        model.zero_grad(set_to_none=True)
        x.grad = None
        model(x).backward(dy)

    return forward_backward


def run_workload(workload: ConvWorkload, with_torch: bool, rounds: int, round_seconds: float) -> dict:
    built: dict[str, tuple[Callable[[], Any], str, str]] = {"ours": (our_step(workload, "cpu"), "numpy", "cpu")}
    if with_torch:
        built["pytorch"] = (pytorch_step(workload), "torch", "cpu")
        built["ours_torch"] = (our_step(workload, "torch:cpu"), "torch", "cpu")
    found = time_candidates(built, rounds, round_seconds)
    result: dict[str, Any] = {"workload": workload.name, "label": workload.label, "rounds": rounds,
                              "candidates": found, **ratios(found, ("ours/pytorch", "ours_torch/pytorch"))}
    result["peak_ratio"] = ratio(found["ours"]["peak_bytes"], found.get("pytorch", {}).get("peak_bytes"))
    return result


def table(report: dict) -> str:
    rows = ["| workload | ours | PyTorch | ours on torch | ours/PyTorch | torch-backend/PyTorch | peak ours | "
            "peak PyTorch |", "|---|---|---|---|---|---|---|---|"]
    for result in report["results"]:
        found = result["candidates"]
        rows.append(f"| {result['label']} | {median_cell(found, 'ours')} | {median_cell(found, 'pytorch')} | "
                    f"{median_cell(found, 'ours_torch')} | {ratio_cell(result, 'ours/pytorch')} | "
                    f"{ratio_cell(result, 'ours_torch/pytorch')} | {_bytes(found['ours']['peak_bytes'])} | "
                    f"{_bytes(found.get('pytorch', {}).get('peak_bytes'))} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (the CI smoke test)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=None, help="rounds per workload (default: per workload)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch candidates even if it is installed")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help=f"folder for the JSON and Markdown (default {RESULTS})")
    arguments = parser.parse_args(argv)
    if arguments.repeats is not None and arguments.repeats < 1:
        parser.error("--repeats must be at least 1")
    catalogue = QUICK_WORKLOADS if arguments.quick else WORKLOADS
    with_torch = torch_available() and not arguments.no_torch
    report: dict[str, Any] = {"environment": environment("cpu"), "quick": arguments.quick, "results": []}
    for name in arguments.workloads:
        workload = catalogue[name]
        rounds = arguments.repeats or workload.rounds
        print(f"{workload.label}: {rounds} rounds ...", file=sys.stderr, flush=True)
        report["results"].append(run_workload(workload, with_torch, rounds, 0.002 if arguments.quick else 0.1))
    report["command"] = ("python -m benchmarks.conv " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    stem = f"conv-cpu-{'quick' if arguments.quick else 'latest'}"
    env = report["environment"]
    text = "\n".join([
        f"# Convolution benchmark: cpu ({env['device_name']})", "",
        f"Date: {env['date']}. Machine: {env['machine']}. Command: `{report['command']}`.", "",
        "float32. Times are medians of rounds in shuffled order; ratios compare the fastest rounds (ratio of medians "
        "in brackets). Ours = the array-API reference on NumPy; ours on torch = our layers on the torch:cpu backend "
        "(PyTorch's convolution and pooling kernels, our backward pass).", "",
        table(report),
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", "",
        threads_line(env), ""])
    write_atomically(arguments.output / f"{stem}.json", json.dumps(report, indent=1, default=_json_default) + "\n")
    write_atomically(arguments.output / f"{stem}.md", text)
    print(table(report))
    print(f"written: {arguments.output / stem}.json and .md")
    return report


if __name__ == "__main__":
    main()
