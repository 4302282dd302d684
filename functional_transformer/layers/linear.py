"""Affine map y = x @ w + b over the last axis: params {"w": (d_in, d_out), "b": (d_out,)}."""

from __future__ import annotations

import math

from backends import array_namespace
from backends import random as jrandom


def init(key, d_in: int, d_out: int, dtype, bias: bool = True) -> dict:
    """Glorot-uniform weights (as PyTorch's nn.Transformer), zero bias."""
    xp = array_namespace(key)
    limit = math.sqrt(6.0 / (d_in + d_out))
    params = {"w": jrandom.uniform(key, (d_in, d_out), dtype, -limit, limit)}
    if bias:
        params["b"] = xp.zeros((d_out,), dtype=dtype)
    return params


def fwd(params: dict, x):
    """x (..., d_in) -> y (..., d_out)."""
    xp = array_namespace(x)
    w = params["w"]
    # One 2-D matmul (a single BLAS call) rather than a batched one over the leading axes.
    x2 = xp.reshape(x, (-1, x.shape[-1]))  # (N, d_in)
    y = x2 @ w
    if "b" in params:
        y += params["b"]  # y is new: in place on NumPy, rebound on JAX
    return xp.reshape(y, (*x.shape[:-1], w.shape[1])), (w, x2, x.shape, "b" in params)


def bwd(res, g):
    """-> (dparams, dx)."""
    w, x2, x_shape, has_bias = res
    xp = array_namespace(g)
    g2 = xp.reshape(g, (-1, g.shape[-1]))  # (N, d_out)
    dparams = {"w": x2.mT @ g2}
    if has_bias:
        dparams["b"] = xp.sum(g2, axis=0)
    return dparams, xp.reshape(g2 @ w.mT, x_shape)


def apply(params: dict, x):
    return fwd(params, x)[0]
