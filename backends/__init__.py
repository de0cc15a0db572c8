"""Backends: parse a device specifier and hand back the `Backend` that runs the core there.

``get_backend("cpu")``, ``get_backend("cuda:1")``, ``get_backend("array_api_strict:device1")``,
``get_backend("torch:cpu")``, ``get_backend("jax:cpu")``. A specifier is ``"prefix"`` or ``"prefix:argument"``;
``register_backend`` adds a prefix (see `backprop.backends.registry` for an example). Backends are cached per
canonical specifier, so two models on ``"cuda"`` share one value, and they pickle and deep-copy by specifier.

This folder is the package ``backprop.backends``. Imported as a top-level ``backends`` (a source checkout's root
on ``sys.path``), it hands back that same module, so a process never holds two registries or two `Backend`
classes.
"""

from __future__ import annotations

import importlib
import sys

if __name__ != "backprop.backends":
    # The import statement running this file returns sys.modules[__name__] once the file has run
    # (importlib's _load_unlocked re-reads it), so `import backends` gives backprop.backends itself; its
    # submodules are aliased too, so `import backends.base` finds the same objects.
    _package = importlib.import_module("backprop.backends")
    for _name, _module in list(sys.modules.items()):
        if _name == "backprop.backends" or _name.startswith("backprop.backends."):
            sys.modules[__name__ + _name[len("backprop.backends"):]] = _module
else:
    from backprop.backends.base import Backend
    from backprop.backends.registry import available, get_backend, known_specifiers, register_backend, to_numpy

    __all__ = ["Backend", "available", "get_backend", "known_specifiers", "register_backend", "to_numpy"]
