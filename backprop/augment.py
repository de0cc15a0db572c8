"""Seeded image augmentation on host batches ``(N, C, H, W)`` (NCHW): ``transform(x, rng) -> new batch``.

    augment = bp.augment.Compose(bp.augment.RandomShift(2), bp.augment.RandomRotation(10),
                                 bp.augment.GaussianNoise(0.05))
    loader = bp.data.BatchLoader(x, y, batch_size=64, seed=0, transform=augment)

Every transform draws from the ``numpy.random.Generator`` it is given (so the same seed gives the same images),
returns a new array of the input's shape and dtype, never writes into its input, and draws per image:

    RandomShift(s):       translate by (dy, dx), integers uniform in [-s, s]; vacated pixels are ``fill``
    RandomCrop(p):        pad every side by p with ``fill``, cut an H x W window at a uniform offset (the same
                          images as RandomShift(p): kept under the name the seeds use)
    HorizontalFlip(p):    mirror left-right (reverse W) with probability p
    RandomRotation(deg):  rotate by an angle uniform in [-deg, deg] degrees about the centre, nearest-neighbour
                          sampling; pixels whose source lies outside the image are ``fill``
    GaussianNoise(std):   add independent N(0, std^2) noise to every value
    Compose(*ts):         apply ts in order
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from backprop.errors import ConfigurationError, ShapeError
from backprop.validation import integer, number


def _images(x: Any, owner: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise ShapeError(f"{owner} takes a host NumPy batch of images (N, C, H, W), got "
                         f"{type(x).__name__} of shape {shape}; reshape to NCHW, e.g. x.reshape(-1, 1, 8, 8)")
    return x


def _translate(x: np.ndarray, dy: np.ndarray, dx: np.ndarray, fill: float) -> np.ndarray:
    """Image i moved down by dy[i] and right by dx[i] (negative: up, left); vacated pixels are ``fill``."""
    n, _, height, width = x.shape
    rows = np.arange(height)[None, :] - dy[:, None]  # the source row of each output row, per image
    cols = np.arange(width)[None, :] - dx[:, None]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    source = x[np.arange(n)[:, None, None], :, np.clip(rows, 0, height - 1)[:, :, None],
               np.clip(cols, 0, width - 1)[:, None, :]]  # (N, H, W, C): advanced indices go first
    source = np.moveaxis(source, -1, 1)
    return np.where(inside[:, None], source, np.asarray(fill, dtype=x.dtype)).astype(x.dtype, copy=False)


class RandomShift:
    """Translate each image by whole pixels, (dy, dx) uniform in [-max_shift, max_shift]^2."""

    def __init__(self, max_shift: int = 2, fill: float = 0.0) -> None:
        self.max_shift = integer(max_shift, "RandomShift max_shift", low=0)
        self.fill = number(fill, "RandomShift fill")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _images(x, "RandomShift")
        dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=(2, x.shape[0]))
        return _translate(x, dy, dx, self.fill)

    def __repr__(self) -> str:
        return f"RandomShift({self.max_shift})"


class RandomCrop:
    """Pad by ``padding`` pixels on every side, then crop an image of the original size at a random offset."""

    def __init__(self, padding: int = 2, fill: float = 0.0) -> None:
        self.padding = integer(padding, "RandomCrop padding", low=0)
        self.fill = number(fill, "RandomCrop fill")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _images(x, "RandomCrop")
        top, left = rng.integers(0, 2 * self.padding + 1, size=(2, x.shape[0]))
        return _translate(x, self.padding - top, self.padding - left, self.fill)

    def __repr__(self) -> str:
        return f"RandomCrop({self.padding})"


class HorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = number(p, "HorizontalFlip p", low=0.0, high=1.0, meaning="a probability")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _images(x, "HorizontalFlip")
        flip = rng.random(len(x)) < self.p
        return np.where(flip[:, None, None, None], x[..., ::-1], x)

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p:g})"


class RandomRotation:
    """Rotate each image about its centre by an angle uniform in [-max_degrees, max_degrees] (nearest pixel)."""

    def __init__(self, max_degrees: float = 10.0, fill: float = 0.0) -> None:
        self.max_degrees = number(max_degrees, "RandomRotation max_degrees", low=0.0, high=180.0)
        self.fill = number(fill, "RandomRotation fill")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _images(x, "RandomRotation")
        n, _, height, width = x.shape
        angles = np.deg2rad(rng.uniform(-self.max_degrees, self.max_degrees, size=n))
        cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
        y, x_ = np.meshgrid(np.arange(height) - cy, np.arange(width) - cx, indexing="ij")
        cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
        # inverse map: the output pixel p takes the input pixel R(-angle) p
        rows = np.rint(cos * y - sin * x_ + cy).astype(np.int64)
        cols = np.rint(sin * y + cos * x_ + cx).astype(np.int64)
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        source = x[np.arange(n)[:, None, None], :, np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)]
        source = np.moveaxis(source, -1, 1)
        return np.where(inside[:, None], source, np.asarray(self.fill, dtype=x.dtype)).astype(x.dtype, copy=False)

    def __repr__(self) -> str:
        return f"RandomRotation({self.max_degrees:g})"


class GaussianNoise:
    """Add N(0, std^2) noise, drawn in float64 and cast to the batch's dtype."""

    def __init__(self, std: float = 0.1) -> None:
        self.std = number(std, "GaussianNoise std", low=0.0)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = _images(x, "GaussianNoise")
        if not np.issubdtype(x.dtype, np.floating):
            raise ConfigurationError(f"GaussianNoise needs a floating-point batch, got {x.dtype}; "
                                     "use x.astype(numpy.float32)")
        return (x + rng.normal(0.0, self.std, size=x.shape)).astype(x.dtype)

    def __repr__(self) -> str:
        return f"GaussianNoise({self.std:g})"


class Compose:
    """Apply the transforms in order, each drawing from the same generator."""

    def __init__(self, *transforms: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> None:
        for transform in transforms:
            if not callable(transform):
                raise ConfigurationError(f"Compose takes transforms t(x, rng) -> x, got {transform!r}")
        self.transforms = transforms

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for transform in self.transforms:
            x = transform(x, rng)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"
