"""Layers: each ``forward(x, training)`` returns ``(y, backward)``; see ``base.Layer`` for the whole contract."""

from backprop.layers.activations import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from backprop.layers.base import Layer
from backprop.layers.batchnorm import BatchNorm1d, BatchNorm2d
from backprop.layers.conv import Conv2d
from backprop.layers.dense import Dense
from backprop.layers.dropout import Dropout
from backprop.layers.layernorm import LayerNorm
from backprop.layers.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d
from backprop.layers.registry import LAYERS, register_layer
from backprop.layers.reshape import Flatten, Reshape
from backprop.layers.residual import Residual

for _cls in (Dense, Identity, Sigmoid, Tanh, ReLU, LeakyReLU, Softmax, Dropout, BatchNorm1d, LayerNorm, Flatten,
             Reshape, Residual, Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d, BatchNorm2d):
    register_layer(_cls)
del _cls

__all__ = ["Dense", "Identity", "LAYERS", "Layer", "LeakyReLU", "ReLU", "Sigmoid", "Softmax", "Tanh", "register_layer"]
__all__ += ["BatchNorm1d", "Dropout", "Flatten", "LayerNorm", "Reshape", "Residual"]
__all__ += ["AvgPool2d", "BatchNorm2d", "Conv2d", "GlobalAvgPool2d", "MaxPool2d"]
