"""Losses: ``loss(prediction, target)`` is the value; ``loss.value_and_grad`` adds dL/d(prediction).

Values are 0-d arrays on the device (no host round trip per batch); ``float(value)`` reads one.
``prepare_target`` moves targets to the device and checks they fit the model's output before any arithmetic.
Mean reduction averages over every element for MSE and binary cross-entropy, over samples for CrossEntropy
(PyTorch's conventions).
"""

from __future__ import annotations

from typing import Any

from backprop.data import namespace_of as _namespace, to_backend
from backprop.errors import ShapeError

_LOG_FLOOR = -100.0  # PyTorch clamps log-probabilities here, so log(0) gives a large finite loss, not inf
_EPS = 1e-12  # PyTorch's floor for p(1-p) in the probability-space BCE gradient


class Loss:
    """Base class: subclasses implement ``value_and_grad``; ``__call__`` returns only the value."""

    def __call__(self, prediction: Any, target: Any) -> Any:
        return self.value_and_grad(prediction, target)[0]

    def value_and_grad(self, prediction: Any, target: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def prepare_target(self, target: Any, backend: Any, dtype: Any, output_shape: tuple) -> Any:
        """Targets on ``backend`` shaped like the prediction (a 1-D target for a single output is reshaped)."""
        if _prepared(target, backend, dtype, output_shape):
            self.check_values(target, backend)
            return target
        y = to_backend(target, backend, dtype, what="targets")
        if len(y.shape) == 1 and len(output_shape) == 2 and output_shape[1] == 1:
            y = backend.xp.reshape(y, (-1, 1))
        if tuple(y.shape) != tuple(output_shape):
            raise ShapeError(f"targets have shape {tuple(y.shape)} but the model's output has shape {tuple(output_shape)}")
        self.check_values(y, backend)
        return y

    def check_values(self, target: Any, backend: Any) -> None:
        """Raise if target values are outside the loss's domain (e.g. BCE targets outside [0, 1])."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _reduce(xp: Any, elementwise: Any, reduction: str) -> tuple[Any, float]:
    """(reduced value, the factor that scales the element-wise gradient)."""
    if reduction == "mean":
        n = 1
        for size in elementwise.shape:
            n *= size
        return xp.sum(elementwise) / n, 1.0 / n  # what mean computes, without its slower generic path
    return xp.sum(elementwise), 1.0


def _prepared(target: Any, backend: Any, dtype: Any, output_shape: tuple) -> bool:
    """True for targets already on ``backend`` in ``dtype`` and shaped like the prediction (the training loop's
    batches once ``prepare_target`` has run on the whole set): they need no transfer, cast or reshape."""
    return backend.owns(target) and target.dtype == dtype and tuple(target.shape) == output_shape


def _check_reduction(reduction: str) -> str:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


class MeanSquaredError(Loss):
    """L = mean((p - t)^2) (or the sum);  dL/dp = 2 (p - t) / N  (N = number of elements; 1 for "sum")."""

    def __init__(self, reduction: str = "mean") -> None:
        self.reduction = _check_reduction(reduction)

    def value_and_grad(self, prediction, target):
        xp = _namespace(prediction)
        diff = prediction - target
        value, scale = _reduce(xp, diff * diff, self.reduction)
        diff *= 2.0 * scale  # diff is a new array: scaling it in place saves a temporary the size of the output
        return value, diff


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy, targets t in [0, 1].

    from_logits=False (p a probability, e.g. after Sigmoid):
        L = -mean(t log p + (1 - t) log(1 - p)), logs clamped at -100;  dL/dp = (p - t) / max(p (1 - p), 1e-12) / N.
    from_logits=True (z a raw score; stable for any |z|):
        L = mean(max(z, 0) - z t + log(1 + exp(-|z|)));  dL/dz = (sigmoid(z) - t) / N.
    """

    def __init__(self, from_logits: bool = False, reduction: str = "mean") -> None:
        self.from_logits = bool(from_logits)
        self.reduction = _check_reduction(reduction)

    def value_and_grad(self, prediction, target):
        xp = _namespace(prediction)
        if self.from_logits:
            z = prediction
            e = xp.exp(-xp.abs(z))
            elementwise = xp.maximum(z, 0.0) - z * target + xp.log1p(e)
            r = 1.0 / (1.0 + e)
            sigmoid = xp.where(z >= 0, r, e * r)
            value, scale = _reduce(xp, elementwise, self.reduction)
            return value, (sigmoid - target) * scale
        p = prediction
        log_p = xp.clip(xp.log(p), _LOG_FLOOR, None)
        log_1mp = xp.clip(xp.log1p(-p), _LOG_FLOOR, None)
        elementwise = -(target * log_p + (1.0 - target) * log_1mp)
        value, scale = _reduce(xp, elementwise, self.reduction)
        grad = (p - target) / xp.clip(p * (1.0 - p), _EPS, None)
        return value, grad * scale

    def check_values(self, target, backend):
        xp = backend.xp
        if not bool(xp.all((target >= 0.0) & (target <= 1.0))):
            raise ValueError("BinaryCrossEntropy targets must lie in [0, 1] (labels 0/1 or probabilities)")


class CrossEntropy(Loss):
    """Softmax cross-entropy over classes; targets are class indices (n,) or rows of probabilities (n, k).

    from_logits=True (z raw scores, the stable default): with log q = log_softmax(z),
        L = -mean over samples of sum_k t_k log q_k;  dL/dz = (softmax(z) - t) / n.
    from_logits=False (p probabilities, e.g. after a Softmax layer):
        L = -mean over samples of sum_k t_k log p_k (logs clamped at -100);  dL/dp = -t / p / n.
    """

    def __init__(self, from_logits: bool = True, reduction: str = "mean") -> None:
        self.from_logits = bool(from_logits)
        self.reduction = _check_reduction(reduction)

    def prepare_target(self, target, backend, dtype, output_shape):
        if _prepared(target, backend, dtype, output_shape):  # rows of probabilities already in place
            return target
        xp = backend.xp
        y = to_backend(target, backend, dtype, what="targets", integral_ok=True)
        n, classes = output_shape
        if len(y.shape) == 1:
            if y.shape[0] != n:
                raise ShapeError(f"{y.shape[0]} class-index targets for {n} samples")
            if xp.isdtype(y.dtype, "real floating"):
                if not bool(xp.all(y == xp.round(y))):
                    raise ValueError("CrossEntropy class-index targets must be whole numbers (0, 1, 2, ...)")
                y = xp.astype(y, xp.int64)
            low, high = int(xp.min(y)), int(xp.max(y))
            if low < 0 or high >= classes:
                raise ValueError(
                    f"CrossEntropy class indices must lie in [0, {classes - 1}] for {classes} outputs; "
                    f"found values from {low} to {high}"
                )
            return xp.astype(xp.reshape(y, (-1, 1)) == xp.arange(classes, device=backend.device), dtype)
        if tuple(y.shape) != (n, classes):
            raise ShapeError(
                f"CrossEntropy targets have shape {tuple(y.shape)}; give class indices of shape ({n},) "
                f"or one-hot rows of shape ({n}, {classes})"
            )
        return xp.astype(y, dtype) if not xp.isdtype(y.dtype, "real floating") else y

    def value_and_grad(self, prediction, target):
        xp = _namespace(prediction)
        n = prediction.shape[0]
        scale = 1.0 / n if self.reduction == "mean" else 1.0
        if self.from_logits:
            shifted = prediction - xp.max(prediction, axis=-1, keepdims=True)
            exp_shifted = xp.exp(shifted)
            total = xp.sum(exp_shifted, axis=-1, keepdims=True)
            log_q = shifted - xp.log(total)  # log_softmax, sharing exp(shifted) with softmax below
            value = -xp.sum(target * log_q) * scale
            grad = exp_shifted  # becomes softmax(z) * sum_k t_k - t, scaled, in place (all new arrays)
            grad *= xp.sum(target, axis=-1, keepdims=True) * (scale / total)
            grad -= target * scale
            return value, grad
        log_p = xp.clip(xp.log(prediction), _LOG_FLOOR, None)
        value = -xp.sum(target * log_p) * scale
        return value, -(target / xp.clip(prediction, _EPS, None)) * scale


