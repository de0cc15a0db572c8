"""The layer tree: nested Sequential, Residual, dotted names, summary, pickle/deepcopy, format-2 checkpoints."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigurationError, ShapeError

RNG = np.random.default_rng(5)
X = RNG.normal(size=(7, 4))
Y = RNG.normal(size=(7, 2))
MSE = bp.losses.MeanSquaredError()


def nested_model(device="cpu", dtype="float64", seed=0):
    """Dense -> Tanh -> Residual(Dense, ReLU, Dense) -> Sequential(Dense, Sigmoid) -> Dense."""
    block = bp.Sequential(bp.Dense(5, 6), bp.ReLU(), bp.Dense(6, 5))
    head = bp.Sequential(bp.Dense(5, 3), bp.Sigmoid())
    return bp.Sequential(bp.Dense(4, 5), bp.Tanh(), bp.Residual(block), head, bp.Dense(3, 2),
                         device=device, dtype=dtype, seed=seed)


def stateful_model(device="cpu", seed=0):
    """With a buffer (BatchNorm1d) and a random generator (Dropout) inside a residual block."""
    block = bp.Sequential(bp.Dense(5, 5), bp.BatchNorm1d(5), bp.Dropout(0.3))
    return bp.Sequential(bp.Dense(4, 5), bp.Residual(block), bp.Dense(5, 2), device=device, dtype="float64",
                         seed=seed)


def test_dotted_names_walk_the_tree_and_flat_models_keep_theirs():
    assert [name for name, _ in nested_model().named_parameters()] == [
        "0.weight", "0.bias", "2.inner.0.weight", "2.inner.0.bias", "2.inner.2.weight", "2.inner.2.bias",
        "3.0.weight", "3.0.bias", "4.weight", "4.bias"]
    model = nested_model()
    assert [p.name for p in model.parameters()] == [name for name, _ in model.named_parameters()]
    flat = bp.Sequential(bp.Dense(3, 4), bp.ReLU(), bp.Dense(4, 2))
    assert [p.name for p in flat.parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [name for name, _ in stateful_model().named_buffers()] == ["1.inner.1.running_mean",
                                                                       "1.inner.1.running_var"]
    assert list(stateful_model().named_random_states()) == ["1.inner.2"]
    assert [name for name, _ in nested_model().named_layers()][:5] == ["0", "1", "2", "2.inner", "2.inner.0"]


def torch_twin(torch, model):
    """The same network in PyTorch, with our weights copied in."""
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return x + self.inner(x)

    def linear(fan_in, fan_out):
        return nn.Linear(fan_in, fan_out, dtype=torch.float64)

    twin = nn.Sequential(linear(4, 5), nn.Tanh(), Residual(nn.Sequential(linear(5, 6), nn.ReLU(), linear(6, 5))),
                         nn.Sequential(linear(5, 3), nn.Sigmoid()), linear(3, 2))
    state = model.state_dict()
    with torch.no_grad():
        for name, parameter in twin.named_parameters():
            value = torch.from_numpy(state[name])
            parameter.copy_(value.T if name.endswith("weight") else value)
    return twin


def test_nested_residual_model_against_pytorch(backend, torch):
    model = nested_model(backend)
    twin = torch_twin(torch, model)
    x = torch.from_numpy(X).requires_grad_(True)
    reference = torch.nn.functional.mse_loss(twin(x), torch.from_numpy(Y))
    reference.backward()
    value, grads = bp.value_and_grad(model, MSE, X, Y)
    np.testing.assert_allclose(value, reference.item(), rtol=1e-10)
    expected = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    assert sorted(grads) == sorted(expected)
    for name, grad in grads.items():
        want = expected[name].T if name.endswith("weight") else expected[name]
        np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-14, err_msg=name)
    output, backward = model.forward(X, training=True)
    _, grad_output = MSE.value_and_grad(output, model.backend.to_device(Y, model._dtype))
    np.testing.assert_allclose(bp.to_numpy(backward(grad_output)), x.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_residual_adds_the_skip_gradient():
    model = bp.Sequential(bp.Residual(bp.Dense(3, 3, bias=False)), dtype="float64", seed=1)
    weight = model.state_dict()["0.inner.weight"]
    np.testing.assert_allclose(bp.to_numpy(model.predict(X[:, :3])), X[:, :3] + X[:, :3] @ weight, rtol=1e-14)
    _, backward = model.forward(X[:, :3], training=True)
    g = RNG.normal(size=(7, 3))
    np.testing.assert_allclose(bp.to_numpy(backward(g)), g + g @ weight.T, rtol=1e-14)
    assert bp.gradcheck(model, MSE, X[:, :3], Y[:, :1] * np.ones((1, 3))) < 1e-6


def test_residual_shape_error_names_both_shapes():
    with pytest.raises(ShapeError) as excinfo:
        bp.Sequential(bp.Dense(4, 5), bp.Residual(bp.Sequential(bp.Dense(5, 3))))
    message = str(excinfo.value)
    assert "layer 1 (Residual)" in message and "(5,)" in message and "(3,)" in message
    assert "bp.Dense(..., 5)" in message


def test_an_inner_sequential_may_not_have_its_own_device_dtype_or_seed():
    for setting in ({"device": "cpu"}, {"dtype": "float64"}, {"seed": 3}):
        inner = bp.Sequential(bp.Dense(3, 3), **setting)
        with pytest.raises(ConfigurationError) as excinfo:
            bp.Sequential(bp.Residual(inner))
        message = str(excinfo.value)
        assert "layer 0.inner is a Sequential given" in message and "outermost" in message
    shared = bp.Dense(3, 3)
    with pytest.raises(ConfigurationError, match="appears twice.*0.inner and 1"):
        bp.Sequential(bp.Residual(shared), shared)


def test_the_inner_sequential_follows_the_outer_device_dtype_and_seed(backend):
    model = nested_model(backend, dtype="float32", seed=4)
    inner = model.layers[2].inner
    assert inner.device == model.device and inner.dtype == "float32" and inner.backend is model.backend
    again = nested_model("cpu", dtype="float32", seed=4)
    for name, value in again.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value)


def test_to_and_zero_grad_walk_the_tree():
    model = stateful_model()
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    model.fit(X, Y, MSE, optimizer, epochs=2, verbose=0)
    before = model.state_dict()
    model.to("array_api_strict:device1")
    block = model.layers[1].inner
    assert block.device == "array_api_strict:device1" and block.layers[1].backend is model.backend
    for name, p in model.named_parameters():
        assert model.backend.owns(p.value) and all(model.backend.owns(v) for v in p.state.values()), name
    assert all(model.backend.owns(value) for _, value in model.named_buffers())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    model.fit(X, Y, MSE, optimizer, epochs=1, verbose=0)
    assert all(p.has_grad for p in model.parameters())
    model.zero_grad()
    assert not any(p.has_grad for p in model.parameters())


def test_summary_and_count_params_of_the_issue_example():
    block = bp.Sequential(bp.Dense(64, 64), bp.ReLU(), bp.Dense(64, 64))
    model = bp.Sequential(bp.Flatten(), bp.Dense(64, 64), bp.ReLU(), bp.Residual(block), bp.Dense(64, 10),
                          input_shape=(1, 8, 8), device="cpu", dtype="float32", seed=0)
    dense_64 = 64 * 64 + 64  # weight and bias
    assert model.count_params() == dense_64 + 2 * dense_64 + (64 * 10 + 10) == 13_130
    rows = [line.split() for line in model.summary().splitlines()]
    table = {row[0]: row[1:] for row in rows if row and row[0][0].isdigit()}
    assert table == {
        "0": ["Flatten", "(64,)", "0"], "1": ["Dense", "(64,)", "4,160"], "2": ["ReLU", "(64,)", "0"],
        "3": ["Residual", "(64,)", "8,320"], "3.inner": ["Sequential", "(64,)", "8,320"],
        "3.inner.0": ["Dense", "(64,)", "4,160"], "3.inner.1": ["ReLU", "(64,)", "0"],
        "3.inner.2": ["Dense", "(64,)", "4,160"], "4": ["Dense", "(10,)", "650"],
    }
    assert "input shape (1, 8, 8)" in model.summary() and model.summary().endswith("trainable parameters: 13,130")


def assert_same_model(original, restored, optimizer=None, restored_optimizer=None):
    assert restored.device == original.device and restored.dtype == original.dtype
    assert restored is not original and restored.backend is original.backend
    state, again = original.state_dict(), restored.state_dict()
    assert sorted(state) == sorted(again)
    for name, value in state.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    for (name, p), (_, q) in zip(original.named_parameters(), restored.named_parameters()):
        assert p is not q and q.name == name and original.backend.owns(q.value)
        assert sorted(p.state) == sorted(q.state)
        for slot in p.state:
            np.testing.assert_array_equal(bp.to_numpy(q.state[slot]), bp.to_numpy(p.state[slot]))
    assert restored.named_random_states() == original.named_random_states()
    if optimizer is not None:
        assert restored_optimizer.state_dict() == optimizer.state_dict()
        assert [id(p) for p in restored_optimizer.params] == [id(p) for p in restored.parameters()]
    # the next training step (same dropout mask, same Adam update) is identical
    for model, opt in ((original, optimizer), (restored, restored_optimizer)):
        if opt is not None:
            model.fit(X, Y, MSE, opt, epochs=1, verbose=0, shuffle=False)
    for name, value in original.state_dict().items():
        np.testing.assert_array_equal(restored.state_dict()[name], value, err_msg=name)


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "clone"])
def test_pickle_and_deepcopy_round_trips(backend, how):
    model = stateful_model(backend)
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    model.fit(X, Y, MSE, optimizer, epochs=2, verbose=0)
    if how == "pickle":
        restored, restored_optimizer = pickle.loads(pickle.dumps((model, optimizer)))
    elif how == "deepcopy":
        restored, restored_optimizer = copy.deepcopy((model, optimizer))
    else:
        restored = model.clone()
        restored_optimizer = bp.optim.Adam(restored.parameters(), lr=0.01)
        restored_optimizer.load_state_dict(optimizer.state_dict())
    assert_same_model(model, restored, optimizer, restored_optimizer)


def test_layers_optimisers_and_backends_pickle_on_their_own(backend):
    layer = stateful_model(backend).layers[1]
    again = pickle.loads(pickle.dumps(layer))
    assert type(again) is bp.Residual and again.inner.layers[1].backend is layer.backend
    np.testing.assert_array_equal(bp.to_numpy(again.inner.layers[1].buffers["running_var"]),
                                  bp.to_numpy(layer.inner.layers[1].buffers["running_var"]))
    assert pickle.loads(pickle.dumps(bp.get_backend(backend))) is bp.get_backend(backend)
    assert copy.deepcopy(bp.get_backend(backend)) is bp.get_backend(backend)
    optimizer = bp.optim.SGD(stateful_model(backend).parameters(), lr=0.1, momentum=0.9)
    assert pickle.loads(pickle.dumps(optimizer)).state_dict() == optimizer.state_dict()


def test_format_2_round_trip_of_a_nested_residual_model(backend, tmp_path):
    model = stateful_model(backend)
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    model.fit(X, Y, MSE, optimizer, epochs=2, verbose=0)
    path = bp.save(model, tmp_path / "nested.bpk", optimizer=optimizer)
    assert path.read_bytes()[8:12] == (2).to_bytes(4, "little")
    other = stateful_model(backend, seed=9)
    bp.load_into(other, path)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value)
    restored = bp.load_checkpoint(path, device=backend)
    assert restored.model.config() == model.config()
    assert_same_model(model, restored.model, optimizer, restored.optimizer)
    with pytest.raises(bp.errors.CheckpointError, match=r"another architecture.*1.inner.2: Dropout"):
        bp.load_into(bp.Sequential(bp.Dense(4, 5), bp.Residual(bp.Sequential(bp.Dense(5, 5))), bp.Dense(5, 2)),
                     path)


def test_format_2_keeps_an_input_shape_that_no_layer_declares(tmp_path):
    model = bp.Sequential(bp.Flatten(), bp.Dense(6, 2), dtype="float64", seed=0)
    model.predict(np.ones((1, 2, 3)))  # built from its first batch
    loaded = bp.load(bp.save(model, tmp_path / "flat.bpk"))
    assert loaded.input_shape == (2, 3)
    x = RNG.normal(size=(4, 2, 3))
    np.testing.assert_array_equal(bp.to_numpy(loaded.predict(x)), bp.to_numpy(model.predict(x)))


def test_unpickling_where_the_device_is_missing_raises_device_error(monkeypatch):
    """A pickled model names its device by specifier; where that device does not exist (a CuPy model's GPU index
    on a machine without it), unpickling raises DeviceError instead of landing somewhere else."""
    from backprop import backends

    data = pickle.dumps(stateful_model("array_api_strict:device1"))

    def missing(spec, argument):
        raise bp.errors.BackendUnavailableError(f"{spec!r}: no such device here")

    monkeypatch.setattr(backends.registry, "_CACHE", {})
    monkeypatch.setitem(backends.registry._FACTORIES, "array_api_strict", missing)
    with pytest.raises(bp.errors.DeviceError, match="array_api_strict:device1.*no such device"):
        pickle.loads(data)


def test_a_tampered_format_2_architecture_is_refused_naming_the_problem(tmp_path):
    from tests.test_checkpoint import rewrite_header

    path = bp.save(stateful_model(), tmp_path / "nested.bpk")

    def unknown_inner(document):
        document["model"]["architecture"]["config"]["layers"][1]["config"]["inner"]["type"] = "Mystery"

    rewrite_header(path, unknown_inner)
    with pytest.raises(bp.errors.CheckpointError, match="Residual's inner layer has unknown type 'Mystery'"):
        bp.load(path)
    path = bp.save(bp.Sequential(bp.Flatten(), bp.Dense(6, 2), input_shape=(2, 3)), tmp_path / "flat.bpk")
    rewrite_header(path, lambda document: document["model"]["architecture"]["config"].update(input_shape=[3, 2]))
    with pytest.raises(bp.errors.CheckpointError, match=r"saved for per-sample inputs of shape \[2, 3\]"):
        bp.load(path)
    rewrite_header(path, lambda document: document["model"]["architecture"]["config"].update(extra=1))
    with pytest.raises(bp.errors.CheckpointError, match="not a Sequential node"):
        bp.load(path)


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda model: pickle.loads(pickle.dumps(model))])
def test_zero_grad_clears_exactly_the_models_own_gradients_after_a_copy(duplicate):
    model = bp.Sequential(bp.Dense(3, 4), bp.Residual(bp.Sequential(bp.Dense(4, 4), bp.Tanh())), bp.Dense(4, 2),
                          input_shape=(3,), seed=0)
    x, y = np.ones((5, 3), np.float32), np.zeros((5, 2), np.float32)
    bp.value_and_grad(model, bp.losses.MeanSquaredError(), x, y)
    twin = duplicate(model)
    assert all(p.has_grad for p in twin.parameters()) and len(twin.parameters()) == 6
    assert twin.parameter_list() == tuple(twin.parameters())  # the copy's own, in tree order
    assert twin.layer_list() == tuple(layer for _, layer in twin.named_layers())
    twin.zero_grad()
    assert not any(p.has_grad for p in twin.parameters())
    assert all(p.has_grad for p in model.parameters())  # the original keeps its gradients
    model.zero_grad()
    assert not any(p.has_grad for p in model.parameters())
