"""`value_and_grad` (one forward and backward pass) and `gradcheck` (finite differences in float64)."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from backprop.data import check_finite, host_array, to_backend
from backprop.errors import ArgumentTypeError, GradientCheckError
from backprop.layers.registry import check_configs
from backprop.losses import Loss
from backprop.layers.base import Layer
from backprop.validation import describe, instance, integer


def loss_and_backward(model: Any, loss: Loss, x: Any, y: Any, training: bool = True, penalty: Any = None,
                      prepared: bool = False) -> Any:
    """Zero the gradients, run forward and backward once; return the loss as a 0-d device array.

    With a ``penalty`` (see `backprop.penalties`) the value is loss + R(w) and dR/dw joins the gradients.
    ``prepared=True`` says that ``y`` is already the output of ``loss.prepare_target`` for this batch (on the
    device, shaped like the output, validated), so it is used as it is: ``fit`` prepares and checks all the
    targets once and then skips that work, and its host reads, for every batch. Otherwise the targets are checked
    against the output's shape before the forward pass, so refused targets change nothing (no gradient zeroed,
    no running statistic or random state advanced).
    """
    target = y
    if not prepared:
        x = model.as_input(x)  # builds an unbuilt model, so its output shape is known
        with model.backend.activate():
            target = loss.prepare_target(y, model.backend, model._dtype, (x.shape[0], *model.output_shape))
    model.zero_grad()
    output, backward = model.forward(x, training=training)
    with model.backend.activate():
        value, grad_output = loss.value_and_grad_on(model.backend, output, target)
    backward(grad_output, need_input_grad=False)
    if penalty is not None:
        with model.backend.activate():
            value = value + penalty.accumulate(model)
    return value


def check_model_and_loss(model: Any, loss: Any, caller: str) -> None:
    """`ArgumentTypeError` unless ``model`` is a model (a `Sequential`) and ``loss`` a `Loss` (naming swapped
    arguments)."""
    if isinstance(model, Loss) and isinstance(loss, Layer):
        raise ArgumentTypeError(f"{caller} takes (model, loss, x, y): the model and the loss are swapped")
    if not (isinstance(model, Layer) and callable(getattr(model, "as_input", None))):
        raise ArgumentTypeError(f"{caller}'s model must be a bp.Sequential, got {describe(model)}")
    instance(loss, Loss, f"{caller}'s loss", "a backprop loss such as bp.losses.MeanSquaredError()")


def value_and_grad(model: Any, loss: Loss, x: Any, y: Any, penalty: Any = None) -> tuple[float, dict[str, np.ndarray]]:
    """(loss value, {parameter name: host copy of dL/dparameter}) for one batch, in training mode.

    The gradients also stay in each parameter's ``.grad``, so ``optimizer.step()`` may follow.
    """
    check_model_and_loss(model, loss, "value_and_grad")
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
    penalty: Any = None, device: "str | None" = None, entries: int | None = None, seed: int = 0,
) -> float:
    """Compare analytic gradients, of every parameter and of the input (dL/dx), with central differences
    (f(w+eps) - f(w-eps)) / 2eps, in float64. Works on any model, nested and residual ones included.

    The check runs on a float64 clone of the model (``model.clone(device, "float64")``), so a
    float32 model is checked without float32 rounding noise and the model itself is left as it was. The clone
    runs on ``device``; by default on the model's own device when that is the host's (NumPy, array-api-strict,
    torch:cpu) and supports float64, else on the CPU: two loss evaluations and a host read per entry would make
    a GPU wait thousands of times for nothing a CPU cannot check as well. For each element the relative error is
    |analytic - numeric| / max(|analytic|, |numeric|, floor). Returns the largest; raises `GradientCheckError`
    naming the parameter (or the input) and element where it exceeds ``tol``.

    ``entries=K`` checks K entries per parameter (and of the input) drawn without replacement from
    ``numpy.random.default_rng(seed)`` instead of all of them: two loss evaluations per entry make a full check of
    a large model slow. ``floor`` keeps near-zero gradients from failing on rounding noise: each loss evaluation
    rounds at about 1e-16 |L|, so a central difference carries an error of about 1e-16 |L| / eps (1e-10 |L| for
    eps = 1e-6), and entries much smaller than that cannot be checked relatively. The default floor,
    1e-4 max(|L|, 1e-8), checks them in absolute terms instead, to tol * floor.

    Every layer must rebuild from its ``config()`` (`ConfigurationError` says what to implement otherwise): a
    layer that cannot is one a checkpoint could not restore. Layers that draw random numbers (`Dropout`) run
    inside their ``fixed_randomness()``: every forward of the check reuses the first draw. A ``penalty`` is added
    to the loss, as in `loss_and_backward`.
    """
    check_model_and_loss(model, loss, "gradcheck")
    check_configs(model)
    if entries is not None:
        integer(entries, "entries", meaning="entries checked per parameter")
    if device is None:
        device = model.device if model.backend.supports("float64") and _on_host(model.backend) else "cpu"
    twin = model.clone(device, "float64")
    backend = twin.backend
    x_host = np.asarray(model.backend.to_numpy(x) if model.backend.owns(x) else host_array(x, "x"), dtype=np.float64)
    y_host = model.backend.to_numpy(y) if model.backend.owns(y) else host_array(y, "y")
    check_finite(twin.as_input(x_host), backend, "input")

    def loss_at(inputs: np.ndarray) -> float:
        output = twin.forward(inputs, training=True)[0]
        with backend.activate():
            target = loss.prepare_target(y_host, backend, twin._dtype, tuple(output.shape))
            value = loss(output, target)
            return float(value if penalty is None else value + penalty(twin))

    with contextlib.ExitStack() as fixed:
        for _, layer in twin.named_layers():
            fixed.enter_context(layer.fixed_randomness())
        twin.zero_grad()
        output, backward = twin.forward(x_host, training=True)
        with backend.activate():
            target = loss.prepare_target(y_host, backend, twin._dtype, tuple(output.shape))
            value, grad_output = loss.value_and_grad(output, target)
        input_grad = np.array(backend.to_numpy(backward(grad_output)), dtype=np.float64, copy=True)
        if penalty is not None:
            with backend.activate():
                value = value + penalty.accumulate(twin)
        value = float(value)
        if floor is None:
            floor = 1e-4 * max(abs(value), 1e-8)
        rng = np.random.default_rng(seed)
        worst = 0.0
        for name, parameter in twin.named_parameters():
            analytic = np.array(backend.to_numpy(parameter.grad), dtype=np.float64, copy=True)

            def loss_with(values: np.ndarray, parameter: Any = parameter) -> float:
                parameter.value = backend.to_device(values, twin._dtype)
                return loss_at(x_host)

            values = np.array(backend.to_numpy(parameter.value), dtype=np.float64, copy=True)
            worst = max(worst, _compare(repr(name), analytic, values, loss_with, _sample(values.shape, entries, rng),
                                        eps, tol, floor))
        return max(worst, _compare("the input x", input_grad, x_host.copy(), loss_at,
                                   _sample(x_host.shape, entries, rng), eps, tol, floor))


def _on_host(backend: Any) -> bool:
    """Whether ``backend`` computes on the host CPU (CuPy and torch's CUDA devices do not)."""
    return backend.library != "cupy" and getattr(backend.device, "type", "cpu") != "cuda"


def _sample(shape: tuple, entries: int | None, rng: np.random.Generator) -> list[tuple]:
    """Every index of ``shape``, or ``entries`` of them drawn without replacement (in increasing order)."""
    size = math.prod(shape)
    if entries is None or entries >= size:
        return list(np.ndindex(shape))
    chosen = np.sort(rng.choice(size, size=entries, replace=False))
    return [tuple(int(i) for i in np.unravel_index(flat, shape)) for flat in chosen]


def _compare(what: str, analytic: np.ndarray, values: np.ndarray, loss_with: Any, indices: list[tuple],
             eps: float, tol: float, floor: float) -> float:
    """Central differences of ``loss_with(values)`` at ``indices`` against ``analytic``; ``values`` is restored
    (and given to ``loss_with`` once more) at the end. Returns the largest relative error."""
    worst = 0.0
    for index in indices:
        original = values[index]
        values[index] = original + eps
        plus = loss_with(values)
        values[index] = original - eps
        minus = loss_with(values)
        values[index] = original
        numeric = (plus - minus) / (2 * eps)
        error = abs(analytic[index] - numeric) / max(abs(analytic[index]), abs(numeric), floor)
        if error > tol:
            loss_with(values)
            raise GradientCheckError(
                f"gradient of {what} at {index}: analytic {analytic[index]:.10g}, finite differences "
                f"{numeric:.10g} (relative error {error:.3g} > {tol:g})"
            )
        worst = max(worst, float(error))
    loss_with(values)
    return worst
