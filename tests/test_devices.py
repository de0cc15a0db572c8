"""Device discipline: parameters, gradients and outputs live on the model's device; nothing crosses silently."""

import numpy as np
import pytest

import backprop as bp
from backprop.errors import BackendUnavailableError, DeviceError

X = np.random.default_rng(0).normal(size=(4, 3))
Y = np.random.default_rng(1).normal(size=(4, 2))


def small(device, dtype="float64"):
    return bp.Sequential(bp.Dense(3, 5), bp.Tanh(), bp.Dense(5, 2), device=device, dtype=dtype, seed=3)


def test_everything_lives_on_device1():
    import array_api_strict as xps

    device1 = xps.Device("device1")
    model = small("array_api_strict:device1")
    bp.value_and_grad(model, bp.losses.MeanSquaredError(), X, Y)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.step()
    for parameter in model.parameters():
        assert parameter.value.device == device1
        assert parameter.grad.device == device1
        assert parameter.state["momentum"].device == device1
    assert model.predict(X).device == device1


def test_wrong_device_input_raises():
    import array_api_strict as xps

    model = small("array_api_strict:device1")
    on_default = xps.asarray(X)
    with pytest.raises(DeviceError, match="device1"):
        model.predict(on_default)
    with pytest.raises(DeviceError):
        small("cpu").predict(xps.asarray(X, device=xps.Device("device1")))


def test_array_on_the_device_is_used_without_a_copy(backend):
    model = small(backend)
    x = model.backend.to_device(X, model.backend.dtype("float64"))
    assert model.as_input(x) is x


@pytest.mark.parametrize("route", [["array_api_strict:device1", "cpu"], ["torch:cpu", "array_api_strict", "cpu"]])
def test_moving_keeps_state_and_optimizer(route):
    if "torch:cpu" not in bp.backends.available() and "torch:cpu" in route:
        pytest.skip("PyTorch is not installed")
    loss = bp.losses.MeanSquaredError()
    reference = small("cpu")
    moved = small("cpu")
    optimizers = [bp.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (reference, moved)]
    for model, optimizer in zip((reference, moved), optimizers):
        bp.value_and_grad(model, loss, X, Y)
        optimizer.step()
    before = moved.state_dict()
    for device in route:
        moved.to(device)
        assert moved.device == bp.get_backend(device).spec
        for name, value in moved.state_dict().items():
            np.testing.assert_array_equal(value, before[name])
        assert all(moved.backend.owns(p.state["momentum"]) for p in moved.parameters())
    for model, optimizer in zip((reference, moved), optimizers):
        bp.value_and_grad(model, loss, X, Y)
        optimizer.step()
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(moved.state_dict()[name], value)


def test_float64_on_a_device_without_it():
    with pytest.raises(DeviceError, match="float64"):
        small("array_api_strict:no_float64", dtype="float64")
    model = small("cpu")
    with pytest.raises(DeviceError, match="float64"):
        model.to("array_api_strict:no_float64")
    assert model.device == "cpu"  # nothing moved
    float32 = small("array_api_strict:no_float64", dtype="float32")
    assert float32.predict(X).shape == (4, 2)


def test_device_specifiers():
    assert bp.get_backend("numpy").spec == "cpu"
    assert bp.get_backend("array_api_strict:CPU_DEVICE").spec == "array_api_strict"
    with pytest.raises(DeviceError, match="known"):
        bp.get_backend("tpu")
    with pytest.raises(DeviceError, match="device1"):
        bp.get_backend("array_api_strict:device9")
    with pytest.raises(TypeError):
        bp.get_backend(0)


def test_cuda_without_cupy_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cupy(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy.") or name == "array_api_compat.cupy":
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cupy)
    monkeypatch.setattr(bp.backends.registry, "_CACHE", {})
    with pytest.raises(BackendUnavailableError, match=r"cuda12"):
        bp.get_backend("cuda")


def test_a_user_backend_can_be_registered(monkeypatch):
    monkeypatch.setattr(bp.backends.registry, "_FACTORIES", dict(bp.backends.registry._FACTORIES))
    monkeypatch.setattr(bp.backends.registry, "_CACHE", {})
    numpy_backend = bp.get_backend("cpu")
    bp.backends.register_backend("mine", lambda spec, argument: numpy_backend)
    model = small("mine")
    assert model.backend is numpy_backend
