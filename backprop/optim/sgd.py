"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay (``torch.optim.SGD``).

With gradient g, weight decay lambda, momentum mu, dampening tau, learning rate lr:

    d = g + lambda * w
    v = d  on the parameter's first update,  else  v = mu * v + (1 - tau) * d      (only when mu > 0)
    d = d + mu * v  (Nesterov)   or   d = v  (heavy ball)                         (only when mu > 0)
    w = w - lr * d
"""

from __future__ import annotations

from typing import Iterable

from backprop.errors import ConfigurationError
from backprop.optim.base import Optimizer, check_fraction, check_learning_rate, check_weight_decay
from backprop.parameter import Parameter
from backprop.validation import flag


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``; the momentum slot is
    ``parameter.state["momentum"]``."""

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.set_hyperparameters(lr, momentum, dampening, weight_decay, nesterov)

    def set_hyperparameters(
        self, lr: float, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False
    ) -> None:
        self.lr = check_learning_rate(lr, allow_zero=True)
        self.momentum = check_fraction("momentum", momentum, "the decay of the velocity, e.g. 0.9; 0 turns it off")
        self.dampening = check_fraction("dampening", dampening, "the share of the gradient left out of the velocity", closed=True)
        self.weight_decay = check_weight_decay(weight_decay)
        nesterov = flag(nesterov, "nesterov")
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ConfigurationError(
                f"Nesterov momentum needs momentum > 0 and dampening = 0, got momentum={momentum!r}, dampening={dampening!r}"
            )
        self.nesterov = nesterov

    def update(self, parameter: Parameter, step: int) -> None:
        direction = parameter.grad
        if self.weight_decay:
            direction = direction + self.weight_decay * parameter.value
        if self.momentum:
            if step == 1:
                velocity = parameter.backend.copy(direction)
            else:
                velocity = self.slot(parameter, "momentum", step)
                velocity *= self.momentum
                velocity += direction if self.dampening == 0 else (1.0 - self.dampening) * direction
            parameter.state["momentum"] = velocity  # rebinds on backends whose arrays are immutable
            direction = direction + self.momentum * velocity if self.nesterov else velocity
        parameter.value = parameter.backend.subtract_scaled(parameter.value, self.lr, direction)

    def hyperparameters(self) -> dict:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }
