"""Every deliberate ``raise`` in ``backprop/`` and ``backends/`` raises one of ``backprop.errors``' classes, each a
`BackpropError` that also derives from the built-in exception a caller would catch.

The source is scanned with ``ast``: a ``raise`` naming a built-in exception class (``raise ValueError(...)``,
``raise TypeError``, ``raise builtins.KeyError(...)``) fails the test. Allowed, by convention:

- ``NotImplementedError`` as the body of a method a subclass must implement (after an optional docstring), which
  is Python's own signal for an abstract hook, not an error about the caller's input;
- re-raising: a bare ``raise``, or ``raise name`` / ``raise function(...)`` that passes on an exception caught or
  rebuilt elsewhere (``distributed`` re-raises another rank's error as its own class).
"""

from __future__ import annotations

import ast
import builtins
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop import errors

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(path for folder in ("backprop", "backends") for path in (ROOT / folder).rglob("*.py")
                 if (ROOT / "backprop" / "backends") not in path.parents)  # backprop/backends links to backends/
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


def _raised_builtin(node: ast.Raise) -> str | None:
    """The built-in exception class a ``raise`` names, or None (ours, a re-raise, a rebuilt exception)."""
    target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    if isinstance(target, ast.Name) and target.id in BUILTIN_EXCEPTIONS:
        return target.id
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "builtins":
        return target.attr
    return None


def _is_abstract_hook(function: ast.AST, node: ast.Raise) -> bool:
    """``node`` is the whole body (after a docstring) of a method defined directly in a class."""
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    body = function.body[1:] if ast.get_docstring(function) is not None else function.body
    return body == [node]


def bare_raises(source: str, filename: str) -> list[str]:
    """``file:line: statement`` for each ``raise`` of a built-in exception class the conventions above do not allow."""
    tree = ast.parse(source, filename)
    methods = {id(item): item for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) for item in cls.body}
    found = []
    for function in ast.walk(tree):
        for child in ast.iter_child_nodes(function):
            if not isinstance(child, ast.Raise) or child.exc is None:
                continue
            name = _raised_builtin(child)
            if name is None or (name == "NotImplementedError" and id(function) in methods
                                and _is_abstract_hook(function, child)):
                continue
            found.append(f"{filename}:{child.lineno}: {ast.unparse(child)}")
    return found


def test_the_library_raises_no_bare_built_in_exception():
    assert len(SOURCES) > 40 and ROOT / "backends" / "base.py" in SOURCES and ROOT / "backprop" / "model.py" in SOURCES
    found = [line for path in SOURCES for line in bare_raises(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "raise backprop.errors' classes instead:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("def f(x):\n    raise ValueError('bad')\n", ["m.py:2: raise ValueError('bad')"]),
    ("def f():\n    raise TypeError\n", ["m.py:2: raise TypeError"]),
    ("import builtins\ndef f():\n    raise builtins.KeyError('k')\n", ["m.py:3: raise builtins.KeyError('k')"]),
    ("def f():\n    try:\n        g()\n    except ImportError:\n        raise RuntimeError('x') from None\n",
     ["m.py:5: raise RuntimeError('x') from None"]),
    ("def f():\n    raise NotImplementedError\n", ["m.py:2: raise NotImplementedError"]),  # not a method
    ("class A:\n    def f(self):\n        x = 1\n        raise NotImplementedError\n",
     ["m.py:4: raise NotImplementedError"]),  # not the whole body
    ("class A:\n    def f(self):\n        '''Doc.'''\n        raise NotImplementedError('f')\n", []),
    ("def f():\n    try:\n        g()\n    except ValueError as error:\n        raise error\n", []),
    ("def f():\n    try:\n        g()\n    except ValueError:\n        raise\n", []),
    ("from backprop.errors import ShapeError\ndef f():\n    raise ShapeError('s')\n", []),
    ("def f():\n    raise rebuild('ValueError', 'from rank 1')\n", []),
])
def test_the_scan_finds_bare_raises_and_allows_the_conventions(source, expected):
    assert bare_raises(source, "m.py") == expected


def test_every_library_error_also_derives_from_a_built_in_exception():
    classes = [cls for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.BackpropError) and cls is not errors.BackpropError]
    assert len(classes) >= 14
    for cls in classes:
        built_in = [base for base in inspect.getmro(cls)
                    if base.__module__ == "builtins" and base not in (Exception, BaseException, object)]
        assert built_in, f"{cls.__name__} derives from no built-in exception a caller could catch"
    assert issubclass(errors.UnsetHyperparameterError, AttributeError)
    assert issubclass(errors.MissingDependencyError, ImportError)


def _dropout():
    model = bp.Sequential(bp.Dense(2, 3), bp.Dropout(0.5), dtype="float64", seed=0)
    model.build((2,))
    return model, model.layers[1]


def _shard_mismatch():
    model, dropout = _dropout()
    with dropout.shard(0, 2, 4):
        dropout.forward(model.backend.to_device(np.ones((3, 3))), training=True)


def _plot_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # import matplotlib.pyplot now raises ImportError
    history = bp.History()
    history.history["loss"] = [1.0]
    history.plot()


@pytest.mark.parametrize("call, ours, built_in, message", [
    (lambda mp: bp.register_layer(int), errors.ArgumentTypeError, TypeError,
     "register_layer takes a subclass of bp.Layer, got <class 'int'>"),
    (lambda mp: bp.Residual(3), errors.ArgumentTypeError, TypeError,
     "Residual wraps a layer (e.g. a bp.Sequential block), got int"),
    (lambda mp: _dropout()[1].shard(3, 5, 4).__enter__(), errors.ConfigurationError, ValueError,
     "Dropout shard rows [3, 5) do not lie in a batch of 4 rows"),
    (lambda mp: _shard_mismatch(), errors.ShapeError, ValueError,
     "Dropout was told it sees rows [0, 2) of the batch, but its input has 3 rows"),
    (_plot_without_matplotlib, errors.MissingDependencyError, ImportError,
     "History.plot needs matplotlib: pip install matplotlib"),
    (lambda mp: bp.distributed.Communicator().allreduce(np.zeros(2), op="mean"),
     errors.ConfigurationError, ValueError, "allreduce op must be one of 'sum', 'min', 'max', got 'mean'"),
])
def test_the_former_bare_raises_raise_ours_and_the_same_built_in(call, ours, built_in, message, monkeypatch):
    with pytest.raises(ours) as excinfo:
        call(monkeypatch)
    assert isinstance(excinfo.value, built_in) and str(excinfo.value) == message


def test_initial_epoch_is_checked_by_the_shared_integer_helper():
    model = bp.Sequential(bp.Dense(2, 1), dtype="float64", seed=0)
    x, y = np.ones((4, 2)), np.ones((4, 1))
    with pytest.raises(errors.ConfigurationError) as excinfo:
        model.fit(x, y, bp.losses.MeanSquaredError(), bp.optim.SGD(model.parameters(), lr=0.1), epochs=3,
                  initial_epoch=3, verbose=0)
    assert str(excinfo.value) == ("initial_epoch must be an integer in [0, 2] (below epochs=3, which is the final "
                                  "epoch when resuming), got 3")
