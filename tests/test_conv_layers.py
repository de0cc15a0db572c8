"""The image layers (Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, BatchNorm2d, Dropout on images) inside models:
against torch.nn with autograd on every backend, gradient checks, checkpoints, device moves, summaries, and the
errors a wrongly shaped input or argument raises."""

from __future__ import annotations

import copy as copy_module
import pickle

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigurationError, ShapeError

CE = bp.losses.CrossEntropy()
TOLERANCES = {"float64": 1e-10, "float32": 1e-5}
RNG = np.random.default_rng(11)
IMAGES = RNG.normal(size=(5, 2, 9, 8))
LABELS = RNG.integers(0, 3, size=5)


def small_cnn(device="cpu", dtype="float64", seed=0):
    """Every image layer once, with the geometries that are easy to get wrong: 'same' padding with an even
    kernel, stride, dilation, asymmetric kernels, overlapping and padded pooling, ReLU zeros tied in max-pooling.
    The first convolution has no bias: batch normalisation removes it (its exact gradient is 0)."""
    return bp.Sequential(
        bp.Conv2d(2, 3, kernel_size=(2, 3), padding="same", bias=False), bp.BatchNorm2d(3), bp.ReLU(), bp.MaxPool2d(2),
        bp.Conv2d(3, 4, kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), bp.Tanh(),
        bp.AvgPool2d(2, stride=1, padding=1), bp.GlobalAvgPool2d(), bp.Dense(4, 3),
        input_shape=(2, 9, 8), device=device, dtype=dtype, seed=seed)


def torch_twin(torch, model):
    """The same network in torch.nn, with our initial parameters."""
    nn, dtype = torch.nn, getattr(torch, model.dtype)
    twin = nn.Sequential(
        nn.Conv2d(2, 3, (2, 3), padding="same", bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), nn.Tanh(),
        nn.AvgPool2d(2, stride=1, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).to(dtype)
    state = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            index, kind = name.split(".")
            if index in ("0", "1", "4") and kind in ("weight", "bias"):
                getattr(twin[int(index)], kind).copy_(torch.from_numpy(value))
        twin[9].weight.copy_(torch.from_numpy(state["8.weight"].T))
        twin[9].bias.copy_(torch.from_numpy(state["8.bias"]))
    return twin


def torch_gradients(model_twin):
    grads = {f"{index}.{kind}": getattr(model_twin[index], kind).grad.numpy()
             for index, kind in ((0, "weight"), (1, "weight"), (1, "bias"), (4, "weight"), (4, "bias"))}
    grads["8.weight"], grads["8.bias"] = model_twin[9].weight.grad.numpy().T, model_twin[9].bias.grad.numpy()
    return grads


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_cnn_matches_pytorch_in_training_and_inference(torch, backend, dtype):
    model = small_cnn(backend, dtype)
    twin = torch_twin(torch, model)
    x_torch = torch.tensor(IMAGES, dtype=getattr(torch, dtype), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(twin(x_torch), torch.from_numpy(LABELS))
    loss.backward()
    rtol = TOLERANCES[dtype]

    output, backward = model.forward(IMAGES, training=True)
    with model.backend.activate():
        value, grad_output = CE.value_and_grad(output, CE.prepare_target(LABELS, model.backend, model._dtype,
                                                                          tuple(output.shape)))
    dx = bp.to_numpy(backward(grad_output))
    assert float(value) == pytest.approx(loss.item(), rel=rtol)
    np.testing.assert_allclose(dx, x_torch.grad.numpy(), rtol=rtol, atol=rtol * np.abs(dx).max())
    expected = torch_gradients(twin)
    for name, parameter in model.named_parameters():
        grad, reference = bp.to_numpy(parameter.grad), expected[name]
        np.testing.assert_allclose(grad, reference, rtol=rtol, atol=rtol * np.abs(reference).max(), err_msg=name)
    state = model.state_dict()
    for ours, theirs in (("running_mean", twin[1].running_mean), ("running_var", twin[1].running_var)):
        np.testing.assert_allclose(state[f"1.{ours}"], theirs.numpy(), rtol=rtol, err_msg=ours)

    twin.eval()
    with torch.no_grad():
        expected_eval = twin(x_torch).numpy()
    predicted = bp.to_numpy(model.predict(IMAGES))
    np.testing.assert_allclose(predicted, expected_eval, rtol=rtol, atol=rtol * np.abs(expected_eval).max())


def test_the_gradients_of_a_small_cnn_match_finite_differences():
    model = small_cnn(seed=3)
    state = model.state_dict()
    state["1.weight"], state["1.bias"] = np.array([0.7, 1.3, 1.1]), np.array([0.2, -0.1, 0.3])
    model.load_state_dict(state)
    assert bp.gradcheck(model, CE, IMAGES, LABELS) < 1e-5


def test_max_pooling_routes_tied_maxima_like_pytorch_on_every_backend(torch, backend):
    x = np.random.default_rng(0).integers(0, 2, size=(3, 2, 6, 7)).astype(float)
    model = bp.Sequential(bp.MaxPool2d(3, stride=2, padding=1), bp.Flatten(), input_shape=(2, 6, 7), device=backend,
                          dtype="float64")
    x_torch = torch.tensor(x, requires_grad=True)
    pooled = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1).flatten(1)
    weights = np.arange(pooled.shape[1], dtype=float)
    (pooled * torch.from_numpy(weights)).sum().backward()
    output, backward = model.forward(x, training=True)
    np.testing.assert_array_equal(bp.to_numpy(output), pooled.detach().numpy())
    np.testing.assert_array_equal(bp.to_numpy(backward(np.tile(weights, (3, 1)))), x_torch.grad.numpy())


def test_dropout_on_images_masks_every_element_independently(backend):
    model = bp.Sequential(bp.Dropout(0.5, seed=4), input_shape=(2, 9, 8), device=backend, dtype="float64")
    output, backward = model.forward(IMAGES, training=True)
    mask = model.layers[0].last_mask
    assert mask.shape == IMAGES.shape and set(np.unique(mask)) == {0.0, 2.0}
    np.testing.assert_array_equal(bp.to_numpy(output), IMAGES * mask)
    np.testing.assert_array_equal(bp.to_numpy(backward(np.ones(IMAGES.shape))), mask)
    np.testing.assert_array_equal(bp.to_numpy(model.predict(IMAGES)), IMAGES)


def test_checkpoints_pickles_device_moves_and_summary_keep_every_image_layer(tmp_path):
    model = small_cnn(dtype="float32", seed=5)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.fit(IMAGES, LABELS, CE, optimizer, epochs=2, batch_size=5, verbose=0)
    path = bp.save(model, tmp_path / "cnn.bpk", optimizer)
    loaded = bp.load_checkpoint(path, device="array_api_strict:device1")
    assert loaded.model.config() == model.config()
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.model.state_dict()[name], value, err_msg=name)
    np.testing.assert_array_equal(bp.to_numpy(loaded.model.predict(IMAGES)), bp.to_numpy(model.predict(IMAGES)))
    moved = small_cnn(dtype="float32", seed=5)
    moved.load_state_dict(model.state_dict())
    moved.to("array_api_strict:device1")
    np.testing.assert_array_equal(bp.to_numpy(moved.predict(IMAGES)), bp.to_numpy(model.predict(IMAGES)))
    for copy in (pickle.loads(pickle.dumps(model)), copy_module.deepcopy(moved)):
        np.testing.assert_array_equal(bp.to_numpy(copy.predict(IMAGES)), bp.to_numpy(model.predict(IMAGES)))
    unshaped = bp.Sequential(*[type(layer).from_config(layer.config()) for layer in model.layers], dtype="float32")
    unshaped.predict(IMAGES)  # built from its first batch: the checkpoint records the shape it was built for
    restored = bp.load(bp.save(unshaped, tmp_path / "unshaped.bpk"))
    assert restored.input_shape == (2, 9, 8) and restored.count_params() == model.count_params()
    summary = model.summary()
    for row in ("Conv2d       (3, 9, 8)", "MaxPool2d    (3, 4, 4)", "Conv2d       (4, 2, 4)", "AvgPool2d    (4, 3, 5)",
                "GlobalAvgPool2d  (4,)"):
        assert " ".join(row.split()) in " ".join(summary.split())
    assert model.count_params() == (2 * 3 * 6) + 6 + (3 * 4 * 6 + 4) + (4 * 3 + 3)


def test_layers_rebuild_from_their_config():
    for layer in (bp.Conv2d(2, 3, (2, 3), stride=1, padding="same", dilation=2, bias=False, init="glorot_normal"),
                  bp.MaxPool2d(3, stride=(2, 1), padding=1), bp.AvgPool2d((2, 4)), bp.GlobalAvgPool2d(),
                  bp.BatchNorm2d(4, momentum=0.2, eps=1e-3, affine=False)):
        rebuilt = type(layer).from_config(layer.config())
        assert rebuilt.config() == layer.config() and repr(rebuilt) == repr(layer)
    assert repr(bp.Conv2d(1, 16, 3, padding=1)) == "Conv2d(1, 16, kernel_size=(3, 3), padding=(1, 1))"


def test_conv2d_parameters_have_pytorchs_shapes_and_he_uniform_initial_weights():
    model = bp.Sequential(bp.Conv2d(4, 8, (3, 5)), input_shape=(4, 10, 10), seed=0, dtype="float64")
    weight, bias = model.state_dict()["0.weight"], model.state_dict()["0.bias"]
    assert weight.shape == (8, 4, 3, 5) and bias.shape == (8,)
    limit = np.sqrt(6.0 / (4 * 3 * 5))
    assert np.abs(weight).max() <= limit and np.abs(weight).max() > 0.9 * limit and not bias.any()
    assert weight.std() == pytest.approx(limit / np.sqrt(3), rel=0.1)


# -- errors -----------------------------------------------------------------------------------------------------
def test_flat_or_channelless_inputs_name_the_reshape_that_fixes_them():
    model = bp.Sequential(bp.Conv2d(1, 4, 3), bp.Flatten(), bp.Dense(144, 2))
    with pytest.raises(ShapeError, match=r"layer 0 \(Conv2d\).*\(64,\).*x\.reshape\(-1, 1, 8, 8\)"):
        model.predict(np.zeros((3, 64)))
    with pytest.raises(ShapeError, match=r"\(8, 8\).*x\.reshape\(-1, 1, 8, 8\).*bp\.Reshape\(\(1, 8, 8\)\)"):
        model.predict(np.zeros((3, 8, 8)))
    with pytest.raises(ShapeError, match=r"\(768,\).*x.reshape\(-1, 3, 16, 16\)"):
        bp.Sequential(bp.Conv2d(3, 4, 3)).build((3 * 16 * 16,))
    with pytest.raises(ShapeError, match=r"\(7,\).*reshape each sample to \(channels, height, width\)"):
        bp.Sequential(bp.MaxPool2d(2)).build((7,))


def test_a_wrong_channel_count_names_the_layer_and_both_counts():
    with pytest.raises(ShapeError,
                       match=r"layer 2 \(Conv2d\).*Conv2d\(8, 4, .*expects 8 input channels, but its input has 6"):
        bp.Sequential(bp.Conv2d(1, 6, 3), bp.ReLU(), bp.Conv2d(8, 4, 3), input_shape=(1, 10, 10))
    with pytest.raises(ShapeError, match=r"BatchNorm2d.*expects 5 input channels, but its input has 6.*num_features"):
        bp.Sequential(bp.Conv2d(1, 6, 3), bp.BatchNorm2d(5), input_shape=(1, 10, 10))


def test_a_kernel_larger_than_the_padded_input_names_the_layer_and_the_sizes():
    with pytest.raises(ShapeError, match=r"layer 1 \(Conv2d.*spans \(5, 5\).*padded by .* is only \(4, 4\)"):
        bp.Sequential(bp.MaxPool2d(2), bp.Conv2d(1, 2, 5), input_shape=(1, 8, 8))
    with pytest.raises(ShapeError, match=r"MaxPool2d.*spans \(3, 3\).*\(2, 9\)"):
        bp.Sequential(bp.MaxPool2d(3), input_shape=(1, 2, 9))
    assert bp.Sequential(bp.Conv2d(1, 2, 5, padding=1), input_shape=(1, 3, 3)).output_shape == (2, 1, 1)


def test_bad_arguments_are_refused_with_the_fix():
    with pytest.raises(ConfigurationError, match=r"padding='same' needs stride 1.*padding=\(1, 2\)"):
        bp.Conv2d(1, 2, (3, 5), stride=2, padding="same")
    with pytest.raises(ConfigurationError, match="'valid' or 'same'"):
        bp.Conv2d(1, 2, 3, padding="full")
    with pytest.raises(ConfigurationError, match="kernel_size"):
        bp.Conv2d(1, 2, (3, 3, 3))
    with pytest.raises(ConfigurationError, match="stride"):
        bp.MaxPool2d(2, stride=0)
    with pytest.raises(ConfigurationError, match="at most half the kernel size"):
        bp.AvgPool2d(2, padding=2)
    with pytest.raises(ShapeError, match=r"at least 2 values per channel"):
        bp.Sequential(bp.BatchNorm2d(2), input_shape=(2, 1, 1)).forward(np.ones((1, 2, 1, 1)), training=True)
