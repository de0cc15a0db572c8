"""The torch backend's convolution and max-pooling kernels (`TorchBackend.conv2d`, `.max_pool2d`) against the
array-API reference they replace, on the same torch tensors: outputs and every gradient."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.convolution import conv2d
from backprop.pooling import max_pool2d
from backprop.windows import Window
from tests.test_convolution_math import CONV_GEOMETRIES, POOL_GEOMETRIES, TOLERANCES


@pytest.fixture
def torch_backend(torch):
    return bp.get_backend("torch:cpu")


def _close(fast, reference, rtol, what):
    fast, reference = bp.to_numpy(fast), bp.to_numpy(reference)
    assert fast.shape == reference.shape, what
    np.testing.assert_allclose(fast, reference, rtol=rtol, atol=rtol * np.abs(reference).max(), err_msg=what)


def test_the_torch_backend_overrides_both_kernels(torch_backend):
    assert type(torch_backend).conv2d is not bp.backends.Backend.conv2d
    assert type(torch_backend).max_pool2d is not bp.backends.Backend.max_pool2d
    assert type(bp.get_backend("cpu")).conv2d is bp.backends.Backend.conv2d


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=[g[0] for g in CONV_GEOMETRIES])
def test_torch_conv2d_equals_the_reference(torch_backend, geometry, with_bias, dtype):
    _, shape, filters, kernel, stride, padding, dilation = geometry
    rng = np.random.default_rng(7)
    put = lambda host: torch_backend.to_device(host, torch_backend.dtype(dtype))  # noqa: E731
    x, weight = put(rng.normal(size=shape)), put(rng.normal(size=(filters, shape[1]) + kernel))
    bias = put(rng.normal(size=filters)) if with_bias else None
    window = Window(kernel, stride, dilation, padding)
    y_fast, backward_fast = torch_backend.conv2d(x, weight, bias, window)
    y_reference, backward_reference = conv2d(torch_backend.xp, x, weight, bias, window)
    rtol = TOLERANCES[dtype]
    _close(y_fast, y_reference, rtol, "output")
    dy = put(rng.normal(size=tuple(y_reference.shape)))
    for need_dx in (True, False):
        fast, reference = backward_fast(dy, need_dx), backward_reference(dy, need_dx)
        for what, got, expected in zip(("dx", "dweight", "dbias"), fast, reference):
            if expected is None:
                assert got is None, what
            else:
                _close(got, expected, rtol, what)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("geometry", POOL_GEOMETRIES, ids=[g[0] for g in POOL_GEOMETRIES])
def test_torch_max_pool2d_equals_the_reference_with_ties(torch_backend, geometry, dtype):
    """Integer-valued inputs tie often; both must route each window's gradient to its first maximum, exactly."""
    _, shape, kernel, stride, (ph, pw) = geometry
    rng = np.random.default_rng(8)
    put = lambda host: torch_backend.to_device(host, torch_backend.dtype(dtype))  # noqa: E731
    x = put(rng.integers(0, 3, size=shape).astype(float))
    window = Window(kernel, stride, (1, 1), ((ph, ph), (pw, pw)))
    y_fast, backward_fast = torch_backend.max_pool2d(x, window)
    y_reference, backward_reference = max_pool2d(torch_backend.xp, x, window)
    np.testing.assert_array_equal(bp.to_numpy(y_fast), bp.to_numpy(y_reference))
    dy = put(rng.integers(-3, 4, size=tuple(y_reference.shape)).astype(float))
    np.testing.assert_array_equal(bp.to_numpy(backward_fast(dy)), bp.to_numpy(backward_reference(dy)))


def test_a_cnn_on_the_torch_backend_matches_the_numpy_reference(torch):
    from tests.test_conv_layers import CE, IMAGES, LABELS, small_cnn

    value, grads = bp.value_and_grad(small_cnn("cpu"), CE, IMAGES, LABELS)
    fast_value, fast_grads = bp.value_and_grad(small_cnn("torch:cpu"), CE, IMAGES, LABELS)
    assert fast_value == pytest.approx(value, rel=1e-12)
    for name, grad in grads.items():
        np.testing.assert_allclose(fast_grads[name], grad, rtol=1e-10, atol=1e-10 * np.abs(grad).max(), err_msg=name)
