"""The README's "Writing an optimiser" example runs as printed, computes Lion's formula, and says what it promises."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop.optim import OPTIMIZERS

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The example run in ``tmp_path``: its namespace and printed lines (Lion is unregistered afterwards)."""
    monkeypatch.chdir(tmp_path)
    section = README.read_text().split("## Writing an optimiser", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {"__name__": "readme_example"}
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            exec(compile(code, str(README), "exec"), namespace)
        yield namespace, output.getvalue().splitlines()
    finally:
        OPTIMIZERS.pop("Lion", None)


def test_the_readme_optimiser_example_trains_saves_and_resumes_exactly(example, tmp_path):
    namespace, lines = example
    assert OPTIMIZERS["Lion"] is namespace["Lion"]
    assert lines[0] == "Lion(lr=0.003, betas=(0.9, 0.99), weight_decay=0.0)"
    first, last = (float(value) for value in re.fullmatch(r"loss (\S+) -> (\S+)", lines[1]).groups())
    assert last < first / 4  # it trained
    assert lines[2] == "resumed exactly: True"
    assert (tmp_path / "lion.bpk").is_file()


def test_the_example_optimiser_computes_lions_formula(example):
    Lion = example[0]["Lion"]
    backend = bp.get_backend("cpu")
    start, gradients = np.array([0.5, -1.0, 2.0]), [np.array([0.2, -0.1, 0.0]), np.array([-0.3, 0.4, 0.5])]
    parameter = bp.Parameter("w", backend.to_device(start, backend.dtype("float64")), backend)
    optimizer = Lion([parameter], lr=0.1, betas=(0.5, 0.25), weight_decay=0.01)
    w, m = start.copy(), np.zeros(3)
    for g in gradients:
        parameter.grad = backend.to_device(g, backend.dtype("float64"))
        optimizer.step()
        w = w - 0.1 * (np.sign(0.5 * m + 0.5 * g) + 0.01 * w)
        m = 0.25 * m + 0.75 * g
    np.testing.assert_allclose(bp.to_numpy(parameter.value), w, rtol=1e-15)
    np.testing.assert_allclose(bp.to_numpy(parameter.state["exp_avg"]), m, rtol=1e-15)
    np.testing.assert_allclose(w, [0.4991005, -0.998101, 1.896002], rtol=1e-12)  # by hand: signs (1, -1, 0), (-1, 1, 1)
