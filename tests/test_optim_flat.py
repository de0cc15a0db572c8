"""Flat parameter storage (`backprop.optim.flat`): one pass of an optimiser's rule over flat buffers.

On the backends whose views share memory (NumPy, torch, CuPy and its stand-in, the recording backend) an
element-wise optimiser's steps from the second on run its ``update`` once over flat buffers of values, gradients
and slots. These tests compare that path with the per-parameter path on a copy of the model (the same numbers),
check that it is taken (the parameters are views of the store's buffers; the operation count of a step does not
grow with the number of parameters), and follow the store through what rebinds parameters' arrays: a skipped
update, checkpoints, ``model.to``, ``fit``'s divergence restore, an interrupted step.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import backprop as bp
from backprop.errors import DivergenceError
from backprop.gradients import loss_and_backward
from backprop.optim.flat import FlatStore
from tests import recording_backend as rb

CASES = {
    "SGD": lambda p: bp.optim.SGD(p, lr=0.1),
    "SGD-momentum": lambda p: bp.optim.SGD(p, lr=0.1, momentum=0.9),
    "SGD-nesterov": lambda p: bp.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "SGD-weight-decay": lambda p: bp.optim.SGD(p, lr=0.1, weight_decay=0.05),
    "SGD-dampening": lambda p: bp.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.01),
    "Adam": lambda p: bp.optim.Adam(p, lr=0.01),
    "Adam-amsgrad": lambda p: bp.optim.Adam(p, lr=0.01, amsgrad=True),
    "Adam-weight-decay": lambda p: bp.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "AdamW": lambda p: bp.optim.AdamW(p, lr=0.01),
    "RMSprop": lambda p: bp.optim.RMSprop(p, lr=0.01),
    "RMSprop-centered": lambda p: bp.optim.RMSprop(p, lr=0.01, centered=True),
    "RMSprop-momentum": lambda p: bp.optim.RMSprop(p, lr=0.01, momentum=0.9, weight_decay=0.01),
}

FLAT_DEVICES = [
    pytest.param("cpu", id="numpy"),
    pytest.param("torch:cpu", id="torch:cpu"),
    pytest.param("recording:1", id="recording"),
    pytest.param("torch:cuda", id="torch:cuda", marks=pytest.mark.cuda),
    pytest.param("cuda", id="cupy", marks=pytest.mark.cuda),
]
TOLERANCE = {"float64": 1e-15, "float32": 1e-6}


@pytest.fixture(autouse=True)
def _recording():
    with rb.registered():
        yield


@pytest.fixture(params=FLAT_DEVICES)
def device(request) -> str:
    try:
        bp.get_backend(request.param)
    except bp.errors.BackendUnavailableError as error:
        pytest.skip(f"{request.param} unavailable: {error}")
    return request.param


X = np.random.default_rng(0).normal(size=(6, 3))
Y = np.random.default_rng(1).normal(size=(6, 2))


def make_model(device: str, dtype: str = "float64") -> bp.Sequential:
    """3-5-4-2 with a bias-less middle layer: 5 parameters of 4 shapes."""
    return bp.Sequential(bp.Dense(3, 5), bp.Tanh(), bp.Dense(5, 4, bias=False), bp.Tanh(), bp.Dense(4, 2),
                         device=device, dtype=dtype, seed=0)


def per_parameter(optimizer: bp.optim.Optimizer) -> bp.optim.Optimizer:
    """``optimizer`` held to the per-parameter path (neither flat nor grouped): the reference."""
    optimizer.flattens_updates = lambda backend: False
    optimizer.groups_updates = lambda backend: False
    return optimizer


def train(model: bp.Sequential, optimizer: bp.optim.Optimizer, steps: int, start: int = 0) -> None:
    """``steps`` steps on the batches ``start``, ``start + 1``, ... (each a different slice of the data)."""
    loss = bp.losses.MeanSquaredError()
    for step in range(start, start + steps):
        rows = [(step + offset) % len(X) for offset in range(4)]
        loss_and_backward(model, loss, X[rows], Y[rows])
        optimizer.step()


def host(array) -> np.ndarray:
    return np.array(bp.to_numpy(array), dtype=np.float64)


def assert_same(ours: bp.Sequential, theirs: bp.Sequential, rtol: float) -> None:
    for mine, other in zip(ours.parameters(), theirs.parameters()):
        np.testing.assert_allclose(host(mine.value), host(other.value), rtol=rtol, atol=rtol)
        assert mine.state.keys() == other.state.keys()
        for name in mine.state:
            np.testing.assert_allclose(host(mine.state[name]), host(other.state[name]), rtol=rtol, atol=rtol)


def memory(array) -> np.ndarray:
    """The host memory an array of a CPU backend lives in, as a NumPy array (no copy)."""
    if isinstance(array, rb.RecordingArray):
        return array._data
    return array if isinstance(array, np.ndarray) else array.numpy()


def assert_flat(model: bp.Sequential, optimizer: bp.optim.Optimizer) -> None:
    """The optimiser's store holds the model's parameters: values and slots are views of its buffers."""
    store = optimizer.flat_store
    assert store is not None and store.holds(model.parameter_list())
    if model.backend.spec.startswith(("cuda", "torch:cuda")):
        return
    for parameter in model.parameters():
        assert np.shares_memory(memory(parameter.value), memory(store.values))
        for name, slot in parameter.state.items():
            assert np.shares_memory(memory(slot), memory(store.slots[name]))


# -- the same numbers as the per-parameter path ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_flat_update_equals_the_per_parameter_update(device, case, dtype):
    flat, reference = make_model(device, dtype), make_model(device, dtype)
    optimizer = CASES[case](flat.parameters())
    train(flat, optimizer, 5)
    train(reference, per_parameter(CASES[case](reference.parameters())), 5)
    assert_flat(flat, optimizer)
    assert optimizer.steps == 5 and optimizer.parameter_steps == [5] * 5
    assert_same(flat, reference, TOLERANCE[dtype])


@pytest.mark.parametrize("case", ["SGD-momentum", "Adam", "RMSprop-centered"])
def test_a_parameter_without_a_gradient_sends_the_step_parameter_by_parameter(device, case):
    """Parameter 2 skips step 3: its update count falls behind, so the steps after it are not flat (one pass of
    the rule needs one count), and give the per-parameter numbers."""
    def run(optimizer_of):
        model = make_model(device)
        optimizer = optimizer_of(model.parameters())
        rng = np.random.default_rng(2)
        with model.backend.activate():
            for step in range(6):
                for index, parameter in enumerate(model.parameters()):
                    parameter.zero_grad()
                    gradient = rng.standard_normal(parameter.shape)
                    if not (index == 2 and step == 2):
                        parameter.grad = model.backend.to_device(gradient, model._dtype)
                optimizer.step()
                if step == 1 and optimizer.flattens_updates(model.backend):
                    assert_flat(model, optimizer)
        return model, optimizer

    flat, optimizer = run(CASES[case])
    reference, _ = run(lambda p: per_parameter(CASES[case](p)))
    assert optimizer.parameter_steps == [6, 6, 5, 6, 6]
    assert_same(flat, reference, 1e-12)  # on torch the later steps are grouped (torch._foreach_*)


def test_a_step_after_the_first_builds_the_store_once_and_costs_the_same_for_any_parameter_count():
    def step_operations(layers: int) -> int:
        model = bp.Sequential(*[bp.Dense(3, 3) for _ in range(layers - 1)], bp.Dense(3, 2), device="recording:1",
                              seed=0)
        optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
        train(model, optimizer, 2)
        store = optimizer.flat_store
        loss_and_backward(model, bp.losses.MeanSquaredError(), X, Y)
        with rb.RECORDER.recording() as events:
            optimizer.step()
        assert optimizer.flat_store is store  # gathered, not rebuilt
        return sum(1 for kind, _, _ in events if kind == "op")

    assert step_operations(2) == step_operations(6) == 13  # Adam's rule over the flat buffers, once


def test_adam_on_the_mnist_sized_network_costs_at_most_7_operations_per_parameter():
    """The issue's bound, for the optimiser's part of a 784-256-256-10 step on the CuPy stand-in; the whole step
    (forward, backward and update) is counted by benchmarks/opcount.py."""
    from benchmarks.workloads import WORKLOADS, build_model

    model = build_model(WORKLOADS["mnist"], "recording:0")
    optimizer = bp.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 784)), rng.normal(size=(8, 10))
    loss = bp.losses.MeanSquaredError()
    counts = []
    for _ in range(3):
        loss_and_backward(model, loss, x, y)
        with rb.RECORDER.recording() as events:
            optimizer.step()
        counts.append(sum(1 for kind, _, _ in events if kind == "op"))
    parameters = len(model.parameters())
    assert parameters == 6 and counts[0] > 13 * parameters  # the first step: per parameter, making the slots
    assert counts[2] <= 7 * parameters
    assert counts[2] == 13  # one pass of the rule over the flat buffers


@pytest.mark.parametrize("case", ["SGD-momentum", "Adam", "AdamW", "RMSprop-centered"])
def test_a_flat_torch_step_costs_the_same_for_any_parameter_count(case):
    """On torch the flat store's one parameter goes through ``update_all`` where the optimiser has it (its list
    forms are ``torch._foreach_*`` calls: Adam's 8 operations rather than the rule's 13), else through ``update``."""
    pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += not func.is_view
            return func(*args, **(kwargs or {}))

    def step_operations(layers: int) -> int:
        model = bp.Sequential(*[bp.Dense(3, 3) for _ in range(layers - 1)], bp.Dense(3, 2), device="torch:cpu",
                              seed=0)
        optimizer = CASES[case](model.parameters())
        train(model, optimizer, 2)
        loss_and_backward(model, bp.losses.MeanSquaredError(), X, Y)
        counting = Counting()
        with counting:
            optimizer.step()
        assert_flat(model, optimizer)
        return counting.count

    assert step_operations(2) == step_operations(6)
    if case == "Adam":
        assert step_operations(2) == 8


# -- what rebinds the parameters' arrays -------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["SGD-momentum", "Adam-amsgrad", "RMSprop-momentum"])
def test_a_checkpoint_taken_mid_training_resumes_the_same_trajectory(device, case, tmp_path):
    uninterrupted = make_model(device)
    train(uninterrupted, CASES[case](uninterrupted.parameters()), 7)
    model = make_model(device)
    optimizer = CASES[case](model.parameters())
    train(model, optimizer, 4)
    path = bp.save(model, tmp_path / "m.bpk", optimizer)
    resumed = bp.load_checkpoint(path, device=device)
    train(resumed.model, resumed.optimizer, 3, start=4)
    assert_flat(resumed.model, resumed.optimizer)
    assert_same(resumed.model, uninterrupted, 0.0)
    # rewinding the same model in place: its arrays are rebound, the next step copies them into the store
    train(model, optimizer, 2, start=4)
    bp.load_into(model, path, optimizer)
    train(model, optimizer, 3, start=4)
    assert_flat(model, optimizer)
    assert_same(model, uninterrupted, 0.0)


@pytest.mark.parametrize("case", ["SGD-nesterov", "Adam", "AdamW"])
def test_moving_the_model_between_steps(case):
    pytest.importorskip("torch")
    def run(optimizer_of):
        model = make_model("cpu")
        optimizer = optimizer_of(model.parameters())
        train(model, optimizer, 3)
        model.to("torch:cpu")
        train(model, optimizer, 3, start=3)
        model.to("cpu", dtype="float32")
        train(model, optimizer, 3, start=6)
        return model, optimizer

    flat, optimizer = run(CASES[case])
    reference, _ = run(lambda p: per_parameter(CASES[case](p)))
    assert_flat(flat, optimizer)
    assert optimizer.flat_store.backend == bp.get_backend("cpu") and optimizer.flat_store.values.dtype == np.float32
    assert_same(flat, reference, 1e-6)


def test_a_gradient_from_elsewhere_is_copied_into_its_view():
    """Clipping by value rebinds every gradient; the next step gathers the new arrays into the buffer."""
    flat, reference = make_model("cpu"), make_model("cpu")
    optimizer = bp.optim.SGD(flat.parameters(), lr=0.1, momentum=0.9)
    reference_optimizer = per_parameter(bp.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9))
    loss = bp.losses.MeanSquaredError()
    for model, opt in ((flat, optimizer), (reference, reference_optimizer)):
        for _ in range(4):
            loss_and_backward(model, loss, X, Y)
            bp.optim.clip_grad_value(model.parameters(), 0.01)
            opt.step()
    assert_flat(flat, optimizer)
    assert_same(flat, reference, 0.0)


class Interrupt(BaseException):
    pass


def test_an_interrupted_flat_step_counts_nothing_and_keeps_the_slots(monkeypatch):
    model = make_model("cpu")
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    train(model, optimizer, 3)
    slots = {id(p): dict(p.state) for p in model.parameters()}
    original = bp.optim.Adam.slot

    def slot(self, parameter, name, step):
        if name == "max_exp_avg_sq":
            raise Interrupt()
        return original(self, parameter, name, step)

    monkeypatch.setattr(bp.optim.Adam, "slot", slot)
    loss_and_backward(model, bp.losses.MeanSquaredError(), X, Y)
    with pytest.raises(Interrupt):
        optimizer.step()
    monkeypatch.undo()
    assert optimizer.steps == 3 and optimizer.parameter_steps == [3] * 5
    assert all(p.state == slots[id(p)] for p in model.parameters())  # the same views, no slot made or lost
    assert_flat(model, optimizer)
    optimizer.step()
    assert optimizer.parameter_steps == [4] * 5


# -- fit -----------------------------------------------------------------------------------------------------------
class _EpochStarts(bp.callbacks.Callback):
    """Host copies of the parameters and slots at each epoch's start, and whether the store held them then; the
    learning rate raised far too high at the end of epoch ``blow_up``."""

    def __init__(self, optimizer, blow_up: int) -> None:
        super().__init__()
        self.optimizer, self.blow_up, self.starts = optimizer, blow_up, []

    def on_epoch_begin(self, epoch):
        parameters = self.model.parameters()
        held = self.optimizer.flat_store is not None and self.optimizer.flat_store.holds(parameters)
        self.starts.append((held, self.optimizer.steps, [(host(p.value), {k: host(v) for k, v in p.state.items()})
                                                         for p in parameters]))

    def on_epoch_end(self, epoch, logs):
        if epoch == self.blow_up:
            self.optimizer.lr = 1e38


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", ["SGD-momentum", "Adam"])
def test_divergence_restores_the_epoch_start_through_the_store(device, case):
    model = make_model(device, "float32")
    optimizer = CASES[case](model.parameters())
    starts = _EpochStarts(optimizer, blow_up=3)
    with pytest.raises(DivergenceError) as excinfo:
        model.fit(X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=10, verbose=0, callbacks=[starts])
    epoch = excinfo.value.epoch - 1
    held, steps, expected = starts.starts[epoch]
    assert epoch >= 4 and held  # the snapshot of that epoch was the store's buffers
    assert optimizer.steps == steps
    for parameter, (value, slots) in zip(model.parameters(), expected):
        np.testing.assert_array_equal(host(parameter.value), value)
        assert parameter.state.keys() == slots.keys()
        for name, slot in slots.items():
            np.testing.assert_array_equal(host(parameter.state[name]), slot)
        assert not parameter.has_grad
    assert_flat(model, optimizer)


def test_fit_checks_the_flat_values_for_finiteness_in_one_pass():
    model = make_model("recording:1")
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    profile = rb.profile_fit(model, X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=3, verbose=0)
    per_epoch = [rb.segments(epoch, "none")[0].ops for epoch in rb._epoch_events(profile.events)]
    assert per_epoch[2]["isfinite"] == 1  # the store holds the model: its value buffer, once
    assert per_epoch[0]["isfinite"] == len(model.parameters())  # before the store: per parameter


# -- elsewhere: the paths as they were ---------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["jax:cpu", "array_api_strict"])
@pytest.mark.parametrize("case", ["SGD-momentum", "Adam-amsgrad", "RMSprop-centered"])
def test_backends_without_shared_views_keep_the_per_parameter_path(spec, case):
    if spec.startswith("jax"):
        pytest.importorskip("jax")
    model, reference = make_model(spec), make_model("cpu")
    optimizer = CASES[case](model.parameters())
    train(model, optimizer, 4)
    train(reference, per_parameter(CASES[case](reference.parameters())), 4)
    assert optimizer.flat_store is None and not bp.get_backend(spec).views_share_memory
    assert_same(model, reference, 1e-10)


def test_only_a_class_that_declares_its_rule_elementwise_is_flattened(monkeypatch):
    class Inherited(bp.optim.Adam):
        def apply_weight_decay(self, parameter, gradient):  # reads the shape: not element-wise
            return gradient if parameter.value.ndim == 1 else gradient + 0.1 * parameter.value

    class Declared(bp.optim.Adam):
        elementwise = True

    backend = bp.get_backend("cpu")
    parameters = make_model("cpu").parameters()
    assert not Inherited(parameters).flattens_updates(backend) and not Inherited.elementwise
    assert Declared(parameters).flattens_updates(backend)
    adam = bp.optim.Adam(parameters)
    monkeypatch.setattr(bp.optim.Adam, "update", lambda self, parameter, step: None)
    assert not adam.flattens_updates(backend)  # a patched update gets the per-parameter path


def test_copies_of_an_optimiser_leave_its_store_behind():
    model = make_model("cpu")
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    train(model, optimizer, 3)
    assert optimizer.flat_store is not None and copy.deepcopy(optimizer).flat_store is None


def test_a_store_refuses_parameters_it_cannot_lay_out():
    pytest.importorskip("torch")
    numpy_model, torch_model = make_model("cpu"), make_model("torch:cpu")
    for model in (numpy_model, torch_model):
        loss_and_backward(model, bp.losses.MeanSquaredError(), X, Y)
    assert FlatStore.fits(numpy_model.parameters())
    assert not FlatStore.fits(numpy_model.parameters() + torch_model.parameters())  # two backends
    numpy_model.parameters()[0].state["momentum"] = numpy_model.backend.xp.zeros(1)
    assert not FlatStore.fits(numpy_model.parameters())  # slot names differ, and one is misshapen


# -- the summing fast path ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, (0, 2, 3)])
def test_backend_sum_into_out_equals_the_reference(device, axis):
    backend = bp.get_backend(device)
    host_array = np.random.default_rng(3).normal(size=(4, 3, 2, 5))
    with backend.activate():
        array = backend.to_device(host_array, backend.dtype("float64"))
        reference = bp.backends.Backend.sum(backend, array, axis)
        out = backend.xp.zeros_like(reference)
        written = backend.sum(array, axis, out=out)
        assert written is out
        np.testing.assert_allclose(host(written), host(reference), rtol=1e-15)
        np.testing.assert_allclose(host(backend.sum(array, axis)), host(reference), rtol=1e-15)


def test_accumulate_sum_writes_the_first_sum_into_the_spare_gradient(device):
    backend = bp.get_backend(device)
    with backend.activate():
        dy = backend.to_device(np.arange(12.0).reshape(4, 3), backend.dtype("float64"))
        parameter = bp.parameter.Parameter("bias", backend.xp.zeros((3,), dtype=backend.dtype("float64")), backend)
        parameter.accumulate_sum(dy, 0)
        first = parameter.grad
        parameter.zero_grad()
        parameter.accumulate_sum(dy, 0)
        assert parameter.grad is first  # the spare, written in place
        parameter.accumulate_sum(dy, 0)
        np.testing.assert_array_equal(host(parameter.grad), 2 * np.arange(12.0).reshape(4, 3).sum(axis=0))
