"""The benchmark workloads and, for each, the four steps the suite times.

* ``ours``: exactly what ``fit`` does per batch, data already on the device:
  ``loss_and_backward(model, loss, x, y, prepared=True)`` then ``optimizer.step()`` (SGD).
* ``floor``: the matrix products that step cannot avoid, alone, on the same backend: per layer the forward
  product a @ W, the weight gradient a.T @ g and (except for the first layer) the input gradient g @ W.T.
* ``pytorch``: PyTorch autograd's equivalent step (``nn.Linear`` layers, the same loss, ``torch.optim.SGD``).
* ``ours_torch``: our step on the ``torch`` backend (PyTorch's arrays and BLAS, none of its autograd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import backprop as bp
from backprop.gradients import loss_and_backward


@dataclass(frozen=True)
class Workload:
    """``batch`` samples through Dense layers of ``widths`` with ``activation`` after each hidden layer."""

    name: str
    batch: int
    widths: tuple[int, ...]
    activation: str  # "sigmoid" (also after the output layer, as in the XOR tutorial) or "relu"
    loss: str  # "mse" or "cross_entropy" (softmax from logits, class-index targets)
    dtype: str
    rounds: int  # alternating rounds in a full run
    lr: float = 1e-3

    @property
    def label(self) -> str:
        shape = ",".join(str(w) for w in self.widths)
        return f"{self.batch}x[{shape}] {self.activation} {self.loss} {self.dtype}"


WORKLOADS = {
    w.name: w
    for w in (
        Workload("xor", 4, (2, 4, 1), "sigmoid", "mse", "float64", rounds=15, lr=0.1),
        Workload("small", 64, (64, 128, 10), "relu", "cross_entropy", "float32", rounds=15),
        Workload("mnist", 128, (784, 256, 256, 10), "relu", "cross_entropy", "float32", rounds=11),
        Workload("wide32", 1024, (1024, 2048, 2048, 1024), "relu", "mse", "float32", rounds=5, lr=1e-4),
        Workload("wide64", 1024, (1024, 2048, 2048, 1024), "relu", "mse", "float64", rounds=3, lr=1e-4),
    )
}

# ``--quick``: the same kinds of network at tiny sizes, so the smoke test runs the whole suite in seconds.
QUICK_WORKLOADS = {
    "xor": WORKLOADS["xor"],
    "small": Workload("small", 16, (16, 32, 10), "relu", "cross_entropy", "float32", rounds=3),
    "mnist": Workload("mnist", 16, (48, 32, 32, 10), "relu", "cross_entropy", "float32", rounds=3),
    "wide32": Workload("wide32", 32, (32, 64, 64, 32), "relu", "mse", "float32", rounds=3, lr=1e-4),
    "wide64": Workload("wide64", 32, (32, 64, 64, 32), "relu", "mse", "float64", rounds=3, lr=1e-4),
}


def host_data(workload: Workload) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets on the host (class indices for cross-entropy), drawn from a fixed seed."""
    if workload.name == "xor":
        return np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64), np.array([[0.0], [1.0], [1.0], [0.0]])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((workload.batch, workload.widths[0]))
    if workload.loss == "cross_entropy":
        return x, rng.integers(0, workload.widths[-1], size=workload.batch)
    return x, rng.standard_normal((workload.batch, workload.widths[-1]))


def build_model(workload: Workload, device: str) -> bp.Sequential:
    activation = bp.Sigmoid if workload.activation == "sigmoid" else bp.ReLU
    layers: list[bp.Layer] = []
    pairs = list(zip(workload.widths[:-1], workload.widths[1:]))
    for index, (fan_in, fan_out) in enumerate(pairs):
        layers.append(bp.Dense(fan_in, fan_out))
        if index < len(pairs) - 1 or workload.activation == "sigmoid":
            layers.append(activation())
    return bp.Sequential(*layers, device=device, dtype=workload.dtype, seed=0)


def make_loss(workload: Workload) -> bp.losses.Loss:
    return bp.losses.MeanSquaredError() if workload.loss == "mse" else bp.losses.CrossEntropy(from_logits=True)


OPTIMIZERS = ("sgd", "adam")  # plain SGD (the timed step) and Adam with torch.optim's defaults besides lr


def our_step(workload: Workload, device: str, optimizer_name: str = "sgd") -> Callable[[], Any]:
    """One ``fit`` batch on ``device``: inputs and prepared targets already there, as ``fit`` holds them."""
    model = build_model(workload, device)
    loss = make_loss(workload)
    optimizer = (bp.optim.SGD if optimizer_name == "sgd" else bp.optim.Adam)(model.parameters(), lr=workload.lr)
    x_host, y_host = host_data(workload)
    x = model.as_input(x_host)
    with model.backend.activate():
        y = loss.prepare_target(y_host, model.backend, model._dtype, (workload.batch, workload.widths[-1]))

    return fit_step(model, loss, optimizer, x, y)


def fit_step(model: bp.Sequential, loss: bp.losses.Loss, optimizer: bp.optim.Optimizer, x: Any, y: Any
             ) -> Callable[[], Any]:
    """``fit``'s step for one batch already on the device (``y`` prepared): forward, backward (which zeroes the
    gradients first), optimiser step."""
    def step() -> Any:
        value = loss_and_backward(model, loss, x, y, prepared=True)
        optimizer.step()
        return value

    return step


def floor_step(workload: Workload, device: str) -> Callable[[], Any]:
    """The step's matrix products alone, on ``device``'s backend, with operands already in place."""
    backend = bp.get_backend(device)
    dtype = backend.dtype(workload.dtype)
    rng = np.random.default_rng(1)
    n = workload.batch
    layers = []
    for fan_in, fan_out in zip(workload.widths[:-1], workload.widths[1:]):
        layers.append(tuple(backend.to_device(rng.standard_normal(shape), dtype)
                            for shape in ((n, fan_in), (fan_in, fan_out), (n, fan_out))))

    def step() -> Any:
        with backend.activate():
            for index, (a, w, g) in enumerate(layers):
                a @ w  # forward
                a.T @ g  # weight gradient
                if index:
                    g @ w.T  # input gradient (the first layer needs none)

    return step


def pytorch_step(workload: Workload, device: str, optimizer_name: str = "sgd",
                 foreach: bool | None = None) -> Callable[[], Any]:
    """PyTorch autograd's step: nn.Linear layers with our initial weights, the same loss, torch.optim.SGD (or
    Adam); ``foreach`` picks its multi-tensor implementation (None: PyTorch's default for the device)."""
    import torch

    dtype = getattr(torch, workload.dtype)
    ours = build_model(workload, "cpu")
    modules: list[torch.nn.Module] = []
    for layer in ours.layers:
        if isinstance(layer, bp.Dense):
            linear = torch.nn.Linear(layer.in_features, layer.out_features, dtype=dtype, device=device)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(bp.to_numpy(layer.params["weight"].value).T.copy()))
                linear.bias.copy_(torch.from_numpy(bp.to_numpy(layer.params["bias"].value)))
            modules.append(linear)
        else:
            modules.append(torch.nn.Sigmoid() if isinstance(layer, bp.Sigmoid) else torch.nn.ReLU())
    model = torch.nn.Sequential(*modules)
    loss = torch.nn.MSELoss() if workload.loss == "mse" else torch.nn.CrossEntropyLoss()
    optimizer = (torch.optim.SGD if optimizer_name == "sgd" else torch.optim.Adam)(model.parameters(), lr=workload.lr,
                                                                                 foreach=foreach)
    x_host, y_host = host_data(workload)
    x = torch.as_tensor(x_host, dtype=dtype, device=device)
    y = torch.as_tensor(y_host, device=device)
    y = y.to(dtype) if workload.loss == "mse" else y.to(torch.int64)

    return torch_training_step(model, loss, optimizer, x, y)


def torch_training_step(model: Any, loss: Any, optimizer: Any, x: Any, y: Any) -> Callable[[], Any]:
    """PyTorch autograd's training step: zero the gradients, forward, backward, optimiser step."""
    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        value = loss(model(x), y)
        value.backward()
        optimizer.step()
        return value

    return step
