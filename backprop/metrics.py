"""Metrics for ``fit`` and ``evaluate``: ``metric(prediction, target) -> 0-d device array``, a mean over samples.

``target`` is the loss's prepared target (``Loss.prepare_target``): shaped like the prediction, so class
indices arrive as one-hot rows. Because each metric is a mean over the samples of a batch, ``evaluate`` combines
batches by weighting each with its size. ``fit(metrics=["accuracy", "mse"])`` takes names from ``METRICS`` or
callables; a callable is logged under its ``__name__``.
"""

from __future__ import annotations

from typing import Any, Callable

from backprop.data import namespace_of
from backprop.errors import ConfigurationError

Metric = Callable[[Any, Any], Any]


def accuracy(prediction: Any, target: Any) -> Any:
    """Fraction of samples whose predicted class is the target's.

    Several outputs: class = argmax over the outputs (probabilities or logits alike; one-hot or probability
    targets give their argmax). One output: class = [value >= 0.5] for both prediction and target, i.e. the
    prediction is a probability (after a Sigmoid); for a raw logit, threshold at 0 with your own metric.
    """
    xp = namespace_of(prediction)
    if prediction.shape[1] == 1:
        hits = (prediction >= 0.5) == (target >= 0.5)
    else:
        hits = xp.argmax(prediction, axis=1) == xp.argmax(target, axis=1)
    return xp.mean(xp.astype(hits, prediction.dtype))


def mse(prediction: Any, target: Any) -> Any:
    """Mean squared error over every element: mean((p - t)^2)."""
    xp = namespace_of(prediction)
    difference = prediction - target
    return xp.mean(difference * difference)


METRICS: dict[str, Metric] = {"accuracy": accuracy, "mse": mse}


def resolve(metrics: Any) -> dict[str, Metric]:
    """``{log name: function}`` for names in ``METRICS`` or callables; raises `ConfigurationError` otherwise."""
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    resolved: dict[str, Metric] = {}
    for metric in metrics:
        if isinstance(metric, str):
            if metric not in METRICS:
                raise ConfigurationError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}, or pass a function")
            resolved[metric] = METRICS[metric]
        elif callable(metric):
            resolved[getattr(metric, "__name__", type(metric).__name__)] = metric
        else:
            raise ConfigurationError(f"a metric is a name ({', '.join(sorted(METRICS))}) or a function, got {metric!r}")
    if "loss" in resolved:
        raise ConfigurationError("a metric may not be called 'loss': fit logs the loss itself")
    return resolved
