"""PyTorch tensors through array-api-compat: ``"torch"`` / ``"torch:cpu"``, ``"torch:cuda"``, ``"torch:cuda:N"``.

Only PyTorch's arrays and BLAS are used; none of its autograd (every tensor is created without ``requires_grad``).
"""

from __future__ import annotations

from .base import Backend
from backprop.errors import BackendUnavailableError, DeviceError


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
    return Backend(
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
