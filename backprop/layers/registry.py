"""The layer registry: layer classes by name, and the one function that rebuilds a layer from its description.

A layer is described as plain data, ``{"type": "Dense", "config": {...}}`` (a *node*); combinators (`Sequential`,
`Residual`) hold their children's nodes in their config, so a whole model is a tree of nodes. Checkpoints only
name classes registered here: nothing is imported or executed on load.
"""

from __future__ import annotations

import json
from typing import Any

from backprop.errors import ArgumentTypeError, ConfigurationError
from backprop.layers.base import Layer

LAYERS: dict[str, type[Layer]] = {}


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Make a layer class known by name to checkpoints (usable as a decorator); returns the class.

    The class must implement ``config()`` (its constructor arguments as JSON data) unless its constructor takes
    none; see the README's "Writing a layer".
    """
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ArgumentTypeError(f"register_layer takes a subclass of bp.Layer, got {cls!r}")
    LAYERS[cls.__name__] = cls
    return cls


def describe(layer: Layer) -> dict:
    """The node ``{"type": class name, "config": layer.config()}``."""
    return {"type": type(layer).__name__, "config": layer.config()}


def layer_from_node(node: Any, where: str = "layer") -> Layer:
    """Rebuild an unbuilt layer from its node; `ConfigurationError` naming ``where`` if that is impossible."""
    if not isinstance(node, dict) or not isinstance(node.get("config", {}), dict):
        raise ConfigurationError(f"{where} is described as {node!r}, not as {{'type': ..., 'config': {{...}}}}")
    kind = node.get("type")
    if kind not in LAYERS:
        raise ConfigurationError(
            f"{where} has unknown type {kind!r}; known: {', '.join(sorted(LAYERS))}. A layer class of your own "
            "must be registered with bp.register_layer before loading"
        )
    try:
        return LAYERS[kind].from_config(node.get("config", {}))
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{where} ({kind}) cannot be rebuilt from {node.get('config')!r}: {error}") from None


def check_configs(model: Layer, registered: bool = False) -> None:
    """Raise `ConfigurationError` unless every layer of ``model``'s tree without children rebuilds from its
    ``config()``: JSON data that ``from_config`` turns back into a layer with the same description (combinators
    are checked through their children). With ``registered``, every class in the tree must also be registered
    under its name (as loading a checkpoint needs)."""
    for path, layer in [("the model", model), *model.named_layers()]:
        name = type(layer).__name__
        if registered and LAYERS.get(name) is not type(layer):
            raise ConfigurationError(
                f"layer {path} ({name}) is not registered, so a checkpoint could not rebuild it: decorate its class "
                "with @bp.register_layer (see the README's 'Writing a layer')"
            )
        if next(layer.children(), None) is not None:
            continue
        node = describe(layer)
        try:
            json.dumps(node)
            rebuilt = describe(type(layer).from_config(node["config"]))
        except (TypeError, ValueError) as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            if rebuilt == node:
                continue
            problem = f"the rebuilt layer describes itself as {rebuilt['config']!r}"
        raise ConfigurationError(
            f"layer {path} ({name}) cannot be rebuilt from its config() {node['config']!r} ({problem}). "
            "Implement config() to return the constructor's arguments as JSON data (numbers, strings, lists, "
            "dicts), so that type(layer)(**layer.config()) rebuilds it, or override the classmethod from_config; "
            "see the README's 'Writing a layer'"
        )
