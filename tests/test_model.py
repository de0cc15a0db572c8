"""The Sequential API: names, state dicts, forward/backward contract, input handling."""

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ShapeError

RNG = np.random.default_rng(7)
X = RNG.normal(size=(5, 3))
Y = RNG.normal(size=(5, 2))


def model(device="cpu", dtype="float64", seed=11):
    return bp.Sequential(bp.Dense(3, 4), bp.ReLU(), bp.Dense(4, 2), device=device, dtype=dtype, seed=seed)


def test_parameter_names_and_shapes():
    m = model()
    assert [p.name for p in m.parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p.shape for p in m.parameters()] == [(3, 4), (4,), (4, 2), (2,)]
    assert m.dtype == "float64" and m.device == "cpu"


def test_default_initialisation_is_glorot_uniform_and_zero_bias():
    m = bp.Sequential(bp.Dense(300, 200), seed=0)
    w = m.state_dict()["0.weight"]
    limit = np.sqrt(6 / 500)
    assert w.dtype == np.float32 and np.abs(w).max() <= limit
    assert w.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)
    assert not m.state_dict()["0.bias"].any()


def test_seed_reproduces_and_differs():
    a, b, c = model(seed=1).state_dict(), model(seed=1).state_dict(), model(seed=2).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_backward_returns_the_input_gradient():
    """dL/dx from backward matches central differences of L = sum(output * G)."""
    m = model()
    g = RNG.normal(size=(5, 2))
    _, backward = m.forward(X, training=True)
    dx = bp.to_numpy(backward(g))
    eps = 1e-6
    numeric = np.zeros_like(X)
    for index in np.ndindex(X.shape):
        plus, minus = X.copy(), X.copy()
        plus[index] += eps
        minus[index] -= eps
        difference = np.sum(bp.to_numpy(m.predict(plus)) * g) - np.sum(bp.to_numpy(m.predict(minus)) * g)
        numeric[index] = difference / (2 * eps)
    np.testing.assert_allclose(dx, numeric, rtol=1e-6, atol=1e-9)
    assert backward(g, need_input_grad=False) is None


def test_backward_accumulates_until_zero_grad():
    m = model()
    loss = bp.losses.MeanSquaredError()
    _, grads = bp.value_and_grad(m, loss, X, Y)
    output, backward = m.forward(X, training=True)
    backward(loss.value_and_grad(output, m.backend.to_device(Y, m._dtype))[1])
    np.testing.assert_allclose(bp.to_numpy(m.parameters()[0].grad), 2 * grads["0.weight"], rtol=1e-12)
    m.zero_grad()
    assert not bp.to_numpy(m.parameters()[0].grad).any()


def test_value_and_grad_returns_host_copies():
    m = model()
    value, grads = bp.value_and_grad(m, bp.losses.MeanSquaredError(), X, Y)
    expected = float(np.mean((bp.to_numpy(m.predict(X)) - Y) ** 2))
    assert value == pytest.approx(expected, rel=1e-12)
    grads["0.weight"][...] = 0  # a copy: the model's gradient is untouched
    assert bp.to_numpy(m.parameters()[0].grad).any()


def test_load_state_dict_validates_and_casts():
    m = model(dtype="float32")
    state = model(seed=5).state_dict()  # float64 values
    m.load_state_dict(state)
    assert m.state_dict()["0.weight"].dtype == np.float32
    np.testing.assert_allclose(m.state_dict()["0.weight"], state["0.weight"], rtol=1e-7)
    with pytest.raises(KeyError, match="missing"):
        m.load_state_dict({k: v for k, v in state.items() if k != "2.bias"})
    with pytest.raises(ShapeError, match="0.weight"):
        m.load_state_dict({**state, "0.weight": np.zeros((4, 3))})


def test_input_checks_name_the_layer():
    m = model()
    with pytest.raises(ShapeError, match=r"layer 0 \(Dense.*shape \(n, 3\).*shape \(2, 4\)"):
        m.predict(np.zeros((2, 4)))
    with pytest.raises(ShapeError, match="layer 2"):
        bp.Sequential(bp.Dense(3, 4), bp.ReLU(), bp.Dense(5, 2))


def test_host_data_forms_are_accepted(backend):
    m = model(backend)
    expected = bp.to_numpy(m.predict(X))
    np.testing.assert_allclose(bp.to_numpy(m.predict(X.tolist())), expected, rtol=1e-12)
    np.testing.assert_allclose(bp.to_numpy(m(X.astype(np.float32))),
                               bp.to_numpy(m.predict(X.astype(np.float32).astype(float))), rtol=1e-12)
    ints = bp.to_numpy(m.predict(np.array([[1, 0, 2]])))
    np.testing.assert_allclose(ints, bp.to_numpy(m.predict(np.array([[1.0, 0.0, 2.0]]))), rtol=1e-12)
