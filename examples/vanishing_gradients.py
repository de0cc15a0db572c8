"""Vanishing and exploding gradients, measured with ``bp.callbacks.GradientStats``.

Two 10-layer networks (16 inputs, nine hidden layers of 32 units, one logit) learn the same binary task:
sigmoid activations with Glorot-uniform weights, and ReLU with He-uniform weights. Backpropagation multiplies the
gradient by W^T diag(f'(z)) once per layer; sigmoid's derivative is at most 1/4, so in the sigmoid network the
gradient shrinks by roughly that factor per layer on its way to the first layer, while He initialisation keeps
the ReLU network's per-layer gradient norms of the same order. The exploding case: the ReLU network with weights
drawn twice too large (uniform with He's bound times 2), where each layer multiplies the gradient by about
2 instead; plain SGD then diverges within a few steps, and ``bp.optim.clip_grad_norm`` (global norm <= 1)
between the backward pass and the step keeps it training.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import backprop as bp  # noqa: E402

DEPTH, WIDTH, FEATURES = 10, 32, 16


def task(seed: int = 0, samples: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs, label 1 where a fixed random quadratic form of them is positive."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, FEATURES)).astype(np.float32)
    a = rng.normal(size=(FEATURES, FEATURES))
    y = (np.einsum("ni,ij,nj->n", x, a, x) > 0).astype(np.float32)
    return x, y.reshape(-1, 1)


def network(activation: type, init: "str | bp.init.Initialiser", device: str, seed: int) -> bp.Sequential:
    layers: list = []
    width = FEATURES
    for _ in range(DEPTH - 1):
        layers += [bp.Dense(width, WIDTH, init=init), activation()]
        width = WIDTH
    return bp.Sequential(*layers, bp.Dense(width, 1, init=init), device=device, seed=seed)


def he_times(factor: float) -> bp.init.Initialiser:
    def init(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
        return factor * bp.init.he_uniform(rng, shape, fan_in, fan_out)

    return init


def layer_norms(history: bp.History, step: int) -> list[float]:
    """Gradient norm of each Dense layer (first to last) at a recorded step."""
    index = history.steps.index(step)
    return [history.step_history[f"grad_norm/{2 * layer}"][index] for layer in range(DEPTH)]


def train_with_stats(model: bp.Sequential, x, y, epochs: int, seed: int) -> tuple[bp.History, float]:
    loss = bp.losses.BinaryCrossEntropy(from_logits=True)
    history = model.fit(x, y, loss, bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=epochs,
                        batch_size=64, seed=seed, callbacks=[bp.callbacks.GradientStats(every=1)],
                        metrics=["accuracy"], verbose=0)
    return history, history.history["accuracy"][-1]


def exploding(x, y, steps: int, clip: float | None, device: str, seed: int,
              factor: float = 2.0) -> tuple[list[float], list[float]]:
    """Full-batch SGD steps by hand on the too-large ReLU network: (loss, gradient norm before clipping) per step,
    stopping at the first non-finite loss."""
    model = network(bp.ReLU, he_times(factor), device, seed)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.01)
    loss = bp.losses.BinaryCrossEntropy(from_logits=True)
    losses, norms = [], []
    for _ in range(steps):
        value, grads = bp.value_and_grad(model, loss, x, y)  # the gradients stay in each parameter's .grad too
        if not math.isfinite(value):
            break
        losses.append(value)
        norms.append(math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values())))
        if clip is not None:
            bp.optim.clip_grad_norm(model.parameters(), max_norm=clip)
        optimizer.step()
    return losses, norms


def main(argv: Sequence[str] | None = None) -> dict:
    def options(parser):
        parser.add_argument("--seed", type=int, default=0, help="data, weights and shuffling (default 0)")
        parser.add_argument("--steps", type=int, default=100, help="steps of the exploding case (default 100)")

    args = _common.parse_args("Vanishing and exploding gradients in a 10-layer network.", 20, argv, options)
    x, y = task(args.seed)
    runs = {}
    for label, activation, init in (("sigmoid + Glorot", bp.Sigmoid, "glorot_uniform"),
                                    ("ReLU + He", bp.ReLU, "he_uniform")):
        history, accuracy = train_with_stats(network(activation, init, args.device, args.seed), x, y, args.epochs,
                                             args.seed)
        norms = layer_norms(history, 0)
        runs[label] = {"history": history, "accuracy": accuracy, "initial_norms": norms,
                       "first_layer": history.step_history["grad_norm/0"]}
        print(f"{label:>16}: gradient norm at the first step, layer 1 {norms[0]:.2e} ... layer {DEPTH} "
              f"{norms[-1]:.2e} (ratio {norms[0] / norms[-1]:.1e}); training accuracy after {args.epochs} epochs "
              f"{accuracy:.3f}")
    with np.errstate(over="ignore", invalid="ignore"):  # the unclipped run overflows on purpose
        clipped = {label: exploding(x, y, args.steps, clip, args.device, args.seed)
                   for label, clip in (("no clipping", None), ("clip_grad_norm(max_norm=1)", 1.0))}
    for label, (losses, norms) in clipped.items():
        ending = (f"diverged (non-finite loss) at step {len(losses) + 1}" if len(losses) < args.steps
                  else f"final loss {losses[-1]:.4f}")
        print(f"exploding case, {label}: first gradient norm {norms[0]:.3g}, {ending}")

    plt = _common.pyplot()
    if plt is not None:
        figure, axes = plt.subplots(1, 3, figsize=(16, 4.4))
        layers = np.arange(1, DEPTH + 1)
        for label, run in runs.items():
            axes[0].semilogy(layers, run["initial_norms"], "o-", label=label)
            axes[1].semilogy(np.arange(len(run["first_layer"])), run["first_layer"], label=label)
        axes[0].set(xlabel="layer (1 = next to the input)", ylabel="gradient norm ||dL/dW_l|| (log)",
                    title="Per-layer gradient norms at the first step", xticks=layers)
        axes[1].set(xlabel="training step", ylabel="layer 1 gradient norm (log)",
                    title=f"First layer's gradient during {args.epochs} epochs")
        for label, (losses, norms) in clipped.items():
            axes[2].semilogy(np.arange(1, len(losses) + 1), losses, "o-", markersize=3, label=label)
            if len(losses) < args.steps:
                axes[2].annotate(f"step {len(losses) + 1}: loss not finite", (len(losses), losses[-1]),
                                 xytext=(8, -4), textcoords="offset points")
        axes[2].set(xlabel="step (full batch)", ylabel="training loss (log)",
                    title="Weights 2x too large: loss per SGD step (lr 0.01)")
        for axis in axes:
            axis.legend()
        _common.save(figure, "vanishing_gradients.png")
    return {"runs": {label: {key: value for key, value in run.items() if key != "history"}
                     for label, run in runs.items()}, "exploding": clipped}


if __name__ == "__main__":
    main()
