"""Data-parallel training: every rank holds the whole model and the whole data, and each step computes one
global batch together, so the result is the single-process one (``fit(..., communicator=comm)``).

The step for a global batch B of n rows (the batches ``fit(seed=...)`` draws, identical on every rank), on rank r
of R, whose contiguous rows B_r are ``comm.rows(n)`` (n_r rows, possibly none)::

    g_r = s_r * dL(B_r)/dw            s_r = loss.share(B_r, B): n_r / n for a mean over rows, W_r / W for
                                      class-weighted cross-entropy, 1 for a sum; so sum_r s_r L(B_r) = L(B)
    g = sum_r g_r                     one in-place Allreduce of one flat contiguous host buffer
    g += dR/dw                        the penalty once, on the reduced gradient (every rank, identically)
    optimizer.step()                  the update (and clipping, where the optimiser clips first) acts on g

so every rank applies the same update to the same parameters, and the replicas stay identical. Dropout draws
the mask of the whole batch B and applies the rows of B_r (``Layer.shard``), so masks are the single-process
ones; a rank with no rows still runs a forward on one row under ``shard(0, 1, n)`` so that its random
generators advance in step. Layers with batch statistics (``mixes_samples``: BatchNorm) are refused.

The flat buffer holds every parameter's scaled gradient in the model's dtype, then one flag per parameter
(how many ranks computed its gradient: a parameter no rank reached keeps no gradient, as in one process) and
one error flag: a rank whose forward or backward raised still joins the Allreduce, and then every rank raises
that error (`Communicator.raise_together`), so no rank is left waiting.

GPU arrays cross MPI through host staging (MPI wheels are not CUDA-aware): gradients are copied to the host
buffer with the backend's ``to_numpy``, and ``backend.synchronize()`` runs before MPI reads the buffer and again
after the reduced gradients were copied back, because CuPy's host-to-device ``asarray`` runs asynchronously on
the current stream and must finish before the next step overwrites its host source (CuPy's ``cupy.asarray``:
"blocking ... Default is False ... writing to the source without proper ordering while copying would result in
a race condition"). This path is written to CuPy's and PyTorch's documented behaviour and is untested here.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from backprop.distributed import Communicator
from backprop.errors import ConfigurationError
from backprop.gradients import loss_and_backward


class GradientBuffer:
    """One flat contiguous host array for the gradients of ``parameters`` (in ``dtype``), one "has a gradient"
    count per parameter and one error count: ``sum(comm, share, failed)`` reduces them with one Allreduce."""

    def __init__(self, parameters: list, dtype: Any) -> None:
        self.parameters = parameters
        sizes = [int(np.prod(p.shape)) for p in parameters]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.flags = self.offsets[-1]
        self.buffer = np.empty(self.flags + len(parameters) + 1, dtype=dtype)

    def pack(self, share: float, failed: bool) -> None:
        """buffer = [share * g_1, ..., share * g_k, has_grad_1, ..., has_grad_k, failed] (zeros where none)."""
        buffer, flags = self.buffer, self.flags
        for index, parameter in enumerate(self.parameters):
            view = buffer[self.offsets[index]:self.offsets[index + 1]]
            if parameter.has_grad and not failed:
                host = parameter.backend.to_numpy(parameter.grad).reshape(-1)
                np.multiply(host, share, out=view)
                buffer[flags + index] = 1
            else:
                view[...] = 0
                buffer[flags + index] = 0
        buffer[-1] = 1 if failed else 0

    def unpack(self) -> None:
        """Every parameter that some rank reached gets the reduced gradient; the others keep none."""
        buffer, flags = self.buffer, self.flags
        for index, parameter in enumerate(self.parameters):
            if buffer[flags + index] > 0:
                host = buffer[self.offsets[index]:self.offsets[index + 1]].reshape(parameter.shape)
                parameter.grad = parameter.backend.to_device(host, parameter.value.dtype)
            else:
                parameter.zero_grad()

    def sum(self, comm: Communicator, share: float, failed: bool, backend: Any) -> bool:
        """Pack, synchronise the device, Allreduce in place, unpack, synchronise again (see the module doc);
        return whether any rank failed (then nothing is unpacked)."""
        self.pack(share, failed)
        backend.synchronize()
        comm.allreduce(self.buffer)
        if self.buffer[-1] > 0:
            return True
        self.unpack()
        backend.synchronize()
        return False


class DataParallel:
    """The training loop's hooks (see `backprop.training`) for ``fit(..., communicator=comm)`` on a communicator
    of size > 1: checks decided collectively, the agreement between ranks before training, the step, sharded
    evaluation, the reduction of logs and collective decisions at the end of each epoch. ``local`` is the
    one-process hooks object, whose ``evaluate`` computes this rank's rows."""

    def __init__(self, comm: Communicator, model: Any, local: Any) -> None:
        mixing = [layer for layer in model.layer_list() if getattr(layer, "mixes_samples", False)]
        if mixing:
            raise ConfigurationError(
                f"{mixing[0]!r} computes statistics over the whole batch, which data-parallel training splits "
                f"across {comm.size} processes; synchronised batch normalisation is not available yet. Use LayerNorm, "
                "or train in one process (communicator of size 1)"
            )
        self.comm, self.model, self.local = comm, model, local  # local: the one-process hooks (evaluate)
        self.gradients = GradientBuffer(model.parameters(), np.dtype(model.dtype))

    # -- before training ------------------------------------------------------------------------------------
    def collectively(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, with an error on any rank raised on every rank (`Communicator.collectively`)."""
        return self.comm.collectively(function, *args)

    def agree(self, optimizer: Any, settings: dict[str, Any]) -> Any:
        """Before the first step: refuse (on every rank) ``settings`` or a model structure that differ between
        ranks, make the replicas equal (`synchronise`) and return the seed every rank uses: ``settings["seed"]``,
        or for ``None`` fresh entropy drawn on rank 0."""
        structure = [(name, p.shape) for name, p in self.model.named_parameters()]
        self.comm.check_same({**settings, "the model's parameters": structure})
        self.synchronise(optimizer)
        seed = settings["seed"]
        if seed is not None:
            return seed
        words = self.comm.broadcast(np.random.SeedSequence().generate_state(2, dtype=np.uint64))
        return int(words[0]) << 64 | int(words[1])

    def synchronise(self, optimizer: Any) -> bool:
        """Make every replica equal rank 0's: one checksum allreduce over the parameters, optimiser slots,
        buffers, layers' random states and the optimiser's state; only if they differ (a model built without
        a seed, say) rank 0 broadcasts them. Returns whether it broadcast."""
        arrays, text = self._state(optimizer)
        checksum = zlib.crc32(text.encode("utf-8"))
        for array in arrays:
            checksum = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).data, checksum)
        extremes = self.comm.allreduce(np.array([checksum, -checksum], dtype=np.int64), op="min")
        if extremes[0] == -extremes[1]:
            return False
        model = self.model
        for holder, key, array in self._places():
            host = self.comm.broadcast(np.ascontiguousarray(model.backend.to_numpy(array)).copy())
            value = model.backend.to_device(host, array.dtype)
            if isinstance(holder, dict):
                holder[key] = value
            else:
                setattr(holder, key, value)
        states = json.loads(self.comm.broadcast_text(text))
        for layer, state in zip(model.layer_list(), states["random_states"]):
            if state is not None:
                layer.set_random_state(state)
        optimizer.load_state_dict(states["optimizer"])
        return True

    def _places(self) -> list[tuple[Any, str, Any]]:
        """(holder, key, array) for every parameter value, optimiser slot and buffer, in a fixed order."""
        places: list[tuple[Any, str, Any]] = []
        for _, parameter in self.model.named_parameters():
            places.append((parameter, "value", parameter.value))
            places += [(parameter.state, slot, parameter.state[slot]) for slot in sorted(parameter.state)]
        for layer in self.model.layer_list():
            places += [(layer.buffers, key, layer.buffers[key]) for key in sorted(layer.buffers)]
        return places

    def _state(self, optimizer: Any) -> tuple[list[np.ndarray], str]:
        arrays = [self.model.backend.to_numpy(array) for _, _, array in self._places()]
        text = json.dumps({"random_states": [layer.random_state() for layer in self.model.layer_list()],
                           "optimizer": optimizer.state_dict()}, sort_keys=True)
        return arrays, text

    # -- training -------------------------------------------------------------------------------------------
    def step(self, loss: Any, x: Any, y: Any, optimizer: Any, penalty: Any = None) -> Any:
        """One step on the global batch (x, y) (prepared targets): this rank's share of the loss, the reduced
        gradients, the penalty, ``optimizer.step()`` (gradient clipping done there, in a subclass that clips
        before updating, acts on the reduced gradient). Returns s_r L(B_r) as a 0-d device array, plus R(w) on
        rank 0, so that the sum over ranks is the single-process batch loss."""
        model, comm = self.model, self.comm
        rows = x.shape[0]
        start, stop = comm.rows(rows)
        error, value, share = None, None, 0.0
        try:
            with model.backend.activate():
                if stop > start:
                    x_rows, y_rows = x[start:stop, ...], y[start:stop, ...]
                    share = loss.share(y_rows, y)
                    with _sharded(model, start, stop, rows):
                        value = loss_and_backward(model, loss, x_rows, y_rows, prepared=True) * share
                else:  # no rows here: draw the batch's random numbers all the same, compute nothing
                    model.zero_grad()
                    with _sharded(model, 0, 1, rows):
                        model.forward(x[0:1, ...], training=True)
        except Exception as caught:  # noqa: BLE001 -- every rank raises it after the Allreduce below
            error = caught
        if self.gradients.sum(comm, share, error is not None, model.backend):
            comm.raise_together(error)
        with model.backend.activate():
            if value is None:
                value = model.backend.xp.zeros((), dtype=model._dtype, device=model.backend.device)
            if penalty is not None:
                regulariser = penalty.accumulate(model)
                if comm.is_root:
                    value = value + regulariser
        optimizer.step()
        return value

    def evaluate(self, inputs: Any, targets: Any, loss: Any, metrics: dict, bounds: list[tuple[int, int]]) -> dict:
        """Per-batch loss and metrics of this rank's rows of each batch, weighted by its share (the loss's
        ``share`` for the loss, rows for metrics, which are means over samples): summed over ranks they are the
        single-process values. Batches without rows here contribute zeros."""
        model, backend = self.model, self.model.backend
        names = (["loss"] if loss is not None else []) + list(metrics)
        series: dict[str, list] = {name: [] for name in names}
        for start, stop in bounds:
            first, last = self.comm.rows(stop - start)
            with backend.activate():
                if last == first:
                    zero = backend.xp.zeros((), dtype=model._dtype, device=backend.device)
                    for name in names:
                        series[name].append(zero)
                    continue
                part = self.local.evaluate(inputs, targets, loss, metrics, [(start + first, start + last)])
                rows = (last - first) / (stop - start)
                for name in names:
                    weight = rows if name != "loss" else \
                        loss.share(targets[start + first:start + last, ...], targets[start:stop, ...])
                    series[name].append(part[name][0] * weight)
        return series

    def reduce(self, host: dict[str, list[float]]) -> dict[str, list[float]]:
        """Each per-batch series summed over the ranks (one float64 Allreduce for all of them)."""
        names = list(host)
        flat = np.array([value for name in names for value in host[name]], dtype=np.float64)
        self.comm.allreduce(flat)
        result, start = {}, 0
        for name in names:
            count = len(host[name])
            result[name], start = flat[start:start + count].tolist(), start + count
        return result

    def epoch_end(self, callbacks: list, epoch: int, logs: dict[str, float]) -> bool:
        """Every rank runs the callbacks (an error on one rank is raised on all); training stops on every rank if
        any rank's callbacks set ``model.stop_training``."""
        def run() -> None:
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)

        self.comm.collectively(run)
        self.model.stop_training = self.comm.any(self.model.stop_training)
        return self.model.stop_training


@contextlib.contextmanager
def _sharded(model: Any, start: int, stop: int, rows: int) -> Iterator[None]:
    """Every layer of ``model`` inside its ``shard(start, stop, rows)`` context."""
    with contextlib.ExitStack() as stack:
        for layer in model.layer_list():
            stack.enter_context(layer.shard(start, stop, rows))
        yield
