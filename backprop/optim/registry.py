"""The optimiser registry: optimiser classes by name, as checkpoints find them.

A checkpoint stores an optimiser as ``{"type": class name, "steps", "parameter_steps", <hyper-parameters>}``;
loading looks the name up here and rebuilds it with ``cls.from_state_dict``, so nothing is imported or executed
on load. The built-in optimisers are registered by ``backprop.optim``; ``register_optimizer`` adds yours.
"""

from __future__ import annotations

from typing import TypeVar

from backprop.errors import ArgumentTypeError, CheckpointError, ConfigurationError
from backprop.optim.base import Optimizer

OPTIMIZERS: dict[str, type[Optimizer]] = {}

OptimizerClass = TypeVar("OptimizerClass", bound=type[Optimizer])


def register_optimizer(cls: OptimizerClass) -> OptimizerClass:
    """Make an optimiser class known by name to checkpoints (usable as a decorator); returns the class.

    Checkpoints rebuild an optimiser from its declared hyper-parameters (`backprop.optim.Hyper`) alone, without
    calling ``__init__`` (see ``Optimizer.from_state_dict``), so the class must not define a constructor of its
    own; see the README's "Writing an optimiser".
    """
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ArgumentTypeError(f"register_optimizer takes a subclass of bp.optim.Optimizer, got {cls!r}")
    if cls.__init__ is not Optimizer.__init__:
        raise ConfigurationError(
            f"{cls.__name__} defines __init__, which a checkpoint would not call (it rebuilds an optimiser from its "
            "declared hyper-parameters): declare each as a class attribute, name = bp.optim.Hyper(default, check), "
            "and drop __init__"
        )
    OPTIMIZERS[cls.__name__] = cls
    return cls


def optimizer_class(name: object) -> type[Optimizer]:
    """The registered optimiser class called ``name``, else `CheckpointError` naming the known ones and the fix."""
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise CheckpointError(
            f"unknown optimiser type {name!r}; known: {', '.join(sorted(OPTIMIZERS))}. An optimiser class of your "
            "own must be registered with bp.register_optimizer before loading"
        )
    return OPTIMIZERS[name]


def check_registered(optimizer: Optimizer) -> None:
    """`CheckpointError` unless ``optimizer``'s class is the one registered under its name (saving needs that)."""
    name = type(optimizer).__name__
    if OPTIMIZERS.get(name) is not type(optimizer):
        raise CheckpointError(
            f"optimiser {name} is not registered, so a checkpoint could not rebuild it: decorate its class with "
            "@bp.register_optimizer (see the README's 'Writing an optimiser')"
        )
