"""Root-mean-square normalisation over the last axis (Zhang & Sennrich 2019; Llama): no centring,
no shift, params {"scale": (d,)}.

    y = x / sqrt(mean(x^2) + eps) * scale
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import array_namespace

from .precision import as_dtype, at_least_float32

EPS = 1e-6  # Llama's default rms_norm_eps


class Saved(NamedTuple):
    x_hat: Any  # (..., d), the normalised input
    inv_rms: Any  # (..., 1)
    scale: Any  # (d,)


def init(key, d: int, dtype) -> dict:
    xp = array_namespace(key)
    return {"scale": xp.ones((d,), dtype=dtype)}


def fwd(params: dict, x, eps: float = EPS):
    """x (..., d) -> (x / sqrt(mean(x^2) + eps) * scale, saved), same shape."""
    xp = array_namespace(x)
    dtype = x.dtype
    x = at_least_float32(x)  # bfloat16 activations: the mean square in float32, as layer_norm
    inv_rms = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)
    x_hat = x * inv_rms
    return as_dtype(x_hat * params["scale"], dtype), Saved(x_hat, inv_rms, params["scale"])


def bwd(saved: Saved, g):
    """-> (dparams, dx). dx = inv_rms * (dx_hat - x_hat * mean(dx_hat * x_hat)), dx_hat = g * scale:
    layer norm's backward without the mean's term."""
    x_hat, inv_rms, scale = saved
    xp = array_namespace(g)
    lead = tuple(range(g.ndim - 1))
    dparams = {"scale": xp.sum(g * x_hat, axis=lead)}
    dx_hat = g * scale
    dx = (dx_hat - x_hat * xp.mean(dx_hat * x_hat, axis=-1, keepdims=True)) * inv_rms
    return dparams, dx


def apply(params: dict, x, eps: float = EPS):
    return fwd(params, x, eps)[0]
