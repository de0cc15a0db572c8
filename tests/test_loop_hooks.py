"""The training loop's hooks: a user's `LoopHooks` subclass replaces the step, and per-batch progress."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.gradients import loss_and_backward


class AccumulateHalves(bp.training.LoopHooks):
    """A step that runs forward/backward on each half of the batch and sums the gradients weighted by each half's
    share of the rows, then steps once: the full batch's gradient of a mean loss, in two smaller passes."""

    def __init__(self, model):
        super().__init__(model)
        self.passes = 0

    def step(self, loss, x, y, optimizer, penalty):
        rows = x.shape[0]
        half = max(rows // 2, 1)
        parts = [(0, half), (half, rows)] if rows > 1 else [(0, rows)]
        summed, value = None, 0.0
        for start, stop in parts:
            share = (stop - start) / rows
            part_value = loss_and_backward(self.model, loss, x[start:stop, ...], y[start:stop, ...],
                                           penalty=penalty, prepared=True)
            self.passes += 1
            grads = [p.grad * share for p in self.model.parameters()]
            summed = grads if summed is None else [a + b for a, b in zip(summed, grads)]
            value = value + part_value * share
        for parameter, gradient in zip(self.model.parameters(), summed):
            parameter.grad = gradient
        optimizer.step()
        return value


def _model(device):
    return bp.Sequential(bp.Dense(4, 6), bp.Tanh(), bp.Dense(6, 3), device=device, dtype="float64", seed=1)


@pytest.mark.parametrize("batch_size", [8, 7])
def test_gradient_accumulation_over_two_halves_equals_the_full_batch(backend, batch_size):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 3))
    runs = []
    for hooks_for in (None, AccumulateHalves):
        model = _model(backend)
        optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
        hooks = hooks_for(model) if hooks_for else None
        history = model.fit(x, y, bp.losses.MeanSquaredError(), optimizer, epochs=3, batch_size=batch_size, seed=2,
                            verbose=0, hooks=hooks)
        runs.append((model, history, hooks))
    (full, full_history, _), (halves, halves_history, hooks) = runs
    assert hooks.passes == 2 * 3 * -(-20 // batch_size)
    np.testing.assert_allclose(halves_history.history["loss"], full_history.history["loss"], rtol=1e-12)
    for (name, a), (_, b) in zip(full.named_parameters(), halves.named_parameters()):
        np.testing.assert_allclose(bp.to_numpy(b.value), bp.to_numpy(a.value), rtol=1e-11, atol=1e-13, err_msg=name)


def test_hooks_for_another_model_or_of_another_kind_are_refused():
    model, other = _model("cpu"), _model("cpu")
    x, y = np.zeros((4, 4)), np.zeros((4, 3))
    before = [bp.to_numpy(p.value).copy() for p in model.parameters()]
    with pytest.raises(bp.errors.ConfigurationError, match="another model"):
        model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.1), epochs=1,
                  hooks=bp.training.LoopHooks(other), verbose=0)
    with pytest.raises(TypeError, match="LoopHooks"):
        model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.1), epochs=1,
                  hooks=object(), verbose=0)
    for value, parameter in zip(before, model.parameters()):
        np.testing.assert_array_equal(bp.to_numpy(parameter.value), value)


def test_the_progress_bar_counts_batches_and_shows_the_running_loss(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    from backprop import training

    monkeypatch.setattr(training._Progress, "refresh", 0.0)  # read the running loss after every batch
    shown = []
    real_batch = training._Progress.batch

    def spy(self, backend, losses, sizes):
        real_batch(self, backend, losses, sizes)
        shown.append((self.bar.n, self.total / self.rows))

    monkeypatch.setattr(training._Progress, "batch", spy)
    model = _model("cpu")
    x = np.random.default_rng(3).standard_normal((10, 4))
    y = np.random.default_rng(4).standard_normal((10, 3))
    first = float(bp.losses.MeanSquaredError()(model.predict(x[:4]), model.backend.to_device(y[:4])))
    history = model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.05), epochs=1,
                        batch_size=4, shuffle=False, verbose=1)
    assert [count for count, _ in shown] == [1, 2, 3]
    # the first batch's loss is the initial model's; after the last batch the running mean is the epoch's loss
    np.testing.assert_allclose(shown[0][1], first, rtol=1e-12)
    np.testing.assert_allclose(shown[-1][1], history.history["loss"][0], rtol=1e-12)
    assert shown[1][1] != shown[0][1]
    assert "epoch 1/1" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["loader", "generator with steps", "iterable without length"])
def test_a_streamed_fit_counts_its_batches_in_the_bar(monkeypatch, how):
    """The bar's total is the source's length (``len()`` or ``steps_per_epoch``), or unknown (None) without one."""
    pytest.importorskip("tqdm")
    from backprop import training

    totals = []
    real_begin = training._Progress.begin_epoch

    def spy(self, epoch):
        real_begin(self, epoch)
        totals.append((self.bar.total, self.bar))

    monkeypatch.setattr(training._Progress, "begin_epoch", spy)
    x = np.random.default_rng(5).standard_normal((10, 4))
    y = np.random.default_rng(6).standard_normal((10, 3))
    loader = bp.data.BatchLoader(x, y, batch_size=4, shuffle=False)
    source, options, expected = {
        "loader": (loader, {}, 3),
        "generator with steps": ((batch for batch in list(loader)), {"steps_per_epoch": 3}, 3),
        "iterable without length": (_NoLength(loader), {}, None),
    }[how]
    model = _model("cpu")
    model.fit(source, None, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.05), epochs=1,
              verbose=1, **options)
    assert [total for total, _ in totals] == [expected]
    assert totals[0][1].n == 3  # the bar advanced once per batch


class _NoLength:
    """A re-iterable source that does not know its length."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)
