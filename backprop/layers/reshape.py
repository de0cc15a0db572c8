"""`Flatten` and `Reshape`: the same numbers per sample, arranged in another per-sample shape.

Both move no values, so the backward pass only gives dL/dy the input's shape back: dL/dx = reshape(g, x.shape).
"""

from __future__ import annotations

import math
from typing import Any

from backprop.errors import ShapeError
from backprop.layers.base import Layer, Shape, as_shape


class Flatten(Layer):
    """``Flatten()``: (N, d1, ..., dk) -> (N, d1 * ... * dk), e.g. images (N, C, H, W) into (N, C*H*W) for `Dense`.

    Elements keep NumPy's C order (the last axis varies fastest), as ``torch.nn.Flatten`` does.
    y = reshape(x, (N, -1));  dx = reshape(g, x.shape).
    """

    def build(self, input_shape, backend, dtype, rng):
        return (math.prod(super().build(input_shape, backend, dtype, rng)),)

    def forward(self, x: Any, training: bool = False):
        xp = self.backend.xp
        shape = tuple(x.shape)
        return xp.reshape(x, (shape[0], -1)), lambda dy, need_dx=True: xp.reshape(dy, shape) if need_dx else None


class Reshape(Layer):
    """``Reshape(shape)``: each sample takes the per-sample ``shape`` (one entry may be -1: inferred from the size).

    y = reshape(x, (N, *shape));  dx = reshape(g, x.shape). ``Reshape((1, 8, 8))`` turns (N, 64) into (N, 1, 8, 8).
    """

    def __init__(self, shape: "Shape | list[int]") -> None:
        super().__init__()
        self.shape = as_shape(shape, "Reshape's shape", inferred_ok=True)

    def build(self, input_shape, backend, dtype, rng):
        size = math.prod(super().build(input_shape, backend, dtype, rng))
        known = math.prod(n for n in self.shape if n != -1)
        if (size % known if -1 in self.shape else size != known):
            raise ShapeError(
                f"{self!r} cannot arrange an input of per-sample shape {tuple(input_shape)} ({size} values) into "
                f"{self.shape}; choose a shape with {size} values"
            )
        self.output_shape = tuple(size // known if n == -1 else n for n in self.shape)
        return self.output_shape

    def forward(self, x: Any, training: bool = False):
        xp = self.backend.xp
        shape = tuple(x.shape)
        y = xp.reshape(x, (shape[0], *self.output_shape))
        return y, lambda dy, need_dx=True: xp.reshape(dy, shape) if need_dx else None

    def config(self) -> dict:
        return {"shape": list(self.shape)}
