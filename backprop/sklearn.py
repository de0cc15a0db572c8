"""scikit-learn estimators: `BackpropClassifier` and `BackpropRegressor` (needs the ``sklearn`` extra).

    from backprop.sklearn import BackpropClassifier
    clf = BackpropClassifier(hidden_layer_sizes=(64,), max_iter=100, random_state=0).fit(X, y)
    clf.predict(X), clf.predict_proba(X), clf.score(X, y)

They take ``MLPClassifier``'s and ``MLPRegressor``'s parameter names where they mean the same thing, so they drop
into `Pipeline`, `cross_val_score` and `GridSearchCV`; inputs and outputs are host NumPy arrays, whatever the device.

The network is ``Dense -> activation`` for each entry of ``hidden_layer_sizes`` and a last ``Dense`` producing
logits (classifier) or values (regressor); ``layers=`` replaces it with any architecture:
``layers(n_features, n_outputs) -> list of layers`` whose last layer gives logits or values. Losses:

    binary classifier:      one logit z,  L = BinaryCrossEntropy(from_logits=True),  P(class 1) = sigmoid(z)
    multiclass classifier:  k logits,     L = CrossEntropy(from_logits=True),        P = softmax(z)
    regressor:              L = mean squared error over every output

``alpha`` is the L2 penalty as ``MLPClassifier`` scales it: each batch of n_b samples minimises
L + alpha / (2 n_b) * sum of squared weights (biases are not penalised). ``activation`` is one of "identity",
"logistic", "tanh", "relu" (Glorot-uniform initialisation, He-uniform before ReLU); ``solver`` "adam"
(betas 0.9, 0.999, eps 1e-8) or "sgd" (with ``momentum``, heavy ball); ``batch_size="auto"`` is min(200, n).
Training stops after ``max_iter`` epochs, or earlier when the training loss (with ``early_stopping``: the loss on
a held-out ``validation_fraction``, whose best parameters are then restored) has not improved by ``tol`` for
``n_iter_no_change`` epochs in a row. ``random_state`` seeds the initial weights, the shuffling and the validation
split. ``device`` and ``dtype`` are the model's (``dtype="float64"`` by default, scikit-learn's precision; use
"float32" on a GPU).

Fitted attributes: ``model_`` (the `backprop.Sequential`), ``loss_curve_`` (the training loss per epoch, penalty
included), ``validation_loss_curve_`` (with ``early_stopping``), ``n_iter_`` (epochs run), ``t_`` (optimiser
steps), ``n_features_in_``, ``classes_`` (classifier), ``n_outputs_``. A fitted estimator pickles as its model and
optimiser do (host copies, rebuilt on the model's device when unpickled), so ``partial_fit`` continues after a round
trip exactly as it would have without one.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np

from backprop.errors import MissingDependencyError

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as error:  # pragma: no cover - depends on the environment
    raise MissingDependencyError(
        "backprop.sklearn needs scikit-learn >= 1.7: pip install 'backprop-arrays[sklearn]'"
    ) from error

from backprop.callbacks import EarlyStopping
from backprop.errors import ConfigurationError
from backprop.layers import Dense, Identity, Layer, ReLU, Sigmoid, Tanh
from backprop.elementwise import sigmoid
from backprop.layers.activations import softmax
from backprop.losses import BinaryCrossEntropy, CrossEntropy, Loss, MeanSquaredError
from backprop.model import Sequential, release
from backprop.optim import SGD, Adam
from backprop.penalties import L2
from backprop.validation import FLOAT_DTYPES, choice, flag, integer, number

ACTIVATIONS: dict[str, type[Layer]] = {"identity": Identity, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU}


class _BackpropEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, the network, the training loop, pickling."""

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: "int | str" = "auto",
        learning_rate_init: float = 0.001,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        momentum: float = 0.9,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        device: str = "cpu",
        dtype: str = "float64",
        layers: "Callable[[int, int], Sequence[Layer]] | None" = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.dtype = dtype
        self.layers = layers

    # -- what subclasses define -----------------------------------------------------------------------------
    def _loss(self) -> Loss:
        raise NotImplementedError

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """The fitted targets as the loss takes them."""
        raise NotImplementedError

    # -- building -------------------------------------------------------------------------------------------
    def _check_parameters(self) -> None:
        """Every hyper-parameter checked before anything changes (scikit-learn estimators check in fit)."""
        sizes: Any = self.hidden_layer_sizes  # whatever the user set: checked here
        sizes = (sizes,) if isinstance(sizes, (int, np.integer)) and not isinstance(sizes, bool) else sizes
        if not isinstance(sizes, (list, tuple)):
            raise ConfigurationError(f"hidden_layer_sizes must be a tuple of layer widths, e.g. (100,), got {sizes!r}")
        for size in sizes:
            integer(size, "each entry of hidden_layer_sizes")
        choice(self.activation, "activation", tuple(ACTIVATIONS))
        choice(self.solver, "solver", ("adam", "sgd"))
        number(self.alpha, "alpha", low=0.0, meaning="the L2 penalty")
        if self.batch_size != "auto":
            integer(self.batch_size, "batch_size", meaning='or "auto" for min(200, n_samples)')
        number(self.learning_rate_init, "learning_rate_init", low=0.0, low_open=True)
        integer(self.max_iter, "max_iter")
        flag(self.shuffle, "shuffle")
        number(self.tol, "tol", low=0.0)
        number(self.momentum, "momentum", low=0.0, high=1.0)
        flag(self.early_stopping, "early_stopping")
        number(self.validation_fraction, "validation_fraction", low=0.0, high=1.0, low_open=True, high_open=True)
        integer(self.n_iter_no_change, "n_iter_no_change")
        choice(self.dtype, "dtype", FLOAT_DTYPES)
        if self.layers is not None and not callable(self.layers):
            raise ConfigurationError("layers must be a callable layers(n_features, n_outputs) -> list of layers, "
                                     "or None")

    def _hidden_sizes(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        return (int(sizes),) if isinstance(sizes, (int, np.integer)) else tuple(int(size) for size in sizes)

    def _network(self, n_features: int, n_outputs: int) -> list[Layer]:
        if self.layers is not None:
            built = self.layers(n_features, n_outputs)
            built = release(built) if isinstance(built, Sequential) else built
            return [built] if isinstance(built, Layer) else list(built)
        network: list[Layer] = []
        width = n_features
        init = "he_uniform" if self.activation == "relu" else "glorot_uniform"
        for size in self._hidden_sizes():
            network += [Dense(width, size, init=init), ACTIVATIONS[self.activation]()]
            width = size
        return network + [Dense(width, n_outputs)]

    def _initialise(self, n_features: int, n_outputs: int) -> None:
        """A new model and optimiser; the random generator that seeds them and every later epoch."""
        self._check_parameters()
        self._rng = np.random.default_rng(check_random_state(self.random_state).randint(0, 2**31 - 1))
        self.model_ = Sequential(*self._network(n_features, n_outputs), input_shape=(n_features,),
                                 device=self.device, dtype=self.dtype, seed=self._next_seed())
        self._optimizer = self._make_optimizer()
        self.loss_curve_: list[float] = []
        self.n_iter_ = 0
        self.n_outputs_ = n_outputs

    def _make_optimizer(self) -> Any:
        if self.solver == "sgd":
            return SGD(self.model_.parameters(), lr=self.learning_rate_init, momentum=self.momentum)
        return Adam(self.model_.parameters(), lr=self.learning_rate_init)

    def _next_seed(self) -> int:
        return int(self._rng.integers(0, 2**31 - 1))

    def _train(self, X: np.ndarray, y: np.ndarray, epochs: int, stop_early: bool) -> None:
        """``epochs`` epochs of ``fit`` on the host arrays; extends ``loss_curve_`` and ``n_iter_``."""
        samples = X.shape[0]
        targets = self._targets(y)
        validation, callbacks = None, []
        if stop_early and self.early_stopping:
            order = self._rng.permutation(samples)
            held = max(1, int(round(self.validation_fraction * samples)))
            if held >= samples:
                raise ConfigurationError(f"early_stopping needs at least 2 samples to hold out a validation set, "
                                         f"got {samples}; set early_stopping=False")
            validation = (X[order[:held]], targets[order[:held]])
            X, targets = X[order[held:]], targets[order[held:]]
            samples -= held
        if stop_early:
            callbacks.append(EarlyStopping("val_loss" if validation is not None else "loss", min_delta=self.tol,
                                           patience=self.n_iter_no_change, restore_best=validation is not None,
                                           verbose=int(bool(self.verbose))))
        batch_size = min(200, samples) if self.batch_size == "auto" else min(int(self.batch_size), samples)
        penalty = L2(self.alpha / (2 * batch_size)) if self.alpha > 0 else None
        history = self.model_.fit(X, targets, self._loss(), self._optimizer, epochs, batch_size=batch_size,
                                  shuffle=bool(self.shuffle), seed=self._next_seed(), validation_data=validation,
                                  callbacks=callbacks, verbose=2 if self.verbose else 0, penalty=penalty)
        self.loss_curve_ = self.loss_curve_ + history.history["loss"]
        if validation is not None:
            self.validation_loss_curve_ = history.history["val_loss"]
        self.n_iter_ += len(history.epoch)
        self.t_ = self._optimizer.steps
        if stop_early and callbacks[0].stopped_epoch is None and len(history.epoch) == epochs:
            warnings.warn(f"{type(self).__name__}: max_iter={epochs} epochs reached before the loss stopped "
                          "improving; raise max_iter or learning_rate_init", ConvergenceWarning, stacklevel=3)

    def _outputs(self, X: Any) -> Any:
        """The model's outputs for host ``X``, as an array on its device."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        return self.model_.predict(X)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = self.random_state is None
        return tags


class BackpropClassifier(ClassifierMixin, _BackpropEstimator):
    """A multi-layer perceptron classifier trained by `backprop` (see the module doc for the parameters).

    Labels of any type (integers, strings, ...) are encoded as indices into the sorted ``classes_``; two classes
    train one logit with binary cross-entropy, more train k logits with softmax cross-entropy.
    """

    def fit(self, X: Any, y: Any) -> "BackpropClassifier":
        """Train a new network for ``max_iter`` epochs (or until the loss stops improving); return self."""
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ConfigurationError(f"a classifier needs samples of at least 2 classes; y has only one class, "
                                     f"{classes[0]!r}")
        self.classes_ = classes
        self._initialise(X.shape[1], 1 if len(classes) == 2 else len(classes))
        self._train(X, y, int(self.max_iter), stop_early=True)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> "BackpropClassifier":
        """One epoch over (X, y), continuing the model and optimiser; the first call needs ``classes``, every
        label that will ever be seen."""
        first = not hasattr(self, "model_")
        if first and classes is None:
            raise ConfigurationError("the first call to partial_fit needs classes=, every label y will take, "
                                     "e.g. classes=numpy.unique(y_all)")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), reset=first)
        check_classification_targets(y)
        if first:
            self.classes_ = np.unique(np.asarray(classes))
            if len(self.classes_) < 2:
                raise ConfigurationError(f"classes= must name at least 2 classes, got {self.classes_!r}")
            self._initialise(X.shape[1], 1 if len(self.classes_) == 2 else len(self.classes_))
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ConfigurationError(f"classes= differs from the classes of the first partial_fit {self.classes_!r}")
        self._train(X, y, 1, stop_early=False)
        return self

    def _targets(self, y: np.ndarray) -> np.ndarray:
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ConfigurationError(f"y has labels {np.unique(y[unknown])!r} outside classes_ {self.classes_!r}")
        indices = np.searchsorted(self.classes_, y)
        return indices.astype(np.float64)[:, None] if len(self.classes_) == 2 else indices.astype(np.int64)

    def _loss(self) -> Loss:
        return BinaryCrossEntropy(from_logits=True) if len(self.classes_) == 2 else CrossEntropy(from_logits=True)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in the order of ``classes_``."""
        logits = self._outputs(X)
        backend = self.model_.backend
        with backend.activate():
            if len(self.classes_) == 2:
                positive = sigmoid(backend.xp, logits)
                probabilities = backend.xp.concat([1.0 - positive, positive], axis=1)
            else:
                probabilities = softmax(backend.xp, logits)
        return np.asarray(backend.to_numpy(probabilities))

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """log of `predict_proba` (-inf where a probability rounds to 0)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample (a label from ``classes_``)."""
        logits = self._outputs(X)
        backend = self.model_.backend
        with backend.activate():
            if len(self.classes_) == 2:
                indices = backend.xp.astype(logits[:, 0] >= 0.0, backend.xp.int64)
            else:
                indices = backend.xp.argmax(logits, axis=1)
        return self.classes_[np.asarray(backend.to_numpy(indices))]


class BackpropRegressor(RegressorMixin, _BackpropEstimator):
    """A multi-layer perceptron regressor trained by `backprop` (see the module doc for the parameters).

    ``y`` of shape (n,) gives predictions of shape (n,); ``y`` of shape (n, k) trains k outputs.
    """

    def fit(self, X: Any, y: Any) -> "BackpropRegressor":
        """Train a new network for ``max_iter`` epochs (or until the loss stops improving); return self."""
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), multi_output=True, y_numeric=True)
        self._initialise(X.shape[1], 1 if y.ndim == 1 else y.shape[1])
        self._single_output = y.ndim == 1
        self._train(X, y, int(self.max_iter), stop_early=True)
        return self

    def partial_fit(self, X: Any, y: Any) -> "BackpropRegressor":
        """One epoch over (X, y), continuing the model and optimiser (a new one on the first call)."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32), multi_output=True, y_numeric=True,
                             reset=first)
        if first:
            self._initialise(X.shape[1], 1 if y.ndim == 1 else y.shape[1])
            self._single_output = y.ndim == 1
        self._train(X, y, 1, stop_early=False)
        return self

    def _targets(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        targets = y.reshape(-1, 1) if y.ndim == 1 else y
        if targets.shape[1] != self.n_outputs_:
            raise ConfigurationError(f"y has {targets.shape[1]} outputs, the model was fitted with {self.n_outputs_}")
        return targets

    def _loss(self) -> Loss:
        return MeanSquaredError()

    def predict(self, X: Any) -> np.ndarray:
        """The predicted values, shape (n,) when fitted on 1-D y, else (n, n_outputs)."""
        outputs = self._outputs(X)
        outputs = np.asarray(self.model_.backend.to_numpy(outputs))
        return outputs[:, 0] if self._single_output else outputs

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
