"""RMSprop (``torch.optim.RMSprop``): steps divided by a running root mean square of the gradient.

With gradient g, weight decay lambda, smoothing alpha, momentum mu, learning rate lr (s, a, b start at 0):

    g = g + lambda * w
    s = alpha * s + (1 - alpha) * g * g         (running mean of the squared gradient)
    a = alpha * a + (1 - alpha) * g             (running mean of the gradient; only when centered)
    r = sqrt(s - a * a) + eps  if centered,  else  sqrt(s) + eps
    b = mu * b + g / r,  w = w - lr * b         when mu > 0
    w = w - lr * g / r                           when mu = 0
"""

from __future__ import annotations

from typing import Any

from backprop.optim.base import Hyper, Optimizer, check_eps, check_learning_rate, check_momentum, check_weight_decay
from backprop.parameter import Parameter
from backprop.validation import flag, number


def check_alpha(value: Any, name: str = "alpha") -> float:
    """RMSprop's smoothing constant: the decay of the running mean of the squared gradient, in [0, 1)."""
    return number(value, name, low=0.0, high=1.0, high_open=True,
                  meaning="the decay of the running mean of the squared gradient, e.g. 0.99")


class RMSprop(Optimizer):
    """``RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False)``; slots
    ``"square_avg"`` (s), ``"grad_avg"`` (a, when centered) and ``"momentum_buffer"`` (b, when mu > 0)."""

    elementwise = True  # its rule treats every element alike: one pass over flat buffers
    lr = Hyper(1e-2, check_learning_rate)
    alpha = Hyper(0.99, check_alpha)
    eps = Hyper(1e-8, check_eps)
    weight_decay = Hyper(0.0, check_weight_decay)
    momentum = Hyper(0.0, check_momentum)
    centered = Hyper(False, flag)

    def update(self, parameter: Parameter, step: int) -> None:
        xp = parameter.backend.xp
        gradient = parameter.grad
        if self.weight_decay:
            gradient = gradient + self.weight_decay * parameter.value
        square_avg = self.slot(parameter, "square_avg", step)
        square_avg *= self.alpha
        square_avg += (1.0 - self.alpha) * (gradient * gradient)
        parameter.state["square_avg"] = square_avg
        if self.centered:
            grad_avg = self.slot(parameter, "grad_avg", step)
            grad_avg *= self.alpha
            grad_avg += (1.0 - self.alpha) * gradient
            parameter.state["grad_avg"] = grad_avg
            root_mean_square = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            root_mean_square = xp.sqrt(square_avg)
        root_mean_square += self.eps
        if self.momentum:
            velocity = self.slot(parameter, "momentum_buffer", step)
            velocity *= self.momentum
            velocity += gradient / root_mean_square
            parameter.state["momentum_buffer"] = velocity
            parameter.value -= self.lr * velocity
        else:
            parameter.value -= self.lr * (gradient / root_mean_square)
