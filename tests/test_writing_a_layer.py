"""The README's "Writing a layer" example runs as printed, and says what it promises."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import backprop as bp
from backprop.layers import LAYERS

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Writing a layer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_layer_example_runs_and_round_trips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = io.StringIO()
    namespace: dict = {"__name__": "readme_example"}
    try:
        with contextlib.redirect_stdout(output):
            exec(compile(readme_example(), str(README), "exec"), namespace)
        assert LAYERS["PReLU"] is namespace["PReLU"]
    finally:
        LAYERS.pop("PReLU", None)
    lines = output.getvalue().splitlines()
    assert lines[0] == "gradient check: True" and lines[2] == "reloaded: True"
    slopes = [float(value) for value in re.findall(r"-?\d+\.\d+", lines[1])]
    assert len(slopes) == 4 and any(abs(slope - 0.25) > 0.1 for slope in slopes)  # the slopes were trained
    assert (tmp_path / "prelu.bpk").is_file()


def test_the_example_layer_fails_the_gradient_check_with_a_wrong_backward(tmp_path, monkeypatch):
    """The example's gradcheck could fail: with dL/dx off by a factor, it raises."""
    monkeypatch.chdir(tmp_path)
    broken = readme_example().replace("return dy * scale if need_dx else None",
                                      "return 2 * dy * scale if need_dx else None")
    assert broken != readme_example()
    try:
        with (contextlib.redirect_stdout(io.StringIO()),
              pytest.raises(bp.errors.GradientCheckError, match="gradient of")):
            exec(compile(broken, str(README), "exec"), {"__name__": "readme_example"})
    finally:
        LAYERS.pop("PReLU", None)
