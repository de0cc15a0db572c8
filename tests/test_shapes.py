"""Shapes, not widths: N-D inputs, Flatten and Reshape, building from a shape, and the shape errors' messages."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigurationError, ShapeError

RNG = np.random.default_rng(3)
IMAGES = RNG.normal(size=(6, 2, 3, 4))
TARGETS = RNG.normal(size=(6, 3))
MSE = bp.losses.MeanSquaredError()


def image_model(device="cpu", seed=0, input_shape=(2, 3, 4)):
    return bp.Sequential(bp.Flatten(), bp.Dense(24, 5), bp.Tanh(), bp.Dense(5, 3), input_shape=input_shape,
                         device=device, dtype="float64", seed=seed)


def test_layers_report_per_sample_output_shapes():
    backend, dtype, rng = bp.get_backend("cpu"), np.float64, np.random.default_rng(0)
    assert bp.Dense(3, 4).build((3,), backend, dtype, rng) == (4,)
    assert bp.Flatten().build((2, 3, 4), backend, dtype, rng) == (24,)
    assert bp.ReLU().build((2, 3, 4), backend, dtype, rng) == (2, 3, 4)
    assert bp.Reshape((4, -1)).build((2, 3, 4), backend, dtype, rng) == (4, 6)
    assert bp.Dense(3, 4).input_shape == (3,) and bp.Flatten().input_shape is None
    model = image_model()
    assert model.input_shape == (2, 3, 4) and model.output_shape == (3,) and model.out_features == 3


def test_flatten_through_a_model_against_the_same_dense_model_on_flat_data(backend):
    model = image_model(backend)
    flat = bp.Sequential(bp.Dense(24, 5), bp.Tanh(), bp.Dense(5, 3), device=backend, dtype="float64", seed=0)
    value, grads = bp.value_and_grad(model, MSE, IMAGES, TARGETS)
    flat_value, flat_grads = bp.value_and_grad(flat, MSE, IMAGES.reshape(6, -1), TARGETS)
    assert value == flat_value and value > 0
    assert sorted(grads) == ["1.bias", "1.weight", "3.bias", "3.weight"]
    for name, grad in grads.items():
        np.testing.assert_array_equal(grad, flat_grads[name.replace("1.", "0.", 1).replace("3.", "2.", 1)])
    output, backward = model.forward(IMAGES, training=True)
    dx = bp.to_numpy(backward(np.ones((6, 3))))
    assert dx.shape == (6, 2, 3, 4) and np.abs(dx).sum() > 0


def test_flatten_and_reshape_against_pytorch(torch):
    model = bp.Sequential(bp.Flatten(), bp.Dense(24, 6), bp.Reshape((2, 3)), bp.Softmax(), bp.Flatten(),
                          bp.Dense(6, 3), input_shape=(2, 3, 4), dtype="float64", seed=2)
    state = model.state_dict()
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 6, dtype=torch.float64),
                                    torch.nn.Unflatten(1, (2, 3)), torch.nn.Softmax(dim=-1), torch.nn.Flatten(),
                                    torch.nn.Linear(6, 3, dtype=torch.float64))
    with torch.no_grad():
        for ours, theirs in (("1", 1), ("5", 5)):
            reference[theirs].weight.copy_(torch.from_numpy(state[f"{ours}.weight"].T))
            reference[theirs].bias.copy_(torch.from_numpy(state[f"{ours}.bias"]))
    x = torch.from_numpy(IMAGES).requires_grad_(True)
    loss = torch.nn.functional.mse_loss(reference(x), torch.from_numpy(TARGETS))
    loss.backward()
    value, grads = bp.value_and_grad(model, MSE, IMAGES, TARGETS)
    np.testing.assert_allclose(value, loss.item(), rtol=1e-12)
    for ours, theirs in (("1", 1), ("5", 5)):
        np.testing.assert_allclose(grads[f"{ours}.weight"], reference[theirs].weight.grad.numpy().T, rtol=1e-10)
        np.testing.assert_allclose(grads[f"{ours}.bias"], reference[theirs].bias.grad.numpy(), rtol=1e-10)
    output, backward = model.forward(IMAGES, training=True)
    _, grad_output = MSE.value_and_grad(output, TARGETS)
    np.testing.assert_allclose(bp.to_numpy(backward(grad_output)), x.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_fit_evaluate_predict_take_n_d_inputs():
    model = image_model()
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
    before = model.evaluate(IMAGES, TARGETS, MSE)["loss"]
    history = model.fit(IMAGES, TARGETS, MSE, optimizer, epochs=20, batch_size=3, seed=0, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.evaluate(IMAGES, TARGETS, MSE)["loss"] < before
    assert model.predict(IMAGES).shape == (6, 3)


def test_reshape_at_the_end_gives_n_d_outputs_and_targets():
    model = bp.Sequential(bp.Dense(4, 6), bp.Reshape((2, 3)), dtype="float64", seed=0)
    x, y = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 2, 3))
    value, grads = bp.value_and_grad(model, MSE, x, y)
    prediction = bp.to_numpy(model.predict(x))
    assert prediction.shape == (5, 2, 3)
    np.testing.assert_allclose(value, np.mean((prediction - y) ** 2), rtol=1e-12)
    model.fit(x, y, MSE, bp.optim.SGD(model.parameters(), lr=0.1), epochs=2, verbose=0)


def test_the_shape_comes_from_input_shape_then_the_first_declaring_layer_then_the_first_batch():
    assert bp.Sequential(bp.ReLU(), bp.Dropout(0.1), bp.Dense(3, 2)).input_shape == (3,)
    given = image_model(seed=5)
    deferred = image_model(seed=5, input_shape=None)
    assert deferred.input_shape is None and not deferred.built
    with pytest.raises(ConfigurationError, match=r"not built yet.*input_shape="):
        deferred.parameters()
    np.testing.assert_array_equal(bp.to_numpy(deferred.predict(IMAGES)), bp.to_numpy(given.predict(IMAGES)))
    assert deferred.input_shape == (2, 3, 4)
    for name, value in given.state_dict().items():
        np.testing.assert_array_equal(deferred.state_dict()[name], value)
    explicit = image_model(seed=5, input_shape=None)
    assert explicit.build((2, 3, 4)) == (3,) and explicit.count_params() == given.count_params() == 24 * 5 + 5 + 18


def test_a_later_batch_with_another_per_sample_shape_names_both_shapes_and_the_reshape():
    model = bp.Sequential(bp.Flatten(), bp.Dense(64, 2), seed=0)
    model.predict(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ShapeError) as excinfo:
        model.predict(np.zeros((2, 64)))
    message = str(excinfo.value)
    assert message.startswith("layer 0 (Flatten(), built for the per-sample shape (1, 8, 8) of the first batch)")
    assert "(n, 1, 8, 8)" in message and "(2, 64)" in message and "use x.reshape(-1, 1, 8, 8)" in message
    with pytest.raises(ShapeError, match=r"input_shape=\(1, 8, 8\).*\(3, 8, 8\)"):
        bp.Sequential(bp.Flatten(), bp.Dense(64, 2), input_shape=(1, 8, 8)).predict(np.zeros((3, 8, 8)))


def test_a_dense_layer_given_images_says_to_insert_flatten():
    with pytest.raises(ShapeError) as excinfo:
        bp.Sequential(bp.Dense(64, 10), input_shape=(1, 8, 8))
    message = str(excinfo.value)
    assert "layer 0 (Dense(in_features=64" in message and "(64,)" in message and "(1, 8, 8)" in message
    assert "insert bp.Flatten() before it" in message
    with pytest.raises(ShapeError, match=r"\(2, 1, 8, 8\).*insert bp.Flatten\(\) as the first layer"):
        bp.Sequential(bp.Dense(64, 10)).predict(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ShapeError, match=r"layer 2 .*expects 5 input features.*produces 4"):
        bp.Sequential(bp.Dense(3, 4), bp.ReLU(), bp.Dense(5, 2))


def test_reshape_and_flatten_errors():
    with pytest.raises(ShapeError, match=r"layer 1 \(Reshape\).*\(5,\).*\(2, 3\)"):
        bp.Sequential(bp.Dense(2, 5), bp.Reshape((2, 3)))
    for bad in ((0, 3), (-1, -1), "ab", 3):
        with pytest.raises(ConfigurationError):
            bp.Reshape(bad)
    with pytest.raises(ShapeError, match=r"batch axis"):
        bp.Sequential(bp.Flatten(), bp.Dense(3, 1)).predict(np.zeros(3))
    with pytest.raises(ConfigurationError, match="input_shape"):
        bp.Sequential(bp.Flatten(), input_shape=(0, 3))


def test_reshape_backward_restores_the_input_shape():
    layer = bp.Reshape((3, -1))
    assert layer.build((12,), bp.get_backend("cpu"), np.float64, np.random.default_rng(0)) == (3, 4)
    x = np.arange(24.0).reshape(2, 12)
    y, backward = layer.forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, 3, 4))
    np.testing.assert_array_equal(backward(y * 2), x * 2)
    assert backward(y, False) is None and bp.Reshape.from_config(layer.config()).shape == (3, -1)


def test_cross_entropy_refuses_outputs_that_are_not_rows_of_class_scores():
    model = bp.Sequential(bp.Dense(4, 6), bp.Reshape((2, 3)), dtype="float64", seed=0)
    with pytest.raises(ShapeError, match=r"CrossEntropy scores \(samples, classes\).*\(5, 2, 3\).*bp.Flatten\(\)"):
        bp.value_and_grad(model, bp.losses.CrossEntropy(), RNG.normal(size=(5, 4)), np.zeros(5, dtype=int))
