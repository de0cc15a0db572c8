"""AdamW (``torch.optim.AdamW``): Adam with weight decay decoupled from the gradient (Loshchilov & Hutter).

The weights shrink before the Adam step, and the moments see the bare gradient:

    w = w * (1 - lr * lambda)
    then Adam's update of m, v (and v_max) and w with g as it is (see `backprop.optim.adam`).
"""

from __future__ import annotations

from typing import Any

from backprop.optim.adam import Adam
from backprop.optim.base import Hyper, check_weight_decay
from backprop.parameter import Parameter


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)``: PyTorch's
    defaults, so weight decay is on unless ``weight_decay=0``."""

    elementwise = True  # its rule treats every element alike: one pass over flat buffers
    weight_decay = Hyper(1e-2, check_weight_decay)

    def apply_weight_decay(self, parameter: Parameter, gradient: Any) -> Any:
        """Shrink the weights in place, w = w * (1 - lr * lambda), and leave the gradient as it is."""
        if self.weight_decay:
            parameter.value *= 1.0 - self.lr * self.weight_decay
        return gradient
