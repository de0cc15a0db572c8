"""One exception hierarchy, so callers can catch ours (``BackpropError``) or the built-in kind they expect.

Each class also derives from the built-in exception a Python user would reach for first: bad values and shapes
are ``ValueError``, wrong types ``TypeError``, a backend or an optional library that cannot be loaded
``ImportError``. Every ``raise`` of a built-in exception class in ``backprop/`` and ``backends/`` is one of these
instead (``tests/test_errors_audit.py`` scans the source); the exceptions are ``NotImplementedError`` in the body of
a method a subclass must implement, and re-raising an exception caught or rebuilt (``raise``, ``raise error``).
"""


class BackpropError(Exception):
    """Base of every error this library raises on purpose."""


class ShapeError(BackpropError, ValueError):
    """An array's shape does not fit the layer, loss or targets it meets."""


class TargetError(BackpropError, ValueError):
    """Target values outside the loss's domain (class indices out of range or not whole, BCE targets outside [0, 1])."""


class DTypeError(BackpropError, TypeError):
    """An array's dtype cannot be used (e.g. strings, complex numbers)."""


class NonFiniteError(BackpropError, ValueError):
    """Data contain NaN or infinity."""


class DeviceError(BackpropError, ValueError):
    """An unknown device, or an array that lives on another library or device than the model."""


class BackendUnavailableError(DeviceError, ImportError):
    """The array library for a device is not installed, or the hardware is missing."""


class ConfigurationError(BackpropError, ValueError):
    """A hyper-parameter out of its domain (learning rate, epochs, batch size, ...)."""


class DivergenceError(BackpropError, FloatingPointError):
    """Training produced a NaN or infinite loss."""

    epoch: int  # set by fit: where it diverged, counted from 1
    batch: int


class CheckpointError(BackpropError, ValueError):
    """A checkpoint file is truncated, corrupted, of another format version, or does not fit the model."""


class GradientCheckError(BackpropError, AssertionError):
    """Analytic gradients disagree with finite differences."""


class ArgumentTypeError(ConfigurationError, TypeError):
    """An argument of the wrong kind: a string where a number belongs, a model where its parameters belong."""


class CastOverflowError(BackpropError, OverflowError):
    """Finite data too large for the model's dtype: casting them (float64 to float32) would give infinities."""


class StateMismatchError(BackpropError, KeyError):
    """A state dict whose names do not fit the model (missing or unexpected entries)."""

    def __str__(self) -> str:  # KeyError would show the message quoted, as if it were a key
        return str(self.args[0]) if self.args else ""


class UnsetHyperparameterError(ConfigurationError, AttributeError):
    """An optimiser's hyper-parameter read before it was set: a subclass's ``__init__`` that skips
    ``Optimizer.__init__``."""


class MissingDependencyError(BackpropError, ImportError):
    """An optional library a feature needs (scikit-learn, matplotlib) is not installed; the message says what to
    install."""


class LossActivationWarning(UserWarning):
    """The model's last layer and the loss disagree about logits
    (e.g. a Softmax before CrossEntropy(from_logits=True))."""
