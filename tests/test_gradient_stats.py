"""bp.callbacks.GradientStats: per-layer norms recorded during fit equal the norms of value_and_grad's gradients."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp


def network(seed=0):
    return bp.Sequential(bp.Dense(3, 5), bp.Tanh(), bp.Dense(5, 4), bp.ReLU(), bp.Dense(4, 1), dtype="float64",
                         seed=seed)


def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3))
    return x, np.sin(x.sum(axis=1, keepdims=True))


def test_recorded_norms_equal_value_and_grad_norms_step_by_step(backend):
    x, y = data()
    loss = bp.losses.MeanSquaredError()
    model = network().to(backend)
    twin = network().to(backend)  # replays the same steps by hand
    optimizer, twin_optimizer = bp.optim.SGD(model.parameters(), lr=0.1), bp.optim.SGD(twin.parameters(), lr=0.1)
    stats = bp.callbacks.GradientStats(every=2, parameters=True, updates=True)
    history = model.fit(x, y, loss, optimizer, epochs=3, batch_size=6, seed=4, callbacks=[stats], verbose=0)
    assert history.steps == stats.steps == [0, 2, 4]
    assert sorted(history.step_history) == sorted(f"{kind}/{layer}" for kind in ("grad_norm", "param_norm",
                                                                                 "update_ratio")
                                                  for layer in ("0", "2", "4"))
    rng = np.random.default_rng(4)
    step = 0
    for _ in range(3):
        order = rng.permutation(12)
        for start in (0, 6):
            rows = order[start:start + 6]
            before = twin.state_dict()
            _, grads = bp.value_and_grad(twin, loss, x[rows], y[rows])
            twin_optimizer.step()
            after = twin.state_dict()
            if step % 2 == 0:
                record = history.steps.index(step)
                for layer in ("0", "2", "4"):
                    names = (f"{layer}.weight", f"{layer}.bias")
                    grad_norm = np.sqrt(sum(np.sum(grads[n] ** 2) for n in names))
                    param_norm = np.sqrt(sum(np.sum(after[n] ** 2) for n in names))
                    update = np.sqrt(sum(np.sum((after[n] - before[n]) ** 2) for n in names))
                    np.testing.assert_allclose(history.step_history[f"grad_norm/{layer}"][record], grad_norm,
                                               rtol=1e-12)
                    np.testing.assert_allclose(history.step_history[f"param_norm/{layer}"][record], param_norm,
                                               rtol=1e-12)
                    np.testing.assert_allclose(history.step_history[f"update_ratio/{layer}"][record],
                                               update / param_norm, rtol=1e-9)
            step += 1
    np.testing.assert_array_equal(model.state_dict()["0.weight"], twin.state_dict()["0.weight"])


def test_gradient_stats_only_records_gradients_by_default_and_checks_its_arguments():
    x, y = data()
    model = network()
    stats = bp.callbacks.GradientStats()
    history = model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.Adam(model.parameters(), lr=1e-2), epochs=2,
                        batch_size=4, callbacks=[stats], verbose=0)
    assert history.steps == list(range(6)) and set(history.step_history) == {"grad_norm/0", "grad_norm/2",
                                                                            "grad_norm/4"}
    assert all(value > 0 for values in history.step_history.values() for value in values)
    with pytest.raises(bp.errors.ConfigurationError, match="every"):
        bp.callbacks.GradientStats(every=0)


def test_a_callback_without_batch_hooks_is_not_called_per_batch():
    calls = []

    class PerEpoch(bp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            calls.append(epoch)

    x, y = data()
    model = network()
    model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.1), epochs=2,
              batch_size=3, callbacks=[PerEpoch()], verbose=0)
    assert calls == [0, 1]
    assert bp.training._batch_hooks([PerEpoch()], "on_train_batch_end") == []
    assert len(bp.training._batch_hooks([bp.callbacks.GradientStats()], "on_train_batch_end")) == 1
