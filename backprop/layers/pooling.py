"""Pooling layers over (N, C, H, W) image batches: `MaxPool2d`, `AvgPool2d` (math in `backprop.pooling`) and
`GlobalAvgPool2d`."""

from __future__ import annotations

from typing import Any

from backprop.errors import ConfigurationError
from backprop.layers.base import Layer
from backprop.layers.images import check_images, check_window, pair
from backprop.pooling import avg_pool2d
from backprop.windows import Window


class _Pool2d(Layer):
    """A window slid over each channel: ``kernel_size``, ``stride`` (default: the kernel size, so windows tile the
    input) and ``padding``, each an int or a pair (height, width); the padding is at most half the kernel, as
    PyTorch requires (a window then always holds an input element). Per-sample shape (C, H, W) ->
    (C, H_out, W_out), with H_out = (H + 2 p_h - k_h) // s_h + 1 (the last incomplete window is dropped)."""

    def __init__(self, kernel_size: "int | tuple[int, int]", stride: "int | tuple[int, int] | None" = None,
                 padding: "int | tuple[int, int]" = 0) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride")
        self.padding = pair(padding, f"{name} padding", low=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ConfigurationError(f"{name} padding {self.padding} must be at most half the kernel size "
                                     f"{self.kernel_size}, as in PyTorch")
        pad_height, pad_width = self.padding
        self.window = Window(self.kernel_size, self.stride, (1, 1), ((pad_height, pad_height), (pad_width, pad_width)))

    def build(self, input_shape, backend, dtype, rng):
        shape = check_images(repr(self), input_shape)
        out_height, out_width = check_window(repr(self), self.window, shape)
        super().build(input_shape, backend, dtype, rng)
        return (shape[0], out_height, out_width)

    def config(self) -> dict:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}


class MaxPool2d(_Pool2d):
    """``MaxPool2d(kernel_size, stride=None, padding=0)``: the largest value of each window (padding is -inf),
    computed by the backend's ``max_pool2d`` (the reference `backprop.pooling.max_pool2d`, or torch's kernel).

    dL/dx: each window's gradient goes to the first element, in row-major order, that holds the window's maximum
    (ties included), as PyTorch routes it; the others get 0.
    """

    def forward(self, x: Any, training: bool = False):
        y, pool_backward = self.backend.max_pool2d(x, self.window)
        return y, lambda dy, need_dx=True: pool_backward(dy) if need_dx else None


class AvgPool2d(_Pool2d):
    """``AvgPool2d(kernel_size, stride=None, padding=0)``: the mean of each window, zero padding counted in the
    divisor (PyTorch's default ``count_include_pad=True``): y = sum / (k_h k_w); dL/dx spreads g / (k_h k_w) over
    each window (summed where windows overlap)."""

    def forward(self, x: Any, training: bool = False):
        y, pool_backward = avg_pool2d(self.backend.xp, x, self.window)
        return y, lambda dy, need_dx=True: pool_backward(dy) if need_dx else None


class GlobalAvgPool2d(Layer):
    """``GlobalAvgPool2d()``: (N, C, H, W) -> (N, C), the mean of each channel's H x W values.

    y[n, c] = (1 / (H W)) sum_{h, w} x[n, c, h, w];  dL/dx[n, c, h, w] = g[n, c] / (H W).
    """

    def build(self, input_shape, backend, dtype, rng):
        channels = check_images(repr(self), input_shape)[0]
        super().build(input_shape, backend, dtype, rng)
        return (channels,)

    def forward(self, x: Any, training: bool = False):
        xp = self.backend.xp
        shape = tuple(x.shape)
        scale = 1.0 / (shape[2] * shape[3])

        def backward(dy: Any, need_dx: bool = True) -> Any:
            if not need_dx:
                return None
            return xp.broadcast_to(xp.reshape(dy, (shape[0], shape[1], 1, 1)), shape) * scale

        return xp.mean(x, axis=(2, 3)), backward
