"""The grouped (multi-tensor) optimiser update: ``Optimizer.update_all`` through the backends' list forms.

(Where every parameter is ready with the same update count, the flat path, ``tests/test_optim_flat.py``, comes
first; here the update counts differ, or the flat path is switched off.)

On torch the list forms are ``torch._foreach_*`` calls; the reference (the base `Backend`) loops over the array-API
expressions. These tests compare the grouped update on torch with the per-parameter update on the reference
backend, run the reference list forms through the grouped path (NumPy, JAX), count the torch operations of one
step, and check the all-or-nothing bookkeeping of an interrupted grouped step.
"""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.parameter import Parameter

torch = pytest.importorskip("torch")

SHAPES = [(5, 3), (3,), (3, 4), (4,), (1, 1)]

CASES = {
    "SGD": lambda p: bp.optim.SGD(p, lr=0.1),
    "SGD-momentum": lambda p: bp.optim.SGD(p, lr=0.1, momentum=0.9),
    "SGD-dampening-decay": lambda p: bp.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.01),
    "SGD-nesterov": lambda p: bp.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
    "Adam": lambda p: bp.optim.Adam(p, lr=0.01),
    "Adam-amsgrad": lambda p: bp.optim.Adam(p, lr=0.01, amsgrad=True),
    "Adam-decay": lambda p: bp.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "AdamW-amsgrad": lambda p: bp.optim.AdamW(p, lr=0.01, amsgrad=True),
}


def reference_backend(spec: str) -> bp.backends.Backend:
    """The same backend with every optional fast path removed: the array-API reference."""
    fast = bp.get_backend(spec)
    return bp.backends.Backend(fast.spec, fast.xp, fast.device)


def make_parameters(backend, dtype: str, shapes=SHAPES) -> list[Parameter]:
    rng = np.random.default_rng(0)
    return [Parameter(f"p{i}", backend.to_device(rng.standard_normal(shape), backend.dtype(dtype)), backend)
            for i, shape in enumerate(shapes)]


def run(backend, build, dtype: str, steps: int = 5) -> list[Parameter]:
    """``steps`` optimiser steps with fixed random gradients; parameter 1 has no gradient on the first two steps
    and parameter 3 none on the third, so the update counts differ between parameters (Adam's groups, SGD's
    first velocity next to running ones)."""
    parameters = make_parameters(backend, dtype)
    optimizer = build(parameters)
    rng = np.random.default_rng(1)
    with backend.activate():
        for step in range(steps):
            for index, parameter in enumerate(parameters):
                parameter.zero_grad()
                gradient = rng.standard_normal(parameter.value.shape)
                if (index == 1 and step < 2) or (index == 3 and step == 2):
                    continue
                parameter.grad = backend.to_device(gradient, backend.dtype(dtype))
            optimizer.step()
    assert optimizer.steps == steps
    return parameters


def assert_same(fast: list[Parameter], reference: list[Parameter], rtol: float) -> None:
    for ours, theirs in zip(fast, reference):
        np.testing.assert_allclose(bp.to_numpy(ours.value), bp.to_numpy(theirs.value), rtol=rtol, atol=rtol)
        assert set(ours.state) == set(theirs.state)
        for name in ours.state:
            np.testing.assert_allclose(bp.to_numpy(ours.state[name]), bp.to_numpy(theirs.state[name]),
                                       rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_foreach_update_on_torch_equals_the_per_parameter_reference(case, dtype):
    fast, reference = bp.get_backend("torch:cpu"), reference_backend("torch:cpu")
    assert fast.multi_tensor and not reference.multi_tensor
    assert CASES[case](make_parameters(fast, dtype)).groups_updates(fast)
    rtol = 1e-12 if dtype == "float64" else 1e-6
    assert_same(run(fast, CASES[case], dtype), run(reference, CASES[case], dtype), rtol)


@pytest.mark.parametrize("spec", ["numpy", "jax"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_reference_list_forms_equal_the_per_parameter_update(case, spec):
    """The grouped path on the reference list forms (new arrays, stored back: JAX's arrays are immutable)."""
    if spec == "jax":
        pytest.importorskip("jax")
    grouped = reference_backend(spec)
    grouped.multi_tensor = True  # this instance only: the grouped path with the reference list forms
    assert_same(run(grouped, CASES[case], "float64"), run(reference_backend(spec), CASES[case], "float64"), 1e-12)


def test_other_backends_keep_the_per_parameter_path():
    parameters = make_parameters(bp.get_backend("numpy"), "float64")
    assert not bp.optim.Adam(parameters).groups_updates(bp.get_backend("numpy"))


def test_a_subclass_that_overrides_only_update_keeps_its_rule():
    class Lion(bp.optim.SGD):  # README's example optimiser shape: update() only
        def update(self, parameter, step):
            xp = parameter.backend.xp
            parameter.value = parameter.value - self.lr * xp.sign(parameter.grad)

    backend = bp.get_backend("torch:cpu")
    parameters = make_parameters(backend, "float64")
    before = [bp.to_numpy(p.value).copy() for p in parameters]
    optimizer = Lion(parameters, lr=0.5)
    assert not optimizer.groups_updates(backend)
    for parameter in parameters:
        parameter.grad = backend.xp.ones_like(parameter.value)
    optimizer.step()
    for parameter, old in zip(parameters, before):
        np.testing.assert_allclose(bp.to_numpy(parameter.value), old - 0.5)


def count_operations(optimizer) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                Counting.count += 1
            return func(*args, **(kwargs or {}))

    with Counting():
        optimizer.step()
    return Counting.count


@pytest.mark.parametrize("case", ["SGD", "SGD-momentum", "Adam", "Adam-amsgrad"])
def test_a_foreach_step_issues_a_number_of_torch_operations_independent_of_the_parameter_count(case):
    counts = {}
    for backend in (bp.get_backend("torch:cpu"), reference_backend("torch:cpu")):
        for count in (3, 12):
            parameters = make_parameters(backend, "float32", [(4, 3)] * count)
            optimizer = CASES[case](parameters)
            optimizer.flattens_updates = lambda backend: False  # the grouped path, not the flat one it precedes
            for _ in range(2):  # the steady state: slots made on the first step
                for parameter in parameters:
                    parameter.grad = backend.xp.ones_like(parameter.value)
                optimizer.step()
            counts[backend.multi_tensor, count] = count_operations(optimizer)
    assert counts[True, 3] == counts[True, 12]
    assert counts[False, 12] > counts[False, 3]  # the per-parameter path: operations per parameter
    assert counts[True, 12] < counts[False, 12]


class Interrupt(BaseException):
    pass


@pytest.mark.parametrize("case", ["SGD-momentum", "Adam-amsgrad"])
def test_an_interrupted_grouped_step_restores_every_slot_and_counts_nothing(case, monkeypatch):
    backend = bp.get_backend("torch:cpu")
    parameters = make_parameters(backend, "float64")
    optimizer = CASES[case](parameters)
    for parameter in parameters:
        parameter.grad = backend.xp.ones_like(parameter.value)

    def interrupted(*args, **kwargs):
        raise Interrupt()

    # the last list form of both rules, after the slots have been made
    monkeypatch.setattr(type(backend), "subtract_scaled_all", interrupted)
    monkeypatch.setattr(type(backend), "subtract_ratio_all", interrupted)
    with pytest.raises(Interrupt):
        optimizer.step()
    monkeypatch.undo()
    assert optimizer.steps == 0 and optimizer.parameter_steps == [0] * len(parameters)
    assert all(parameter.state == {} for parameter in parameters)  # no half-made slots
    optimizer.step()  # usable: a first update again
    fresh = make_parameters(backend, "float64")
    fresh_optimizer = CASES[case](fresh)
    for parameter in fresh:
        parameter.grad = backend.xp.ones_like(parameter.value)
    fresh_optimizer.step()
    assert optimizer.parameter_steps == fresh_optimizer.parameter_steps == [1] * len(parameters)
    assert_same(parameters, fresh, 0)
