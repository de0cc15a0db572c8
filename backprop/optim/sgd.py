"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay (``torch.optim.SGD``).

With gradient g, weight decay lambda, momentum mu, dampening tau, learning rate lr:

    d = g + lambda * w
    v = d  on the parameter's first update,  else  v = mu * v + (1 - tau) * d      (only when mu > 0)
    d = d + mu * v  (Nesterov)   or   d = v  (heavy ball)                         (only when mu > 0)
    w = w - lr * d
"""

from __future__ import annotations

from typing import Any, Mapping

from backprop.errors import ConfigurationError
from backprop.optim.base import Hyper, Optimizer, check_momentum, check_weight_decay
from backprop.parameter import Parameter
from backprop.validation import flag, number


def check_dampening(value: Any, name: str = "dampening") -> float:
    """The share of the gradient left out of the velocity, in [0, 1]."""
    return number(value, name, low=0.0, high=1.0, meaning="the share of the gradient left out of the velocity")


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False)``; the momentum slot is
    ``parameter.state["momentum"]``. ``lr`` (declared by `Optimizer`) has no default."""

    elementwise = True  # its rule treats every element alike: one pass over flat buffers
    momentum = Hyper(0.0, check_momentum)
    dampening = Hyper(0.0, check_dampening)
    weight_decay = Hyper(0.0, check_weight_decay)
    nesterov = Hyper(False, flag)

    def check_hyperparameters(self, values: Mapping[str, Any]) -> None:
        """Nesterov momentum needs momentum > 0 and dampening = 0 (as in ``torch.optim.SGD``)."""
        if values["nesterov"] and (values["momentum"] == 0 or values["dampening"] != 0):
            raise ConfigurationError(
                "Nesterov momentum needs momentum > 0 and dampening = 0, got "
                f"momentum={values['momentum']!r}, dampening={values['dampening']!r}"
            )

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

    def update_all(self, parameters: list[Parameter], steps: list[int]) -> None:
        """`update`'s rule for all ``parameters`` at once, through the backend's list forms (one multi-tensor
        operation each on torch). A parameter on its first update starts its velocity as a copy, as in `update`."""
        backend = parameters[0].backend
        directions = [parameter.grad for parameter in parameters]
        if self.weight_decay:
            directions = backend.add_scaled_all(directions, self.weight_decay, [p.value for p in parameters])
        if self.momentum:
            velocities = [backend.copy(d) if step == 1 else None for d, step in zip(directions, steps)]
            running = [index for index, step in enumerate(steps) if step != 1]
            if running:
                decayed = backend.scale_add_all(
                    [self.slot(parameters[index], "momentum", steps[index]) for index in running], self.momentum,
                    [directions[index] for index in running], 1.0 - self.dampening)
                for index, velocity in zip(running, decayed):
                    velocities[index] = velocity
            for parameter, velocity in zip(parameters, velocities):
                parameter.state["momentum"] = velocity  # rebinds on backends whose arrays are immutable
            directions = (backend.add_scaled_all(directions, self.momentum, velocities) if self.nesterov
                          else velocities)
        values = backend.subtract_scaled_all([parameter.value for parameter in parameters], self.lr, directions)
        for parameter, value in zip(parameters, values):
            parameter.value = value
