"""`Parameter`: a trainable array on the model's device, with its gradient and its optimiser state.

Keeping the optimiser's slots (momentum, Adam moments, ...) on the parameter itself means that whatever moves
or saves parameters moves or saves optimiser state with them: ``model.to(device)`` needs no optimiser in hand.
"""

from __future__ import annotations

from typing import Any


class Parameter:
    """A named trainable array.

    ``value`` is the array on the model's device. ``grad`` is dL/d(value), accumulated by backward passes; after
    ``zero_grad()`` it reads as zeros (allocated lazily, so a training step never spends a pass writing zeros).
    ``state`` maps an optimiser's slot names to arrays shaped like ``value`` on the same device.
    """

    __slots__ = ("name", "value", "_grad", "state", "backend")

    def __init__(self, name: str, value: Any, backend: Any) -> None:
        self.name = name
        self.value = value
        self._grad = None
        self.state: dict[str, Any] = {}
        self.backend = backend

    @property
    def grad(self) -> Any:
        if self._grad is None:
            with self.backend.activate():
                self._grad = self.backend.xp.zeros_like(self.value)
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        self._grad = value

    @property
    def has_grad(self) -> bool:
        """True once a backward pass has written a gradient since the last ``zero_grad()``."""
        return self._grad is not None

    def accumulate(self, fresh_gradient: Any) -> None:
        """grad += fresh_gradient, in place where the backend's arrays are mutable.

        The first gradient after ``zero_grad()`` is adopted without a copy, so ``fresh_gradient`` must be a new
        array that nothing else holds (the result of a matmul or a reduction).
        """
        if self._grad is None:
            self._grad = fresh_gradient
        else:
            self._grad += fresh_gradient

    def zero_grad(self) -> None:
        self._grad = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"
