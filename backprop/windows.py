"""Sliding windows over the two spatial axes of an image batch: their geometry, and the two data movements that
convolution and pooling are built from (im2col and its adjoint, col2im).

Layout. Layers take and return (N, C, H, W) arrays, as PyTorch does, but the functions here work on the same data
seen as (C, H, W, N): channels first, the batch innermost. ``channels_first`` makes that view (free when the
memory already has that order) and ``batch_first`` turns the result back into (N, C, H, W) without a copy. So a
convolution or pooling output is an (N, C, H, W) array whose memory runs in (C, H, W, N) order, and the next layer
of this kind reads it without a copy; element-wise layers in between (ReLU) keep that memory order. With the batch
innermost, every strided window slice below copies runs of at least N contiguous numbers (W_out * N for stride 1)
instead of runs of W_out: that took the digits CNN's training step from 1.5x to about 0.9x PyTorch's time.

Geometry, per spatial axis: an input of size H padded by (lo, hi), a kernel of k taps dilation d apart, stride s:
    H_out = (H + lo + hi - d (k - 1) - 1) // s + 1,
and output position o, tap i reads padded position d i + s o.

im2col: the k_h k_w views  x_pad[:, d_h i :: s_h, d_w j :: s_w, :]  (each cut to H_out x W_out), one per tap in
row-major order, stacked to a (C k_h k_w, H_out W_out N) matrix: a convolution is then one matrix product.
col2im is its adjoint: given one (C, H_out, W_out, N) array per tap, it returns the unpadded part of
    out[:, d_h i + s_h o, d_w j + s_w p, :] = sum over taps (i, j) and (o, p) that land there of piece_ij[:, o, p, :].
It writes into nothing (no scatter-add, no slice assignment): along each axis the positions split into s phases
(h = r + s q); within a phase each tap's piece sits at one offset, so the phase is a concatenation of segments,
each the sum of the pieces covering it (or zeros); the phases interleave by stacking and a reshape. With stride 1
only the segments inside the unpadded range are built at all. Arrays stay
immutable, so the same code runs on JAX.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from array_api_compat import device as _device_of

Pair = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """A 2-D sliding window: ``kernel`` (k_h, k_w), ``stride``, ``dilation`` and ``padding`` ((top, bottom),
    (left, right)), each per spatial axis."""

    kernel: Pair
    stride: Pair = (1, 1)
    dilation: Pair = (1, 1)
    padding: tuple[Pair, Pair] = ((0, 0), (0, 0))

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def span(self) -> Pair:
        """The extent of one window in the padded input: d (k - 1) + 1 per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))  # type: ignore[return-value]

    def padded_size(self, height: int, width: int) -> Pair:
        (top, bottom), (left, right) = self.padding
        return height + top + bottom, width + left + right

    def output_size(self, height: int, width: int) -> Pair:
        """(H_out, W_out); an axis whose padded size is smaller than the window span gives 0 or less."""
        padded = self.padded_size(height, width)
        return tuple((p - e) // s + 1 for p, e, s in zip(padded, self.span, self.stride))  # type: ignore[return-value]


def itemsize(xp: Any, dtype: Any) -> int:
    """Bytes per element of a floating-point dtype."""
    return xp.finfo(dtype).bits // 8


def channels_first(xp: Any, x: Any) -> Any:
    """(N, C, H, W) -> (C, H, W, N) with its memory in that order: a view when ``x`` came out of `batch_first`
    (the output of a convolution or pooling layer), else one copy."""
    return contiguous(xp, xp.permute_dims(x, (1, 2, 3, 0)))


def batch_first(xp: Any, x: Any) -> Any:
    """(C, H, W, N) -> (N, C, H, W), a view (no copy)."""
    return xp.permute_dims(x, (3, 0, 1, 2))


def contiguous(xp: Any, x: Any) -> Any:
    """``x`` with its memory in row-major order of its shape: reshaping to 1-D copies exactly when it is not."""
    return xp.reshape(xp.reshape(x, (-1,)), tuple(x.shape))


def pad(xp: Any, x: Any, padding: tuple[Pair, Pair], value: float) -> Any:
    """(C, H, W, N) -> (C, top + H + bottom, left + W + right, N), the border filled with ``value``, by
    concatenation (no slice assignment). Returns ``x`` itself when there is nothing to pad."""
    for axis, (before, after) in zip((1, 2), padding):
        if before == 0 and after == 0:
            continue
        parts = []
        for size in (before, after):
            shape = list(x.shape)
            shape[axis] = size
            parts.append(xp.full(tuple(shape), value, dtype=x.dtype, device=_device_of(x)) if size else None)
        x = xp.concat([part for part in (parts[0], x, parts[1]) if part is not None], axis=axis)
    return x


def window_views(padded: Any, window: Window, out_size: Pair) -> list[Any]:
    """The k_h k_w strided views of a padded (C, H_p, W_p, N) array, one per tap in row-major order, each
    (C, H_out, W_out, N): view (i, j) holds padded[:, d_h i + s_h o, d_w j + s_w p, :] at [:, o, p, :]."""
    (kh, kw), (sh, sw), (dh, dw) = window.kernel, window.stride, window.dilation
    height, width = out_size
    return [
        padded[:, dh * i: dh * i + sh * (height - 1) + 1: sh, dw * j: dw * j + sw * (width - 1) + 1: sw, :]
        for i in range(kh) for j in range(kw)
    ]


def im2col(xp: Any, padded: Any, window: Window, out_size: Pair) -> Any:
    """The (C k_h k_w, H_out W_out N) column matrix of a padded (C, H_p, W_p, N) array; row c k_h k_w + i k_w + j
    is tap (i, j) of channel c, matching a (O, C, k_h, k_w) weight reshaped to (O, C k_h k_w)."""
    stacked = xp.stack(window_views(padded, window, out_size), axis=1)
    channels, taps, height, width, batch = stacked.shape
    return xp.reshape(stacked, (channels * taps, height * width * batch))


def col2im(xp: Any, pieces: Sequence[Any], window: Window, in_size: Pair) -> Any:
    """The adjoint of `window_views` after `pad`: ``pieces`` holds one (C, H_out, W_out, N) array per tap in
    row-major order; returns the (C, H, W, N) array (the unpadded input's size ``in_size``) in which every piece is
    added back where its view was read from, what lands in the padding dropped (see the module docstring). Builds
    new arrays only (concatenations and sums), never writes into one; the result may be a view of a piece (a 1x1
    window), so callers must not write into it either."""
    (kh, kw), (sh, sw), (dh, dw) = window.kernel, window.stride, window.dilation
    (top, _), (left, _) = window.padding
    rows = [_overlap_add_axis(xp, pieces[i * kw:(i + 1) * kw], 2, sw, dw, left, left + in_size[1]) for i in range(kh)]
    return _overlap_add_axis(xp, rows, 1, sh, dh, top, top + in_size[0])


def _overlap_add_axis(xp: Any, pieces: Sequence[Any], axis: int, stride: int, dilation: int, start: int,
                      stop: int) -> Any:
    """Positions [start, stop) along ``axis`` of out[dilation i + stride o] = sum of pieces[i][o] (zeros where
    nothing lands). With stride 1 tap i starts at offset dilation i, and `_place` builds the range directly.
    Otherwise phase r holds positions r + stride q, tap i lands in phase (dilation i) mod stride at offset
    (dilation i) // stride; the phases are built by `_place`, interleaved by a stack and a reshape, then cut."""
    if stride == 1:
        return _place(xp, [(dilation * tap, piece) for tap, piece in enumerate(pieces)], axis, start, stop, pieces[0])
    phase_length = -(-stop // stride)
    phases = []
    for phase in range(stride):
        placed = [((dilation * tap - phase) // stride, piece)
                  for tap, piece in enumerate(pieces) if (dilation * tap - phase) % stride == 0]
        phases.append(_place(xp, placed, axis, 0, phase_length, pieces[0]))
    stacked = xp.stack(phases, axis=axis + 1)
    shape = list(phases[0].shape)
    shape[axis] = phase_length * stride
    return _take(xp.reshape(stacked, tuple(shape)), axis, start, stop)


def _place(xp: Any, placed: Sequence[tuple[int, Any]], axis: int, start: int, stop: int, like: Any) -> Any:
    """Positions [start, stop) along ``axis`` of the sum of the ``(offset, piece)`` pairs, each piece laid from its
    offset: a concatenation of segments between consecutive piece boundaries, each segment the sum of the pieces
    that cover it, or zeros where none does."""
    size = like.shape[axis]
    edges = {offset for offset, _ in placed} | {offset + size for offset, _ in placed}
    bounds = sorted({start, stop} | {edge for edge in edges if start < edge < stop})
    segments = []
    for low, high in itertools.pairwise(bounds):
        covering = [_take(piece, axis, low - offset, high - offset)
                    for offset, piece in placed if offset <= low and high <= offset + size]
        if not covering:
            shape = list(like.shape)
            shape[axis] = high - low
            segments.append(xp.zeros(tuple(shape), dtype=like.dtype, device=_device_of(like)))
            continue
        total = covering[0] if len(covering) == 1 else covering[0] + covering[1]
        for piece in covering[2:]:
            total += piece  # ``total`` is a new array here (a sum), so adding in place writes into nothing shared
        segments.append(total)
    return segments[0] if len(segments) == 1 else xp.concat(segments, axis=axis)


def _take(x: Any, axis: int, start: int, stop: int) -> Any:
    if start == 0 and stop == x.shape[axis]:
        return x
    return x[(slice(None),) * axis + (slice(start, stop), ...)]
