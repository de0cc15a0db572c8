"""backprop: neural networks trained by explicit backpropagation, written once against the array API standard.

    import backprop as bp
    model = bp.Sequential(bp.Dense(2, 4), bp.Sigmoid(), bp.Dense(4, 1), bp.Sigmoid(), device="cpu", seed=0)
    value, grads = bp.value_and_grad(model, bp.losses.MeanSquaredError(), x, y)
"""

from backprop import backends, errors, init, losses, optim
from backprop.backends import get_backend, to_numpy
from backprop.gradients import gradcheck, value_and_grad
from backprop.layers import Dense, Identity, Layer, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from backprop.model import Sequential
from backprop.parameter import Parameter
from backprop import callbacks, metrics, training
from backprop.training import History

__version__ = "0.1.0"

__all__ = [
    "Dense", "Identity", "Layer", "LeakyReLU", "Parameter", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
    "backends", "errors", "get_backend", "gradcheck", "init", "losses", "optim", "to_numpy", "value_and_grad",
]
__all__ += ["History", "callbacks", "metrics", "training"]
