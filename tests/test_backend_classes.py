"""Backends as classes: the base class is the array-API reference, a user subclass plugs in with
`register_backend`, one backends module per process, and the registry feeds the specifier lists."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import array_api_compat.numpy as numpy_xp
import numpy as np
import pytest

import backprop as bp
from backprop.backends import Backend

ROOT = Path(__file__).resolve().parent.parent


class CountingBackend(Backend):
    """A user's backend: the array-API reference on NumPy, counting host-to-device copies."""

    library = "counting"

    def __init__(self) -> None:
        super().__init__("counting", numpy_xp, "cpu", "NumPy through the reference, counting copies")
        self.copies = 0

    def to_device(self, host, dtype=None):
        self.copies += 1
        return super().to_device(host, dtype)


@pytest.fixture
def counting(monkeypatch):
    registry = bp.backends.registry
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_EXAMPLES", dict(registry._EXAMPLES))
    monkeypatch.setattr(registry, "_CACHE", dict(registry._CACHE))
    backend = CountingBackend()
    bp.backends.register_backend("counting", lambda spec, argument: backend, examples=["counting"])
    return backend


def _trained(device):
    model = bp.Sequential(bp.Dense(3, 5), bp.Tanh(), bp.Dense(5, 2), device=device, dtype="float64", seed=4)
    x = np.random.default_rng(0).standard_normal((16, 3))
    y = np.random.default_rng(1).standard_normal((16, 2))
    history = model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        epochs=3, batch_size=4, seed=0, verbose=0)
    return model, history


def test_a_registered_user_subclass_trains_to_numpys_numbers(counting):
    model, history = _trained("counting")
    reference, reference_history = _trained("cpu")
    assert model.backend is counting and counting.copies > 0
    assert "counting" in bp.backends.available() and "counting" in bp.backends.known_specifiers(gpu=False)
    np.testing.assert_allclose(history.history["loss"], reference_history.history["loss"], rtol=1e-12)
    for (name, ours), (_, theirs) in zip(model.named_parameters(), reference.named_parameters()):
        np.testing.assert_allclose(bp.to_numpy(ours.value), bp.to_numpy(theirs.value), rtol=1e-12, err_msg=name)


def test_the_base_class_is_a_complete_reference_backend():
    """The base class alone (generic owns, functional subtract_scaled, matmul without out=) runs a model."""
    fast = bp.get_backend("cpu")
    reference = Backend("cpu", fast.xp, fast.device)
    array = fast.to_device(np.ones((2, 3)))
    assert reference.owns(array) and not reference.owns([1.0]) and not reference.owns(np.float64(1.0).item())
    target = np.arange(6.0).reshape(2, 3)
    result = reference.subtract_scaled(target, 0.5, np.ones((2, 3)))
    assert result is not target and np.array_equal(target, np.arange(6.0).reshape(2, 3))  # nothing written
    np.testing.assert_array_equal(result, np.arange(6.0).reshape(2, 3) - 0.5)
    out = np.zeros((2, 2))
    assert reference.matmul(np.eye(2), np.eye(2), out=out) is not out and not reference.writes_matmul_into_out
    assert fast.matmul(np.eye(2), np.eye(2), out=out) is out and fast.writes_matmul_into_out
    held = np.zeros((2, 3))
    copied = reference.copy(array, into=held)
    assert copied is not held and not held.any() and np.array_equal(copied, array)  # the reference writes nothing
    assert fast.copy(array, into=held) is held and np.array_equal(held, array)


def test_unknown_prefix_lists_every_registered_example(counting):
    with pytest.raises(bp.errors.DeviceError) as excinfo:
        bp.get_backend("tpu:0")
    for spec in bp.backends.known_specifiers():
        assert repr(spec) in str(excinfo.value)
    assert "'counting'" in str(excinfo.value)


@pytest.mark.parametrize("prefix, factory", [("", lambda s, a: None), ("a:b", lambda s, a: None), ("x", 5)])
def test_register_backend_refuses_bad_arguments(prefix, factory):
    before = dict(bp.backends.registry._FACTORIES)
    with pytest.raises(bp.errors.BackpropError):
        bp.backends.register_backend(prefix, factory)
    assert bp.backends.registry._FACTORIES == before


def test_a_factory_that_returns_no_backend_is_refused(monkeypatch):
    monkeypatch.setattr(bp.backends.registry, "_FACTORIES", dict(bp.backends.registry._FACTORIES))
    bp.backends.register_backend("broken", lambda spec, argument: object())
    with pytest.raises(bp.errors.DeviceError, match="not a Backend"):
        bp.get_backend("broken")


def test_backends_pickle_by_specifier(backend):
    value = bp.get_backend(backend)
    assert pickle.loads(pickle.dumps(value)) is value


def test_to_numpy_reads_every_library_through_its_class(backend):
    value = bp.get_backend(backend)
    host = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(bp.to_numpy(value.to_device(host, value.dtype("float32"))), host)


def _run_from_checkout(script: str) -> str:
    """Run ``script`` in a fresh interpreter with the repository root as its ``sys.argv[1]``; return its output."""
    completed = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_import_backends_from_a_checkout_is_the_same_module():
    """With the repository root on sys.path, `import backends` hands back backprop.backends itself."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import backprop.backends as real\n"
        "import backends, backends.base, backends.registry\n"
        "assert backends is real, backends\n"
        "assert backends.base is real.base and backends.Backend is real.Backend\n"
        "assert backends.registry._FACTORIES is real.registry._FACTORIES\n"
        "import backprop as bp\n"
        "model = bp.Sequential(bp.Dense(2, 1), device=backends.get_backend('cpu'))\n"
        "print('same module', model.device)\n"
    )
    assert "same module cpu" in _run_from_checkout(script)


def test_import_backends_first_is_the_same_module_too():
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import backends\n"
        "import backprop.backends as real\n"
        "assert backends is real and backends.get_backend('cpu') is real.get_backend('cpu')\n"
        "print('ok')\n"
    )
    assert _run_from_checkout(script).strip() == "ok"


def test_backend_modules_import_no_array_library():
    """The registry reads every module's declarations at import, so a module must not import its library then."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import backprop\n"
        "print(sorted(name for name in ('torch', 'cupy', 'jax', 'array_api_strict') if name in sys.modules))\n"
    )
    assert _run_from_checkout(script).strip() == "[]"


def test_each_backend_module_declares_its_specifiers():
    for name in bp.backends.registry._MODULES:
        module = importlib.import_module(f"backprop.backends.{name}")
        assert module.PREFIXES and all(":" not in prefix for prefix in module.PREFIXES)
        for spec in (*module.EXAMPLES, *module.GPU_EXAMPLES):
            assert spec.partition(":")[0] in module.PREFIXES


def test_the_readmes_register_backend_example_runs(monkeypatch):
    """The Devices section's example, as written: a user's subclass registered under its own prefix."""
    registry = bp.backends.registry
    for name in ("_FACTORIES", "_EXAMPLES", "_CACHE"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Devices"):readme.index("## Layout")]
    code = section.split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    exec(compile(code, "README.md (Devices)", "exec"), namespace)
    model, counting = namespace["model"], namespace["counting"]
    assert model.backend is counting and counting.copies == 2  # the weight and the bias, drawn on the host
    assert "counting" in bp.backends.available()
    np.testing.assert_array_equal(bp.to_numpy(model.predict(np.ones((1, 3)))),
                                  bp.to_numpy(bp.Sequential(bp.Dense(3, 2), seed=0).predict(np.ones((1, 3)))))
