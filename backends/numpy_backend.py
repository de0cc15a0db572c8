"""NumPy on the host CPU: specifiers ``"cpu"`` and ``"numpy"``."""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as xp
import numpy as np

from .base import Backend
from backprop.errors import DeviceError

PREFIXES = ("cpu", "numpy")
EXAMPLES = ("cpu",)
GPU_EXAMPLES: tuple[str, ...] = ()

_CHUNK = 1 << 18  # elements per pass of subtract_scaled: a 1-2 MB scratch, below the size that page-faults


class NumpyBackend(Backend):
    """NumPy's arrays are mutable and its ``matmul`` and ``sum`` take ``out=``: the hot operations write in place."""

    library = "numpy"
    writes_matmul_into_out = True
    views_share_memory = True  # basic slicing and reshaping a contiguous array return views (NumPy's indexing docs)

    def owns(self, array: Any) -> bool:
        return type(array) is np.ndarray

    @classmethod
    def claims(cls, array: Any) -> bool:
        return isinstance(array, np.ndarray)

    @classmethod
    def host(cls, array: Any) -> np.ndarray:
        return np.asarray(array)

    def copy(self, array: Any, into: Any = None) -> Any:
        if into is None:
            return super().copy(array)
        np.copyto(into, array)
        return into

    def matmul(self, left: Any, right: Any, out: Any = None) -> Any:
        return left @ right if out is None else np.matmul(left, right, out=out)

    # ``numpy.add.reduce`` and ``numpy.maximum.reduce`` are what ``numpy.sum`` and ``numpy.max`` run, without their
    # Python wrappers (about 1 us a call, a tenth of a small network's loss)
    def sum(self, array: Any, axis: int | tuple[int, ...], out: Any = None) -> Any:
        return np.add.reduce(array, axis=axis, out=out)

    def softmax_cross_entropy(self, logits: Any, target: Any, scale: Any) -> tuple[Any, Any]:
        """The reference's operations (`backprop.losses.softmax_cross_entropy`) in the same order, with the
        reductions called directly: the same numbers."""
        shifted = logits - np.maximum.reduce(logits, axis=-1, keepdims=True)
        softmax = np.exp(shifted)
        total = np.add.reduce(softmax, axis=-1, keepdims=True)
        shifted -= np.log(total)
        value = np.add.reduce(target * shifted, axis=None) * -scale
        softmax /= total
        softmax *= np.add.reduce(target, axis=-1, keepdims=True)
        softmax -= target
        softmax *= scale
        return value, softmax

    def subtract_scaled(self, target: Any, scale: float, update: Any) -> Any:
        """target -= scale * update in place, chunk by chunk through a small scratch instead of a full-size
        temporary (the same arithmetic, element by element, as the reference)."""
        contiguous = target.flags.c_contiguous and update.flags.c_contiguous
        if target.size <= _CHUNK or target.shape != update.shape or not contiguous:
            target -= scale * update
            return target
        flat_target, flat_update = target.reshape(-1), update.reshape(-1)
        scratch = np.empty(_CHUNK, dtype=np.result_type(update, scale))
        for start in range(0, target.size, _CHUNK):
            stop = min(start + _CHUNK, target.size)
            scaled = np.multiply(flat_update[start:stop], scale, out=scratch[: stop - start])
            np.subtract(flat_target[start:stop], scaled, out=flat_target[start:stop])
        return target


def make(spec: str, argument: str | None) -> Backend:
    if argument not in (None, "", "cpu", "0"):
        raise DeviceError(f"NumPy has only the CPU; got {spec!r}. Use device='cpu'.")
    return NumpyBackend("cpu", xp, "cpu", "host CPU (NumPy)")
