"""2-D convolution (cross-correlation, as in every deep-learning library) written once against the array API.

For x (N, C, H, W), weight K (O, C, k_h, k_w), bias b (O,) and a `Window` (stride s, dilation d, padding):
    y[n, o, p, q] = b[o] + sum_{c, i, j} K[o, c, i, j] x_pad[n, c, d_h i + s_h p, d_w j + s_w q].
As matrices, with X = im2col(x) (C k_h k_w, H_out W_out N) and K2 = K reshaped to (O, C k_h k_w):
    Y = K2 X + b,
and, given G = dL/dY (O, H_out W_out N):
    dL/dK2 = G X^T,   dL/db = G summed over its columns,   dL/dX = K2^T G,   dL/dx = col2im(dL/dX)
(col2im adds every column entry back where im2col read it from, then the padding is cut off).

Bounded memory: the batch goes through in blocks of samples whose column matrix stays under ``BLOCK_BYTES``
(8 MiB); when the batch needs more than one block, the backward pass rebuilds each block's columns instead of
keeping the whole batch's (a batch that fits in one block keeps its matrix). On the
(128, 32, 26, 26) -> 64 layer of an MNIST-sized network that is 11 blocks of 8 MiB instead of one 85 MB matrix,
at the same speed (the products stay large enough for the BLAS). See `backprop.windows` for the memory layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backprop.windows import Window, batch_first, channels_first, col2im, contiguous, im2col, itemsize, pad

BLOCK_BYTES = 8 * 2**20
"""The largest column matrix (im2col of one block of samples) a convolution builds at once, in bytes."""

ConvBackward = Callable[..., tuple[Any, Any, Any]]


def block_size(samples: int, bytes_per_sample: int, block_bytes: int = BLOCK_BYTES) -> int:
    """How many samples go through at once: as many as fit in ``block_bytes`` (at least one, at most all)."""
    return max(1, min(samples, block_bytes // max(1, bytes_per_sample)))


def conv2d(xp: Any, x: Any, weight: Any, bias: Any, window: Window,
           block_bytes: int = BLOCK_BYTES) -> tuple[Any, ConvBackward]:
    """y = conv(x, weight) + bias, and ``backward(dy, need_dx=True) -> (dx or None, dweight, dbias or None)``.

    ``x`` is (N, C, H, W), ``weight`` (O, C, k_h, k_w), ``bias`` (O,) or None; the output y is (N, O, H_out, W_out)
    (its memory in (O, H_out, W_out, N) order, see `backprop.windows`). The caller checks the shapes.
    """
    samples, channels, height, width = x.shape
    filters = weight.shape[0]
    out_height, out_width = window.output_size(height, width)
    rows = channels * window.taps
    kernel_matrix = xp.reshape(weight, (filters, rows))
    images = channels_first(xp, x)
    padded = pad(xp, images, window.padding, 0.0)
    block = block_size(samples, rows * out_height * out_width * itemsize(xp, x.dtype), block_bytes)
    starts = range(0, samples, block)

    # a batch that fits in one block keeps its column matrix (at most ``block_bytes``) for the backward pass
    whole = im2col(xp, padded, window, (out_height, out_width)) if block == samples else None

    def columns(start: int) -> Any:
        if whole is not None:
            return whole
        # one copy of the block first: the window views of a contiguous block copy runs of W_out * block
        # numbers, those of the strided slice runs of only ``block`` numbers (about 3x slower in all)
        return im2col(xp, contiguous(xp, padded[..., start:start + block]), window, (out_height, out_width))

    outputs = []
    for start in starts:
        product = kernel_matrix @ columns(start)
        if bias is not None:
            product += xp.reshape(bias, (filters, 1))  # a new array: adding in place saves a temporary
        outputs.append(xp.reshape(product, (filters, out_height, out_width, -1)))
    y = outputs[0] if len(outputs) == 1 else xp.concat(outputs, axis=3)

    def backward(dy: Any, need_dx: bool = True) -> tuple[Any, Any, Any]:
        grads = channels_first(xp, dy)  # (O, H_out, W_out, N)
        dbias = None if bias is None else xp.sum(grads, axis=(1, 2, 3))
        dkernel = None
        dx_blocks = []
        for start in starts:
            part = grads if block == samples else grads[..., start:start + block]
            grad_matrix = xp.reshape(part, (filters, -1))
            term = grad_matrix @ xp.matrix_transpose(columns(start))
            if dkernel is None:
                dkernel = term
            else:
                dkernel += term
            if need_dx:
                grad_columns = xp.matrix_transpose(kernel_matrix) @ grad_matrix
                pieces = xp.reshape(grad_columns, (channels, window.taps, out_height, out_width, -1))
                dx_blocks.append(col2im(xp, [pieces[:, tap, ...] for tap in range(window.taps)], window,
                                        (height, width)))
        dweight = xp.reshape(dkernel, tuple(weight.shape))
        if not need_dx:
            return None, dweight, dbias
        dx = dx_blocks[0] if len(dx_blocks) == 1 else xp.concat(dx_blocks, axis=3)
        return batch_first(xp, dx), dweight, dbias

    return batch_first(xp, y), backward

