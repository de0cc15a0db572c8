"""Real data: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), 10 classes.

Network: 64 inputs (pixels / 16) -> 64 ReLU -> 10 logits, softmax cross-entropy, on a fixed stratified 75/25 split.
Side by side in the same run, scikit-learn's ``MLPClassifier`` with the same hidden layer, optimiser settings,
batch size and epochs (alpha=0: no weight decay; constant learning rate; no early stopping) on the same split.
Both start from Glorot-uniform weights; both SGDs are heavy-ball momentum (v <- m v + g, w <- w - lr v, which
is scikit-learn's v <- m v - lr g, w <- w + v for a constant lr; nesterovs_momentum=False).

``--optimizer adam`` compares Adam (betas 0.9, 0.999, eps 1e-8; default lr 1e-3) with MLPClassifier's adam solver.
Another optimiser is one entry in ``OPTIMIZERS``: its backprop constructor and its MLPClassifier settings.

Fit times: each side fits ``--repeats`` times (default 3), in a freshly shuffled order every round, and the fastest
fit of each side is reported, with their ratio: a single fit of a fraction of a second on a shared machine is
mostly noise. Every repeat trains the same model (the same seeds), so the accuracies are those of any one fit.
"""

from __future__ import annotations

import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import backprop as bp  # noqa: E402

# name: (backprop optimiser for (parameters, args), scikit-learn MLPClassifier settings for args)
OPTIMIZERS: dict[str, tuple[Callable[[list, Any], bp.optim.Optimizer], Callable[[Any], dict]]] = {
    "sgd": (lambda params, args: bp.optim.SGD(params, lr=args.lr, momentum=args.momentum),
            lambda args: {"solver": "sgd", "learning_rate_init": args.lr, "momentum": args.momentum,
                          "nesterovs_momentum": False, "learning_rate": "constant"}),
    "adam": (lambda params, args: bp.optim.Adam(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8),
             lambda args: {"solver": "adam", "learning_rate_init": args.lr, "beta_1": 0.9, "beta_2": 0.999,
                           "epsilon": 1e-8}),
}
DEFAULT_LEARNING_RATES = {"sgd": 0.05, "adam": 1e-3}


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return train_test_split(x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)


def fit_ours(args: Any, x_train, y_train) -> tuple[bp.Sequential, Any, float]:
    """(model, history, seconds): one timed fit from the seeded initial weights."""
    model = bp.Sequential(bp.Dense(64, args.hidden), bp.ReLU(), bp.Dense(args.hidden, 10),
                          device=args.device, seed=args.seed)
    optimizer = OPTIMIZERS[args.optimizer][0](model.parameters(), args)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, bp.losses.CrossEntropy(), optimizer, epochs=args.epochs,
                        batch_size=args.batch_size, seed=args.seed, verbose=0)
    model.backend.synchronize()
    return model, history, time.perf_counter() - start


def score_ours(args: Any, fitted: tuple[bp.Sequential, Any, float], x_train, y_train, x_test, y_test) -> dict:
    """Test accuracy, fit time, training losses, the validation curve and the confusion matrix of a fit."""
    model, history, seconds = fitted
    scores = model.evaluate(x_test, y_test, bp.losses.CrossEntropy(), metrics=["accuracy"])
    predicted = np.argmax(bp.to_numpy(model.predict(x_test)), axis=1)
    # The validation curve comes from a second, untimed run with the same seeds: it retraces the timed run's steps
    # exactly (its training losses are identical), and scores the test set after every epoch.
    twin = bp.Sequential(bp.Dense(64, args.hidden), bp.ReLU(), bp.Dense(args.hidden, 10), device=args.device,
                         seed=args.seed)
    curve = twin.fit(x_train, y_train, bp.losses.CrossEntropy(), OPTIMIZERS[args.optimizer][0](twin.parameters(), args),
                     epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, verbose=0, metrics=["accuracy"],
                     validation_data=(x_test, y_test))
    return {"accuracy": scores["accuracy"], "seconds": seconds, "loss": history.history["loss"],
            "curve": curve.history, "confusion": confusion_matrix(y_test, predicted)}


def train_ours(args: Any, x_train, y_train, x_test, y_test) -> dict:
    """One timed fit, scored as `score_ours` does (``digits_cnn.py`` compares its CNN with it)."""
    return score_ours(args, fit_ours(args, x_train, y_train), x_train, y_train, x_test, y_test)


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int = 10) -> np.ndarray:
    """counts[i, j]: test images of digit i predicted as j."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    return counts


def draw_confusion(figure: Any, axis: Any, counts: np.ndarray, title: str) -> None:
    """The confusion matrix on ``axis``: counts as shades of blue, each non-zero count written in its cell."""
    image = axis.imshow(counts, cmap="Blues")
    for (row, col), count in np.ndenumerate(counts):
        if count:
            axis.text(col, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > counts.max() / 2 else "black")
    axis.set(xlabel="predicted digit", ylabel="true digit", xticks=range(10), yticks=range(10), title=title)
    figure.colorbar(image, ax=axis, label="test images")


def fit_sklearn(args: Any, x_train, y_train) -> tuple[Any, float]:
    """(classifier, seconds): one timed fit of MLPClassifier with the same settings."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    classifier = MLPClassifier(hidden_layer_sizes=(args.hidden,), activation="relu", alpha=0.0,
                               batch_size=args.batch_size, max_iter=args.epochs, shuffle=True,
                               random_state=args.seed, tol=0.0, n_iter_no_change=args.epochs + 1,
                               **OPTIMIZERS[args.optimizer][1](args))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # it ran the epochs we asked for
        classifier.fit(x_train, y_train)
    return classifier, time.perf_counter() - start


def score_sklearn(fitted: tuple[Any, float], x_test, y_test) -> dict:
    """Test accuracy, fit time and training losses of a fit."""
    classifier, seconds = fitted
    return {"accuracy": float(classifier.score(x_test, y_test)), "seconds": seconds,
            "loss": list(classifier.loss_curve_)}


def train_sklearn(args: Any, x_train, y_train, x_test, y_test) -> dict:
    """One timed fit of MLPClassifier, scored."""
    return score_sklearn(fit_sklearn(args, x_train, y_train), x_test, y_test)


def fastest_fits(args: Any, x_train, y_train) -> dict[str, tuple]:
    """Each side's fastest of ``args.repeats`` fits, the two sides in a shuffled order every round (seeded)."""
    fits: dict[str, Callable[..., tuple]] = {"backprop": fit_ours, "scikit-learn": fit_sklearn}
    fastest: dict[str, tuple] = {}
    order = random.Random(args.seed)
    for _ in range(args.repeats):
        names = list(fits)
        order.shuffle(names)
        for name in names:
            fitted = fits[name](args, x_train, y_train)
            if name not in fastest or fitted[-1] < fastest[name][-1]:
                fastest[name] = fitted
    return fastest


def main(argv: Sequence[str] | None = None) -> dict:
    def options(parser):
        parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd", help="optimiser (default sgd)")
        parser.add_argument("--lr", type=float, default=None,
                            help="learning rate (default 0.05 for sgd, 1e-3 for adam)")
        parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
        parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
        parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
        parser.add_argument("--seed", type=int, default=0, help="split, initial weights and shuffling (default 0)")
        parser.add_argument("--repeats", type=int, default=3,
                            help="timed fits per side, the fastest reported (default 3)")

    args = _common.parse_args("Handwritten digits: backprop against scikit-learn's MLPClassifier.", 30, argv, options)
    if args.lr is None:
        args.lr = DEFAULT_LEARNING_RATES[args.optimizer]
    try:
        x_train, x_test, y_train, y_test = load_split(args.seed)
    except ImportError:
        print("digits.py needs scikit-learn for its data set: pip install 'backprop-arrays[examples]'")
        return {}
    print(f"digits: {len(x_train)} training and {len(x_test)} test images; 64-{args.hidden}-10 ReLU network, "
          f"softmax cross-entropy, {args.optimizer} (lr {args.lr}"
          f"{f', momentum {args.momentum}' if args.optimizer == 'sgd' else ''}), "
          f"batch {args.batch_size}, {args.epochs} epochs")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    fastest = fastest_fits(args, x_train, y_train)
    results = {"backprop": score_ours(args, fastest["backprop"], x_train, y_train, x_test, y_test),
               "scikit-learn": score_sklearn(fastest["scikit-learn"], x_test, y_test)}
    label = f"backprop ({bp.get_backend(args.device).spec})"
    for name, result in results.items():
        shown = label if name == "backprop" else "scikit-learn MLPClassifier"
        print(f"{shown:>28}: test accuracy {result['accuracy']:.4f}, fit time {result['seconds']:.3f} s, "
              f"final training loss {result['loss'][-1]:.4f}")
    ratio = results["backprop"]["ratio_to_scikit_learn"] = results["backprop"]["seconds"] / \
        results["scikit-learn"]["seconds"]
    print(f"fit time backprop / scikit-learn: {ratio:.2f} "
          f"(fastest of {args.repeats} fits each)")

    ours = results["backprop"]
    errors = ours["confusion"] - np.diag(np.diag(ours["confusion"]))
    true_digit, predicted_digit = np.unravel_index(np.argmax(errors), errors.shape)
    print(f"most frequent confusion on the test set: {true_digit} read as {predicted_digit} "
          f"({errors[true_digit, predicted_digit]} of {ours['confusion'][true_digit].sum()} images)")

    plt = _common.pyplot()
    if plt is not None:
        figure, axes = plt.subplots(1, 3, figsize=(17, 4.6))
        epochs = np.arange(1, args.epochs + 1)
        for name, result in results.items():
            axes[0].plot(epochs, result["loss"], label=f"{name}: training, {result['seconds']:.2f} s")
        axes[0].plot(epochs, ours["curve"]["val_loss"], "--", color="tab:blue", label="backprop: test set")
        axes[0].set(xlabel="epoch", ylabel="cross-entropy (log)", yscale="log",
                    title=f"Digits, {args.hidden} hidden ReLU units: loss")
        axes[0].legend()
        axes[1].plot(epochs, ours["curve"]["accuracy"], color="tab:blue", label="backprop: training set")
        axes[1].plot(epochs, ours["curve"]["val_accuracy"], "--", color="tab:blue", label="backprop: test set")
        axes[1].axhline(results["scikit-learn"]["accuracy"], color="tab:orange", linestyle=":",
                        label=f"scikit-learn: final test accuracy {results['scikit-learn']['accuracy']:.3f}")
        axes[1].set(xlabel="epoch", ylabel="accuracy", title="Accuracy per epoch (validation curve)")
        axes[1].legend(loc="lower right")
        draw_confusion(figure, axes[2], ours["confusion"], f"backprop on the test set: accuracy {ours['accuracy']:.3f}")
        _common.save(figure, "digits.png")
    return results


if __name__ == "__main__":
    main()
