"""array-api-strict: the standard and nothing more, with fake devices that prove device discipline.

Specifiers: ``"array_api_strict"`` (its ``CPU_DEVICE``), ``"array_api_strict:device1"``, ``"array_api_strict:device2"``,
``"array_api_strict:no_float64"`` (a device without float64, as on some accelerators). The backend is the
base class itself: everything it does is the array-API reference.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Backend
from backprop.errors import BackendUnavailableError, DeviceError

PREFIXES = ("array_api_strict",)
EXAMPLES = ("array_api_strict", "array_api_strict:device1")
GPU_EXAMPLES: tuple[str, ...] = ()


class StrictBackend(Backend):
    """The reference, plus how to read array-api-strict's arrays on the host from any of its devices."""

    library = "array_api_strict"

    @classmethod
    def claims(cls, array: Any) -> bool:
        namespace = getattr(array, "__array_namespace__", None)
        return namespace is not None and array_api_compat.is_array_api_strict_namespace(namespace())

    @classmethod
    def host(cls, array: Any) -> np.ndarray:
        import array_api_strict

        cpu = array_api_strict.Device("CPU_DEVICE")
        if array.device != cpu:
            array = array_api_strict.asarray(array, device=cpu, copy=True)  # an explicit move to the host
        return np.asarray(array)


def make(spec: str, argument: str | None) -> Backend:
    try:
        import array_api_strict as xp
    except ImportError as error:
        raise BackendUnavailableError(
            "device='array_api_strict' needs array-api-strict: pip install 'backprop-arrays[test]'"
        ) from error
    name = argument or "CPU_DEVICE"
    known = {repr(d).split("'")[1]: d for d in xp.__array_namespace_info__().devices()}
    if name not in known:
        raise DeviceError(f"array_api_strict has no device {name!r}; its devices are: {', '.join(known)}")
    canonical = "array_api_strict" if name == "CPU_DEVICE" else f"array_api_strict:{name}"
    return StrictBackend(canonical, xp, known[name], f"array_api_strict {name}")
