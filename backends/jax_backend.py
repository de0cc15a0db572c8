"""JAX, eagerly (no ``jit``): specifiers ``"jax"`` / ``"jax:cpu"`` (the host CPU) and ``"jax:N"`` (the N-th
accelerator, GPU or TPU, that JAX sees).

The namespace is ``jax.numpy`` itself, which implements the array API standard (array-api-compat hands it back
for JAX arrays). JAX's arrays are immutable: the core never writes into an array (every reference form in
`Backend` returns a new one), so the base class serves as it is; this class overrides how arrays cross to the
host, which arrays it owns, the device context, waiting for queued work, and ``copy`` (which need not copy).

**float64**: JAX computes in 32 bits unless its 64-bit mode is on. Making a JAX backend turns it on for the
process (``jax.config.update("jax_enable_x64", True)``), so ``dtype="float64"`` models work as on every other
backend; float32 models stay float32. The switch is process-wide: JAX code of your own then also defaults to
64-bit dtypes where it does not name one.
"""

from __future__ import annotations

from typing import Any, ContextManager

import array_api_compat
import numpy as np

from .base import Backend
from backprop.errors import BackendUnavailableError, DeviceError

PREFIXES = ("jax",)
EXAMPLES = ("jax:cpu",)
GPU_EXAMPLES = ("jax:0",)
FORMS = ("jax:N",)


class JaxBackend(Backend):
    """``jax.numpy`` on one JAX device. Arrays are immutable: ``copy`` hands back the array itself (nothing can
    change it, so sharing it is as good as a copy), and every update returns a new array (the base class's
    reference forms)."""

    library = "jax"

    def __init__(self, spec: str, xp: Any, device: Any, device_name: str = "") -> None:
        super().__init__(spec, xp, device, device_name)
        import jax

        self._jax = jax

    def owns(self, array: Any) -> bool:
        return isinstance(array, self._jax.Array) and array.devices() == {self.device}

    @classmethod
    def claims(cls, array: Any) -> bool:
        return array_api_compat.is_jax_array(array)

    @classmethod
    def host(cls, array: Any) -> np.ndarray:
        """A writable host copy (``numpy.asarray`` of a CPU array would be a read-only view of JAX's buffer)."""
        return np.array(array, copy=True)

    def activate(self) -> ContextManager:
        """``jax.default_device(device)``: an array made without ``device=`` lands on this backend's device."""
        return self._jax.default_device(self.device)

    def synchronize(self) -> None:
        """JAX dispatches asynchronously and has no device-wide barrier: wait until every live array on this
        device's platform is computed (``jax.block_until_ready(jax.live_arrays(platform))``)."""
        self._jax.block_until_ready(self._jax.live_arrays(self.device.platform))

    def copy(self, array: Any, into: Any = None) -> Any:
        return array


def make(spec: str, argument: str | None) -> Backend:
    try:
        import jax
        import jax.numpy as xp
    except ImportError as error:
        raise BackendUnavailableError(
            "device='jax:...' needs JAX: pip install 'backprop-arrays[jax]' (JAX's CPU build)") from error
    jax.config.update("jax_enable_x64", True)  # float64 models (see the module's docstring)
    version = f"JAX {jax.__version__}"
    if argument in (None, "", "cpu"):
        return JaxBackend("jax:cpu", xp, jax.devices("cpu")[0], f"CPU ({version})")
    if not argument.isdigit():
        raise DeviceError(f"bad JAX device in {spec!r}: write 'jax:cpu', or 'jax:N' with N an accelerator's index")
    index = int(argument)
    accelerators = [device for device in jax.devices() if device.platform != "cpu"]
    if not accelerators:
        raise BackendUnavailableError(
            f"{spec!r}: this JAX installation sees no GPU or TPU (platforms: {jax.default_backend()}). Use 'jax:cpu', "
            "or install JAX's build for your accelerator (e.g. pip install 'jax[cuda12]')")
    if index >= len(accelerators):
        raise DeviceError(f"{spec!r} asks for accelerator {index}, but JAX sees {len(accelerators)}: "
                          f"use 'jax:0' .. 'jax:{len(accelerators) - 1}'")
    device = accelerators[index]
    return JaxBackend(f"jax:{index}", xp, device, f"{device.device_kind} (jax:{index}, {version})")
