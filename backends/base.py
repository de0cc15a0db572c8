"""The `Backend` value: one array library on one device, and the only door between host and device.

A backend bundles what the core needs to run the same math anywhere:

* ``xp``: the array-API namespace (from array-api-compat) whose functions the core calls;
* ``device``: the library's native device object, given to ``asarray`` on every transfer;
* ``to_device`` / ``to_numpy``: host-to-device and device-to-host copies;
* ``owns(array)``: whether an array already lives on this backend, so data can be used without a copy;
* ``activate()``: the context the work runs in (CuPy needs its current device set; others need nothing);
* ``synchronize()``: waits for queued device work (for timing);
* ``matmul`` and ``subtract_scaled``: the two hot operations of a training step whose array-API form allocates a
  parameter-sized array; a backend may supply a faster form (``matmul_out``, ``subtract_scaled_in_place``) that
  writes into an existing array. The array-API expression stays the reference, and the tests compare the two.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import numpy as np

from backprop.errors import DeviceError, DTypeError

_FLOAT_DTYPES = ("float32", "float64")
_NO_CONTEXT = contextlib.nullcontext()  # reusable and reentrant: one object for every backend without a context


@dataclass(frozen=True, eq=False)
class Backend:
    """One array library on one device.

    ``spec`` is the canonical specifier (``"cpu"``, ``"cuda:0"``, ``"array_api_strict:device1"``, ...);
    ``is_native`` tells whether an object is an array of this library on this device; ``context`` makes the
    device current (``None`` where the library needs nothing); ``sync`` waits for queued work.
    """

    spec: str
    xp: Any
    device: Any
    is_native: Callable[[Any], bool]
    device_name: str = ""
    context: Callable[[], ContextManager] | None = None
    sync: Callable[[], None] | None = None
    library: str = ""
    matmul_out: Callable[[Any, Any, Any], Any] | None = None
    subtract_scaled_in_place: Callable[[Any, float, Any], None] | None = None
    _dtypes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        info = self.xp.__array_namespace_info__()
        supported = info.dtypes(device=self.device, kind="real floating")
        for name in _FLOAT_DTYPES:
            if name in supported:
                self._dtypes[name] = supported[name]

    def __repr__(self) -> str:
        return f"Backend({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    # -- dtypes ---------------------------------------------------------------------------------------------
    def dtype(self, name: str) -> Any:
        """The namespace's dtype object for ``"float32"`` or ``"float64"``; raises if this device lacks it."""
        if name not in _FLOAT_DTYPES:
            raise DTypeError(f"dtype must be 'float32' or 'float64', got {name!r}")
        if name not in self._dtypes:
            raise DeviceError(
                f"device {self.spec!r} does not support {name}; use dtype='float32' or a device with {name}"
            )
        return self._dtypes[name]

    def supports(self, dtype_name: str) -> bool:
        return dtype_name in self._dtypes

    # -- transfers ------------------------------------------------------------------------------------------
    def to_device(self, host: np.ndarray, dtype: Any = None) -> Any:
        """Copy a host NumPy array to this device (optionally casting to a namespace dtype)."""
        with self.activate():
            return self.xp.asarray(host, dtype=dtype, device=self.device, copy=True)

    def to_numpy(self, array: Any) -> np.ndarray:
        """Copy an array of this backend to a host NumPy array."""
        return to_numpy(array)

    def owns(self, array: Any) -> bool:
        return self.is_native(array)

    def activate(self) -> ContextManager:
        """Context in which kernels for this device must run."""
        return self.context() if self.context is not None else _NO_CONTEXT

    # -- hot operations with optional fast paths ------------------------------------------------------------
    def matmul(self, left: Any, right: Any, out: Any = None) -> Any:
        """left @ right, written into ``out`` (an array of the result's shape and dtype that nothing else
        holds) where this backend can; otherwise a new array. Returns the result."""
        if out is not None and self.matmul_out is not None:
            return self.matmul_out(left, right, out)
        return left @ right

    def subtract_scaled(self, target: Any, scale: float, update: Any) -> Any:
        """target - scale * update, written into ``target`` on backends whose arrays are mutable; returns it.

        The reference ``target -= scale * update`` allocates a temporary the size of ``update``; a backend's
        ``subtract_scaled_in_place`` does the same arithmetic without it."""
        if self.subtract_scaled_in_place is not None:
            self.subtract_scaled_in_place(target, scale, update)
            return target
        target -= scale * update
        return target

    @property
    def writes_matmul_into_out(self) -> bool:
        """Whether ``matmul(left, right, out=...)`` writes into ``out`` (else it returns a new array)."""
        return self.matmul_out is not None

    def synchronize(self) -> None:
        if self.sync is not None:
            self.sync()


def to_numpy(array: Any) -> np.ndarray:
    """Host NumPy copy (or view, for NumPy input) of any array-API array, list or scalar."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "__cuda_array_interface__") and hasattr(array, "get"):  # CuPy
        return array.get()
    module = type(array).__module__
    if module.startswith("torch"):
        return array.detach().cpu().numpy()
    if module.startswith("array_api_strict"):
        import array_api_strict

        cpu = array_api_strict.Device("CPU_DEVICE")
        if array.device != cpu:
            array = array_api_strict.asarray(array, device=cpu, copy=True)  # explicit move to the host
        return np.asarray(array)
    if hasattr(array, "__dlpack__") and not isinstance(array, (list, tuple)):
        return _from_dlpack(array)
    return np.asarray(array)


def _from_dlpack(array: Any) -> np.ndarray:
    """A host copy of an array that offers DLPack (e.g. dpnp on an Intel GPU, or any library without a rule above).

    DLPack 1.0 lets the consumer ask the producer for a copy on the CPU (``dl_device=(kDLCPU, 0)``, ``copy=True``;
    NumPy >= 2.1 passes them for ``numpy.from_dlpack(x, device="cpu", copy=True)``), which is what a device array
    needs. A producer that predates those arguments (a TypeError) is read as it is, which works for host memory;
    one that offers no usable export falls back to the buffer protocol."""
    try:
        return np.from_dlpack(array, device="cpu", copy=True)
    except TypeError:  # NumPy < 2.1, or a producer without dl_device/copy
        pass
    except BufferError:  # the producer cannot export to the host
        return np.asarray(array)
    try:
        return np.from_dlpack(array)
    except (BufferError, TypeError, RuntimeError) as error:
        host = np.asarray(array)
        if host.dtype == object:  # no export worked: a 0-d box around the object, not its numbers
            raise DeviceError(
                f"cannot copy this {type(array).__name__} to the host: its DLPack export refused ({error}) and it "
                f"offers no buffer. NumPy >= 2.1 asks DLPack producers for a host copy (this is NumPy "
                f"{np.__version__}); or convert it with its own library first") from None
        return host
