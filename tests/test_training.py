"""`fit`, `evaluate`, metrics and EarlyStopping: numbers checked against manual loops and across backends."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import backprop as bp
from backprop.backends.base import Backend
from backprop.callbacks import Callback, EarlyStopping
from backprop.errors import ConfigurationError, DivergenceError, NonFiniteError, ShapeError
from backprop.gradients import loss_and_backward
from backprop.metrics import accuracy, mse

RNG = np.random.default_rng(42)
X = RNG.normal(size=(10, 3))
Y = X @ np.array([[0.5], [-1.0], [2.0]]) + 0.1
X_VAL = RNG.normal(size=(6, 3))
Y_VAL = X_VAL @ np.array([[0.5], [-1.0], [2.0]]) + 0.1


def regressor(device: str = "cpu", dtype: str = "float64", seed: int = 0) -> bp.Sequential:
    return bp.Sequential(bp.Dense(3, 5), bp.Tanh(), bp.Dense(5, 1), device=device, dtype=dtype, seed=seed)


def train(model, epochs=3, lr=0.05, momentum=0.9, **options):
    optimizer = bp.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    options.setdefault("verbose", 0)
    return model.fit(X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=epochs, **options), optimizer


def manual_losses(epochs: int, batch_size: int, seed: int | None, lr=0.05, momentum=0.9) -> list[list[float]]:
    """Batch losses per epoch from an explicit loop: host permutation, slices, loss_and_backward, step."""
    model = regressor()
    optimizer = bp.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(epochs):
        order = rng.permutation(len(X)) if seed is not None else np.arange(len(X))
        losses = []
        for start in range(0, len(X), batch_size):
            rows = order[start:start + batch_size]
            losses.append(float(loss_and_backward(model, bp.losses.MeanSquaredError(), X[rows], Y[rows])))
            optimizer.step()
        result.append(losses)
    return result


def test_epoch_loss_is_the_batch_size_weighted_mean_of_batch_losses_in_the_seeded_order():
    history, _ = train(regressor(), epochs=3, batch_size=4, seed=7)
    sizes = np.array([4, 4, 2])
    expected = [float(np.dot(losses, sizes) / 10) for losses in manual_losses(3, 4, seed=7)]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-12)
    unweighted = [float(np.mean(losses)) for losses in manual_losses(3, 4, seed=7)]
    assert not np.allclose(history.history["loss"], unweighted, rtol=1e-6)  # the weighting matters here


def test_without_shuffle_batches_are_taken_in_order():
    history, _ = train(regressor(), epochs=2, batch_size=3, shuffle=False)
    sizes = np.array([3, 3, 3, 1])
    expected = [float(np.dot(losses, sizes) / 10) for losses in manual_losses(2, 3, seed=None)]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-12)


def test_full_batch_is_the_default():
    history, _ = train(regressor(), epochs=4)
    expected = [losses[0] for losses in manual_losses(4, 10, seed=None)]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-12)


def test_shuffling_is_deterministic_for_a_seed_and_differs_between_seeds():
    first, _ = train(regressor(), batch_size=3, seed=1)
    again, _ = train(regressor(), batch_size=3, seed=1)
    other, _ = train(regressor(), batch_size=3, seed=2)
    assert first.history["loss"] == again.history["loss"]
    assert first.history["loss"] != other.history["loss"]


def test_history_holds_python_floats_for_loss_metrics_and_validation():
    history, _ = train(regressor(), epochs=2, batch_size=4, seed=0, metrics=["mse"], validation_data=(X_VAL, Y_VAL))
    assert set(history.history) == {"loss", "mse", "val_loss", "val_mse"}
    assert history.epoch == [0, 1]
    for values in history.history.values():
        assert len(values) == 2 and all(type(v) is float for v in values)
    # the validation MSE metric is the validation MSE loss
    assert history.history["val_mse"] == pytest.approx(history.history["val_loss"], rel=1e-12)


def test_validation_and_training_metrics_use_the_epochs_final_parameters():
    model = regressor()
    history, _ = train(model, epochs=2, batch_size=4, seed=0, metrics=["mse"], validation_data=(X_VAL, Y_VAL))
    prediction = bp.to_numpy(model.predict(X_VAL))
    assert history.history["val_loss"][-1] == pytest.approx(float(np.mean((prediction - Y_VAL) ** 2)), rel=1e-12)
    train_prediction = bp.to_numpy(model.predict(X))
    assert history.history["mse"][-1] == pytest.approx(float(np.mean((train_prediction - Y) ** 2)), rel=1e-12)
    scores = model.evaluate(X_VAL, Y_VAL, bp.losses.MeanSquaredError(), metrics=["mse"], batch_size=4)
    assert scores["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-12)


def test_same_history_on_every_backend(backend):
    reference, _ = train(regressor("cpu"), epochs=3, batch_size=4, seed=3, metrics=["mse"],
                         validation_data=(X_VAL, Y_VAL))
    model = regressor(backend)
    history, _ = train(model, epochs=3, batch_size=4, seed=3, metrics=["mse"], validation_data=(X_VAL, Y_VAL))
    assert set(history.history) == set(reference.history)
    for name, values in reference.history.items():
        np.testing.assert_allclose(history.history[name], values, rtol=1e-12, atol=1e-14, err_msg=name)
    assert model.device == bp.get_backend(backend).spec


def test_classification_accuracy_with_class_indices(backend):
    rng = np.random.default_rng(0)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    labels = np.repeat(np.arange(3), 20)
    x = centres[labels] + 0.3 * rng.normal(size=(60, 2))
    model = bp.Sequential(bp.Dense(2, 8), bp.ReLU(), bp.Dense(8, 3), device=backend, dtype="float32", seed=0)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = model.fit(x, labels, bp.losses.CrossEntropy(), optimizer, epochs=15, batch_size=16, seed=0,
                        metrics=["accuracy"], validation_data=(x[:30], labels[:30]), verbose=0)
    predicted = np.argmax(bp.to_numpy(model.predict(x)), axis=1)
    assert history.history["accuracy"][-1] == pytest.approx(np.mean(predicted == labels), abs=1e-6)
    assert history.history["accuracy"][-1] == 1.0  # three well-separated blobs
    assert history.history["val_accuracy"][-1] == pytest.approx(np.mean(predicted[:30] == labels[:30]), abs=1e-6)


def test_metrics_against_numpy():
    xp = bp.get_backend("cpu").xp
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]])
    one_hot = np.eye(3)[[1, 0, 0, 2]]
    assert float(accuracy(xp.asarray(scores), xp.asarray(one_hot))) == 0.5
    probabilities = np.array([[0.2], [0.5], [0.49], [0.8]])
    assert float(accuracy(xp.asarray(probabilities), xp.asarray(np.array([[0.0], [1.0], [1.0], [0.0]])))) == 0.5
    assert float(mse(xp.asarray(scores), xp.asarray(one_hot))) == pytest.approx(np.mean((scores - one_hot) ** 2))


def test_callbacks_are_called_in_protocol_order_and_can_stop_training():
    class Recorder(Callback):
        def __init__(self):
            self.calls = []

        def on_train_begin(self, model):
            super().on_train_begin(model)
            self.calls.append("begin")

        def on_epoch_begin(self, epoch):
            self.calls.append(f"epoch {epoch}")

        def on_epoch_end(self, epoch, logs):
            self.calls.append(f"end {epoch} {sorted(logs)}")
            if epoch == 1:
                self.model.stop_training = True

        def on_train_end(self, logs):
            self.calls.append(f"train end {sorted(logs)}")

    recorder = Recorder()
    model = regressor()
    history, _ = train(model, epochs=10, callbacks=[recorder])
    assert recorder.model is model
    assert recorder.calls == ["begin", "epoch 0", "end 0 ['loss']", "epoch 1", "end 1 ['loss']", "train end ['loss']"]
    assert len(history.history["loss"]) == 2


def test_early_stopping_stops_after_patience_epochs_without_improvement_and_restores_the_best():
    class Snapshots(Callback):
        def __init__(self):
            self.states = []

        def on_epoch_end(self, epoch, logs):
            self.states.append(self.model.state_dict())

    stopper = EarlyStopping(monitor="loss", patience=2, min_delta=1e9, restore_best=True)
    snapshots = Snapshots()
    model = regressor()
    history, _ = train(model, epochs=20, callbacks=[snapshots, stopper])
    # epoch 0 sets the best; no later epoch improves by 1e9, so epochs 1 and 2 exhaust the patience
    assert len(history.history["loss"]) == 3
    assert (stopper.best_epoch, stopper.stopped_epoch, stopper.best) == (0, 2, history.history["loss"][0])
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, snapshots.states[0][name])
        assert not np.array_equal(value, snapshots.states[2][name])


def test_early_stopping_follows_the_monitored_series():
    stopper = EarlyStopping(monitor="val_accuracy", patience=1)  # auto mode: higher is better
    model = regressor()
    stopper.on_train_begin(model)
    model.stop_training = False
    for epoch, value in enumerate([0.5, 0.6, 0.6]):
        stopper.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": value})
        assert model.stop_training is (epoch == 2)
    assert (stopper.best, stopper.best_epoch) == (0.6, 1)


def test_early_stopping_names_a_missing_monitor():
    with pytest.raises(ConfigurationError, match="val_loss.*validation_data"):
        train(regressor(), callbacks=[EarlyStopping()])
    with pytest.raises(ConfigurationError, match="patience"):
        EarlyStopping(patience=-1)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_divergence_names_epoch_and_batch_and_restores_the_last_finite_state():
    lr, batch_size = 20.0, 5  # each step multiplies the error; float32 overflows within a few epochs
    model = bp.Sequential(bp.Dense(3, 1), dtype="float32", seed=0)
    optimizer = bp.optim.SGD(model.parameters(), lr=lr)
    # replay by hand to find the first non-finite batch loss and the state at the start of its epoch
    twin = bp.Sequential(bp.Dense(3, 1), dtype="float32", seed=0)
    twin_optimizer = bp.optim.SGD(twin.parameters(), lr=lr)
    step, start_state = 0, twin.state_dict()
    while True:
        if step % 2 == 0:
            start_state = twin.state_dict()
        rows = slice((step % 2) * batch_size, (step % 2 + 1) * batch_size)
        value = float(loss_and_backward(twin, bp.losses.MeanSquaredError(), X[rows], Y[rows]))
        if not math.isfinite(value):
            break
        twin_optimizer.step()
        step += 1
    epoch, batch = step // 2 + 1, step % 2 + 1
    assert epoch >= 2  # the test exercises a restore that is not the initial state
    with pytest.raises(DivergenceError,
                       match=rf"epoch {epoch} of 50, batch {batch} of 2.*smaller learning rate") as caught:
        model.fit(X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=50, batch_size=batch_size, shuffle=False,
                  verbose=0)
    assert (caught.value.epoch, caught.value.batch) == (epoch, batch)
    assert isinstance(caught.value, FloatingPointError)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, start_state[name])
    assert optimizer.steps == 2 * (epoch - 1)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_divergence_restores_momentum_slots():
    model = bp.Sequential(bp.Dense(3, 1), dtype="float32", seed=0)
    optimizer = bp.optim.SGD(model.parameters(), lr=20.0, momentum=0.5)
    with pytest.raises(DivergenceError):
        model.fit(X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=50, verbose=0)
    for parameter in model.parameters():
        assert np.all(np.isfinite(bp.to_numpy(parameter.value)))
        assert all(np.all(np.isfinite(bp.to_numpy(slot))) for slot in parameter.state.values())


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the check itself computes no inf * 0 (NumPy would warn)
def test_parameters_that_overflow_in_the_very_last_step_are_caught_and_restored():
    class Poisoning(bp.optim.SGD):
        """SGD whose third step writes inf into the first parameter, after that batch's loss was computed."""

        def step(self):
            super().step()
            if self.steps == 3:
                self.params[0].value = self.params[0].value * np.inf

    model = regressor()
    optimizer = Poisoning(model.parameters(), lr=0.05)
    states = []

    class Record(Callback):
        def on_epoch_end(self, epoch, logs):
            states.append(self.model.state_dict())

    with pytest.raises(DivergenceError, match="parameters became NaN or infinite at epoch 3 of 3, batch 1 of 1"):
        model.fit(X, Y, bp.losses.MeanSquaredError(), optimizer, epochs=3, callbacks=[Record()], verbose=0)
    assert len(states) == 2  # every loss was finite: the end-of-epoch check found the overflow before callbacks ran
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, states[1][name])  # the start of epoch 3


@pytest.mark.parametrize("change, error, message", [
    (dict(x=np.where(np.arange(30).reshape(10, 3) == 4, np.nan, X)), NonFiniteError, "training inputs contain"),
    (dict(y=np.where(np.arange(10).reshape(10, 1) == 2, np.inf, Y)), NonFiniteError, "training targets contain"),
    (dict(y=Y[:9]), ShapeError, "10 samples"),
    (dict(x=X[:, :2]), ShapeError, r"expects input of shape \(n, 3\)"),
    (dict(epochs=0), ConfigurationError, "epochs"),
    (dict(epochs=2.5), ConfigurationError, "epochs"),
    (dict(batch_size=0), ConfigurationError, "batch_size"),
    (dict(batch_size=True), ConfigurationError, "batch_size"),
    (dict(verbose=3), ConfigurationError, "verbose"),
    (dict(metrics=["f1"]), ConfigurationError, "unknown metric"),
    (dict(validation_data=(X_VAL,)), ConfigurationError, "pair"),
    (dict(validation_data=(X_VAL, np.full((6, 1), np.nan))), NonFiniteError, "validation targets"),
    (dict(loss="mse"), TypeError, "loss must be"),
    (dict(callbacks=[object()]), TypeError, "lacks"),
])
def test_bad_input_raises_before_the_first_step(change, error, message):
    model = regressor()
    before = model.state_dict()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    arguments = dict(x=X, y=Y, loss=bp.losses.MeanSquaredError(), optimizer=optimizer, epochs=2, verbose=0)
    arguments.update(change)
    with pytest.raises(error, match=message):
        model.fit(**arguments)
    assert optimizer.steps == 0
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_an_optimiser_of_another_model_is_refused():
    other = regressor()
    with pytest.raises(ConfigurationError, match="model.parameters"):
        regressor().fit(X, Y, bp.losses.MeanSquaredError(), bp.optim.SGD(other.parameters(), lr=0.1), epochs=1)


def test_host_data_are_moved_to_the_device_once_per_fit(monkeypatch):
    transfers = []
    original = Backend.to_device

    def counting(self, host, dtype=None):
        transfers.append(np.asarray(host).shape)
        return original(self, host, dtype)

    model = regressor("array_api_strict")
    monkeypatch.setattr(Backend, "to_device", counting)
    train(model, epochs=4, batch_size=3, seed=0, metrics=["mse"],
          validation_data=(X_VAL, Y_VAL))
    # x, y, x_val, y_val once each, then one permutation of the 10 sample indices per epoch
    assert sorted(transfers) == sorted([(10, 3), (10, 1), (6, 3), (6, 1)] + [(10,)] * 4)


def test_device_arrays_are_used_without_a_copy(monkeypatch):
    model = regressor("array_api_strict")
    x, y = model.backend.to_device(X, model._dtype), model.backend.to_device(Y, model._dtype)
    transfers = []
    original = Backend.to_device
    monkeypatch.setattr(Backend, "to_device",
                        lambda self, host, dtype=None: transfers.append(1) or original(self, host, dtype))
    history = model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.05), epochs=2,
                        verbose=0)
    assert transfers == [] and len(history.history["loss"]) == 2


def test_verbose_modes(capsys, monkeypatch):
    train(regressor(), epochs=2, verbose=0)
    assert capsys.readouterr() == ("", "")
    train(regressor(), epochs=2, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2: loss ")
    pytest.importorskip("tqdm", reason="the progress bar needs tqdm (pip install tqdm)")
    train(regressor(), epochs=2, verbose=1)
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "loss=" in captured.err and captured.out == ""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # as if tqdm were not installed
    train(regressor(), epochs=2, verbose=1)
    assert len(capsys.readouterr().out.splitlines()) == 2
