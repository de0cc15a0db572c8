"""Batch normalisation with PyTorch's semantics: `BatchNorm1d` over the samples of an (n, C) batch, `BatchNorm2d`
over the samples and pixels of an (N, C, H, W) image batch, per channel."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backprop.errors import ShapeError
from backprop.layers.base import Layer
from backprop.layers.images import check_images
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
    keeps_shape = True
    _axes: "int | tuple[int, ...]" = 0  # the axes the statistics run over; the one left is the feature axis
    _feature_shape: "tuple[int, ...] | None" = None  # how a (C,) vector broadcasts against x (None: as it is)
    _counted = "samples per batch"  # what the statistics of one feature run over

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = check_num_features(num_features, name)
        self.momentum = number(momentum, f"{name} momentum", low=0.0, high=1.0,
                               meaning="the weight of each batch in the running statistics")
        self.eps = number(eps, f"{name} eps", low=0.0, low_open=True)
        self.affine = flag(affine, f"{name} affine")

    @property
    def input_shape(self) -> "tuple[int, ...] | None":
        return (self.num_features,)

    def build(self, input_shape, backend, dtype, rng):
        output_shape = super().build(input_shape, backend, dtype, rng)
        shape = (self.num_features,)
        self.reserve(shape, shape, shape, shape)
        self.buffers["running_mean"] = backend.to_device(np.zeros(shape), dtype)
        self.buffers["running_var"] = backend.to_device(np.ones(shape), dtype)
        if self.affine:
            self.add_parameter("weight", np.ones(shape))
            self.add_parameter("bias", np.zeros(shape))
        return output_shape

    def _per_feature(self, xp: Any, vector: Any) -> Any:
        return vector if self._feature_shape is None else xp.reshape(vector, self._feature_shape)

    def forward(self, x: Any, training: bool = False):
        xp = self.backend.xp
        if training:
            axes = self._axes if isinstance(self._axes, tuple) else (self._axes,)
            n = math.prod(x.shape[axis] for axis in axes)
            if n < 2:
                raise ShapeError(
                    f"{type(self).__name__} needs at least 2 {self._counted} in training (the variance of one value "
                    f"is 0), got a batch of shape {tuple(x.shape)}; use a larger batch or drop the last incomplete one"
                )
            x_hat, inv_std, mu, var = standardize(xp, x, self._axes, self.eps)
            keep = 1.0 - self.momentum
            self.buffers["running_mean"] = keep * self.buffers["running_mean"] + self.momentum * xp.reshape(mu, (-1,))
            self.buffers["running_var"] = (keep * self.buffers["running_var"]
                                           + (self.momentum * n / (n - 1)) * xp.reshape(var, (-1,)))
        else:
            inv_std = self._per_feature(xp, 1.0 / xp.sqrt(self.buffers["running_var"] + self.eps))
            x_hat = (x - self._per_feature(xp, self.buffers["running_mean"])) * inv_std
        y, affine_backward = x_hat, None
        if self.affine:
            y, affine_backward = scale_and_shift(xp, x_hat, self.params["weight"], self.params["bias"], self._axes,
                                                 self._feature_shape)

        def backward(dy: Any, need_dx: bool = True) -> Any:
            if affine_backward is not None:
                dy = affine_backward(dy)
            if not need_dx:
                return None
            return standardize_backward(xp, dy, x_hat, inv_std, self._axes) if training else dy * inv_std

        return y, backward

    def config(self) -> dict:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps, "affine": self.affine}


class BatchNorm2d(BatchNorm1d):
    """``BatchNorm2d(num_features, momentum=0.1, eps=1e-5, affine=True)`` on image batches (N, C, H, W).

    `BatchNorm1d`'s formulas per channel c, with the statistics over all m = N H W values of the channel (the
    samples and their pixels): mu = mean over (n, h, w) of x[n, c, h, w], var likewise (biased), the running
    variance updated with var m / (m - 1); dL/dgamma and dL/dbeta sum over (n, h, w), and dL/dx's means run over
    (n, h, w). ``weight``, ``bias`` and the running statistics have shape (C,), as in PyTorch.
    """

    _axes = (0, 2, 3)
    _counted = "values per channel (samples x height x width)"

    @property
    def input_shape(self) -> "tuple[int, ...] | None":
        return None  # images of any size: build checks the channel count

    @property
    def _feature_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.num_features, 1, 1)

    def build(self, input_shape, backend, dtype, rng):
        check_images(repr(self), input_shape, self.num_features, "num_features")
        return super().build(input_shape, backend, dtype, rng)
