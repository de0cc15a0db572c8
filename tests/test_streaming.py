"""fit/evaluate/predict on sources of host batches, validation_split, predict(batch_size=), lr in the logs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import backprop as bp


def classification(samples=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] ** 2 > 0.5).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)


def classifier(device="cpu", seed=0):
    return bp.Sequential(bp.Dense(4, 8), bp.Tanh(), bp.Dropout(0.2), bp.Dense(8, 3), device=device, seed=seed)


def test_streaming_fit_equals_in_memory_fit_bitwise(backend):
    x, y = classification()
    x_val, y_val = classification(20, seed=1)
    loss = bp.losses.CrossEntropy()
    runs = []
    for streaming in (False, True):
        model = classifier(backend)
        optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
        if streaming:
            data = (bp.data.BatchLoader(x, y, batch_size=16, seed=5), None)
            options = {"validation_data": bp.data.BatchLoader(x_val, y_val, batch_size=16, shuffle=False)}
        else:
            data, options = (x, y), {"batch_size": 16, "seed": 5, "validation_data": (x_val, y_val)}
        history = model.fit(*data, loss, optimizer, epochs=4, verbose=0, **options)
        runs.append((history.history, model.state_dict(), optimizer.steps))
    (memory, memory_state, memory_steps), (stream, stream_state, stream_steps) = runs
    assert memory["loss"] == stream["loss"] and memory["val_loss"] == stream["val_loss"]
    assert memory_steps == stream_steps == 4 * 4
    for name in memory_state:
        np.testing.assert_array_equal(stream_state[name], memory_state[name], err_msg=name)


@pytest.mark.parametrize("validation_as", ["arrays", "source"])
def test_a_streamed_fit_scores_every_metric_on_the_validation_data(validation_as):
    x, y = classification()
    x_val, y_val = classification(20, seed=1)
    model = classifier()
    validation = (x_val, y_val) if validation_as == "arrays" else bp.data.BatchLoader(x_val, y_val, 8, shuffle=False)
    history = model.fit(bp.data.BatchLoader(x, y, batch_size=16, seed=5), None, bp.losses.CrossEntropy(),
                        bp.optim.SGD(model.parameters(), lr=0.1), epochs=2, metrics=["accuracy"], verbose=0,
                        validation_data=validation).history
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    final = model.evaluate(x_val, y_val, bp.losses.CrossEntropy(), metrics=["accuracy"])
    assert history["val_accuracy"][-1] == pytest.approx(final["accuracy"], rel=1e-12)
    assert history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-6)


def test_a_generator_needs_steps_per_epoch_and_continues_across_epochs():
    x, y = classification()

    def forever():
        rng = np.random.default_rng(0)
        while True:
            rows = rng.integers(0, len(x), size=10)
            yield x[rows], y[rows]

    model = classifier()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(bp.errors.ConfigurationError, match="steps_per_epoch"):
        model.fit(forever(), None, bp.losses.CrossEntropy(), optimizer, epochs=2, verbose=0)
    assert optimizer.steps == 0
    history = model.fit(forever(), None, bp.losses.CrossEntropy(), optimizer, epochs=3, steps_per_epoch=7,
                        metrics=["accuracy"], verbose=0)
    assert optimizer.steps == 21 and len(history.history["loss"]) == 3
    assert 0.0 <= history.history["accuracy"][-1] <= 1.0
    capped = bp.data.BatchLoader(x, y, batch_size=5, seed=0)
    model.fit(capped, None, bp.losses.CrossEntropy(), optimizer, epochs=2, steps_per_epoch=3, verbose=0)
    assert optimizer.steps == 27


def test_every_batch_is_checked_as_arrays_are():
    x, y = classification()
    bad = x.copy()
    bad[23, 1] = np.nan
    model = classifier()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    before = model.state_dict()
    with pytest.raises(bp.errors.NonFiniteError, match="training batch 2 inputs"):
        model.fit(bp.data.BatchLoader(bad, y, 16, shuffle=False), None, bp.losses.CrossEntropy(), optimizer, 1,
                  verbose=0)
    labels = y.copy()
    labels[40] = 3  # a fourth class for three outputs
    with pytest.raises(bp.errors.TargetError, match=r"\[0, 2\]"):
        model.fit(bp.data.BatchLoader(x, labels, 16, shuffle=False), None, bp.losses.CrossEntropy(), optimizer, 1,
                  verbose=0)
    with pytest.raises(bp.errors.ConfigurationError, match="y must be None"):
        model.fit(bp.data.BatchLoader(x, y, 16), y, bp.losses.CrossEntropy(), optimizer, 1, verbose=0)
    with pytest.raises(bp.errors.ConfigurationError, match="not a pair"):
        model.fit(iter([x, x]), None, bp.losses.CrossEntropy(), optimizer, 1, steps_per_epoch=1, verbose=0)
    # the batches before the refused one had trained: the epoch's starting state was restored, as on divergence
    assert optimizer.steps == 0
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_streaming_divergence_restores_the_epoch_and_names_the_batch():
    x, y = classification()
    model = bp.Sequential(bp.Dense(4, 3), seed=0)
    optimizer = bp.optim.SGD(model.parameters(), lr=1e30)
    loader = bp.data.BatchLoader(x * 1e10, y, 10, shuffle=False)
    before = model.state_dict()
    with pytest.raises(bp.errors.DivergenceError, match="epoch 1 of 2, batch") as caught:
        model.fit(loader, None, bp.losses.CrossEntropy(), optimizer, epochs=2, verbose=0)
    assert caught.value.epoch == 1
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    assert optimizer.steps == 0


def test_evaluate_and_predict_on_sources_and_in_batches(backend):
    x, y = classification()
    model = classifier(backend)
    loss = bp.losses.CrossEntropy()
    whole = model.evaluate(x, y, loss, metrics=["accuracy"], batch_size=16)
    streamed = model.evaluate(bp.data.BatchLoader(x, y, 16, shuffle=False), None, loss, metrics=["accuracy"])
    assert streamed == pytest.approx(whole, rel=1e-6)
    full = bp.to_numpy(model.predict(x))
    np.testing.assert_allclose(bp.to_numpy(model.predict(x, batch_size=7)), full, rtol=1e-6, atol=1e-7)
    from_source = model.predict(bp.data.BatchLoader(x, y, 16, shuffle=False))
    assert type(from_source) is np.ndarray
    np.testing.assert_allclose(from_source, full, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.predict(iter([x[:20], x[20:]])), full, rtol=1e-6, atol=1e-7)


def test_validation_split_holds_out_the_last_samples():
    x, y = classification()
    loss = bp.losses.CrossEntropy()
    histories = []
    for options in ({"validation_split": 0.2}, {"validation_data": (x[40:], y[40:])}):
        model = classifier()
        train = (x, y) if "validation_split" in options else (x[:40], y[:40])
        histories.append(model.fit(*train, loss, bp.optim.SGD(model.parameters(), lr=0.1), epochs=3, batch_size=8,
                                   seed=0, verbose=0, **options).history)
    assert histories[0] == histories[1] and len(histories[0]["val_loss"]) == 3
    model = classifier()
    with pytest.raises(bp.errors.ConfigurationError, match="validation_split"):
        model.fit(x, y, loss, bp.optim.SGD(model.parameters(), lr=0.1), 1, validation_split=1.5, verbose=0)
    with pytest.raises(bp.errors.ConfigurationError, match="one or the other"):
        model.fit(x, y, loss, bp.optim.SGD(model.parameters(), lr=0.1), 1, validation_split=0.2,
                  validation_data=(x, y), verbose=0)


def test_the_learning_rate_is_logged_when_a_schedule_runs():
    x, y = classification()
    model = classifier()
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1)
    history = model.fit(x, y, bp.losses.CrossEntropy(), optimizer, epochs=4, verbose=0,
                        callbacks=[bp.optim.StepLR(optimizer, step_size=2, gamma=0.5)])
    assert history.history["lr"] == [0.1, 0.1, 0.05, 0.05]
    plain = classifier()
    assert "lr" not in plain.fit(x, y, bp.losses.CrossEntropy(), bp.optim.SGD(plain.parameters(), lr=0.1), 1,
                                 verbose=0).history


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="History.plot needs matplotlib")
def test_history_plot_draws_training_and_validation_curves(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    x, y = classification()
    model = classifier()
    history = model.fit(x, y, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1), epochs=3,
                        metrics=["accuracy"], validation_split=0.2, verbose=0)
    figure = history.plot(tmp_path / "history.png")
    loss_axes, accuracy_axes = figure.axes
    assert [line.get_label() for line in loss_axes.lines] == ["training loss", "validation loss"]
    np.testing.assert_array_equal(loss_axes.lines[1].get_ydata(), history.history["val_loss"])
    assert accuracy_axes.get_xlabel() == "epoch" and accuracy_axes.get_ylabel() == "accuracy"
    assert (tmp_path / "history.png").stat().st_size > 5000


def test_early_stopping_says_when_it_stopped_and_which_epoch_it_restored(capsys):
    x, y = classification()
    model = classifier()
    stopper = bp.callbacks.EarlyStopping("val_loss", patience=2, restore_best=True)
    history = model.fit(x, y, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=3.0), epochs=40,
                        validation_split=0.3, callbacks=[stopper], verbose=0)
    best = int(np.argmin(history.history["val_loss"]))
    assert stopper.stopped_epoch == len(history.epoch) - 1 == best + 2
    expected = (f"EarlyStopping: stopped after epoch {best + 3}: val_loss did not improve by more than 0 for 2 "
                f"epoch(s); best val_loss {history.history['val_loss'][best]:.6g} at epoch {best + 1}; restored the "
                f"parameters of epoch {best + 1}")
    assert stopper.message == expected and capsys.readouterr().out.strip() == expected
    quiet = bp.callbacks.EarlyStopping("loss", patience=50, verbose=0)
    model.fit(x, y, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.01), epochs=2,
              callbacks=[quiet], verbose=0)
    assert quiet.message.startswith("EarlyStopping: did not stop") and "keeps the parameters of the last" in \
        quiet.message and capsys.readouterr().out == ""


def test_model_checkpoint_is_also_a_callback_name():
    assert bp.callbacks.ModelCheckpoint is bp.ModelCheckpoint


def test_augmented_image_stream_trains_reproducibly():
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :, :4].mean(axis=(1, 2)) > x[:, 0, :, 4:].mean(axis=(1, 2))).astype(np.int64)
    augment = bp.augment.Compose(bp.augment.RandomShift(1), bp.augment.HorizontalFlip(0.5),
                                 bp.augment.GaussianNoise(0.05))
    losses = []
    for transform in (augment, augment, None):
        model = bp.Sequential(bp.Flatten(), bp.Dense(64, 2), input_shape=(1, 8, 8), seed=0)
        loader = bp.data.BatchLoader(x, y, batch_size=10, seed=3, transform=transform)
        losses.append(model.fit(loader, None, bp.losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1),
                                epochs=3, verbose=0).history["loss"])
    assert losses[0] == losses[1] and losses[0] != losses[2]
