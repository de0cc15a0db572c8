"""Dropout, BatchNorm1d and LayerNorm: gradient checks, PyTorch references, backends, buffers."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.gradients import loss_and_backward

MSE = bp.losses.MeanSquaredError()


def _data(n=6, features=4, outputs=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)) * 3.0 + 1.0, rng.normal(size=(n, outputs))


# -- gradient checks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_batchnorm_in_training_mode(affine):
    x, y = _data()
    # no bias before the norm: its exact gradient is 0 (the batch mean removes it) and finite differences see noise
    model = bp.Sequential(bp.Dense(4, 5, bias=False), bp.BatchNorm1d(5, affine=affine), bp.Tanh(), bp.Dense(5, 2),
                          dtype="float64", seed=1)
    if affine:
        state = model.state_dict()
        state["1.weight"], state["1.bias"] = np.linspace(0.5, 2.0, 5), np.linspace(-1.0, 1.0, 5)
        model.load_state_dict(state)
    assert bp.gradcheck(model, MSE, x, y) < 1e-6


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_layernorm(affine):
    x, y = _data()
    model = bp.Sequential(bp.Dense(4, 5), bp.LayerNorm(5, elementwise_affine=affine), bp.Tanh(), bp.Dense(5, 2),
                          dtype="float64", seed=2)
    assert bp.gradcheck(model, MSE, x, y) < 1e-6


def test_gradcheck_dropout_with_a_fixed_mask():
    x, y = _data(n=8)
    model = bp.Sequential(bp.Dense(4, 6), bp.Tanh(), bp.Dropout(0.5, seed=3), bp.Dense(6, 2), dtype="float64", seed=3)
    assert bp.gradcheck(model, MSE, x, y) < 1e-6


def test_fixed_randomness_replays_the_first_mask_inside_and_draws_afresh_outside():
    model = bp.Sequential(bp.Dropout(0.5, seed=0), dtype="float64")
    x = np.ones((20, 10))
    dropout = model.layers[0]
    with dropout.fixed_randomness():
        first = bp.to_numpy(model.forward(x, training=True)[0])
        second = bp.to_numpy(model.forward(x, training=True)[0])
        np.testing.assert_array_equal(first, second)
        with pytest.raises(ValueError, match="fixed mask has shape"):
            model.forward(np.ones((3, 10)), training=True)
    third = bp.to_numpy(model.forward(x, training=True)[0])
    assert np.any(third != first)


# -- PyTorch references (float64) -------------------------------------------------------------------------------
def test_batchnorm_matches_torch_over_training_steps_then_eval(torch):
    rng = np.random.default_rng(4)
    ours = bp.Sequential(bp.BatchNorm1d(3, momentum=0.2, eps=1e-3), dtype="float64")
    reference = torch.nn.BatchNorm1d(3, momentum=0.2, eps=1e-3, dtype=torch.float64)
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    ours.load_state_dict({"0.weight": gamma, "0.bias": beta,
                          "0.running_mean": np.zeros(3), "0.running_var": np.ones(3)})
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(gamma))
        reference.bias.copy_(torch.tensor(beta))
    for step in range(4):
        x, g = rng.normal(size=(5 + step, 3)) * 2.0 + 0.5, rng.normal(size=(5 + step, 3))
        ours.zero_grad()
        y, backward = ours.forward(x, training=True)
        dx = backward(g)
        x_torch = torch.tensor(x, requires_grad=True)
        reference.zero_grad()
        y_torch = reference.train()(x_torch)
        y_torch.backward(torch.tensor(g))
        np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=1e-10, atol=1e-12)
        state = ours.state_dict()
        grads = {name: p.grad for name, p in ours.named_parameters()}
        np.testing.assert_allclose(grads["0.weight"], reference.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["0.bias"], reference.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state["0.running_mean"], reference.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state["0.running_var"], reference.running_var.numpy(), rtol=1e-10, atol=1e-12)
    x, g = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    y, backward = ours.forward(x, training=False)
    dx = backward(g)
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = reference.eval()(x_torch)
    y_torch.backward(torch.tensor(g))
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_layernorm_matches_torch(torch):
    rng = np.random.default_rng(5)
    ours = bp.Sequential(bp.LayerNorm(6, eps=1e-4), dtype="float64")
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    ours.load_state_dict({"0.weight": gamma, "0.bias": beta})
    reference = torch.nn.LayerNorm(6, eps=1e-4, dtype=torch.float64)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(gamma))
        reference.bias.copy_(torch.tensor(beta))
    x, g = rng.normal(size=(5, 6)) * 4.0 - 1.0, rng.normal(size=(5, 6))
    y, backward = ours.forward(x, training=True)
    dx = backward(g)
    x_torch = torch.tensor(x, requires_grad=True)
    y_torch = reference(x_torch)
    y_torch.backward(torch.tensor(g))
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=1e-10, atol=1e-12)
    grads = {name: p.grad for name, p in ours.named_parameters()}
    np.testing.assert_allclose(grads["0.weight"], reference.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["0.bias"], reference.bias.grad.numpy(), rtol=1e-10, atol=1e-12)


# -- Dropout ----------------------------------------------------------------------------------------------------
def test_dropout_is_the_identity_at_inference():
    model = bp.Sequential(bp.Dropout(0.9, seed=0), dtype="float64")
    x = np.random.default_rng(0).normal(size=(7, 5))
    np.testing.assert_array_equal(model.predict(x), x)
    y, backward = model.forward(x, training=False)
    np.testing.assert_array_equal(backward(np.ones((7, 5))), np.ones((7, 5)))


def test_dropout_keeps_the_expected_fraction_and_scales_by_one_over_keep():
    p = 0.3
    model = bp.Sequential(bp.Dropout(p, seed=1), dtype="float64")
    y = bp.to_numpy(model.forward(np.ones((400, 500)), training=True)[0])
    kept = y != 0
    assert kept.mean() == pytest.approx(1 - p, abs=0.005)  # 200 000 Bernoulli draws: std 0.001
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-15)
    assert y.mean() == pytest.approx(1.0, abs=0.01)  # inverted dropout: E[y] = x
    np.testing.assert_array_equal(model.layers[0].last_mask, y)


def test_dropout_same_seed_same_masks_on_numpy_and_array_api_strict():
    x = np.ones((6, 8))
    masks = {}
    for device in ("cpu", "array_api_strict:device1"):
        model = bp.Sequential(bp.Dense(8, 8), bp.Dropout(0.5), device=device, dtype="float64", seed=9)
        masks[device] = [bp.to_numpy(model.forward(x, training=True)[0]) != 0 for _ in range(3)]
    for first, second in zip(masks["cpu"], masks["array_api_strict:device1"]):
        np.testing.assert_array_equal(first, second)
    assert np.any(masks["cpu"][0] != masks["cpu"][1])  # a fresh mask per batch


def test_dropout_seed_none_uses_the_model_seed_without_changing_other_layers():
    with_dropout = bp.Sequential(bp.Dense(3, 4), bp.Dropout(0.5), bp.Dense(4, 2), seed=7)
    without = bp.Sequential(bp.Dense(3, 4), bp.Dense(4, 2), seed=7)
    np.testing.assert_array_equal(with_dropout.state_dict()["2.weight"], without.state_dict()["1.weight"])
    again = bp.Sequential(bp.Dense(3, 4), bp.Dropout(0.5), bp.Dense(4, 2), seed=7)
    x = np.ones((5, 3))
    np.testing.assert_array_equal(bp.to_numpy(with_dropout.forward(x, training=True)[0]),
                                  bp.to_numpy(again.forward(x, training=True)[0]))


@pytest.mark.parametrize("p", [1.0, -0.1, "0.5"])
def test_dropout_rejects_bad_probabilities(p):
    with pytest.raises(ValueError, match=r"Dropout probability p must be a number in \[0, 1\)"):
        bp.Dropout(p)


# -- BatchNorm details ------------------------------------------------------------------------------------------
def test_batchnorm_buffers_move_with_the_model_and_are_saved():
    x, _ = _data(n=8, features=3)
    model = bp.Sequential(bp.BatchNorm1d(3), dtype="float64")
    loss_and_backward(model, MSE, x, np.zeros((8, 3)))
    state = model.state_dict()
    np.testing.assert_allclose(state["0.running_mean"], 0.1 * x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(state["0.running_var"], 0.9 + 0.1 * x.var(axis=0, ddof=1), rtol=1e-12)
    expected = model.predict(x)
    model.to("array_api_strict:device1")
    assert all(model.backend.owns(v) for _, v in model.named_buffers())
    np.testing.assert_allclose(bp.to_numpy(model.predict(x)), expected, rtol=1e-12)
    fresh = bp.Sequential(bp.BatchNorm1d(3), dtype="float64")
    fresh.load_state_dict(model.state_dict())
    np.testing.assert_allclose(fresh.predict(x), expected, rtol=1e-12)


def test_batchnorm_refuses_a_single_sample_in_training():
    model = bp.Sequential(bp.BatchNorm1d(3))
    with pytest.raises(bp.errors.ShapeError, match="at least 2 samples"):
        model.forward(np.ones((1, 3)), training=True)
    assert model.predict(np.ones((1, 3))).shape == (1, 3)


def test_layers_are_registered_and_rebuild_from_config():
    for layer in (bp.Dropout(0.2, seed=4), bp.BatchNorm1d(3, momentum=0.3, eps=1e-3, affine=False),
                  bp.LayerNorm(5, eps=1e-6, elementwise_affine=False)):
        cls = bp.layers.LAYERS[type(layer).__name__]
        assert cls is type(layer)
        assert cls(**layer.config()).config() == layer.config()
    with pytest.raises(bp.errors.ShapeError, match="expects 4 input features"):
        bp.Sequential(bp.Dense(2, 3), bp.BatchNorm1d(4))


# -- every backend agrees with NumPy ----------------------------------------------------------------------------
def test_every_layer_on_every_backend_agrees_with_numpy(backend):
    x, y = _data(n=10, features=4, outputs=3, seed=8)

    def run(device):
        model = bp.Sequential(bp.Dense(4, 6), bp.BatchNorm1d(6), bp.ReLU(), bp.Dropout(0.4), bp.LayerNorm(6),
                              bp.Dense(6, 3), device=device, seed=8)
        results = []
        for _ in range(2):
            value, grads = bp.value_and_grad(model, MSE, x, y)
            results.append((value, grads))
        state = model.state_dict()
        return results, state, bp.to_numpy(model.predict(x))

    reference, other = run("cpu"), run(backend)
    for (value_ref, grads_ref), (value, grads) in zip(reference[0], other[0]):
        assert value == pytest.approx(value_ref, rel=1e-5)
        for name in grads_ref:
            np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6)
    for name in reference[1]:
        np.testing.assert_allclose(other[1][name], reference[1][name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(other[2], reference[2], rtol=1e-4, atol=1e-5)
