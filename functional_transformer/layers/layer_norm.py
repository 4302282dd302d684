"""Layer normalisation over the last axis: params {"scale": (d,), "bias": (d,)}."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from backends import array_namespace

from .precision import as_dtype, at_least_float32

EPS = 1e-5


class Saved(NamedTuple):
    x_hat: Any  # (..., d), the normalised input
    inv_std: Any  # (..., 1)
    scale: Any  # (d,)


def init(key, d: int, dtype) -> dict:
    xp = array_namespace(key)
    return {"scale": xp.ones((d,), dtype=dtype), "bias": xp.zeros((d,), dtype=dtype)}


def fwd(params: dict, x, eps: float = EPS):
    """x (..., d) -> (x - mean) / sqrt(var + eps) * scale + bias, same shape."""
    xp = array_namespace(x)
    dtype = x.dtype
    x = at_least_float32(x)  # bfloat16 activations: mean, variance and normalisation in float32
    # The augmented assignments update arrays made here (in place on NumPy, rebound on JAX):
    # NumPy's cost is mostly fresh memory, and this saves two of five (B, T, d) arrays.
    x_hat = x - xp.mean(x, axis=-1, keepdims=True)
    inv_std = 1.0 / xp.sqrt(xp.mean(x_hat * x_hat, axis=-1, keepdims=True) + eps)
    x_hat *= inv_std
    y = x_hat * params["scale"]
    y += params["bias"]
    return as_dtype(y, dtype), Saved(x_hat, inv_std, params["scale"])


def bwd(saved: Saved, g):
    """-> (dparams, dx). dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))."""
    x_hat, inv_std, scale = saved
    xp = array_namespace(g)
    lead = tuple(range(g.ndim - 1))
    if isinstance(g, np.ndarray):
        return _bwd_numpy(saved, g, lead)
    dparams = {"scale": xp.sum(g * x_hat, axis=lead), "bias": xp.sum(g, axis=lead)}
    dx = g * scale  # dx_hat, turned into dx in place below
    projection = xp.mean(dx * x_hat, axis=-1, keepdims=True)
    dx -= xp.mean(dx, axis=-1, keepdims=True)
    dx -= x_hat * projection
    dx *= inv_std
    return dparams, dx


def _bwd_numpy(saved: Saved, g, lead: tuple):
    """bwd's operations in its order on NumPy, its three products with x_hat written into one
    scratch array (`out=`) instead of three new ones."""
    x_hat, inv_std, scale = saved
    product = np.multiply(g, x_hat)
    dparams = {"scale": np.sum(product, axis=lead), "bias": np.sum(g, axis=lead)}
    dx = g * scale
    projection = np.mean(np.multiply(dx, x_hat, out=product), axis=-1, keepdims=True)
    dx -= np.mean(dx, axis=-1, keepdims=True)
    dx -= np.multiply(x_hat, projection, out=product)
    dx *= inv_std
    return dparams, dx


def apply(params: dict, x, eps: float = EPS):
    return fwd(params, x, eps)[0]
