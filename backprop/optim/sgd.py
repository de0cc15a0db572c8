"""Stochastic gradient descent with (heavy-ball) momentum, PyTorch's formulation.

Without momentum:  w <- w - lr * g.
With momentum m:   v <- m * v + g  (v = g on the first step),  w <- w - lr * v.
"""

from __future__ import annotations

from backprop.errors import ConfigurationError
from backprop.optim.base import Optimizer


class SGD(Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.0) -> None:
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ConfigurationError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def update(self, parameter) -> None:
        grad = parameter.grad
        if self.momentum:
            velocity = parameter.state.get("momentum")
            if velocity is None:
                velocity = parameter.state["momentum"] = parameter.backend.xp.asarray(grad, copy=True)
            else:
                velocity *= self.momentum
                velocity += grad
                parameter.state["momentum"] = velocity  # rebinds on backends whose arrays are immutable
            grad = velocity
        parameter.value = parameter.backend.subtract_scaled(parameter.value, self.lr, grad)

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum}
