"""Element-wise activations (and softmax over features), each with its derivative beside it.

Every backward here maps dL/dy = g to dL/dx; products are element-wise. Inputs may have any shape (N, *s) and
the output keeps it (``keeps_shape``); softmax normalises over the last axis.
"""

from __future__ import annotations

from typing import Any

from backprop.layers.base import Layer
from backprop.validation import number


class Identity(Layer):
    """y = x;  dx = g."""

    keeps_shape = True

    def forward(self, x, training=False):
        return x, lambda dy, need_dx=True: dy


class Sigmoid(Layer):
    """y = 1 / (1 + exp(-x));  dx = g * y * (1 - y).

    y is ``Backend.sigmoid``: on the array-API reference exp(min(x, 0)) / (1 + exp(-|x|)), with no exponential
    overflow and full relative precision for small outputs (`backprop.elementwise.sigmoid`); a library's own
    kernel where it has one (``torch.sigmoid``).
    """

    keeps_shape = True

    def forward(self, x, training=False):
        y = self.backend.sigmoid(x)

        def backward(dy, need_dx=True):
            return dy * (y * (1.0 - y))

        return y, backward


class Tanh(Layer):
    """y = tanh(x);  dx = g * (1 - y^2)."""

    keeps_shape = True

    def forward(self, x, training=False):
        y = self.backend.xp.tanh(x)
        return y, lambda dy, need_dx=True: dy * (1.0 - y * y)


class ReLU(Layer):
    """y = max(x, 0);  dx = g * [x > 0] (so the gradient at exactly 0 is 0, as in PyTorch).

    NaN inputs stay NaN, as in PyTorch. ``Backend.relu`` computes both: the array-API reference
    (`backprop.elementwise.relu`) or a library's own kernels (``torch.relu``).
    """

    keeps_shape = True

    def forward(self, x, training=False):
        y, backward = self.backend.relu(x)
        return y, lambda dy, need_dx=True: backward(dy)


class LeakyReLU(Layer):
    """y = x where x > 0, else a*x;  dx = g where x > 0, else a*g  (a = negative_slope)."""

    keeps_shape = True

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = number(negative_slope, "LeakyReLU negative_slope",
                                     meaning="the slope for x < 0, e.g. 0.01")

    def forward(self, x, training=False):
        xp = self.backend.xp
        a = self.negative_slope
        positive = x > 0
        y = xp.where(positive, x, a * x)
        return y, lambda dy, need_dx=True: xp.where(positive, dy, a * dy)

    def config(self) -> dict:
        return {"negative_slope": self.negative_slope}


class Softmax(Layer):
    """y_i = exp(x_i - max x) / sum_j exp(x_j - max x) over the last axis;  dx = y * (g - sum(g * y)).

    To train a classifier, prefer ``CrossEntropy(from_logits=True)`` on raw scores: it fuses softmax with the
    log-likelihood and is stable where softmax followed by a log is not.
    """

    keeps_shape = True

    def forward(self, x, training=False):
        y = softmax(self.backend.xp, x)

        def backward(dy, need_dx=True):
            xp = self.backend.xp
            return y * (dy - xp.sum(dy * y, axis=-1, keepdims=True))

        return y, backward


def softmax(xp: Any, x: Any) -> Any:
    """softmax over the last axis, shifted by the row maximum so exp never overflows."""
    shifted = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    return shifted / xp.sum(shifted, axis=-1, keepdims=True)
