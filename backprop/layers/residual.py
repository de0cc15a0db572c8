"""`Residual`: a skip connection around a layer (often a `Sequential` block), as in ResNets and Thinc's ``residual``.

forward:  y = x + f(x)
backward: dL/dx = g + f'(x)^T g  (the skip path passes g through unchanged; f's backward adds its own part
          and accumulates f's parameter gradients).
"""

from __future__ import annotations

from typing import Any, Iterator

from backprop.errors import ArgumentTypeError, ShapeError
from backprop.layers.base import Layer, Shape
from backprop.layers.registry import describe, layer_from_node


class Residual(Layer):
    """``Residual(inner)``: y = x + inner(x). ``inner``'s output must have its input's per-sample shape.

    The child is named ``"inner"``: in a model, ``Residual(block)`` at position 3 names its parameters
    ``"3.inner.0.weight"``, ... (``block``'s own names behind ``"3.inner."``).
    """

    keeps_shape = True

    def __init__(self, inner: Layer) -> None:
        super().__init__()
        if not isinstance(inner, Layer):
            raise ArgumentTypeError(f"Residual wraps a layer (e.g. a bp.Sequential block), got {type(inner).__name__}")
        self.inner = inner
        self._inner_shape: Shape | None = None

    @property
    def input_shape(self) -> Shape | None:
        return self.inner.input_shape

    def children(self) -> Iterator[tuple[str, Layer]]:
        yield "inner", self.inner

    def output_shapes(self) -> dict[str, Shape]:
        return {} if self._inner_shape is None else {"inner": self._inner_shape}

    def build(self, input_shape, backend, dtype, rng):
        shape = super().build(input_shape, backend, dtype, rng)
        inner_shape = tuple(self.inner.build(shape, backend, dtype, rng))
        if inner_shape != shape:
            raise ShapeError(
                f"Residual adds its input to its inner layer's output, so they need the same per-sample shape, "
                f"but the input has {shape} and {type(self.inner).__name__} produces {inner_shape}; make the "
                f"block end with a layer that produces {shape} (e.g. bp.Dense(..., {shape[0]}) for a 1-D input)"
            )
        self._inner_shape = inner_shape
        return shape

    def forward(self, x: Any, training: bool = False):
        fx, inner_backward = self.inner.forward(x, training)

        def backward(dy: Any, need_dx: bool = True) -> Any:
            inner_dx = inner_backward(dy, need_dx)
            return inner_dx + dy if need_dx else None

        return x + fx, backward

    def config(self) -> dict:
        return {"inner": describe(self.inner)}

    @classmethod
    def from_config(cls, config: dict) -> "Residual":
        rest = dict(config)
        return cls(layer_from_node(rest.pop("inner", None), "Residual's inner layer"), **rest)

    def __repr__(self) -> str:
        return f"Residual({self.inner!r})"
