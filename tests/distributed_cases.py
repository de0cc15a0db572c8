"""Training cases run under ``mpiexec -n N python tests/distributed_cases.py OUT [--inject-bug] [case ...]``.

Each case is a function ``case(comm) -> dict`` that trains a small model (``comm=None``: plain single-process
``fit``, the reference that tests/test_distributed.py computes in its own process). Every rank writes what it
ends with (parameters, optimiser slots and state, random states, History, or the error it raised) to
``OUT/<case>.<rank>.json``; floats are written with ``repr``, so values compare bit for bit.

``--inject-bug`` replaces each rank's share of a batch (rows / batch rows) by 1 / size, the bug the tests must catch.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import backprop as bp
from backprop import checkpoint

CASES: dict[str, Callable[[Any], dict]] = {}
SAMPLES, FEATURES, CLASSES = 37, 5, 3


def case(function: Callable[[Any], dict]) -> Callable[[Any], dict]:
    CASES[function.__name__] = function
    return function


def data(dtype: str = "float64") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(SAMPLES, FEATURES)).astype(dtype)
    labels = rng.integers(0, CLASSES, size=SAMPLES)
    targets = rng.normal(size=(SAMPLES, CLASSES)).astype(dtype)
    return x, labels, targets


def network(*middle: bp.Layer, dtype: str = "float64", seed: int | None = 3, device: str = "cpu") -> bp.Sequential:
    return bp.Sequential(bp.Dense(FEATURES, 8), bp.Tanh(), *middle, bp.Dense(8, CLASSES), device=device,
                         dtype=dtype, seed=seed)


def outcome(model: bp.Sequential, optimizer: Any, history: Any = None, error: BaseException | None = None,
            **more: Any) -> dict:
    """What a rank ends with, as JSON data."""
    return {
        "parameters": {name: value.tolist() for name, value in model.state_dict().items()},
        "slots": {f"{p.name}/{slot}": bp.to_numpy(value).tolist()
                  for p in model.parameters() for slot, value in sorted(p.state.items())},
        "optimizer": optimizer.state_dict(),
        "random_states": [layer.random_state() for layer in model.layers],
        "history": None if history is None else {"epoch": history.epoch, **history.history},
        "error": None if error is None else [type(error).__name__, str(error)],
        **more,
    }


def train(comm: Any, model: bp.Sequential, loss: Any, optimizer: Any, x: Any, y: Any, **options: Any) -> dict:
    """fit with these options, recording the error it raises instead of letting it through."""
    options = {"epochs": 3, "batch_size": 10, "seed": 0, "verbose": 0, **options}
    if comm is not None:
        options["communicator"] = comm
    try:
        history = model.fit(x, y, loss, optimizer, **options)
    except bp.errors.BackpropError as error:
        return outcome(model, optimizer, error=error)
    return outcome(model, optimizer, history)


@case
def sgd_momentum(comm: Any) -> dict:
    x, labels, _ = data()
    model = network()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return train(comm, model, bp.losses.CrossEntropy(), optimizer, x, labels, metrics=["accuracy"],
                 validation_data=(x[:11], labels[:11]))


@case
def adam(comm: Any) -> dict:
    x, _, targets = data()
    model = network()
    return train(comm, model, bp.losses.MeanSquaredError(), bp.optim.Adam(model.parameters(), lr=0.01), x, targets,
                 metrics=["mse"])


@case
def second_device(comm: Any) -> dict:
    """array_api_strict's second device: gradients staged through the host and back, nothing left on the default."""
    x, labels, _ = data()
    model = network(bp.Dropout(0.2), device="array_api_strict:device1")
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.Adam(model.parameters(), lr=0.01), x, labels,
                 validation_data=(x[:11], labels[:11]), metrics=["accuracy"], penalty=bp.penalties.L2(1e-3))


@case
def convolution(comm: Any) -> dict:
    """Images (N, 1, 6, 6): Conv2d, Dropout on feature maps, max pooling, Flatten, Dense; shards of 4-D batches."""
    images = np.random.default_rng(5).normal(size=(SAMPLES, 1, 6, 6))
    _, labels, _ = data()
    model = bp.Sequential(bp.Conv2d(1, 3, 3, padding=1), bp.ReLU(), bp.Dropout(0.2), bp.MaxPool2d(2), bp.Flatten(),
                          bp.Dense(27, CLASSES), input_shape=(1, 6, 6), dtype="float64", seed=3)
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                 images, labels, epochs=2, validation_data=(images[:9], labels[:9]), metrics=["accuracy"])


@case
def small_batch(comm: Any) -> dict:
    """Batches of 2 (and a last one of 1) on 3 ranks: some ranks have no rows."""
    x, _, targets = data()
    model = network(bp.Dropout(0.25))
    return train(comm, model, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.05), x, targets,
                 batch_size=2, epochs=2)


@case
def penalty(comm: Any) -> dict:
    x, labels, _ = data()
    model = network()
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
                 x, labels, penalty=bp.penalties.L1L2(l1=1e-3, l2=1e-2))


@case
def dropout(comm: Any) -> dict:
    x, labels, _ = data()
    model = network(bp.Dropout(0.4), bp.ReLU())
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.Adam(model.parameters(), lr=0.01), x, labels,
                 validation_data=(x[:9], labels[:9]), metrics=["accuracy"])


@case
def class_weights(comm: Any) -> dict:
    x, labels, _ = data()
    model = network()
    loss = bp.losses.CrossEntropy(weight=[0.2, 1.0, 3.0])
    return train(comm, model, loss, bp.optim.SGD(model.parameters(), lr=0.1), x, labels, batch_size=8,
                 validation_data=(x[:13], labels[:13]))


class ClippedSGD(bp.optim.SGD):
    """SGD that clips the gradients' global norm to 0.3 before each update, counting the steps it clipped."""

    clipped = 0

    def step(self) -> None:
        if bp.optim.clip_grad_norm(self.params, 0.3) > 0.3:
            self.clipped += 1
        super().step()


@case
def clipping(comm: Any) -> dict:
    x, labels, _ = data()
    model = network()
    optimizer = ClippedSGD(model.parameters(), lr=0.5, momentum=0.5)
    result = train(comm, model, bp.losses.CrossEntropy(), optimizer, x, labels)
    return {**result, "clipped": optimizer.clipped}


@case
def float32(comm: Any) -> dict:
    x, _, targets = data("float32")
    model = network(dtype="float32")
    return train(comm, model, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 x, targets)


@case
def early_stopping(comm: Any) -> dict:
    x, labels, _ = data()
    model = network()
    stopper = bp.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best=True)
    result = train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=2.0), x, labels,
                   epochs=8, validation_data=(x[:11], labels[:11]), callbacks=[stopper])
    return {**result, "stopped_epoch": stopper.stopped_epoch}


def rank(comm: Any) -> int:
    return 0 if comm is None else comm.rank


@case
def stop_on_one_rank(comm: Any) -> dict:
    """A callback sets stop_training at epoch 1 on the last rank only: every rank stops there."""
    last = 0 if comm is None else comm.size - 1

    class StopHere(bp.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict) -> None:
            if epoch == 1 and rank(comm) == last:
                self.model.stop_training = True

    x, labels, _ = data()
    model = network()
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels,
                 epochs=5, callbacks=[StopHere()])


class NaNOnRank(bp.Layer):
    """Identity, except that its 7th training forward returns NaN on the process whose rank is ``poisoned``."""

    def __init__(self, poisoned: bool) -> None:
        super().__init__()
        self.poisoned, self.calls = poisoned, 0

    def forward(self, x, training=False):
        if training:
            self.calls += 1
            if self.calls == 7 and self.poisoned:
                x = x * float("nan")
        return x, lambda dy, need_dx=True: dy


@case
def nan_on_one_rank(comm: Any) -> dict:
    x, labels, _ = data()
    model = network(NaNOnRank(poisoned=rank(comm) == 1))
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels)


@case
def seed_per_rank(comm: Any) -> dict:
    x, labels, _ = data()
    model = network()
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels,
                 seed=rank(comm))


@case
def bad_data_on_one_rank(comm: Any) -> dict:
    x, labels, _ = data()
    if rank(comm) == 1:
        x[3, 2] = np.nan
    model = network()
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels)


@case
def bad_split_on_one_rank(comm: Any) -> dict:
    x, labels, _ = data()
    model = network()
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels,
                 validation_split=1.5 if rank(comm) == 1 else 0.2)


@case
def validation_error_on_one_rank(comm: Any) -> dict:
    def fragile(prediction: Any, target: Any) -> Any:
        if rank(comm) == 1:
            raise bp.errors.TargetError("this metric cannot read the targets on rank 1")
        return bp.metrics.accuracy(prediction, target)

    x, labels, _ = data()
    model = network()
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels,
                 validation_data=(x[:11], labels[:11]), metrics=[fragile])


@case
def batchnorm(comm: Any) -> dict:
    x, labels, _ = data()
    model = network(bp.BatchNorm1d(8))
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels)


@case
def unseeded(comm: Any) -> dict:
    """No seed anywhere: each rank draws its own initial weights and dropout generator; fit makes the replicas
    equal to rank 0's and draws one shuffling seed for all."""
    x, labels, _ = data()
    model = network(bp.Dropout(0.3), seed=None)
    initial = float(np.sum(model.state_dict()["0.weight"]))
    result = train(comm, model, bp.losses.CrossEntropy(), bp.optim.Adam(model.parameters(), lr=0.01), x, labels,
                   seed=None, epochs=2)
    return {**result, "initial": initial}


@case
def communicator(comm: Any) -> dict:
    comm = comm or bp.distributed.Communicator()
    model = network()
    return {**outcome(model, bp.optim.SGD(model.parameters(), lr=0.1)),
            "facts": [comm.rank, comm.size, comm.local_rank, comm.is_root, comm.device("cuda"), comm.device("cpu")]}


def _run_dir() -> Path:
    return Path(os.environ.get("DISTRIBUTED_CASES_DIR", "."))


@case
def checkpoint_and_resume(comm: Any) -> dict:
    """Epochs 0-1 with a checkpoint per epoch, then a resumed fit to epoch 4 from the epoch-1 file; the
    uninterrupted run's parameters are the reference. Records who wrote files."""
    writers: list[str] = []
    original = checkpoint._atomic_write

    def recording(path: Any, chunks: Any) -> Any:
        writers.append(f"rank {rank(comm)} wrote {Path(path).name}")
        return original(path, chunks)

    folder = _run_dir() / f"checkpoints-{'mpi' if comm is not None else 'single'}"
    folder.mkdir(exist_ok=True)
    x, labels, _ = data()
    model = network(bp.Dropout(0.3))
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    saver = bp.ModelCheckpoint(str(folder / "epoch{epoch}.bpk"), optimizer=optimizer)
    checkpoint._atomic_write = recording
    try:
        first = train(comm, model, bp.losses.CrossEntropy(), optimizer, x, labels, epochs=2, callbacks=[saver])
    finally:
        checkpoint._atomic_write = original
    restored = bp.load_checkpoint(folder / "epoch1.bpk")
    resumed = train(comm, restored.model, bp.losses.CrossEntropy(), restored.optimizer, x, labels, epochs=4,
                    initial_epoch=2)
    return {**resumed, "first": first["history"], "writers": writers, "files": sorted(p.name for p in folder.iterdir())}


@case
def unwritable_checkpoint(comm: Any) -> dict:
    """Rank 0 alone writes, into a folder that does not exist: its error stops every rank."""
    x, labels, _ = data()
    model = network()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    saver = bp.ModelCheckpoint(str(_run_dir() / "missing" / "model.bpk"))
    try:
        model.fit(x, labels, bp.losses.CrossEntropy(), optimizer, epochs=2, verbose=0, seed=0,
                  **({} if comm is None else {"communicator": comm}), callbacks=[saver])
    except bp.errors.CheckpointError as error:
        return outcome(model, optimizer, error=error)
    return outcome(model, optimizer)


@case
def progress_lines(comm: Any) -> dict:
    """verbose=2 prints one line per epoch, on rank 0 only."""
    import contextlib
    import io

    x, labels, _ = data()
    model = network()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels,
                       verbose=2)
    return {**result, "printed": printed.getvalue()}


@case
def warning_on_root(comm: Any) -> dict:
    """A model ending in Softmax trained with CrossEntropy(from_logits=True) warns, on rank 0 only."""
    import warnings

    x, labels, _ = data()
    model = bp.Sequential(bp.Dense(FEATURES, CLASSES), bp.Softmax(), dtype="float64", seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(comm, model, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), x, labels,
                       epochs=1)
    return {**result, "warnings": [type(w.message).__name__ for w in caught]}


@case
def uninterrupted(comm: Any) -> dict:
    x, labels, _ = data()
    model = network(bp.Dropout(0.3))
    return train(comm, model, bp.losses.CrossEntropy(), bp.optim.Adam(model.parameters(), lr=0.01), x, labels,
                 epochs=4)


@case
def size_one(comm: Any) -> dict:
    """Run without mpiexec: init() is a communicator of size 1 (MPI's singleton, or none without mpi4py)."""
    x, labels, _ = data()
    model = network(bp.Dropout(0.2))
    if comm is not None:
        comm = bp.distributed.init()
    result = train(comm, model, bp.losses.CrossEntropy(), bp.optim.Adam(model.parameters(), lr=0.01), x, labels,
                   penalty=bp.penalties.L2(1e-3), metrics=["accuracy"])
    return {**result, "size": 1 if comm is None else comm.size}


def inject_bug() -> None:
    """Weigh each rank's gradient by 1 / size instead of its share of the batch."""
    size = int(os.environ.get("PMI_SIZE", "1"))
    for loss in (bp.losses.Loss, bp.losses.CrossEntropy):
        loss.share = lambda self, part, whole: 1.0 / size


def main(arguments: list[str]) -> None:
    out = Path(arguments[0])
    names = [name for name in arguments[1:] if not name.startswith("--")] or list(CASES)
    if "--inject-bug" in arguments:
        inject_bug()
    os.environ["DISTRIBUTED_CASES_DIR"] = str(out)
    comm = bp.distributed.init()
    for name in names:
        try:
            result = CASES[name](comm)
        except Exception as error:  # noqa: BLE001 -- recorded, so that one case's failure shows as that case's
            result = {"crashed": f"{type(error).__name__}: {error}"}
        (out / f"{name}.{comm.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
