"""Checkpoints: one file, nothing executed on load, saved on one device and loaded on any other.

``save(model, path, optimizer=None, extra=None)`` writes; ``load(path, device)`` rebuilds the model;
``load_checkpoint(path, device)`` rebuilds the model *and* its optimiser (to resume training);
``load_into(model, path, optimizer=None)`` fills an existing model. ``ModelCheckpoint`` saves during ``fit``.

File layout (every integer little-endian)::

    offset 0   8 bytes   magic  b"\\x89BPCKPT\\n"
    offset 8   uint32    format version (FORMAT_VERSION)
    offset 12  uint64    length J of the JSON section
    offset 20  uint32    CRC-32 of the JSON section
    offset 24  J bytes   JSON (UTF-8): format version, architecture, per-sample input shape, dtype, seed,
                         the layers' host random states (optional), optimiser type and hyper-parameters,
                         user metadata, and the tensor table:
                         name, role, dtype (explicit byte order, e.g. "<f4"), shape, offset, length, CRC-32
    24 + J     payload   raw tensor bytes, back to back, at the offsets the table gives

Format 2 (this version writes it) stores the architecture as a tree of nodes, ``document["model"]["architecture"]
= {"type": "Sequential", "config": {"layers": [{"type": "Dense", "config": {...}}, {"type": "Residual", "config":
{"inner": {...}}}, ...]}}``, plus ``"input_shape"``, the per-sample shape the model was built for. Every parameter's
shape follows from the nodes and the input shape (building the layers computes it), so a reader can check the
tensor table against the architecture. Format 1 (backprop 0.1.0) stored a flat list, ``document["model"]["config"]
= {"layers": [...], "dtype": ...}``, and no input shape (its first layer declared it); both are read.

Tensors are host copies: parameters (``"0.weight"``, ``"3.inner.0.weight"``: the dotted names of
``model.named_parameters()``), buffers (``model.named_buffers()``) and, when an optimiser is saved, its
per-parameter slots, which live in ``parameter.state`` (``"0.weight/state/momentum"``). Layer types are resolved
by name through ``backprop.layers.LAYERS`` (``bp.register_layer`` adds yours) and optimisers through
``backprop.optim.OPTIMIZERS`` (``bp.register_optimizer`` adds yours); no pickle, no ``eval``: a file can only name
classes that are already registered, and ``save`` refuses a model or optimiser whose class is not.

Random state: ``document["model"]["random_states"]`` maps a layer's dotted path (``"3"``, ``"3.inner.1"``) to its
``layer.random_state()`` (`Dropout`'s NumPy bit-generator state, whose 128-bit integers JSON keeps exact), for the
layers that draw random numbers, so a run resumed from the file draws the same dropout masks as one never
interrupted. The field is optional: a file without it (written before it existed) loads with the layers' generators
as the model's seed makes them. Every failure to read raises
`CheckpointError` naming the problem (truncation, a flipped byte, a wrong magic or version, an unknown layer, a
checkpoint that does not fit the model).

Writes are atomic: the bytes go to a temporary file in the target's directory, which is flushed, fsynced and
renamed over the target (then the directory is fsynced), so a crash mid-save leaves the previous file intact.
"""

from __future__ import annotations

import json
import math
import os
import contextlib
import copy
import glob
import secrets
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Union

import numpy as np

from backprop.backends import Backend, get_backend
from backprop.callbacks import Callback, monitor_mode
from backprop.errors import ArgumentTypeError, BackpropError, CheckpointError, ConfigurationError, ShapeError
from backprop.optim.base import Optimizer
from backprop.optim.registry import check_registered, optimizer_class
from backprop.validation import choice, flag, float_dtype_name, instance
from backprop.validation import describe as describe_value
from backprop.layers.base import allocation_budget
from backprop.layers.registry import check_configs, describe, layer_from_node

MAGIC = b"\x89BPCKPT\n"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_FIXED_HEADER = struct.Struct("<8sIQI")  # magic, format version, JSON length, JSON CRC-32
# Only these dtypes can be named in a file: plain little-endian numbers, never objects.
_DTYPES = {name: np.dtype(name) for name in ("<f2", "<f4", "<f8", "<i4", "<i8", "|u1", "|b1")}
_SAFETENSORS_DTYPES = {"<f2": "F16", "<f4": "F32", "<f8": "F64", "<i4": "I32", "<i8": "I64", "|u1": "U8", "|b1": "BOOL"}
_STATE = "/state/"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: the model, its optimiser (``None`` if none was saved) and ``extra``,
    the JSON metadata given to ``save`` (``ModelCheckpoint`` stores ``{"epoch": ..., "logs": {...}}`` there)."""

    model: Any
    optimizer: Any = None
    extra: dict = field(default_factory=dict)


# -- writing ----------------------------------------------------------------------------------------------------
def save(model: Any, path: PathLike, optimizer: Any = None, extra: Mapping[str, Any] | None = None,
         communicator: Any = None) -> Path:
    """Write ``model`` (and ``optimizer``'s hyper-parameters, step count and slots) to ``path`` atomically.

    ``extra`` is JSON-able metadata stored alongside (an epoch number, a schedule's state, ...). Returns the path.
    With a ``communicator`` (`backprop.distributed`) only its rank 0 writes; the collective decision on its
    outcome that follows is the barrier: every rank returns once the file is complete, or raises rank 0's error.
    The replicas are identical, so rank 0's model is every rank's.
    """
    _check_model(model, "save", "(model, path, optimizer=None, extra=None)")
    _check_path(path, "save")
    if optimizer is not None:
        instance(optimizer, Optimizer, "save's optimizer", "a backprop optimiser (or None)")
    if extra is not None:
        instance(extra, Mapping, "save's extra", "a mapping of JSON data such as {'epoch': 3} (or None)")
    if communicator is not None and communicator.size > 1:
        return communicator.collectively(
            lambda: save(model, path, optimizer, extra) if communicator.is_root else Path(os.fspath(path)))
    if optimizer is not None:
        _check_optimizer_owns(model, optimizer)
        check_registered(optimizer)
    check_configs(model, registered=True)
    tensors: list[tuple[str, str, np.ndarray]] = [
        (name, "parameter", parameter.backend.to_numpy(parameter.value)) for name, parameter in model.named_parameters()
    ]
    tensors += [(name, "buffer", model.backend.to_numpy(value)) for name, value in model.named_buffers()]
    if optimizer is not None:
        for name, parameter in model.named_parameters():
            for slot, value in parameter.state.items():
                tensors.append((f"{name}{_STATE}{slot}", "state", parameter.backend.to_numpy(value)))

    table, blobs, offset = [], [], 0
    for name, role, host in tensors:
        blob = _little_endian(host, name)
        table.append({
            "name": name, "role": role, "dtype": blob.dtype.str, "shape": list(blob.shape),
            "offset": offset, "length": blob.nbytes, "crc32": zlib.crc32(blob.data),
        })
        blobs.append(blob)
        offset += blob.nbytes
    document = {
        "format": "backprop-checkpoint",
        "format_version": FORMAT_VERSION,
        "model": {"class": type(model).__name__, "architecture": describe(model),
                  "input_shape": list(model.input_shape), "dtype": model.dtype, "seed": model.seed,
                  "saved_on": model.device, "random_states": model.named_random_states()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "extra": dict(extra or {}),
        "tensors": table,
        "payload_length": offset,
    }
    try:
        header_json = json.dumps(document, default=_json_scalar).encode("utf-8")
    except TypeError as error:
        raise CheckpointError(
            f"cannot save {path}: the architecture, optimiser or extra is not JSON data ({error})"
        ) from None
    fixed = _FIXED_HEADER.pack(MAGIC, FORMAT_VERSION, len(header_json), zlib.crc32(header_json))
    return _atomic_write(path, [fixed, header_json, *(blob.reshape(-1).view(np.uint8) for blob in blobs)])


def export_safetensors(model: Any, path: PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write parameters and buffers in the safetensors format (readable by PyTorch, JAX, ... tools), atomically.

    Layout: uint64 little-endian header length N, N bytes of JSON ``{name: {"dtype": "F32", "shape": [...],
    "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with spaces to a multiple of 8, then the data.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "backprop", "architecture": json.dumps(model.config()),
                                               **{str(k): str(v) for k, v in (metadata or {}).items()}}}
    blobs, offset = [], 0
    state = model.state_dict()
    for name in sorted(state):
        blob = _little_endian(state[name], name)
        header[name] = {"dtype": _SAFETENSORS_DTYPES[blob.dtype.str], "shape": list(blob.shape),
                        "data_offsets": [offset, offset + blob.nbytes]}
        blobs.append(blob)
        offset += blob.nbytes
    encoded = json.dumps(header).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return _atomic_write(path, [struct.pack("<Q", len(encoded)), encoded,
                                *(blob.reshape(-1).view(np.uint8) for blob in blobs)])


def _check_model(model: Any, caller: str, signature: str) -> None:
    """`ArgumentTypeError` unless ``model`` is a model (a path given first says the arguments are swapped)."""
    if isinstance(model, (str, os.PathLike)):
        raise ArgumentTypeError(f"{caller} takes {signature}: the model comes first, got the path {model!r}")
    if not (callable(getattr(model, "named_parameters", None)) and callable(getattr(model, "state_dict", None))):
        raise ArgumentTypeError(f"{caller}'s model must be a bp.Sequential, got {describe_value(model)}")


def _check_path(path: Any, caller: str) -> None:
    instance(path, (str, os.PathLike), f"{caller}'s path", "a file path such as 'model.bpk'")


def _check_optimizer_owns(model: Any, optimizer: Any) -> None:
    ours = {id(p) for p in model.parameters()}
    if not all(id(p) in ours for p in optimizer.params):
        raise CheckpointError("the optimiser given to save() updates parameters that are not this model's")


def _little_endian(host: Any, name: str) -> np.ndarray:
    array = np.asarray(host)
    target = array.dtype.newbyteorder("<")
    if target.str not in _DTYPES:
        raise CheckpointError(f"cannot save {name!r}: dtype {array.dtype} is not one of {sorted(_DTYPES)}")
    return np.ascontiguousarray(array, dtype=target)


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise ArgumentTypeError(f"{type(value).__name__} is not JSON data")


def _write_all(handle: Any, chunks: Iterable[Any]) -> None:
    for chunk in chunks:
        handle.write(chunk)


def _atomic_write(path: PathLike, chunks: Iterable[Any]) -> Path:
    """Write to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the directory."""
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise CheckpointError(f"cannot save {target}: directory {directory} does not exist")
    if target.is_dir():
        raise CheckpointError(f"cannot save {target}: it is a directory; "
                              f"give a file name such as {target / 'model.bpk'}")
    _remove_stale_temporaries(target)
    temporary = directory / f".{target.name}.{_HOST_TAG}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _write_all(handle, chunks)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return target


_HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"  # temporaries name their host and process
_STALE_AFTER_S = 3600.0  # a temporary this old belongs to no save in progress, whoever wrote it


def _remove_stale_temporaries(target: Path) -> None:
    """Delete the temporaries that earlier saves of ``target`` left behind when they were killed mid-write: only
    files named as ``_atomic_write`` names them for this very target, and only those whose writer is gone (a
    process of this host that no longer exists) or that are over an hour old. A save in progress elsewhere keeps
    its file."""
    prefix = f".{target.name}."
    for candidate in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        middle = candidate.name[len(prefix):-len(".tmp")].split(".")
        if not (len(middle) in (1, 3) and all(_is_hex(part) or part.isdigit() for part in middle)):
            continue  # not one of ours
        try:
            age = time.time() - candidate.stat().st_mtime
            gone = len(middle) == 3 and middle[0] == _HOST_TAG and not _process_exists(int(middle[1]))
            if gone or age > _STALE_AFTER_S:
                candidate.unlink()
        except (OSError, ValueError):
            continue  # vanished meanwhile, or not ours to remove


def _is_hex(text: str) -> bool:
    return len(text) in (8, 12) and all(c in "0123456789abcdef" for c in text)


def _process_exists(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # Windows' os.kill would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process, or a platform that cannot tell: keep the file
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); Windows cannot open a directory, and needs no such step."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# -- reading ----------------------------------------------------------------------------------------------------
def load(path: PathLike, device: "str | Backend | None" = None, dtype: str | None = None) -> Any:
    """Rebuild the saved model on ``device`` (any backend, whatever it was saved on; ``None`` means ``"cpu"``) with
    its parameters and buffers.

    ``dtype`` overrides the saved dtype (e.g. ``"float32"`` for a float64 checkpoint on a device without float64).
    Optimiser slots are not restored: use `load_checkpoint` to resume training with the optimiser.
    """
    return _restore(path, device, dtype, with_optimizer=False).model


def load_checkpoint(path: PathLike, device: "str | Backend | None" = None, dtype: str | None = None) -> Checkpoint:
    """Rebuild the model and, if one was saved, its optimiser (type, hyper-parameters, step count, slots), plus
    the ``extra`` metadata. Training continued from it follows the same trajectory as uninterrupted training."""
    return _restore(path, device, dtype, with_optimizer=True)


def load_into(model: Any, path: PathLike, optimizer: Any = None) -> dict:
    """Copy a checkpoint's parameters, buffers and layers' random states into ``model`` (and its optimiser state
    into ``optimizer``).

    The file must fit: same layer types, same tensor names and shapes, an optimiser state (step counts,
    hyper-parameters, slots) that fits ``optimizer`` and the parameters; otherwise `CheckpointError` names the
    difference. Everything is checked before anything is written, so a refused file changes nothing. Returns the
    checkpoint's ``extra`` metadata.
    """
    _check_model(model, "load_into", "(model, path, optimizer=None)")
    _check_path(path, "load_into")
    if optimizer is not None:
        instance(optimizer, Optimizer, "load_into's optimizer", "a backprop optimiser (or None)")
        _check_optimizer_owns(model, optimizer)
    document, tensors = _read(path)
    with _file_errors(path, "does not describe a model this backprop can rebuild"), \
            allocation_budget(_budget(document)):
        saved_types, model_types = _layer_types(_architecture(document, path)[0]), _layer_types(model.layers)
    if saved_types != model_types:
        raise CheckpointError(f"{path} holds another architecture: layers {saved_types}, the model has {model_types}")
    _check_fit(model, tensors, path)
    if optimizer is not None:
        _check_optimizer_type(document, type(optimizer).__name__, path)
        _check_optimizer_state(model, optimizer, document["optimizer"], tensors, path)
    _restore_random_states(model, document, path)
    model.load_state_dict({name: host for name, (role, host) in tensors.items() if role in ("parameter", "buffer")})
    if optimizer is not None:
        _restore_slots(model, tensors)
        optimizer.load_state_dict(document["optimizer"])
    return document["extra"]


def _restore(path: PathLike, device: "str | Backend | None", dtype: str | None, with_optimizer: bool) -> Checkpoint:
    from backprop.model import Sequential

    _check_path(path, "load")
    backend = get_backend("cpu" if device is None else device)  # the caller's arguments fail as themselves
    dtype = None if dtype is None else float_dtype_name(dtype)
    document, tensors = _read(path)
    described = document["model"]
    dtype = dtype or described["dtype"]
    backend.dtype(dtype)  # a device without the saved dtype: DeviceError naming the dtype= fix
    with _file_errors(path, "does not describe a model this backprop can rebuild"), \
            allocation_budget(_budget(document)):
        layers, declared = _architecture(document, path)
        built_for = described.get("input_shape")  # format 2: the shape the model was built for
        try:
            model = Sequential(*layers, input_shape=declared, device=backend, dtype=dtype, seed=described.get("seed"))
            if not model.built and built_for is not None:  # built from its first batch: no layer declares the shape
                model.build(built_for)
        except (ShapeError, ConfigurationError) as error:
            raise CheckpointError(f"{path}: the saved layers do not chain: {error}") from None
    if not model.built:  # only a file of format 1 whose layers declare no input width, and so have no parameters
        if tensors:
            raise CheckpointError(f"{path} holds tensors but no input shape to build its model for")
        return Checkpoint(model=model, optimizer=None, extra=document["extra"])
    if built_for is not None and (model.input_shape is None or list(model.input_shape) != built_for):
        raise CheckpointError(f"{path}: the model was saved for per-sample inputs of shape {built_for}, but its "
                              f"layers take {model.input_shape}")
    _check_fit(model, tensors, path)
    _restore_random_states(model, document, path)
    model.load_state_dict({name: host for name, (role, host) in tensors.items() if role in ("parameter", "buffer")})
    optimizer = None
    if with_optimizer and document["optimizer"] is not None:
        optimizer = _build_optimizer(model, document["optimizer"], path)
        _check_optimizer_state(model, optimizer, document["optimizer"], tensors, path)
        _restore_slots(model, tensors)
    return Checkpoint(model=model, optimizer=optimizer, extra=document["extra"])


def _budget(document: dict) -> int:
    """Host bytes that rebuilding the saved architecture may draw: a small multiple of the payload (float64 draws
    for float32 tensors) plus 1 MiB for layers without tensors."""
    return 8 * int(document["payload_length"]) + 2**20


@contextlib.contextmanager
def _file_errors(path: PathLike, what: str) -> Iterator[None]:
    """Turn any failure while rebuilding from a file's contents into `CheckpointError` naming the file: JSON that
    passed the structural checks can still hold values a layer or optimiser refuses."""
    try:
        yield
    except CheckpointError:
        raise
    except (BackpropError, TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError,
            RecursionError, MemoryError) as error:
        raise CheckpointError(f"{path} {what}: {type(error).__name__}: {error}") from None


def _check_optimizer_state(model: Any, optimizer: Any, state: dict, tensors: dict, path: PathLike) -> None:
    """Refuse an optimiser state that does not fit ``optimizer`` (type, counts, hyper-parameters, validated on a
    shallow copy, so ``optimizer`` is untouched) or whose slots do not fit its step counts: every parameter the
    optimiser has updated needs the same set of slots, one never updated has none."""
    probe = copy.copy(optimizer)
    with _file_errors(path, "holds an optimiser state that does not fit"):
        probe.load_state_dict({**state, **_hyperparameters(state)})
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    slots: dict[str, set] = {}
    for name, (role, _) in tensors.items():
        if role == "state":
            owner, _, slot = name.partition(_STATE)
            slots.setdefault(owner, set()).add(slot)
    updated = {names[id(p)]: count for p, count in zip(probe.params, probe.parameter_steps)}
    kinds = {frozenset(slots.get(name, ())) for name, count in updated.items() if count > 0}
    unexpected = sorted(name for name, count in updated.items() if count == 0 and slots.get(name))
    if len(kinds) > 1 or unexpected or set(slots) - set(updated):
        raise CheckpointError(
            f"{path}: the optimiser slots do not fit its step counts: parameters updated {updated}, slots "
            f"{ {name: sorted(found) for name, found in slots.items()} }; the file is corrupted or was edited"
        )


def _layer_types(layers: list) -> list[str]:
    """The layers' class names in tree order, nested ones behind their dotted path (``"3.inner.0: Dense"``)."""
    types = []
    for index, layer in enumerate(layers):
        types.append(type(layer).__name__)
        types += [f"{name}: {type(inner).__name__}" for name, inner in layer.named_layers(f"{index}.")]
    return types


def _architecture(document: dict, path: PathLike) -> tuple[list, Any]:
    """The saved model's layers, unbuilt, and the input shape its config declares (or None): format 2 stores a tree
    of nodes, format 1 a list of layers. The layers are made one by one, so the model is built only once."""
    described = document["model"]
    if not isinstance(described, dict) or described.get("class") != "Sequential":
        kind = described.get("class") if isinstance(described, dict) else described
        raise CheckpointError(f"{path} holds a {kind!r} model; this backprop rebuilds Sequential only")
    if document["format_version"] == 1:
        config = described.get("config")
        node: Any = {"type": "Sequential",
                     "config": {"layers": config.get("layers") if isinstance(config, dict) else None}}
    else:
        node = described.get("architecture")
    config = node.get("config") if isinstance(node, dict) else None
    if not isinstance(node, dict) or node.get("type") != "Sequential" or not isinstance(config, dict) \
            or not isinstance(config.get("layers"), list) or set(config) - {"layers", "input_shape"}:
        raise CheckpointError(f"{path}: the architecture {node!r} is not a Sequential node with a list of layers")
    try:
        layers = [layer_from_node(entry, f"layer {index}") for index, entry in enumerate(config["layers"])]
    except (ConfigurationError, ShapeError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    return layers, config.get("input_shape")


def _build_optimizer(model: Any, state: dict, path: PathLike) -> Any:
    try:
        cls = optimizer_class(state.get("type"))
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    with _file_errors(path, f"holds an optimiser state that {cls.__name__} cannot be rebuilt from"):
        return cls.from_state_dict(model.parameters(), {**state, **_hyperparameters(state)})


def _hyperparameters(state: dict) -> dict:
    """The hyper-parameters of a saved optimiser state. JSON turns tuples (Adam's betas) into lists:
    hyper-parameters are scalars or tuples, so lists go back to tuples."""
    bookkeeping = ("type", "steps", "parameter_steps")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in state.items() if k not in bookkeeping}


def _check_optimizer_type(document: dict, name: str, path: PathLike) -> None:
    saved = document["optimizer"]
    if saved is None:
        raise CheckpointError(f"{path} holds no optimiser state; save it with bp.save(model, path, optimizer=...)")
    if saved.get("type") != name:
        raise CheckpointError(f"{path} holds the state of a {saved.get('type')} optimiser, not of a {name}")


def _restore_slots(model: Any, tensors: dict) -> None:
    parameters = dict(model.named_parameters())
    for parameter in parameters.values():
        parameter.state = {}
    for name, (role, host) in tensors.items():
        if role != "state":
            continue
        owner, _, slot = name.partition(_STATE)
        parameter = parameters[owner]
        dtype = model._dtype if host.dtype.kind == "f" else None
        parameter.state[slot] = model.backend.to_device(host, dtype)


def _restore_random_states(model: Any, document: dict, path: PathLike) -> None:
    """Give each layer its saved random state; on any misfit raise `CheckpointError` with every layer unchanged."""
    saved = document["model"].get("random_states", {})
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: the layers' random states are {saved!r}, not a {{layer path: state}} object")
    layers = dict(model.named_layers())
    previous = [(layer, layer.random_state()) for layer in layers.values()]
    try:
        for key, state in saved.items():
            if key not in layers:
                raise ConfigurationError(f"the model has no layer {key!r}; its layers are {', '.join(layers)}")
            layers[key].set_random_state(state)
    except ValueError as error:
        for layer, state in previous:
            if state is not None:
                layer.set_random_state(state)
        raise CheckpointError(f"{path}: the random state saved for layer {key} does not fit: {error}") from None


def _check_fit(model: Any, tensors: dict, path: PathLike) -> None:
    """Raise `CheckpointError` naming the first tensor whose name or shape differs from the model's."""
    expected = {name: tuple(p.value.shape) for name, p in model.named_parameters()}
    expected.update({name: tuple(v.shape) for name, v in model.named_buffers()})
    saved = {name: host.shape for name, (role, host) in tensors.items() if role in ("parameter", "buffer")}
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model: tensors missing from the file {missing}, in the file but not in the "
            f"model {unexpected}"
        )
    for name, shape in expected.items():
        if saved[name] != shape:
            raise CheckpointError(
                f"{path} does not fit the model: {name!r} has shape {saved[name]} in the file, {shape} in the model"
            )
    for name, (role, host) in tensors.items():
        owner = name.partition(_STATE)[0]
        if role == "state" and (owner not in expected or host.shape != expected[owner]):
            raise CheckpointError(
                f"{path}: optimiser slot {name!r} has shape {host.shape}, its parameter {expected.get(owner)}"
            )


def _read(path: PathLike) -> tuple[dict, dict[str, tuple[str, np.ndarray]]]:
    """Parse and verify a checkpoint: (JSON document, {name: (role, host array)}).

    The memory it takes is bounded by the file's size: the bytes are read once, every tensor's byte range must lie
    inside the payload, and the JSON document is checked field by field (`_check_document`) before any value of it
    is used."""
    _check_path(path, "load")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error}") from None
    if len(data) < _FIXED_HEADER.size:
        if MAGIC.startswith(data[: len(MAGIC)]):
            raise CheckpointError(
                f"{path} is truncated: {len(data)} bytes, shorter than the {_FIXED_HEADER.size}-byte header"
            )
        raise CheckpointError(f"{path} is not a backprop checkpoint (it does not start with the magic bytes {MAGIC!r})")
    magic, version, json_length, json_crc = _FIXED_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(
            f"{path} is not a backprop checkpoint (it starts with {magic!r}, not the magic bytes {MAGIC!r})"
        )
    if version not in READABLE_VERSIONS:
        cause = ("it was written by a newer backprop: upgrade backprop to read it (unless the file is corrupted)"
                 if version > FORMAT_VERSION else "the file is corrupted")
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, this backprop reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; {cause}"
        )
    payload_start = _FIXED_HEADER.size + json_length
    if payload_start > len(data):
        raise CheckpointError(
            f"{path} is truncated (or its header is corrupted): {len(data)} bytes, "
            f"the header alone announces {payload_start}"
        )
    header_json = data[_FIXED_HEADER.size:payload_start]
    if zlib.crc32(header_json) != json_crc:
        raise CheckpointError(f"{path} is corrupted: the checksum of its JSON header does not match")
    try:
        document = json.loads(header_json.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} has a malformed JSON header ({type(error).__name__}: {error})") from None
    _check_document(document, version, path)
    payload_length = document["payload_length"]
    if len(data) != payload_start + payload_length:
        state = "truncated" if len(data) < payload_start + payload_length else "longer than its header says"
        raise CheckpointError(f"{path} is {state}: {len(data)} bytes, expected {payload_start + payload_length}")
    payload = memoryview(data)[payload_start:]
    return document, {entry["name"]: _tensor(entry, payload, path) for entry in _entries(document["tensors"], path)}


def _refuse_constant(name: str) -> None:
    raise CheckpointError(f"{name} is not a number a checkpoint holds")


_ROLES = ("parameter", "buffer", "state")
_ENTRY_KEYS = {"name", "role", "dtype", "shape", "offset", "length", "crc32"}
_MAX_RANK = 32


def _field(ok: bool, path: PathLike, where: str, expected: str, value: Any) -> None:
    if not ok:
        shown = repr(value)
        raise CheckpointError(f"{path}: {where} must be {expected}, got "
                              f"{shown if len(shown) <= 80 else type(value).__name__}")


def _is_int(value: Any, low: int = 0, high: int | None = None) -> bool:
    return type(value) is int and value >= low and (high is None or value < high)


def _check_document(document: Any, version: int, path: PathLike) -> None:
    """`CheckpointError` naming the first field of the JSON document whose type or range is wrong."""
    _field(isinstance(document, dict), path, "the JSON header", "an object", document)
    absent = [key for key in ("model", "optimizer", "extra", "tensors", "payload_length") if key not in document]
    _field(not absent, path, "the JSON header", f"an object with the fields {absent}", sorted(document))
    _field(document.get("format_version") == version, path, "format_version",
           f"{version}, the version in the fixed header (the file is inconsistent)", document.get("format_version"))
    _field(_is_int(document["payload_length"]), path, "payload_length", "an integer >= 0", document["payload_length"])
    _field(isinstance(document["extra"], dict), path, "extra", "an object", document["extra"])
    model = document["model"]
    _field(isinstance(model, dict), path, "model", "an object", model)
    _field(model.get("class") == "Sequential", path, "model.class", "'Sequential'", model.get("class"))
    _field(model.get("dtype") in ("float32", "float64"), path, "model.dtype", "'float32' or 'float64'",
           model.get("dtype"))
    _field(model.get("seed") is None or _is_int(model.get("seed"), 0, 2**128), path, "model.seed",
           "null or an integer >= 0", model.get("seed"))
    _field(isinstance(model.get("random_states", {}), dict), path, "model.random_states", "an object",
           model.get("random_states"))
    shape = model.get("input_shape")
    _field(shape is None or (isinstance(shape, list) and 0 < len(shape) <= _MAX_RANK
                             and all(_is_int(n, 1) for n in shape)),
           path, "model.input_shape", "null or a list of positive integers", shape)
    if version == 1:
        config = model.get("config")
        _field(isinstance(config, dict) and isinstance(config.get("layers"), list), path, "model.config",
               "an object with a list of layers", config)
    else:
        node = model.get("architecture")
        _field(isinstance(node, dict) and node.get("type") == "Sequential" and isinstance(node.get("config"), dict),
               path, "model.architecture", "a Sequential node {'type': 'Sequential', 'config': {...}}", node)
    _check_optimizer_document(document["optimizer"], path)
    table = document["tensors"]
    _field(isinstance(table, list), path, "tensors", "a list of entries", table)
    for index, entry in enumerate(table):
        where = f"tensors[{index}]"
        _field(isinstance(entry, dict) and set(entry) == _ENTRY_KEYS, path, where,
               f"an object with exactly the fields {sorted(_ENTRY_KEYS)}", entry)
        _field(isinstance(entry["name"], str) and 0 < len(entry["name"]) <= 1000, path, f"{where}.name",
               "a non-empty string", entry["name"])
        where = f"tensor {entry['name']!r} (tensors[{index}])"
        _field(entry["role"] in _ROLES, path, f"{where}.role", f"one of {_ROLES}", entry["role"])
        # an object dtype ("|O") would make NumPy read pointers
        if not isinstance(entry["dtype"], str) or entry["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {entry['name']!r} has dtype {entry['dtype']!r}; readable dtypes: "
                                  f"{sorted(_DTYPES)}")
        _field(isinstance(entry["shape"], list) and len(entry["shape"]) <= _MAX_RANK
               and all(_is_int(n) for n in entry["shape"]), path, f"{where}.shape",
               "a list of integers >= 0", entry["shape"])
        for key in ("offset", "length"):
            _field(_is_int(entry[key]), path, f"{where}.{key}", "an integer >= 0", entry[key])
        _field(_is_int(entry["crc32"], 0, 2**32), path, f"{where}.crc32", "an integer in [0, 2**32)", entry["crc32"])


def _check_optimizer_document(state: Any, path: PathLike) -> None:
    """The optimiser's state: null, or type, step counts and hyper-parameters (numbers, booleans, short lists)."""
    if state is None:
        return
    _field(isinstance(state, dict), path, "optimizer", "null or an object", state)
    _field(isinstance(state.get("type"), str), path, "optimizer.type", "the name of an optimiser", state.get("type"))
    _field(_is_int(state.get("steps")), path, "optimizer.steps", "an integer >= 0", state.get("steps"))
    steps = state.get("parameter_steps", [])
    _field(isinstance(steps, list) and all(_is_int(n) for n in steps), path, "optimizer.parameter_steps",
           "a list of integers >= 0", steps)
    for key, value in state.items():
        if key in ("type", "steps", "parameter_steps"):
            continue
        scalar = lambda v: isinstance(v, (bool, int, float)) and (type(v) is not float or math.isfinite(v))  # noqa: E731
        _field(scalar(value) or (isinstance(value, list) and len(value) <= 16 and all(map(scalar, value))),
               path, f"optimizer.{key}", "a finite number, a boolean or a short list of numbers", value)


def _entries(table: Any, path: PathLike) -> list[dict]:
    if not isinstance(table, list) or not all(isinstance(entry, dict) for entry in table):
        raise CheckpointError(f"{path}: the tensor table is not a list of entries")
    names = [entry.get("name") for entry in table]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{path}: the tensor table names a tensor twice")
    return table


def _tensor(entry: dict, payload: memoryview, path: PathLike) -> tuple[str, np.ndarray]:
    try:
        name, role, dtype_name = entry["name"], entry["role"], entry["dtype"]
        shape = tuple(int(n) for n in entry["shape"])
        offset, length, crc = int(entry["offset"]), int(entry["length"]), int(entry["crc32"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: malformed tensor entry {entry!r} ({error})") from None
    if role not in ("parameter", "buffer", "state") or (role == "state") != (_STATE in name):
        raise CheckpointError(f"{path}: tensor {name!r} has an unknown role {role!r}")
    if dtype_name not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype_name!r}; readable dtypes: {sorted(_DTYPES)}")
    dtype = _DTYPES[dtype_name]
    if min(shape, default=0) < 0 or offset < 0 or length != math.prod(shape) * dtype.itemsize \
            or offset + length > len(payload):
        raise CheckpointError(f"{path}: tensor {name!r} (shape {shape}, {dtype_name}) does not fit its byte range "
                              f"[{offset}, {offset + length}) of a {len(payload)}-byte payload")
    raw = payload[offset:offset + length]
    if zlib.crc32(raw) != crc:
        raise CheckpointError(f"{path} is corrupted: the checksum of tensor {name!r} does not match")
    return role, np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


# -- during fit -------------------------------------------------------------------------------------------------
class ModelCheckpoint(Callback):
    """Save the model (and ``optimizer``, if given) at the end of each epoch, atomically.

    ``path`` may contain ``{epoch}`` (counted from 0, as ``fit`` counts) and any log key (``{val_loss:.4f}``).
    With ``save_best_only`` the file is written only when ``logs[monitor]`` improves on the best so far
    (lower for ``mode="min"``, higher for ``mode="max"``; ``mode="auto"`` infers the direction from the name,
    accuracy-like up and loss-like down, see `backprop.callbacks.monitor_mode`); a NaN never counts as an improvement,
    so a diverging run leaves the last good checkpoint intact. Each file's ``extra`` holds
    ``{"epoch": ..., "logs": {...}}``.
    Under ``fit(..., communicator=comm)`` only rank 0 writes, then every rank waits for the file (see `save`).
    """

    def __init__(self, path: PathLike, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto",
                 optimizer: Any = None) -> None:
        self.save_best_only = flag(save_best_only, "save_best_only")
        self.mode = monitor_mode(monitor, mode, "ModelCheckpoint") if self.save_best_only \
            else choice(mode, "ModelCheckpoint mode", ("auto", "min", "max"))
        self.path = os.fspath(instance(path, (str, os.PathLike), "ModelCheckpoint path",
                                       "a file name such as 'best.bpk'"))
        if optimizer is not None:
            instance(optimizer, Optimizer, "ModelCheckpoint optimizer", "the optimiser given to fit (or None)")
        self.monitor, self.optimizer = monitor, optimizer
        self.best = -math.inf if self.mode == "max" else math.inf
        self.last_saved: Path | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.model is None:
            raise ConfigurationError("ModelCheckpoint has no model: "
                                     "on_train_begin(model) must run first (fit does this)")
        if self.save_best_only:
            if self.monitor not in logs:
                raise ConfigurationError(
                    f"ModelCheckpoint monitors {self.monitor!r}, which is not in the logs {sorted(logs)}; "
                    "give fit validation data or choose another monitor"
                )
            value = float(logs[self.monitor])
            improved = value < self.best if self.mode == "min" else value > self.best
            if not improved:
                return
            self.best = value
        try:
            path = self.path.format(**{**logs, "epoch": epoch})
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigurationError(
                f"ModelCheckpoint path {self.path!r} cannot be formatted with epoch and {sorted(logs)}: {error}"
            ) from None
        self.last_saved = save(self.model, path, optimizer=self.optimizer, communicator=self.communicator,
                               extra={"epoch": epoch, "logs": {k: float(v) for k, v in logs.items()}})
