"""PyTorch tensors through array-api-compat: ``"torch"`` / ``"torch:cpu"``, ``"torch:cuda"``, ``"torch:cuda:N"``.

Only PyTorch's arrays and BLAS are used; none of its autograd (every tensor is created without ``requires_grad``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend
from backprop.errors import BackendUnavailableError, DeviceError


class _TorchCudaBackend(Backend):
    """torch on a CUDA device: host data cross over through pinned memory, without waiting for the copy."""

    def to_device(self, host: np.ndarray, dtype: Any = None) -> Any:
        """Copy ``host`` into pinned (page-locked) memory, then to the GPU with ``non_blocking=True``.

        A copy from ordinary pageable memory synchronises the stream (``copy_kernel_cuda`` in PyTorch's
        ``aten/src/ATen/native/cuda/Copy.cu`` calls ``memcpy_and_sync`` unless ``non_blocking``), and
        array-api-compat's ``asarray`` makes such a copy. With ``non_blocking`` the copy is queued on the stream and
        ``CachingHostAllocator_recordEvent`` keeps the pinned block from being reused until it has completed, so
        the host array may be freed at once. The dtype cast, if any, runs on the GPU."""
        import torch

        host = np.asarray(host)
        pinned = torch.empty(host.shape, dtype=torch.from_numpy(np.empty(0, host.dtype)).dtype, pin_memory=True)
        pinned.numpy()[...] = host
        return pinned.to(device=self.device, dtype=dtype, non_blocking=True)


def make(spec: str, argument: str | None) -> Backend:
    try:
        import torch
        import array_api_compat.torch as xp
    except ImportError as error:
        raise BackendUnavailableError(
            "device='torch:...' needs PyTorch: pip install torch (CPU wheels: --index-url https://download.pytorch.org/whl/cpu)"
        ) from error
    name = argument or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"PyTorch does not know the device {name!r} in {spec!r}; use 'torch:cpu' or 'torch:cuda'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"{spec!r}: this PyTorch build sees no CUDA GPU. Use 'torch:cpu'.")
        device = torch.device("cuda", device.index if device.index is not None else 0)
        if device.index >= torch.cuda.device_count():
            raise DeviceError(f"{spec!r}: this machine has {torch.cuda.device_count()} GPU(s)")
        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
        described = f"{torch.cuda.get_device_name(device)} (PyTorch {torch.__version__})"
    else:
        sync = None
        described = f"CPU (PyTorch {torch.__version__})"
    kind = _TorchCudaBackend if device.type == "cuda" else Backend
    return kind(
        spec=f"torch:{device}",
        xp=xp,
        device=device,
        is_native=lambda a: isinstance(a, torch.Tensor) and a.device == device,
        device_name=described,
        sync=sync,
        library="torch",
        matmul_out=lambda left, right, out: torch.matmul(left, right, out=out),
        subtract_scaled_in_place=lambda target, scale, update: target.sub_(update, alpha=scale),
    )
