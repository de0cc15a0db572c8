"""Optimisers, gradient clipping and learning-rate schedules: backward, ``clip_grad_norm``, ``opt.step()``,
``schedule.step()``. An optimiser of your own subclasses `Optimizer`, declares its hyper-parameters with `Hyper`
and is registered for checkpoints with `register_optimizer`.

Storage: on NumPy, CuPy and torch the built-in optimisers keep their parameters, gradients and slots as views into
one flat buffer per kind (`backprop.optim.flat`), so a step is one pass of the update rule, whatever the number of
parameters; elsewhere (JAX, array-api-strict) they update parameter by parameter."""

from backprop.optim.adam import Adam
from backprop.optim.adamw import AdamW
from backprop.optim.base import REQUIRED, Hyper, Optimizer
from backprop.optim.clipping import clip_grad_norm, clip_grad_value
from backprop.optim.registry import OPTIMIZERS, register_optimizer
from backprop.optim.rmsprop import RMSprop
from backprop.optim.schedules import CosineAnnealingLR, ExponentialLR, LinearWarmup, Schedule, StepLR
from backprop.optim.sgd import SGD

for _cls in (SGD, Adam, AdamW, RMSprop):
    register_optimizer(_cls)
del _cls

__all__ = [
    "Adam", "AdamW", "CosineAnnealingLR", "ExponentialLR", "Hyper", "LinearWarmup", "OPTIMIZERS", "Optimizer",
    "REQUIRED", "RMSprop", "SGD", "Schedule", "StepLR", "clip_grad_norm", "clip_grad_value", "register_optimizer",
]
