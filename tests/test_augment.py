"""bp.augment transforms (seeded, shape-preserving, never writing into their input) and bp.data.BatchLoader."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backprop as bp
from backprop import augment

TRANSFORMS = [augment.RandomShift(2), augment.RandomCrop(2), augment.HorizontalFlip(0.5), augment.RandomRotation(15),
              augment.GaussianNoise(0.1),
              augment.Compose(augment.RandomShift(1), augment.RandomRotation(10), augment.GaussianNoise(0.05))]


def images(n=6, channels=2, height=7, width=9, seed=0):
    return np.random.default_rng(seed).normal(size=(n, channels, height, width)).astype(np.float32)


@pytest.mark.parametrize("transform", TRANSFORMS, ids=repr)
def test_transforms_are_seeded_shape_preserving_and_leave_the_input_alone(transform):
    x = images()
    before = x.copy()
    first = transform(x, np.random.default_rng(7))
    again = transform(x, np.random.default_rng(7))
    other = transform(x, np.random.default_rng(8))
    assert first.shape == x.shape and first.dtype == x.dtype
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(x, before)


@settings(max_examples=30, deadline=None)
@given(dy=st.integers(-3, 3), dx=st.integers(-3, 3))
def test_shift_moves_every_pixel_by_the_drawn_offset(dy, dx):
    x = images(n=1, channels=1)
    shifted = augment._translate(x, np.array([dy]), np.array([dx]), fill=-9.0)
    for row in range(7):
        for col in range(9):
            source = (row - dy, col - dx)
            expected = x[0, 0][source] if 0 <= source[0] < 7 and 0 <= source[1] < 9 else -9.0
            assert shifted[0, 0, row, col] == expected


def test_flip_rotation_and_noise_do_what_they_say():
    x = images()
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(augment.HorizontalFlip(1.0)(x, rng), x[..., ::-1])
    np.testing.assert_array_equal(augment.HorizontalFlip(0.0)(x, rng), x)
    np.testing.assert_array_equal(augment.RandomRotation(0.0)(x, rng), x)
    np.testing.assert_array_equal(augment.RandomShift(0)(x, rng), x)
    square = np.zeros((1, 1, 5, 5), np.float32)
    square[0, 0, 0, 2] = 1.0  # top centre
    rotation = augment.RandomRotation(90.0)
    quarter = rotation(square, _FixedAngle(90.0))
    assert quarter[0, 0, 2, 4] == 1.0 and quarter.sum() == 1.0  # a quarter turn takes top centre to right centre
    noise = augment.GaussianNoise(0.5)(np.zeros((200, 1, 10, 10), np.float32), rng)
    assert abs(noise.std() - 0.5) < 0.01 and abs(noise.mean()) < 0.01


class _FixedAngle:
    def __init__(self, degrees):
        self.degrees = degrees

    def uniform(self, low, high, size):
        return np.full(size, self.degrees)


def test_transforms_refuse_batches_that_are_not_nchw():
    with pytest.raises(bp.errors.ShapeError, match=r"\(N, C, H, W\).*reshape"):
        augment.RandomShift(1)(np.zeros((4, 64)), np.random.default_rng(0))
    with pytest.raises(bp.errors.ConfigurationError, match="max_shift"):
        augment.RandomShift(-1)


def test_batch_loader_serves_every_sample_once_per_epoch_in_fits_order():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    loader = bp.data.BatchLoader(x, y, batch_size=4, seed=3)
    assert len(loader) == 3
    rng = np.random.default_rng(3)  # what fit(x, y, batch_size=4, seed=3) draws
    epochs = [list(loader) for _ in range(2)]
    for batches in epochs:
        order = rng.permutation(10)
        assert [len(b[1]) for b in batches] == [4, 4, 2]
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), order)
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x[order])
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])
    unshuffled = bp.data.BatchLoader(x, y, batch_size=4, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in unshuffled]), y)


def test_batch_loader_transform_is_seeded_and_keeps_the_order():
    x, y = images(n=10), np.arange(10)
    plain = [b[1] for b in bp.data.BatchLoader(x, y, 4, seed=1)]
    shifted = bp.data.BatchLoader(x, y, 4, seed=1, transform=augment.RandomShift(1))
    twin = bp.data.BatchLoader(x, y, 4, seed=1, transform=augment.RandomShift(1))
    for (xb, yb), (xt, yt), labels in zip(shifted, twin, plain):
        np.testing.assert_array_equal(yb, labels)
        np.testing.assert_array_equal(xb, xt)
        assert xb.shape == (len(labels), 2, 7, 9)
        assert not np.array_equal(xb, x[labels])


def test_batch_loader_refuses_mismatched_data():
    with pytest.raises(bp.errors.ShapeError, match="one target per sample"):
        bp.data.BatchLoader(np.zeros((5, 2)), np.zeros(4), 2)
    with pytest.raises(bp.errors.ConfigurationError, match="batch_size"):
        bp.data.BatchLoader(np.zeros((5, 2)), np.zeros(5), 0)


def test_the_transforms_are_reachable_as_bp_data_augment():
    assert bp.data.augment is bp.augment and bp.data.augment.RandomShift is augment.RandomShift
