"""Layer normalisation over the features of each sample, with PyTorch's ``LayerNorm`` semantics."""

from __future__ import annotations

from typing import Any

import numpy as np

from backprop.layers.base import Layer
from backprop.layers.standardize import check_num_features, scale_and_shift, standardize, standardize_backward
from backprop.validation import flag, number


class LayerNorm(Layer):
    """``LayerNorm(num_features, eps=1e-5, elementwise_affine=True)`` on inputs of shape (n, D), D = num_features.

    Per sample, over its D features:  mu = mean(x),  var = mean((x - mu)^2) (biased),
        x_hat = (x - mu) / sqrt(var + eps),  y = gamma x_hat + beta  (gamma = ``weight``, initially 1;
        beta = ``bias``, initially 0; without ``elementwise_affine``, y = x_hat).
    The same in training and inference (no running statistics). Backward, with g = dL/dy, r = 1 / sqrt(var + eps):
        dL/dgamma = sum over samples of g x_hat,  dL/dbeta = sum over samples of g,
        dL/dx = r (gamma g - mean_D(gamma g) - x_hat mean_D(gamma g x_hat)).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.num_features = self.in_features = check_num_features(num_features, "LayerNorm")
        self.eps = number(eps, "LayerNorm eps", low=0.0, low_open=True)
        self.elementwise_affine = flag(elementwise_affine, "LayerNorm elementwise_affine")

    keeps_shape = True

    def build(self, input_shape, backend, dtype, rng):
        super().build(input_shape, backend, dtype, rng)
        if self.elementwise_affine:
            self.reserve((self.num_features,), (self.num_features,))
            self.add_parameter("weight", np.ones((self.num_features,)))
            self.add_parameter("bias", np.zeros((self.num_features,)))
        return (self.num_features,)

    def forward(self, x: Any, training: bool = False):
        xp = self.backend.xp
        x_hat, inv_std, _, _ = standardize(xp, x, -1, self.eps)
        y, affine_backward = x_hat, None
        if self.elementwise_affine:
            y, affine_backward = scale_and_shift(xp, x_hat, self.params["weight"], self.params["bias"])

        def backward(dy: Any, need_dx: bool = True) -> Any:
            if affine_backward is not None:
                dy = affine_backward(dy)
            return standardize_backward(xp, dy, x_hat, inv_std, -1) if need_dx else None

        return y, backward

    def config(self) -> dict:
        return {"num_features": self.num_features, "eps": self.eps, "elementwise_affine": self.elementwise_affine}
