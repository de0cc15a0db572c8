"""Bad input gets a clear error: each case asserts our exception class, the built-in base a caller may catch
instead, and that the message names the problem (with its numbers). Conversions that are accepted (integers,
booleans, lists, float64 into a float32 model) assert the converted values and dtype.
"""

from __future__ import annotations

import importlib
import math
import sys
import types

import numpy as np
import pytest

import backprop as bp
from backprop.errors import (
    BackendUnavailableError,
    BackpropError,
    ConfigurationError,
    DeviceError,
    DTypeError,
    NonFiniteError,
    ShapeError,
    TargetError,
)

losses = bp.losses


def small_model(device: str = "cpu", dtype: str = "float32") -> bp.Sequential:
    """3 inputs -> 2 outputs."""
    return bp.Sequential(bp.Dense(3, 4), bp.ReLU(), bp.Dense(4, 2), device=device, dtype=dtype, seed=0)


def check_error(excinfo: pytest.ExceptionInfo, ours: type, builtin: type, *fragments: str) -> None:
    """The exception is ours and the built-in kind, and its message contains every fragment."""
    error = excinfo.value
    assert isinstance(error, ours) and isinstance(error, BackpropError) and isinstance(error, builtin), type(error)
    message = str(error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# -- shapes --------------------------------------------------------------------------------------------------

def test_input_feature_count_mismatch_names_layer_and_both_shapes(backend):
    model = small_model(backend)
    with pytest.raises(ShapeError) as excinfo:
        model.predict(np.ones((5, 4)))
    check_error(excinfo, ShapeError, ValueError, "layer 0", "Dense(in_features=3", "(n, 3)", "(5, 4)",
                "4 features instead of 3")


@pytest.mark.parametrize(
    "targets, fragments",
    [
        (np.ones((4, 2)), ["(4, 2)", "(5, 2)"]),  # batch size
        (np.ones((5, 3)), ["(5, 3)", "(5, 2)"]),  # width
        (np.ones(5), ["(5,)", "(5, 2)"]),  # a 1-D target fits only a single output
    ],
    ids=["batch", "width", "1-D for 2 outputs"],
)
def test_targets_that_do_not_fit_the_output(backend, targets, fragments):
    with pytest.raises(ShapeError) as excinfo:
        bp.value_and_grad(small_model(backend), losses.MeanSquaredError(), np.ones((5, 3)), targets)
    check_error(excinfo, ShapeError, ValueError, "targets have shape", *fragments)


def test_one_dimensional_target_is_reshaped_for_a_single_output(backend):
    model = bp.Sequential(bp.Dense(3, 1), device=backend, seed=0)
    flat = bp.value_and_grad(model, losses.MeanSquaredError(), np.ones((4, 3)), np.arange(4.0))
    column = bp.value_and_grad(model, losses.MeanSquaredError(), np.ones((4, 3)), np.arange(4.0).reshape(4, 1))
    assert flat[0] == column[0]


def test_one_dimensional_input(backend):
    with pytest.raises(ShapeError) as excinfo:
        small_model(backend).predict(np.ones(3))
    check_error(excinfo, ShapeError, ValueError, "2-D", "(3,)", "reshape(1, -1)")


def test_three_dimensional_input():
    with pytest.raises(ShapeError) as excinfo:
        small_model().predict(np.ones((2, 3, 1)))
    check_error(excinfo, ShapeError, ValueError, "2-D", "(2, 3, 1)")


def test_empty_batch(backend):
    with pytest.raises(ShapeError) as excinfo:
        small_model(backend).predict(np.ones((0, 3)))
    check_error(excinfo, ShapeError, ValueError, "empty batch", "(0, 3)")


def test_ragged_nested_lists():
    with pytest.raises(ShapeError) as excinfo:
        small_model().predict([[1.0, 2.0, 3.0], [1.0, 2.0]])
    check_error(excinfo, ShapeError, ValueError, "rectangular")


@pytest.mark.parametrize(
    "targets, fragments",
    [
        ([0, 2, 1], ["[0, 1]", "2 outputs", "from 0 to 2"]),
        ([0, -1, 1], ["[0, 1]", "from -1 to 1"]),
        ([0.0, 7.0, 1.0], ["[0, 1]", "from 0 to 7"]),
        ([0.0, math.inf, 1.0], ["[0, 1]", "to inf"]),
        ([0.0, 0.5, 1.0], ["whole numbers"]),
    ],
    ids=["too large", "negative", "float too large", "infinite", "non-integral"],
)
def test_cross_entropy_class_indices(backend, targets, fragments):
    model = small_model(backend)
    # loss_and_backward validates targets without the finiteness check of value_and_grad, so an infinite index
    # must still give a clear error (not an overflow in an integer cast)
    with pytest.raises(TargetError) as excinfo:
        bp.gradients.loss_and_backward(model, losses.CrossEntropy(), np.ones((3, 3)), targets)
    check_error(excinfo, TargetError, ValueError, *fragments)


def test_cross_entropy_target_count_and_one_hot_width(backend):
    model = small_model(backend)
    with pytest.raises(ShapeError) as excinfo:
        bp.value_and_grad(model, losses.CrossEntropy(), np.ones((5, 3)), [0, 1, 1])
    check_error(excinfo, ShapeError, ValueError, "3 class-index targets for 5 samples")
    with pytest.raises(ShapeError) as excinfo:
        bp.value_and_grad(model, losses.CrossEntropy(), np.ones((5, 3)), np.eye(3)[[0, 1, 2, 0, 1]])
    check_error(excinfo, ShapeError, ValueError, "(5, 3)", "(5,)", "(5, 2)")


@pytest.mark.parametrize("bad", [1.5, -0.25], ids=["above 1", "below 0"])
@pytest.mark.parametrize("from_logits", [False, True], ids=["probabilities", "logits"])
def test_binary_cross_entropy_targets_outside_unit_interval(backend, bad, from_logits):
    targets = np.array([[0.0, 1.0], [bad, 0.5]])
    with pytest.raises(TargetError) as excinfo:
        bp.value_and_grad(small_model(backend), losses.BinaryCrossEntropy(from_logits), np.ones((2, 3)), targets)
    check_error(excinfo, TargetError, ValueError, "[0, 1]", f"{min(bad, 0.0):g} to {max(bad, 1.0):g}")


# -- values --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_inputs_and_targets(backend, bad):
    model = small_model(backend)
    x = np.ones((4, 3))
    y = np.zeros((4, 2))
    x_bad = x.copy()
    x_bad[2, 1] = bad
    with pytest.raises(NonFiniteError) as excinfo:
        bp.value_and_grad(model, losses.MeanSquaredError(), x_bad, y)
    check_error(excinfo, NonFiniteError, ValueError, "input", "1 NaN or infinite", "(2, 1)")
    y_bad = y.copy()
    y_bad[3, 0] = y_bad[1, 1] = bad
    with pytest.raises(NonFiniteError) as excinfo:
        bp.value_and_grad(model, losses.MeanSquaredError(), x, y_bad)
    check_error(excinfo, NonFiniteError, ValueError, "targets", "2 NaN or infinite", "(1, 1)")


@pytest.mark.parametrize("lr", [-0.1, 0, 0.0, math.nan, math.inf, -math.inf, True, "0.1", None],
                         ids=["negative", "int zero", "zero", "nan", "inf", "-inf", "bool", "string", "None"])
def test_learning_rate_must_be_finite_and_positive(lr):
    with pytest.raises(ConfigurationError) as excinfo:
        bp.optim.SGD(small_model().parameters(), lr=lr)
    check_error(excinfo, ConfigurationError, ValueError, "learning rate", repr(lr))


@pytest.mark.parametrize("momentum", [-0.5, 1.0])
def test_momentum_outside_unit_interval(momentum):
    with pytest.raises(ConfigurationError) as excinfo:
        bp.optim.SGD(small_model().parameters(), lr=0.1, momentum=momentum)
    check_error(excinfo, ConfigurationError, ValueError, "momentum", "[0, 1)", repr(momentum))


def test_unknown_loss_reduction():
    with pytest.raises(ConfigurationError) as excinfo:
        losses.MeanSquaredError(reduction="average")
    check_error(excinfo, ConfigurationError, ValueError, "'mean' or 'sum'", "'average'")


# -- types ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "data",
    [np.array([[1, -2, 3]], dtype=np.int32), np.array([[1, 0, 1]], dtype=np.uint8),
     np.array([[True, False, True]]), [[1, -2, 3]], ((1.5, -2.0, 3.0),), [(True, False, True)]],
    ids=["int32", "uint8", "bool", "list of int", "tuple of float", "list of bool tuple"],
)
def test_integer_boolean_list_and_tuple_inputs_become_the_model_dtype(backend, data):
    model = small_model(backend)
    converted = model.as_input(data)
    expected = np.asarray(data).astype(np.float32)  # rule: the model's float dtype, values kept (True -> 1.0)
    assert converted.dtype == model.backend.dtype("float32")
    assert model.backend.owns(converted)
    np.testing.assert_array_equal(bp.to_numpy(converted), expected)
    np.testing.assert_array_equal(bp.to_numpy(model.predict(data)), bp.to_numpy(model.predict(expected)))


@pytest.mark.parametrize("native", [False, True], ids=["host", "same backend"])
def test_float64_into_a_float32_model_is_cast_once(backend, native):
    model = small_model(backend, "float32")
    host = np.array([[0.1, 1e-30, 1e30]])  # 0.1 is rounded to the nearest float32; all three fit float32's range
    data = model.backend.to_device(host, model.backend.dtype("float64")) if native and model.backend.supports(
        "float64") else host
    converted = model.as_input(data)
    assert converted.dtype == model.backend.dtype("float32")
    np.testing.assert_array_equal(bp.to_numpy(converted), host.astype(np.float32))


@pytest.mark.parametrize(
    "data, fragments",
    [
        ([["a", "b", "c"]], ["dtype <U1", "real numbers"]),
        (np.ones((1, 3), dtype=complex), ["complex128", "real numbers"]),
        (np.array([[1, None, 2]], dtype=object), ["object", "real numbers"]),
        ("1, 2, 3", ["str"]),
        ({"x": 1}, ["dict"]),
    ],
    ids=["strings", "complex", "object", "str", "dict"],
)
def test_non_numeric_inputs_are_refused(data, fragments):
    with pytest.raises(DTypeError) as excinfo:
        small_model().predict(data)
    check_error(excinfo, DTypeError, TypeError, "input", *fragments)


def test_complex_array_on_the_models_own_backend_is_refused(torch):
    model = small_model("torch:cpu")
    with pytest.raises(DTypeError) as excinfo:
        model.predict(torch.ones((1, 3), dtype=torch.complex64))
    check_error(excinfo, DTypeError, TypeError, "complex64", "real numbers")


# -- devices -------------------------------------------------------------------------------------------------

def _strict_array(device: str):
    return bp.get_backend(device).to_device(np.ones((2, 3)), None)


@pytest.mark.parametrize(
    "model_device, data_device, fragments",
    [
        ("array_api_strict", "array_api_strict:device1", ["device1", "'array_api_strict'"]),
        ("array_api_strict:device1", "array_api_strict", ["CPU_DEVICE", "'array_api_strict:device1'"]),
        ("cpu", "array_api_strict", ["array_api_strict array", "'cpu'"]),
    ],
    ids=["device1 to CPU_DEVICE", "CPU_DEVICE to device1", "strict to numpy"],
)
def test_array_on_another_device(model_device, data_device, fragments):
    model = small_model(model_device)
    with pytest.raises(DeviceError) as excinfo:
        model.predict(_strict_array(data_device))
    check_error(excinfo, DeviceError, ValueError, *fragments, "bp.to_numpy", "model.to(")
    with pytest.raises(DeviceError) as excinfo:  # targets go through the same door
        bp.value_and_grad(model, losses.MeanSquaredError(), np.ones((2, 3)), _strict_array(data_device)[:, :2])
    check_error(excinfo, DeviceError, ValueError, "targets", *fragments)


def test_torch_tensor_to_a_numpy_model(torch):
    with pytest.raises(DeviceError) as excinfo:
        small_model("cpu").predict(torch.ones((2, 3)))
    check_error(excinfo, DeviceError, ValueError, "torch array", "'cpu'", "model.to(")


def test_array_api_strict_array_to_a_torch_model(torch):
    with pytest.raises(DeviceError) as excinfo:
        small_model("torch:cpu").predict(_strict_array("array_api_strict"))
    check_error(excinfo, DeviceError, ValueError, "array_api_strict array", "'torch:cpu'")


def test_cupy_array_to_a_cpu_model():
    """A stand-in for a CuPy array (no GPU here): an array-API object of module ``cupy`` on a CUDA device."""
    fake_cupy_array = type("ndarray", (), {"__module__": "cupy._core.core", "device": "<CUDA Device 0>",
                                           "__array_namespace__": lambda self, api_version=None: None})()
    with pytest.raises(DeviceError) as excinfo:
        small_model("cpu").predict(fake_cupy_array)
    check_error(excinfo, DeviceError, ValueError, "cupy array on device <CUDA Device 0>", "'cpu'", "bp.to_numpy")


def _fake_cupy_array():
    return type("ndarray", (), {"__module__": "cupy._core.core", "device": "<CUDA Device 0>",
                                "__array_namespace__": lambda self, api_version=None: None})()


@pytest.mark.parametrize("give", [
    lambda: bp.losses.CrossEntropy(weight=_fake_cupy_array()),
    lambda: bp.losses.BinaryCrossEntropy(pos_weight=_fake_cupy_array()),
    lambda: bp.gradcheck(small_model("cpu"), bp.losses.MeanSquaredError(), _fake_cupy_array(), np.zeros((2, 2))),
    lambda: bp.gradcheck(small_model("cpu"), bp.losses.MeanSquaredError(), np.zeros((2, 3)), _fake_cupy_array()),
], ids=["class weights", "pos_weight", "gradcheck x", "gradcheck y"])
def test_device_arrays_where_host_data_is_expected(give):
    """numpy.asarray would raise CuPy's own TypeError (or make an object array); we name the fix."""
    with pytest.raises(DeviceError) as excinfo:
        give()
    check_error(excinfo, DeviceError, ValueError, "cupy array on device <CUDA Device 0>", "bp.to_numpy(")


def _fake_cupy(monkeypatch, get_device_count) -> None:
    """Install a stand-in ``cupy`` whose ``cuda.runtime.getDeviceCount`` is ``get_device_count``, with an empty
    backend cache (where a GPU exists, the conftest has already cached the real ``"cuda"`` backend)."""
    monkeypatch.setattr(bp.backends.registry, "_CACHE", {})
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", types.ModuleType("array_api_compat.cupy"))


def test_cuda_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail even where CuPy is installed
    monkeypatch.setattr(bp.backends.registry, "_CACHE", {})  # and the conftest's cached "cuda" backend is not used
    with pytest.raises(BackendUnavailableError) as excinfo:
        bp.get_backend("cuda")
    check_error(excinfo, DeviceError, ImportError, "needs CuPy", "backprop-arrays[cuda12]")
    assert isinstance(excinfo.value, ValueError)


def test_cuda_with_cupy_but_no_gpu(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    _fake_cupy(monkeypatch, no_device)
    with pytest.raises(BackendUnavailableError) as excinfo:
        bp.get_backend("cuda")
    check_error(excinfo, DeviceError, ImportError, "no CUDA GPU", "cudaErrorNoDevice", "device='cpu'")
    _fake_cupy(monkeypatch, lambda: 0)
    with pytest.raises(BackendUnavailableError) as excinfo:
        bp.get_backend("cuda:0")
    check_error(excinfo, DeviceError, ImportError, "no CUDA GPU", "device='cpu'")


def test_gpu_index_past_the_last_gpu(monkeypatch):
    _fake_cupy(monkeypatch, lambda: 1)
    with pytest.raises(DeviceError) as excinfo:
        bp.get_backend("cuda:7")
    check_error(excinfo, DeviceError, ValueError, "GPU 7", "1 GPU(s)", "'cuda:0' .. 'cuda:0'")
    assert not isinstance(excinfo.value, BackendUnavailableError)
    with pytest.raises(DeviceError) as excinfo:
        bp.get_backend("cuda:first")
    check_error(excinfo, DeviceError, ValueError, "bad GPU index", "'cuda:first'")


@pytest.mark.parametrize("spec", ["cuda:x", "cuda:-1", "cuda:1.5", "cupy: 2"])
def test_a_bad_gpu_index_is_named_before_the_driver_is_asked(monkeypatch, spec):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    _fake_cupy(monkeypatch, no_device)
    with pytest.raises(DeviceError) as excinfo:
        bp.get_backend(spec)
    check_error(excinfo, DeviceError, ValueError, "bad GPU index", repr(spec), "'cuda:N'")
    assert not isinstance(excinfo.value, BackendUnavailableError)


def _fake_working_cupy(monkeypatch, elementwise=None):
    """A stand-in ``cupy`` over NumPy with one GPU; ``elementwise`` replaces its first elementwise kernel."""
    _fake_cupy(monkeypatch, lambda: 1)
    fake = sys.modules["cupy"]

    class FakeArray(np.ndarray):
        def __mul__(self, other):
            if elementwise is not None:
                elementwise()
            return np.ndarray.__mul__(self, other)

    fake.__version__ = "14.2.0"
    fake.float32 = np.float32
    fake.ndarray = FakeArray
    fake.asarray = lambda data, dtype=None: np.asarray(data, dtype=dtype).view(FakeArray)
    fake.matmul = np.matmul
    fake.asnumpy = np.asarray
    fake.cuda.Device = lambda index: _FakeDevice("cpu")
    fake.cuda.runtime.getDeviceProperties = lambda index: {"name": b"Fake GPU"}
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", importlib.import_module("array_api_compat.numpy"))


class _FakeDevice(str):
    """A device that is also a context manager (as ``cupy.cuda.Device`` is) and reads as NumPy's "cpu"."""

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        return None


def test_the_cupy_backend_runs_a_kernel_and_a_matmul_when_it_is_made(monkeypatch):
    _fake_working_cupy(monkeypatch)
    backend = bp.get_backend("cuda:0")
    assert backend.spec == "cuda:0" and "Fake GPU" in backend.device_name and backend.writes_matmul_into_out

    def no_nvrtc():
        raise RuntimeError("CompileException: libnvrtc.so.12: cannot open shared object file")

    _fake_working_cupy(monkeypatch, elementwise=no_nvrtc)
    with pytest.raises(BackendUnavailableError) as excinfo:
        bp.get_backend("cuda")
    check_error(excinfo, DeviceError, ImportError, "cannot run on GPU 0", "libnvrtc.so.12",
                "backprop-arrays[cuda12]", "[ctk]", "device='cpu'")


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("tpu", ["unknown device 'tpu'", "'cpu'", "'cuda:N'", "'array_api_strict:device1'", "'torch:cpu'"]),
        ("gpu:0", ["unknown device 'gpu:0'", "'cuda'"]),
        ("cpu:1", ["only the CPU", "'cpu:1'"]),
        ("array_api_strict:device9", ["no device 'device9'", "CPU_DEVICE", "device1", "no_float64"]),
    ],
)
def test_unknown_device_specifier_lists_the_known_ones(spec, fragments):
    with pytest.raises(DeviceError) as excinfo:
        bp.get_backend(spec)
    check_error(excinfo, DeviceError, ValueError, *fragments)


def test_device_given_as_a_non_string():
    with pytest.raises(TypeError, match="device must be a string.*int"):
        bp.get_backend(0)


def test_float64_model_on_a_device_without_float64():
    with pytest.raises(DeviceError) as excinfo:
        small_model("array_api_strict:no_float64", "float64")
    check_error(excinfo, DeviceError, ValueError, "'array_api_strict:no_float64'", "float64", "dtype='float32'")
    model = small_model("cpu", "float64")
    before = model.state_dict()
    with pytest.raises(DeviceError) as excinfo:
        model.to("array_api_strict:no_float64")
    check_error(excinfo, DeviceError, ValueError, "float64")
    assert model.device == "cpu"  # nothing moved
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


# -- building a model ----------------------------------------------------------------------------------------

def test_layer_size_mismatch_names_the_layer():
    with pytest.raises(ShapeError) as excinfo:
        bp.Sequential(bp.Dense(3, 4), bp.ReLU(), bp.Dense(5, 2))
    check_error(excinfo, ShapeError, ValueError, "layer 2", "Dense(in_features=5", "expects 5", "produces 4")


def test_sequential_construction_errors():
    with pytest.raises(ConfigurationError) as excinfo:
        bp.Sequential()
    check_error(excinfo, ConfigurationError, ValueError, "at least one layer")
    shared = bp.Dense(3, 3)
    with pytest.raises(ConfigurationError) as excinfo:
        bp.Sequential(shared, bp.ReLU(), shared)
    check_error(excinfo, ConfigurationError, ValueError, "same layer object appears twice")
    with pytest.raises(TypeError, match="argument 1 of Sequential is function, not a layer"):
        bp.Sequential(bp.Dense(3, 3), lambda x: x)
    with pytest.raises(DTypeError) as excinfo:
        bp.Sequential(bp.Dense(3, 3), dtype="float16")
    check_error(excinfo, DTypeError, TypeError, "'float32' or 'float64'", "'float16'")


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_dense_sizes_must_be_positive_integers(size):
    with pytest.raises(ConfigurationError) as excinfo:
        bp.Dense(size, 3)
    check_error(excinfo, ConfigurationError, ValueError, "in_features", repr(size))
