"""What the image layers (`Conv2d`, the pooling layers, `BatchNorm2d`) share: their size arguments and the checks
of the per-sample shape (channels, height, width) they are built from."""

from __future__ import annotations

import math
from typing import Any

from backprop.errors import ConfigurationError, ShapeError
from backprop.validation import integer
from backprop.windows import Pair, Window


def pair(value: Any, name: str, low: int = 1) -> Pair:
    """An int or a pair of ints (per spatial axis: height, width), each >= ``low``, as a tuple of two ints."""
    entries = list(value) if isinstance(value, (tuple, list)) else [value, value]
    if len(entries) != 2:
        raise ConfigurationError(f"{name} must be an int or a pair (height, width) of ints, got {value!r}")
    return integer(entries[0], name, low), integer(entries[1], name, low)


def check_images(who: str, input_shape: tuple[int, ...], channels: int | None = None,
                 argument: str = "in_channels") -> tuple[int, int, int]:
    """The per-sample shape as (C, H, W), else a `ShapeError` naming ``who``, the shapes, and the reshape that fixes
    it: images are batches (N, C, H, W), so a model given (N, H, W) or flat (N, H*W) rows needs x.reshape.
    ``argument`` names the layer's argument that sets ``channels``."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        wanted = "C" if channels is None else str(channels)
        message = (f"{who} takes images of per-sample shape (channels, height, width) = ({wanted}, H, W), batches "
                   f"(N, {wanted}, H, W); its input has per-sample shape {shape}")
        fix = _image_shape_for(shape, channels)
        if fix is not None:
            listed = ", ".join(map(str, fix))
            message += f"; use x.reshape(-1, {listed}) (or bp.Reshape(({listed})) as the first layer)"
        else:
            message += "; reshape each sample to (channels, height, width)"
        raise ShapeError(message)
    if channels is not None and shape[0] != channels:
        raise ShapeError(f"{who} expects {channels} input channels, but its input has {shape[0]} (per-sample "
                         f"shape {shape}); set its {argument} to {shape[0]} or change the layer before it")
    return shape  # type: ignore[return-value]


def _image_shape_for(shape: tuple[int, ...], channels: int | None) -> tuple[int, int, int] | None:
    """The (C, H, W) a wrongly shaped sample most likely is: (H, W) -> (1, H, W) for one channel; a flat row of
    C * s * s values -> (C, s, s)."""
    channels = 1 if channels is None else channels
    if len(shape) == 2 and channels == 1:
        return (1, *shape)
    size = math.prod(shape)
    if size % channels:
        return None
    side = math.isqrt(size // channels)
    return (channels, side, side) if side * side * channels == size else None


def check_window(who: str, window: Window, shape: tuple[int, int, int]) -> Pair:
    """The output size (H_out, W_out) of ``window`` over images of per-sample ``shape``; a `ShapeError` naming
    ``who`` and the sizes when the window does not fit in the padded input."""
    _, height, width = shape
    out_size = window.output_size(height, width)
    if min(out_size) < 1:
        padded = window.padded_size(height, width)
        raise ShapeError(
            f"{who}: its window spans {window.span} (kernel {window.kernel}, dilation {window.dilation}) but the "
            f"input padded by {window.padding} is only {padded} (input {height}x{width}); use a smaller kernel_size "
            "or dilation, more padding, or a larger input"
        )
    return out_size
