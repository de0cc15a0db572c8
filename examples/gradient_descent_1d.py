"""Gradient descent on y = (x + 2)^2, whose minimum is at x = -2.

dy/dx = 2 (x + 2), so one step x <- x - lr * 2 (x + 2) multiplies the distance to -2 by (1 - 2 lr):
it shrinks for 0 < lr < 1 (monotonically for lr < 0.5, oscillating around -2 for 0.5 < lr < 1), stays the same
at lr = 1 (x jumps between two points forever) and grows for lr > 1 (divergence). The steps are taken by
backprop's SGD on a one-element Parameter on the chosen device; only the derivative is written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import backprop as bp  # noqa: E402


def descend(start: float, lr: float, steps: int, device: str) -> list[float]:
    """x after each of ``steps`` SGD steps from ``start`` (the first entry is ``start``)."""
    backend = bp.get_backend(device)
    dtype = backend.dtype("float64" if backend.supports("float64") else "float32")
    x = bp.Parameter("x", backend.to_device(np.array([start]), dtype), backend)
    optimizer = bp.optim.SGD([x], lr=lr)
    path = [start]
    for _ in range(steps):
        x.zero_grad()
        with backend.activate():
            x.accumulate(2.0 * (x.value + 2.0))  # dy/dx
        optimizer.step()
        path.append(float(bp.to_numpy(x.value)[0]))
    return path


def main(argv: Sequence[str] | None = None) -> dict:
    def options(parser):
        parser.add_argument("--lr", type=float, default=0.1, help="learning rate of the converging runs (default 0.1)")
        parser.add_argument("--large-lr", type=float, default=1.05, help="the too-large learning rate (default 1.05)")

    args = _common.parse_args("Gradient descent on y = (x + 2)^2.", 50, argv, options)
    runs = {
        f"from 0, lr {args.lr}": descend(0.0, args.lr, args.epochs, args.device),
        f"from -4, lr {args.lr}": descend(-4.0, args.lr, args.epochs, args.device),
        f"from 0, lr {args.large_lr}": descend(0.0, args.large_lr, args.epochs, args.device),
    }
    for label, path in runs.items():
        shown = ", ".join(f"{value:.4f}" for value in path[:6])
        within = next((step for step, value in enumerate(path) if abs(value + 2) < 1e-3), None)
        print(f"{label}: x = {shown}, ... after {len(path) - 1} steps x = {path[-1]:.6g} "
              f"(|x + 2| = {abs(path[-1] + 2):.2e}; "
              + (f"within 1e-3 of -2 from step {within})" if within is not None else "never within 1e-3 of -2)"))
    print(f"each step multiplies x + 2 by 1 - 2 lr: {1 - 2 * args.lr:g} for lr {args.lr}, "
          f"{1 - 2 * args.large_lr:g} for lr {args.large_lr} (|factor| > 1: divergence)")

    plt = _common.pyplot()
    if plt is not None:
        figure, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4))
        for axis, (label, path) in zip(axes, runs.items()):
            shown = np.array(path[:15])
            span = max(4.0, float(np.max(np.abs(shown + 2))) * 1.1)
            curve = np.linspace(-2 - span, -2 + span, 200)
            axis.plot(curve, (curve + 2) ** 2, color="gray", label="y = (x + 2)^2")
            axis.plot(shown, (shown + 2) ** 2, "o-", color="tab:red", markersize=4, label="x after each step")
            axis.plot([-2.0], [0.0], marker="*", markersize=16, color="tab:green", linestyle="none",
                      label="minimum x = -2")
            diverging = abs(path[-1] + 2) > abs(path[0] + 2)
            if diverging:  # number the steps: they alternate sides and climb the parabola
                for step, value in enumerate(shown):
                    axis.annotate(str(step), (value, (value + 2) ** 2), xytext=(0, 7), textcoords="offset points",
                                  ha="center", fontsize=8)
            axis.set(xlabel="x", ylabel="y = (x + 2)^2",
                     title=f"{label}: first {len(shown) - 1} steps" + (" (numbered): diverges" if diverging else ""))
            axis.legend(loc="upper center", fontsize=8)
        _common.save(figure, "gradient_descent_1d.png")
    return {"paths": runs, "final": {label: path[-1] for label, path in runs.items()}}


if __name__ == "__main__":
    main()
