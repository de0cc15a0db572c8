"""Gradient clipping against exploding gradients (``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``).

By global norm: with N = ||(g_1, ..., g_k)||_p over every gradient at once (p = 2 by default),
    g_i = g_i * min(1, max_norm / (N + 1e-6))        (the direction is kept, the length capped near max_norm)
By value:
    g_i = clip(g_i, -clip_value, clip_value)          (elementwise; the direction may change)

Both act in place on ``parameter.grad`` between the backward pass and ``optimizer.step()``; parameters without
a gradient are skipped.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from backprop.data import constant
from backprop.errors import DeviceError, NonFiniteError
from backprop.optim.base import parameter_list
from backprop.parameter import Parameter
from backprop.validation import number


def _norm_type(norm_type: Any) -> float:
    """A p-norm's p: a number > 0, or ``math.inf`` for the largest absolute entry."""
    return math.inf if norm_type == math.inf else number(norm_type, "norm_type", low=0.0, low_open=True,
                                                         meaning="or math.inf")


def _with_gradients(params: Iterable[Parameter]) -> list[Parameter]:
    params = [] if isinstance(params, (list, tuple)) and not params else parameter_list(params, "gradient clipping")
    with_gradients = [p for p in params if p.has_grad]
    backends = {p.backend.spec for p in with_gradients}
    if len(backends) > 1:
        raise DeviceError(f"the parameters live on several devices {sorted(backends)}; clip each model separately")
    return with_gradients


def clip_grad_norm(
    params: Iterable[Parameter], max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> Any:
    """Scale all gradients together so that their global ``norm_type``-norm is at most ``max_norm``.

    Returns the norm before clipping as a 0-d array on the parameters' device, in their dtype (``float(norm)``
    reads it), as ``torch.nn.utils.clip_grad_norm_`` returns a tensor: the clipping itself never waits for the
    device. The gradients are always multiplied by min(1, max_norm / (N + 1e-6)), which is exactly 1 below the
    cap. ``norm_type`` may be ``math.inf`` (the largest absolute entry). With ``error_if_nonfinite`` the norm is
    read on the host (one wait) and a NaN or infinite norm raises `NonFiniteError` before anything is scaled;
    otherwise the gradients are scaled as PyTorch does (by 0 for an infinite norm, by NaN for a NaN one).
    Without gradients the norm is 0.0.
    """
    max_norm = number(max_norm, "max_norm", low=0.0, low_open=True)
    norm_type = _norm_type(norm_type)
    with_gradients = _with_gradients(params)
    if not with_gradients:
        return 0.0
    backend = with_gradients[0].backend
    xp = backend.xp
    with backend.activate():
        if norm_type == math.inf:
            total = xp.max(xp.abs(with_gradients[0].grad))
            for parameter in with_gradients[1:]:
                total = xp.maximum(total, xp.max(xp.abs(parameter.grad)))
        else:
            total = None
            for parameter in with_gradients:
                grad = parameter.grad
                power = xp.sum(grad * grad) if norm_type == 2.0 else xp.sum(xp.abs(grad) ** norm_type)
                total = power if total is None else total + power
            total = xp.sqrt(total) if norm_type == 2.0 else total ** (1.0 / norm_type)
        if error_if_nonfinite and not bool(xp.isfinite(total)):
            raise NonFiniteError(
                f"the gradients' total {norm_type:g}-norm is {float(total)}: the loss or the gradients overflowed "
                "or became NaN; lower the learning rate, check the data, or pass error_if_nonfinite=False"
            )
        coefficient = xp.minimum(max_norm / (total + 1e-6), constant(1.0, total))  # NaN stays NaN, as in PyTorch
        for parameter in with_gradients:
            parameter.grad *= coefficient  # stores back on backends whose arrays are immutable
    return total


def clip_grad_value(params: Iterable[Parameter], clip_value: float) -> None:
    """Clip every gradient entry into [-clip_value, clip_value] (NaN stays NaN).

    Computed as min(max(g, -c), c) with 0-d bounds on the device, not with ``xp.clip``: array-api-compat's
    generic ``clip`` (the one it uses for CuPy) writes through boolean masks, a host read each
    (``common/_aliases.py``, 1.16)."""
    clip_value = number(clip_value, "clip_value", low=0.0, low_open=True)
    with_gradients = _with_gradients(params)
    if not with_gradients:
        return
    backend = with_gradients[0].backend
    xp = backend.xp
    with backend.activate():
        for parameter in with_gradients:
            grad = parameter.grad
            parameter.grad = xp.minimum(xp.maximum(grad, constant(-clip_value, grad)), constant(clip_value, grad))
