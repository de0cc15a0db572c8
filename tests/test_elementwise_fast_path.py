"""A step's element-wise fast paths (`Backend.affine`, `.relu`, `.sigmoid`, `.softmax_cross_entropy`) against the
array-API reference (`backprop.elementwise`, `backprop.losses`, the base class's methods) on the same arrays, on
every backend: outputs and gradients, special values included; and the torch backend's forms launch fewer
operations than the reference."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp

SPECIAL = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30]


def _reference(backend: bp.backends.Backend) -> bp.backends.Backend:
    """The same library and device with every fast path removed."""
    return bp.backends.Backend(backend.spec, backend.xp, backend.device)


def _inputs(backend: bp.backends.Backend, dtype: str, scale: float) -> tuple:
    rng = np.random.default_rng(3)
    host = np.concatenate([rng.normal(scale=scale, size=40), SPECIAL]).reshape(7, 7)
    return backend.to_device(host, backend.dtype(dtype)), host


def _equal(fast, reference, rtol: float) -> None:
    np.testing.assert_allclose(bp.to_numpy(fast), bp.to_numpy(reference), rtol=rtol, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu_and_its_gradient_equal_the_reference(backend, dtype):
    fast = bp.get_backend(backend)
    x, _ = _inputs(fast, dtype, 3.0)
    dy = fast.to_device(np.random.default_rng(4).normal(size=(7, 7)), fast.dtype(dtype))  # finite: inf * 0 warns
    with fast.activate():
        y, backward = fast.relu(x)
        y_ref, backward_ref = _reference(fast).relu(x)
        _equal(y, y_ref, 0)
        _equal(backward(dy), backward_ref(dy), 0)  # 0 where x <= 0 or NaN, dy elsewhere: exactly
        assert bp.to_numpy(backward(dy)).dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype, scale, rtol", [("float64", 300.0, 1e-15), ("float32", 30.0, 1e-6)])
def test_sigmoid_equals_the_reference(backend, dtype, scale, rtol):
    """Within the range where neither rounds to a subnormal: torch.sigmoid flushes outputs below about e^-88
    (float32) or e^-745 (float64) to 0, where the reference keeps them."""
    fast = bp.get_backend(backend)
    x, host = _inputs(fast, dtype, scale)
    with fast.activate():
        y, y_ref = bp.to_numpy(fast.sigmoid(x)), bp.to_numpy(_reference(fast).sigmoid(x))
    normal = ~(np.abs(host) > (80 if dtype == "float32" else 700))  # NaN stays in: both give NaN
    _equal(y[normal], y_ref[normal], rtol)
    assert np.all((y >= 0) | np.isnan(host)) and np.all((y <= 1) | np.isnan(host))


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-13), ("float32", 1e-5)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_affine_equals_the_reference(backend, dtype, rtol, with_bias):
    fast = bp.get_backend(backend)
    rng = np.random.default_rng(5)
    put = lambda host: fast.to_device(host, fast.dtype(dtype))  # noqa: E731
    x, weight, bias = put(rng.normal(size=(9, 6))), put(rng.normal(size=(6, 4))), put(rng.normal(size=(4,)))
    with fast.activate():
        y = fast.affine(x, weight, bias if with_bias else None)
        y_ref = _reference(fast).affine(x, weight, bias if with_bias else None)
    _equal(y, y_ref, rtol)
    expected = bp.to_numpy(x).astype(np.float64) @ bp.to_numpy(weight) + (bp.to_numpy(bias) if with_bias else 0)
    np.testing.assert_allclose(bp.to_numpy(y), expected, rtol=rtol * 10, atol=rtol * 10)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-13), ("float32", 2e-5)])
@pytest.mark.parametrize("rows", ["one-hot", "weighted", "soft"])
def test_softmax_cross_entropy_equals_the_reference(backend, dtype, rtol, rows):
    """Logits from -1e4 to 1e4 (no overflow either way); one-hot rows, rows scaled by class weights (not summing
    to 1, so the gradient's row-sum term matters) and soft probability rows; a 0-d array scale, as the weighted
    mean gives, for the weighted rows."""
    fast = bp.get_backend(backend)
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=3.0, size=(6, 5))
    logits[0, 0], logits[1, :] = 1e4, -1e4
    target = np.eye(5)[rng.integers(0, 5, 6)]
    if rows == "weighted":
        target *= rng.uniform(0.5, 2.0, size=5)
    elif rows == "soft":
        target = rng.dirichlet(np.ones(5), size=6)
    put = lambda host: fast.to_device(host, fast.dtype(dtype))  # noqa: E731
    z, t = put(logits), put(target)
    with fast.activate():
        scale = fast.xp.asarray(0.25, dtype=z.dtype, device=fast.device) if rows == "weighted" else 1 / 6
        value, grad = fast.softmax_cross_entropy(z, t, scale)
        value_ref, grad_ref = _reference(fast).softmax_cross_entropy(z, t, scale)
    _equal(value, value_ref, rtol)
    np.testing.assert_allclose(bp.to_numpy(grad), bp.to_numpy(grad_ref), rtol=rtol, atol=rtol)
    assert np.isfinite(bp.to_numpy(value)) and np.all(np.isfinite(bp.to_numpy(grad)))


def test_cross_entropy_training_step_uses_the_backends_form(torch):
    """`loss_and_backward` reaches ``Backend.softmax_cross_entropy`` through `Loss.value_and_grad_on`; the
    public ``value_and_grad`` gives the same numbers through the reference."""
    from backprop.gradients import loss_and_backward

    model = bp.Sequential(bp.Dense(4, 3), device="torch:cpu", seed=0, dtype="float64")
    loss = bp.losses.CrossEntropy()
    x = np.random.default_rng(0).normal(size=(5, 4))
    y = np.array([0, 2, 1, 1, 0])
    calls = []
    backend = model.backend
    original = type(backend).softmax_cross_entropy
    try:
        type(backend).softmax_cross_entropy = lambda self, *a: calls.append(1) or original(self, *a)
        value = float(loss_and_backward(model, loss, x, y))
    finally:
        type(backend).softmax_cross_entropy = original
    assert calls == [1]
    output = model.forward(model.as_input(x))[0]
    target = loss.prepare_target(y, backend, model._dtype, (5, 3))
    assert float(loss.value_and_grad(output, target)[0]) == pytest.approx(value, rel=1e-14)


def test_a_subclass_overriding_value_and_grad_keeps_its_own_rule_in_training():
    """`loss_and_backward` goes through ``value_and_grad_on``; a CrossEntropy subclass that replaces only
    ``value_and_grad`` (here: twice the loss) must still be what a training step uses."""
    from backprop.gradients import loss_and_backward

    class Doubled(bp.losses.CrossEntropy):
        def value_and_grad(self, prediction, target):
            value, grad = super().value_and_grad(prediction, target)
            return value * 2, grad * 2

    x = np.random.default_rng(0).normal(size=(5, 4))
    y = np.array([0, 2, 1, 1, 0])
    values = []
    for loss in (bp.losses.CrossEntropy(), Doubled()):
        model = bp.Sequential(bp.Dense(4, 3), seed=0, dtype="float64")
        values.append(float(loss_and_backward(model, loss, x, y)))
    assert values[1] == pytest.approx(2 * values[0], rel=1e-15)


def test_the_torch_forms_take_fewer_operations(torch):
    """aten operations that compute something (as `benchmarks.opcount` counts PyTorch's): sigmoid 1 against the
    reference's 7, relu with its gradient 3 against 4, a dense layer's forward 1 against 2, softmax cross-entropy
    with its gradient 9 against 14."""
    from benchmarks.opcount import NOT_KERNELS
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not (func.is_view or func.__name__.split(".")[0] in NOT_KERNELS):
                self.count += 1
            return func(*args, **(kwargs or {}))

    fast = bp.get_backend("torch:cpu")
    reference = _reference(fast)
    x = torch.randn(8, 5, dtype=torch.float64)
    weight, bias = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    bp.data.constant(0.0, x)  # the reference's 0-d zero, made once (a copy, not part of any step)

    def count(work) -> int:
        with Counting() as counting:
            work()
        return counting.count

    assert (count(lambda: fast.sigmoid(x)), count(lambda: reference.sigmoid(x))) == (1, 7)
    assert (count(lambda: fast.relu(x)[1](x)), count(lambda: reference.relu(x)[1](x))) == (3, 4)
    assert (count(lambda: fast.affine(x, weight, bias)), count(lambda: reference.affine(x, weight, bias))) == (1, 2)
    target = torch.eye(5, dtype=torch.float64)[torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])]
    assert (count(lambda: fast.softmax_cross_entropy(x, target, 0.125)),
            count(lambda: reference.softmax_cross_entropy(x, target, 0.125))) == (9, 14)
