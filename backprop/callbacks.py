"""Callbacks for ``Sequential.fit``: a small protocol of hooks, each a no-op by default.

``fit`` calls, in order: ``on_train_begin(model)``; per epoch ``on_epoch_begin(epoch)`` then
``on_epoch_end(epoch, logs)`` with ``logs`` the epoch's metrics as floats (``"loss"``, ``"val_loss"``, ...);
finally ``on_train_end(logs)``. A callback stops training by setting ``model.stop_training = True`` (the
model it was given in ``on_train_begin``), as in Keras. ``epoch`` counts from 0.

Differences from Keras's ``keras.callbacks.Callback``: ``on_train_begin`` receives the model (Keras passes
``logs`` and sets ``self.model`` beforehand), ``on_epoch_begin`` receives no ``logs``, and there are no per-batch
hooks. A Keras callback therefore does not fit as it is: subclass `Callback` and override the hooks you need.

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


class EarlyStopping(Callback):
    """Stop training after ``patience`` epochs in a row (at least one) in which ``monitor`` did not improve.

    Improvement (mode "min"): value < best - min_delta; mode "max": value > best + min_delta; "auto" infers the
    direction from the name (see `monitor_mode`). With ``restore_best`` the model gets back, when training
    ends, the parameters of its best epoch (host copies taken by ``model.state_dict()`` at each improvement).
    After training: ``best`` (the best value), ``best_epoch`` and ``stopped_epoch`` (None if it never stopped).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 restore_best: bool = False, mode: str = "auto") -> None:
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
        if self.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
