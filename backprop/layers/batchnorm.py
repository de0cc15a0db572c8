"""Batch normalisation over the samples of a (n, C) batch, with PyTorch's ``BatchNorm1d`` semantics."""

from __future__ import annotations

from typing import Any

import numpy as np

from backprop.errors import ShapeError
from backprop.layers.base import Layer
from backprop.layers.standardize import check_num_features, scale_and_shift, standardize, standardize_backward
from backprop.validation import flag, number


class BatchNorm1d(Layer):
    """``BatchNorm1d(num_features, momentum=0.1, eps=1e-5, affine=True)`` on inputs of shape (n, C).

    Training (statistics of the batch, per feature c over the n samples):
        mu = mean(x),  var = mean((x - mu)^2) (biased),  x_hat = (x - mu) / sqrt(var + eps),
        y = gamma x_hat + beta  (gamma = ``weight``, initially 1; beta = ``bias``, initially 0; without
        ``affine``, y = x_hat);
        running_mean <- (1 - momentum) running_mean + momentum mu,
        running_var  <- (1 - momentum) running_var + momentum var n / (n - 1)  (unbiased), as in PyTorch.
      Backward, with g = dL/dy and r = 1 / sqrt(var + eps):
        dL/dgamma = sum_n g x_hat,  dL/dbeta = sum_n g,
        dL/dx = r (gamma g - mean_n(gamma g) - x_hat mean_n(gamma g x_hat)).
    Inference (``training=False``): mu and var are the running statistics (constants), so
        y = gamma (x - running_mean) / sqrt(running_var + eps) + beta  and  dL/dx = gamma g / sqrt(running_var + eps).

    The running statistics are buffers (``layer.buffers["running_mean"]``, ``["running_var"]``, initially 0 and 1):
    they move with ``model.to(...)`` and are part of ``model.state_dict()``. A training batch needs n >= 2.
    Its batch statistics mix the samples (``mixes_samples``), so data-parallel ``fit`` refuses it.
    """

    mixes_samples = True

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = self.in_features = check_num_features(num_features, "BatchNorm1d")
        self.momentum = number(momentum, "BatchNorm1d momentum", low=0.0, high=1.0,
                               meaning="the weight of each batch in the running statistics")
        self.eps = number(eps, "BatchNorm1d eps", low=0.0, low_open=True)
        self.affine = flag(affine, "BatchNorm1d affine")

    keeps_shape = True

    def build(self, input_shape, backend, dtype, rng):
        super().build(input_shape, backend, dtype, rng)
        shape = (self.num_features,)
        self.buffers["running_mean"] = backend.to_device(np.zeros(shape), dtype)
        self.buffers["running_var"] = backend.to_device(np.ones(shape), dtype)
        if self.affine:
            self.add_parameter("weight", np.ones(shape))
            self.add_parameter("bias", np.zeros(shape))
        return (self.num_features,)

    def forward(self, x: Any, training: bool = False):
        xp = self.backend.xp
        if training:
            n = x.shape[0]
            if n < 2:
                raise ShapeError(
                    "BatchNorm1d needs at least 2 samples per batch in training (the variance of one sample "
                    "is 0); use a larger batch or drop the last incomplete one"
                )
            x_hat, inv_std, mu, var = standardize(xp, x, 0, self.eps)
            keep = 1.0 - self.momentum
            self.buffers["running_mean"] = keep * self.buffers["running_mean"] + self.momentum * mu[0, :]
            self.buffers["running_var"] = keep * self.buffers["running_var"] + (self.momentum * n / (n - 1)) * var[0, :]
        else:
            inv_std = 1.0 / xp.sqrt(self.buffers["running_var"] + self.eps)
            x_hat = (x - self.buffers["running_mean"]) * inv_std
        y, affine_backward = x_hat, None
        if self.affine:
            y, affine_backward = scale_and_shift(xp, x_hat, self.params["weight"], self.params["bias"])

        def backward(dy: Any, need_dx: bool = True) -> Any:
            if affine_backward is not None:
                dy = affine_backward(dy)
            if not need_dx:
                return None
            return standardize_backward(xp, dy, x_hat, inv_std, 0) if training else dy * inv_std

        return y, backward

    def config(self) -> dict:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps, "affine": self.affine}
