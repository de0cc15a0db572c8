"""`Conv2d`: 2-D convolution over (N, C, H, W) image batches, computed by the backend's ``conv2d``: the array-API
reference `backprop.convolution.conv2d`, or a library's own kernel where its backend has one (torch).

y[n, o] = b[o] + sum_c K[o, c] (*) x_pad[n, c] (cross-correlation with stride and dilation), per-sample shape
(C, H, W) -> (O, H_out, W_out); the gradients dL/dK, dL/db and dL/dx are derived in `backprop.convolution`.
"""

from __future__ import annotations

from typing import Any

from backprop import init as initialisers
from backprop.errors import ConfigurationError
from backprop.layers.base import Layer
from backprop.layers.images import check_images, check_window, pair
from backprop.validation import flag, integer
from backprop.windows import Window


class Conv2d(Layer):
    """``Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
    init="he_uniform", bias_init="zeros")``, with PyTorch's meanings.

    ``kernel_size``, ``stride``, ``dilation`` and ``padding`` take an int or a pair (height, width); ``padding``
    also takes ``"valid"`` (none) and ``"same"`` (stride 1 only: the output has the input's size; a total padding
    of d (k - 1) per axis, the odd one out at the bottom and right, as PyTorch places it for even kernels).
    ``weight`` has PyTorch's shape (out_channels, in_channels, k_h, k_w), ``bias`` (out_channels,).

    Default initialisation: He (Kaiming) uniform for the weight, U(-a, a) with a = sqrt(6 / fan_in) and
    fan_in = in_channels k_h k_w, and zeros for the bias. A convolution is nearly always followed by a ReLU, and He's
    scale keeps the activations' variance from halving at every such layer (Glorot's would shrink it through deep
    stacks). PyTorch's default draws both from U(-1 / sqrt(fan_in), 1 / sqrt(fan_in)): a sixth of He's variance.
    ``init`` and ``bias_init`` take a name from ``bp.init.INITIALISERS`` or a
    callable ``init(rng, shape, fan_in, fan_out)`` (fan_out = out_channels k_h k_w).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: "int | tuple[int, int]",
        stride: "int | tuple[int, int]" = 1,
        padding: "int | tuple[int, int] | str" = 0,
        dilation: "int | tuple[int, int]" = 1,
        bias: bool = True,
        init: "str | initialisers.Initialiser" = "he_uniform",
        bias_init: "str | initialisers.Initialiser" = "zeros",
    ) -> None:
        super().__init__()
        self.in_channels = integer(in_channels, "Conv2d in_channels")
        self.out_channels = integer(out_channels, "Conv2d out_channels")
        self.kernel_size = pair(kernel_size, "Conv2d kernel_size")
        self.stride = pair(stride, "Conv2d stride")
        self.dilation = pair(dilation, "Conv2d dilation")
        self.padding = _padding(padding, self.kernel_size, self.stride, self.dilation)
        self.bias = flag(bias, "Conv2d bias")
        initialisers.get(init), initialisers.get(bias_init)  # an unknown name is refused here, not when built
        self.init, self.bias_init = init, bias_init
        self.window = Window(self.kernel_size, self.stride, self.dilation, _pads(self.padding, self.kernel_size,
                                                                                 self.dilation))

    def build(self, input_shape, backend, dtype, rng):
        shape = check_images(repr(self), input_shape, self.in_channels, "in_channels")
        out_height, out_width = check_window(repr(self), self.window, shape)
        super().build(input_shape, backend, dtype, rng)
        kh, kw = self.kernel_size
        weight_shape = (self.out_channels, self.in_channels, kh, kw)
        fan_in, fan_out = self.in_channels * kh * kw, self.out_channels * kh * kw
        self.add_parameter("weight", initialisers.get(self.init)(rng, weight_shape, fan_in, fan_out))
        if self.bias:
            self.add_parameter("bias", initialisers.get(self.bias_init)(rng, (self.out_channels,), fan_in, fan_out))
        return (self.out_channels, out_height, out_width)

    def forward(self, x: Any, training: bool = False):
        weight, bias = self.params["weight"], self.params.get("bias")
        y, conv_backward = self.backend.conv2d(x, weight.value, None if bias is None else bias.value, self.window)

        def backward(dy: Any, need_dx: bool = True) -> Any:
            dx, dweight, dbias = conv_backward(dy, need_dx)
            weight.accumulate(dweight)
            if bias is not None:
                bias.accumulate(dbias)
            return dx

        return y, backward

    def config(self) -> dict:
        described = {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "dilation": list(self.dilation), "bias": self.bias,
        }
        for key in ("init", "bias_init"):
            value = getattr(self, key)
            if isinstance(value, str):
                described[key] = value
        return described

    def __repr__(self) -> str:
        """PyTorch's style: the channels and kernel, then only the arguments that differ from their defaults."""
        shown = [str(self.in_channels), str(self.out_channels), f"kernel_size={self.kernel_size}"]
        for key, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1)), ("bias", True),
                             ("init", "he_uniform"), ("bias_init", "zeros")):
            value = getattr(self, key)
            if value != default:
                shown.append(f"{key}={value!r}")
        return f"Conv2d({', '.join(shown)})"


def _padding(padding: Any, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> Any:
    """``"valid"``, ``"same"`` (stride 1 only) or a pair of non-negative ints."""
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ConfigurationError(f"Conv2d padding must be an int, a pair of ints, 'valid' or 'same', "
                                     f"got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise ConfigurationError(
                f"Conv2d padding='same' needs stride 1 (got stride {stride}), as in PyTorch; give the padding as "
                f"ints instead, e.g. padding={tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))}")
        return padding
    return pair(padding, "Conv2d padding", low=0)


def _pads(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) for a normalised ``padding``."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((total // 2, total - total // 2) for total in totals)  # type: ignore[return-value]
    return ((padding[0], padding[0]), (padding[1], padding[1]))
