"""NumPy on the host CPU: specifiers ``"cpu"`` and ``"numpy"``."""

from __future__ import annotations

import numpy as np
import array_api_compat.numpy as xp

from .base import Backend


_CHUNK = 1 << 18  # elements per pass of subtract_scaled: a 1-2 MB scratch, below the size that page-faults


def _matmul_out(left: np.ndarray, right: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.matmul(left, right, out=out)


def _subtract_scaled_in_place(target: np.ndarray, scale: float, update: np.ndarray) -> None:
    """target -= scale * update, chunk by chunk through a small scratch instead of a full-size temporary."""
    if target.size <= _CHUNK or target.shape != update.shape or not (target.flags.c_contiguous and update.flags.c_contiguous):
        target -= scale * update
        return
    flat_target, flat_update = target.reshape(-1), update.reshape(-1)
    scratch = np.empty(_CHUNK, dtype=np.result_type(update, scale))
    for start in range(0, target.size, _CHUNK):
        stop = min(start + _CHUNK, target.size)
        scaled = np.multiply(flat_update[start:stop], scale, out=scratch[: stop - start])
        np.subtract(flat_target[start:stop], scaled, out=flat_target[start:stop])


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
        matmul_out=_matmul_out,
        subtract_scaled_in_place=_subtract_scaled_in_place,
    )
