"""Device discipline on a CPU stand-in that follows CuPy's rules (`tests/recording_backend.py`).

Every model here lives on ``"recording:1"`` while device 0 is current, as a model on the last GPU would. The
tests assert what a GPU needs and a CPU run cannot show: every array operation inside the model's device
context (training, evaluation, checkpoints, the public functions called on their own); no host read and no
host-to-device copy in a steady-state training step (one read per epoch, at its end); and the number of array
operations of one step per workload, pinned so that a regression shows.
"""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.data import check_finite
from backprop.gradients import loss_and_backward
from tests import recording_backend as rb

DEVICE = "recording:1"


@pytest.fixture(autouse=True)
def recording():
    with rb.registered():
        yield


def _data(outputs: int, kind: str, samples: int = 24, features: int = 3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, features))
    if kind == "regression":
        return x, rng.normal(size=(samples, outputs))
    if kind == "binary":
        return x, (rng.random((samples, outputs)) > 0.5).astype(float)
    return x, rng.integers(0, outputs, size=samples)


def _workloads():
    """name -> (layers, loss, optimiser factory, data kind, fit options)."""
    return {
        "mse_relu_sgd_nesterov": (
            lambda: [bp.Dense(3, 8), bp.ReLU(), bp.Dense(8, 1)], bp.losses.MeanSquaredError(),
            lambda p: bp.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True), "regression", {},
        ),
        "bce_probabilities_adam_amsgrad_l1": (
            lambda: [bp.Dense(3, 8), bp.Tanh(), bp.Dense(8, 1), bp.Sigmoid()], bp.losses.BinaryCrossEntropy(),
            lambda p: bp.optim.Adam(p, lr=0.01, amsgrad=True), "binary", {"penalty": bp.penalties.L1(1e-3)},
        ),
        "bce_logits_pos_weight_rmsprop_l1l2": (
            lambda: [bp.Dense(3, 8), bp.LeakyReLU(), bp.Dense(8, 2)],
            bp.losses.BinaryCrossEntropy(from_logits=True, pos_weight=[2.0, 3.0]),
            lambda p: bp.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True), "binary",
            {"penalty": bp.penalties.L1L2(1e-3, 1e-3)},
        ),
        "ce_logits_weighted_adamw_batchnorm_dropout_l2": (
            lambda: [bp.Dense(3, 8), bp.BatchNorm1d(8), bp.ReLU(), bp.Dropout(0.2, seed=1), bp.Dense(8, 3)],
            bp.losses.CrossEntropy(weight=[1.0, 2.0, 0.5]), lambda p: bp.optim.AdamW(p, lr=0.01), "classes",
            {"penalty": bp.penalties.L2(1e-4)},
        ),
        "ce_probabilities_layernorm_sgd_metrics_validation": (
            lambda: [bp.Dense(3, 8), bp.LayerNorm(8), bp.Sigmoid(), bp.Dense(8, 3), bp.Softmax()],
            bp.losses.CrossEntropy(from_logits=False), lambda p: bp.optim.SGD(p, lr=0.1), "classes",
            {"metrics": ["accuracy", "mse"], "validation": True},
        ),
        "mse_composed_residual_reshape_adam": (
            lambda: [bp.Reshape((3, 1)), bp.Flatten(), bp.Dense(3, 8), bp.Tanh(),
                     bp.Residual(bp.Sequential(bp.Dense(8, 8), bp.ReLU(), bp.Dense(8, 8))), bp.Dense(8, 1)],
            bp.losses.MeanSquaredError(), lambda p: bp.optim.Adam(p, lr=0.01), "regression", {},
        ),
    }


# Array operations of one steady-state step (one optimizer.step() and the next batch's forward and backward),
# as recorded on the day this was written. A change is a regression unless it was meant: then update it here.
# (Issue 16, flat parameter storage: the optimiser updates all parameters in one pass over flat buffers, and bias
# gradients are summed into their arrays: 47/133/144/165/79/152 and clipped 56/55/45 before.)
STEP_OPS = {
    "mse_relu_sgd_nesterov": 29,
    "bce_probabilities_adam_amsgrad_l1": 92,
    "bce_logits_pos_weight_rmsprop_l1l2": 96,
    "ce_logits_weighted_adamw_batchnorm_dropout_l2": 94,
    "ce_probabilities_layernorm_sgd_metrics_validation": 69,
    "mse_composed_residual_reshape_adam": 61,
}
CLIPPED_STEP_OPS = {"norm 2": 44, "norm inf": 43, "value": 37}  # Dense-Tanh-Dense, MSE, SGD with momentum


def _profile(name: str, epochs: int = 3):
    layers, loss, optimizer_factory, kind, options = _workloads()[name]
    options = dict(options)
    model = bp.Sequential(*layers(), device=DEVICE, seed=0, input_shape=(3,))
    outputs = model.out_features
    x, y = _data(outputs, kind)
    if options.pop("validation", False):
        options["validation_data"] = _data(outputs, kind, samples=10)
    optimizer = optimizer_factory(model.parameters())
    return model, rb.profile_fit(model, x, y, loss, optimizer, epochs=epochs, batch_size=6, seed=0, **options)


@pytest.mark.parametrize("name", list(STEP_OPS))
def test_training_runs_in_context_with_one_host_read_per_epoch(name):
    model, profile = _profile(name)
    assert rb.outside_context(profile.events) == []
    dropouts = sum(isinstance(layer, bp.Dropout) for layer in model.layers)
    for epoch_steps in profile.steps:
        assert len(epoch_steps) == 3  # 4 batches: 3 whole cycles between the first and the last update
        for step in epoch_steps:
            assert step.reads == []
            assert step.copies == ["to_device"] * dropouts  # a dropout mask, drawn on the host by design
    for epoch, (reads, copies) in enumerate(zip(profile.epoch_reads, profile.epoch_copies)):
        assert reads == ["to_numpy"]  # the epoch's losses and metrics, all in one read
        if epoch == 0:  # the 0-d constants given to maximum/minimum are copied once, on first use
            copies = [name for name in copies if name != "asarray of host data"]
        assert copies == ["to_device"] * (1 + 4 * dropouts)  # the permutation, and a mask per batch
    assert profile.final_reads == []  # whether the parameters are finite is part of each epoch's one read


@pytest.mark.parametrize("name", list(STEP_OPS))
def test_streamed_training_checks_each_host_batch_on_the_host(name):
    """fit over a BatchLoader: each batch is copied (inputs and prepared targets), but checked for NaN/inf and
    for the loss's target domain on the host, so a step still reads nothing back from the device."""
    layers, loss, optimizer_factory, kind, _ = _workloads()[name]
    model = bp.Sequential(*layers(), device=DEVICE, seed=0, input_shape=(3,))
    x, y = _data(model.out_features, kind)
    loader = bp.data.BatchLoader(x, y, batch_size=6, seed=0)
    profile = rb.profile_fit(model, loader, None, loss, optimizer_factory(model.parameters()), epochs=2)
    assert rb.outside_context(profile.events) == []
    dropouts = sum(isinstance(layer, bp.Dropout) for layer in model.layers)
    for step in (s for epoch in profile.steps for s in epoch):
        assert step.reads == [] and step.copies == ["to_device"] * (2 + dropouts)
    assert all(reads == ["to_numpy"] for reads in profile.epoch_reads)


@pytest.mark.parametrize("name", list(STEP_OPS))
def test_operations_per_step_are_pinned(name):
    _, profile = _profile(name)
    assert rb.steady_step_counts(profile).total() == STEP_OPS[name]


def _clipped_step(clip):
    model = bp.Sequential(bp.Dense(3, 8), bp.Tanh(), bp.Dense(8, 2), device=DEVICE, seed=0)
    optimizer = bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = bp.losses.MeanSquaredError()
    x, y = _data(2, "regression", samples=6)
    inputs, targets = model.as_input(x), loss.prepare_target(y, model.backend, model._dtype, (6, 2))

    def step():
        loss_and_backward(model, loss, inputs, targets, prepared=True)
        clip(model.parameters())
        optimizer.step()

    return step


CLIPS = {
    "norm 2": lambda params: bp.optim.clip_grad_norm(params, 0.1),
    "norm inf": lambda params: bp.optim.clip_grad_norm(params, 0.1, norm_type=float("inf")),
    "value": lambda params: bp.optim.clip_grad_value(params, 0.01),
}


@pytest.mark.parametrize("name", list(CLIPS))
def test_gradient_clipping_reads_nothing_on_the_host(name):
    steps = rb.profile_steps(_clipped_step(CLIPS[name]), 4)
    for index, step in enumerate(steps):
        assert step.outside == [] and step.reads == []
        assert step.copies == [] or index == 0  # the first step copies its 0-d constants to the device once
    assert rb.steady_step_counts(steps).total() == CLIPPED_STEP_OPS[name]


def test_clip_grad_norm_reads_the_norm_only_when_asked_to_check_it():
    step = _clipped_step(lambda params: bp.optim.clip_grad_norm(params, 0.1, error_if_nonfinite=True))
    for segment in rb.profile_steps(step, 2):
        assert segment.reads == ["bool"] and segment.outside == []


def test_evaluation_prediction_and_checkpoints_run_in_context(tmp_path):
    model, _ = _profile("ce_logits_weighted_adamw_batchnorm_dropout_l2", epochs=1)
    x, y = _data(3, "classes")
    loss = bp.losses.CrossEntropy(weight=[1.0, 2.0, 0.5])
    with rb.RECORDER.recording() as events:
        logs = model.evaluate(x, y, loss, metrics=["accuracy"], batch_size=5)
    assert rb.outside_context(events) == []
    assert [name for kind, name, _ in events if kind == "read"].count("to_numpy") == 1  # 5 batches, one read
    assert set(logs) == {"loss", "accuracy"}
    with rb.RECORDER.recording() as events:
        model.predict(x)
        # no optimiser: a fresh one (0 steps) beside the slots training left would be an inconsistent file, which
        # the loader refuses (tests/test_checkpoint_fuzz.py)
        path = bp.save(model, tmp_path / "model.bpk")
        restored = bp.load(path, device="recording:1")
        checkpoint = bp.load_checkpoint(path, device="recording:1")
        bp.load_into(restored, path)
        restored.to("recording:0").to("recording:1")
    assert rb.outside_context(events) == []
    assert checkpoint.model.device == "recording:1"
    np.testing.assert_array_equal(bp.to_numpy(restored.predict(x)), bp.to_numpy(model.predict(x)))


def test_public_functions_called_on_their_own_run_in_context():
    model = bp.Sequential(bp.Dense(3, 4), bp.Sigmoid(), bp.Dense(4, 1), bp.Sigmoid(), device=DEVICE, seed=0,
                          dtype="float64")
    x, y = _data(1, "binary", samples=5)
    loss = bp.losses.BinaryCrossEntropy()
    with rb.RECORDER.recording() as events:
        inputs = model.as_input(x)
        target = loss.prepare_target(y, model.backend, model._dtype, (5, 1))
        loss.check_values(target, model.backend)
        check_finite(inputs, model.backend)
        hidden, backward = model.layers[0].forward(inputs, training=True)  # a layer called directly
        backward(hidden)
        prediction = model.predict(inputs)
        with model.backend.activate():  # functions of arrays alone run where their caller runs them
            loss(prediction, target)
            bp.metrics.accuracy(prediction, target)
        _, gradients = bp.value_and_grad(model, loss, x, y, penalty=bp.penalties.L1L2(1e-3, 1e-3))
        bp.penalties.L1(1e-2)(model)
        worst = bp.gradcheck(model, loss, x[:2], y[:2])
    assert rb.outside_context(events) == []
    assert worst < 1e-5 and set(gradients) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_the_instrument_sees_what_it_is_meant_to_see():
    """It must fail where the library would fail on a GPU: work outside the context, masked writes, scalars."""
    backend = bp.get_backend(DEVICE)
    array = backend.to_device(np.array([-1.0, np.nan, 2.0]))
    with rb.RECORDER.recording() as events:
        _ = array + 1.0  # device 0 is current, the array lives on device 1
        with backend.activate():
            clipped = backend.xp.clip(array, -0.5, 0.5)  # array-api-compat's generic clip: masked writes
            signs = backend.xp.sign(array)  # a masked NaN write
            backend.xp.maximum(array, 0.0)  # torch's wrapper copies the 0.0 to the device
            float(backend.xp.sum(array))
    assert rb.outside_context(events) == ["__add__"]
    reads = [name for kind, name, _ in events if kind == "read"]
    assert reads.count("boolean mask assignment") == 3 and reads.count("boolean mask index") == 2
    assert reads[-1] == "float"
    copies = [name for kind, name, _ in events if kind == "copy"]
    assert sum("maximum" in name for name in copies) == 1
    np.testing.assert_array_equal(backend.to_numpy(clipped), [-0.5, np.nan, 0.5])
    np.testing.assert_array_equal(backend.to_numpy(signs), [-1.0, np.nan, 1.0])


def test_moving_a_model_leaves_no_spare_gradient_behind():
    model = bp.Sequential(bp.Dense(3, 4), bp.Tanh(), bp.Dense(4, 1), device=DEVICE, seed=0)
    x, y = _data(1, "regression", samples=5)
    loss_and_backward(model, bp.losses.MeanSquaredError(), x, y)
    model.zero_grad()
    assert any(p._spare is not None for p in model.parameters())  # kept for the next backward's matmul
    model.to("recording:0")
    assert all(p._spare is None for p in model.parameters())  # the old device's arrays are not held
    assert all(not p.has_grad for p in model.parameters())


def test_gradcheck_can_run_its_float64_twin_on_the_cpu():
    """The default for a GPU model (`backprop.gradients._on_host` is false there): the device only gives its
    parameters and inputs to the host, once."""
    model = bp.Sequential(bp.Dense(3, 4), bp.Tanh(), bp.Dense(4, 1), device=DEVICE, seed=0)
    x, y = _data(1, "regression", samples=4)
    with rb.RECORDER.recording() as events:
        worst = bp.gradcheck(model, bp.losses.MeanSquaredError(), model.as_input(x), y, device="cpu")
    assert [kind for kind, _, _ in events if kind != "read"] == ["copy"]  # as_input; state_dict only reads
    assert worst < 1e-5


def test_a_backend_that_cannot_write_a_matmul_into_out_keeps_no_spare_gradient():
    model = bp.Sequential(bp.Dense(3, 4), bp.Tanh(), bp.Dense(4, 1), device="array_api_strict", seed=0)
    assert not model.backend.writes_matmul_into_out
    x, y = _data(1, "regression", samples=5)
    loss_and_backward(model, bp.losses.MeanSquaredError(), x, y)
    model.zero_grad()
    assert all(p._spare is None for p in model.parameters())  # nothing held through the next forward pass


def test_torch_cuda_copies_stage_host_data_in_pinned_memory(torch, monkeypatch):
    """The staging logic, run on the CPU: PyTorch without CUDA has no pinned-memory allocator, so ``torch.empty``
    is told to ignore ``pin_memory`` and record that it was asked."""
    import array_api_compat.torch as torch_xp

    from backprop.backends.torch_backend import TorchCudaBackend

    asked, empty = [], torch.empty
    monkeypatch.setattr(torch, "empty", lambda *args, pin_memory=False, **kwargs: asked.append(pin_memory)
                        or empty(*args, **kwargs))
    cpu = torch.device("cpu")
    backend = TorchCudaBackend("torch:cpu", torch_xp, cpu)
    host = np.arange(12.0).reshape(3, 4)[:, ::2]  # strided, float64
    moved = backend.to_device(host, torch.float32)
    assert asked.count(True) == 1 and moved.dtype == torch.float32 and moved.device == cpu
    np.testing.assert_array_equal(moved.numpy(), host.astype(np.float32))
    indices = backend.to_device(np.array([2, 0, 1]))
    assert indices.dtype == torch.int64 and indices.tolist() == [2, 0, 1]


class _DeviceOnlyDLPack:
    """An array that lives on a (pretend) CUDA device and offers nothing but DLPack, as dpnp's arrays do: it
    exports to the host only when asked for a host copy (DLPack 1.0's ``dl_device`` and ``copy``)."""

    def __init__(self, host: np.ndarray) -> None:
        self._host = host

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if dl_device != (1, 0) or not copy:
            raise BufferError("this array lives on the GPU; ask for a copy on the CPU")
        return self._host.copy().__dlpack__(max_version=max_version)


class _OldDLPack:
    """A host array whose exporter predates DLPack 1.0's keyword arguments."""

    def __init__(self, host: np.ndarray) -> None:
        self._host = host

    def __dlpack_device__(self):
        return (1, 0)

    def __dlpack__(self, stream=None):
        return self._host.__dlpack__()


@pytest.mark.parametrize("kind", [_DeviceOnlyDLPack, _OldDLPack])
def test_to_numpy_reads_arrays_that_only_offer_dlpack(kind):
    host = np.arange(6.0).reshape(2, 3)
    if kind is _DeviceOnlyDLPack and np.lib.NumpyVersion(np.__version__) < "2.1.0":
        # before 2.1 NumPy cannot ask a producer for a host copy: a clear error, never an object array
        with pytest.raises(bp.errors.DeviceError, match="NumPy >= 2.1"):
            bp.to_numpy(kind(host))
        return
    copied = bp.to_numpy(kind(host))
    np.testing.assert_array_equal(copied, host)
    assert type(copied) is np.ndarray and copied.dtype == np.float64
