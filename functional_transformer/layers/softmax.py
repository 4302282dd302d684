"""Softmax over the last axis, with an optional boolean mask (True = keep).

Masked entries get probability 0 and zero gradient; a row with every entry masked gives all
zeros (never NaN), which is what a query with nothing to attend to should contribute.
"""

from __future__ import annotations

import numpy as np

from backends import array_namespace, backend_of

from .precision import as_dtype, at_least_float32


def fwd(x, mask=None):
    """x (..., n), mask broadcastable to x -> (p, p) with p (..., n): the backward needs only p."""
    xp = array_namespace(x)
    dtype = x.dtype
    x = at_least_float32(x)  # bfloat16 scores: the exponentials and their sum in float32
    if mask is not None:
        x = xp.where(mask, x, xp.asarray(-xp.inf, dtype=x.dtype))
    # The shift cancels out of p, so its derivative is zero: stopping it spares jax.grad the
    # backward of the max (a compare and select per element).
    row_max = backend_of(x).stop_gradient(xp.max(x, axis=-1, keepdims=True))
    # A fully masked row has max -inf; shifting by 0 instead keeps exp(-inf) = 0 rather than NaN.
    row_max = xp.where(row_max == -xp.inf, xp.asarray(0, dtype=x.dtype), row_max)
    if isinstance(x, np.ndarray):  # the shift and exp written into one new array: a pass and an array fewer
        p = np.subtract(x, row_max)
        np.exp(p, out=p)
    else:
        p = xp.exp(x - row_max)
    total = xp.sum(p, axis=-1, keepdims=True)
    p /= xp.where(total == 0, xp.asarray(1, dtype=x.dtype), total)  # a new array: in place on NumPy
    p = as_dtype(p, dtype)
    return p, p


def bwd(p, g):
    """dx = p * (g - sum(g * p)); masked entries have p = 0, so their gradient is 0."""
    xp = array_namespace(g)
    dx = g * p
    dx -= p * xp.sum(dx, axis=-1, keepdims=True)  # p * (g - sum(g * p)), one array fewer
    return dx


def log_softmax(x):
    """log softmax over the last axis, shifted by the row max so large logits never overflow."""
    xp = array_namespace(x)
    shifted = x - backend_of(x).stop_gradient(xp.max(x, axis=-1, keepdims=True))  # as in fwd
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def apply(x, mask=None):
    return fwd(x, mask)[0]
