"""Adam (``torch.optim.Adam``): per-coordinate steps scaled by running moments of the gradient.

With gradient g, weight decay lambda (added to the gradient, "L2"), betas (b1, b2), this parameter's update
count t (1 on its first), learning rate lr:

    g = g + lambda * w
    m = b1 * m + (1 - b1) * g              (first moment; m = 0 before the first update)
    v = b2 * v + (1 - b2) * g * g          (second moment; v = 0 before the first update)
    v_max = max(v_max, v)                  (only with amsgrad; v_max is then used in place of v)
    w = w - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
"""

from __future__ import annotations

import math
from typing import Any

from backprop.optim.base import Hyper, Optimizer, check_betas, check_eps, check_learning_rate, check_weight_decay
from backprop.parameter import Parameter
from backprop.validation import flag


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)``; slots
    ``"exp_avg"`` (m), ``"exp_avg_sq"`` (v) and, with amsgrad, ``"max_exp_avg_sq"`` (v_max)."""

    elementwise = True  # its rule treats every element alike: one pass over flat buffers
    lr = Hyper(1e-3, check_learning_rate)
    betas = Hyper((0.9, 0.999), check_betas)
    eps = Hyper(1e-8, check_eps)
    weight_decay = Hyper(0.0, check_weight_decay)
    amsgrad = Hyper(False, flag)

    def apply_weight_decay(self, parameter: Parameter, gradient: Any) -> Any:
        """The gradient Adam's moments see: the L2 penalty's gradient lambda * w added to it."""
        return gradient + self.weight_decay * parameter.value if self.weight_decay else gradient

    def update(self, parameter: Parameter, step: int) -> None:
        xp = parameter.backend.xp
        beta1, beta2 = self.betas
        gradient = self.apply_weight_decay(parameter, parameter.grad)
        first = self.slot(parameter, "exp_avg", step)
        first *= beta1
        first += (1.0 - beta1) * gradient
        parameter.state["exp_avg"] = first
        second = self.slot(parameter, "exp_avg_sq", step)
        second *= beta2
        squared = gradient * gradient
        squared *= 1.0 - beta2  # the temporaries below are new arrays: scaling them in place saves allocations
        second += squared
        del squared  # over flat buffers (backprop.optim.flat) a temporary is model-sized: at most two live at once
        parameter.state["exp_avg_sq"] = second
        if self.amsgrad:
            largest = xp.maximum(self.slot(parameter, "max_exp_avg_sq", step), second)
            second = parameter.state["max_exp_avg_sq"] = largest
        denominator = xp.sqrt(second)
        denominator /= math.sqrt(1.0 - beta2**step)
        denominator += self.eps
        change = first / denominator
        del denominator
        change *= self.lr / (1.0 - beta1**step)
        parameter.value -= change

    def update_all(self, parameters: list[Parameter], steps: list[int]) -> None:
        """`update`'s rule for all ``parameters`` at once, through the backend's list forms (one multi-tensor
        operation each on torch); parameters with different update counts (different bias corrections) go in
        separate groups, one per count."""
        groups: dict[int, list[Parameter]] = {}
        for parameter, step in zip(parameters, steps):
            groups.setdefault(step, []).append(parameter)
        for step, group in groups.items():
            self._update_group(group, step)

    def _update_group(self, parameters: list[Parameter], step: int) -> None:
        backend = parameters[0].backend
        beta1, beta2 = self.betas
        if type(self).apply_weight_decay is Adam.apply_weight_decay:
            gradients = [parameter.grad for parameter in parameters]
            if self.weight_decay:
                gradients = backend.add_scaled_all(gradients, self.weight_decay, [p.value for p in parameters])
        else:  # a subclass's own decay (AdamW's decoupled one), parameter by parameter
            gradients = [self.apply_weight_decay(parameter, parameter.grad) for parameter in parameters]
        firsts = backend.scale_add_all([self.slot(p, "exp_avg", step) for p in parameters], beta1, gradients,
                                       1.0 - beta1)
        seconds = backend.scale_addcmul_all([self.slot(p, "exp_avg_sq", step) for p in parameters], beta2,
                                            gradients, gradients, 1.0 - beta2)
        for parameter, first, second in zip(parameters, firsts, seconds):
            parameter.state["exp_avg"], parameter.state["exp_avg_sq"] = first, second
        if self.amsgrad:
            seconds = backend.maximum_all([self.slot(p, "max_exp_avg_sq", step) for p in parameters], seconds)
            for parameter, largest in zip(parameters, seconds):
                parameter.state["max_exp_avg_sq"] = largest
        denominators = backend.sqrt_scaled_all(seconds, math.sqrt(1.0 - beta2**step), self.eps)
        values = backend.subtract_ratio_all([parameter.value for parameter in parameters],
                                            self.lr / (1.0 - beta1**step), firsts, denominators)
        for parameter, value in zip(parameters, values):
            parameter.value = value
