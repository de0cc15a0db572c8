"""Layers: each ``forward(x, training)`` returns ``(y, backward)``; see ``base.Layer``."""

from backprop.layers.activations import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from backprop.layers.base import Layer
from backprop.layers.batchnorm import BatchNorm1d
from backprop.layers.dense import Dense
from backprop.layers.dropout import Dropout
from backprop.layers.layernorm import LayerNorm

LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Dense, Identity, Sigmoid, Tanh, ReLU, LeakyReLU, Softmax)
}
LAYERS.update({cls.__name__: cls for cls in (Dropout, BatchNorm1d, LayerNorm)})


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Make a layer class known by name to checkpoints (usable as a decorator)."""
    LAYERS[cls.__name__] = cls
    return cls


__all__ = ["Dense", "Identity", "LAYERS", "Layer", "LeakyReLU", "ReLU", "Sigmoid", "Softmax", "Tanh", "register_layer"]
__all__ += ["BatchNorm1d", "Dropout", "LayerNorm"]
