"""Callbacks for ``Sequential.fit``: a small protocol of hooks, each a no-op by default.

``fit`` calls, in order: ``on_train_begin(model)``; per epoch ``on_epoch_begin(epoch)`` then
``on_epoch_end(epoch, logs)`` with ``logs`` the epoch's metrics as floats (``"loss"``, ``"val_loss"``, ...);
finally ``on_train_end(logs)``. A callback stops training by setting ``model.stop_training = True`` (the
model it was given in ``on_train_begin``), as in Keras. ``epoch`` counts from 0.
"""

from __future__ import annotations

from typing import Any


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
