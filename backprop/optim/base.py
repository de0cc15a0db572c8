"""`Optimizer`: updates parameters from their ``.grad``; its per-parameter slots live in ``parameter.state``.

Because the slots live on the parameters, ``model.to(device)`` moves them and checkpoints save them, with no
optimiser in hand. The optimiser itself keeps only host scalars: hyper-parameters and the step count.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from backprop.errors import ConfigurationError
from backprop.parameter import Parameter


def check_learning_rate(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigurationError(f"learning rate must be a finite number > 0, got {lr!r}")
    return float(lr)


class Optimizer:
    """Base class: ``step()`` calls ``update(parameter)`` for every parameter that has a gradient."""

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("the optimiser got no parameters; pass model.parameters()")
        if not all(isinstance(p, Parameter) for p in self.params):
            raise TypeError("the optimiser takes Parameter objects: pass model.parameters()")
        self.lr = check_learning_rate(lr)
        self.steps = 0

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.zero_grad()

    def step(self) -> None:
        self.steps += 1
        with self.params[0].backend.activate():
            for parameter in self.params:
                if parameter.has_grad:
                    self.update(parameter)

    def update(self, parameter: Parameter) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        """Host scalars that define the optimiser (saved in checkpoints)."""
        return {"lr": self.lr}

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "steps": self.steps, **self.hyperparameters()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for key, value in state.items():
            if key not in ("type", "steps"):
                setattr(self, key, value)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({arguments})"
