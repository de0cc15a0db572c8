"""Real data: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download), 10 classes.

Network: 64 inputs (pixels / 16) -> 64 ReLU -> 10 logits, softmax cross-entropy, on a fixed stratified 75/25 split.
Side by side in the same run, scikit-learn's ``MLPClassifier`` with the same hidden layer, optimiser settings,
batch size and epochs (alpha=0: no weight decay; constant learning rate; no early stopping) on the same split.
Both start from Glorot-uniform weights; both SGDs are heavy-ball momentum (v <- m v + g, w <- w - lr v, which
is scikit-learn's v <- m v - lr g, w <- w + v for a constant lr; nesterovs_momentum=False).

``--optimizer adam`` compares Adam (betas 0.9, 0.999, eps 1e-8; default lr 1e-3) with MLPClassifier's adam solver.
Another optimiser is one entry in ``OPTIMIZERS``: its backprop constructor and its MLPClassifier settings.
"""

from __future__ import annotations

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


def train_ours(args: Any, x_train, y_train, x_test, y_test) -> dict:
    model = bp.Sequential(bp.Dense(64, args.hidden), bp.ReLU(), bp.Dense(args.hidden, 10), device=args.device, seed=args.seed)
    optimizer = OPTIMIZERS[args.optimizer][0](model.parameters(), args)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, bp.losses.CrossEntropy(), optimizer, epochs=args.epochs,
                        batch_size=args.batch_size, seed=args.seed, verbose=0)
    model.backend.synchronize()
    seconds = time.perf_counter() - start
    scores = model.evaluate(x_test, y_test, bp.losses.CrossEntropy(), metrics=["accuracy"])
    return {"accuracy": scores["accuracy"], "seconds": seconds, "loss": history.history["loss"]}


def train_sklearn(args: Any, x_train, y_train, x_test, y_test) -> dict:
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
    seconds = time.perf_counter() - start
    return {"accuracy": float(classifier.score(x_test, y_test)), "seconds": seconds, "loss": list(classifier.loss_curve_)}


def main(argv: Sequence[str] | None = None) -> dict:
    def options(parser):
        parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd", help="optimiser (default sgd)")
        parser.add_argument("--lr", type=float, default=None, help="learning rate (default 0.05 for sgd, 1e-3 for adam)")
        parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
        parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
        parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
        parser.add_argument("--seed", type=int, default=0, help="split, initial weights and shuffling (default 0)")

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
    results = {"backprop": train_ours(args, x_train, y_train, x_test, y_test),
               "scikit-learn": train_sklearn(args, x_train, y_train, x_test, y_test)}
    label = f"backprop ({bp.get_backend(args.device).spec})"
    for name, result in results.items():
        shown = label if name == "backprop" else "scikit-learn MLPClassifier"
        print(f"{shown:>28}: test accuracy {result['accuracy']:.4f}, fit time {result['seconds']:.2f} s, "
              f"final training loss {result['loss'][-1]:.4f}")

    plt = _common.pyplot()
    if plt is not None:
        figure, axes = plt.subplots(figsize=(6, 4))
        for name, result in results.items():
            axes.plot(np.arange(1, len(result["loss"]) + 1), result["loss"],
                      label=f"{name}: test accuracy {result['accuracy']:.3f}, {result['seconds']:.2f} s")
        axes.set(xlabel="epoch", ylabel="training cross-entropy", yscale="log", title="Digits, 64 hidden ReLU units")
        axes.legend()
        _common.save(figure, "digits.png")
    return results


if __name__ == "__main__":
    main()
