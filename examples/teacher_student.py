"""Teacher and student: a random "teacher" network defines a function; a differently shaped "student" learns it.

Teacher: 8 -> 16 (tanh) -> 1 with Glorot-uniform weights and random biases (seed 1). Inputs x ~ N(0, I), targets
y = teacher(x). Student: 8 -> 32 (tanh) -> 32 (tanh) -> 1 (seed 2), trained with MSE and SGD with momentum on 75% of
the samples. On the held-out 25% the script reports R^2 = 1 - sum (y - y_hat)^2 / sum (y - mean y)^2: the share of
the targets' variance the student explains (1 is perfect, 0 is no better than predicting the mean).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import backprop as bp  # noqa: E402

FEATURES, SAMPLES = 8, 2000


def r_squared(truth: np.ndarray, prediction: np.ndarray) -> float:
    residual = np.sum((truth - prediction) ** 2)
    return float(1.0 - residual / np.sum((truth - np.mean(truth)) ** 2))


def normal_bias(rng: np.random.Generator, shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
    """The teacher's biases: N(0, 0.5^2), so its tanh units are not all centred on the origin."""
    return rng.normal(0.0, 0.5, shape)


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs from N(0, I) and the teacher's outputs for them (computed by backprop on the CPU, float64)."""
    teacher = bp.Sequential(bp.Dense(FEATURES, 16, bias_init=normal_bias), bp.Tanh(), bp.Dense(16, 1),
                            dtype="float64", seed=1)
    x = np.random.default_rng(seed).normal(size=(SAMPLES, FEATURES))
    return x, bp.to_numpy(teacher.predict(x))


def main(argv: Sequence[str] | None = None) -> dict:
    def options(parser):
        parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
        parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")

    args = _common.parse_args("A student network learns a random teacher network.", 100, argv, options)
    x, y = make_data()
    split = SAMPLES * 3 // 4
    (x_train, y_train), (x_test, y_test) = (x[:split], y[:split]), (x[split:], y[split:])
    student = bp.Sequential(bp.Dense(FEATURES, 32), bp.Tanh(), bp.Dense(32, 32), bp.Tanh(), bp.Dense(32, 1),
                            device=args.device, seed=2)
    optimizer = bp.optim.SGD(student.parameters(), lr=args.lr, momentum=0.9)
    print(f"teacher 8-16-1 (tanh), student 8-32-32-1 (tanh) on {student.device}; {split} training and "
          f"{SAMPLES - split} held-out samples; target variance {np.var(y_test):.4f}")
    start = time.perf_counter()
    history = student.fit(x_train, y_train, bp.losses.MeanSquaredError(), optimizer, epochs=args.epochs,
                          batch_size=args.batch_size, seed=3, validation_data=(x_test, y_test), verbose=0)
    seconds = time.perf_counter() - start
    prediction = bp.to_numpy(student.predict(x_test))
    score = r_squared(y_test, prediction)
    print(f"after {args.epochs} epochs ({seconds:.2f} s): training MSE {history.history['loss'][-1]:.5f}, "
          f"held-out MSE {history.history['val_loss'][-1]:.5f}, held-out R^2 = {score:.4f}")

    plt = _common.pyplot()
    if plt is not None:
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.plot(history.history["loss"], label="training")
        left.plot(history.history["val_loss"], label="held out")
        left.set(xlabel="epoch", ylabel="MSE", yscale="log", title="Student's loss")
        left.legend()
        right.scatter(y_test[:, 0], prediction[:, 0], s=6, alpha=0.6)
        low, high = float(np.min(y_test)), float(np.max(y_test))
        right.plot([low, high], [low, high], color="black", linewidth=1)
        right.set(xlabel="teacher (truth)", ylabel="student (prediction)", title=f"Held-out data, R^2 = {score:.3f}")
        _common.save(figure, "teacher_student.png")
    return {"r_squared": score, "val_mse": history.history["val_loss"][-1], "target_variance": float(np.var(y_test)),
            "seconds": seconds}


if __name__ == "__main__":
    main()
