"""The registry of backends: which specifier prefix builds which backend, and the cache of built ones.

Each library's module (``numpy_backend``, ``strict_backend``, ``torch_backend``, ``cupy_backend``,
``jax_backend``) declares the prefixes it serves (``PREFIXES``), the specifiers it offers (``EXAMPLES``, and
``GPU_EXAMPLES`` for those that need a GPU; ``FORMS`` for patterns such as ``"cuda:N"``) and a factory
``make(spec, argument)``. Importing a module imports no array library (each ``make`` does that), so the
registry reads every declaration at once; the unknown-device message, `available` and the tests' backend list
are derived from it.

A user adds a backend with `register_backend`::

    import array_api_compat.numpy as xp
    from backprop.backends import Backend, register_backend

    class LoggingBackend(Backend):                    # the base class is the array-API reference
        def to_device(self, host, dtype=None):
            print("to the device:", host.shape)
            return super().to_device(host, dtype)

    register_backend("logged", lambda spec, argument: LoggingBackend("logged", xp, "cpu"))
    model = bp.Sequential(bp.Dense(2, 1), device="logged")
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable

import numpy as np

from .base import Backend, host_copy
from backprop.errors import ArgumentTypeError, BackendUnavailableError, DeviceError

Factory = Callable[[str, "str | None"], Backend]

_MODULES = ("numpy_backend", "strict_backend", "torch_backend", "cupy_backend", "jax_backend")
_FACTORIES: dict[str, Factory] = {}
_EXAMPLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # prefix -> (CPU examples, GPU examples)
_FORMS: list[str] = []  # further forms the unknown-device message names (each module's FORMS, e.g. "cuda:N")
_CLASSES: list[type[Backend]] = []
_CACHE: dict[str, Backend] = {}


def register_backend(prefix: str, factory: Factory, examples: Iterable[str] = (), gpu_examples: Iterable[str] = (),
                     ) -> None:
    """Make ``device="prefix"`` and ``device="prefix:argument"`` build a backend with ``factory(spec, argument)``.

    ``examples`` (and ``gpu_examples``, which need a GPU) are specifiers that `available` tries and that the
    unknown-device message lists. The classes of the built-in modules, and a factory's backend class once it
    has built one, are those `to_numpy` asks (through ``Backend.claims``)."""
    if not isinstance(prefix, str) or not prefix or ":" in prefix:
        raise DeviceError(f"a backend prefix is a non-empty string without ':', got {prefix!r}")
    if not callable(factory):
        raise ArgumentTypeError(f"register_backend({prefix!r}, factory): factory must be callable(spec, argument)")
    _FACTORIES[prefix] = factory
    _EXAMPLES[prefix] = (tuple(examples), tuple(gpu_examples))
    for spec in [spec for spec in _CACHE if spec == prefix or spec.startswith(prefix + ":")]:
        del _CACHE[spec]


def _register_module(name: str) -> None:
    module = importlib.import_module(f"{__package__}.{name}")
    _CLASSES.extend(kind for kind in vars(module).values() if isinstance(kind, type) and issubclass(kind, Backend)
                    and kind.__module__ == module.__name__)
    for prefix in module.PREFIXES:
        examples = [spec for spec in module.EXAMPLES if spec.partition(":")[0] == prefix]
        gpu = [spec for spec in module.GPU_EXAMPLES if spec.partition(":")[0] == prefix]
        register_backend(prefix, module.make, examples, gpu)
    _FORMS.extend(getattr(module, "FORMS", ()))


for _name in _MODULES:
    _register_module(_name)


def known_specifiers(gpu: bool | None = None) -> list[str]:
    """The example specifiers of every registered prefix: those needing no GPU (``gpu=False``), those needing
    one (``gpu=True``), or all (``None``)."""
    found: list[str] = []
    for cpu_examples, gpu_examples in _EXAMPLES.values():
        if gpu is not True:
            found.extend(cpu_examples)
        if gpu is not False:
            found.extend(gpu_examples)
    return found


def get_backend(spec: "str | Backend") -> Backend:
    """The backend for a specifier such as ``"cpu"``, ``"cuda:0"`` or ``"array_api_strict:device1"``."""
    if isinstance(spec, Backend):
        return spec
    if not isinstance(spec, str):
        raise ArgumentTypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(spec).__name__}")
    if spec in _CACHE:
        return _CACHE[spec]
    prefix, _, argument = spec.strip().partition(":")
    if prefix not in _FACTORIES:
        listed = ", ".join(repr(s) for s in [*known_specifiers(), *_FORMS])
        raise DeviceError(f"unknown device {spec!r}; known devices: {listed}")
    backend = _FACTORIES[prefix](spec, argument or None)
    if not isinstance(backend, Backend):
        raise DeviceError(f"the factory registered for {prefix!r} returned {type(backend).__name__}, not a Backend")
    _CACHE[spec] = _CACHE[backend.spec] = backend
    if type(backend) not in _CLASSES:
        _CLASSES.append(type(backend))
    return backend


def available() -> list[str]:
    """Specifiers of the backends that work on this machine (CuPy only with a GPU, torch only when installed)."""
    found = []
    for spec in known_specifiers():
        try:
            found.append(get_backend(spec).spec)
        except (BackendUnavailableError, DeviceError):
            continue
    return found


def to_numpy(array: object) -> np.ndarray:
    """Host NumPy copy (or the array itself, for NumPy input) of any array-API array, list or scalar: read by
    the backend class that claims it, else through DLPack."""
    if isinstance(array, np.ndarray):
        return array
    for kind in _CLASSES:
        if kind.claims(array):
            return kind.host(array)
    return host_copy(array)
