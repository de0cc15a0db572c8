"""Every backend computes the same thing: identical initial parameters, matching loss and gradients,
and gradients that match finite differences."""

import numpy as np
import pytest

import backprop as bp

ACTIVATIONS = [bp.Sigmoid, bp.Tanh, bp.ReLU, lambda: bp.LeakyReLU(0.1), bp.Identity, bp.Softmax]
ACTIVATION_IDS = ["sigmoid", "tanh", "relu", "leaky_relu", "identity", "softmax"]


def case(loss_name: str, seed: int = 0):
    """(layers factory, loss, x, y) for a 5-4-3 network ending in a layer fitted to the loss."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 5))
    if loss_name == "mse":
        return bp.losses.MeanSquaredError(), x, rng.normal(size=(6, 3)), None
    if loss_name == "mse_sum":
        return bp.losses.MeanSquaredError(reduction="sum"), x, rng.normal(size=(6, 3)), None
    if loss_name == "bce":
        return bp.losses.BinaryCrossEntropy(), x, rng.integers(0, 2, size=(6, 3)).astype(float), bp.Sigmoid
    if loss_name == "bce_logits":
        return bp.losses.BinaryCrossEntropy(from_logits=True), x, rng.uniform(size=(6, 3)), None
    if loss_name == "ce_indices":
        return bp.losses.CrossEntropy(), x, rng.integers(0, 3, size=6), None
    if loss_name == "ce_onehot":
        return bp.losses.CrossEntropy(), x, np.eye(3)[rng.integers(0, 3, size=6)], None
    if loss_name == "ce_probabilities":
        return bp.losses.CrossEntropy(from_logits=False), x, np.eye(3)[rng.integers(0, 3, size=6)], bp.Softmax
    raise ValueError(loss_name)


LOSSES = ["mse", "mse_sum", "bce", "bce_logits", "ce_indices", "ce_onehot", "ce_probabilities"]


def build(activation, head, device, dtype):
    layers = [bp.Dense(5, 4), activation(), bp.Dense(4, 3)]
    if head is not None:
        layers.append(head())
    return bp.Sequential(*layers, device=device, dtype=dtype, seed=42)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_backend_matches_numpy(backend, activation, loss_name, dtype, rtol):
    loss, x, y, head = case(loss_name)
    reference = build(activation, head, "cpu", dtype)
    model = build(activation, head, backend, dtype)
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=f"initial {name} differs")
    expected_value, expected_grads = bp.value_and_grad(reference, loss, x, y)
    value, grads = bp.value_and_grad(model, loss, x, y)
    assert value == pytest.approx(expected_value, rel=rtol)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == np.dtype(dtype)
        scale = np.abs(expected_grads[name]).max()
        np.testing.assert_allclose(grad, expected_grads[name], rtol=rtol, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_gradients_match_finite_differences(activation, loss_name):
    loss, x, y, head = case(loss_name, seed=1)
    model = build(activation, head, "cpu", "float64")
    assert bp.gradcheck(model, loss, x, y, tol=1e-5) < 1e-5


def test_gradcheck_reports_a_wrong_gradient(monkeypatch):
    """gradcheck fails, naming the parameter, when a backward formula is wrong."""
    loss, x, y, _ = case("mse")
    model = build(bp.Tanh, None, "cpu", "float64")
    original = bp.Tanh.forward

    def wrong_forward(self, x, training=False):
        y, backward = original(self, x, training)
        return y, lambda dy, need_dx=True: backward(dy) * 1.01

    monkeypatch.setattr(bp.Tanh, "forward", wrong_forward)
    with pytest.raises(bp.errors.GradientCheckError, match="0.weight"):
        bp.gradcheck(model, loss, x, y)


def test_gradcheck_of_a_float32_model_runs_in_float64():
    loss, x, y, _ = case("ce_indices")
    model = build(bp.Sigmoid, None, "cpu", "float32")
    assert bp.gradcheck(model, loss, x, y) < 1e-5


def test_sgd_step_matches_numpy(backend):
    """One SGD step with momentum gives the same parameters everywhere."""
    loss, x, y, _ = case("ce_indices")
    states = []
    for device in ("cpu", backend):
        model = build(bp.ReLU, None, device, "float64")
        optimizer = bp.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        for _ in range(3):
            bp.value_and_grad(model, loss, x, y)
            optimizer.step()
        states.append(model.state_dict())
    for name in states[0]:
        np.testing.assert_allclose(states[1][name], states[0][name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_sigmoid_is_exact_and_quiet_for_large_inputs(backend):
    model = bp.Sequential(bp.Sigmoid(), device=backend, dtype="float64")
    x = np.array([[-800.0, -40.0, 0.0, 40.0, 800.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = bp.to_numpy(model.predict(x))[0]
    # exact values: 1/(1+e^40) keeps its relative precision instead of rounding to 0 or 1 - 1.
    np.testing.assert_allclose(y, [0.0, 1 / (1 + np.exp(40.0)), 0.5, 1 / (1 + np.exp(-40.0)), 1.0], rtol=1e-15)


def test_gradcheck_default_floor_accepts_gradients_that_are_exactly_zero():
    """A bias before BatchNorm has a gradient of exactly 0, which finite differences see as rounding noise of
    about 1e-10 |L|: the default floor compares such entries in absolute terms instead of failing on them."""
    rng = np.random.default_rng(4)
    model = bp.Sequential(bp.Dense(3, 4), bp.BatchNorm1d(4), bp.Tanh(), bp.Dense(4, 2), dtype="float64", seed=2)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    _, grads = bp.value_and_grad(model, bp.losses.MeanSquaredError(), x, y)
    assert np.abs(grads["0.bias"]).max() < 1e-15
    assert bp.gradcheck(model, bp.losses.MeanSquaredError(), x, y) < 1e-5
    with pytest.raises(bp.errors.GradientCheckError, match="0.bias"):
        bp.gradcheck(model, bp.losses.MeanSquaredError(), x, y, floor=1e-12)
