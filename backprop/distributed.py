"""Processes that train one model together, on MPI through mpi4py: ``comm = bp.distributed.init()``.

    comm = bp.distributed.init()           # size 1 without mpiexec, or where mpi4py is not installed
    model = bp.Sequential(..., device=comm.device("cuda"), seed=0)         # "cuda:{local_rank}"
    model.fit(x, y, loss, opt, epochs=20, batch_size=512, seed=0, communicator=comm)

A `Communicator` holds a private duplicate of ``MPI.COMM_WORLD`` (or of the communicator given to `init`), so
its messages never meet the user's own. Every rank runs the same script; ``rank`` counts the processes from 0,
``local_rank`` counts those on the same node (which GPU a process takes), ``is_root`` is rank 0.

Only buffer-based, upper-case MPI calls are used (``Allreduce``, ``Bcast``, ``Barrier``) on host NumPy arrays:
nothing is pickled. The base class is the size-1 communicator: each collective is the identity there, so code
written against a communicator runs unchanged in one process, and `fit` with it behaves exactly as without one.

Collective decisions: an error raised on some ranks only would leave the others waiting in their next collective
for ever. `Communicator.raise_together(error)` is called by every rank with its own error (or None); if any rank
failed, every rank raises the error of the lowest failing rank (that rank its own exception, the others the
same class with the same message, naming the rank). `check_same` refuses, on every rank, a setting that differs
between ranks (a rank-dependent seed, a different data size), and `any` is a collective logical or.
"""

from __future__ import annotations

import builtins
import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from backprop import errors
from backprop.errors import BackpropError, ConfigurationError
from backprop.validation import choice, instance

# Variables that MPI launchers set in each process they start (MPICH/Hydra and Intel MPI, Open MPI, Slurm's srun).
_LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
_GPU_KINDS = ("cuda", "cupy", "torch:cuda")


class Communicator:
    """The size-1 communicator: one process, every collective the identity. `init()` returns it without MPI;
    the MPI communicator subclasses it and overrides the four primitives (``barrier``, ``allreduce``,
    ``broadcast`` and the constructor's ranks)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_root(self) -> bool:
        """True on rank 0, the rank that writes checkpoints and prints."""
        return self.rank == 0

    def device(self, kind: str = "cpu") -> str:
        """The device specifier this rank should train on: a GPU kind (``"cuda"``, ``"cupy"``, ``"torch:cuda"``)
        gets this rank's ``local_rank`` as its index (one process per GPU of a node); other kinds are returned
        as they are (``"cpu"``, ``"torch:cpu"``, ...)."""
        instance(kind, str, "the device kind", "a string such as 'cpu' or 'cuda'")
        if kind in _GPU_KINDS:
            return f"{kind}:{self.local_rank}"
        if any(kind.startswith(f"{gpu}:") for gpu in _GPU_KINDS):
            raise ConfigurationError(
                f"comm.device({kind!r}) names a GPU index; give the kind without it (comm.device('cuda')), and each "
                "process takes the GPU of its local rank"
            )
        return kind

    # -- primitives (the identity in one process) -----------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank has arrived."""

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        """Combine ``buffer`` (a contiguous host NumPy array) element-wise over all ranks, in place, with ``op``
        ("sum", "min" or "max"); every rank gets the result. Returns ``buffer``."""
        _check_buffer(buffer)
        choice(op, "allreduce op", ("sum", "min", "max"))
        return buffer

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``buffer`` on every rank with rank ``root``'s, in place. Returns ``buffer``."""
        _check_buffer(buffer)
        return buffer

    # -- derived collectives --------------------------------------------------------------------------------
    def rows(self, count: int) -> tuple[int, int]:
        """This rank's contiguous rows ``[start, stop)`` of a batch of ``count`` rows: the first ``count % size``
        ranks take one row more than the others, and ranks beyond ``count`` take none (``start == stop``)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def any(self, flag: bool) -> bool:
        """Collective logical or: True on every rank if ``flag`` is true on any rank."""
        return bool(self.allreduce(np.array([1 if flag else 0], dtype=np.int64), op="max")[0])

    def check_same(self, settings: dict[str, Any]) -> None:
        """Raise `ConfigurationError` on every rank if any of ``settings`` (name -> value, compared by ``repr``)
        differs between ranks; one allreduce for all of them."""
        names = list(settings)
        digests = np.array([_digest(settings[name]) for name in names], dtype=np.int64)
        extremes = self.allreduce(np.concatenate([digests, -digests]), op="min")  # min and -max in one call
        differing = [name for index, name in enumerate(names) if extremes[index] != -extremes[len(names) + index]]
        if differing:
            raise ConfigurationError(
                f"{', '.join(differing)} differ between the {self.size} ranks (rank {self.rank} has "
                + ", ".join(f"{name}={settings[name]!r}" for name in differing)
                + "); every rank must run the same script with the same arguments and data sizes (a seed must not "
                "depend on the rank: pass one number, e.g. seed=0)"
            )

    def raise_together(self, error: BaseException | None) -> None:
        """Collective: every rank passes the exception it caught (or None). If any rank failed, every rank raises
        the error of the lowest failing rank; otherwise return."""
        failed = int(self.allreduce(np.array([self.rank if error is not None else self.size], dtype=np.int64),
                                    op="min")[0])
        if failed == self.size:
            return
        text = f"{type(error).__module__}:{type(error).__qualname__}\n{error}" if self.rank == failed else ""
        kind, _, message = self.broadcast_text(text, root=failed).partition("\n")
        if self.rank == failed:
            raise error  # type: ignore[misc]
        raise _rebuild(kind, f"{message} [raised on rank {failed} of {self.size}]")

    def collectively(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` on every rank, its result returned; if it raised on any rank, every rank
        raises the error of the lowest failing rank (see `raise_together`)."""
        try:
            result = function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 -- re-raised on every rank
            self.raise_together(error)
            raise
        self.raise_together(None)
        return result

    def broadcast_text(self, text: str, root: int = 0) -> str:
        """Rank ``root``'s string on every rank (its UTF-8 bytes in two buffer broadcasts: length, then bytes)."""
        data = text.encode("utf-8") if self.rank == root else b""
        length = int(self.broadcast(np.array([len(data)], dtype=np.int64), root=root)[0])
        buffer = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(length, np.uint8)
        return bytes(self.broadcast(buffer, root=root)).decode("utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"


class MPICommunicator(Communicator):
    """A communicator over a private duplicate of an mpi4py communicator (``MPI.COMM_WORLD`` by default)."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self._ops = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}
        self.comm = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = node.Get_rank()
        node.Free()

    def barrier(self) -> None:
        self.comm.Barrier()

    def allreduce(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        super().allreduce(buffer, op)
        if self.size > 1:
            self.comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._ops[op])
        return buffer

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> np.ndarray:
        super().broadcast(buffer, root)
        if self.size > 1:
            self.comm.Bcast(buffer, root=root)
        return buffer


def init(comm: Any = None) -> Communicator:
    """The communicator for this process: over a private duplicate of ``comm`` (an mpi4py communicator; default
    ``MPI.COMM_WORLD``), or the size-1 `Communicator` where mpi4py is not installed.

    Without mpi4py, a process that an MPI launcher started as one of several (it sets ``PMI_SIZE``,
    ``OMPI_COMM_WORLD_SIZE``, ...) raises `ConfigurationError` instead of silently training alone.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        if comm is not None:
            raise ConfigurationError(f"init(comm={comm!r}) needs mpi4py: pip install 'backprop-arrays[mpi]'") from None
        launched = {name: os.environ[name] for name in _LAUNCHER_SIZES if os.environ.get(name, "1") not in ("", "1")}
        if launched:
            raise ConfigurationError(
                f"this process was started by an MPI launcher as one of several ({launched}), but mpi4py is not "
                "installed, so it would train alone: pip install 'backprop-arrays[mpi]'"
            ) from None
        return Communicator()
    if comm is None:
        comm = MPI.COMM_WORLD
    else:
        instance(comm, MPI.Intracomm, "init(comm=...)", "an mpi4py intra-communicator such as MPI.COMM_WORLD")
    return MPICommunicator(comm)


def _check_buffer(buffer: Any) -> None:
    if not isinstance(buffer, np.ndarray) or not buffer.flags.c_contiguous or not buffer.flags.writeable:
        raise ConfigurationError(
            f"collectives take a writeable, C-contiguous host NumPy array, got {type(buffer).__name__}; copy device "
            "arrays to the host first (numpy.ascontiguousarray(bp.to_numpy(array)))"
        )


def _digest(value: Any) -> int:
    """A 62-bit digest of ``repr(value)`` (so that it and its negation fit an int64)."""
    return int.from_bytes(hashlib.sha256(repr(value).encode("utf-8")).digest()[:8], "little") >> 2


def _rebuild(kind: str, message: str) -> BaseException:
    """An exception of the class named ``module:qualname`` (one of backprop.errors' or a built-in one), else
    `BackpropError`, carrying ``message``."""
    module, _, name = kind.partition(":")
    home = {"backprop.errors": errors, "builtins": builtins}.get(module)
    cls = getattr(home, name, None) if home is not None else None
    fallback = BackpropError(f"{kind.replace(':', '.')}: {message}")
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return fallback
    try:
        return cls(message)
    except Exception:  # noqa: BLE001 -- a built-in whose constructor wants more arguments
        return fallback
