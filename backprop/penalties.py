"""L1 and L2 penalties on parameters: R(w) is added to the loss and dR/dw to each parameter's ``.grad``.

    penalty = bp.penalties.L2(1e-4)                      # 1e-4 * sum of w^2 over the weight matrices
    bp.gradients.loss_and_backward(model, loss, x, y, penalty=penalty)   # value includes R(w)
    bp.gradcheck(model, loss, x, y, penalty=penalty)

By default a penalty applies to every parameter with two or more dimensions (the weight matrices of ``Dense``),
not to biases or normalisation scales, as is customary; ``parameters=["0.weight", ...]`` picks others by name.
Conventions are Keras's: ``L2(c)`` is c * sum w^2 (gradient 2 c w), so an optimiser's weight decay lambda equals
``L2(lambda / 2)`` for plain SGD; ``L1(c)`` is c * sum |w| (gradient c sign(w), 0 at w = 0).
"""

from __future__ import annotations

from typing import Any, Iterable

from backprop.errors import ConfigurationError
from backprop.validation import number


class Penalty:
    """R(w) = l1 * sum |w| + l2 * sum w^2 over the selected parameters;  dR/dw = l1 sign(w) + 2 l2 w."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0, parameters: Iterable[str] | None = None) -> None:
        self.l1, self.l2 = number(l1, "l1 coefficient", low=0.0), number(l2, "l2 coefficient", low=0.0)
        self.parameters = None if parameters is None else tuple(parameters)

    def selected(self, model: Any) -> list:
        """The model's parameters this penalty applies to, in order."""
        named = dict(model.named_parameters())
        if self.parameters is None:
            chosen = [p for p in named.values() if len(p.shape) >= 2]
        else:
            unknown = [name for name in self.parameters if name not in named]
            if unknown:
                raise ConfigurationError(f"penalty names unknown parameters {unknown}; the model has {sorted(named)}")
            chosen = [named[name] for name in self.parameters]
        if not chosen:
            raise ConfigurationError("the penalty applies to no parameter of this model; "
                                     "name them with parameters=[...]")
        return chosen

    def __call__(self, model: Any) -> Any:
        """R(w) as a 0-d array on the model's device."""
        return self._apply(model, accumulate=False)

    def accumulate(self, model: Any) -> Any:
        """Add dR/dw to each selected parameter's ``.grad``; return R(w) (a 0-d device array)."""
        return self._apply(model, accumulate=True)

    def _apply(self, model: Any, accumulate: bool) -> Any:
        """R(w) (and dR/dw added to the gradients); a term whose coefficient is 0 is not computed."""
        xp = model.backend.xp
        total = None
        with model.backend.activate():
            for parameter in self.selected(model):
                w = parameter.value
                value = gradient = None
                if self.l1:
                    value = self.l1 * xp.sum(xp.abs(w))
                    if accumulate:
                        gradient = self.l1 * _sign(xp, w)
                if self.l2:
                    square = self.l2 * xp.sum(w * w)
                    value = square if value is None else value + square
                    if accumulate:
                        slope = (2.0 * self.l2) * w
                        gradient = slope if gradient is None else gradient + slope
                if value is None:  # both coefficients 0: R = 0, with nothing to add to the gradients
                    value = xp.zeros_like(xp.sum(w))
                if gradient is not None:
                    parameter.accumulate(gradient)
                total = value if total is None else total + value
        return total

    def __repr__(self) -> str:
        selection = "" if self.parameters is None else f", parameters={list(self.parameters)!r}"
        return f"{type(self).__name__}(l1={self.l1!r}, l2={self.l2!r}{selection})"


def _sign(xp: Any, w: Any) -> Any:
    """sign(w) = [w > 0] - [w < 0] (0 at w = 0 and at NaN), from two comparisons.

    Not ``xp.sign``: array-api-compat's ``sign`` for CuPy and for torch writes NaN through a boolean mask
    (``out[xp.isnan(x)] = xp.nan``, ``common/_aliases.py`` and ``torch/_aliases.py``, 1.16), and on a GPU a
    boolean-mask write reads the mask's count on the host. A NaN weight makes R(w) NaN anyway."""
    return xp.astype(w > 0, w.dtype) - xp.astype(w < 0, w.dtype)


class L1(Penalty):
    """R(w) = c * sum |w|;  dR/dw = c sign(w)."""

    def __init__(self, c: float, parameters: Iterable[str] | None = None) -> None:
        super().__init__(l1=c, parameters=parameters)


class L2(Penalty):
    """R(w) = c * sum w^2;  dR/dw = 2 c w."""

    def __init__(self, c: float, parameters: Iterable[str] | None = None) -> None:
        super().__init__(l2=c, parameters=parameters)


class L1L2(Penalty):
    """R(w) = l1 * sum |w| + l2 * sum w^2 (elastic net);  dR/dw = l1 sign(w) + 2 l2 w."""
