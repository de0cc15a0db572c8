"""backprop: neural networks trained by explicit backpropagation, written once against the array API standard.

    import backprop as bp
    model = bp.Sequential(bp.Dense(2, 4), bp.Sigmoid(), bp.Dense(4, 1), bp.Sigmoid(), device="cpu", seed=0)
    value, grads = bp.value_and_grad(model, bp.losses.MeanSquaredError(), x, y)
"""

from backprop import (augment, backends, callbacks, data, distributed, errors, init, losses, metrics, optim, penalties,
                      training)
from backprop.backends import get_backend, to_numpy
from backprop.checkpoint import Checkpoint, ModelCheckpoint, export_safetensors, load, load_checkpoint, load_into, save
from backprop.gradients import gradcheck, value_and_grad
from backprop.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, GlobalAvgPool2d,
                             Identity, Layer, LayerNorm, LeakyReLU, MaxPool2d, ReLU, Reshape, Residual, Sigmoid,
                             Softmax, Tanh, register_layer)
from backprop.model import Sequential
from backprop.optim import register_optimizer
from backprop.parameter import Parameter
from backprop.training import History

# bp.callbacks.ModelCheckpoint too: it is defined beside save() in backprop.checkpoint, which imports this module's
# Callback, so the callbacks module cannot import it back; the package links it in once both exist (an attribute
# that type checkers therefore do not see declared in callbacks).
callbacks.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d", "Dense", "Dropout", "Flatten", "Identity", "Layer", "LayerNorm", "LeakyReLU", "Parameter", "ReLU",
    "Reshape", "Residual", "Sequential", "Sigmoid", "Softmax", "Tanh", "register_layer",
    "register_optimizer",
    "AvgPool2d", "BatchNorm2d", "Conv2d", "GlobalAvgPool2d", "MaxPool2d",
    "Checkpoint", "History", "ModelCheckpoint", "export_safetensors", "load", "load_checkpoint", "load_into", "save",
    "augment", "backends", "callbacks", "data", "distributed", "errors", "get_backend", "gradcheck", "init", "losses",
    "metrics", "optim", "penalties",
    "to_numpy", "training", "value_and_grad",
]
