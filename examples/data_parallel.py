"""Data-parallel training on MPI: the same script in one process or under ``mpiexec``, with the same result.

    python examples/data_parallel.py                     # one process
    mpiexec -n 2 python examples/data_parallel.py        # two processes, each computing half of every batch

scikit-learn's 8x8 digits (64 pixels / 16 -> 64 ReLU -> Dropout 0.2 -> 10 logits), softmax cross-entropy, Adam,
global batches of 128, in float64 so that the printed losses of a one-process and an N-process run agree to every
digit shown. Only rank 0 prints and writes the best checkpoint (``data_parallel_best.bpk``); every rank ends with
the same model.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import backprop as bp  # noqa: E402


def main(argv: Sequence[str] | None = None) -> dict:
    args = _common.parse_args(__doc__.splitlines()[0], epochs=10, argv=argv)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    comm = bp.distributed.init()
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.data / 16.0, digits.target, test_size=0.25,
                                                        random_state=0, stratify=digits.target)
    model = bp.Sequential(bp.Dense(64, 64), bp.ReLU(), bp.Dropout(0.2), bp.Dense(64, 10),
                          device=comm.device(args.device), dtype="float64", seed=0)
    optimizer = bp.optim.Adam(model.parameters(), lr=3e-3)
    best = bp.ModelCheckpoint("data_parallel_best.bpk", monitor="val_loss", save_best_only=True)
    history = model.fit(x_train, y_train, bp.losses.CrossEntropy(), optimizer, epochs=args.epochs, batch_size=128,
                        seed=0, validation_data=(x_test, y_test), metrics=["accuracy"], callbacks=[best],
                        verbose=0, communicator=comm)
    if comm.is_root:
        print(f"digits on {comm.size} process(es), device {model.device}: Adam lr 3e-3, global batch 128, "
              f"{args.epochs} epochs")
        for epoch, loss, val_loss, accuracy in zip(history.epoch, history.history["loss"],
                                                   history.history["val_loss"], history.history["val_accuracy"]):
            print(f"epoch {epoch + 1:3d}: loss {loss:.10f}  val_loss {val_loss:.10f}  val_accuracy {accuracy:.4f}")
        print(f"best val_loss {best.best:.10f} saved to {best.last_saved}")
    return {"size": comm.size, "history": history.history}


if __name__ == "__main__":
    main()
