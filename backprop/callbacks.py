"""Callbacks for ``Sequential.fit``: a small protocol of hooks, each a no-op by default.

``fit`` calls, in order: ``on_train_begin(model)``; per epoch ``on_epoch_begin(epoch)`` then
``on_epoch_end(epoch, logs)`` with ``logs`` the epoch's metrics as floats (``"loss"``, ``"val_loss"``, ...);
finally ``on_train_end(logs)``. A callback stops training by setting ``model.stop_training = True`` (the
model it was given in ``on_train_begin``), as in Keras. ``epoch`` counts from 0.

Differences from Keras's ``keras.callbacks.Callback``: ``on_train_begin`` receives the model (Keras passes
``logs`` and sets ``self.model`` beforehand), ``on_epoch_begin`` receives no ``logs``, and the optional per-batch
hooks ``on_train_batch_begin(step)`` / ``on_train_batch_end(step)`` receive the step counted over the whole ``fit``
and no logs (reading a batch's loss would make the device wait every step). ``fit`` calls them only for callbacks
that define them (`GradientStats` does). A Keras callback therefore does not fit as it is: subclass `Callback` and
override the hooks you need. ``bp.callbacks.ModelCheckpoint`` is ``bp.ModelCheckpoint``.

Callbacks that watch a logged value (`EarlyStopping`, `backprop.ModelCheckpoint`) need to know whether it should
go up or down: ``mode="auto"`` infers it from the name with `monitor_mode` (accuracy-like names go up, loss-like
names go down) and logs the choice on the ``"backprop"`` logger; a name it cannot classify must be given a mode.

Under data-parallel training ``fit(..., communicator=comm)`` every rank runs every callback with the same logs,
and sets ``callback.communicator`` to ``comm`` before ``on_train_begin`` (``None`` without one): a callback
that writes or prints should do so where ``self.communicator is None or self.communicator.is_root``. An error in
a callback on one rank is raised on every rank, and ``stop_training`` set on any rank stops every rank.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from backprop.errors import ConfigurationError
from backprop.validation import choice, flag, instance, integer, number

HOOKS = ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_train_end")
_HIGHER_IS_BETTER = {"accuracy", "acc", "auc", "precision", "recall", "f1", "fbeta", "r2", "iou", "dice", "score"}
_LOWER_IS_BETTER = {"loss", "mse", "mae", "rmse", "error", "entropy", "crossentropy", "perplexity", "hinge"}
logger = logging.getLogger("backprop")


def monitor_mode(monitor: str, mode: str, owner: str) -> str:
    """``"max"`` or ``"min"``: ``mode`` itself, or for ``mode="auto"`` the direction the name implies.

    The name is split into words at non-alphanumeric characters (``"val_accuracy"``: "val", "accuracy"):
    a word such as accuracy, acc, auc, precision, recall or f1 means higher is better ("max"); loss, mse, mae,
    error or entropy means lower is better ("min"). A name with neither raises `ConfigurationError`.
    """
    instance(monitor, str, f"{owner} monitor", "the name of a logged value such as 'val_loss'")
    choice(mode, f"{owner} mode", ("auto", "min", "max"))
    if mode != "auto":
        return mode
    words = set(re.split(r"[^a-z0-9]+", monitor.lower()))
    if words & _HIGHER_IS_BETTER and not words & _LOWER_IS_BETTER:
        inferred = "max"
    elif words & _LOWER_IS_BETTER and not words & _HIGHER_IS_BETTER:
        inferred = "min"
    else:
        raise ConfigurationError(
            f"{owner} cannot tell whether {monitor!r} should go up or down; pass mode='max' (higher is better) "
            "or mode='min' (lower is better)"
        )
    logger.info("%s monitors %r with mode=%r (%s is better)", owner, monitor, inferred,
                "higher" if inferred == "max" else "lower")
    return inferred


class Callback:
    model: Any = None
    communicator: Any = None

    def on_train_begin(self, model: Any) -> None:
        self.model = model

    def on_epoch_begin(self, epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        pass

    def on_train_end(self, logs: dict[str, float]) -> None:
        pass

    def on_train_batch_begin(self, step: int) -> None:
        """Optional: before training step ``step`` (counted from 0 over the whole ``fit``). ``fit`` calls the
        batch hooks only of callbacks that override one, so the others cost nothing per batch."""

    def on_train_batch_end(self, step: int) -> None:
        """Optional: after step ``step``'s optimiser update; the parameters' ``.grad`` still hold its gradients."""


class EarlyStopping(Callback):
    """Stop training after ``patience`` epochs in a row (at least one) in which ``monitor`` did not improve.

    Improvement (mode "min"): value < best - min_delta; mode "max": value > best + min_delta; "auto" infers the
    direction from the name (see `monitor_mode`). With ``restore_best`` the model gets back, when training
    ends, the parameters of its best epoch (host copies taken by ``model.state_dict()`` at each improvement).
    After training: ``best`` (the best value), ``best_epoch`` and ``stopped_epoch`` (None if it never stopped),
    counted from 0 as callbacks see epochs, and ``message``, which says in words (epochs counted from 1, as the
    progress display counts them) when it stopped and which epoch's parameters it restored; ``verbose=1`` (the
    default) prints it, on rank 0 only under data-parallel training.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 restore_best: bool = False, mode: str = "auto", verbose: int = 1) -> None:
        self.verbose = choice(verbose, "EarlyStopping verbose (0 silent, 1 print what happened)", (0, 1))
        self.patience = integer(patience, "patience", low=0)
        self.min_delta = number(min_delta, "min_delta", low=0.0)
        self.monitor, self.restore_best = monitor, flag(restore_best, "restore_best")
        self.mode = monitor_mode(monitor, mode, "EarlyStopping")

    def on_train_begin(self, model: Any) -> None:
        super().on_train_begin(model)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.best_state: dict | None = None
        self.wait = 0
        self.message = ""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            hint = " (pass validation_data to fit)" if self.monitor.startswith("val_") else ""
            raise ConfigurationError(
                f"EarlyStopping monitors {self.monitor!r}, which fit does not log{hint}; the logs have {sorted(logs)}"
            )
        value = logs[self.monitor]
        improved = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if improved:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = self.model.state_dict()
            return
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float]) -> None:
        restored = self.restore_best and self.best_state is not None
        if restored:
            self.model.load_state_dict(self.best_state)
        if self.best_epoch is None:
            return
        best = f"best {self.monitor} {self.best:.6g} at epoch {self.best_epoch + 1}"
        if self.stopped_epoch is not None:
            self.message = (f"EarlyStopping: stopped after epoch {self.stopped_epoch + 1}: {self.monitor} did not "
                            f"improve by more than {self.min_delta:g} for {self.wait} epoch(s); {best}")
        else:
            self.message = f"EarlyStopping: did not stop (training ran its epochs); {best}"
        self.message += (f"; restored the parameters of epoch {self.best_epoch + 1}" if restored
                         else "; the model keeps the parameters of the last epoch")
        logger.info("%s", self.message)
        if self.verbose and (self.communicator is None or self.communicator.is_root):
            print(self.message)


class GradientStats(Callback):
    """Per-layer gradient norms (optionally parameter norms and update/parameter ratios) every ``every`` steps.

    For each layer l (the parameters sharing a path, ``"0.weight"`` and ``"0.bias"`` are layer ``"0"``), at each
    recorded step t, with g the gradients that step's update used, w the parameters after it and w_prev before::

        grad_norm/l    = sqrt(sum over l's parameters of sum g^2)
        param_norm/l   = sqrt(sum w^2)                              (parameters=True)
        update_ratio/l = sqrt(sum (w - w_prev)^2) / param_norm/l    (updates=True; about lr for plain SGD)

    The values go into the `History` that ``fit`` returns, ``history.step_history[name]`` with the steps in
    ``history.steps`` (and into ``self.steps`` / ``self.values`` for a hand-written loop that calls the batch
    hooks). Norms are computed on the device in the model's dtype; each recorded step reads them in one host copy.
    A vanishing gradient shows as grad_norm shrinking by orders of magnitude from the last layer to the first; an
    update ratio far above 1e-3 per step warns of a learning rate too large (Karpathy's rule of thumb).
    """

    def __init__(self, every: int = 1, parameters: bool = False, updates: bool = False) -> None:
        self.every = integer(every, "GradientStats every", meaning="record every N training steps")
        self.parameters, self.updates = flag(parameters, "parameters"), flag(updates, "updates")

    def on_train_begin(self, model: Any) -> None:
        super().on_train_begin(model)
        self.history = getattr(model, "history", None)
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {}
        self._previous: dict[str, Any] = {}

    def _layers(self) -> dict[str, list]:
        layers: dict[str, list] = {}
        for name, parameter in self.model.named_parameters():
            layers.setdefault(name.rpartition(".")[0] or name, []).append(parameter)
        return layers

    def on_train_batch_begin(self, step: int) -> None:
        if self.updates and step % self.every == 0:
            backend = self.model.backend
            with backend.activate():
                self._previous = {name: backend.copy(p.value) for name, p in self.model.named_parameters()}

    def on_train_batch_end(self, step: int) -> None:
        if step % self.every:
            return
        backend, xp = self.model.backend, self.model.backend.xp
        names, values = [], []

        def norm(arrays: list) -> Any:
            return xp.sqrt(sum(xp.sum(a * a) for a in arrays))

        with backend.activate():
            for layer, parameters in self._layers().items():
                grads = [p.grad for p in parameters if p.has_grad]
                if grads:
                    names.append(f"grad_norm/{layer}")
                    values.append(norm(grads))
                if self.parameters or self.updates:
                    weight_norm = norm([p.value for p in parameters])
                    if self.parameters:
                        names.append(f"param_norm/{layer}")
                        values.append(weight_norm)
                    if self.updates and self._previous:
                        names.append(f"update_ratio/{layer}")
                        values.append(norm([p.value - self._previous[p.name] for p in parameters]) / weight_norm)
            host = backend.to_numpy(xp.stack(values)).tolist() if values else []
        self._previous = {}
        record = dict(zip(names, host))
        self.steps.append(step)
        for name, value in record.items():
            self.values.setdefault(name, []).append(value)
        if self.history is not None:
            self.history.append_step(step, record)

