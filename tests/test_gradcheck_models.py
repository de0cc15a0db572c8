"""gradcheck on any model: nested and residual models, N-D inputs, dL/dx, sampled entries, layers without config."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigurationError, GradientCheckError

RNG = np.random.default_rng(11)
MSE = bp.losses.MeanSquaredError()


class DoubledInputGradient(bp.Layer):
    """y = x, but backward returns 2 dy: a wrong dL/dx with no parameter to reveal it."""

    keeps_shape = True

    def forward(self, x, training=False):
        return x, lambda dy, need_dx=True: 2 * dy if need_dx else None


class Counting(bp.Layer):
    """y = x, counting forward passes (class-wide, so a clone's passes count too)."""

    keeps_shape = True
    forwards = 0

    def forward(self, x, training=False):
        type(self).forwards += 1
        return x, lambda dy, need_dx=True: dy if need_dx else None


class Scale(bp.Layer):
    """y = factor x, with a constructor argument but no config(): checkpoints could not rebuild it."""

    keeps_shape = True

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x, training=False):
        return self.factor * x, lambda dy, need_dx=True: self.factor * dy if need_dx else None


@pytest.mark.parametrize("layers, input_shape", [
    ([bp.Flatten(), bp.Dense(12, 3)], (2, 3, 2)),
    ([bp.Dense(4, 6), bp.Reshape((2, 3)), bp.Softmax(), bp.Flatten(), bp.Dense(6, 3)], (4,)),
    ([bp.Dense(4, 4), bp.Residual(bp.Sequential(bp.Dense(4, 5), bp.Tanh(), bp.Dense(5, 4))), bp.Dense(4, 3)], (4,)),
    ([bp.Residual(bp.Residual(bp.Sequential(bp.Dense(4, 4), bp.Sigmoid()))), bp.Sequential(bp.Dense(4, 3))], (4,)),
], ids=["flatten", "reshape", "residual", "nested"])
def test_gradcheck_on_new_layers_and_nested_models(backend, layers, input_shape):
    model = bp.Sequential(*layers, input_shape=input_shape, device=backend, seed=1)  # float32: checked in float64
    x, y = RNG.normal(size=(5, *input_shape)), RNG.normal(size=(5, 3))
    before = model.state_dict()
    assert bp.gradcheck(model, MSE, x, y) < 1e-6
    assert model.dtype == "float32" and not any(p.has_grad for p in model.parameters())  # the model is untouched
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_a_wrong_input_gradient_in_the_first_layer_is_caught():
    model = bp.Sequential(DoubledInputGradient(), bp.Dense(3, 2), dtype="float64", seed=0)
    x, y = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 2))
    with pytest.raises(GradientCheckError,
                       match=r"gradient of the input x at \(\d, \d\): analytic .* finite differences"):
        bp.gradcheck(model, MSE, x, y)
    fine = bp.Sequential(bp.Identity(), bp.Dense(3, 2), dtype="float64", seed=0)
    assert bp.gradcheck(fine, MSE, x, y) < 1e-6


def test_entries_checks_a_sample_of_each_parameter_and_of_the_input():
    model = bp.Sequential(Counting(), bp.Dense(30, 20), dtype="float64", seed=0)  # 600 + 20 entries, 120 inputs
    x, y = RNG.normal(size=(4, 30)), RNG.normal(size=(4, 20))
    Counting.forwards = 0
    assert bp.gradcheck(model, MSE, x, y, entries=3) < 1e-6
    # one analytic pass, then per tensor (weight, bias, input): 2 passes per entry and one to restore the values
    assert Counting.forwards == 1 + 3 * (2 * 3 + 1)
    Counting.forwards = 0
    bp.gradcheck(model, MSE, x[:, :30], y, entries=None)
    assert Counting.forwards == 1 + (2 * 600 + 1) + (2 * 20 + 1) + (2 * 120 + 1)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ConfigurationError, match="entries"):
            bp.gradcheck(model, MSE, x, y, entries=bad)


def test_sampled_entries_still_catch_a_wrong_parameter_gradient(monkeypatch):
    model = bp.Sequential(bp.Dense(3, 2), dtype="float64", seed=0)
    x, y = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 2))
    original = bp.Dense.forward

    def wrong_bias_gradient(self, x, training=False):
        y, backward = original(self, x, training)

        def doubled(dy, need_dx=True):
            result = backward(dy, need_dx)
            self.params["bias"].accumulate(self.backend.xp.sum(dy, axis=0))  # adds the bias gradient twice
            return result

        return y, doubled

    monkeypatch.setattr(bp.Dense, "forward", wrong_bias_gradient)
    with pytest.raises(GradientCheckError, match="gradient of '0.bias'"):
        bp.gradcheck(model, MSE, x, y, entries=1)


def test_a_layer_without_a_working_config_is_told_what_to_implement():
    model = bp.Sequential(bp.Dense(3, 3), bp.Residual(Scale(2.0)), dtype="float64", seed=0)
    with pytest.raises(ConfigurationError) as excinfo:
        bp.gradcheck(model, MSE, RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3)))
    message = str(excinfo.value)
    assert "layer 1.inner (Scale) cannot be rebuilt from its config() {}" in message
    assert "Implement config()" in message and "Writing a layer" in message
    with pytest.raises(ConfigurationError, match=r"layer 1.inner \(Scale\) is not registered.*bp.register_layer"):
        bp.save(model, "unused.bpk")
