"""`Sequential`: layers applied in order, on one backend, with one dtype.

forward:  y = f_L(... f_2(f_1(x)))
backward: the chain rule, calling each layer's backward closure in reverse order:
          dL/dx_{l-1} = backward_l(dL/dx_l), each one accumulating its layer's parameter gradients.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import numpy as np

from backprop.backends import Backend, get_backend
from backprop.data import check_features, to_backend
from backprop.errors import ConfigurationError, ShapeError
from backprop.layers.base import Layer
from backprop.parameter import Parameter


class Sequential:
    """``Sequential(*layers, device="cpu", dtype="float32", seed=None)``.

    Every parameter is drawn on the host from ``numpy.random.default_rng(seed)`` and copied to ``device``, so
    the same seed gives bit-identical starting weights on every backend. Parameter names are
    ``"{index}.{name}"`` (``"0.weight"``, ``"2.bias"``).
    """

    def __init__(self, *layers: Layer, device: "str | Backend" = "cpu", dtype: str = "float32", seed: int | None = None):
        if not layers:
            raise ConfigurationError("Sequential needs at least one layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"argument {index} of Sequential is {type(layer).__name__}, not a layer")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ConfigurationError("the same layer object appears twice in Sequential; create a new one for each position")
        self.layers: list[Layer] = list(layers)
        self.backend: Backend = get_backend(device)
        self.dtype: str = dtype
        self.seed = seed
        self._dtype = self.backend.dtype(dtype)
        self.in_features: int | None = None
        self._input_layer = "the first layer"
        rng = np.random.default_rng(seed)
        features: int | None = None
        for index, layer in enumerate(self.layers):
            declared = layer.in_features
            if declared is not None:
                if features is None:
                    self.in_features = declared
                    self._input_layer = f"layer {index} ({layer!r})"
                elif declared != features:
                    raise ShapeError(
                        f"layer {index} ({layer!r}) expects {declared} input features, "
                        f"but the layer before it produces {features}"
                    )
            features = layer.build(features, self.backend, self._dtype, rng)
            for name, parameter in layer.params.items():
                parameter.name = f"{index}.{name}"
        self.out_features = features

    # -- parameters and state -------------------------------------------------------------------------------
    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for index, layer in enumerate(self.layers):
            for name, parameter in layer.params.items():
                yield f"{index}.{name}", parameter

    def parameters(self) -> list[Parameter]:
        """Trainable parameters in order; each ``Parameter.name`` is its qualified name (``"0.weight"``)."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        """Non-trainable state (e.g. batch-norm running statistics)."""
        for index, layer in enumerate(self.layers):
            for name, value in layer.buffers.items():
                yield f"{index}.{name}", value

    def zero_grad(self) -> None:
        for layer in self.layers:
            for parameter in layer.params.values():
                parameter.zero_grad()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host NumPy copies of every parameter and buffer, by qualified name."""
        state = {name: np.array(self.backend.to_numpy(p.value), copy=True) for name, p in self.named_parameters()}
        state.update({name: np.array(self.backend.to_numpy(v), copy=True) for name, v in self.named_buffers()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy values into the model; names and shapes must match exactly; values are cast to the model's dtype."""
        expected = {name: tuple(p.value.shape) for name, p in self.named_parameters()}
        expected.update({name: tuple(v.shape) for name, v in self.named_buffers()})
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise KeyError(f"state does not fit this model: missing {missing}, unexpected {unexpected}")
        host = {}
        for name, shape in expected.items():
            value = np.asarray(self.backend.to_numpy(state[name]) if not isinstance(state[name], np.ndarray) else state[name])
            if value.shape != shape:
                raise ShapeError(f"state[{name!r}] has shape {value.shape}, the model's has {shape}")
            if value.dtype.kind not in "biuf":
                raise TypeError(f"state[{name!r}] has dtype {value.dtype}; expected real numbers")
            host[name] = value
        for index, layer in enumerate(self.layers):
            for name, parameter in layer.params.items():
                parameter.value = self.backend.to_device(host[f"{index}.{name}"], self._dtype)
            for name in layer.buffers:
                layer.buffers[name] = self.backend.to_device(host[f"{index}.{name}"], self._dtype)

    def to(self, device: "str | Backend") -> "Sequential":
        """Move parameters, gradients, optimiser state and buffers to ``device`` (in place; returns self)."""
        target = get_backend(device)
        target.dtype(self.dtype)  # raises before anything moves if the target lacks this dtype
        source = self.backend

        def move(array: Any) -> Any:
            return target.to_device(source.to_numpy(array), self._dtype_on(target, array))

        for layer in self.layers:
            for parameter in layer.params.values():
                parameter.value = move(parameter.value)
                if parameter.has_grad:
                    parameter.grad = move(parameter.grad)
                parameter.state = {k: move(v) for k, v in parameter.state.items()}
                parameter.backend = target
            layer.buffers = {k: move(v) for k, v in layer.buffers.items()}
            layer.backend, layer.dtype = target, target.dtype(self.dtype)
        self.backend, self._dtype = target, target.dtype(self.dtype)
        return self

    def _dtype_on(self, target: Backend, array: Any) -> Any:
        xp = self.backend.xp
        return target.dtype(self.dtype) if xp.isdtype(array.dtype, "real floating") else None

    @property
    def device(self) -> str:
        """The canonical device specifier, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return self.backend.spec

    # -- computing ------------------------------------------------------------------------------------------
    def as_input(self, x: Any) -> Any:
        """``x`` on the model's device in its dtype, checked to be a 2-D batch that fits the first layer."""
        if self.backend.owns(x) and x.dtype == self._dtype:  # the hot path: a batch already in place
            shape = x.shape
            if len(shape) == 2 and shape[0] > 0 and (self.in_features is None or shape[1] == self.in_features):
                return x
        with self.backend.activate():
            array = to_backend(x, self.backend, self._dtype, what="input")
        check_features(array, self.in_features, self._input_layer)
        return array

    def forward(self, x: Any, training: bool = False) -> tuple[Any, Callable[..., Any]]:
        """Return ``(output, backward)``; ``backward(grad_output)`` accumulates every parameter's ``.grad``
        and returns dL/dx (``backward(g, need_input_grad=False)`` skips that last product and returns None)."""
        x = self.as_input(x)
        backend = self.backend
        with backend.activate():
            backwards = []
            for layer in self.layers:
                x, layer_backward = layer.forward(x, training)
                backwards.append(layer_backward)
        output_shape = tuple(x.shape)

        def backward(grad_output: Any, need_input_grad: bool = True) -> Any:
            if not backend.owns(grad_output) or tuple(grad_output.shape) != output_shape:
                with backend.activate():
                    grad_output = to_backend(grad_output, backend, self._dtype, what="grad_output")
                if tuple(grad_output.shape) != output_shape:
                    raise ShapeError(f"grad_output has shape {tuple(grad_output.shape)}, the output has {output_shape}")
            with backend.activate():
                gradient = grad_output
                last = len(backwards) - 1
                for position in range(last, -1, -1):
                    gradient = backwards[position](gradient, need_input_grad or position > 0)
            return gradient

        return x, backward

    def predict(self, x: Any) -> Any:
        """Inference (``training=False``): the output as an array on the model's device."""
        return self.forward(x, training=False)[0]

    __call__ = predict

    # -- training (backprop/training.py) --------------------------------------------------------------------
    def fit(self, x: Any, y: Any, loss: Any, optimizer: Any, epochs: int, **options: Any) -> Any:
        """Train with mini-batch gradient descent and return a `History`: see `backprop.training.fit`
        for the options (batch_size, shuffle, seed, validation_data, metrics, callbacks, verbose,
        initial_epoch, penalty)."""
        from backprop.training import fit

        return fit(self, x, y, loss, optimizer, epochs, **options)

    def evaluate(self, x: Any, y: Any, loss: Any, metrics: Any = (), batch_size: int | None = None) -> dict[str, float]:
        """``{"loss": ..., metric: ...}`` over (x, y) in inference mode: see `backprop.training.evaluate`."""
        from backprop.training import evaluate

        return evaluate(self, x, y, loss, metrics, batch_size)

    def config(self) -> dict:
        """The architecture as plain data: layer types and their constructor arguments, dtype."""
        return {
            "layers": [{"type": type(layer).__name__, "config": layer.config()} for layer in self.layers],
            "dtype": self.dtype,
        }

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner},\n  device={self.device!r}, dtype={self.dtype!r}\n)"
