"""The seeds' worked example: one backpropagation step through a 2-2-1 sigmoid network, by hand and by backprop.

Network (no biases): inputs x1 = 0.35, x2 = 0.7; hidden nodes 3 and 4, output node 5, all sigmoid s(a) = 1/(1+e^-a):
    y3 = s(w11 x1 + w21 x2),  y4 = s(w12 x1 + w22 x2),  y5 = s(w13 y3 + w23 y4)
with w11 = w21 = 0.2, w12 = w22 = 0.3, w13 = 0.3, w23 = 0.9, target t = 0.5, error E = (t - y5)^2 / 2, learning
rate 1. Backpropagation (the deltas are -dE/da at each node, a its weighted input):
    d5 = (t - y5) y5 (1 - y5),  d4 = y4 (1 - y4) w23 d5,  d3 = y3 (1 - y3) w13 d5,
    w_ij <- w_ij + lr d_j y_i   (y_i the value entering the weight: x1, x2, y3 or y4).
For one sample, backprop's MeanSquaredError is (y5 - t)^2 = 2E, so its SGD with lr 0.5 takes this same step.

The script prints the true arithmetic, marks where the tutorial's hand-computed figures differ (compared at the
precision the tutorial prints), checks the library's step against it, then trains until |y5 - t| < 1e-3.
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
from backprop.gradients import loss_and_backward  # noqa: E402

X1, X2, TARGET, LEARNING_RATE = 0.35, 0.7, 0.5, 1.0
WEIGHTS = {"w11": 0.2, "w21": 0.2, "w12": 0.3, "w22": 0.3, "w13": 0.3, "w23": 0.9}
TUTORIAL = {  # name: (the tutorial's figure, how it went wrong where it did)
    "y3": (0.56, "s(0.21) = 0.5523"),
    "y4": (0.59, "s(0.315) = 0.5781"),
    "y5": (0.67, ""),
    "d5": (-0.0376, "it used the rounded y5 = 0.67"),
    "d4": (-0.0819, "a misplaced decimal point: 0.59 x 0.41 x 0.9 x -0.0376 = -0.00819"),
    "new w23": (0.67816, "a dropped digit: 0.9 - 0.0376 x 0.59 = 0.877816"),
    "new w11": (0.200945, "a sign slip: d3 < 0, so w11 must decrease"),
    "second y5": (0.61, ""),
}


def sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def forward(w: dict[str, float]) -> tuple[float, float, float]:
    y3 = sigmoid(w["w11"] * X1 + w["w21"] * X2)
    y4 = sigmoid(w["w12"] * X1 + w["w22"] * X2)
    return y3, y4, sigmoid(w["w13"] * y3 + w["w23"] * y4)


def by_hand() -> dict[str, float]:
    """Every figure of the worked example, from the formulas in the module doc (Python floats)."""
    w = WEIGHTS
    y3, y4, y5 = forward(w)
    d5 = (TARGET - y5) * y5 * (1 - y5)
    d4 = y4 * (1 - y4) * w["w23"] * d5
    d3 = y3 * (1 - y3) * w["w13"] * d5
    inputs = {"w11": (X1, d3), "w21": (X2, d3), "w12": (X1, d4), "w22": (X2, d4), "w13": (y3, d5), "w23": (y4, d5)}
    new = {name: w[name] + LEARNING_RATE * delta * value for name, (value, delta) in inputs.items()}
    second_y5 = forward(new)[2]
    figures = {"y3": y3, "y4": y4, "y5": y5, "d5": d5, "d4": d4, "d3": d3, "second y5": second_y5}
    figures.update({f"new {name}": value for name, value in new.items()})
    return figures


def build(device: str) -> bp.Sequential:
    """The network in backprop, weights as in the tutorial (Dense stores W as (inputs, outputs))."""
    dtype = "float64" if bp.get_backend(device).supports("float64") else "float32"
    model = bp.Sequential(bp.Dense(2, 2, bias=False), bp.Sigmoid(), bp.Dense(2, 1, bias=False), bp.Sigmoid(),
                          device=device, dtype=dtype)
    w = WEIGHTS
    model.load_state_dict({"0.weight": np.array([[w["w11"], w["w12"]], [w["w21"], w["w22"]]]),
                           "2.weight": np.array([[w["w13"]], [w["w23"]]])})
    return model


def library_figures(model: bp.Sequential, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The same figures from the library: forward layer by layer, one SGD step (MSE, lr 0.5), forward again."""
    activations = []
    signal = model.as_input(x)
    for layer in model.layers:
        signal = layer.forward(signal)[0]
        activations.append(bp.to_numpy(signal))
    y3, y4 = activations[1][0]
    figures = {"y3": y3, "y4": y4, "y5": activations[3][0, 0]}
    optimizer = bp.optim.SGD(model.parameters(), lr=LEARNING_RATE / 2)
    loss_and_backward(model, bp.losses.MeanSquaredError(), x, y)
    optimizer.step()
    state = model.state_dict()
    (w11, w12), (w21, w22) = state["0.weight"]
    (w13,), (w23,) = state["2.weight"]
    figures.update({"new w11": w11, "new w21": w21, "new w12": w12, "new w22": w22, "new w13": w13, "new w23": w23})
    figures["second y5"] = bp.to_numpy(model.predict(x))[0, 0]
    return {name: float(value) for name, value in figures.items()}


def train_until_close(model: bp.Sequential, x: np.ndarray, y: np.ndarray, max_steps: int,
                      tolerance: float = 1e-3) -> list[float]:
    """SGD steps from the tutorial's weights until |y5 - t| < tolerance; returns y5 before each step and at the end."""
    optimizer = bp.optim.SGD(model.parameters(), lr=LEARNING_RATE / 2)
    loss = bp.losses.MeanSquaredError()
    outputs = [float(bp.to_numpy(model.predict(x))[0, 0])]
    while abs(outputs[-1] - TARGET) >= tolerance and len(outputs) <= max_steps:
        loss_and_backward(model, loss, x, y)
        optimizer.step()
        outputs.append(float(bp.to_numpy(model.predict(x))[0, 0]))
    return outputs


def decimals(figure: float) -> int:
    return len(repr(figure).split(".")[1])


def main(argv: Sequence[str] | None = None) -> dict:
    args = _common.parse_args("The seeds' 2-2-1 worked example, step by step.", 10_000, argv)
    x, y = np.array([[X1, X2]]), np.array([[TARGET]])
    truth = by_hand()
    library = library_figures(build(args.device), x, y)
    print(f"inputs x1={X1}, x2={X2}; target {TARGET}; learning rate {LEARNING_RATE}; weights {WEIGHTS}")
    print(f"{'figure':>10} {'true value':>12} {'tutorial':>10}  note")
    differences = []
    for name in ("y3", "y4", "y5", "d5", "d4", "d3", "new w11", "new w21", "new w12", "new w22", "new w13",
                 "new w23", "second y5"):
        value = truth[name]
        note = ""
        if name in TUTORIAL:
            written, why = TUTORIAL[name]
            places = decimals(written)
            if round(value, places) != round(written, places):
                differences.append(name)
                note = f"DIFFERS: the tutorial writes {written}" + (f" ({why})" if why else "")
            else:
                note = f"agrees with the tutorial's {written} to the {places} decimals it prints"
        print(f"{name:>10} {value:>12.6f} {'' if name not in TUTORIAL else TUTORIAL[name][0]:>10}  {note}")
    library_error = max(abs(library[name] - truth[name]) for name in library)
    print(f"backprop's forward pass and SGD step (MSE, lr 0.5) agree with the hand arithmetic to {library_error:.1e}")

    outputs = train_until_close(build(args.device), x, y, args.epochs)
    steps = len(outputs) - 1
    reached = abs(outputs[-1] - TARGET) < 1e-3
    if reached:
        print(f"training from the tutorial's weights: |y5 - {TARGET}| < 1e-3 after {steps} steps "
              f"(y5 = {outputs[-1]:.6f})")
    else:
        print(f"training from the tutorial's weights: y5 = {outputs[-1]:.6f} after {steps} steps, not yet within 1e-3")

    plt = _common.pyplot()
    if plt is not None:
        figure, (table_axes, axes) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
        table_axes.axis("off")
        rows = [[name, f"{TUTORIAL[name][0]}", f"{truth[name]:.6f}", "differs" if name in differences else "agrees"]
                for name in TUTORIAL]
        table = table_axes.table(cellText=rows, colLabels=["figure", "tutorial writes", "true value", ""],
                                 loc="center", cellLoc="center")
        table.scale(1, 1.5)
        for row, (_, _, _, verdict) in enumerate(rows, start=1):
            for column in range(4):
                table[row, column].set_facecolor("#f6c6c6" if verdict == "differs" else "#d5ecd4")
        table_axes.set_title("The tutorial's hand-computed figures beside the true ones\n(compared at the "
                             "precision the tutorial prints)")
        axes.plot(range(len(outputs)), outputs, label="output y5")
        axes.axhline(TARGET, color="black", linestyle="--", linewidth=1, label=f"target {TARGET}")
        axes.axhspan(TARGET - 1e-3, TARGET + 1e-3, color="green", alpha=0.2, label="within 1e-3")
        axes.set(xlabel="SGD step (lr 1 on E = (t - y5)^2 / 2)", ylabel="output y5",
                 title=f"The worked example, trained: within 1e-3 after {steps} steps" if reached else
                 "The worked example, trained")
        axes.legend()
        _common.save(figure, "worked_example.png")
    return {"figures": truth, "library": library, "library_error": library_error, "differences": differences,
            "steps": steps, "reached": reached, "final_output": outputs[-1]}


if __name__ == "__main__":
    main()
