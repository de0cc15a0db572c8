"""The JAX backend (``jax:cpu``): eager ``jax.numpy``, whose arrays are immutable, trained through everything
that writes state (BatchNorm's running statistics, Dropout's masks, Adam's slots, the divergence snapshot,
checkpoints, ``model.to``) to the same numbers as NumPy.

The fixture-driven tests (parity, gradcheck, training, reliability, ...) run on ``jax:cpu`` too; this file adds
whole training runs and the specifiers. Every test skips, with the reason, where JAX is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.errors import BackendUnavailableError, DeviceError, DivergenceError

jax = pytest.importorskip("jax", reason="JAX is not installed: pip install 'backprop-arrays[jax]' to test its backend")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(48, 6))
Y = np.sin(X[:, :2]) + 0.1 * X[:, 2:4]
IMAGES = RNG.normal(size=(12, 2, 8, 8))
LABELS = RNG.integers(0, 3, size=12)


# A layer before batch normalisation has no bias: its gradient would be 0 up to rounding, and Adam, which divides
# by the gradient's scale, would turn that rounding into steps of size lr that differ between libraries.
def mlp(device: str, dtype: str = "float64") -> bp.Sequential:
    return bp.Sequential(bp.Dense(6, 16, bias=False), bp.BatchNorm1d(16), bp.ReLU(), bp.Dropout(0.25, seed=3),
                         bp.Dense(16, 2), device=device, dtype=dtype, seed=7)


def cnn(device: str, dtype: str = "float64") -> bp.Sequential:
    return bp.Sequential(bp.Conv2d(2, 4, 3, padding=1, bias=False), bp.BatchNorm2d(4), bp.ReLU(), bp.MaxPool2d(2),
                         bp.Conv2d(4, 3, 3, stride=2), bp.Flatten(), bp.Dense(3, 3),
                         input_shape=(2, 8, 8), device=device, dtype=dtype, seed=5)


def fit_mlp(device: str, dtype: str = "float64") -> tuple[bp.Sequential, bp.History]:
    model = mlp(device, dtype)
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    history = model.fit(X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=4, batch_size=8, seed=1,
                        validation_data=(X[:8], Y[:8]), metrics=["mse"], verbose=0)
    return model, history


def assert_same_state(actual: dict, expected: dict, rtol: float) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=rtol, atol=rtol * max(np.abs(value).max(), 1.0),
                                   err_msg=name)


def test_specifiers():
    backend = bp.get_backend("jax")
    assert backend is bp.get_backend("jax:cpu") and backend.spec == "jax:cpu" and backend.library == "jax"
    assert "jax:cpu" in bp.backends.available() and "jax:0" in bp.backends.known_specifiers(gpu=True)
    assert backend.supports("float64")  # the backend turns on JAX's 64-bit mode
    if not [device for device in jax.devices() if device.platform != "cpu"]:
        with pytest.raises(BackendUnavailableError, match=r"'jax:0': this JAX installation sees no GPU.*'jax:cpu'"):
            bp.get_backend("jax:0")
    with pytest.raises(DeviceError, match=r"bad JAX device in 'jax:gpu'.*'jax:N'"):
        bp.get_backend("jax:gpu")
    with pytest.raises(DeviceError, match="'jax:N'"):  # the unknown-device message lists the form
        bp.get_backend("jaxx")


def test_arrays_are_jax_arrays_of_the_models_dtype():
    model, _ = fit_mlp("jax:cpu")
    for name, parameter in model.named_parameters():
        assert isinstance(parameter.value, jax.Array) and parameter.value.dtype == np.float64, name
        assert all(isinstance(slot, jax.Array) for slot in parameter.state.values()), name
    assert all(isinstance(value, jax.Array) for _, value in model.named_buffers())
    assert isinstance(model.predict(X), jax.Array)
    assert model.backend.owns(model.predict(X)) and not model.backend.owns(X)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_fit_with_batchnorm_dropout_and_adam_matches_numpy(dtype, rtol):
    model, history = fit_mlp("jax:cpu", dtype)
    reference, expected = fit_mlp("cpu", dtype)
    assert history.history.keys() == expected.history.keys() == {"loss", "mse", "val_loss", "val_mse"}
    for name, values in expected.history.items():
        np.testing.assert_allclose(history.history[name], values, rtol=rtol, err_msg=name)
    assert_same_state(model.state_dict(), reference.state_dict(), rtol)  # parameters and running statistics
    for (name, parameter), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        for slot, value in theirs.state.items():  # Adam's moments
            np.testing.assert_allclose(bp.to_numpy(parameter.state[slot]), value, rtol=rtol,
                                       atol=rtol * np.abs(value).max(), err_msg=f"{name} {slot}")
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]  # it trained


@pytest.mark.parametrize("build, x, y, loss, dtype, rtol", [
    (mlp, X, Y, bp.losses.MeanSquaredError(), "float64", 1e-12),
    (mlp, X, Y, bp.losses.MeanSquaredError(), "float32", 1e-5),
    (cnn, IMAGES, LABELS, bp.losses.CrossEntropy(), "float64", 1e-12),  # float32: test_conv_layers, on every backend
], ids=["mlp-float64", "mlp-float32", "cnn-float64"])
def test_loss_and_gradients_match_numpy(build, x, y, loss, dtype, rtol):
    model, reference = build("jax:cpu", dtype), build("cpu", dtype)
    value, grads = bp.value_and_grad(model, loss, x, y)
    expected_value, expected_grads = bp.value_and_grad(reference, loss, x, y)
    assert value == pytest.approx(expected_value, rel=rtol)
    assert_same_state(grads, expected_grads, rtol)
    np.testing.assert_allclose(bp.to_numpy(model.predict(x)), reference.predict(x), rtol=rtol,
                               atol=rtol * np.abs(reference.predict(x)).max())


def test_cnn_trains_to_numpys_numbers():
    histories = []
    for device in ("jax:cpu", "cpu"):
        model = cnn(device)
        optimizer = bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        histories.append(model.fit(IMAGES, LABELS, bp.losses.CrossEntropy(), optimizer, epochs=3, seed=2,
                                   metrics=["accuracy"], verbose=0).history)  # full batches: the shapes above
    for name, values in histories[1].items():
        np.testing.assert_allclose(histories[0][name], values, rtol=1e-12, err_msg=name)


class RaiseTheRate(bp.callbacks.Callback):
    """Records the state at the start of every epoch; after epoch 1, sets a learning rate that makes the loss
    overflow a few epochs later."""

    def __init__(self, optimizer: bp.optim.Optimizer) -> None:
        self.optimizer, self.state = optimizer, None

    def on_epoch_begin(self, epoch: int) -> None:
        self.state = self.model.state_dict()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if epoch == 1:
            self.optimizer.lr = 1e4


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_restores_the_snapshot_to_numpys_numbers():
    restored = []
    for device in ("jax:cpu", "cpu"):
        model = bp.Sequential(bp.Dense(6, 8, bias=False), bp.BatchNorm1d(8), bp.Tanh(), bp.Dense(8, 2),
                              device=device, dtype="float64", seed=1)
        optimizer = bp.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        callback = RaiseTheRate(optimizer)
        with pytest.raises(DivergenceError, match="loss became inf") as caught:
            model.fit(X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=6, batch_size=2, seed=0, verbose=0,
                      callbacks=[callback])
        assert caught.value.epoch > 2  # counted from 1: not before the rate was raised
        assert_same_state(model.state_dict(), callback.state, 0.0)  # the diverging epoch's start, exactly
        momentum = {name: bp.to_numpy(p.state["momentum"]) for name, p in model.named_parameters()}
        restored.append((model.state_dict(), momentum, optimizer.steps, str(caught.value)))
    (state, momentum, steps, message), (expected_state, expected_momentum, expected_steps, expected_message) = restored
    assert steps == expected_steps and message == expected_message
    assert_same_state(state, expected_state, 1e-12)
    assert_same_state(momentum, expected_momentum, 1e-12)


def test_checkpoint_saved_on_jax_loads_on_numpy_and_on_jax(tmp_path):
    model, _ = fit_mlp("jax:cpu")
    path = bp.save(model, tmp_path / "model.bp")
    expected = bp.to_numpy(model.predict(X))
    for device in ("cpu", "jax:cpu"):
        loaded = bp.load(path, device=device)
        assert loaded.backend is bp.get_backend(device)
        assert_same_state(loaded.state_dict(), model.state_dict(), 0.0)
        np.testing.assert_allclose(bp.to_numpy(loaded.predict(X)), expected, rtol=1e-12)
    from_numpy = bp.load(bp.save(bp.load(path, device="cpu"), tmp_path / "again.bp"), device="jax:cpu")
    assert_same_state(from_numpy.state_dict(), model.state_dict(), 0.0)  # and back, through a NumPy save


def test_to_moves_between_numpy_and_jax_with_the_optimiser_state():
    """The state crosses bit for bit, and the next gradient is that of a model built on JAX with it."""
    model, _ = fit_mlp("cpu")
    state = model.state_dict()
    slots = {name: dict(p.state) for name, p in model.named_parameters()}
    assert model.to("jax:cpu") is model and model.backend is bp.get_backend("jax:cpu")
    assert all(isinstance(p.value, jax.Array) for p in model.parameters())
    assert_same_state(model.state_dict(), state, 0.0)
    for name, parameter in model.named_parameters():
        assert_same_state({slot: bp.to_numpy(value) for slot, value in parameter.state.items()}, slots[name], 0.0)
    fresh = mlp("jax:cpu")
    fresh.load_state_dict(state)
    fresh.layers[3].set_random_state(model.layers[3].random_state())  # Dropout's generator, advanced by fit
    moved_value, moved_grads = bp.value_and_grad(model, bp.losses.MeanSquaredError(), X, Y)
    fresh_value, fresh_grads = bp.value_and_grad(fresh, bp.losses.MeanSquaredError(), X, Y)
    assert moved_value == fresh_value
    assert_same_state(moved_grads, fresh_grads, 0.0)
    model.to("cpu", dtype="float32")
    assert all(type(p.value) is np.ndarray and p.value.dtype == np.float32 for p in model.parameters())
    np.testing.assert_allclose(model.state_dict()["0.weight"], state["0.weight"], rtol=1e-7)
