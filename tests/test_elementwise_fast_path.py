"""A step's element-wise fast paths (`Backend.affine`, `.relu`, `.sigmoid`) against the array-API reference
(`backprop.elementwise`, the base class's methods) on the same arrays, on every backend: outputs and gradients,
special values included; and the torch backend's forms launch fewer operations than the reference."""

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


def test_the_torch_forms_take_fewer_operations(torch):
    """aten operations that compute something (as `benchmarks.opcount` counts PyTorch's): sigmoid 1 against the
    reference's 7, relu with its gradient 3 against 4, a dense layer's forward 1 against 2."""
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
