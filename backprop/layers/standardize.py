"""Standardisation along one axis, shared by `BatchNorm1d` (axis 0, over the batch), `BatchNorm2d` (axes (0, 2, 3),
over the batch and the pixels) and `LayerNorm` (axis -1).

Over the m elements of ``axis``:  mu = mean(x),  var = mean((x - mu)^2) (biased),  r = 1 / sqrt(var + eps),
x_hat = (x - mu) r.  Given g = dL/dx_hat, since mu and var depend on every element:
    dL/dx = r (g - mean(g) - x_hat mean(g x_hat)).
Both layers then scale and shift per feature: y = x_hat * gamma + beta (``scale_and_shift``).
"""

from __future__ import annotations

from typing import Any

from backprop.validation import integer


def check_num_features(value: Any, layer: str) -> int:
    """``value`` as an int, or a `ConfigurationError` naming ``layer`` unless it is a positive integer."""
    return integer(value, f"{layer} num_features")


def standardize(xp: Any, x: Any, axis: "int | tuple[int, ...]", eps: float) -> tuple[Any, Any, Any, Any]:
    """(x_hat, r, mu, var), with mu, var and r keeping ``axis`` as a length-1 dimension."""
    mu = xp.mean(x, axis=axis, keepdims=True)
    centered = x - mu
    var = xp.mean(centered * centered, axis=axis, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    return centered * inv_std, inv_std, mu, var


def standardize_backward(xp: Any, grad_x_hat: Any, x_hat: Any, inv_std: Any, axis: "int | tuple[int, ...]") -> Any:
    """dL/dx = r (g - mean(g) - x_hat mean(g x_hat)) for g = dL/dx_hat (see the module docstring)."""
    mean_grad = xp.mean(grad_x_hat, axis=axis, keepdims=True)
    mean_projection = xp.mean(grad_x_hat * x_hat, axis=axis, keepdims=True)
    return inv_std * (grad_x_hat - mean_grad - x_hat * mean_projection)


def scale_and_shift(xp: Any, x_hat: Any, weight: Any, bias: Any, axis: "int | tuple[int, ...]" = 0,
                    feature_shape: "tuple[int, ...] | None" = None) -> tuple[Any, Any]:
    """y = x_hat * gamma + beta per feature, and its backward: given g = dL/dy, accumulate
    dL/dgamma = sum over ``axis`` of g * x_hat and dL/dbeta = sum over ``axis`` of g; return dL/dx_hat = g * gamma.

    ``axis`` is the batch axis by default; image batches (N, C, H, W) normalised per channel give (0, 2, 3) and
    ``feature_shape`` (C, 1, 1), the shape gamma and beta take to broadcast against them."""

    def per_feature(vector: Any) -> Any:
        return vector if feature_shape is None else xp.reshape(vector, feature_shape)

    def backward(dy: Any) -> Any:
        weight.accumulate_sum(dy * x_hat, axis)
        bias.accumulate_sum(dy, axis)
        return dy * per_feature(weight.value)

    return x_hat * per_feature(weight.value) + per_feature(bias.value), backward
