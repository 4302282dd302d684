"""Parts that act on each position alone: linear maps, layer norm, activations, the feed-forward
network, dropout. Each wraps the forward and the hand-written VJP of its layer (layers/), under the
one contract of part.py. None keeps a decoding cache: their `step` is their `apply`."""

from __future__ import annotations

import dataclasses

from backends import array_namespace

from ..errors import ConfigError
from ..layers import activations, dropout, feed_forward, glu, layer_norm, linear, rms_norm
from .part import Part

ACTIVATIONS = tuple(activations.FORWARD)


def _dtype(key, name: str):
    return getattr(array_namespace(key), name)


def _check_positive(part, **sizes) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{type(part).__name__}: {name} must be a positive integer, got {value!r}")


def _check_width(part, x, width: int, what: str = "input") -> None:
    if x.shape[-1] != width:
        raise ConfigError(f"{part!r}: the {what} has {x.shape[-1]} features on its last axis, expected {width}")


@dataclasses.dataclass(frozen=True)
class Linear(Part):
    """y = x @ w + b over the last axis: x (..., d_in) -> y (..., d_out); params {"w", "b"}."""

    d_in: int
    d_out: int
    bias: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        _check_positive(self, d_in=self.d_in, d_out=self.d_out)

    def init(self, key) -> dict:
        return linear.init(key, self.d_in, self.d_out, _dtype(key, self.dtype), self.bias)

    def fwd(self, params, x, *, train=False, key=None, **side):
        _check_width(self, x, self.d_in)
        return linear.fwd(params, x)

    def bwd(self, params, saved, dy):
        return linear.bwd(saved, dy, self.bias)

    def output_like(self, params, x):
        xp = array_namespace(x)
        return xp.zeros((*x.shape[:-1], self.d_out), dtype=params["w"].dtype)


@dataclasses.dataclass(frozen=True)
class LayerNorm(Part):
    """Normalise the last axis, then scale and shift: x (..., d) -> (..., d); params {"scale", "bias"}.
    eps: added to the variance (1e-5, as PyTorch and GPT-2)."""

    d: int
    dtype: str = "float32"
    eps: float = layer_norm.EPS

    def __post_init__(self):
        _check_positive(self, d=self.d)
        _check_eps(self)

    def init(self, key) -> dict:
        return layer_norm.init(key, self.d, _dtype(key, self.dtype))

    def fwd(self, params, x, *, train=False, key=None, **side):
        _check_width(self, x, self.d)
        return layer_norm.fwd(params, x, self.eps)

    def bwd(self, params, saved, dy):
        return layer_norm.bwd(saved, dy)


def _check_eps(part) -> None:
    if not (isinstance(part.eps, (int, float)) and part.eps > 0):
        raise ConfigError(f"{type(part).__name__}: eps must be a positive number, got {part.eps!r}")


@dataclasses.dataclass(frozen=True)
class RMSNorm(Part):
    """Divide the last axis by its root mean square, then scale (Llama): x (..., d) -> (..., d);
    params {"scale"}. eps: added to the mean square (Llama's rms_norm_eps)."""

    d: int
    dtype: str = "float32"
    eps: float = rms_norm.EPS

    def __post_init__(self):
        _check_positive(self, d=self.d)
        _check_eps(self)

    def init(self, key) -> dict:
        return rms_norm.init(key, self.d, _dtype(key, self.dtype))

    def fwd(self, params, x, *, train=False, key=None, **side):
        _check_width(self, x, self.d)
        return rms_norm.fwd(params, x, self.eps)

    def bwd(self, params, saved, dy):
        return rms_norm.bwd(saved, dy)


NORMS = ("layer", "rms")


def norm(kind: str, d: int, dtype: str = "float32", eps: float | None = None) -> Part:
    """The normalisation part by name: "layer" (LayerNorm) or "rms" (RMSNorm); eps None: its default."""
    if kind not in NORMS:
        raise ConfigError(f"unknown norm {kind!r}; choose one of {NORMS}")
    part = LayerNorm if kind == "layer" else RMSNorm
    return part(d, dtype) if eps is None else part(d, dtype, eps)


@dataclasses.dataclass(frozen=True)
class Activation(Part):
    """An element-wise nonlinearity by name: "relu" (the paper), "gelu" (tanh form) or "silu"."""

    name: str = "relu"

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise ConfigError(f"Activation: unknown name {self.name!r}; choose one of {ACTIVATIONS}")

    def fwd(self, params, x, *, train=False, key=None, **side):
        return activations.FORWARD[self.name](x)

    def bwd(self, params, saved, dy):
        return {}, activations.BACKWARD[self.name](saved, dy)


@dataclasses.dataclass(frozen=True)
class FeedForward(Part):
    """w_2(act(w_1 x + b_1)) + b_2: x (..., d_model) -> (..., d_model); params {"w_1", "b_1", "w_2", "b_2"}."""

    d_model: int
    d_ff: int
    activation: str = "relu"
    dtype: str = "float32"

    def __post_init__(self):
        _check_positive(self, d_model=self.d_model, d_ff=self.d_ff)
        Activation(self.activation)  # the same check and message

    def init(self, key) -> dict:
        return feed_forward.init(key, self.d_model, self.d_ff, _dtype(key, self.dtype))

    def fwd(self, params, x, *, train=False, key=None, **side):
        _check_width(self, x, self.d_model)
        return feed_forward.fwd(params, x, self.activation)

    def bwd(self, params, saved, dy):
        return feed_forward.bwd(saved, dy, self.activation)


@dataclasses.dataclass(frozen=True)
class GatedFeedForward(Part):
    """(act(x w_gate) * (x w_up)) w_down: x (..., d_model) -> (..., d_model). activation "silu" is
    SwiGLU (Llama), "gelu" GeGLU. params {"w_gate", "w_up", "w_down"}, with bias also "b_gate", ..."""

    d_model: int
    d_ff: int
    activation: str = "silu"
    bias: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        _check_positive(self, d_model=self.d_model, d_ff=self.d_ff)
        Activation(self.activation)  # the same check and message

    def init(self, key) -> dict:
        return glu.init(key, self.d_model, self.d_ff, _dtype(key, self.dtype), self.bias)

    def fwd(self, params, x, *, train=False, key=None, **side):
        _check_width(self, x, self.d_model)
        return glu.fwd(params, x, self.activation)

    def bwd(self, params, saved, dy):
        return glu.bwd(saved, dy, self.activation, self.bias)


@dataclasses.dataclass(frozen=True)
class Dropout(Part):
    """Inverted dropout in training (train=True and a key), the identity otherwise."""

    drop_rate: float

    def __post_init__(self):
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"Dropout: drop_rate must be in [0, 1), got {self.drop_rate!r}")

    @property
    def needs_key(self) -> bool:
        return True

    def fwd(self, params, x, *, train=False, key=None, **side):
        return dropout.fwd(x, self.drop_rate, train, key)

    def bwd(self, params, saved, dy):
        return {}, dropout.bwd(saved, dy)
