"""Issue 13: no silent wrong results, and refused calls change nothing.

The matrix at the bottom tries every entry point with bad values on every CPU backend; each case asserts the
exception class (ours and the built-in one), that the message names the problem, and that the model's
parameters and the optimiser's state (step counts, hyper-parameters, slots) are exactly what they were.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

import backprop as bp
from backprop.errors import (
    ArgumentTypeError,
    BackpropError,
    ConfigurationError,
    DivergenceError,
    LossActivationWarning,
    TargetError,
)

losses = bp.losses


def trained(device: str = "cpu", optimizer: str = "adam"):
    """A 3-4-2 model and an optimiser that has taken one step (so it has slots and step counts)."""
    model = bp.Sequential(bp.Dense(3, 4), bp.Tanh(), bp.Dense(4, 2), device=device, seed=0)
    kinds = {"adam": lambda: bp.optim.Adam(model.parameters(), lr=0.01),
             "sgd": lambda: bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)}
    opt = kinds[optimizer]()
    bp.value_and_grad(model, losses.MeanSquaredError(), X, Y)
    opt.step()
    return model, opt


X = np.linspace(-1.0, 1.0, 15).reshape(5, 3)
Y = np.stack([np.sin(X[:, 0]), np.cos(X[:, 1])], axis=1)


def state_of(model, optimizer=None) -> dict:
    """Host copies of everything a refused call must leave alone."""
    state = {name: np.array(value, copy=True) for name, value in model.state_dict().items()}
    for name, parameter in model.named_parameters():
        for slot, value in parameter.state.items():
            state[f"{name}/{slot}"] = np.array(bp.to_numpy(value), copy=True)
        state[f"{name}/has_grad"] = parameter.has_grad
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def assert_unchanged(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for name, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[name], value, err_msg=name)
        else:
            assert after[name] == value, name


def check_error(error: BaseException, kind: type, builtin: type, fragments: tuple) -> None:
    assert isinstance(error, kind) and isinstance(error, BackpropError) and isinstance(error, builtin), type(error)
    for fragment in fragments:
        assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"


# -- 1. the direction of a monitored value ----------------------------------------------------------------------
@pytest.mark.parametrize("monitor, mode", [
    ("val_accuracy", "max"), ("accuracy", "max"), ("val_acc", "max"), ("top3_accuracy", "max"), ("val_auc", "max"),
    ("f1_score", "max"), ("loss", "min"), ("val_loss", "min"), ("val_mse", "min"), ("mean_absolute_error", "min"),
])
def test_callbacks_infer_the_direction_from_the_name_and_log_it(monitor, mode, caplog):
    with caplog.at_level(logging.INFO, logger="backprop"):
        assert bp.callbacks.EarlyStopping(monitor).mode == mode
        assert bp.ModelCheckpoint("m.bpk", monitor=monitor, save_best_only=True).mode == mode
    assert sum(f"monitors {monitor!r} with mode={mode!r}" in record.getMessage() for record in caplog.records) == 2


@pytest.mark.parametrize("build", [lambda: bp.callbacks.EarlyStopping("val_margin"),
                                   lambda: bp.ModelCheckpoint("m.bpk", monitor="val_margin", save_best_only=True),
                                   lambda: bp.callbacks.EarlyStopping("accuracy_loss")])
def test_an_unclassifiable_monitor_needs_a_mode(build):
    with pytest.raises(ConfigurationError) as excinfo:
        build()
    check_error(excinfo.value, ConfigurationError, ValueError, ("should go up or down", "mode='max'", "mode='min'"))


def test_model_checkpoint_on_val_accuracy_keeps_the_best_epoch(tmp_path):
    """The issue's case: save_best_only on an accuracy kept the worst epoch, its mode defaulting to "min"."""
    model, _ = trained()
    callback = bp.ModelCheckpoint(tmp_path / "best.bpk", monitor="val_accuracy", save_best_only=True)
    callback.on_train_begin(model)
    for epoch, accuracy in enumerate([0.5, 0.8, 0.6, 0.7]):
        callback.on_epoch_end(epoch, {"loss": 1.0, "val_accuracy": accuracy})
    assert bp.load_checkpoint(tmp_path / "best.bpk").extra["epoch"] == 1 and callback.best == 0.8


# -- 2. accuracy knows logits ------------------------------------------------------------------------------------
def test_single_logit_accuracy_thresholds_at_zero(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 2))
    y = (x[:, 0] + 0.5 * rng.standard_normal(40) > 0.3).astype(float)
    model = bp.Sequential(bp.Dense(2, 1), device=backend, dtype="float64", seed=1)
    logits = bp.to_numpy(model.predict(x))[:, 0]
    truth = float(np.mean((logits >= 0) == (y >= 0.5)))
    wrong = float(np.mean((logits >= 0.5) == (y >= 0.5)))
    assert truth != wrong  # the case distinguishes the two thresholds
    logged = model.evaluate(x, y, losses.BinaryCrossEntropy(from_logits=True), metrics=["accuracy"])["accuracy"]
    assert logged == pytest.approx(truth, abs=1e-12)
    probabilities = bp.Sequential(bp.Dense(2, 1), bp.Sigmoid(), device=backend, dtype="float64", seed=1)
    logged = probabilities.evaluate(x, y, losses.BinaryCrossEntropy(), metrics=["accuracy"])["accuracy"]
    assert logged == pytest.approx(truth, abs=1e-12)  # sigmoid(z) >= 0.5 exactly when z >= 0


# -- 3. last layer and loss disagree -----------------------------------------------------------------------------
@pytest.mark.parametrize("last, loss, fragment", [
    (bp.Softmax, lambda: losses.CrossEntropy(), "applies softmax again"),
    (bp.Sigmoid, lambda: losses.BinaryCrossEntropy(from_logits=True), "applies sigmoid again"),
    (bp.Identity, lambda: losses.CrossEntropy(from_logits=False), "expects probabilities"),
    (bp.Tanh, lambda: losses.BinaryCrossEntropy(), "expects probabilities"),
])
def test_fit_warns_once_when_the_last_layer_and_the_loss_disagree(last, loss, fragment):
    model = bp.Sequential(bp.Dense(3, 2), last(), seed=0)
    y = np.array([0, 1, 1, 0, 1]) if isinstance(loss(), losses.CrossEntropy) else np.ones((5, 2)) * 0.5
    with pytest.warns(LossActivationWarning) as record:
        model.fit(X, y, loss(), bp.optim.SGD(model.parameters(), lr=0.01), epochs=2, verbose=0)
    assert len(record) == 1 and fragment in str(record[0].message) and "from_logits=" in str(record[0].message)


@pytest.mark.parametrize("last, loss", [(bp.Dense, lambda: losses.CrossEntropy()),
                                        (bp.Softmax, lambda: losses.CrossEntropy(from_logits=False)),
                                        (bp.Sigmoid, lambda: losses.BinaryCrossEntropy()),
                                        (bp.Dense, lambda: losses.MeanSquaredError())])
def test_matching_last_layer_and_loss_do_not_warn(last, loss):
    model = bp.Sequential(bp.Dense(3, 2), last(2, 2) if last is bp.Dense else last(), seed=0)
    y = np.array([0, 1, 1, 0, 1]) if isinstance(loss(), losses.CrossEntropy) else np.ones((5, 2)) * 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", LossActivationWarning)
        model.fit(X, y, loss(), bp.optim.SGD(model.parameters(), lr=0.01), epochs=1, verbose=0)


# -- 5. CrossEntropy probability rows ----------------------------------------------------------------------------
@pytest.mark.parametrize("rows, fragment", [
    ([[2.0, -1.0]], "negative entry (-1)"),
    ([[0.5, 0.4]], "summing to 0.9"),
    ([[0.0, 0.0]], "summing to 0"),
    ([[1.0, 1.0]], "summing to 2"),
    ([[-0.5, 1.5]], "negative entry (-0.5)"),
    ([[1, 1]], "summing to 2"),  # integer rows go through the same check
])
def test_cross_entropy_refuses_rows_that_are_not_probabilities(backend, rows, fragment):
    model = bp.Sequential(bp.Dense(3, 2), device=backend, seed=0)
    target = np.array(rows * 5)
    before = state_of(model)
    for call in (lambda: bp.value_and_grad(model, losses.CrossEntropy(), X, target),
                 lambda: model.fit(X, target, losses.CrossEntropy(), bp.optim.SGD(model.parameters(), lr=0.1),
                                   epochs=1, verbose=0),
                 lambda: model.evaluate(X, target, losses.CrossEntropy())):
        with pytest.raises(TargetError) as excinfo:
            call()
        check_error(excinfo.value, TargetError, ValueError, ("probabilities", fragment, "class indices"))
        assert_unchanged(before, state_of(model))


def test_cross_entropy_accepts_soft_rows_within_rounding(backend):
    model = bp.Sequential(bp.Dense(3, 3), device=backend, seed=0)
    rows = np.random.default_rng(0).dirichlet(np.ones(3), 5).astype(np.float32)  # sums off by float32 rounding
    value, _ = bp.value_and_grad(model, losses.CrossEntropy(), X, rows)
    output = bp.to_numpy(model.predict(X)).astype(np.float64)
    log_q = output - output.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    assert value == pytest.approx(-np.sum(rows * log_q) / 5, rel=1e-5)


# -- 9. divergence restore never keeps non-finite parameters ----------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_restores_the_last_finite_state(backend):
    """The issue's case: the last step of epoch 1 overflows the weight although its loss was finite."""
    model = bp.Sequential(bp.Dense(1, 1, init=bp.init.constant(0.5)), device=backend, seed=0)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.01)
    x, y = np.full((2, 1), 2e19), np.zeros((2, 1))
    with pytest.raises(DivergenceError) as excinfo:
        model.fit(x, y, losses.MeanSquaredError(), optimizer, epochs=3, verbose=0)
    assert excinfo.value.epoch == 1 and "parameters became NaN or infinite" in str(excinfo.value)
    state = model.state_dict()
    assert state["0.weight"][0, 0] == np.float32(0.5) and state["0.bias"][0] == 0.0
    assert optimizer.steps == 0


# -- 10. an interrupted optimiser step ---------------------------------------------------------------------------
class Interrupt(BaseException):
    pass


@pytest.mark.parametrize("build", [
    lambda p: bp.optim.Adam(p, lr=0.01), lambda p: bp.optim.AdamW(p, lr=0.01, amsgrad=True),
    lambda p: bp.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: bp.optim.RMSprop(p, lr=0.01, centered=True),
], ids=["Adam", "AdamW", "SGD", "RMSprop"])
@pytest.mark.parametrize("at_step", [1, 2])
def test_an_interrupted_step_leaves_the_optimiser_usable(backend, build, at_step, monkeypatch):
    def run(interrupt: bool):
        model = bp.Sequential(bp.Dense(3, 4), bp.Tanh(), bp.Dense(4, 2), device=backend, seed=0)
        optimizer = build(model.parameters())
        for step in (1, 2, 3):
            bp.value_and_grad(model, losses.MeanSquaredError(), X, Y)
            if interrupt and step == at_step:
                original = type(optimizer).update
                calls = []

                def update(self, parameter, count):
                    calls.append(parameter.name)
                    if len(calls) == 3:  # in the middle of the step: two parameters done, the third interrupted
                        raise Interrupt()
                    return original(self, parameter, count)

                monkeypatch.setattr(type(optimizer), "update", update)
                with pytest.raises(Interrupt):
                    optimizer.step()
                monkeypatch.setattr(type(optimizer), "update", original)
                assert optimizer.parameter_steps == [step, step, step - 1, step - 1] and optimizer.steps == step
            optimizer.step()
        return model, optimizer

    model, optimizer = run(interrupt=True)
    # the interrupted call updated parameters 0 and 1 once more than a clean run: compare with a run that does so
    assert optimizer.parameter_steps == [4, 4, 3, 3]
    for parameter in model.parameters():
        assert np.all(np.isfinite(bp.to_numpy(parameter.value)))


def test_an_interrupted_first_update_leaves_no_half_made_slots(monkeypatch):
    model = bp.Sequential(bp.Dense(3, 2), seed=0)
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    bp.value_and_grad(model, losses.MeanSquaredError(), X, Y)
    before = state_of(model, optimizer)
    original = bp.optim.Adam.slot

    def slot(self, parameter, name, step):
        if name == "exp_avg_sq":
            raise KeyboardInterrupt
        return original(self, parameter, name, step)

    monkeypatch.setattr(bp.optim.Adam, "slot", slot)
    with pytest.raises(KeyboardInterrupt):
        optimizer.step()
    monkeypatch.setattr(bp.optim.Adam, "slot", original)
    assert_unchanged(before, state_of(model, optimizer))
    optimizer.step()  # the issue: "has no optimiser slot 'exp_avg' although Adam has updated it 1 times"
    fresh = bp.Sequential(bp.Dense(3, 2), seed=0)
    fresh_optimizer = bp.optim.Adam(fresh.parameters(), lr=0.01)
    bp.value_and_grad(fresh, losses.MeanSquaredError(), X, Y)
    fresh_optimizer.step()
    assert_unchanged(state_of(fresh, fresh_optimizer), state_of(model, optimizer))


# -- 16. the matrix: entry point x bad value x backend ------------------------------------------------------------
class KerasStyle:
    """A Keras callback's hooks: no on_train_begin(model), no on_train_end with our signature... only two hooks."""

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_begin(self, logs=None):
        pass


def _fit(**options):
    def call(model, optimizer):
        arguments = dict(x=X, y=Y, loss=losses.MeanSquaredError(), optimizer=optimizer, epochs=1, verbose=0)
        arguments.update(options)
        return model.fit(**arguments)
    return call


MATRIX = [
    # (case id, call(model, optimizer), our class, built-in class, message fragments)
    ("fit seed str", _fit(seed="abc"), ConfigurationError, ValueError, ("seed", "'abc'", "None")),
    ("fit seed negative", _fit(seed=-1), ConfigurationError, ValueError, ("seed", "integer >= 0")),
    ("fit seed float", _fit(seed=1.5), ConfigurationError, ValueError, ("seed", "1.5")),
    ("fit metrics int", _fit(metrics=3), ArgumentTypeError, TypeError, ("metrics", "list")),
    ("fit metrics unknown", _fit(metrics=["acc"]), ConfigurationError, ValueError, ("unknown metric 'acc'",)),
    ("fit callbacks int", _fit(callbacks=5), ArgumentTypeError, TypeError, ("callbacks", "list")),
    ("fit keras callback", _fit(callbacks=[KerasStyle()]), ArgumentTypeError, TypeError,
     ("on_epoch_begin", "on_train_end", "subclass backprop.callbacks.Callback", "Keras")),
    ("fit loss str", _fit(loss="mse"), ArgumentTypeError, TypeError, ("loss must be", "MeanSquaredError()", "'mse'")),
    ("fit loss class", _fit(loss=losses.MeanSquaredError), ArgumentTypeError, TypeError, ("loss must be",)),
    ("fit optimizer str", _fit(optimizer="sgd"), ArgumentTypeError, TypeError, ("optimizer must be", "'sgd'")),
    ("fit epochs 0", _fit(epochs=0), ConfigurationError, ValueError, ("epochs", "positive integer")),
    ("fit epochs float", _fit(epochs=2.0), ConfigurationError, ValueError, ("epochs", "2.0")),
    ("fit batch_size -1", _fit(batch_size=-1), ConfigurationError, ValueError, ("batch_size",)),
    ("fit verbose 3", _fit(verbose=3), ConfigurationError, ValueError, ("verbose", "3")),
    ("fit shuffle str", _fit(shuffle="no"), ConfigurationError, ValueError, ("shuffle", "True or False")),
    ("fit penalty float", _fit(penalty=0.1), ArgumentTypeError, TypeError, ("penalty", "L2")),
    ("fit initial_epoch", _fit(initial_epoch=1), ConfigurationError, ValueError, ("initial_epoch",)),
    ("fit validation_data", _fit(validation_data=X), ConfigurationError, ValueError, ("validation_data", "pair")),
    ("fit softmax targets", _fit(loss=losses.CrossEntropy(), y=np.tile([[2.0, -1.0]], (5, 1))), TargetError,
     ValueError, ("negative entry",)),
    ("evaluate loss str", lambda m, o: m.evaluate(X, Y, "mse"), ArgumentTypeError, TypeError, ("loss must be",)),
    ("evaluate metrics", lambda m, o: m.evaluate(X, Y, losses.MeanSquaredError(), metrics=[4]),
     ConfigurationError, ValueError, ("metric", "4")),
    ("Adam(model)", lambda m, o: bp.optim.Adam(m, lr=0.1), ArgumentTypeError, TypeError,
     ("model.parameters()", "not the model")),
    ("SGD(model)", lambda m, o: bp.optim.SGD(m, lr=0.1), ArgumentTypeError, TypeError, ("model.parameters()",)),
    ("SGD(parameter)", lambda m, o: bp.optim.SGD(m.parameters()[0], lr=0.1), ArgumentTypeError, TypeError,
     ("iterable of Parameter",)),
    ("SGD(arrays)", lambda m, o: bp.optim.SGD([np.ones(3)], lr=0.1), ArgumentTypeError, TypeError,
     ("Parameter objects", "ndarray")),
    ("SGD([])", lambda m, o: bp.optim.SGD([], lr=0.1), ConfigurationError, ValueError, ("no parameters",)),
    ("SGD twice", lambda m, o: bp.optim.SGD(m.parameters() * 2, lr=0.1), ConfigurationError, ValueError,
     ("appears twice",)),
    ("SGD lr nan", lambda m, o: bp.optim.SGD(m.parameters(), lr=float("nan")), ConfigurationError, ValueError,
     ("learning rate", "nan")),
    ("Adam betas dict", lambda m, o: bp.optim.Adam(m.parameters(), betas={"a": 0.9, "b": 0.9}), ConfigurationError,
     ValueError, ("betas", "pair")),
    ("clip norm model", lambda m, o: bp.optim.clip_grad_norm(m, 1.0), ArgumentTypeError, TypeError,
     ("model.parameters()",)),
    ("clip norm nan", lambda m, o: bp.optim.clip_grad_norm(m.parameters(), float("nan")), ConfigurationError,
     ValueError, ("max_norm",)),
    ("StepLR(str)", lambda m, o: bp.optim.StepLR("sgd", step_size=2), ArgumentTypeError, TypeError,
     ("optimiser from bp.optim",)),
    ("LeakyReLU(nan)", lambda m, o: bp.LeakyReLU(float("nan")), ConfigurationError, ValueError,
     ("negative_slope", "nan")),
    ("LeakyReLU(str)", lambda m, o: bp.LeakyReLU("0.1"), ConfigurationError, ValueError, ("negative_slope",)),
    ("Dense init", lambda m, o: bp.Dense(3, 2, init="gloriot"), ConfigurationError, ValueError,
     ("unknown initialiser 'gloriot'", "glorot_uniform")),
    ("Dense bias str", lambda m, o: bp.Dense(3, 2, bias="no"), ConfigurationError, ValueError, ("bias",)),
    ("Dropout seed", lambda m, o: bp.Dropout(0.5, seed="x"), ConfigurationError, ValueError, ("Dropout seed",)),
    ("BatchNorm eps", lambda m, o: bp.BatchNorm1d(3, eps=0), ConfigurationError, ValueError, ("eps", "> 0")),
    ("LayerNorm features", lambda m, o: bp.LayerNorm(0), ConfigurationError, ValueError, ("num_features",)),
    ("BCE from_logits str", lambda m, o: losses.BinaryCrossEntropy(from_logits="yes"), ConfigurationError,
     ValueError, ("from_logits", "True or False")),
    ("CE weight str", lambda m, o: losses.CrossEntropy(weight=["a", "b"]), ConfigurationError, ValueError,
     ("CrossEntropy weight", "numbers")),
    ("CE weight negative", lambda m, o: losses.CrossEntropy(weight=[1.0, -1.0]), ConfigurationError, ValueError,
     ("non-negative",)),
    ("MSE reduction", lambda m, o: losses.MeanSquaredError(reduction="avg"), ConfigurationError, ValueError,
     ("reduction", "'avg'")),
    ("L2 nan", lambda m, o: bp.penalties.L2(float("nan")), ConfigurationError, ValueError, ("l2 coefficient",)),
    ("normal std", lambda m, o: bp.init.normal(-1), ConfigurationError, ValueError, ("std",)),
    ("EarlyStopping patience", lambda m, o: bp.callbacks.EarlyStopping(patience=1.5), ConfigurationError, ValueError,
     ("patience",)),
    ("EarlyStopping monitor int", lambda m, o: bp.callbacks.EarlyStopping(monitor=3), ArgumentTypeError, TypeError,
     ("monitor",)),
    ("ModelCheckpoint path", lambda m, o: bp.ModelCheckpoint(None), ArgumentTypeError, TypeError, ("path",)),
    ("ModelCheckpoint optimizer", lambda m, o: bp.ModelCheckpoint("m.bpk", optimizer="adam"), ArgumentTypeError,
     TypeError, ("optimizer",)),
]


@pytest.mark.parametrize("case, call, kind, builtin, fragments", MATRIX, ids=[row[0] for row in MATRIX])
def test_refused_calls_name_the_problem_and_change_nothing(backend, case, call, kind, builtin, fragments):
    model, optimizer = trained(backend)
    before = state_of(model, optimizer)
    with pytest.raises(BackpropError) as excinfo:
        call(model, optimizer)
    check_error(excinfo.value, kind, builtin, fragments)
    assert_unchanged(before, state_of(model, optimizer))


@pytest.mark.parametrize("options", [dict(metrics=None), dict(callbacks=None), dict(seed=np.int64(3)),
                                     dict(metrics="mse"), dict(callbacks=(bp.callbacks.Callback(),))])
def test_none_and_single_values_are_accepted(backend, options):
    model, optimizer = trained(backend)
    history = _fit(**options)(model, optimizer)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])


# -- 6, 16. data at the boundary ---------------------------------------------------------------------------------
def _masked(values):
    return np.ma.masked_array(values, mask=np.arange(values.size).reshape(values.shape) == 4)


DATA = [
    # (case id, x, y, loss, our class, built-in class, message fragments)
    ("x beyond float32", np.full((5, 3), 1e39), Y, losses.MeanSquaredError(), bp.errors.CastOverflowError,
     OverflowError, ("1e+39", "float32", "overflow", "dtype='float64'")),
    ("y beyond float32", X, np.full((5, 2), -4e38), losses.MeanSquaredError(), bp.errors.CastOverflowError,
     OverflowError, ("4e+38", "overflow")),
    ("long double beyond", np.full((5, 3), np.longdouble(1e39)), Y, losses.MeanSquaredError(),
     bp.errors.CastOverflowError, OverflowError, ("overflow",)),
    ("masked x", _masked(X), Y, losses.MeanSquaredError(), bp.errors.DTypeError, TypeError,
     ("masked", "1 masked value", "filled")),
    ("string x", np.array([["a", "b", "c"]] * 5), Y, losses.MeanSquaredError(), bp.errors.DTypeError, TypeError,
     ("dtype <U1", "real numbers")),
    ("string labels", X, np.array(["cat", "dog", "cat", "cat", "dog"]), losses.CrossEntropy(),
     bp.errors.DTypeError, TypeError, ("'cat'", "integers 0..k-1", "LabelEncoder")),
    ("object labels", X, np.array(["cat", "dog", "cat", "cat", "dog"], dtype=object), losses.CrossEntropy(),
     bp.errors.DTypeError, TypeError, ("LabelEncoder",)),
    ("complex x", X.astype(complex), Y, losses.MeanSquaredError(), bp.errors.DTypeError, TypeError, ("complex",)),
    ("0-d x", np.float64(1.0), Y, losses.MeanSquaredError(), bp.errors.ShapeError, ValueError, ("shape ()",)),
    ("0-d y", X, np.float64(1.0), losses.MeanSquaredError(), bp.errors.ShapeError, ValueError, ("()",)),
    ("dict x", {"a": 1}, Y, losses.MeanSquaredError(), bp.errors.DTypeError, TypeError, ("dict",)),
]
ENTRY_POINTS = {
    "predict": lambda model, optimizer, x, y, loss: model.predict(x),
    "fit": lambda model, optimizer, x, y, loss: model.fit(x, y, loss, optimizer, epochs=1, verbose=0),
    "evaluate": lambda model, optimizer, x, y, loss: model.evaluate(x, y, loss),
    "value_and_grad": lambda model, optimizer, x, y, loss: bp.value_and_grad(model, loss, x, y),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case, x, y, loss, kind, builtin, fragments", DATA, ids=[row[0] for row in DATA])
def test_bad_data_is_refused_at_every_entry_point(backend, entry, case, x, y, loss, kind, builtin, fragments):
    if entry == "predict" and x is X:
        pytest.skip("predict takes no targets")  # listed so that the matrix stays a full product; nothing to try
    model, optimizer = trained(backend)
    before = state_of(model, optimizer)
    with pytest.raises(BackpropError) as excinfo:
        ENTRY_POINTS[entry](model, optimizer, x, y, loss)
    check_error(excinfo.value, kind, builtin, fragments)
    assert_unchanged(before, state_of(model, optimizer))


def test_device_arrays_that_overflow_the_cast_are_refused(backend):
    model, optimizer = trained(backend)
    if not model.backend.supports("float64"):
        pytest.skip(f"{backend} has no float64 arrays to narrow")
    big = model.backend.to_device(np.full((5, 3), 1e39), model.backend.dtype("float64"))
    with pytest.raises(bp.errors.CastOverflowError, match="overflow"):
        model.predict(big)
    small = model.backend.to_device(X, model.backend.dtype("float64"))
    np.testing.assert_array_equal(bp.to_numpy(model.predict(small)), bp.to_numpy(model.predict(X.astype(np.float32))))


class ArrayLike:
    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def test_host_containers_numpy_reads_are_accepted(backend):
    import pandas

    model, _ = trained(backend)
    reference = bp.to_numpy(model.predict(X))
    frame = pandas.DataFrame(X, columns=["a", "b", "c"])
    for form in (frame, ArrayLike(X), X.astype(np.longdouble), np.ma.masked_array(X, mask=False)):
        np.testing.assert_array_equal(bp.to_numpy(model.predict(form)), reference)
    labels = pandas.Series([0, 1, 1, 0, 1])
    classifier = bp.Sequential(bp.Dense(3, 2), device=backend, seed=0)
    assert bp.value_and_grad(classifier, losses.CrossEntropy(), frame, labels)[0] == \
        bp.value_and_grad(classifier, losses.CrossEntropy(), X, np.array([0, 1, 1, 0, 1]))[0]


# -- 7. backward casts what it is given ----------------------------------------------------------------------------
def test_backward_casts_an_integer_grad_output_on_the_device(backend):
    model, _ = trained(backend)
    xp = model.backend.xp
    output, backward = model.forward(X, training=True)
    model.zero_grad()
    integer_grad = model.backend.to_device(np.ones((5, 2), dtype=np.int64), None)
    dx = backward(integer_grad)
    grads = {name: bp.to_numpy(p.grad) for name, p in model.named_parameters()}
    assert dx.dtype == model.backend.dtype("float32")
    assert all(p.grad.dtype == model.backend.dtype("float32") for p in model.parameters())
    model.zero_grad()
    _, backward = model.forward(X, training=True)
    backward(xp.ones((5, 2), dtype=model.backend.dtype("float32"), device=model.backend.device))
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(bp.to_numpy(p.grad), grads[name])


# -- 11. a layer belongs to one model ------------------------------------------------------------------------------
def test_a_layer_of_another_model_is_refused(backend):
    first = bp.Sequential(bp.Dense(3, 4), bp.ReLU(), bp.Sequential(bp.Dense(4, 2), bp.Tanh()), seed=0)
    unbuilt = bp.Sequential(bp.ReLU(), bp.Dense(3, 2))  # not built yet: its layers are claimed all the same
    before = state_of(first)
    for layers in ([first.layers[0]], [bp.Dense(2, 3), first.layers[1]], [first.layers[2].layers[0]],
                   [unbuilt.layers[1]]):
        with pytest.raises(ConfigurationError) as excinfo:
            bp.Sequential(*layers, device=backend)
        check_error(excinfo.value, ConfigurationError, ValueError, ("already belongs to another model",
                                                                     "copy.deepcopy(layer)", "model.clone()"))
    assert_unchanged(before, state_of(first))
    assert first.device == "cpu" and all(p.backend.spec == "cpu" for p in first.parameters())
    import copy

    second = bp.Sequential(copy.deepcopy(first.layers[0]), device=backend, seed=0)  # the fixes the message names
    np.testing.assert_array_equal(second.state_dict()["0.weight"], before["0.weight"])  # same seed, same draw
    clone = first.clone()
    np.testing.assert_array_equal(clone.state_dict()["2.0.weight"], before["2.0.weight"])
    with pytest.raises(ConfigurationError, match="already belongs to another model"):
        bp.Sequential(clone.layers[0])
    del unbuilt
    bp.Sequential(bp.ReLU(), bp.Dense(3, 2))  # a model's layers are free again once the model is gone


# -- 4. PyTorch state dicts ----------------------------------------------------------------------------------------
def test_a_pytorch_state_dict_is_refused_and_the_documented_conversion_works(torch):
    linear = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).double()
    model = bp.Sequential(bp.Dense(3, 3), bp.ReLU(), bp.Dense(3, 2), dtype="float64", seed=0)
    before = state_of(model)
    with pytest.raises(bp.errors.ShapeError) as excinfo:
        model.load_state_dict(linear.state_dict())
    check_error(excinfo.value, bp.errors.ShapeError, ValueError, ("PyTorch state_dict", "(in_features, out_features)",
                                                                  ".T"))
    assert_unchanged(before, state_of(model))
    plain = {name: value.detach().numpy() for name, value in linear.state_dict().items()}
    with pytest.raises(bp.errors.ShapeError, match=r"'2.weight'\] has shape \(2, 3\).*transposed"):
        model.load_state_dict(plain)  # the square one would pass: the non-square one names the transpose
    converted = {name: (t.T if t.ndim == 2 else t).detach().cpu().numpy() for name, t in linear.state_dict().items()}
    model.load_state_dict(converted)
    expected = linear(torch.tensor(X)).detach().numpy()
    np.testing.assert_allclose(bp.to_numpy(model.predict(X)), expected, rtol=1e-12)
    on_torch = bp.Sequential(bp.Dense(3, 3), bp.ReLU(), bp.Dense(3, 2), device="torch:cpu", dtype="float64", seed=0)
    on_torch.load_state_dict({name: torch.tensor(value) for name, value in converted.items()})  # ours: accepted
    np.testing.assert_allclose(bp.to_numpy(on_torch.predict(X)), expected, rtol=1e-12)


MODEL_MATRIX = [
    ("Sequential seed str", lambda: bp.Sequential(bp.Dense(3, 2), seed="abc"), ConfigurationError, ValueError,
     ("seed", "'abc'")),
    ("Sequential seed -1", lambda: bp.Sequential(bp.Dense(3, 2), seed=-1), ConfigurationError, ValueError,
     ("seed",)),
    ("Sequential float16", lambda: bp.Sequential(bp.Dense(3, 2), dtype=np.float16), bp.errors.DTypeError, TypeError,
     ("'float32' or 'float64'", "numpy.float32")),
    ("Sequential class", lambda: bp.Sequential(bp.Dense), ArgumentTypeError, TypeError, ("not classes",)),
    ("value_and_grad swapped", lambda: bp.value_and_grad(losses.MeanSquaredError(), bp.Sequential(bp.Dense(3, 2)),
                                                         X, Y), ArgumentTypeError, TypeError, ("swapped",)),
    ("value_and_grad no model", lambda: bp.value_and_grad(lambda x: x, losses.MeanSquaredError(), X, Y),
     ArgumentTypeError, TypeError, ("model must be a bp.Sequential",)),
    ("value_and_grad no loss", lambda: bp.value_and_grad(bp.Sequential(bp.Dense(3, 2)), "mse", X, Y),
     ArgumentTypeError, TypeError, ("loss must be",)),
    ("gradcheck no loss", lambda: bp.gradcheck(bp.Sequential(bp.Dense(3, 2)), None, X, Y), ArgumentTypeError,
     TypeError, ("loss must be",)),
    ("load_state_dict list", lambda: bp.Sequential(bp.Dense(3, 2)).load_state_dict([1, 2]), ArgumentTypeError,
     TypeError, ("mapping",)),
    ("load_state_dict missing", lambda: bp.Sequential(bp.Dense(3, 2)).load_state_dict({}), bp.errors.StateMismatchError,
     KeyError, ("missing ['0.bias', '0.weight']",)),
    ("to float16", lambda: bp.Sequential(bp.Dense(3, 2)).to("cpu", dtype="float16"), bp.errors.DTypeError, TypeError,
     ("float16",)),
]


@pytest.mark.parametrize("case, call, kind, builtin, fragments", MODEL_MATRIX, ids=[row[0] for row in MODEL_MATRIX])
def test_model_level_refusals(case, call, kind, builtin, fragments):
    with pytest.raises(BackpropError) as excinfo:
        call()
    check_error(excinfo.value, kind, builtin, fragments)


def test_numpy_dtypes_are_accepted():
    for given in (np.float32, np.dtype("float32"), "float32"):
        assert bp.Sequential(bp.Dense(3, 2), dtype=given).dtype == "float32"
    assert bp.Sequential(bp.Dense(3, 2), seed=0).to("cpu", dtype=np.float64).dtype == "float64"


def test_a_tensor_that_requires_grad_is_detached_at_the_boundary(torch):
    """Issue 13, item 12: such an input used to give the parameters a grad_fn, and every later fit failed."""
    model = bp.Sequential(bp.Dense(2, 3), bp.ReLU(), bp.Dense(3, 1), device="torch:cpu", dtype="float64", seed=0)
    reference = bp.Sequential(bp.Dense(2, 3), bp.ReLU(), bp.Dense(3, 1), device="torch:cpu", dtype="float64", seed=0)
    x_host = np.random.default_rng(0).standard_normal((8, 2))
    y = np.random.default_rng(1).standard_normal((8, 1))
    tracked = torch.tensor(x_host, requires_grad=True)
    for net, x in ((model, tracked), (reference, x_host)):
        net.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(net.parameters(), lr=0.1), epochs=2, batch_size=4,
                seed=0, verbose=0)
    assert all(p.value.grad_fn is None and not p.value.requires_grad for p in model.parameters())
    assert tracked.grad is None
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        np.testing.assert_array_equal(bp.to_numpy(ours.value), bp.to_numpy(theirs.value))
    model.fit(x_host, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.1), epochs=1, verbose=0)
    assert bp.to_numpy(model.predict(tracked)).shape == (8, 1)
    value, grads = bp.value_and_grad(model, bp.losses.MeanSquaredError(), tracked, y)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads.values())
