"""Element-wise activations of the feed-forward layer: ReLU (the paper), GELU (tanh form, GPT-2) and
SiLU (x * sigmoid(x), the gate of Llama's SwiGLU)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from backends import array_namespace, backend_of

_GELU_C = math.sqrt(2.0 / math.pi)


class GeluSaved(NamedTuple):
    x: Any
    t: Any  # tanh(sqrt(2 / pi) (x + 0.044715 x^3))


def relu_fwd(x):
    """-> (y, y): the backward needs only the output's sign pattern."""
    y = backend_of(x).relu(x)
    return y, y


def relu_bwd(y, g):
    xp = array_namespace(g)
    # A multiply by the 0/1 mask, not `where(y > 0, g, 0)`: NumPy's `where` branches per element
    # and mispredicts on a random sign pattern (several times slower;
    # docs/benchmarks.md, "Timings behind design choices").
    return g * xp.astype(y > 0, g.dtype)


def gelu_fwd(x):
    """GELU, tanh approximation (Hendrycks & Gimpel): the Array API has no erf."""
    xp = array_namespace(x)
    t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), GeluSaved(x, t)


def gelu_bwd(saved: GeluSaved, g):
    x, t = saved
    dt_dx = (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * dt_dx)


class SiluSaved(NamedTuple):
    x: Any
    s: Any  # sigmoid(x)


def silu_fwd(x):
    """SiLU (swish): x * sigmoid(x), with sigmoid(x) = exp(-log(1 + exp(-x))): neither overflows
    for large |x| nor loses the small values for negative x that 1 / (1 + exp(-x)) or tanh would."""
    xp = array_namespace(x)
    s = xp.exp(-xp.logaddexp(xp.zeros_like(x), -x))
    return x * s, SiluSaved(x, s)


def silu_bwd(saved: SiluSaved, g):
    x, s = saved
    return g * (s * (1.0 + x * (1.0 - s)))


FORWARD = {"relu": relu_fwd, "gelu": gelu_fwd, "silu": silu_fwd}
BACKWARD = {"relu": relu_bwd, "gelu": gelu_bwd, "silu": silu_bwd}
