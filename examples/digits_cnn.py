"""A convolutional network on scikit-learn's 8x8 digits, beside the MLP of ``digits.py`` and ``MLPClassifier``.

The images keep their shape (N, 1, 8, 8): the network sees neighbouring pixels as neighbours.

    conv 1->16 3x3 pad 1, ReLU, max-pool 2          (N, 1, 8, 8) -> (N, 16, 4, 4)
    conv 16->32 3x3 pad 1, BatchNorm2d, ReLU, max-pool 2            -> (N, 32, 2, 2)
    flatten, dense 128 -> 10 logits, softmax cross-entropy

All three learners use the same fixed stratified 75/25 split (``digits.load_split``), SGD with heavy-ball momentum
(lr 0.05, momentum 0.9), batch 32 and 30 epochs. Each fit is timed alone; the per-epoch test-set curve comes from a
second, untimed run with the same seeds (its steps are the timed run's, as in ``digits.py``).

``--augment`` also trains the CNN on batches streamed through ``bp.data.BatchLoader`` with a seeded augmentation
(every image shifted by up to one pixel and rotated by up to 10 degrees, drawn anew each epoch) and reports the
change in test accuracy against the plain CNN.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import digits  # noqa: E402

import backprop as bp  # noqa: E402

IMAGE_SHAPE = (1, 8, 8)


def build_cnn(device: str, seed: int) -> bp.Sequential:
    return bp.Sequential(
        bp.Conv2d(1, 16, kernel_size=3, padding=1), bp.ReLU(), bp.MaxPool2d(2),
        bp.Conv2d(16, 32, kernel_size=3, padding=1), bp.BatchNorm2d(32), bp.ReLU(), bp.MaxPool2d(2),
        bp.Flatten(), bp.Dense(32 * 2 * 2, 10),
        input_shape=IMAGE_SHAPE, device=device, seed=seed,
    )


def augmentation() -> bp.augment.Compose:
    """Small, label-preserving moves of a handwritten digit: shift by up to 1 pixel, rotate by up to 10 degrees."""
    return bp.augment.Compose(bp.augment.RandomShift(1), bp.augment.RandomRotation(10))


def train_cnn(args: Any, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              augment: bool = False) -> dict:
    """Fit the CNN (timed), score it on the test set, and retrace the run untimed for the per-epoch test curve."""
    def run(validation: bool) -> tuple[bp.Sequential, Any]:
        model = build_cnn(args.device, args.seed)
        optimizer = bp.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
        options = {"epochs": args.epochs, "seed": args.seed, "verbose": 0}
        if validation:
            options.update(metrics=["accuracy"], validation_data=(x_test, y_test))
        if augment:  # a stream of augmented host batches; fit draws nothing itself
            loader = bp.data.BatchLoader(x_train, y_train, batch_size=args.batch_size, seed=args.seed,
                                         transform=augmentation())
            return model, model.fit(loader, None, bp.losses.CrossEntropy(), optimizer, **options)
        return model, model.fit(x_train, y_train, bp.losses.CrossEntropy(), optimizer,
                                batch_size=args.batch_size, **options)

    start = time.perf_counter()
    model, history = run(validation=False)
    model.backend.synchronize()
    seconds = time.perf_counter() - start
    scores = model.evaluate(x_test, y_test, bp.losses.CrossEntropy(), metrics=["accuracy"])
    predicted = np.argmax(bp.to_numpy(model.predict(x_test)), axis=1)
    _, curve = run(validation=True)
    return {"accuracy": scores["accuracy"], "seconds": seconds, "loss": history.history["loss"],
            "curve": curve.history, "confusion": digits.confusion_matrix(y_test, predicted),
            "parameters": model.count_params()}


def main(argv: Sequence[str] | None = None) -> dict:
    def options(parser):
        parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
        parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
        parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
        parser.add_argument("--seed", type=int, default=0, help="split, initial weights and shuffling (default 0)")
        parser.add_argument("--augment", action="store_true",
                            help="also train the CNN on shifted and rotated images and report the effect")

    args = _common.parse_args("Handwritten digits: a CNN beside an MLP and scikit-learn's MLPClassifier.", 30,
                              argv, options)
    try:
        x_train, x_test, y_train, y_test = digits.load_split(args.seed)
    except ImportError:
        print("digits_cnn.py needs scikit-learn for its data set: pip install 'backprop-arrays[examples]'")
        return {}
    images_train, images_test = x_train.reshape(-1, *IMAGE_SHAPE), x_test.reshape(-1, *IMAGE_SHAPE)
    print(f"digits: {len(x_train)} training and {len(x_test)} test images of 8x8 pixels; SGD (lr {args.lr}, "
          f"momentum {args.momentum}), batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}")

    # digits.py's MLP and MLPClassifier, with this run's settings
    mlp_args = SimpleNamespace(optimizer="sgd", lr=args.lr, momentum=args.momentum, batch_size=args.batch_size,
                               hidden=64, seed=args.seed, device=args.device, epochs=args.epochs)
    results = {"backprop CNN": train_cnn(args, images_train, y_train, images_test, y_test)}
    if args.augment:
        results["backprop CNN, augmented"] = train_cnn(args, images_train, y_train, images_test, y_test, augment=True)
    results["backprop MLP 64-64-10"] = digits.train_ours(mlp_args, x_train, y_train, x_test, y_test)
    results["scikit-learn MLPClassifier"] = digits.train_sklearn(mlp_args, x_train, y_train, x_test, y_test)

    print(f"CNN: {results['backprop CNN']['parameters']} parameters on {bp.get_backend(args.device).spec}")
    for name, result in results.items():
        print(f"{name:>28}: test accuracy {result['accuracy']:.4f}, fit time {result['seconds']:.2f} s, "
              f"final training loss {result['loss'][-1]:.4f}")
    if args.augment:
        change = results["backprop CNN, augmented"]["accuracy"] - results["backprop CNN"]["accuracy"]
        wrong = [round((1 - results[name]["accuracy"]) * len(y_test)) for name in ("backprop CNN",
                                                                                  "backprop CNN, augmented")]
        print(f"augmentation changed the CNN's test accuracy by {100 * change:+.2f} points "
              f"({wrong[0]} -> {wrong[1]} misread test images)")

    plt = _common.pyplot()
    if plt is not None:
        figure, axes = plt.subplots(1, 3, figsize=(17, 4.6))
        epochs = np.arange(1, args.epochs + 1)
        colours = dict(zip(results, ["tab:blue", "tab:green", "tab:red", "tab:orange"]
                           if args.augment else ["tab:blue", "tab:red", "tab:orange"]))
        for name, result in results.items():
            axes[0].plot(epochs, result["loss"], color=colours[name],
                         label=f"{name}: {result['seconds']:.2f} s")
        axes[0].set(xlabel="epoch", ylabel="training cross-entropy (log)", yscale="log", title="Training loss")
        axes[0].legend()
        for name, result in results.items():
            if "curve" in result:
                axes[1].plot(epochs, result["curve"]["val_accuracy"], color=colours[name], label=name)
        sklearn = results["scikit-learn MLPClassifier"]["accuracy"]
        axes[1].axhline(sklearn, color=colours["scikit-learn MLPClassifier"], linestyle=":",
                        label=f"scikit-learn: final {sklearn:.3f}")
        axes[1].set(xlabel="epoch", ylabel="test accuracy", ylim=(0.85, 1.0), title="Test accuracy per epoch")
        axes[1].legend(loc="lower right")
        cnn = results["backprop CNN"]
        digits.draw_confusion(figure, axes[2], cnn["confusion"], f"CNN on the test set: accuracy {cnn['accuracy']:.3f}")
        _common.save(figure, "digits_cnn.png")
    return results


if __name__ == "__main__":
    main()
