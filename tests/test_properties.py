"""Property tests (hypothesis) over random architectures, losses, batches and device paths, in float64.

* ``bp.gradcheck`` passes (central differences, eps 1e-6; relative error <= 1e-5 with the floor stated below).
* Every backend available here gives the loss and gradients of NumPy: rtol 1e-12, plus an absolute tolerance of
  1e-14 times the largest gradient entry of the parameter. Entries that are sums with cancellation are near zero,
  and PyTorch's BLAS sums in another order than NumPy's, so its difference is a few ulps of the summands, not of
  the result: over 300 random problems the largest difference was 6.7e-16 times the largest entry (relative
  error up to 2e-10 on near-zero entries); losses differed by at most 5e-16 relative. array_api_strict (on
  NumPy) matched bit for bit.
* Moving a model along a random path of devices keeps ``state_dict()``, gradients and optimiser state
  bit-identical, and the next gradient on each device is bit-identical to that of a fresh model on that device.

JAX is left out: its eager dispatch compiles every operation for every new shape, and each example draws new
shapes (2.7 s an example, 85 s for the file instead of 10). Its agreement with NumPy (fixed shapes, every loss and
activation), gradcheck and moves to and from NumPy are tested in ``test_parity.py`` and ``test_jax_backend.py``.

Hypothesis runs derandomized and without an example database, so CI sees the same examples every time.
Numbers are drawn on the host from a NumPy seed that hypothesis chooses.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import backprop as bp

ACTIVATIONS = {
    "Identity": bp.Identity,
    "Sigmoid": bp.Sigmoid,
    "Tanh": bp.Tanh,
    "ReLU": bp.ReLU,
    "LeakyReLU": lambda: bp.LeakyReLU(0.1),
    "Softmax": bp.Softmax,
}
LOSSES = {
    "MSE": bp.losses.MeanSquaredError,
    "BCE(from_logits=True)": lambda: bp.losses.BinaryCrossEntropy(from_logits=True),
    "CrossEntropy": bp.losses.CrossEntropy,
}
BACKENDS = [spec for spec in bp.backends.available() if spec not in ("cuda", "torch:cuda") and
            not spec.startswith(("cuda:", "torch:cuda", "jax"))]  # jax: see the module docstring
REFERENCE = "cpu"
GRADCHECK_FLOOR = 1e-4  # relative errors are taken against max(|analytic|, |numeric|, floor): see test
GRADCHECK_MAX_PARAMETERS = 1500  # finite differences cost two forward passes per parameter: keeps the file < 60 s
AGREEMENT_RTOL = 1e-12
AGREEMENT_ATOL_FACTOR = 1e-14  # times the parameter's largest |gradient| (near-zero entries; see the docstring)

PROPERTY_SETTINGS = settings(
    max_examples=20, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def parameter_count(widths: list[int]) -> int:
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(widths, widths[1:]))


@st.composite
def problems(draw, max_parameters: int | None = None):
    """(layer factory, loss, x, y, host state, description): a random network of 1 to 5 Dense layers, each
    followed by a random activation, with widths 1 to 32, a batch of 1 to 16 and targets that suit the loss."""
    depth = draw(st.integers(1, 5))
    widths_strategy = st.lists(st.integers(1, 32), min_size=depth + 1, max_size=depth + 1)
    if max_parameters is not None:
        widths_strategy = widths_strategy.filter(lambda widths: parameter_count(widths) <= max_parameters)
    widths = draw(widths_strategy)
    activations = draw(st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=depth, max_size=depth))
    loss_name = draw(st.sampled_from(sorted(LOSSES)))
    batch = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**32 - 1))

    def layers():
        built = []
        for index, activation in enumerate(activations):
            built += [bp.Dense(widths[index], widths[index + 1]), ACTIVATIONS[activation]()]
        return built

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, widths[0]))
    out = widths[-1]
    if loss_name == "MSE":
        y = rng.normal(size=(batch, out))
    elif loss_name == "CrossEntropy":
        y = rng.integers(0, out, size=batch)
    else:
        y = rng.uniform(0.0, 1.0, size=(batch, out))
    # random weights AND biases (zero biases would put a dead ReLU's successor exactly on the next ReLU's kink)
    state = {}
    for index in range(depth):
        fan_in, fan_out = widths[index], widths[index + 1]
        state[f"{2 * index}.weight"] = rng.normal(size=(fan_in, fan_out)) * (1.5 / np.sqrt(fan_in))
        state[f"{2 * index}.bias"] = rng.normal(size=(fan_out,)) * 0.5
    description = f"{widths} {activations} {loss_name} batch={batch} seed={seed}"
    return layers, LOSSES[loss_name](), x, y, state, description


def build(layers, state, device: str) -> bp.Sequential:
    model = bp.Sequential(*layers(), device=device, dtype="float64", seed=0)
    model.load_state_dict(state)
    return model


@PROPERTY_SETTINGS
@given(problems(max_parameters=GRADCHECK_MAX_PARAMETERS))
def test_gradcheck_passes_on_random_networks(problem):
    layers, loss, x, y, state, description = problem
    model = build(layers, state, REFERENCE)
    # Floor: central differences in float64 carry a rounding error of about 2e-16 |L| / eps = 2e-10 |L|, so an
    # entry below ~1e-4 cannot be resolved to 1e-5 relative; such entries are checked to 1e-5 * 1e-4 = 1e-9
    # absolute instead (a wrong formula is off by the size of the gradient, not by 1e-9).
    worst = bp.gradcheck(model, loss, x, y, eps=1e-6, tol=1e-5, floor=GRADCHECK_FLOOR)
    assert worst <= 1e-5, description


@pytest.mark.skipif(len(BACKENDS) < 2, reason=f"only {BACKENDS} available: nothing to compare with NumPy")
@PROPERTY_SETTINGS
@given(problems())
def test_every_backend_agrees_with_numpy(problem):
    layers, loss, x, y, state, description = problem
    expected_value, expected = bp.value_and_grad(build(layers, state, REFERENCE), loss, x, y)
    for device in BACKENDS:
        value, grads = bp.value_and_grad(build(layers, state, device), loss, x, y)
        np.testing.assert_allclose(value, expected_value, rtol=AGREEMENT_RTOL, atol=0,
                                   err_msg=f"loss on {device}: {description}")
        assert grads.keys() == expected.keys()
        for name, grad in grads.items():
            reference = expected[name]
            atol = AGREEMENT_ATOL_FACTOR * float(np.max(np.abs(reference), initial=0.0))
            np.testing.assert_allclose(grad, reference, rtol=AGREEMENT_RTOL, atol=atol,
                                       err_msg=f"d loss / d {name} on {device}: {description}")


def host_state(model: bp.Sequential) -> dict[str, np.ndarray]:
    """Values, gradients and optimiser slots of every parameter, as host copies."""
    state = {}
    for name, parameter in model.named_parameters():
        state[name] = bp.to_numpy(parameter.value).copy()
        if parameter.has_grad:
            state[f"{name}.grad"] = bp.to_numpy(parameter.grad).copy()
        for slot, value in parameter.state.items():
            state[f"{name}.{slot}"] = bp.to_numpy(value).copy()
    return state


def assert_bit_identical(actual: dict, expected: dict, where: str) -> None:
    assert actual.keys() == expected.keys(), where
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, (where, name)
        assert actual[name].tobytes() == value.tobytes(), f"{name} changed bits at {where}"


@PROPERTY_SETTINGS
@given(problems(), st.lists(st.sampled_from(BACKENDS), min_size=1, max_size=6))
def test_device_moves_keep_state_and_next_gradient_bit_identical(problem, path):
    layers, loss, x, y, state, description = problem
    model = build(layers, state, REFERENCE)
    stay_home = build(layers, state, REFERENCE)
    optimisers = [bp.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (model, stay_home)]
    for m, optimiser in zip((model, stay_home), optimisers):  # one step: momentum slots exist, then fresh grads
        bp.value_and_grad(m, loss, x, y)
        optimiser.step()
        bp.value_and_grad(m, loss, x, y)
    before = host_state(model)
    weights = model.state_dict()

    for stop, device in enumerate(path + [REFERENCE]):
        model.to(device)
        where = f"stop {stop} ({device}) of {path}: {description}"
        assert model.device == bp.get_backend(device).spec
        assert all(model.backend.owns(p.value) and model.backend.owns(p.grad) for p in model.parameters()), where
        assert_bit_identical(host_state(model), before, where)
        assert_bit_identical(model.state_dict(), weights, where)

    # the next gradient and step on every device equal those of a model that was never moved
    for device in path:
        fresh = build(layers, weights, device)
        model.to(device)
        value, grads = bp.value_and_grad(model, loss, x, y)
        fresh_value, fresh_grads = bp.value_and_grad(fresh, loss, x, y)
        assert value == fresh_value, device
        assert_bit_identical(grads, fresh_grads, f"gradient on {device}: {description}")
    model.to(REFERENCE)
    for m, optimiser in zip((model, stay_home), optimisers):
        bp.value_and_grad(m, loss, x, y)
        optimiser.step()
    assert_bit_identical(host_state(model), host_state(stay_home), f"after the step: {description}")
