"""The array-API convolution and pooling math (`backprop.convolution`, `backprop.pooling`, `backprop.windows`)
against torch.nn.functional with autograd: outputs and every gradient, over many geometries, on every CPU
backend and on JAX (immutable arrays)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import backprop as bp
from backprop.convolution import conv2d
from backprop.pooling import avg_pool2d, max_pool2d
from backprop.windows import Window, col2im, im2col, pad, window_views

TOLERANCES = {"float64": 1e-10, "float32": 1e-5}

# (name, input shape (N, C, H, W), out channels, kernel, stride, padding ((top, bottom), (left, right)), dilation)
CONV_GEOMETRIES = [
    ("3x3", (3, 2, 6, 7), 4, (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ("stride2_pad1", (2, 3, 7, 8), 5, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ("same_even_kernel", (2, 2, 6, 5), 3, (2, 4), (1, 1), ((0, 1), (1, 2)), (1, 1)),
    ("dilation2", (2, 2, 9, 8), 3, (3, 2), (1, 1), ((1, 1), (0, 0)), (2, 3)),
    ("asymmetric", (2, 3, 7, 6), 2, (3, 1), (2, 1), ((1, 1), (0, 0)), (1, 1)),
    ("kernel_is_input", (3, 2, 5, 4), 3, (5, 4), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ("one_by_one", (2, 4, 3, 3), 2, (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ("stride_beyond_kernel", (2, 2, 9, 10), 3, (2, 2), (3, 4), ((1, 1), (0, 2)), (1, 1)),
    ("dilated_strided_padded", (2, 2, 11, 9), 2, (3, 3), (2, 3), ((2, 2), (1, 1)), (2, 2)),
]


def _namespaces():
    """(id, to_device(host) -> array, xp) for every CPU backend, plus JAX's own namespace where installed."""
    cases = []
    for spec in ("cpu", "array_api_strict", "array_api_strict:device1", "torch:cpu"):
        cases.append(pytest.param(spec, id=spec))
    cases.append(pytest.param("jax", id="jax", marks=pytest.mark.skipif(
        importlib.util.find_spec("jax") is None, reason="JAX is not installed: pip install jax")))
    return cases


@pytest.fixture(params=_namespaces())
def xp_and_put(request):
    """(xp, put) where put(host array, dtype name) places a NumPy array on that backend."""
    if request.param == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp, lambda host, dtype: jnp.asarray(host, dtype=getattr(jnp, dtype))
    try:
        backend = bp.get_backend(request.param)
    except bp.errors.BackendUnavailableError as error:
        pytest.skip(f"{request.param} unavailable: {error}")
    return backend.xp, lambda host, dtype: backend.to_device(np.asarray(host), backend.dtype(dtype))


def _torch_padding(torch, x, padding):
    (top, bottom), (left, right) = padding
    return torch.nn.functional.pad(x, (left, right, top, bottom))


def _close(actual, expected, rtol, what):
    actual, expected = bp.to_numpy(actual), expected.detach().numpy()
    assert actual.shape == expected.shape, what
    scale = max(float(np.abs(expected).max()), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=[g[0] for g in CONV_GEOMETRIES])
def test_conv2d_matches_torch_autograd(torch, xp_and_put, geometry, dtype):
    xp, put = xp_and_put
    _, shape, filters, kernel, stride, padding, dilation = geometry
    rng = np.random.default_rng(0)
    x_host = rng.normal(size=shape)
    w_host = rng.normal(size=(filters, shape[1]) + kernel)
    b_host = rng.normal(size=filters)
    window = Window(kernel, stride, dilation, padding)
    y, backward = conv2d(xp, put(x_host, dtype), put(w_host, dtype), put(b_host, dtype), window)
    tdtype = getattr(torch, dtype)
    x_t, w_t, b_t = (torch.tensor(a, dtype=tdtype, requires_grad=True) for a in (x_host, w_host, b_host))
    y_t = torch.nn.functional.conv2d(_torch_padding(torch, x_t, padding), w_t, b_t, stride=stride, dilation=dilation)
    rtol = TOLERANCES[dtype]
    _close(y, y_t, rtol, "output")
    dy_host = rng.normal(size=tuple(y_t.shape))
    y_t.backward(torch.tensor(dy_host, dtype=tdtype))
    dx, dw, db = backward(put(dy_host, dtype))
    _close(dx, x_t.grad, rtol, "dL/dx")
    _close(dw, w_t.grad, rtol, "dL/dweight")
    _close(db, b_t.grad, rtol, "dL/dbias")
    no_dx, dw_again, _ = backward(put(dy_host, dtype), need_dx=False)
    assert no_dx is None
    _close(dw_again, w_t.grad, rtol, "dL/dweight without dx")


def test_conv2d_without_bias(torch):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(2, 3, 5, 5)), rng.normal(size=(4, 3, 3, 3))
    xp = bp.get_backend("cpu").xp
    y, backward = conv2d(xp, x, w, None, Window((3, 3)))
    np.testing.assert_allclose(y, torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w)).numpy(), rtol=1e-12)
    assert backward(np.ones(y.shape))[2] is None


@pytest.mark.parametrize("block_bytes", [1, 300, 2000])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES[:3] + CONV_GEOMETRIES[-1:], ids=lambda g: g[0])
def test_blocked_im2col_equals_unblocked(geometry, block_bytes):
    """Blocks of 1 sample, of a size that leaves an uneven last block, and the whole batch give the same numbers."""
    _, shape, filters, kernel, stride, padding, dilation = geometry
    shape = (7,) + shape[1:]
    rng = np.random.default_rng(2)
    x, w, b = rng.normal(size=shape), rng.normal(size=(filters, shape[1]) + kernel), rng.normal(size=filters)
    xp = bp.get_backend("cpu").xp
    window = Window(kernel, stride, dilation, padding)
    y_whole, backward_whole = conv2d(xp, x, w, b, window, block_bytes=1 << 40)
    y_blocks, backward_blocks = conv2d(xp, x, w, b, window, block_bytes=block_bytes)
    dy = rng.normal(size=y_whole.shape)
    np.testing.assert_allclose(y_blocks, y_whole, rtol=1e-13, atol=1e-13)
    for blocked, whole in zip(backward_blocks(dy), backward_whole(dy)):
        np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-12)


def test_blocks_stay_under_the_budget(monkeypatch):
    """The column matrices built for one forward and backward never exceed the block budget."""
    from backprop import convolution

    sizes = []
    original = convolution.im2col

    def recording(xp, padded, window, out_size):
        columns = original(xp, padded, window, out_size)
        sizes.append(columns.nbytes)
        return columns

    monkeypatch.setattr(convolution, "im2col", recording)
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(40, 8, 12, 12)).astype(np.float32), rng.normal(size=(6, 8, 3, 3)).astype(np.float32)
    budget = 8 * 9 * 10 * 10 * 4 * 6  # six samples' columns
    y, backward = convolution.conv2d(bp.get_backend("cpu").xp, x, w, None, Window((3, 3)), block_bytes=budget)
    backward(np.ones(y.shape, dtype=np.float32))
    assert len(sizes) == 2 * 7  # ceil(40 / 6) blocks, in the forward and again in the backward
    assert max(sizes) == budget


def _pool_reference(torch, kind, x_t, kernel, stride, padding):
    functional = torch.nn.functional
    if kind == "max":
        return functional.max_pool2d(x_t, kernel, stride, padding)
    return functional.avg_pool2d(x_t, kernel, stride, padding, count_include_pad=True)


# (name, input shape, kernel, stride, symmetric padding (h, w))
POOL_GEOMETRIES = [
    ("2x2", (3, 2, 8, 8), (2, 2), (2, 2), (0, 0)),
    ("2x2_odd_input", (2, 3, 7, 9), (2, 2), (2, 2), (0, 0)),
    ("3x3_stride2_pad1", (2, 2, 7, 8), (3, 3), (2, 2), (1, 1)),
    ("overlapping_stride1", (2, 2, 5, 6), (3, 2), (1, 1), (1, 0)),
    ("asymmetric", (2, 2, 9, 6), (3, 2), (2, 1), (1, 1)),
    ("kernel_is_input", (2, 3, 4, 5), (4, 5), (4, 5), (0, 0)),
    ("stride_beyond_kernel", (2, 2, 10, 11), (2, 2), (3, 4), (0, 1)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("geometry", POOL_GEOMETRIES, ids=[g[0] for g in POOL_GEOMETRIES])
def test_pooling_matches_torch_autograd_with_ties(torch, xp_and_put, geometry, kind, dtype):
    """Integer-valued inputs from {0, 1, 2} make many windows hold their maximum more than once: the gradient
    must go to the first in row-major order, exactly as PyTorch routes it."""
    xp, put = xp_and_put
    _, shape, kernel, stride, (ph, pw) = geometry
    rng = np.random.default_rng(4)
    x_host = rng.integers(0, 3, size=shape).astype(float)
    window = Window(kernel, stride, (1, 1), ((ph, ph), (pw, pw)))
    pool = max_pool2d if kind == "max" else avg_pool2d
    y, backward = pool(xp, put(x_host, dtype), window)
    tdtype = getattr(torch, dtype)
    x_t = torch.tensor(x_host, dtype=tdtype, requires_grad=True)
    y_t = _pool_reference(torch, kind, x_t, kernel, stride, (ph, pw))
    rtol = TOLERANCES[dtype]
    _close(y, y_t, rtol, "output")
    dy_host = rng.integers(-3, 4, size=tuple(y_t.shape)).astype(float)
    y_t.backward(torch.tensor(dy_host, dtype=tdtype))
    _close(backward(put(dy_host, dtype)), x_t.grad, rtol, "dL/dx")


def test_max_pool_routes_a_tie_to_the_first_maximum():
    """A 2x2 window of equal values sends the whole gradient to its top-left element."""
    xp = bp.get_backend("cpu").xp
    x = np.array([[[[1.0, 1.0], [1.0, 1.0]]]])
    _, backward = max_pool2d(xp, x, Window((2, 2), (2, 2)))
    np.testing.assert_array_equal(backward(np.array([[[[5.0]]]])), [[[[5.0, 0.0], [0.0, 0.0]]]])


def test_max_pool_padding_never_wins():
    """Padding is -inf, so an all-negative input pools to its own values."""
    xp = bp.get_backend("cpu").xp
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    y, _ = max_pool2d(xp, x, Window((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))))
    np.testing.assert_array_equal(y[0, 0], [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]])


def test_col2im_is_the_adjoint_of_padding_and_the_window_views():
    """<views(pad(x)), c> == <x, col2im(c)> for random x and c, for every geometry: col2im is im2col's transpose."""
    xp = bp.get_backend("cpu").xp
    rng = np.random.default_rng(5)
    for _, shape, _, kernel, stride, padding, dilation in CONV_GEOMETRIES:
        window = Window(kernel, stride, dilation, padding)
        out_size = window.output_size(shape[2], shape[3])
        images = rng.normal(size=(shape[1], shape[2], shape[3], 2))
        columns = rng.normal(size=(window.taps, shape[1]) + out_size + (2,))
        views = window_views(pad(xp, images, window.padding, 0.0), window, out_size)
        forward = sum(float(np.sum(view * columns[tap])) for tap, view in enumerate(views))
        back = col2im(xp, list(columns), window, shape[2:])
        assert back.shape == images.shape
        assert float(np.sum(images * back)) == pytest.approx(forward, rel=1e-12)
        stacked = im2col(xp, pad(xp, images, window.padding, 0.0), window, out_size)
        assert stacked.shape == (shape[1] * window.taps, out_size[0] * out_size[1] * 2)
