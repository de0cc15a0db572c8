"""L1/L2 penalties and class-weighted losses: values by hand, gradient checks, PyTorch references, backends."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.gradients import loss_and_backward

MSE = bp.losses.MeanSquaredError()
CPU64 = bp.get_backend("cpu")


def _model(**kwargs):
    return bp.Sequential(bp.Dense(4, 5), bp.LayerNorm(5), bp.Tanh(), bp.Dense(5, 3), dtype="float64", seed=2, **kwargs)


def _data(n=6, outputs=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.normal(size=(n, outputs))


# -- penalties --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("penalty", [bp.penalties.L1(0.05), bp.penalties.L2(0.1), bp.penalties.L1L2(0.03, 0.2),
                                     bp.penalties.L2(0.1, parameters=["0.bias", "1.weight", "3.weight"])])
def test_gradcheck_penalties(penalty):
    x, y = _data()
    assert bp.gradcheck(_model(), MSE, x, y, penalty=penalty) < 1e-6


def test_penalty_value_and_gradient_by_hand_apply_to_weight_matrices_by_default():
    x, y = _data()
    model = _model()
    state = model.state_dict()
    plain_value, plain_grads = bp.value_and_grad(model, MSE, x, y)
    value, grads = bp.value_and_grad(model, MSE, x, y, penalty=bp.penalties.L1L2(l1=0.03, l2=0.2))
    w0, w3 = state["0.weight"], state["3.weight"]
    expected = sum(0.03 * np.abs(w).sum() + 0.2 * (w * w).sum() for w in (w0, w3))
    assert value == pytest.approx(plain_value + expected, rel=1e-12)
    for name, w in (("0.weight", w0), ("3.weight", w3)):
        np.testing.assert_allclose(grads[name], plain_grads[name] + 0.03 * np.sign(w) + 0.4 * w, rtol=1e-12)
    for name in ("0.bias", "1.weight", "1.bias", "3.bias"):  # biases and normalisation scales are left alone
        np.testing.assert_array_equal(grads[name], plain_grads[name])


def test_penalty_errors_name_the_problem():
    with pytest.raises(bp.errors.ConfigurationError, match=r"unknown parameters \['9.weight'\]"):
        bp.penalties.L2(0.1, parameters=["9.weight"])(_model())
    with pytest.raises(bp.errors.ConfigurationError, match="applies to no parameter"):
        bp.penalties.L2(0.1)(bp.Sequential(bp.LayerNorm(3)))
    with pytest.raises(ValueError, match="l2 coefficient must be a finite number >= 0"):
        bp.penalties.L2(-1.0)


def test_penalty_on_every_backend_agrees_with_numpy(backend):
    x, y = _data()

    def run(device):
        model = bp.Sequential(bp.Dense(4, 5), bp.Tanh(), bp.Dense(5, 3), device=device, seed=2)
        value = loss_and_backward(model, MSE, model.as_input(x), y, penalty=bp.penalties.L1L2(0.01, 0.1))
        return float(value), {name: bp.to_numpy(p.grad) for name, p in model.named_parameters()}

    (value_ref, grads_ref), (value, grads) = run("cpu"), run(backend)
    assert value == pytest.approx(value_ref, rel=1e-5)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6)


# -- class weights: PyTorch references (float64) ----------------------------------------------------------------
CLASS_WEIGHTS = np.array([0.2, 1.0, 3.5])


def _torch_grad(torch, function, z):
    z_torch = torch.tensor(z, requires_grad=True)
    value = function(z_torch)
    value.backward()
    return value.item(), z_torch.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_cross_entropy_with_class_indices_matches_torch(torch, reduction):
    rng = np.random.default_rng(1)
    z, labels = rng.normal(size=(7, 3)) * 2.0, np.array([0, 1, 2, 2, 1, 0, 2])
    loss = bp.losses.CrossEntropy(weight=CLASS_WEIGHTS, reduction=reduction)
    target = loss.prepare_target(labels, CPU64, np.float64, z.shape)
    value, grad = loss.value_and_grad(z, target)
    expected, expected_grad = _torch_grad(torch, lambda t: torch.nn.functional.cross_entropy(
        t, torch.tensor(labels), weight=torch.tensor(CLASS_WEIGHTS), reduction=reduction), z)
    assert float(value) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_weighted_cross_entropy_with_probability_targets_matches_torch(torch):
    rng = np.random.default_rng(2)
    z, t = rng.normal(size=(5, 3)), rng.dirichlet(np.ones(3), size=5)
    loss = bp.losses.CrossEntropy(weight=CLASS_WEIGHTS)
    value, grad = loss.value_and_grad(z, loss.prepare_target(t, CPU64, np.float64, z.shape))
    # Our weighted mean divides by W = sum_ik w_k t_ik for every kind of target (PyTorch divides soft rows by n).
    total_weight = float(np.sum(t * CLASS_WEIGHTS))
    expected, expected_grad = _torch_grad(torch, lambda s: torch.nn.functional.cross_entropy(
        s, torch.tensor(t), weight=torch.tensor(CLASS_WEIGHTS), reduction="sum") / total_weight, z)
    assert float(value) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_weighted_cross_entropy_on_probabilities_matches_torch_nll(torch):
    rng = np.random.default_rng(3)
    z, labels = rng.normal(size=(6, 3)), np.array([2, 2, 0, 1, 2, 0])
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = bp.losses.CrossEntropy(from_logits=False, weight=CLASS_WEIGHTS)
    value, grad = loss.value_and_grad(p, loss.prepare_target(labels, CPU64, np.float64, p.shape))
    expected, expected_grad = _torch_grad(torch, lambda q: torch.nn.functional.nll_loss(
        torch.log(q), torch.tensor(labels), weight=torch.tensor(CLASS_WEIGHTS)), p)
    assert float(value) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("pos_weight", [3.0, np.array([0.5, 2.0, 4.0])])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_pos_weight_matches_torch_from_logits_and_from_probabilities(torch, pos_weight, reduction):
    rng = np.random.default_rng(4)
    z, t = rng.normal(size=(6, 3)) * 3.0, rng.uniform(size=(6, 3)).round()
    t[0, 0] = 0.3  # soft labels too
    reference = lambda s: torch.nn.functional.binary_cross_entropy_with_logits(  # noqa: E731
        s, torch.tensor(t), pos_weight=torch.tensor(pos_weight), reduction=reduction)
    expected, expected_grad = _torch_grad(torch, reference, z)
    logits = bp.losses.BinaryCrossEntropy(from_logits=True, pos_weight=pos_weight, reduction=reduction)
    value, grad = logits.value_and_grad(z, t)
    assert float(value) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)
    p = 1.0 / (1.0 + np.exp(-z))  # the same loss in probability space; dL/dz = dL/dp * p (1 - p)
    probabilities = bp.losses.BinaryCrossEntropy(pos_weight=pos_weight, reduction=reduction)
    value, grad = probabilities.value_and_grad(p, t)
    assert float(value) == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad * p * (1 - p), expected_grad, rtol=1e-9, atol=1e-14)


# -- class weights: gradient checks, errors, backends -----------------------------------------------------------
@pytest.mark.parametrize("loss, target", [
    (bp.losses.CrossEntropy(weight=CLASS_WEIGHTS), np.array([0, 2, 1, 2, 2, 0])),
    (bp.losses.CrossEntropy(weight=CLASS_WEIGHTS, reduction="sum"), np.array([0, 2, 1, 2, 2, 0])),
    (bp.losses.BinaryCrossEntropy(from_logits=True, pos_weight=[1.0, 4.0, 0.5]), (np.arange(18) % 2).reshape(6, 3)),
])
def test_gradcheck_weighted_losses(loss, target):
    x, _ = _data()
    assert bp.gradcheck(_model(), loss, x, target) < 1e-6


def test_gradcheck_weighted_bce_on_probabilities():
    x, _ = _data()
    model = bp.Sequential(bp.Dense(4, 3), bp.Sigmoid(), dtype="float64", seed=3)
    target = (np.arange(18) % 2).reshape(6, 3)
    assert bp.gradcheck(model, bp.losses.BinaryCrossEntropy(pos_weight=2.5), x, target) < 1e-6


def test_class_weight_errors_name_the_problem_and_zero_weight_batches_contribute_nothing():
    x, _ = _data()
    with pytest.raises(bp.errors.ShapeError, match="CrossEntropy weight has 2 entries but the prediction has 3"):
        bp.value_and_grad(_model(), bp.losses.CrossEntropy(weight=[1.0, 2.0]), x, np.zeros(6, dtype=int))
    with pytest.raises(ValueError, match="finite and non-negative"):
        bp.losses.CrossEntropy(weight=[1.0, -2.0, 1.0])
    with pytest.raises(bp.errors.ShapeError, match="must have 1 dimension"):
        bp.losses.CrossEntropy(weight=2.0)
    value, grads = bp.value_and_grad(_model(), bp.losses.CrossEntropy(weight=[0.0, 1.0, 1.0]), x,
                                     np.zeros(6, dtype=int))
    assert value == 0.0 and not any(g.any() for g in grads.values()), "a batch of weight 0 contributes 0"


def test_weighted_losses_on_every_backend_agree_with_numpy(backend):
    x, _ = _data()
    cases = [(bp.losses.CrossEntropy(weight=CLASS_WEIGHTS), np.array([0, 2, 1, 2, 2, 0])),
             (bp.losses.BinaryCrossEntropy(from_logits=True, pos_weight=[1.0, 4.0, 0.5]),
              (np.arange(18) % 2).reshape(6, 3))]
    for loss, target in cases:
        results = []
        for device in ("cpu", backend):
            model = bp.Sequential(bp.Dense(4, 3), device=device, seed=5)
            results.append(bp.value_and_grad(model, loss, x, target))
        (value_ref, grads_ref), (value, grads) = results
        assert value == pytest.approx(value_ref, rel=1e-5)
        for name in grads_ref:
            np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6)


def test_class_weights_are_copied_to_the_device_once(monkeypatch):
    """fit batches reuse one device copy of the weights instead of a host-to-device copy per batch."""
    x, _ = _data()
    loss = bp.losses.CrossEntropy(weight=CLASS_WEIGHTS)
    model = bp.Sequential(bp.Dense(4, 3), device="array_api_strict:device1", seed=5)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    model.fit(x, np.array([0, 2, 1, 2, 2, 0]), loss, optimizer, epochs=3, batch_size=2, verbose=0)
    assert len(loss._device_weights) == 1
    (copy,) = loss._device_weights.values()
    assert model.backend.owns(copy)
    np.testing.assert_array_equal(bp.to_numpy(copy), CLASS_WEIGHTS.astype(np.float32))
