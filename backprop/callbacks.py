"""Callbacks for ``Sequential.fit``: a small protocol of hooks, each a no-op by default.

``fit`` calls, in order: ``on_train_begin(model)``; per epoch ``on_epoch_begin(epoch)`` then
``on_epoch_end(epoch, logs)`` with ``logs`` the epoch's metrics as floats (``"loss"``, ``"val_loss"``, ...);
finally ``on_train_end(logs)``. A callback stops training by setting ``model.stop_training = True`` (the
model it was given in ``on_train_begin``), as in Keras. ``epoch`` counts from 0.
"""

from __future__ import annotations

from typing import Any

from backprop.errors import ConfigurationError


class Callback:
    model: Any = None

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

    Improvement (mode "min"): value < best - min_delta; mode "max": value > best + min_delta; "auto" picks "max"
    for names containing "accuracy" and "min" otherwise. With ``restore_best`` the model gets back, when training
    ends, the parameters of its best epoch (host copies taken by ``model.state_dict()`` at each improvement).
    After training: ``best`` (the best value), ``best_epoch`` and ``stopped_epoch`` (None if it never stopped).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 restore_best: bool = False, mode: str = "auto") -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ConfigurationError(f"patience must be an integer >= 0, got {patience!r}")
        if not min_delta >= 0:
            raise ConfigurationError(f"min_delta must be >= 0, got {min_delta!r}")
        if mode not in ("auto", "min", "max"):
            raise ConfigurationError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.restore_best = monitor, patience, float(min_delta), restore_best
        self.mode = ("max" if "accuracy" in monitor else "min") if mode == "auto" else mode

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
