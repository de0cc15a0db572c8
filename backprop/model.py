"""`Sequential`: layers applied in order. The outermost one is the model: it holds the backend, dtype and seed.

forward:  y = f_L(... f_2(f_1(x)))
backward: the chain rule, calling each layer's backward closure in reverse order:
          dL/dx_{l-1} = backward_l(dL/dx_l), each one accumulating its layer's parameter gradients.

A `Sequential` is itself a layer, so a block ``Sequential(Dense(64, 64), ReLU(), Dense(64, 64))`` given to another
`Sequential` (or to `Residual`) is built, moved, saved and checked as part of the outer model. The tree is walked
by ``backprop.layers.base.Layer``'s methods; see there for the naming rule (``"3.inner.0.weight"``).
"""

from __future__ import annotations

import copy
import math
import weakref
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from array_api_compat import is_torch_array

from backprop.backends import Backend, get_backend
from backprop.data import check_batch, is_source, to_backend
from backprop.errors import ArgumentTypeError, ConfigurationError, DTypeError, ShapeError, StateMismatchError
from backprop.layers.base import Layer, Shape, as_shape, dtype_name, shape_mismatch
from backprop.layers.registry import describe, layer_from_node, register_layer
from backprop.parameter import Parameter
from backprop.validation import float_dtype_name, instance
from backprop.validation import seed as checked_seed

_SETTINGS = ("device", "dtype", "seed")
_OWNERS: "weakref.WeakKeyDictionary[Layer, weakref.ref]" = weakref.WeakKeyDictionary()  # layer -> its model


class Sequential(Layer):
    """``Sequential(*layers, input_shape=None, device="cpu", dtype="float32", seed=None)``.

    ``input_shape`` is the per-sample shape of the inputs (``(1, 8, 8)`` for batches ``(N, 1, 8, 8)``). Without it
    the model takes it from the first layer that declares one (``Dense(3, 4)`` declares ``(3,)``), looking through
    shape-keeping layers before it, else from the first batch it sees; it is built, with all its parameters, as
    soon as the shape is known, before any arithmetic. An unbuilt model has no parameters yet: give
    ``input_shape=`` (or call ``model.build(input_shape)``) before building an optimiser from it.

    Every parameter is drawn on the host from ``numpy.random.default_rng(seed)`` and copied to ``device``, so
    the same seed gives bit-identical starting weights on every backend. Parameter names are dotted paths of
    positions and child names: ``"0.weight"``, ``"2.bias"`` in a flat model, ``"3.inner.0.weight"`` for the first
    layer of a block wrapped by a `Residual` at position 3.

    Given to another layer, a `Sequential` is an ordinary layer: it then computes on the outer model's device,
    dtype and seed, and giving it its own ``device``, ``dtype`` or ``seed`` is an error.
    """

    enters_device_context = True  # forward and backward activate the backend themselves

    def __init__(self, *layers: Layer, input_shape: "Shape | None" = None, device: "str | Backend | None" = None,
                 dtype: str | None = None, seed: int | None = None):
        super().__init__()
        if not layers:
            raise ConfigurationError("Sequential needs at least one layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ArgumentTypeError(f"argument {index} of Sequential is {type(layer).__name__}, not a layer"
                                        + (" (pass layer objects such as bp.Dense(3, 4), not classes)"
                                           if isinstance(layer, type) else ""))
        self.layers: list[Layer] = list(layers)
        _check_tree(self)
        dtype = None if dtype is None else float_dtype_name(dtype)
        seed = checked_seed(seed)
        self.settings = {name: value for name, value in zip(_SETTINGS, (device, dtype, seed)) if value is not None}
        self.backend: Backend = get_backend("cpu" if device is None else device)
        self.dtype: str = "float32" if dtype is None else dtype
        self.seed = seed
        self._dtype = self.backend.dtype(self.dtype)
        self._declared_shape = None if input_shape is None else as_shape(input_shape, "input_shape")
        self._built_shape: Shape | None = None
        self.output_shape: Shape | None = None
        self._shapes: list[Shape] = []
        if self.input_shape is not None:
            self.build(self.input_shape)
        _claim(self)

    # -- shapes and building --------------------------------------------------------------------------------
    @property
    def input_shape(self) -> Shape | None:
        """The per-sample input shape: given, else the one it was built with, else the first layer's (looking
        through shape-keeping layers), else ``None`` (then the first batch decides)."""
        if self._declared_shape is not None:
            return self._declared_shape
        if self._built_shape is not None:
            return self._built_shape
        return _declared_by(self.layers)[0]

    @property
    def in_features(self) -> int | None:  # type: ignore[override]
        """The input width for 1-D per-sample inputs, else ``None``."""
        shape = self.input_shape
        return shape[0] if shape is not None and len(shape) == 1 else None

    @property
    def out_features(self) -> int | None:
        """The output width once built, for 1-D per-sample outputs, else ``None``."""
        shape = self.output_shape
        return shape[0] if shape is not None and len(shape) == 1 else None

    @property
    def built(self) -> bool:
        return self._built_shape is not None

    def build(self, input_shape: Shape, backend: Any = None, dtype: Any = None,
              rng: np.random.Generator | None = None) -> Shape:
        """Build every layer for per-sample inputs of ``input_shape``; return the per-sample output shape.

        Called as ``model.build(input_shape)`` the model draws from its own seed on its own backend; an outer
        model passes its backend, dtype and generator (the layer protocol)."""
        outermost = backend is None or rng is None
        if backend is None or rng is None:
            backend, dtype, rng = self.backend, self._dtype, np.random.default_rng(self.seed)
        self._built_shape, self._trainable, self._sublayers = None, None, None
        declared = self._declared_shape
        shape = input_shape = as_shape(input_shape, "input_shape")
        if declared is not None and declared != shape:
            raise shape_mismatch(f"this Sequential (input_shape={declared})", declared, shape, "its input has")
        self.place(backend, dtype)
        shapes = []
        for index, layer in enumerate(self.layers):
            declared = layer.input_shape
            if declared is not None and tuple(declared) != shape:
                source = "the layer before it produces" if index else "the model's input has"
                raise shape_mismatch(f"layer {index} ({layer!r})", tuple(declared), shape, source)
            try:
                shape = tuple(layer.build(shape, backend, dtype, rng))
            except ShapeError as error:
                raise ShapeError(f"layer {index} ({type(layer).__name__}): {error}") from None
            shapes.append(shape)
        self._shapes, self.output_shape = shapes, shape
        self._built_shape = input_shape
        if outermost:
            for name, parameter in self.named_parameters():
                parameter.name = name
            self._trainable, self._sublayers = self.parameter_list(), self.layer_list()  # both None until here
        return shape

    def place(self, backend: Any, dtype: Any) -> None:
        self.backend, self._dtype, self.dtype = backend, dtype, dtype_name(backend, dtype)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # the buffers are the children's; dtype is a name here
        state["_dtype"] = self.dtype
        return state

    def __setstate__(self, state: dict) -> None:
        state["_dtype"] = state["backend"].dtype(state["_dtype"])
        self.__dict__.update(state)
        _claim(self)  # a copy owns its copied layers as the original owns its own

    def children(self) -> Iterator[tuple[str, Layer]]:
        for index, layer in enumerate(self.layers):
            yield str(index), layer

    def output_shapes(self) -> dict[str, Shape]:
        return {str(index): shape for index, shape in enumerate(self._shapes)}

    def _require_built(self) -> None:
        if self._built_shape is None:
            raise ConfigurationError(
                f"this Sequential is not built yet: its per-sample input shape is unknown (no input_shape=, and "
                f"its first layer {self.layers[0]!r} does not declare one). Give Sequential(..., input_shape=...), "
                "call model.build(input_shape), or run one batch through model.predict(x) first"
            )

    # -- parameters and state -------------------------------------------------------------------------------
    # the outermost model's parameters and the layers below it, listed when it is built: the training loop's
    # per-step and per-epoch work walks these lists instead of the layer tree
    _trainable: "tuple[Parameter, ...] | None" = None
    _sublayers: "tuple[Layer, ...] | None" = None

    def parameter_list(self) -> "tuple[Parameter, ...]":
        """`parameters()` as the tuple listed when the model was built (the same parameters in the same order)."""
        return self._trainable if self._trainable is not None else tuple(self.parameters())

    def layer_list(self) -> "tuple[Layer, ...]":
        """Every layer below this one, depth first (`named_layers` without the names), as listed when built."""
        return self._sublayers if self._sublayers is not None else tuple(layer for _, layer in self.named_layers())

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (this runs before every training step)."""
        for parameter in self.parameter_list():
            parameter.zero_grad()

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """Trainable parameters by dotted name, in tree order; each ``Parameter.name`` is that name."""
        self._require_built()
        return super().named_parameters()

    def named_buffers(self) -> Iterator[tuple[str, Any]]:
        """Non-trainable state (e.g. batch-norm running statistics) by dotted name."""
        self._require_built()
        return super().named_buffers()

    def named_random_states(self) -> dict[str, dict]:
        """``{layer path: layer.random_state()}`` for the layers below this one that draw random numbers."""
        states = {path: layer.random_state() for path, layer in self.named_layers()}
        return {path: state for path, state in states.items() if state is not None}

    def count_params(self) -> int:
        """The number of trainable parameters (scalars)."""
        return sum(math.prod(parameter.shape) for parameter in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host NumPy copies of every parameter and buffer, by qualified name."""
        state = {name: np.array(self.backend.to_numpy(p.value), copy=True) for name, p in self.named_parameters()}
        state.update({name: np.array(self.backend.to_numpy(v), copy=True) for name, v in self.named_buffers()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy values into the model; names and shapes must match exactly; values are cast to the model's dtype."""
        instance(state, Mapping, "state", "a mapping {name: array} such as model.state_dict() returns")
        expected = {name: tuple(p.value.shape) for name, p in self.named_parameters()}
        expected.update({name: tuple(v.shape) for name, v in self.named_buffers()})
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise StateMismatchError(f"state does not fit this model: missing {missing}, unexpected {unexpected}")
        _refuse_pytorch_layout(self, state)
        host = {}
        for name, shape in expected.items():
            given = state[name]
            value = np.asarray(given if isinstance(given, np.ndarray) else self.backend.to_numpy(given))
            if value.shape != shape:
                transposed = len(shape) == 2 and value.shape == shape[::-1]
                raise ShapeError(f"state[{name!r}] has shape {value.shape}, the model's has {shape}"
                                 + (f"; it is transposed: {_TORCH_LAYOUT}" if transposed else ""))
            if value.dtype.kind not in "biuf":
                raise DTypeError(f"state[{name!r}] has dtype {value.dtype}; expected real numbers")
            host[name] = value
        for prefix, layer in self._walk():
            for name, parameter in layer.params.items():
                parameter.value = self.backend.to_device(host[f"{prefix}{name}"], self._dtype)
            for name in layer.buffers:
                layer.buffers[name] = self.backend.to_device(host[f"{prefix}{name}"], self._dtype)

    def to(self, device: "str | Backend", dtype: str | None = None) -> "Sequential":
        """Move parameters, gradients, optimiser state and buffers to ``device`` (in place; returns self), cast to
        ``dtype`` (``"float32"``/``"float64"``) if given, else keeping the model's."""
        self._require_built()
        target = get_backend(device)
        # raises before anything moves
        new_dtype = target.dtype(self.dtype if dtype is None else float_dtype_name(dtype))
        source, xp = self.backend, self.backend.xp

        def move(array: Any) -> Any:
            floating = xp.isdtype(array.dtype, "real floating")
            return target.to_device(source.to_numpy(array), new_dtype if floating else None)

        for _, layer in self._walk():
            for parameter in layer.params.values():
                parameter.value = move(parameter.value)
                if parameter.has_grad:
                    parameter.grad = move(parameter.grad)
                parameter.state = {k: move(v) for k, v in parameter.state.items()}
                parameter.backend = target
            layer.buffers = {k: move(v) for k, v in layer.buffers.items()}
            layer.place(target, new_dtype)
        return self

    def clone(self, device: "str | Backend | None" = None, dtype: str | None = None) -> "Sequential":
        """An independent deep copy (parameters, gradients, optimiser slots, buffers, random states) on ``device``
        in ``dtype`` (by default the model's). Every array goes through the host, so the model's device is only
        read (``copy.deepcopy(model)`` is the same on the model's own device)."""
        self._require_built()
        target = self.backend if device is None else get_backend(device)
        twin = copy.deepcopy(self, {id(self.backend): target})
        return twin if dtype is None or dtype == twin.dtype else twin.to(target, dtype)

    @property
    def device(self) -> str:
        """The canonical device specifier, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return self.backend.spec

    # -- computing ------------------------------------------------------------------------------------------
    def as_input(self, x: Any) -> Any:
        """``x`` on the model's device in its dtype, checked to be a batch ``(N, *input_shape)``; an unbuilt model
        is built for the batch's per-sample shape first."""
        built = self._built_shape
        if built is not None and self.backend.owns(x) and x.dtype == self._dtype:  # the hot path: a batch in place
            shape = x.shape
            if shape[1:] == built and len(shape) == len(built) + 1 and shape[0] > 0:
                return x
        with self.backend.activate():
            array = to_backend(x, self.backend, self._dtype, what="input")
        check_batch(array, self.input_shape, self._input_source())
        if built is None:
            self.build(tuple(array.shape[1:]))
        return array

    def _input_source(self) -> str:
        """Who requires the input shape, for error messages."""
        if self._declared_shape is not None:
            return f"the model (input_shape={self._declared_shape})"
        shape, index = _declared_by(self.layers)
        if shape is not None:
            return f"layer {index} ({self.layers[index]!r})"
        return f"layer 0 ({self.layers[0]!r}, built for the per-sample shape {self._built_shape} of the first batch)"

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
            if not backend.owns(grad_output) or tuple(grad_output.shape) != output_shape \
                    or grad_output.dtype != self._dtype:  # an integer or float64 grad_output is cast, never kept
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

    def predict(self, x: Any, batch_size: int | None = None) -> Any:
        """Inference (``training=False``): the output as an array on the model's device. ``batch_size`` runs the
        forward pass that many samples at a time (bounding the device memory of the activations); a source of
        batches returns host NumPy outputs (see `backprop.training.predict`)."""
        if batch_size is None and not is_source(x):
            return self.forward(x, training=False)[0]
        from backprop.training import predict

        return predict(self, x, batch_size)

    __call__ = predict

    # -- training (backprop/training.py) --------------------------------------------------------------------
    def fit(self, x: Any, y: Any, loss: Any, optimizer: Any, epochs: int, **options: Any) -> Any:
        """Train with mini-batch gradient descent and return a `History`: see `backprop.training.fit`
        for the options (batch_size, shuffle, seed, validation_data, validation_split, metrics, callbacks,
        verbose, initial_epoch, penalty, steps_per_epoch). ``x`` may be a source of (x_batch, y_batch) host
        batches such as `backprop.data.BatchLoader`, with ``y=None``."""
        from backprop.training import fit

        return fit(self, x, y, loss, optimizer, epochs, **options)

    def evaluate(self, x: Any, y: Any, loss: Any, metrics: Any = (), batch_size: int | None = None,
                 steps: int | None = None) -> dict[str, float]:
        """``{"loss": ..., metric: ...}`` over (x, y), or a source of batches with ``y=None``, in inference mode:
        see `backprop.training.evaluate`."""
        from backprop.training import evaluate

        return evaluate(self, x, y, loss, metrics, batch_size, steps)

    # -- describing -----------------------------------------------------------------------------------------
    def config(self) -> dict:
        """The architecture as plain data: each layer's node (type and constructor arguments), and the declared
        input shape. Device, dtype and seed are the outermost model's settings, not part of the architecture."""
        described: dict[str, Any] = {"layers": [describe(layer) for layer in self.layers]}
        if self._declared_shape is not None:
            described["input_shape"] = list(self._declared_shape)
        return described

    @classmethod
    def from_config(cls, config: dict) -> "Sequential":
        rest = dict(config)
        nodes = rest.pop("layers", None)
        if not isinstance(nodes, list):
            raise ConfigurationError(f"a Sequential's config needs a list of layer nodes, got {nodes!r}")
        return cls(*[layer_from_node(node, f"layer {index}") for index, node in enumerate(nodes)], **rest)

    def summary(self) -> str:
        """A table of every layer in the tree: dotted name, layer, per-sample output shape, trainable parameters
        (a combinator's count includes its children's); then the input shape and the total."""
        self._require_built()
        rows = [("name", "layer", "output shape", "parameters")]

        def visit(layer: Layer, depth: int, prefix: str) -> None:
            shapes = layer.output_shapes()
            for name, child in layer.children():
                count = sum(math.prod(p.shape) for p in child.parameters())
                shape = shapes.get(name)
                rows.append(("  " * depth + f"{prefix}{name}", type(child).__name__,
                             "?" if shape is None else str(shape), f"{count:,}"))
                visit(child, depth + 1, f"{prefix}{name}.")

        visit(self, 0, "")
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}"
                 for row in rows]
        rule = "-" * len(lines[0])
        return "\n".join([
            f"Sequential on {self.device!r}, dtype {self.dtype}, input shape {self._built_shape} per sample",
            rule, lines[0], rule, *lines[1:], rule,
            f"trainable parameters: {self.count_params():,}",
        ])

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({i}) {layer!r}".replace("\n", "\n  ") for i, layer in enumerate(self.layers))
        settings = "".join(f", {name}={value!r}" for name, value in
                           (("input_shape", self._declared_shape), ("device", self.device), ("dtype", self.dtype))
                           if value is not None)
        return f"Sequential(\n{inner},\n  {settings[2:]}\n)"


register_layer(Sequential)


def _declared_by(layers: list[Layer]) -> tuple[Shape | None, int]:
    """(the input shape declared by the first layer that declares one, its index), looking through layers that
    keep their input's shape; (None, -1) when none does before a shape-changing layer."""
    for index, layer in enumerate(layers):
        shape = layer.input_shape
        if shape is not None:
            return tuple(shape), index
        if not layer.keeps_shape:
            break
    return None, -1


_TORCH_LAYOUT = (
    "backprop's Dense.weight is (in_features, out_features), the transpose of PyTorch's nn.Linear.weight "
    "(out_features, in_features). Convert a PyTorch state_dict with {name: (t.T if t.ndim == 2 else t).detach()"
    ".cpu().numpy() for name, t in torch_state.items()} (names must be the model's, e.g. '0.weight'; see the "
    "README, 'Loading PyTorch weights')"
)


def _refuse_pytorch_layout(model: Sequential, state: Mapping[str, Any]) -> None:
    """Refuse a PyTorch ``state_dict`` given as it is: its square ``nn.Linear`` weights would load transposed
    without any shape error. Recognised by its torch tensors (on a model that is not on a torch device) or by
    the ``_metadata`` attribute ``torch.nn.Module.state_dict()`` puts on the mapping it returns."""
    torch_values = [name for name, value in state.items() if is_torch_array(value)]
    if torch_values and (hasattr(state, "_metadata") or not is_torch_array(model.parameters()[0].value)):
        raise ShapeError(f"state looks like a PyTorch state_dict (torch tensors such as {torch_values[0]!r}): "
                         f"{_TORCH_LAYOUT}")


def release(model: Sequential) -> list[Layer]:
    """``model``'s layers, given up by it so that another `Sequential` may take them (``model`` must not be used
    afterwards): the checkpoint loader rebuilds a saved architecture this way."""
    for _, layer in model.named_layers():
        _OWNERS.pop(layer, None)
    return list(model.layers)


def _claim(model: Sequential) -> None:
    """Record ``model`` as the owner of every layer in its tree (the last step of a successful construction)."""
    for _, layer in model.named_layers():
        _OWNERS[layer] = weakref.ref(model)


def _check_tree(model: Sequential) -> None:
    """Refuse a layer object that appears twice in the tree or already belongs to another model (one still in
    use, outside this tree), and settings given to an inner Sequential."""
    seen: dict[int, str] = {}
    tree = {id(layer) for _, layer in model.named_layers()}
    for path, layer in model.named_layers():
        owner = _OWNERS[layer]() if layer in _OWNERS else None
        if owner is not None and id(owner) not in tree:
            raise ConfigurationError(
                f"layer {path} ({type(layer).__name__}) already belongs to another model: sharing it would make "
                "both models change the same parameters (and break the first if the second lives on another "
                "device). Give the new model its own layer (a new one, or copy.deepcopy(layer), whose weights the new "
                "model draws afresh when it builds), or copy the whole model with its weights: model.clone()"
            )
        if id(layer) in seen:
            raise ConfigurationError(
                f"the same layer object appears twice in Sequential (at {seen[id(layer)]} and {path}); "
                "create a new one for each position"
            )
        seen[id(layer)] = path
        if isinstance(layer, Sequential) and layer.settings:
            given = ", ".join(f"{name}={value!r}" for name, value in layer.settings.items())
            raise ConfigurationError(
                f"layer {path} is a Sequential given {given}: an inner Sequential computes on the outer model's "
                "device, dtype and seed; set them on the outermost Sequential only"
            )
