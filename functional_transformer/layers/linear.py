"""Affine map y = x @ w + b over the last axis: params {"w": (d_in, d_out), "b": (d_out,)}."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from backends import array_namespace
from backends import prng as ftrandom


class Saved(NamedTuple):
    """What the backward needs: the weight and the input flattened to two axes."""

    w: Any  # (d_in, d_out)
    x2: Any  # (N, d_in)


def init(key, d_in: int, d_out: int, dtype, bias: bool = True) -> dict:
    """Glorot-uniform weights (as PyTorch's nn.Transformer), zero bias."""
    xp = array_namespace(key)
    limit = math.sqrt(6.0 / (d_in + d_out))
    params = {"w": ftrandom.uniform(key, (d_in, d_out), dtype, -limit, limit)}
    if bias:
        params["b"] = xp.zeros((d_out,), dtype=dtype)
    return params


def fwd(params: dict, x):
    """x (..., d_in) -> (y (..., d_out), saved)."""
    xp = array_namespace(x)
    w = params["w"]
    # One 2-D matmul (a single BLAS call) rather than a batched one over the leading axes.
    x2 = xp.reshape(x, (-1, x.shape[-1]))  # (N, d_in)
    y = x2 @ w
    if "b" in params:
        y += params["b"]  # y is new: in place on NumPy, rebound on JAX
    return xp.reshape(y, (*x.shape[:-1], w.shape[1])), Saved(w, x2)


def bwd(saved: Saved, g, bias: bool = True):
    """g (..., d_out) -> (dparams, dx (..., d_in)); `bias` says whether params has "b"."""
    xp = array_namespace(g)
    g2 = xp.reshape(g, (-1, g.shape[-1]))  # (N, d_out)
    dparams = {"w": saved.x2.mT @ g2}
    if bias:
        dparams["b"] = xp.sum(g2, axis=0)
    return dparams, xp.reshape(g2 @ saved.w.mT, (*g.shape[:-1], saved.w.shape[0]))


def apply(params: dict, x):
    return fwd(params, x)[0]
