"""Optimisers, gradient clipping and learning-rate schedules: backward, ``clip_grad_norm``, ``opt.step()``,
``schedule.step()``."""

from backprop.optim.adam import Adam
from backprop.optim.adamw import AdamW
from backprop.optim.base import Optimizer
from backprop.optim.clipping import clip_grad_norm, clip_grad_value
from backprop.optim.rmsprop import RMSprop
from backprop.optim.schedules import CosineAnnealingLR, ExponentialLR, LinearWarmup, Schedule, StepLR
from backprop.optim.sgd import SGD

__all__ = [
    "Adam", "AdamW", "CosineAnnealingLR", "ExponentialLR", "LinearWarmup", "Optimizer", "RMSprop", "SGD", "Schedule",
    "StepLR", "clip_grad_norm", "clip_grad_value",
]
