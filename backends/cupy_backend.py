"""CuPy on an NVIDIA GPU: specifiers ``"cuda"``, ``"cuda:N"``, ``"cupy"``, ``"cupy:N"``.

CuPy runs every kernel on its *current* device, so the backend's context makes device N current; the model
enters it around forward, backward and update. CuPy's creation functions ignore ``device=``; the core creates
arrays with ``zeros_like`` and ``asarray`` inside that context.
"""

from __future__ import annotations

from .base import Backend
from backprop.errors import BackendUnavailableError, DeviceError


def _import_cupy():
    try:
        import cupy
        import array_api_compat.cupy as xp
    except ImportError as error:
        raise BackendUnavailableError(
            "device='cuda' needs CuPy, which is not installed. Install the extra that matches your CUDA toolkit: "
            "pip install 'backprop-arrays[cuda12]' (CUDA 12) or 'backprop-arrays[cuda13]' (CUDA 13)"
        ) from error
    return cupy, xp


def make(spec: str, argument: str | None) -> Backend:
    cupy, xp = _import_cupy()
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # noqa: BLE001 -- CuPy raises CUDARuntimeError or driver errors here
        raise BackendUnavailableError(
            f"CuPy is installed but no CUDA GPU is usable ({error}). Use device='cpu', or check the NVIDIA driver"
        ) from error
    if count == 0:
        raise BackendUnavailableError("CuPy is installed but this machine has no CUDA GPU. Use device='cpu'.")
    try:
        index = int(argument) if argument not in (None, "") else 0
    except ValueError:
        raise DeviceError(f"bad GPU index in {spec!r}: write 'cuda' or 'cuda:N' with N a number") from None
    if not 0 <= index < count:
        raise DeviceError(
            f"{spec!r} asks for GPU {index}, but this machine has {count} GPU(s): use 'cuda:0' .. 'cuda:{count - 1}'"
        )
    device = cupy.cuda.Device(index)
    props = cupy.cuda.runtime.getDeviceProperties(index)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return Backend(
        spec=f"cuda:{index}",
        xp=xp,
        device=device,
        is_native=lambda a: isinstance(a, cupy.ndarray) and a.device.id == index,
        device_name=f"{name} (cuda:{index}, CuPy {cupy.__version__})",
        context=lambda: cupy.cuda.Device(index),
        sync=lambda: cupy.cuda.Device(index).synchronize(),
        library="cupy",
    )
