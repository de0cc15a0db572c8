"""2-D max and average pooling written once against the array API, on the window views of `backprop.windows`.

For x (N, C, H, W) and a `Window` with taps t = (i, j) reading v_t = x_pad[:, :, d_h i + s_h p, d_w j + s_w q]:
    max pooling:      y = max_t v_t  (the border padded with -inf, so padding never wins);
                      dL/dv_t = g * m_t, where m_t marks the first tap in row-major order that attains the
                      maximum (ties included, as PyTorch routes them), and dL/dx = col2im(dL/dv);
    average pooling:  y = (1 / (k_h k_w)) sum_t v_t  (zero padding counted in the divisor, PyTorch's
                      ``count_include_pad=True``);  dL/dv_t = g / (k_h k_w) for every tap, dL/dx = col2im(dL/dv).
Inputs and outputs are (N, C, H, W); outputs keep their memory in (C, H, W, N) order (see `backprop.windows`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backprop.windows import Window, batch_first, channels_first, col2im, pad, window_views

PoolBackward = Callable[[Any], Any]


def max_pool2d(xp: Any, x: Any, window: Window) -> tuple[Any, PoolBackward]:
    """y = max over each window, and ``backward(dy) -> dx`` routing each gradient to the window's first maximum.

    The masks are rebuilt in the backward pass from the views (which the closure keeps, with the padded input):
    walking the taps in order, tap t takes m_t = [v_t == y] * r_t of what is still unrouted (r_0 = g, then
    r_{t+1} = r_t - m_t), and the last tap takes the rest. Products with 0/1 and these subtractions are exact.
    """
    height, width = x.shape[2], x.shape[3]
    out_size = window.output_size(height, width)
    padded = pad(xp, channels_first(xp, x), window.padding, -float("inf"))
    views = window_views(padded, window, out_size)
    y = views[0]
    for view in views[1:]:
        y = xp.maximum(y, view)

    def backward(dy: Any) -> Any:
        unrouted = channels_first(xp, dy)
        pieces = []
        for view in views[:-1]:
            routed = unrouted * xp.astype(view == y, unrouted.dtype)
            pieces.append(routed)
            unrouted = unrouted - routed
        pieces.append(unrouted)
        return batch_first(xp, col2im(xp, pieces, window, (height, width)))

    return batch_first(xp, y), backward


def avg_pool2d(xp: Any, x: Any, window: Window) -> tuple[Any, PoolBackward]:
    """y = the mean of each window (zero padding included in the count), and ``backward(dy) -> dx``."""
    height, width = x.shape[2], x.shape[3]
    out_size = window.output_size(height, width)
    padded = pad(xp, channels_first(xp, x), window.padding, 0.0)
    views = window_views(padded, window, out_size)
    scale = 1.0 / window.taps
    total = views[0] * scale if len(views) == 1 else views[0] + views[1]
    for view in views[2:]:
        total += view  # a new array (a sum): adding in place writes into nothing shared
    if len(views) > 1:
        total *= scale

    def backward(dy: Any) -> Any:
        share = channels_first(xp, dy) * scale
        return batch_first(xp, col2im(xp, [share] * window.taps, window, (height, width)))

    return batch_first(xp, total), backward
