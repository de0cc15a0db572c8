"""The seeds' worked example: a 2-2-1 sigmoid network without biases, one SGD step with learning rate 1.

Inputs (0.35, 0.7), target 0.5, E = 1/2 (t - y)^2. The expected figures are the true arithmetic (to 1e-6),
not the tutorial's rounded hand computation.
"""

import numpy as np
import pytest

import backprop as bp

X = np.array([[0.35, 0.7]])
T = np.array([[0.5]])
# W[i, j]: input i -> unit j. w11 = x1->y3, w21 = x2->y3, w12 = x1->y4, w22 = x2->y4, w13 = y3->y5, w23 = y4->y5.
W1 = np.array([[0.2, 0.3], [0.2, 0.3]])
W2 = np.array([[0.3], [0.9]])


def build(device: str) -> bp.Sequential:
    model = bp.Sequential(
        bp.Dense(2, 2, bias=False), bp.Sigmoid(), bp.Dense(2, 1, bias=False), bp.Sigmoid(),
        device=device, dtype="float64",
    )
    model.load_state_dict({"0.weight": W1, "2.weight": W2})
    return model


def test_forward_values(backend):
    model = build(backend)
    x = model.as_input(X)
    hidden = model.layers[1].forward(model.layers[0].forward(x)[0])[0]
    np.testing.assert_allclose(bp.to_numpy(hidden), [[0.552308, 0.578105]], atol=1e-6)
    np.testing.assert_allclose(bp.to_numpy(model.predict(X)), [[0.665074]], atol=1e-6)


def test_deltas(backend):
    model = build(backend)
    x = model.as_input(X)
    y3y4 = model.layers[1].forward(model.layers[0].forward(x)[0])[0]
    output, backward = model.forward(X, training=True)
    # E = 1/2 (t - y)^2 is half the summed squared error.
    value, grad_output = bp.losses.MeanSquaredError(reduction="sum").value_and_grad(
        output, model.backend.to_device(T, model.backend.dtype("float64"))
    )
    backward(grad_output * 0.5)
    y5 = bp.to_numpy(output)[0, 0]
    d5 = (0.5 - y5) * y5 * (1 - y5)  # the tutorial's delta: (t - y) sigmoid'(net) = -dE/dnet
    assert d5 == pytest.approx(-0.0367703, abs=1e-7)
    h = bp.to_numpy(y3y4)[0]
    d3, d4 = d5 * W2[:, 0] * h * (1 - h)
    assert d3 == pytest.approx(-0.00272759, abs=1e-8)
    assert d4 == pytest.approx(-0.00807143, abs=1e-8)
    # The library's gradients are exactly minus these deltas times the incoming activations.
    grads = {p.name: bp.to_numpy(p.grad) for p in model.parameters()}
    np.testing.assert_allclose(grads["2.weight"][:, 0], -d5 * h, rtol=1e-12)
    np.testing.assert_allclose(grads["0.weight"], -np.outer(X[0], [d3, d4]), rtol=1e-12)


def test_weights_after_one_step(backend):
    model = build(backend)
    bp.value_and_grad(model, bp.losses.MeanSquaredError(reduction="sum"), X, T)
    for parameter in model.parameters():  # E = 1/2 (t - y)^2: halve the summed squared error's gradient
        parameter.grad = parameter.grad * 0.5
    bp.optim.SGD(model.parameters(), lr=1.0).step()
    state = model.state_dict()
    np.testing.assert_allclose(state["0.weight"], [[0.199045, 0.297175], [0.198091, 0.294350]], atol=1e-6)
    np.testing.assert_allclose(state["2.weight"], [[0.279691], [0.878743]], atol=1e-6)
