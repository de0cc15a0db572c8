"""Initialisers: functions ``init(rng, shape, fan_in, fan_out) -> numpy.ndarray`` drawn on the host.

Weights are drawn with NumPy's ``Generator`` from the model's seed and then copied to the device, so every
backend starts from bit-identical parameters. ``Dense(init=...)`` takes a name from ``INITIALISERS`` or a callable.

For a layer with ``fan_in`` inputs and ``fan_out`` outputs (normal draws are plain, untruncated, as in PyTorch):

=================  ==========================================  ==========================================
name               normal: standard deviation                  uniform: U(-a, a) with a =
=================  ==========================================  ==========================================
glorot / xavier    sqrt(2 / (fan_in + fan_out))                sqrt(6 / (fan_in + fan_out))
he / kaiming       sqrt(2 / fan_in)  (ReLU gain sqrt 2)        sqrt(6 / fan_in)
lecun              sqrt(1 / fan_in)                            sqrt(3 / fan_in)
=================  ==========================================  ==========================================

Glorot keeps the variance of activations and gradients roughly constant through tanh/sigmoid-like layers;
He doubles it to make up for ReLU zeroing half its inputs; LeCun suits SELU and linear layers.
``constant(value)``, ``normal(std)`` and ``uniform(a)`` are factories returning an initialiser; by name,
``"normal"`` and ``"uniform"`` are ``normal(0.05)`` and ``uniform(0.05)`` (Keras's defaults).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from backprop.errors import ConfigurationError
from backprop.validation import number

Initialiser = Callable[[np.random.Generator, tuple, int, int], np.ndarray]


def zeros(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """All zeros (the default for biases)."""
    return np.zeros(shape)


def ones(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """All ones (e.g. the scale of a normalisation layer)."""
    return np.ones(shape)


def constant(value: float) -> Initialiser:
    """An initialiser filling every element with ``value``."""
    value = number(value, "constant's value")

    def fill(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
        return np.full(shape, value)

    return fill


def normal(std: float = 0.05, mean: float = 0.0) -> Initialiser:
    """An initialiser drawing from N(mean, std^2), whatever the fans."""
    std, mean = number(std, "normal's std", low=0.0), number(mean, "normal's mean")

    def draw(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
        return rng.normal(mean, std, size=shape)

    return draw


def uniform(a: float = 0.05) -> Initialiser:
    """An initialiser drawing from U(-a, a), whatever the fans."""
    a = number(a, "uniform's bound a", low=0.0)

    def draw(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
        return rng.uniform(-a, a, size=shape)

    return draw


def glorot_uniform(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010); Keras's default for Dense."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def glorot_normal(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """N(0, s^2) with s = sqrt(2 / (fan_in + fan_out)) (PyTorch's ``xavier_normal_``)."""
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)


def he_uniform(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / fan_in) (He et al., 2015; PyTorch's ``kaiming_uniform_`` for ReLU)."""
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape)


def he_normal(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """N(0, s^2) with s = sqrt(2 / fan_in) (PyTorch's ``kaiming_normal_`` for ReLU, fan_in mode)."""
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)


def lecun_uniform(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(3 / fan_in) (variance 1 / fan_in; LeCun et al., 1998)."""
    limit = math.sqrt(3.0 / fan_in)
    return rng.uniform(-limit, limit, size=shape)


def lecun_normal(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """N(0, s^2) with s = sqrt(1 / fan_in) (variance 1 / fan_in; the initialiser SELU networks need)."""
    return rng.normal(0.0, math.sqrt(1.0 / fan_in), size=shape)


INITIALISERS: dict[str, Initialiser] = {
    "zeros": zeros,
    "ones": ones,
    "normal": normal(),
    "uniform": uniform(),
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
}


def get(init: "str | Initialiser") -> Initialiser:
    """Resolve an initialiser given by name or as a callable."""
    if callable(init):
        return init
    if not isinstance(init, str) or init not in INITIALISERS:
        raise ConfigurationError(f"unknown initialiser {init!r}; known: {', '.join(sorted(INITIALISERS))}, "
                                 "or pass a callable")
    return INITIALISERS[init]
