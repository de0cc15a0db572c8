"""The layer protocol: ``forward(x, training) -> (y, backward)`` with ``backward(dy, need_dx=True) -> dx``.

As in Thinc, what the backward pass needs is exactly what the closure captures: no stale state on the layer.
``backward`` accumulates the gradients of the layer's parameters and returns dL/dx (or ``None`` when the caller
says it does not need it: the first layer of a network skips one matrix product that way).

A layer is built once by its model: ``build(in_features, backend, dtype, rng)`` creates its parameters on the
backend from host draws of ``rng`` and returns its output width. ``config()`` describes the layer as plain data
(its class name and constructor arguments), which is how checkpoints rebuild a model without code.
A layer that draws random numbers on the host (`Dropout`) exposes its generator's state as JSON data through
``random_state()`` / ``set_random_state(state)``, so checkpoints and ``fit``'s divergence restore keep it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager

import numpy as np

from backprop.parameter import Parameter

Backward = Callable[..., Any]


class Layer:
    """Base class. Subclasses set ``in_features`` when they require a given input width (else ``None``)."""

    in_features: int | None = None

    def __init__(self) -> None:
        self.params: dict[str, Parameter] = {}
        self.buffers: dict[str, Any] = {}
        self.backend = None
        self.dtype = None

    # -- building -------------------------------------------------------------------------------------------
    def build(self, in_features: int | None, backend: Any, dtype: Any, rng: np.random.Generator) -> int | None:
        """Create parameters on ``backend``; return the output width (``in_features`` for shape-preserving layers)."""
        self.backend, self.dtype = backend, dtype
        return in_features

    def add_parameter(self, name: str, host_value: np.ndarray) -> Parameter:
        parameter = Parameter(name, self.backend.to_device(host_value, self.dtype), self.backend)
        self.params[name] = parameter
        return parameter

    # -- computing ------------------------------------------------------------------------------------------
    def forward(self, x: Any, training: bool = False) -> tuple[Any, Backward]:
        raise NotImplementedError

    def fixed_randomness(self) -> ContextManager:
        """Context in which repeated training forwards reuse the same random draws (e.g. dropout masks), so
        a gradient check sees a deterministic function. Layers that draw nothing return a null context."""
        return contextlib.nullcontext()

    def random_state(self) -> dict | None:
        """The state of the layer's host random generator as JSON data (a NumPy ``bit_generator.state``), or
        ``None`` for a layer that draws nothing. Checkpoints save it, so a resumed run draws what an
        uninterrupted one would."""
        return None

    def set_random_state(self, state: dict) -> None:
        """Restore a state returned by ``random_state()``; raise ``ValueError`` naming the problem if it does not
        fit this layer (and then change nothing)."""
        raise ValueError(f"{type(self).__name__} draws no random numbers, so it has no random state to restore")

    # -- describing -----------------------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments as JSON-able data; ``type(self)(**config())`` rebuilds the layer."""
        return {}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({arguments})"
