"""Getting user data onto the model's device: the one place where host data crosses over.

Rules (documented in the README):
* host data (NumPy arrays, lists, tuples, scalars, and whatever ``numpy.asarray`` reads on the host: pandas
  objects, ``__array__`` objects, long double arrays) are copied to the device once, cast to the model's dtype;
  finite values beyond that dtype's range are refused (`CastOverflowError`), not turned into infinities;
* masked arrays with masked values are refused (converting them would drop the mask);
* arrays already on the model's backend and device are used without a copy (cast once if their float dtype
  differs from the model's);
* integer and boolean inputs are converted to the model's float dtype; strings, objects and complex numbers
  are refused (string labels with the advice to encode them as integers);
* an array of another library or another device raises `DeviceError`: we never copy silently in a hot loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from backprop import augment  # noqa: F401  (bp.data.augment: the transforms a BatchLoader takes)
from backprop.errors import CastOverflowError, ConfigurationError, DeviceError, DTypeError, NonFiniteError, ShapeError
from backprop.validation import flag, integer
from backprop.validation import seed as checked_seed

_HOST_TYPES = (np.ndarray, np.generic, list, tuple, int, float, bool)
_NAMESPACES: dict[type, Any] = {}
_CONSTANTS: dict[tuple, Any] = {}


def namespace_of(array: Any) -> Any:
    """The array-API namespace of ``array`` (array-api-compat's), cached per array type for the hot path."""
    kind = type(array)
    namespace = _NAMESPACES.get(kind)
    if namespace is None:
        from array_api_compat import array_namespace

        namespace = _NAMESPACES[kind] = array_namespace(array)
    return namespace


def constant(value: float, like: Any) -> Any:
    """``value`` as a 0-d array with the dtype and on the device of ``like``, made once per library, dtype,
    device and value; call it inside the device's context.

    Give it to ``maximum``/``minimum`` instead of a Python scalar: array-api-compat's torch wrapper turns a
    Python scalar there into a new tensor on the device, a blocking host-to-device copy per call
    (``maximum = _two_arg(torch.maximum, scalar_x1=True, scalar_x2=True)`` and ``_scalar_to_tensor`` in
    ``array_api_compat/torch/_aliases.py``, 1.16). It also replaces ``clip``, whose generic form (used for CuPy)
    writes through boolean masks and so reads the mask's count on the host (``common/_aliases.py``)."""
    device = getattr(like, "device", None)  # NumPy >= 2, CuPy, torch, array-api-strict; None on NumPy 1.26
    key = (type(like), like.dtype, str(device), value)
    array = _CONSTANTS.get(key)
    if array is None:
        array = _CONSTANTS[key] = namespace_of(like).asarray(value, dtype=like.dtype, device=device)
    return array


def host_array(data: Any, what: str) -> np.ndarray:
    """``data`` (NumPy array, list, tuple, number, or anything ``numpy.asarray`` reads on the host: a pandas
    object, an ``__array__`` object) as a host NumPy array. A device array raises `DeviceError` (``numpy.asarray``
    would fail on it with the library's own TypeError, or copy it silently); a masked array with masked values
    raises `DTypeError` (converting it would silently drop the mask)."""
    if not isinstance(data, _HOST_TYPES) and (hasattr(data, "__array_namespace__") or hasattr(data, "__dlpack__")):
        raise DeviceError(f"{what} is {_describe(data)}; give host data here: bp.to_numpy({what}) copies it")
    if isinstance(data, np.ma.MaskedArray) and np.ma.getmaskarray(data).any():
        raise DTypeError(
            f"{what} is a masked array with {int(np.ma.getmaskarray(data).sum())} masked value(s), which would "
            "silently lose their mask: fill them (x.filled(value)) or drop those samples first"
        )
    if not isinstance(data, _HOST_TYPES) and not hasattr(data, "__array__"):
        raise DTypeError(f"{what} must be an array or a (nested) list of numbers, got {type(data).__name__}")
    try:
        return np.asarray(data)
    except ValueError as error:  # ragged nested lists
        raise ShapeError(f"{what} cannot be read as a rectangular array: {error}") from None


def _describe(array: Any) -> str:
    module = type(array).__module__.split(".")[0]
    device = getattr(array, "device", "?")
    return f"{'an' if module[:1] in 'aeiou' else 'a'} {module} array on device {device}"


def to_backend(data: Any, backend: Any, dtype: Any, *, what: str = "input", integral_ok: bool = False) -> Any:
    """``data`` as an array of ``backend`` with dtype ``dtype``.

    With ``integral_ok`` (class-index targets) integer data keep an integer dtype instead of being cast.
    Finite values too large for ``dtype`` (float64 data beyond float32's range) raise `CastOverflowError`
    rather than becoming infinities.
    """
    xp = backend.xp
    data = backend.detached(data)  # an autodiff-tracked tensor would pull the parameters into its graph
    if backend.owns(data) and not isinstance(data, np.ma.MaskedArray):
        if xp.isdtype(data.dtype, "real floating"):
            return data if data.dtype == dtype else _narrowed(backend, data, dtype, what)
        if xp.isdtype(data.dtype, "integral") and integral_ok:
            return data
        if xp.isdtype(data.dtype, ("integral", "bool")):
            return xp.astype(data, dtype)
        if getattr(data.dtype, "kind", None) not in ("U", "S", "O"):  # NumPy strings and objects: host path's advice
            raise DTypeError(f"{what} has dtype {data.dtype}; give real numbers (float, integer or boolean)")
    if not isinstance(data, _HOST_TYPES) and (hasattr(data, "__array_namespace__") or hasattr(data, "__dlpack__")):
        raise DeviceError(
            f"{what} is {_describe(data)}, but the model lives on {backend.spec!r}. Move the data with "
            f"bp.to_numpy({what}) (it is then copied once) or move the model with model.to(...); "
            "no silent copies are made between devices"
        )
    host = host_array(data, what)
    if host.ndim == 0:  # never a batch (and PyTorch cannot cast a 0-d NumPy array while copying it)
        raise ShapeError(f"{what} is a single number (shape ()); give a batch with one row per sample, "
                         "e.g. numpy.asarray([[value]]) for one sample with one feature")
    if host.dtype.kind in "iu" and integral_ok:
        return backend.to_device(host.astype(np.int64, copy=False), None)
    if host.dtype.kind in "USO" and "target" in what:
        raise DTypeError(
            f"{what} have NumPy dtype {host.dtype} (labels such as {host.reshape(-1)[:3].tolist()}); encode labels "
            "as integers 0..k-1, e.g. with sklearn's LabelEncoder: y = LabelEncoder().fit_transform(labels)"
        )
    if host.dtype.kind not in "biuf":
        raise DTypeError(
            f"{what} has NumPy dtype {host.dtype}; give real numbers (float, integer or boolean), "
            "e.g. numpy.asarray(data, dtype=float)"
        )
    if host.dtype.kind == "f":
        host = _castable_floats(host, xp.finfo(dtype), dtype, what)
    return backend.to_device(host, dtype)


def _castable_floats(host: np.ndarray, target: Any, dtype: Any, what: str) -> np.ndarray:
    """Host floats ready to cast to ``dtype`` (whose ``finfo`` is ``target``): `CastOverflowError` for finite
    values beyond its range; long double narrowed to float64 (no array library takes it, and float64 holds
    whatever fits ``dtype``)."""
    _check_range(host, target, dtype, what)
    return host.astype(np.float64) if host.dtype.itemsize > 8 else host


def _check_range(host: np.ndarray, target: Any, dtype: Any, what: str) -> None:
    """`CastOverflowError` if a finite value of ``host`` exceeds the largest value of ``dtype`` (whose ``finfo``
    is ``target``)."""
    if np.finfo(host.dtype).bits <= target.bits or host.size == 0:
        return
    limit = float(target.max)
    largest = np.max(np.abs(host), where=np.isfinite(host), initial=0)
    if largest > limit:
        raise CastOverflowError(
            f"{what} holds finite values up to {float(largest):.4g}, beyond the range of the model's dtype "
            f"{dtype} (largest {limit:.4g}): the cast would overflow to infinity. Scale the data (e.g. standardise "
            "each feature) or use a float64 model (dtype='float64')"
        )


def _narrowed(backend: Any, data: Any, dtype: Any, what: str) -> Any:
    """``data`` cast to another float ``dtype``, checked not to have overflowed (one reduction, one host read)."""
    xp = backend.xp
    target = xp.finfo(dtype)
    if xp.finfo(data.dtype).bits > target.bits and data.size:  # checked before the cast, which would warn
        largest = xp.max(xp.where(xp.isfinite(data), xp.abs(data), xp.zeros_like(data)))
        if float(largest) > float(target.max):
            _check_range(backend.to_numpy(data), target, dtype, what)
    return xp.astype(data, dtype)


def is_source(data: Any) -> bool:
    """Whether ``data`` is a source of batches rather than an array: iterable, and neither a host or device array
    nor a list or tuple (which are data) nor array-like (``__array__``, e.g. a pandas DataFrame), nor a string,
    mapping or set (refused as data with the reason)."""
    return isinstance(data, Iterable) \
        and not isinstance(data, (np.ndarray, list, tuple, str, bytes, Mapping, set, frozenset)) \
        and not any(hasattr(data, name) for name in ("__array_namespace__", "__dlpack__", "__array__"))


def check_finite(array: Any, backend: Any, what: str = "input") -> None:
    """Raise `NonFiniteError` if ``array`` holds NaN or infinity (one reduction, one host read)."""
    xp = backend.xp
    if not xp.isdtype(array.dtype, "real floating"):
        return
    with backend.activate():
        finite = bool(xp.all(xp.isfinite(array)))
    if not finite:
        _refuse_non_finite(backend.to_numpy(array), what)


def checked_on_host(data: Any, dtype: str, what: str) -> tuple[Any, bool]:
    """``(data, checked)``: a host NumPy float array is cast to the model's ``dtype`` (``"float32"``/``"float64"``)
    and checked for NaN/inf on the host, before it is copied, so the check reads nothing back from the device
    (a streamed batch would otherwise cost a wait per batch); anything else comes back unchecked, for
    `check_finite` on the device."""
    if type(data) is not np.ndarray or data.dtype.kind != "f":
        return data, False
    if not np.all(np.isfinite(data)):  # checked before the cast, so an overflowing cast is not taken for NaN/inf
        _refuse_non_finite(data, what)
    return _castable_floats(data, np.finfo(dtype), dtype, what).astype(dtype, copy=False), True


def _refuse_non_finite(host: np.ndarray, what: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(host)))
    first = tuple(int(i) for i in np.argwhere(~np.isfinite(host))[0])
    raise NonFiniteError(
        f"{what} contains {bad} NaN or infinite value(s), the first at index {first}; "
        "clean or impute the data before training"
    )


def check_batch(x: Any, expected: "tuple[int, ...] | None", where: str, what: str = "input") -> None:
    """Raise `ShapeError` unless ``x`` is a non-empty batch ``(N, *expected)``: one more axis than the per-sample
    shape ``expected`` (any shape with a batch axis when ``expected`` is ``None``), with the fix in the message."""
    shape = tuple(x.shape)
    if expected is None:
        if len(shape) < 2:
            raise ShapeError(f"{what} must have a batch axis and a per-sample shape, (samples, ...), got shape "
                             f"{shape}" + (" (for one feature per sample use x.reshape(-1, 1))" if shape else ""))
    elif len(shape) != len(expected) + 1 or shape[1:] != expected:
        rank = f"{len(expected) + 1}-D (samples, {', '.join(map(str, expected))})"
        message = f"{where} expects {what} of shape (n, {', '.join(map(str, expected))}), {rank}, but {what} has " \
                  f"shape {shape}"
        if len(shape) == len(expected) + 1 and len(expected) == 1:
            message += f": {shape[1]} features instead of {expected[0]}"
        elif len(shape) == len(expected) and math.prod(shape) == math.prod(expected):
            one_sample = ", ".join(map(str, expected)) if len(expected) > 1 else "-1"
            message += f"; for one sample use x.reshape(1, {one_sample})"
            if len(expected) == 1:
                message += "; for one feature per sample use x.reshape(-1, 1)"
        elif shape and math.prod(shape[1:]) == math.prod(expected):
            message += f"; use x.reshape(-1, {', '.join(map(str, expected))})"
            if len(expected) == 1:
                message += " or insert bp.Flatten() as the first layer"
        raise ShapeError(message)
    if shape[0] == 0:
        raise ShapeError(f"{what} is an empty batch (shape {shape}); give at least one sample")


# -- streaming: BatchLoader -------------------------------------------------------------------------------------
# `BatchLoader`: host arrays served as a re-iterable source of ``(x_batch, y_batch)`` batches, one epoch per pass.
#
# ``fit`` takes such a source in place of ``(x, y)``, moving one batch at a time to the device (see
# `backprop.training`). The order is drawn exactly as ``fit(x, y, batch_size=, shuffle=, seed=)`` draws it: a
# generator ``numpy.random.default_rng(seed)`` gives one permutation per epoch (none when there is a single batch or
# ``shuffle=False``), cut into contiguous batches of ``batch_size`` (the last one smaller). So with ``transform=None``
# streaming a `BatchLoader` trains on the same batches, in the same order, as the in-memory ``fit``.
#
# ``transform(x_batch, rng) -> x_batch`` (e.g. `backprop.augment.Compose`) rewrites each input batch on the host
# with a generator of its own, spawned from the same seed (``SeedSequence(seed).spawn(1)``), so augmentations are
# reproducible without changing the order of the batches.

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class BatchLoader:
    """``BatchLoader(x, y, batch_size, shuffle=True, seed=None, transform=None)``: iterate it once per epoch.

    ``len(loader)`` is the number of batches per epoch (ceil(n / batch_size)); every ``iter(loader)`` starts the
    next epoch's order. Batches are host NumPy arrays: slices of ``x`` and ``y`` in that order (copies when
    shuffled, views otherwise), inputs passed through ``transform`` when one is given.
    """

    def __init__(self, x: Any, y: Any, batch_size: int, shuffle: bool = True, seed: int | None = None,
                 transform: "Transform | None" = None) -> None:
        self.x, self.y = host_array(x, "x"), host_array(y, "y")
        if self.x.ndim == 0 or self.y.ndim == 0 or self.x.shape[0] != self.y.shape[0]:
            raise ShapeError(f"BatchLoader needs one target per sample: x has shape {self.x.shape}, y has shape "
                             f"{self.y.shape}; both need the samples on their first axis")
        if self.x.shape[0] == 0:
            raise ShapeError("BatchLoader got no samples; give at least one")
        self.batch_size = min(integer(batch_size, "batch_size"), self.x.shape[0])
        self.shuffle = flag(shuffle, "shuffle")
        if transform is not None and not callable(transform):
            raise ConfigurationError("transform must be a callable transform(x_batch, rng) -> x_batch, or None")
        self.transform = transform
        sequence = np.random.SeedSequence(checked_seed(seed))
        self._order_rng = np.random.default_rng(sequence)  # the same stream as default_rng(seed) in fit
        self._transform_rng = np.random.default_rng(sequence.spawn(1)[0])

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        samples = self.x.shape[0]
        order = self._order_rng.permutation(samples) if self.shuffle and len(self) > 1 else None
        for start in range(0, samples, self.batch_size):
            stop = min(start + self.batch_size, samples)
            if order is None:
                x_batch, y_batch = self.x[start:stop], self.y[start:stop]
            else:
                x_batch, y_batch = self.x[order[start:stop]], self.y[order[start:stop]]
            if self.transform is not None:
                x_batch = self.transform(x_batch, self._transform_rng)
            yield x_batch, y_batch

    def __repr__(self) -> str:
        return (f"BatchLoader({self.x.shape[0]} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"transform={self.transform!r})")
