"""Checkpoint files written by earlier versions of backprop keep loading, with the same numbers.

``tests/fixtures/format1_checkpoint.bpk`` was written by backprop 0.1.0 (format 1); how is in
``tests/fixtures/make_format1_checkpoint.py``, and ``format1_expected.npz`` holds what a correct load gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import backprop as bp

FIXTURES = Path(__file__).parent / "fixtures"
FORMAT1 = FIXTURES / "format1_checkpoint.bpk"


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "format1_expected.npz") as data:
        return {key: data[key] for key in data.files}


def test_the_fixture_is_a_format_1_file():
    assert FORMAT1.read_bytes()[8:12] == (1).to_bytes(4, "little")


def test_format_1_checkpoint_loads_with_its_values(backend, expected):
    restored = bp.load_checkpoint(FORMAT1, device=backend)
    model, optimizer = restored.model, restored.optimizer
    assert [type(layer).__name__ for layer in model.layers] == [
        "Dense", "ReLU", "BatchNorm1d", "Dropout", "Dense", "Tanh"]
    assert model.dtype == "float64" and restored.extra == {"made_by": "backprop 0.1.0"}
    state = model.state_dict()
    tensors = {key.removeprefix("tensor:"): value for key, value in expected.items() if key.startswith("tensor:")}
    assert sorted(state) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert type(optimizer).__name__ == "Adam" and optimizer.steps == 2 and optimizer.lr == 0.01
    slots = {f"{name}/{slot}": bp.to_numpy(value)
             for name, parameter in model.named_parameters() for slot, value in parameter.state.items()}
    assert sorted(slots) == sorted(key.removeprefix("slot:") for key in expected if key.startswith("slot:"))
    for name, value in slots.items():
        np.testing.assert_array_equal(value, expected[f"slot:{name}"], err_msg=name)
    np.testing.assert_allclose(bp.to_numpy(model.predict(expected["x"])), expected["predict"], rtol=1e-12, atol=0)
    model.forward(expected["x"], training=True)
    np.testing.assert_array_equal(model.layers[3].last_mask, expected["next_dropout_mask"])
