"""Argument checks shared by every public entry point.

Each helper returns the value normalised (a Python ``int``, ``float``, ``bool`` or ``str``) or raises
`ConfigurationError` naming the argument, what it got and what it takes; a value of the wrong kind (a string
where a number belongs, a model where its parameters belong) raises `ArgumentTypeError`, which is also a
``TypeError``. The checks run before anything changes, so a refused call leaves every object as it was.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import numpy as np

from backprop.errors import ArgumentTypeError, ConfigurationError, DTypeError

FLOAT_DTYPES = ("float32", "float64")


def is_real(value: Any) -> bool:
    """A finite real number (NumPy scalars included; booleans are not numbers here)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def number(value: Any, name: str, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, meaning: str = "") -> float:
    """``value`` as a float: finite, and within [low, high] (bounds optional; ``*_open`` excludes them)."""
    inside = is_real(value) and (low is None or (value > low if low_open else value >= low)) \
        and (high is None or (value < high if high_open else value <= high))
    if not inside:
        described = f" ({meaning})" if meaning else ""
        raise ConfigurationError(
            f"{name} must be {_interval(low, high, low_open, high_open)}{described}, got {value!r}")
    return float(value)


def integer(value: Any, name: str, low: int = 1, meaning: str = "", high: int | None = None) -> int:
    """``value`` as an int in [low, high] (``high=None``: no upper bound; NumPy integers accepted, booleans and
    whole floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low \
            or (high is not None and int(value) > high):
        kind = f"an integer in [{low}, {high}]" if high is not None \
            else "a positive integer" if low == 1 else f"an integer >= {low}"
        described = f" ({meaning})" if meaning else ""
        raise ConfigurationError(f"{name} must be {kind}{described}, got {value!r}")
    return int(value)


def seed(value: Any, name: str = "seed") -> int | None:
    """A random seed: ``None`` (fresh entropy) or an integer >= 0, as ``numpy.random.default_rng`` takes."""
    if value is None:
        return None
    return integer(value, name, low=0, meaning="or None for fresh entropy")


def flag(value: Any, name: str) -> bool:
    """``True`` or ``False`` (NumPy booleans accepted), nothing that merely converts to one."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def choice(value: Any, name: str, options: Iterable[Any]) -> Any:
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if not any(value == option and type(value) is type(option) for option in options):
        raise ConfigurationError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def instance(value: Any, kinds: "type | tuple[type, ...]", name: str, example: str) -> Any:
    """``value`` if it is an instance of ``kinds``, else `ArgumentTypeError` showing an ``example`` of the right
    kind (and, for a model given where its parameters belong, saying so)."""
    if not isinstance(value, kinds):
        raise ArgumentTypeError(f"{name} must be {example}, got {describe(value)}")
    return value


def optional_list(value: Any, name: str, example: str) -> list:
    """``None`` as ``[]``, one item as ``[item]`` and any other iterable (not a string or a mapping) as a list."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise ArgumentTypeError(f"{name} must be a list of {example} (or None), got {describe(value)}")
    return list(value)


def float_dtype_name(value: Any) -> str:
    """``"float32"`` or ``"float64"`` from that name, a NumPy dtype or a NumPy scalar type (``np.float32``)."""
    name = value
    if value is not None and not isinstance(value, str):  # numpy.dtype(None) would mean float64
        try:
            name = np.dtype(value).name
        except TypeError:
            name = None
    if name not in FLOAT_DTYPES:
        raise DTypeError(f"dtype must be 'float32' or 'float64' (or numpy.float32, numpy.float64), got {value!r}")
    return name


def describe(value: Any) -> str:
    """A short description of a value for a message: its repr when short, else its type."""
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"
