"""The scikit-learn estimators: scikit-learn's own estimator checks, model selection, labels, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.7",
                    reason="backprop.sklearn needs scikit-learn >= 1.7 (the sklearn extra)")

from sklearn.datasets import load_digits, load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import backprop as bp  # noqa: E402
from backprop.sklearn import BackpropClassifier, BackpropRegressor  # noqa: E402

# The short runs below stop at max_iter on purpose; the warning itself is asserted once.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Every check passes: no expected failures. (check_array_api_input skips itself unless SCIPY_ARRAY_API=1 is set.)
EXPECTED_FAILURES: dict[str, str] = {}


@parametrize_with_checks([BackpropClassifier(random_state=0), BackpropRegressor(random_state=0)],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILURES)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    return x, y


def test_pipeline_grid_search_and_cross_validation_on_iris(iris):
    x, y = iris
    pipeline = make_pipeline(StandardScaler(), BackpropClassifier(max_iter=150, random_state=0))
    search = GridSearchCV(pipeline, {"backpropclassifier__hidden_layer_sizes": [(4,), (32,)],
                                     "backpropclassifier__learning_rate_init": [1e-3, 1e-2]}, cv=3)
    search.fit(x, y)
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert search.best_score_ > 0.9
    assert search.best_params_["backpropclassifier__learning_rate_init"] == 1e-2
    scores = cross_val_score(make_pipeline(StandardScaler(), BackpropClassifier(hidden_layer_sizes=(32,),
                                                                               learning_rate_init=1e-2,
                                                                               random_state=0)), x, y, cv=5)
    assert scores.shape == (5,) and scores.mean() > 0.9


def test_any_label_type_classes_and_probabilities(iris):
    x, y = iris
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    clf = BackpropClassifier(hidden_layer_sizes=(16,), learning_rate_init=1e-2, max_iter=100, random_state=0)
    clf.fit(StandardScaler().fit_transform(x), names)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    proba = clf.predict_proba(StandardScaler().fit_transform(x))
    assert isinstance(proba, np.ndarray) and proba.shape == (150, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    predicted = clf.predict(StandardScaler().fit_transform(x))
    assert set(predicted) <= set(clf.classes_)
    np.testing.assert_array_equal(predicted, clf.classes_[np.argmax(proba, axis=1)])
    assert np.mean(predicted == names) > 0.9


def test_binary_classifier_has_one_logit_and_two_probability_columns():
    x, y = load_digits(n_class=2, return_X_y=True)
    labels = np.where(y == 1, "one", "zero")
    clf = BackpropClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(x / 16.0, labels)
    assert clf.model_.output_shape == (1,)
    proba = clf.predict_proba(x / 16.0)
    assert proba.shape == (len(x), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.predict(x / 16.0), clf.classes_[(proba[:, 1] >= 0.5).astype(int)])
    assert clf.score(x / 16.0, labels) > 0.95
    assert clf.loss_curve_[-1] < clf.loss_curve_[0] and len(clf.loss_curve_) == clf.n_iter_


def test_loss_curve_is_what_bp_fit_logs_with_the_same_seeds():
    """The estimator is fit() with MLPClassifier's names: rebuilding the same run by hand gives the same losses."""
    x, y = load_iris(return_X_y=True)
    clf = BackpropClassifier(hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=0.05, momentum=0.5,
                             alpha=0.01, batch_size=50, max_iter=4, tol=0.0, n_iter_no_change=100, random_state=3)
    with pytest.warns(ConvergenceWarning, match="max_iter=4 epochs reached"):
        clf.fit(x, y)
    seeds = np.random.default_rng(np.random.RandomState(3).randint(0, 2**31 - 1))
    model_seed, fit_seed = int(seeds.integers(0, 2**31 - 1)), int(seeds.integers(0, 2**31 - 1))
    model = bp.Sequential(bp.Dense(4, 5, init="he_uniform"), bp.ReLU(), bp.Dense(5, 3),
                          dtype="float64", seed=model_seed)
    history = model.fit(x, y, bp.losses.CrossEntropy(from_logits=True),
                        bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.5), 4, batch_size=50, seed=fit_seed,
                        penalty=bp.penalties.L2(0.01 / 100), verbose=0)
    assert clf.loss_curve_ == history.history["loss"]
    assert clf.n_iter_ == 4 and clf.t_ == 12


def test_partial_fit_continues_and_pickling_keeps_model_and_optimiser(iris):
    x, y = iris
    x = StandardScaler().fit_transform(x)
    clf = BackpropClassifier(hidden_layer_sizes=(8,), learning_rate_init=1e-2, random_state=0)
    with pytest.raises(ValueError, match="classes="):
        clf.partial_fit(x, y)
    for _ in range(3):
        clf.partial_fit(x, y, classes=[0, 1, 2])
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3 and clf.loss_curve_[2] < clf.loss_curve_[0]
    copy = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(copy.predict_proba(x), clf.predict_proba(x))
    # The optimiser's moments and step counts travelled too: the next epoch is the same on both.
    clf.partial_fit(x, y)
    copy.partial_fit(x, y)
    assert copy.loss_curve_ == clf.loss_curve_
    np.testing.assert_array_equal(copy.predict_proba(x), clf.predict_proba(x))


def test_regressor_single_and_multi_output():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = np.stack([x @ [1.0, -2.0, 0.5], np.sin(x[:, 0])], axis=1)
    reg = BackpropRegressor(hidden_layer_sizes=(32,), learning_rate_init=1e-2, max_iter=200, random_state=0)
    assert reg.fit(x, y).predict(x).shape == (200, 2) and reg.score(x, y) > 0.95
    single = BackpropRegressor(hidden_layer_sizes=(32,), learning_rate_init=1e-2, random_state=0).fit(x, y[:, 0])
    prediction = single.predict(x)
    assert prediction.shape == (200,) and prediction.dtype == np.float64 and single.score(x, y[:, 0]) > 0.95


def test_custom_layers_device_and_dtype(iris):
    x, y = iris
    clf = BackpropClassifier(layers=lambda n_in, n_out: [bp.Dense(n_in, 6), bp.Tanh(), bp.Dense(6, n_out)],
                             dtype="float32", device="array_api_strict", learning_rate_init=1e-2, max_iter=60,
                             random_state=0).fit(StandardScaler().fit_transform(x), y)
    assert [type(layer).__name__ for layer in clf.model_.layers] == ["Dense", "Tanh", "Dense"]
    assert clf.model_.dtype == "float32" and clf.model_.device.startswith("array_api_strict")
    proba = clf.predict_proba(StandardScaler().fit_transform(x))
    assert type(proba) is np.ndarray and proba.dtype == np.float32


def test_early_stopping_holds_out_data_and_restores_the_best_epoch(iris):
    x, y = iris
    clf = BackpropClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.05, early_stopping=True,
                             validation_fraction=0.2, n_iter_no_change=3, max_iter=500, random_state=0)
    clf.fit(StandardScaler().fit_transform(x), y)
    assert clf.n_iter_ < 500 and len(clf.validation_loss_curve_) == clf.n_iter_
    best = int(np.argmin(clf.validation_loss_curve_))
    assert clf.n_iter_ == best + 1 + 3  # stopped after 3 epochs without improvement


@pytest.mark.parametrize("parameter, value", [("solver", "lbfgs"), ("activation", "softplus"), ("alpha", -1.0),
                                              ("hidden_layer_sizes", (0,)), ("dtype", "float16"),
                                              ("validation_fraction", 1.0)])
def test_bad_hyper_parameters_are_refused_in_fit_naming_the_parameter(iris, parameter, value):
    clf = BackpropClassifier(**{parameter: value})
    with pytest.raises(ValueError, match=parameter):
        clf.fit(*iris)
    assert not hasattr(clf, "model_")
