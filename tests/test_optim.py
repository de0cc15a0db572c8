"""Optimisers, clipping and schedules against torch.optim, across backends, devices and checkpoint round trips."""

from __future__ import annotations

import copy
import inspect
import json
import math
import pickle

import numpy as np
import pytest

import backprop as bp
from backprop.errors import CheckpointError, ConfigurationError, NonFiniteError
from backprop.gradients import loss_and_backward

STEPS = 20

# (optimiser class name, shared by bp.optim and torch.optim; keyword arguments)
CASES = {
    "sgd": ("SGD", dict(lr=0.1)),
    "sgd-momentum": ("SGD", dict(lr=0.1, momentum=0.9)),
    "sgd-nesterov": ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd-dampening": ("SGD", dict(lr=0.1, momentum=0.8, dampening=0.3)),
    "sgd-weight-decay": ("SGD", dict(lr=0.1, momentum=0.5, weight_decay=0.05)),
    "adam": ("Adam", dict(lr=0.02)),
    "adam-weight-decay-amsgrad": ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=0.02, weight_decay=0.1)),
    "rmsprop": ("RMSprop", dict(lr=0.01)),
    "rmsprop-centered-momentum": (
        "RMSprop", dict(lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.8, centered=True)
    ),
}


def make_model(device: str = "cpu", dtype: str = "float64") -> bp.Sequential:
    return bp.Sequential(bp.Dense(3, 5), bp.Tanh(), bp.Dense(5, 2), device=device, dtype=dtype, seed=0)


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """A different batch every step, the same on every backend."""
    rng = np.random.default_rng(100 + step)
    return rng.normal(size=(8, 3)), rng.normal(size=(8, 2))


def make_optimizer(case: str, params):
    name, kwargs = CASES[case]
    return getattr(bp.optim, name)(params, **kwargs)


def train(model, optimizer, steps: int, first: int = 0) -> None:
    loss = bp.losses.MeanSquaredError()
    for step in range(first, first + steps):
        x, y = batch(step)
        loss_and_backward(model, loss, x, y)
        optimizer.step()


def torch_twin(torch, model: bp.Sequential):
    """A float64 torch network with our model's weights (our W is (in, out): torch's Linear weight is W.T)."""
    twin = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    state = model.state_dict()
    with torch.no_grad():
        for index in (0, 2):
            twin[index].weight.copy_(torch.from_numpy(state[f"{index}.weight"].T))
            twin[index].bias.copy_(torch.from_numpy(state[f"{index}.bias"]))
    return twin


def train_torch(torch, twin, optimizer, steps: int, first: int = 0) -> None:
    for step in range(first, first + steps):
        x, y = (torch.from_numpy(a) for a in batch(step))
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(twin(x), y).backward()
        optimizer.step()


def torch_optimizer(torch, case: str, params):
    name, kwargs = CASES[case]
    return getattr(torch.optim, name)(params, foreach=False, **kwargs)


def assert_matches_torch(model: bp.Sequential, twin, rtol: float = 1e-10) -> None:
    state = model.state_dict()
    for index in (0, 2):
        np.testing.assert_allclose(state[f"{index}.weight"], twin[index].weight.detach().numpy().T, rtol=rtol, atol=0)
        np.testing.assert_allclose(state[f"{index}.bias"], twin[index].bias.detach().numpy(), rtol=rtol, atol=0)


def assert_same_parameters(model, reference, rtol: float) -> None:
    ours, expected = model.state_dict(), reference.state_dict()
    for name in expected:
        np.testing.assert_allclose(ours[name], expected[name], rtol=rtol, atol=0, err_msg=name)


# -- trajectories ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_trajectory_matches_torch(torch, case):
    model = make_model()
    twin = torch_twin(torch, model)
    train(model, make_optimizer(case, model.parameters()), STEPS)
    train_torch(torch, twin, torch_optimizer(torch, case, twin.parameters()), STEPS)
    start = make_model().state_dict()["0.weight"]
    assert np.abs(model.state_dict()["0.weight"] - start).max() > 1e-3  # it did train
    assert_matches_torch(model, twin)


@pytest.mark.parametrize("case", CASES)
def test_trajectory_is_the_same_on_every_backend(backend, case):
    reference = make_model("cpu")
    train(reference, make_optimizer(case, reference.parameters()), STEPS)
    model = make_model(backend)
    train(model, make_optimizer(case, model.parameters()), STEPS)
    assert_same_parameters(model, reference, rtol=1e-12)


def test_float32_stays_float32(backend):
    for case in CASES:
        model = make_model(backend, "float32")
        train(model, make_optimizer(case, model.parameters()), 3)
        for parameter in model.parameters():
            arrays = {"value": parameter.value, **parameter.state}
            for slot, array in arrays.items():
                assert array.dtype == model.backend.dtype("float32"), (case, parameter.name, slot)


def test_sgd_keeps_its_positional_arguments():
    model, reference = make_model(), make_model()
    train(model, bp.optim.SGD(model.parameters(), 0.1, 0.9), 5)
    train(reference, bp.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9), 5)
    assert_same_parameters(model, reference, rtol=0)


@pytest.mark.parametrize("case", ["sgd-momentum", "adam-weight-decay-amsgrad", "rmsprop-centered-momentum"])
def test_parameters_without_gradient_are_skipped_as_in_torch(torch, case):
    """Each parameter counts its own updates: Adam's bias correction and first-step slots follow it."""
    backend = bp.get_backend("cpu")
    rng = np.random.default_rng(3)
    starts = [rng.normal(size=(4,)), rng.normal(size=(2, 3))]
    ours = [bp.Parameter(f"p{i}", backend.to_device(s, backend.dtype("float64")), backend)
            for i, s in enumerate(starts)]
    theirs = [torch.tensor(s, requires_grad=True) for s in starts]
    optimizer, reference = make_optimizer(case, ours), torch_optimizer(torch, case, theirs)
    for step in range(8):
        optimizer.zero_grad()
        reference.zero_grad()
        for index, (mine, its) in enumerate(zip(ours, theirs)):
            if index == 1 and step in (0, 1, 4):
                continue  # no gradient for the second parameter on these steps
            gradient = rng.normal(size=its.shape)
            mine.grad = backend.to_device(gradient, backend.dtype("float64"))
            its.grad = torch.tensor(gradient)
        optimizer.step()
        reference.step()
    assert optimizer.parameter_steps == [8, 5]
    for mine, its in zip(ours, theirs):
        np.testing.assert_allclose(backend.to_numpy(mine.value), its.detach().numpy(), rtol=1e-12, atol=0)


def test_a_fresh_optimiser_starts_fresh_slots_as_in_torch(torch):
    """Slots an earlier optimiser left on the parameters are not continued by a new one."""
    model = make_model()
    twin = torch_twin(torch, model)
    train(model, make_optimizer("adam", model.parameters()), 5)
    train(model, make_optimizer("adam", model.parameters()), 5, first=5)
    train_torch(torch, twin, torch_optimizer(torch, "adam", twin.parameters()), 5)
    train_torch(torch, twin, torch_optimizer(torch, "adam", twin.parameters()), 5, first=5)
    assert_matches_torch(model, twin)


# -- state: devices and checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_state_moves_with_the_model_and_training_continues(case):
    reference = make_model("cpu")
    train(reference, make_optimizer(case, reference.parameters()), 10)
    model = make_model("array_api_strict")
    optimizer = make_optimizer(case, model.parameters())
    train(model, optimizer, 5)
    model.to("array_api_strict:device1")
    device1 = bp.get_backend("array_api_strict:device1").device
    for parameter in model.parameters():
        assert all(array.device == device1 for array in parameter.state.values())
    train(model, optimizer, 5, first=5)
    for parameter in model.parameters():
        assert parameter.value.device == device1
    assert_same_parameters(model, reference, rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trips_through_json_and_resumes_exactly(case):
    uninterrupted = make_model()
    train(uninterrupted, make_optimizer(case, uninterrupted.parameters()), 10)

    model = make_model()
    optimizer = make_optimizer(case, model.parameters())
    train(model, optimizer, 5)
    saved = json.loads(json.dumps(optimizer.state_dict()))
    slots = {p.name: {k: model.backend.to_numpy(v).copy() for k, v in p.state.items()} for p in model.parameters()}

    resumed = make_model()  # a new process: weights and slots from the checkpoint, a default optimiser
    resumed.load_state_dict(model.state_dict())
    for parameter in resumed.parameters():
        parameter.state = {k: resumed.backend.to_device(v) for k, v in slots[parameter.name].items()}
    name, _ = CASES[case]
    restored = getattr(bp.optim, name)(resumed.parameters(), lr=0.5)
    restored.load_state_dict(saved)
    assert restored.state_dict() == optimizer.state_dict()
    assert restored.hyperparameters() == optimizer.hyperparameters()
    train(resumed, restored, 5, first=5)
    assert_same_parameters(resumed, uninterrupted, rtol=0)


def test_load_state_dict_refuses_what_does_not_fit():
    model = make_model()
    adam = bp.optim.Adam(model.parameters())
    train(model, adam, 2)
    saved = adam.state_dict()
    with pytest.raises(CheckpointError, match="belongs to 'Adam', not to SGD"):
        bp.optim.SGD(model.parameters(), lr=0.1).load_state_dict(saved)
    with pytest.raises(CheckpointError, match=r"missing \['amsgrad'\]"):
        bp.optim.Adam(model.parameters()).load_state_dict({k: v for k, v in saved.items() if k != "amsgrad"})
    with pytest.raises(CheckpointError, match="parameter_steps"):
        bp.optim.Adam(model.parameters()[:2]).load_state_dict(saved)
    with pytest.raises(ConfigurationError, match="betas"):
        bp.optim.Adam(model.parameters()).load_state_dict({**saved, "betas": [0.9, 1.5]})
    fresh = make_model()  # weights without the optimiser's slots
    restored = bp.optim.Adam(fresh.parameters())
    restored.load_state_dict(saved)
    loss_and_backward(fresh, bp.losses.MeanSquaredError(), *batch(0))
    with pytest.raises(CheckpointError, match="no optimiser slot 'exp_avg'"):
        restored.step()


# -- clipping ----------------------------------------------------------------------------------------------
def _gradients(model, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {p.name: scale * rng.normal(size=p.shape) for p in model.parameters()}


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("scale", [10.0, 0.01])
def test_clip_grad_norm_matches_torch(torch, backend, norm_type, scale):
    model = make_model(backend)
    twin = torch_twin(torch, model)
    gradients = _gradients(model, scale)
    for parameter in model.parameters():
        parameter.grad = model.backend.to_device(gradients[parameter.name], model._dtype)
    for index in (0, 2):
        twin[index].weight.grad = torch.from_numpy(gradients[f"{index}.weight"].T.copy())
        twin[index].bias.grad = torch.from_numpy(gradients[f"{index}.bias"])
    total = bp.optim.clip_grad_norm(model.parameters(), max_norm=0.5, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm=0.5, norm_type=norm_type)
    assert getattr(total, "shape", None) == ()  # a 0-d array on the device, not read to the host (issue 14)
    total = float(total)
    np.testing.assert_allclose(total, float(expected), rtol=1e-12)
    for index in (0, 2):
        ours = model.backend.to_numpy(model.layers[index].params["weight"].grad)
        np.testing.assert_allclose(ours, twin[index].weight.grad.numpy().T, rtol=1e-12, atol=0)
    if scale == 10.0:  # above the cap: the clipped gradients' norm is max_norm (to the 1e-6 guard)
        assert total > 0.5
        clipped = np.concatenate([model.backend.to_numpy(p.grad).ravel() for p in model.parameters()])
        assert np.linalg.norm(clipped, ord=norm_type) == pytest.approx(0.5, rel=1e-5)
    else:  # below the cap: untouched
        assert total < 0.5
        np.testing.assert_array_equal(model.backend.to_numpy(model.parameters()[0].grad), gradients["0.weight"])


def test_clip_grad_value_matches_torch(torch, backend):
    model = make_model(backend)
    gradients = _gradients(model, 1.0)
    for parameter in model.parameters():
        parameter.grad = model.backend.to_device(gradients[parameter.name], model._dtype)
    bp.optim.clip_grad_value(model.parameters(), clip_value=0.3)
    for parameter in model.parameters():
        reference = torch.nn.Parameter(torch.zeros(parameter.shape, dtype=torch.float64))
        reference.grad = torch.from_numpy(gradients[parameter.name].copy())
        torch.nn.utils.clip_grad_value_([reference], 0.3)
        np.testing.assert_array_equal(model.backend.to_numpy(parameter.grad), reference.grad.numpy())
    assert np.abs(gradients["0.weight"]).max() > 0.3  # something was clipped


def test_clipping_skips_parameters_without_gradient_and_reports_non_finite_norms():
    model = make_model()
    assert bp.optim.clip_grad_norm(model.parameters(), 1.0) == 0.0
    loss_and_backward(model, bp.losses.MeanSquaredError(), *batch(0))
    model.parameters()[1].zero_grad()
    first = model.backend.to_numpy(model.parameters()[0].grad).copy()
    norm = float(bp.optim.clip_grad_norm(model.parameters(), 1e-3))
    assert not model.parameters()[1].has_grad
    expected = math.sqrt(sum(float(np.sum(model.backend.to_numpy(p.grad) ** 2))
                             for p in model.parameters() if p.has_grad))
    assert norm > expected  # it shrank
    np.testing.assert_allclose(model.backend.to_numpy(model.parameters()[0].grad), first * (1e-3 / (norm + 1e-6)),
                               rtol=1e-12)
    model.parameters()[0].grad[0, 0] = np.inf
    with pytest.raises(NonFiniteError, match="inf"):
        bp.optim.clip_grad_norm(model.parameters(), 1.0, error_if_nonfinite=True)


# -- schedules ---------------------------------------------------------------------------------------------
def _schedule_pair(torch, name: str):
    """(our optimiser, our schedule, torch optimiser, torch schedule) starting from lr = 0.5."""
    ours = bp.optim.SGD(make_model().parameters()[:1], lr=0.5)
    theirs = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    lr_scheduler = torch.optim.lr_scheduler
    if name == "step":
        return ours, bp.optim.StepLR(ours, step_size=3, gamma=0.5), theirs, lr_scheduler.StepLR(theirs, 3, gamma=0.5)
    if name == "exponential":
        return ours, bp.optim.ExponentialLR(ours, gamma=0.9), theirs, lr_scheduler.ExponentialLR(theirs, gamma=0.9)
    if name == "cosine":
        return (ours, bp.optim.CosineAnnealingLR(ours, T_max=10, eta_min=0.01),
                theirs, lr_scheduler.CosineAnnealingLR(theirs, T_max=10, eta_min=0.01))
    if name == "warmup":
        return (ours, bp.optim.LinearWarmup(ours, warmup_steps=5, start_factor=0.1),
                theirs, lr_scheduler.LinearLR(theirs, start_factor=0.1, total_iters=5))
    assert name == "warmup-cosine"
    schedule = bp.optim.LinearWarmup(ours, 5, 0.1, after=bp.optim.CosineAnnealingLR(ours, T_max=10))
    reference = lr_scheduler.SequentialLR(
        theirs, [lr_scheduler.LinearLR(theirs, 0.1, total_iters=5), lr_scheduler.CosineAnnealingLR(theirs, T_max=10)],
        milestones=[5],
    )
    return ours, schedule, theirs, reference


SCHEDULES = ["step", "exponential", "cosine", "warmup", "warmup-cosine"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_matches_torch(torch, name):
    ours, schedule, theirs, reference = _schedule_pair(torch, name)
    assert ours.lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)
    rates, expected = [], []
    for _ in range(30):
        theirs.step()
        reference.step()
        rates.append(schedule.step())
        expected.append(theirs.param_groups[0]["lr"])
    assert ours.lr == rates[-1]
    np.testing.assert_allclose(rates, expected, rtol=1e-12, atol=1e-15)
    assert len(set(np.round(rates, 12))) > 3  # the rate did change


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_state_dict_round_trips(torch, name):
    ours, schedule, _, _ = _schedule_pair(torch, name)
    for _ in range(7):
        schedule.step()
    saved = json.loads(json.dumps(schedule.state_dict()))
    again, restored, _, _ = _schedule_pair(torch, name)
    again.lr = 1.0  # a fresh optimiser's rate, replaced by the restore
    restored.load_state_dict(saved)
    assert again.lr == ours.lr
    assert [restored.step() for _ in range(10)] == [schedule.step() for _ in range(10)]


# -- validation --------------------------------------------------------------------------------------------
def _params():
    return make_model().parameters()


INVALID = [
    (lambda: bp.optim.SGD(_params(), lr=0), "learning rate"),
    (lambda: bp.optim.Adam(_params(), lr=-1e-3), "learning rate"),
    (lambda: bp.optim.RMSprop(_params(), lr=float("nan")), "learning rate"),
    (lambda: bp.optim.AdamW(_params(), lr=float("inf")), "learning rate"),
    (lambda: bp.optim.Adam(_params(), betas=(1.0, 0.999)), r"betas\[0\] must be a number in \[0, 1\)"),
    (lambda: bp.optim.AdamW(_params(), betas=(0.9, -0.1)), r"betas\[1\]"),
    (lambda: bp.optim.Adam(_params(), betas=(0.9,)), "betas must be a pair"),
    (lambda: bp.optim.Adam(_params(), eps=0.0), "eps must be a finite number > 0"),
    (lambda: bp.optim.RMSprop(_params(), eps=-1e-8), "eps"),
    (lambda: bp.optim.SGD(_params(), lr=0.1, weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
    (lambda: bp.optim.Adam(_params(), weight_decay=float("nan")), "weight_decay"),
    (lambda: bp.optim.SGD(_params(), lr=0.1, momentum=1.0), "momentum"),
    (lambda: bp.optim.SGD(_params(), lr=0.1, nesterov=True), "Nesterov momentum needs momentum > 0"),
    (lambda: bp.optim.SGD(_params(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening = 0"),
    (lambda: bp.optim.SGD(_params(), lr=0.1, momentum=0.9, dampening=1.5), "dampening"),
    (lambda: bp.optim.RMSprop(_params(), alpha=1.0), "alpha"),
    (lambda: bp.optim.RMSprop(_params(), centered="yes"), "centered must be True or False"),
    (lambda: bp.optim.StepLR(bp.optim.SGD(_params(), lr=0.1), step_size=0), "step_size"),
    (lambda: bp.optim.ExponentialLR(bp.optim.SGD(_params(), lr=0.1), gamma=1.5), "gamma"),
    (lambda: bp.optim.CosineAnnealingLR(bp.optim.SGD(_params(), lr=0.1), T_max=10, eta_min=0.2), "eta_min"),
    (lambda: bp.optim.LinearWarmup(bp.optim.SGD(_params(), lr=0.1), warmup_steps=5, start_factor=0), "start_factor"),
    (lambda: bp.optim.clip_grad_norm(_params(), max_norm=0), "max_norm must be a finite number > 0"),
    (lambda: bp.optim.clip_grad_value(_params(), clip_value=-1), "clip_value"),
]


@pytest.mark.parametrize("build, message", INVALID)
def test_invalid_hyperparameters_raise_configuration_error(build, message):
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_a_schedule_may_anneal_the_rate_to_zero_and_the_optimiser_still_restores():
    optimizer = bp.optim.Adam(_params(), lr=0.1)
    schedule = bp.optim.CosineAnnealingLR(optimizer, T_max=4)
    for _ in range(4):
        schedule.step()
    assert optimizer.lr == 0.0
    restored = bp.optim.Adam(_params(), lr=0.1)
    restored.load_state_dict(json.loads(json.dumps(optimizer.state_dict())))
    assert restored.lr == 0.0


def test_numpy_scalars_are_accepted_and_stored_as_json_able_floats():
    optimizer = bp.optim.SGD(_params(), lr=np.float32(0.25), momentum=np.float64(0.5))
    schedule = bp.optim.StepLR(optimizer, step_size=np.int64(2), gamma=np.float32(0.5))
    assert json.loads(json.dumps(optimizer.state_dict()))["lr"] == 0.25
    assert json.loads(json.dumps(schedule.state_dict()))["step_size"] == 2


def test_a_schedule_steps_once_per_epoch_as_a_fit_callback():
    model = bp.Sequential(bp.Dense(2, 1), dtype="float64", seed=0)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    schedule = bp.optim.StepLR(optimizer, step_size=2, gamma=0.5)
    x = np.random.default_rng(0).normal(size=(8, 2))
    model.fit(x, x[:, :1], bp.losses.MeanSquaredError(), optimizer, epochs=5, callbacks=[schedule], verbose=0)
    assert schedule.last_step == 5
    assert optimizer.lr == pytest.approx(0.1 * 0.5 ** 2)


# -- declared hyper-parameters ------------------------------------------------------------------------------------
DEFAULTS = {  # torch.optim's defaults; SGD's lr has none
    "SGD": {"lr": bp.optim.REQUIRED, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "Adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    "AdamW": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
    "RMSprop": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False},
}


@pytest.mark.parametrize("name", DEFAULTS)
def test_each_declaration_gives_the_keyword_its_default_order_and_annotation(name):
    cls = getattr(bp.optim, name)
    assert {key: hyper.default for key, hyper in cls.HYPERPARAMETERS.items()} == DEFAULTS[name]
    signature = inspect.signature(cls)
    assert list(signature.parameters) == ["params", *DEFAULTS[name]]
    for key, default in DEFAULTS[name].items():
        expected = inspect.Parameter.empty if default is bp.optim.REQUIRED else default
        assert signature.parameters[key].default == expected
    assert signature.parameters["lr"].annotation is float
    optimizer = cls(_params(), lr=0.5) if name == "SGD" else cls(_params())
    assert optimizer.hyperparameters() == {**DEFAULTS[name], **({"lr": 0.5} if name == "SGD" else {})}
    assert repr(optimizer) == f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in optimizer.hyperparameters().items()) + ")"


def test_repr_and_positional_order_follow_the_declarations():
    adam = bp.optim.Adam(_params(), 0.01, [0.8, 0.9], 1e-6, 0.1, True)
    assert repr(adam) == "Adam(lr=0.01, betas=(0.8, 0.9), eps=1e-06, weight_decay=0.1, amsgrad=True)"
    assert repr(bp.optim.AdamW(_params(), 0.02)) == \
        "AdamW(lr=0.02, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False)"  # its own default, in place
    assert repr(bp.optim.SGD(_params(), 0.1, 0.9, 0.0, 1e-4, True)) == \
        "SGD(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0001, nesterov=True)"
    assert repr(bp.optim.RMSprop(_params(), momentum=0.5, centered=True)) == \
        "RMSprop(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.5, centered=True)"


CALL_ERRORS = [
    (lambda: bp.optim.Adam(_params(), lr=0.1, beta=(0.9, 0.99)),
     "Adam has no hyper-parameter 'beta'; its hyper-parameters are lr, betas, eps, weight_decay, amsgrad"),
    (lambda: bp.optim.SGD(_params(), lr=0.1, nesterov=True, mommentum=0.9),
     "SGD has no hyper-parameter 'mommentum'; its hyper-parameters are lr, momentum, dampening, weight_decay, "
     "nesterov"),
    (lambda: bp.optim.SGD(_params()), r"SGD needs lr, e.g. SGD\(model.parameters\(\), lr=0.1\)"),
    (lambda: bp.optim.SGD(_params(), 0.1, momentum=0.9, lr=0.2), "SGD got lr both by position and by keyword"),
    (lambda: bp.optim.SGD(_params(), 0.1, 0.9, 0, 0, True, 7),
     r"SGD takes params and at most 5 hyper-parameters \(lr, momentum, dampening, weight_decay, nesterov\), got 6"),
    (lambda: bp.optim.Adam(_params()).set_hyperparameters(gamma=0.5), "Adam has no hyper-parameter 'gamma'"),
]


@pytest.mark.parametrize("build, message", CALL_ERRORS)
def test_a_wrong_call_names_the_hyper_parameters_as_a_configuration_and_type_error(build, message):
    with pytest.raises(ConfigurationError, match=message) as excinfo:
        build()
    assert isinstance(excinfo.value, TypeError)


def test_set_hyperparameters_and_assignment_check_like_the_constructor_and_change_nothing_on_refusal():
    sgd = bp.optim.SGD(_params(), lr=0.1, momentum=0.9)
    sgd.set_hyperparameters(nesterov=True, weight_decay=np.float32(0.5))
    expected = {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.5, "nesterov": True}
    assert sgd.hyperparameters() == expected
    assert type(sgd.weight_decay) is float
    with pytest.raises(ConfigurationError, match="Nesterov momentum needs momentum > 0 and dampening = 0, got "
                                                 "momentum=0.0, dampening=0.0"):
        sgd.momentum = 0
    with pytest.raises(ConfigurationError, match="weight_decay must be a finite number >= 0"):
        sgd.set_hyperparameters(lr=0.2, weight_decay=-1)
    assert sgd.hyperparameters() == expected
    adam = bp.optim.Adam(_params())
    adam.betas = [0.5, 0.75]
    adam.lr = 0  # a schedule may anneal the rate to 0; a new optimiser refuses it
    assert (adam.betas, adam.lr) == ((0.5, 0.75), 0.0)
    with pytest.raises(ConfigurationError, match=r"eps must be a finite number > 0 \(it keeps the denominator"):
        adam.eps = 0.0
    assert adam.eps == 1e-8


@pytest.mark.parametrize("name", DEFAULTS)
def test_every_optimiser_round_trips_through_state_dict_from_state_dict_and_pickle(name):
    cls = getattr(bp.optim, name)
    uninterrupted = make_model()
    train(uninterrupted, cls(uninterrupted.parameters(), lr=0.01), 6)
    model = make_model()
    optimizer = cls(model.parameters(), lr=0.01)
    train(model, optimizer, 3)
    state = json.loads(json.dumps(optimizer.state_dict()))
    assert state == {"type": name, "steps": 3, "parameter_steps": [3, 3, 3, 3],
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in optimizer.hyperparameters().items()}}

    rebuilt = cls.from_state_dict(model.parameters(), state)
    assert rebuilt.state_dict() == optimizer.state_dict() and repr(rebuilt) == repr(optimizer)
    pickled_model, pickled = pickle.loads(pickle.dumps((model, optimizer)))
    assert pickled.params == pickled_model.parameters() and pickled.state_dict() == optimizer.state_dict()
    copied_model, copied = copy.deepcopy((model, optimizer))
    for resumed_model, resumed in ((pickled_model, pickled), (copied_model, copied), (model, rebuilt)):
        train(resumed_model, resumed, 3, first=3)
        assert resumed.steps == 6
        assert_same_parameters(resumed_model, uninterrupted, rtol=0)


def test_a_subclass_declares_a_hyper_parameter_once_and_inherits_the_rest():
    class Scaled(bp.optim.SGD):
        """SGD whose step is multiplied by ``factor``."""

        factor = bp.optim.Hyper(2.0, lambda value, name: bp.validation.number(value, name, low=0.0, low_open=True))

        def update(self, parameter, step):
            parameter.grad *= self.factor
            super().update(parameter, step)

    assert list(Scaled.HYPERPARAMETERS) == ["lr", "momentum", "dampening", "weight_decay", "nesterov", "factor"]
    model, reference = make_model(), make_model()
    train(model, Scaled(model.parameters(), 0.05, factor=3.0), 3)
    train(reference, bp.optim.SGD(reference.parameters(), lr=0.15), 3)
    assert_same_parameters(model, reference, rtol=1e-12)
    with pytest.raises(ConfigurationError, match=r"factor must be a finite number > 0, got -1"):
        Scaled(_params(), 0.1, factor=-1)

    with pytest.raises(ConfigurationError, match=r"Hidden.momentum = 0.5 hides the hyper-parameter 'momentum'"):
        type("Hidden", (bp.optim.SGD,), {"momentum": 0.5})


def test_a_hyper_parameter_read_before_it_is_set_says_to_call_optimizer_init():
    class Forgetful(bp.optim.SGD):
        def __init__(self, params, lr):
            self.params = list(params)

    optimizer = Forgetful(_params(), 0.1)
    with pytest.raises(AttributeError, match=r"Forgetful.lr has not been set: .*super\(\).__init__\(params, ...\)"):
        optimizer.lr
    assert not hasattr(optimizer, "momentum")
    assert str(inspect.signature(Forgetful)) == "(params, lr)"  # its own constructor's signature
