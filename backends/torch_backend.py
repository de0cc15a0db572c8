"""PyTorch tensors through array-api-compat: ``"torch"`` / ``"torch:cpu"``, ``"torch:cuda"``, ``"torch:cuda:N"``.

Only PyTorch's arrays and BLAS are used; none of its autograd (every tensor is created without ``requires_grad``).
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Backend
from backprop.errors import BackendUnavailableError, DeviceError

PREFIXES = ("torch",)
EXAMPLES = ("torch:cpu",)
GPU_EXAMPLES = ("torch:cuda",)
FORMS = ("torch:cuda:N",)


class TorchBackend(Backend):
    """Tensors are mutable and ``torch.matmul`` takes ``out=``: both hot operations write in place."""

    library = "torch"
    writes_matmul_into_out = True

    def __init__(self, spec: str, xp: Any, device: Any, device_name: str = "") -> None:
        super().__init__(spec, xp, device, device_name)
        import torch

        self._torch = torch

    def owns(self, array: Any) -> bool:
        return isinstance(array, self._torch.Tensor) and array.device == self.device

    @classmethod
    def claims(cls, array: Any) -> bool:
        return array_api_compat.is_torch_array(array)

    @classmethod
    def host(cls, array: Any) -> np.ndarray:
        return array.detach().cpu().numpy()

    def matmul(self, left: Any, right: Any, out: Any = None) -> Any:
        return left @ right if out is None else self._torch.matmul(left, right, out=out)

    def subtract_scaled(self, target: Any, scale: float, update: Any) -> Any:
        return target.sub_(update, alpha=scale)


class TorchCudaBackend(TorchBackend):
    """torch on a CUDA device: host data cross over through pinned memory, without waiting for the copy."""

    def to_device(self, host: np.ndarray, dtype: Any = None) -> Any:
        """Copy ``host`` into pinned (page-locked) memory, then to the GPU with ``non_blocking=True``.

        A copy from ordinary pageable memory synchronises the stream (``copy_kernel_cuda`` in PyTorch's
        ``aten/src/ATen/native/cuda/Copy.cu`` calls ``memcpy_and_sync`` unless ``non_blocking``), and
        array-api-compat's ``asarray`` makes such a copy. With ``non_blocking`` the copy is queued on the stream and
        ``CachingHostAllocator_recordEvent`` keeps the pinned block from being reused until it has completed, so
        the host array may be freed at once. The dtype cast, if any, runs on the GPU."""
        torch = self._torch
        host = np.asarray(host)
        pinned = torch.empty(host.shape, dtype=torch.from_numpy(np.empty(0, host.dtype)).dtype, pin_memory=True)
        pinned.numpy()[...] = host
        return pinned.to(device=self.device, dtype=dtype, non_blocking=True)

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.device)


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
        described = f"{torch.cuda.get_device_name(device)} (PyTorch {torch.__version__})"
        return TorchCudaBackend(f"torch:{device}", xp, device, described)
    return TorchBackend(f"torch:{device}", xp, device, f"CPU (PyTorch {torch.__version__})")
