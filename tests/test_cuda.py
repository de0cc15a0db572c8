"""GPU tests (marker ``cuda``): they run wherever CuPy or PyTorch sees a CUDA GPU and skip with the reason elsewhere.

What they check is what `tests/test_device_discipline.py` checks on its CPU stand-in, against the real
libraries: a model on the last GPU while GPU 0 is current runs without peer access; a training epoch never
waits for the device (CuPy's ``cupyx.allow_synchronize(False)``, PyTorch's ``set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import backprop as bp
from backprop.gradients import loss_and_backward

pytestmark = pytest.mark.cuda


def _available(spec: str) -> bp.backends.Backend:
    try:
        return bp.get_backend(spec)
    except bp.errors.BackendUnavailableError as error:
        pytest.skip(f"{spec} unavailable: {error}")


def _data(samples: int = 64, features: int = 5):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(samples, features))
    return x, (x[:, :1] + x[:, 1:2] > 0).astype(float)


def _model(device: str) -> bp.Sequential:
    return bp.Sequential(bp.Dense(5, 16), bp.BatchNorm1d(16), bp.ReLU(), bp.Dropout(0.1, seed=2), bp.Dense(16, 1),
                         bp.Sigmoid(), device=device, seed=0)


def _epoch(model, optimizer, inputs, targets, loss, batch_size=16):
    """One epoch of steps with every kind of clipping and a penalty; returns the losses as device arrays."""
    penalty = bp.penalties.L1L2(1e-4, 1e-4)
    values = []
    with model.backend.activate():
        for start in range(0, inputs.shape[0], batch_size):
            values.append(loss_and_backward(model, loss, inputs[start:start + batch_size, ...],
                                            targets[start:start + batch_size, ...], penalty=penalty, prepared=True))
            bp.optim.clip_grad_norm(model.parameters(), 1.0)
            bp.optim.clip_grad_value(model.parameters(), 0.5)
            optimizer.step()
    return values


def _prepared(model, loss):
    x, y = _data()
    inputs = model.as_input(x)
    return inputs, loss.prepare_target(y, model.backend, model._dtype, (x.shape[0], 1))


def test_a_model_on_the_last_gpu_while_gpu_0_is_current(tmp_path):
    _available("cuda")
    import cupy

    last = cupy.cuda.runtime.getDeviceCount() - 1
    device = f"cuda:{last}"
    x, y = _data()
    loss = bp.losses.BinaryCrossEntropy()
    with cupy.cuda.Device(0), warnings.catch_warnings():
        # _check_peer_access (cupy/_core/_kernel.pyx) warns with a PerformanceWarning when it turns peer access on
        warnings.simplefilter("error", cupy._util.PerformanceWarning)
        model = _model(device)
        optimizer = bp.optim.Adam(model.parameters(), lr=0.01)
        history = model.fit(x, y, loss, optimizer, epochs=3, batch_size=16, seed=0, verbose=0,
                            validation_data=(x[:10], y[:10]), metrics=["accuracy"], penalty=bp.penalties.L1(1e-4))
        logs = model.evaluate(x, y, loss, metrics=["accuracy"])
        hidden, backward = model.layers[0].forward(model.as_input(x), training=True)  # a layer on its own
        backward(hidden)
        restored = bp.load(bp.save(model, tmp_path / "m.bpk", optimizer=optimizer), device=device)
        value, _ = bp.value_and_grad(model, loss, x, y)
        bp.gradcheck(model, loss, x[:4], y[:4])
        assert cupy.cuda.runtime.getDevice() == 0  # nothing changed the caller's current device
    assert all(p.value.device.id == last and p.grad.device.id == last for p in model.parameters())
    assert np.isfinite(history.history["loss"]).all() and 0.0 <= logs["accuracy"] <= 1.0 and np.isfinite(value)
    np.testing.assert_array_equal(bp.to_numpy(restored.predict(x)), bp.to_numpy(model.predict(x)))


def test_a_cupy_training_epoch_never_synchronizes():
    backend = _available("cuda")
    import cupy
    import cupyx

    model = _model(backend.spec)
    loss = bp.losses.BinaryCrossEntropy()
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    inputs, targets = _prepared(model, loss)
    _epoch(model, optimizer, inputs, targets, loss)  # warm-up: optimiser slots, constants, compiled kernels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # allow_synchronize is deprecated, and still works
        warnings.simplefilter("ignore", UserWarning)
        # allow_synchronize(False) raises DeviceSynchronized from ndarray.get() and Device.synchronize()
        # (syncdetect._declare_synchronize in cupy/_core/core.pyx and cupy/cuda/device.pyx, CuPy 14.2), which is
        # where float(), bool(), .item() and boolean-mask indexing end up.
        with cupyx.allow_synchronize(False):
            values = _epoch(model, optimizer, inputs, targets, loss)
    with backend.activate():
        assert np.isfinite(bp.to_numpy(cupy.stack(values))).all()


def test_a_torch_cuda_training_epoch_never_synchronizes(torch):
    backend = _available("torch:cuda")
    model = _model(backend.spec)
    loss = bp.losses.BinaryCrossEntropy()
    optimizer = bp.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    inputs, targets = _prepared(model, loss)
    _epoch(model, optimizer, inputs, targets, loss)  # warm-up
    torch.cuda.set_sync_debug_mode("error")  # any synchronising CUDA call raises (torch.cuda docs)
    try:
        values = _epoch(model, optimizer, inputs, targets, loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert np.isfinite(bp.to_numpy(torch.stack(values))).all()


def test_the_cupy_backend_self_test_passes_on_a_working_gpu():
    backend = _available("cuda")
    with backend.activate():
        product = backend.matmul(backend.to_device(np.eye(3)), backend.to_device(np.arange(9.0).reshape(3, 3)))
    np.testing.assert_array_equal(backend.to_numpy(product), np.arange(9.0).reshape(3, 3))
