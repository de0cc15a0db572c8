"""`BatchLoader`: host arrays served as a re-iterable source of ``(x_batch, y_batch)`` batches, one epoch per pass.

``fit`` takes such a source in place of ``(x, y)``, moving one batch at a time to the device (see
`backprop.training`). The order is drawn exactly as ``fit(x, y, batch_size=, shuffle=, seed=)`` draws it: a
generator ``numpy.random.default_rng(seed)`` gives one permutation per epoch (none when there is a single batch or
``shuffle=False``), cut into contiguous batches of ``batch_size`` (the last one smaller). So with ``transform=None``
streaming a `BatchLoader` trains on the same batches, in the same order, as the in-memory ``fit``.

``transform(x_batch, rng) -> x_batch`` (e.g. `backprop.augment.Compose`) rewrites each input batch on the host
with a generator of its own, spawned from the same seed (``SeedSequence(seed).spawn(1)``), so augmentations are
reproducible without changing the order of the batches.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from backprop.data import host_array
from backprop.errors import ConfigurationError, ShapeError
from backprop.validation import flag, integer
from backprop.validation import seed as checked_seed

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class BatchLoader:
    """``BatchLoader(x, y, batch_size, shuffle=True, seed=None, transform=None)``: iterate it once per epoch.

    ``len(loader)`` is the number of batches per epoch (ceil(n / batch_size)); every ``iter(loader)`` starts the
    next epoch's order. Batches are host NumPy arrays: slices of ``x`` and ``y`` in that order (copies when
    shuffled, views otherwise), inputs passed through ``transform`` when one is given.
    """

    def __init__(self, x: Any, y: Any, batch_size: int, shuffle: bool = True, seed: int | None = None,
                 transform: "Transform | None" = None) -> None:
        self.x, self.y = host_array(x, "x"), host_array(y, "y")
        if self.x.ndim == 0 or self.y.ndim == 0 or self.x.shape[0] != self.y.shape[0]:
            raise ShapeError(f"BatchLoader needs one target per sample: x has shape {self.x.shape}, y has shape "
                             f"{self.y.shape}; both need the samples on their first axis")
        if self.x.shape[0] == 0:
            raise ShapeError("BatchLoader got no samples; give at least one")
        self.batch_size = min(integer(batch_size, "batch_size"), self.x.shape[0])
        self.shuffle = flag(shuffle, "shuffle")
        if transform is not None and not callable(transform):
            raise ConfigurationError("transform must be a callable transform(x_batch, rng) -> x_batch, or None")
        self.transform = transform
        sequence = np.random.SeedSequence(checked_seed(seed))
        self._order_rng = np.random.default_rng(sequence)  # the same stream as default_rng(seed) in fit
        self._transform_rng = np.random.default_rng(sequence.spawn(1)[0])

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        samples = self.x.shape[0]
        order = self._order_rng.permutation(samples) if self.shuffle and len(self) > 1 else None
        for start in range(0, samples, self.batch_size):
            stop = min(start + self.batch_size, samples)
            if order is None:
                x_batch, y_batch = self.x[start:stop], self.y[start:stop]
            else:
                x_batch, y_batch = self.x[order[start:stop]], self.y[order[start:stop]]
            if self.transform is not None:
                x_batch = self.transform(x_batch, self._transform_rng)
            yield x_batch, y_batch

    def __repr__(self) -> str:
        return (f"BatchLoader({self.x.shape[0]} samples, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"transform={self.transform!r})")
