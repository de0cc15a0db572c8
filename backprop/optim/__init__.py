"""Optimisers: ``opt.zero_grad()``, backward, ``opt.step()``."""

from backprop.optim.base import Optimizer
from backprop.optim.sgd import SGD

__all__ = ["Optimizer", "SGD"]
