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
import functools
from typing import Any, Callable, ContextManager

import numpy as np

from backprop.errors import ConfigurationError
from backprop.parameter import Parameter

Backward = Callable[..., Any]


def _in_device_context(forward: Callable) -> Callable:
    """``forward`` and the ``backward`` it returns, each run inside ``self.backend.activate()`` (CuPy runs a
    kernel on the *current* device, whatever device its arrays are on)."""

    @functools.wraps(forward)
    def forward_in_context(self: "Layer", x: Any, training: bool = False) -> tuple[Any, Backward]:
        if self.backend is None:
            raise ConfigurationError(f"{type(self).__name__} is not built yet: put it in a Sequential first")
        with self.backend.activate():
            y, backward = forward(self, x, training)

        def backward_in_context(dy: Any, need_dx: bool = True) -> Any:
            with self.backend.activate():
                return backward(dy, need_dx)

        return y, backward_in_context

    return forward_in_context


class Layer:
    """Base class. Subclasses set ``in_features`` when they require a given input width (else ``None``).

    Every subclass's ``forward``, and the ``backward`` it returns, run inside the layer's device context
    (``backend.activate()``), so a layer called on its own works on a GPU that is not the current one."""

    in_features: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _in_device_context(cls.__dict__["forward"])

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
