"""Learning-rate schedules: call ``schedule.step()`` once per epoch (or per batch), after ``optimizer.step()``.

Each schedule sets ``optimizer.lr`` from the learning rate the optimiser had when the schedule was made (the base
rate lr_0) and the number t of ``step()`` calls so far, by a closed formula (the values of
``torch.optim.lr_scheduler``'s schedules of the same name, to rounding):

    StepLR:             lr_t = lr_0 * gamma ^ floor(t / step_size)
    ExponentialLR:      lr_t = lr_0 * gamma ^ t
    CosineAnnealingLR:  lr_t = eta_min + (lr_0 - eta_min) * (1 + cos(pi * t / T_max)) / 2
                        (after T_max the rate rises again along the cosine, as PyTorch's does)
    LinearWarmup:       lr_t = lr_0 * (f + (1 - f) * t / warmup_steps) for t < warmup_steps, f = start_factor;
                        then lr_0, or the wrapped schedule's rate at t - warmup_steps (``after=``)

``state_dict()`` is JSON-able host data, so checkpoints can save a schedule next to its optimiser.
A schedule is also a `fit` callback that steps once per epoch: ``model.fit(..., callbacks=[StepLR(opt, 10)])``.
"""

from __future__ import annotations

import math
from typing import Any

from backprop.callbacks import Callback
from backprop.errors import CheckpointError, ConfigurationError
from backprop.optim.base import Optimizer, check_learning_rate, check_saved_hyperparameters, saved_count
from backprop.validation import instance, integer, number


def _check_factor(name: str, value: Any) -> float:
    return number(value, name, low=0.0, high=1.0, low_open=True, meaning="a multiplier of the learning rate")


class Schedule(Callback):
    """Base class: ``step()`` advances t by one and sets ``optimizer.lr = lr_at(t)``; t = 0 leaves lr_0.

    As a `fit` callback it calls ``step()`` at the end of every epoch.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        instance(optimizer, Optimizer, f"{type(self).__name__}'s optimizer", "an optimiser from bp.optim, e.g. "
                 "bp.optim.SGD(model.parameters(), lr=0.1)")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_step = 0

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one step; set and return the optimiser's new learning rate."""
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)
        return self.optimizer.lr

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.step()

    def hyperparameters(self) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_step": self.last_step,
                **self.hyperparameters()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s data (hyper-parameters included) and set the optimiser's rate to match."""
        state = dict(state)
        if state.pop("type", None) != type(self).__name__:
            raise CheckpointError(f"this schedule state is not for {type(self).__name__}: {state!r}")
        last_step = saved_count(state.pop("last_step", None), "schedule state", "last_step")
        self.base_lr = check_learning_rate(state.pop("base_lr", None), "base_lr", allow_zero=False)
        check_saved_hyperparameters(state, self.hyperparameters(), type(self).__name__, "schedule")
        self.set_hyperparameters(**state)
        self.last_step = last_step
        self.optimizer.lr = self.lr_at(last_step)

    # (*args: Any, **kwargs: Any) lets each schedule declare its own keyword parameters (mypy reads it as "...")
    def set_hyperparameters(self, *args: Any, **hyperparameters: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({arguments}, last_step={self.last_step})"


class StepLR(Schedule):
    """Multiply the rate by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        self.set_hyperparameters(step_size, gamma)

    def set_hyperparameters(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = integer(step_size, "step_size")
        self.gamma = _check_factor("gamma", gamma)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)

    def hyperparameters(self) -> dict:
        return {"step_size": self.step_size, "gamma": self.gamma}


class ExponentialLR(Schedule):
    """Multiply the rate by ``gamma`` every step."""

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        super().__init__(optimizer)
        self.set_hyperparameters(gamma)

    def set_hyperparameters(self, gamma: float) -> None:
        self.gamma = _check_factor("gamma", gamma)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma**step

    def hyperparameters(self) -> dict:
        return {"gamma": self.gamma}


class CosineAnnealingLR(Schedule):
    """Anneal the rate from lr_0 to ``eta_min`` along half a cosine over ``T_max`` steps."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        self.set_hyperparameters(T_max, eta_min)

    def set_hyperparameters(self, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = integer(T_max, "T_max")
        self.eta_min = number(eta_min, "eta_min", low=0.0, high=self.base_lr,
                              meaning="at most the optimiser's learning rate")

    def lr_at(self, step: int) -> float:
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + math.cos(math.pi * step / self.T_max)) / 2.0

    def hyperparameters(self) -> dict:
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearWarmup(Schedule):
    """Raise the rate linearly from ``start_factor * lr_0`` to lr_0 over ``warmup_steps`` steps, then hand over
    to ``after`` (a schedule built on the same optimiser before this one, and never stepped itself) or keep lr_0.

    ``LinearWarmup(opt, 5, 0.1, after=CosineAnnealingLR(opt, T_max=95))`` warms up for 5 steps, then anneals.
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 1.0 / 3, after: Schedule | None = None
    ) -> None:
        super().__init__(optimizer)
        if after is not None:
            if not isinstance(after, Schedule) or after.optimizer is not optimizer:
                raise ConfigurationError("after must be a schedule built on the same optimiser as the warm-up")
            if after.last_step != 0:
                raise ConfigurationError("the schedule after the warm-up must not have been stepped yet")
            self.base_lr = after.base_lr
        self.after = after
        self.set_hyperparameters(warmup_steps, start_factor)
        optimizer.lr = self.base_lr * self.start_factor

    def set_hyperparameters(self, warmup_steps: int, start_factor: float = 1.0 / 3) -> None:
        self.warmup_steps = integer(warmup_steps, "warmup_steps")
        self.start_factor = _check_factor("start_factor", start_factor)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps)
        if self.after is None:
            return self.base_lr
        return self.after.lr_at(step - self.warmup_steps)

    def hyperparameters(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "start_factor": self.start_factor}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "after": None if self.after is None else self.after.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        after = state.pop("after", None)
        if (after is None) != (self.after is None):
            raise CheckpointError(
                "the saved warm-up " + ("had no schedule after it" if after is None else "was followed by a schedule")
                + ", this one " + ("has one" if after is None else "has none")
            )
        if after is not None and self.after is not None:  # both or neither, checked above
            self.after.load_state_dict(after)
        super().load_state_dict(state)

