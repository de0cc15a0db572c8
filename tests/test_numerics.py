"""Numerically hard inputs give finite values and gradients, with no floating-point warning, and agree with PyTorch.

Every computation runs with Python warnings turned into errors and NumPy's overflow, divide-by-zero and invalid
traps raised (array_api_strict computes with NumPy, so the traps see it too). Underflow is left silent on purpose:
exp(-1e4) = 0 is the correct rounded result, not an error.

Tolerances: values and gradients are compared with PyTorch in the same dtype to a few units in the last place
(rtol 1e-6 for float32, 1e-13 for float64) plus an absolute floor of the dtype's smallest normal number, below
which libraries legitimately differ (one flushes sigmoid(-100) to 0 in float32, another keeps a subnormal).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest

import backprop as bp

DTYPES = ["float32", "float64"]
RTOL = {"float32": 1e-6, "float64": 1e-13}
HARD_LOGITS = [-1e4, -100.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0, 1e4]


@contextlib.contextmanager
def no_floating_point_trouble():
    """Any warning, and NumPy overflow / divide-by-zero / invalid operation, raises."""
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        warnings.simplefilter("error")
        yield


def assert_close(actual, expected, dtype: str) -> None:
    actual = np.asarray(bp.to_numpy(actual), dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=float(np.finfo(dtype).tiny))


def layer_value_and_input_grad(layer: bp.Layer, x: np.ndarray, backend: str, dtype: str, grad_output=None):
    """Forward one activation layer and backpropagate ``grad_output`` (default ones) to its input."""
    model = bp.Sequential(layer, device=backend, dtype=dtype)
    with no_floating_point_trouble():
        y, backward = model.forward(x)
        g = np.ones(x.shape) if grad_output is None else grad_output
        dx = backward(model.backend.to_device(np.asarray(g), model.backend.dtype(dtype)))
    return y, dx


def torch_value_and_input_grad(torch, function, x: np.ndarray, dtype: str, grad_output=None):
    tx = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    ty = function(tx)
    ty.backward(torch.ones_like(ty) if grad_output is None else torch.tensor(grad_output, dtype=ty.dtype))
    return ty.detach().numpy(), tx.grad.numpy()


def loss_value_and_grad(loss, prediction: np.ndarray, target, backend: str, dtype: str):
    """The loss and dL/dprediction for a prediction placed on ``backend`` (identity model: no parameters)."""
    model = bp.Sequential(bp.Identity(), device=backend, dtype=dtype)
    with no_floating_point_trouble():
        output = model.as_input(prediction)
        target = loss.prepare_target(target, model.backend, model.backend.dtype(dtype), tuple(output.shape))
        value, grad = loss.value_and_grad(output, target)
        value = float(value)
    return value, grad


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_tanh_and_softmax_at_huge_logits(backend, dtype, torch):
    x = np.array([HARD_LOGITS, HARD_LOGITS[::-1]])
    grad_output = np.linspace(-1.0, 1.0, x.size).reshape(x.shape)  # not uniform, so Softmax's gradient is not 0
    for layer, reference in [(bp.Sigmoid(), torch.sigmoid), (bp.Tanh(), torch.tanh),
                             (bp.Softmax(), lambda t: torch.softmax(t, dim=-1))]:
        y, dx = layer_value_and_input_grad(layer, x, backend, dtype, grad_output)
        expected_y, expected_dx = torch_value_and_input_grad(torch, reference, x, dtype, grad_output)
        assert_close(y, expected_y, dtype)
        assert_close(dx, expected_dx, dtype)
    y, _ = layer_value_and_input_grad(bp.Sigmoid(), x, backend, dtype)
    host = bp.to_numpy(y)
    assert host[0, 0] == 0.0 and host[0, -1] == 1.0  # saturated exactly, not NaN
    if dtype == "float64":  # sigmoid(-100) = 3.7e-44 keeps its relative precision (1 - sigmoid(100) could not)
        assert host[0, 1] == pytest.approx(math.exp(-100.0), rel=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_from_logits_at_huge_logits(backend, dtype, torch):
    z = np.array([[1e4, -1e4, 1e4], [-1e4, 0.0, 50.0]])
    t = np.array([[0.0, 1.0, 1.0], [0.0, 0.3, 0.5]])
    value, grad = loss_value_and_grad(bp.losses.BinaryCrossEntropy(from_logits=True), z, t, backend, dtype)

    tz = torch.tensor(z, dtype=getattr(torch, dtype), requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(tz, torch.tensor(t, dtype=tz.dtype))
    expected.backward()
    assert math.isfinite(value)
    assert value == pytest.approx(float(expected.detach()), rel=RTOL[dtype])
    assert value == pytest.approx((1e4 + 1e4 + 0.0 + 0.0 + math.log(2) + 25.0) / 6, rel=RTOL[dtype])
    assert_close(grad, tz.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_then_binary_cross_entropy_on_probabilities_at_huge_logits(backend, dtype, torch):
    """Sigmoid saturates to exactly 0 or 1; log(0) is clamped at -100 (as PyTorch does), never -inf or NaN."""
    z = np.array([[1e4, -1e4, 1e4], [-1e4, 0.0, 1e4]])
    t = np.array([[0.0, 1.0, 1.0], [0.0, 0.3, 0.5]])
    loss = bp.losses.BinaryCrossEntropy(from_logits=False)
    model = bp.Sequential(bp.Sigmoid(), device=backend, dtype=dtype)
    with no_floating_point_trouble():
        p, backward = model.forward(z)
        target = loss.prepare_target(t, model.backend, model.backend.dtype(dtype), tuple(p.shape))
        value, grad_p = loss.value_and_grad(p, target)
        dz = backward(grad_p)
        value = float(value)

    tz = torch.tensor(z, dtype=getattr(torch, dtype), requires_grad=True)
    tp = torch.sigmoid(tz)
    tp.retain_grad()
    expected = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(t, dtype=tz.dtype))
    expected.backward()
    assert value == pytest.approx(float(expected.detach()), rel=RTOL[dtype])
    # wrong by 1e4 logits: each such element costs exactly 100 (-log clamped); 0.5 * 100 for t = 0.5 at p = 1
    assert value == pytest.approx((100.0 + 100.0 + 0.0 + 0.0 + 0.3 * math.log(2) + 0.7 * math.log(2) + 50.0) / 6,
                                  rel=RTOL[dtype])
    # dL/dp = (p - t) / max(p (1 - p), 1e-12) / 6: huge but finite where p saturated on the wrong side
    exact_grad_p = np.array([[1e12, -1e12, 0.0], [0.0, 0.2 / 0.25, 0.5e12]]) / 6
    assert_close(grad_p, exact_grad_p, dtype)
    # PyTorch agrees where the floor is not reached (its floor is the float32 constant 1e-12, even in float64)
    unclamped = np.array([[False, False, True], [True, True, False]])
    assert_close(bp.to_numpy(grad_p)[unclamped], tp.grad.numpy()[unclamped], dtype)
    assert_close(dz, tz.grad.numpy(), dtype)  # through Sigmoid: p (1 - p) = 0 where saturated, so exactly 0 there
    np.testing.assert_array_equal(bp.to_numpy(dz)[0], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_with_logits_of_1e4(backend, dtype, torch):
    z = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0], [-1e4, 1e4, 1e4]])
    classes = [0, 1, 0]
    value, grad = loss_value_and_grad(bp.losses.CrossEntropy(from_logits=True), z, classes, backend, dtype)

    tz = torch.tensor(z, dtype=getattr(torch, dtype), requires_grad=True)
    expected = torch.nn.functional.cross_entropy(tz, torch.tensor(classes))
    expected.backward()
    exact = (0.0 + math.log(2) + 2e4 + math.log(2)) / 3
    assert value == pytest.approx(exact, rel=RTOL[dtype])
    assert value == pytest.approx(float(expected.detach()), rel=RTOL[dtype])
    exact_grad = np.array([[0.0, 0.0, 0.0], [0.5, -0.5, 0.0], [-1.0, 0.5, 0.5]]) / 3
    assert_close(grad, exact_grad, dtype)
    assert_close(grad, tz.grad.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_layer_then_cross_entropy_on_probabilities_at_1e4(backend, dtype):
    """A probability of exactly 0 for the true class costs 100 (log clamped), and the gradient stays finite."""
    z = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0], [-1e4, 1e4, 1e4]])
    loss = bp.losses.CrossEntropy(from_logits=False)
    model = bp.Sequential(bp.Softmax(), device=backend, dtype=dtype)
    with no_floating_point_trouble():
        p, backward = model.forward(z)
        target = loss.prepare_target([0, 1, 0], model.backend, model.backend.dtype(dtype), tuple(p.shape))
        value, grad_p = loss.value_and_grad(p, target)
        dz = backward(grad_p)
        value = float(value)
    assert value == pytest.approx((0.0 + math.log(2) + 100.0) / 3, rel=RTOL[dtype])
    # d/dz of -log softmax(z)_c is softmax(z) - onehot(c) where the probability is not clamped (rows 0 and 1);
    # in row 2 p_c = 0 exactly, so dL/dp_c is clipped and the Softmax Jacobian (zero there) gives 0
    assert_close(dz, np.array([[0.0, 0.0, 0.0], [0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]) / 3, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_leaky_relu_gradient_at_exactly_zero(backend, dtype, torch):
    x = np.array([[-1.0, 0.0, 1.0], [0.0, -0.0, 2.0]])
    y, dx = layer_value_and_input_grad(bp.ReLU(), x, backend, dtype)
    expected_y, expected_dx = torch_value_and_input_grad(torch, torch.relu, x, dtype)
    np.testing.assert_array_equal(bp.to_numpy(dx), [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(bp.to_numpy(dx), expected_dx)
    np.testing.assert_array_equal(bp.to_numpy(y), expected_y)

    slope = 0.125
    y, dx = layer_value_and_input_grad(bp.LeakyReLU(slope), x, backend, dtype)
    expected_y, expected_dx = torch_value_and_input_grad(
        torch, lambda t: torch.nn.functional.leaky_relu(t, slope), x, dtype)
    np.testing.assert_array_equal(bp.to_numpy(dx), [[slope, slope, 1.0], [slope, slope, 1.0]])
    np.testing.assert_array_equal(bp.to_numpy(dx), expected_dx)
    np.testing.assert_array_equal(bp.to_numpy(y), expected_y)
