"""NumPy on the host CPU: specifiers ``"cpu"`` and ``"numpy"``."""

from __future__ import annotations

import numpy as np
import array_api_compat.numpy as xp

from .base import Backend


def make(spec: str, argument: str | None) -> Backend:
    if argument not in (None, "", "cpu", "0"):
        from backprop.errors import DeviceError

        raise DeviceError(f"NumPy has only the CPU; got {spec!r}. Use device='cpu'.")
    return Backend(
        spec="cpu",
        xp=xp,
        device="cpu",
        is_native=lambda a: type(a) is np.ndarray,
        device_name="host CPU (NumPy)",
        library="numpy",
    )
