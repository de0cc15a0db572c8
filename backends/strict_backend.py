"""array-api-strict: the standard and nothing more, with fake devices that prove device discipline.

Specifiers: ``"array_api_strict"`` (its ``CPU_DEVICE``), ``"array_api_strict:device1"``, ``"array_api_strict:device2"``,
``"array_api_strict:no_float64"`` (a device without float64, as on some accelerators).
"""

from __future__ import annotations

from .base import Backend
from backprop.errors import BackendUnavailableError, DeviceError


def make(spec: str, argument: str | None) -> Backend:
    try:
        import array_api_strict as xp
    except ImportError as error:
        raise BackendUnavailableError(
            "device='array_api_strict' needs array-api-strict: pip install 'backprop-arrays[test]'"
        ) from error
    name = argument or "CPU_DEVICE"
    known = xp.__array_namespace_info__().devices()
    names = [repr(d).split("'")[1] for d in known]
    if name not in names:
        raise DeviceError(f"array_api_strict has no device {name!r}; its devices are: {', '.join(names)}")
    device = xp.Device(name)
    array_type = type(xp.asarray(0.0))
    canonical = "array_api_strict" if name == "CPU_DEVICE" else f"array_api_strict:{name}"
    return Backend(
        spec=canonical,
        xp=xp,
        device=device,
        is_native=lambda a: type(a) is array_type and a.device == device,
        device_name=f"array_api_strict {name}",
        library="array_api_strict",
    )
