"""Backends: parse a device specifier and hand back the `Backend` that runs the core there.

``get_backend("cpu")``, ``get_backend("cuda:1")``, ``get_backend("array_api_strict:device1")``,
``get_backend("torch:cpu")``. A specifier is ``"prefix"`` or ``"prefix:argument"``; ``register_backend`` adds a
prefix. Backends are cached per canonical specifier, so two models on ``"cuda"`` share one value, and they pickle
and deep-copy by specifier (``_by_specifier``).
"""

from __future__ import annotations

import copyreg
from typing import Callable

from .base import Backend, to_numpy
from backprop.errors import BackendUnavailableError, DeviceError

Factory = Callable[[str, "str | None"], Backend]

_FACTORIES: dict[str, Factory] = {}
_CACHE: dict[str, Backend] = {}


def register_backend(prefix: str, factory: Factory) -> None:
    """Make ``device="prefix"`` and ``device="prefix:argument"`` build a backend with ``factory(spec, argument)``."""
    _FACTORIES[prefix] = factory


def _lazy(module: str) -> Factory:
    def factory(spec: str, argument: str | None) -> Backend:
        import importlib

        return importlib.import_module(f"{__name__}.{module}").make(spec, argument)

    return factory


register_backend("cpu", _lazy("numpy_backend"))
register_backend("numpy", _lazy("numpy_backend"))
register_backend("cuda", _lazy("cupy_backend"))
register_backend("cupy", _lazy("cupy_backend"))
register_backend("array_api_strict", _lazy("strict_backend"))
register_backend("torch", _lazy("torch_backend"))


def get_backend(spec: "str | Backend") -> Backend:
    """The backend for a specifier such as ``"cpu"``, ``"cuda:0"`` or ``"array_api_strict:device1"``."""
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(spec).__name__}")
    if spec in _CACHE:
        return _CACHE[spec]
    prefix, _, argument = spec.strip().partition(":")
    if prefix not in _FACTORIES:
        raise DeviceError(
            f"unknown device {spec!r}; known: 'cpu', 'numpy', 'cuda', 'cuda:N', 'cupy', 'array_api_strict', "
            "'array_api_strict:device1', 'array_api_strict:no_float64', 'torch:cpu', 'torch:cuda'"
            + (f", and registered prefixes {sorted(_FACTORIES)}" if set(_FACTORIES) - _BUILTIN else "")
        )
    backend = _FACTORIES[prefix](spec, argument or None)
    _CACHE[spec] = _CACHE[backend.spec] = backend
    copyreg.pickle(type(backend), _by_specifier)
    return backend


def _by_specifier(backend: Backend) -> tuple:
    """How a backend pickles and deep-copies: by its specifier. Unpickling calls ``get_backend(spec)``, which gives
    this process's backend for the same library and device (a CuPy backend the same GPU index), or raises
    `DeviceError` where there is none. Registered with ``copyreg`` for each backend class ``get_backend`` makes."""
    return (get_backend, (backend.spec,))


_BUILTIN = set(_FACTORIES)


def available() -> list[str]:
    """Specifiers of the backends that work on this machine (CuPy only with a GPU, torch only when installed)."""
    candidates = ["cpu", "array_api_strict", "array_api_strict:device1", "torch:cpu", "cuda", "torch:cuda"]
    found = []
    for spec in candidates:
        try:
            found.append(get_backend(spec).spec)
        except (BackendUnavailableError, DeviceError):
            continue
    return found


__all__ = ["Backend", "available", "get_backend", "register_backend", "to_numpy"]
