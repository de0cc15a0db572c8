"""`value_and_grad` (one forward and backward pass) and `gradcheck` (finite differences in float64)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from backprop.data import check_finite, host_array, to_backend
from backprop.errors import GradientCheckError
from backprop.losses import Loss


def loss_and_backward(model: Any, loss: Loss, x: Any, y: Any, training: bool = True, penalty: Any = None,
                      prepared: bool = False) -> Any:
    """Zero the gradients, run forward and backward once; return the loss as a 0-d device array.

    With a ``penalty`` (see `backprop.penalties`) the value is loss + R(w) and dR/dw joins the gradients.
    ``prepared=True`` says that ``y`` is already the output of ``loss.prepare_target`` for this batch (on the
    device, shaped like the output, validated), so it is used as it is: ``fit`` prepares and checks all the
    targets once and then skips that work, and its host reads, for every batch.
    """
    model.zero_grad()
    output, backward = model.forward(x, training=training)
    with model.backend.activate():
        target = y if prepared else loss.prepare_target(y, model.backend, model._dtype, tuple(output.shape))
        value, grad_output = loss.value_and_grad(output, target)
    backward(grad_output, need_input_grad=False)
    if penalty is not None:
        with model.backend.activate():
            value = value + penalty.accumulate(model)
    return value


def value_and_grad(model: Any, loss: Loss, x: Any, y: Any, penalty: Any = None) -> tuple[float, dict[str, np.ndarray]]:
    """(loss value, {parameter name: host copy of dL/dparameter}) for one batch, in training mode.

    The gradients also stay in each parameter's ``.grad``, so ``optimizer.step()`` may follow.
    """
    inputs = model.as_input(x)
    check_finite(inputs, model.backend, "input")
    with model.backend.activate():
        targets = to_backend(y, model.backend, model._dtype, what="targets", integral_ok=True)
    check_finite(targets, model.backend, "targets")
    value = loss_and_backward(model, loss, inputs, targets, penalty=penalty)
    return float(value), {name: np.array(model.backend.to_numpy(p.grad), copy=True)
                          for name, p in model.named_parameters()}


def gradcheck(
    model: Any, loss: Loss, x: Any, y: Any, eps: float = 1e-6, tol: float = 1e-5, floor: float | None = None,
    penalty: Any = None, device: "str | None" = None,
) -> float:
    """Compare analytic gradients with central differences (f(w+eps) - f(w-eps)) / 2eps, in float64.

    The check runs on a float64 copy of the model, so a float32 model is checked without float32 rounding
    noise. The copy runs on ``device``; by default on the model's own device when that is the host's (NumPy,
    array-api-strict, torch:cpu) and supports float64, else on the CPU: two loss evaluations and a host read per
    parameter entry would make a GPU wait thousands of times for nothing a CPU cannot check as well. For each element the relative error is
    |analytic - numeric| / max(|analytic|, |numeric|, floor). Returns the largest; raises
    `GradientCheckError` naming the parameter and element where it exceeds ``tol``.

    ``floor`` keeps near-zero gradients from failing on rounding noise: each loss evaluation rounds at about
    1e-16 |L|, so a central difference carries an error of about 1e-16 |L| / eps (1e-10 |L| for eps = 1e-6),
    and entries much smaller than that cannot be checked relatively. The default floor, 1e-4 max(|L|, 1e-8),
    checks them in absolute terms instead, to tol * floor.

    Layers that draw random numbers (`Dropout`) run inside their ``fixed_randomness()``: every forward of the
    check reuses the first draw. A ``penalty`` is added to the loss, as in `loss_and_backward`.
    """
    from backprop.model import Sequential

    if device is None:
        device = model.device if model.backend.supports("float64") and _on_host(model.backend) else "cpu"
    twin = Sequential(*Sequential.from_config(model.config()).layers, input_shape=model.input_shape, device=device,
                      dtype="float64")
    twin.load_state_dict(model.state_dict())
    x_host = np.asarray(model.backend.to_numpy(x) if model.backend.owns(x) else host_array(x, "x"), dtype=np.float64)
    y_host = model.backend.to_numpy(y) if model.backend.owns(y) else host_array(y, "y")

    def loss_at() -> float:
        output = twin.forward(x_host, training=True)[0]
        with twin.backend.activate():
            target = loss.prepare_target(y_host, twin.backend, twin._dtype, tuple(output.shape))
            value = loss(output, target)
            return float(value if penalty is None else value + penalty(twin))

    with contextlib.ExitStack() as fixed:
        for layer in twin.layers:
            fixed.enter_context(layer.fixed_randomness())
        value, analytic = value_and_grad(twin, loss, x_host, y_host, penalty=penalty)
        if floor is None:
            floor = 1e-4 * max(abs(value), 1e-8)
        return _compare(twin, analytic, loss_at, eps, tol, floor)


def _on_host(backend: Any) -> bool:
    """Whether ``backend`` computes on the host CPU (CuPy and torch's CUDA devices do not)."""
    return backend.library != "cupy" and getattr(backend.device, "type", "cpu") != "cuda"


def _compare(twin: Any, analytic: dict, loss_at: Any, eps: float, tol: float, floor: float) -> float:
    """gradcheck's element-by-element comparison on the float64 twin; returns the largest relative error."""
    worst = 0.0
    for name, parameter in twin.named_parameters():
        values = np.array(twin.backend.to_numpy(parameter.value), dtype=np.float64, copy=True)
        numeric = np.empty_like(values)
        for index in np.ndindex(values.shape):
            original = values[index]
            values[index] = original + eps
            parameter.value = twin.backend.to_device(values, twin._dtype)
            plus = loss_at()
            values[index] = original - eps
            parameter.value = twin.backend.to_device(values, twin._dtype)
            minus = loss_at()
            values[index] = original
            numeric[index] = (plus - minus) / (2 * eps)
        parameter.value = twin.backend.to_device(values, twin._dtype)
        errors = np.abs(analytic[name] - numeric) / np.maximum(np.maximum(np.abs(analytic[name]), np.abs(numeric)), floor)
        if errors.size:
            at = np.unravel_index(int(np.argmax(errors)), errors.shape)
            if errors[at] > tol:
                raise GradientCheckError(
                    f"gradient of {name!r} at {tuple(int(i) for i in at)}: analytic {analytic[name][at]:.10g}, "
                    f"finite differences {numeric[at]:.10g} (relative error {errors[at]:.3g} > {tol:g})"
                )
            worst = max(worst, float(errors[at]))
    return worst
