"""Metrics for ``fit`` and ``evaluate``: ``metric(prediction, target) -> 0-d device array``, a mean over samples.

``target`` is the loss's prepared target (``Loss.prepare_target``): shaped like the prediction, so class
indices arrive as one-hot rows. Because each metric is a mean over the samples of a batch, ``evaluate`` combines
batches by weighting each with its size. ``fit(metrics=["accuracy", "mse"])`` takes names from ``METRICS`` or
callables; a callable is logged under its ``__name__``.

A single-output accuracy must know whether the outputs are probabilities or logits: ``fit`` and ``evaluate``
resolve ``"accuracy"`` for their loss (``resolve(metrics, loss)``), so with ``BinaryCrossEntropy(from_logits=True)``
it thresholds the logit at 0 (sigmoid(z) >= 0.5 exactly when z >= 0), otherwise the probability at 0.5.
"""

from __future__ import annotations

from typing import Any, Callable

from backprop.data import namespace_of
from backprop.errors import ConfigurationError
from backprop.validation import optional_list

Metric = Callable[[Any, Any], Any]


def accuracy(prediction: Any, target: Any, logits: bool = False) -> Any:
    """Fraction of samples whose predicted class is the target's.

    Several outputs: class = argmax over the outputs (probabilities or logits alike; one-hot or probability
    targets give their argmax). One output: the target's class is [t >= 0.5]; the prediction's is [p >= 0.5]
    for a probability (after a Sigmoid), [z >= 0] for a logit (``logits=True``), the same decision.
    """
    xp = namespace_of(prediction)
    if prediction.shape[1] == 1:
        hits = (prediction >= (0.0 if logits else 0.5)) == (target >= 0.5)
    else:
        hits = xp.argmax(prediction, axis=1) == xp.argmax(target, axis=1)
    return xp.mean(xp.astype(hits, prediction.dtype))


def mse(prediction: Any, target: Any) -> Any:
    """Mean squared error over every element: mean((p - t)^2)."""
    xp = namespace_of(prediction)
    difference = prediction - target
    return xp.mean(difference * difference)


def accuracy_of_logits(prediction: Any, target: Any) -> Any:
    """`accuracy` for a model whose outputs are logits (a single output is thresholded at 0)."""
    return accuracy(prediction, target, logits=True)


METRICS: dict[str, Metric] = {"accuracy": accuracy, "mse": mse}


def resolve(metrics: Any, loss: Any = None) -> dict[str, Metric]:
    """``{log name: function}`` for names in ``METRICS`` or callables (``None``: no metrics); raises
    `ConfigurationError` otherwise. ``"accuracy"`` becomes `accuracy_of_logits` when ``loss.from_logits``."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    metrics = optional_list(metrics, "metrics", "metric names or functions, e.g. ['accuracy']")
    logits = bool(getattr(loss, "from_logits", False))
    resolved: dict[str, Metric] = {}
    for metric in metrics:
        if metric == "accuracy" and logits:
            resolved[metric] = accuracy_of_logits
            continue
        if isinstance(metric, str):
            if metric not in METRICS:
                raise ConfigurationError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}, "
                                         "or pass a function")
            resolved[metric] = METRICS[metric]
        elif callable(metric):
            resolved[getattr(metric, "__name__", type(metric).__name__)] = metric
        else:
            raise ConfigurationError(f"a metric is a name ({', '.join(sorted(METRICS))}) or a function, got {metric!r}")
    if "loss" in resolved:
        raise ConfigurationError("a metric may not be called 'loss': fit logs the loss itself")
    return resolved
