"""`Optimizer`: updates parameters from their ``.grad``; its per-parameter slots live in ``parameter.state``.

Because the slots live on the parameters, ``model.to(device)`` moves them and checkpoints save them, with no
optimiser in hand. The optimiser itself keeps only host scalars: hyper-parameters, the number of steps taken and
how many of them updated each parameter (a parameter without a gradient is skipped, as in ``torch.optim``).

A fresh optimiser starts fresh slots, whatever an earlier optimiser left on the parameters; one restored with
``load_state_dict`` continues the slots it finds there (that is how a checkpoint resumes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from backprop.errors import ArgumentTypeError, CheckpointError, ConfigurationError
from backprop.parameter import Parameter
from backprop.validation import is_real, number


def check_learning_rate(lr: Any, allow_zero: bool = False) -> float:
    """A learning rate is a finite number > 0; restoring a state allows 0, where a schedule may have annealed it."""
    if not is_real(lr) or lr < 0 or (lr == 0 and not allow_zero):
        raise ConfigurationError(f"learning rate must be a finite number > 0, got {lr!r}")
    return float(lr)


def check_fraction(name: str, value: Any, meaning: str, closed: bool = False) -> float:
    """``value`` as a float in [0, 1) (in [0, 1] when ``closed``), or a `ConfigurationError` saying what it means."""
    return number(value, name, low=0.0, high=1.0, high_open=not closed, meaning=meaning)


def check_betas(betas: Any) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``: the decay rates of the running means of the gradient and of its square."""
    if isinstance(betas, (str, bytes, dict)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ConfigurationError(f"betas must be a pair (beta1, beta2) such as (0.9, 0.999), got {betas!r}")
    return (
        check_fraction("betas[0]", betas[0], "decay of the running mean of the gradient, e.g. 0.9"),
        check_fraction("betas[1]", betas[1], "decay of the running mean of the squared gradient, e.g. 0.999"),
    )


def check_eps(eps: Any) -> float:
    return number(eps, "eps", low=0.0, low_open=True, meaning="it keeps the denominator away from 0")


def check_weight_decay(weight_decay: Any) -> float:
    return number(weight_decay, "weight_decay", low=0.0, meaning="0 turns it off")


def saved_count(value: Any, owner: str, name: str) -> int:
    """A step count read back from a state dict: an int >= 0, else `CheckpointError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"{owner} has {name}={value!r}; expected an integer >= 0")
    return value


def check_saved_hyperparameters(state: dict, owner: Any, kind: str) -> None:
    """`CheckpointError` unless ``state`` holds exactly ``owner.hyperparameters()``'s names."""
    expected = set(owner.hyperparameters())
    if set(state) != expected:
        raise CheckpointError(
            f"{kind} state does not fit {type(owner).__name__}: missing {sorted(expected - set(state))}, "
            f"unexpected {sorted(set(state) - expected)}"
        )


def parameter_list(params: Any, owner: str) -> list[Parameter]:
    """``params`` as a list of distinct `Parameter` objects, or a `ConfigurationError` saying to pass
    ``model.parameters()`` (a model given in their place is named as such)."""
    if hasattr(params, "parameters") and callable(params.parameters):
        raise ArgumentTypeError(f"{owner} takes the model's parameters, not the model: pass model.parameters(), "
                                f"e.g. {owner}(model.parameters(), lr=0.01)")
    if isinstance(params, (Parameter, str, bytes, dict)) or not isinstance(params, Iterable):
        raise ArgumentTypeError(f"{owner} takes an iterable of Parameter objects: pass model.parameters(), "
                                f"got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ConfigurationError(f"{owner} got no parameters; pass model.parameters()")
    strangers = [type(p).__name__ for p in params if not isinstance(p, Parameter)]
    if strangers:
        raise ArgumentTypeError(f"{owner} takes Parameter objects (pass model.parameters()), got {strangers[0]}")
    if len({id(p) for p in params}) != len(params):
        raise ConfigurationError(f"a parameter appears twice in {owner}'s parameters; pass each once")
    return params


class Optimizer:
    """Base class: ``step()`` calls ``update(parameter, step)`` for every parameter that has a gradient.

    ``step`` is how many times this optimiser has updated that parameter, this update included (1 on the first).
    Subclasses validate and set their hyper-parameters in ``set_hyperparameters`` (which ``load_state_dict``
    calls too) and list them in ``hyperparameters()``.
    """

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = parameter_list(params, type(self).__name__)
        self.lr = check_learning_rate(lr)
        self.steps = 0
        self.parameter_steps = [0] * len(self.params)

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.zero_grad()

    def step(self) -> None:
        """Update every parameter that has a gradient. The bookkeeping is all-or-nothing per parameter: an
        exception inside a parameter's update (KeyboardInterrupt, out of memory) leaves its step count and its
        set of slots as they were before the call, so the optimiser stays usable; ``steps`` counts the call
        only if at least one parameter completed its update."""
        completed = False
        try:
            with self.params[0].backend.activate():
                for index, parameter in enumerate(self.params):
                    if parameter.has_grad:
                        slots = dict(parameter.state)
                        try:
                            self.update(parameter, self.parameter_steps[index] + 1)
                        except BaseException:
                            parameter.state = slots  # drops slots this update created and did not finish
                            raise
                        self.parameter_steps[index] += 1
                        completed = True
        finally:
            if completed:
                self.steps += 1

    def update(self, parameter: Parameter, step: int) -> None:
        raise NotImplementedError

    def slot(self, parameter: Parameter, name: str, step: int) -> Any:
        """The array ``parameter.state[name]``: new zeros on the parameter's first update, the stored one after."""
        if step == 1:
            parameter.state[name] = parameter.backend.xp.zeros_like(parameter.value)
        elif name not in parameter.state:
            raise CheckpointError(
                f"parameter {parameter.name!r} has no optimiser slot {name!r} although {type(self).__name__} has "
                f"updated it {step - 1} times: restore the model's optimiser state (parameter.state, saved with the "
                "model) together with the optimiser's state_dict, or start a fresh optimiser"
            )
        return parameter.state[name]

    def hyperparameters(self) -> dict:
        """Host scalars that define the optimiser (saved in checkpoints)."""
        return {"lr": self.lr}

    def set_hyperparameters(self, lr: float) -> None:
        """Validate and set the hyper-parameters (the constructor has already refused lr = 0)."""
        self.lr = check_learning_rate(lr, allow_zero=True)

    def state_dict(self) -> dict:
        """JSON-able host data: the type, step counts and hyper-parameters (the slots live on the parameters)."""
        return {
            "type": type(self).__name__,
            "steps": self.steps,
            "parameter_steps": list(self.parameter_steps),
            **self.hyperparameters(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict()`` returned (also after a JSON round trip); raises `CheckpointError` if it
        belongs to another optimiser or another set of parameters."""
        state = dict(state)
        kind = state.pop("type", None)
        if kind != type(self).__name__:
            raise CheckpointError(f"this optimiser state belongs to {kind!r}, not to {type(self).__name__}")
        steps = saved_count(state.pop("steps", None), "optimiser state", "steps")
        parameter_steps = state.pop("parameter_steps", [steps] * len(self.params))
        if (
            not isinstance(parameter_steps, (list, tuple))
            or len(parameter_steps) != len(self.params)
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= steps for s in parameter_steps)
        ):
            raise CheckpointError(
                f"optimiser state has parameter_steps={parameter_steps!r}; expected {len(self.params)} integers "
                f"in [0, {steps}], one per parameter"
            )
        check_saved_hyperparameters(state, self, "optimiser")
        self.set_hyperparameters(**state)
        self.steps = steps
        self.parameter_steps = list(parameter_steps)

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({arguments})"
