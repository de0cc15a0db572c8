"""Initialisers: functions ``init(rng, shape, fan_in, fan_out) -> numpy.ndarray`` drawn on the host.

Weights are drawn with NumPy's ``Generator`` from the model's seed and then copied to the device, so every
backend starts from bit-identical parameters. ``Dense(init=...)`` takes a name from ``INITIALISERS`` or a callable.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Initialiser = Callable[[np.random.Generator, tuple, int, int], np.ndarray]


def zeros(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    return np.zeros(shape)


def glorot_uniform(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010); Keras's default for Dense."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


INITIALISERS: dict[str, Initialiser] = {
    "zeros": zeros,
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
}


def get(init: "str | Initialiser") -> Initialiser:
    """Resolve an initialiser given by name or as a callable."""
    if callable(init):
        return init
    if init not in INITIALISERS:
        raise ValueError(f"unknown initialiser {init!r}; known: {', '.join(sorted(INITIALISERS))}, or pass a callable")
    return INITIALISERS[init]
