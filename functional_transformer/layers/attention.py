"""Scaled dot-product attention and multi-head attention (paper §3.2).

Multi-head params: {"w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o"}, each w (d_model,
d_model). Heads are a batch axis of the matmuls, (B, H, T, Dh): no Python loop over heads.
Masks are boolean, True where a query may attend, broadcastable to (B, H, T_q, T_kv).

For decoding, `fwd` takes an optional key/value cache (`KVCache`): the keys and values of earlier
positions (self-attention) or of the encoder's memory (cross-attention), so that one new query
costs one projection instead of re-projecting every key.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from backends import array_namespace, backend_of, with_x64_scope
from backends import random as ftrandom

from . import linear, softmax

PROJECTIONS = ("q", "k", "v", "o")


class DotProductSaved(NamedTuple):
    q: Any  # (B, H, T, Dh)
    k: Any  # (B, H, S, Dh)
    v: Any  # (B, H, S, Dh)
    p: Any  # (B, H, T, S), the attention weights


class Saved(NamedTuple):
    """The four projections' residuals and the dot product's."""

    q: linear.Saved
    k: linear.Saved
    v: linear.Saved
    dot_product: DotProductSaved
    o: linear.Saved


class KVCache(NamedTuple):
    """Keys and values kept across decoding steps, (B, H, S, Dh) each."""

    k: Any
    v: Any


@with_x64_scope
def init(key, d_model: int, dtype) -> dict:
    params = {}
    for name, k in zip(PROJECTIONS, ftrandom.split(key, len(PROJECTIONS))):
        proj = linear.init(k, d_model, d_model, dtype)
        params[f"w_{name}"], params[f"b_{name}"] = proj["w"], proj["b"]
    return params


def projection(params: dict, name: str) -> dict:
    """The linear-layer params of projection `name` ("q", "k", "v" or "o")."""
    return {"w": params[f"w_{name}"], "b": params[f"b_{name}"]}


def split_heads(x, n_heads: int):
    """(B, T, D) -> (B, H, T, Dh)."""
    xp = array_namespace(x)
    batch, length, d_model = x.shape
    return xp.permute_dims(xp.reshape(x, (batch, length, n_heads, d_model // n_heads)), (0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, Dh) -> (B, T, D)."""
    xp = array_namespace(x)
    batch, n_heads, length, d_head = x.shape
    return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (batch, length, n_heads * d_head))


def dot_product_fwd(q, k, v, mask=None):
    """softmax(q k^T / sqrt(Dh), mask) v. q (B, H, T, Dh), k and v (B, H, S, Dh) -> (B, H, T, Dh)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q * scale) @ k.mT  # (B, H, T, S)
    p, _ = softmax.fwd(scores, mask)
    return p @ v, DotProductSaved(q, k, v, p)


def dot_product_bwd(saved: DotProductSaved, g):
    """-> (dq, dk, dv)."""
    q, k, v, p = saved
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = p.mT @ g  # (B, H, S, Dh)
    d_scores = softmax.bwd(p, g @ v.mT)  # (B, H, T, S); zero where masked
    dq = (d_scores @ k) * scale
    dk = d_scores.mT @ (q * scale)
    return dq, dk, dv


def project_kv(params: dict, x_kv, n_heads: int) -> KVCache:
    """x_kv (B, S, D) -> its keys and values, (B, H, S, Dh) each: a cache of the memory for cross-attention."""
    k = linear.apply(projection(params, "k"), x_kv)
    v = linear.apply(projection(params, "v"), x_kv)
    return KVCache(split_heads(k, n_heads), split_heads(v, n_heads))


def _write(cache: KVCache, new: KVCache, position) -> KVCache:
    """The cache with one position's keys and values (B, H, 1, Dh) written in at `position`."""
    backend = backend_of(cache.k)
    at = (slice(None), slice(None), position)
    return KVCache(backend.set_at(cache.k, at, new.k[:, :, 0]), backend.set_at(cache.v, at, new.v[:, :, 0]))


def fwd(params: dict, x_q, x_kv, mask, n_heads: int, cache: KVCache | None = None, position=None):
    """x_q (B, T, D) attends to x_kv (B, S, D) -> (y (B, T, D), saved). Self-attention passes x_q as x_kv.

    With a `cache` (decoding, eval mode: no backward follows) the keys and values are the cache's
    and the second value returned is the updated cache, not residuals. x_kv None attends to the
    cache as it is (cross-attention over the memory, see project_kv); x_kv (B, 1, D) first writes
    its keys and values in at `position` (self-attention over the positions decoded so far). The
    mask then covers the cache's positions."""
    q, saved_q = linear.fwd(projection(params, "q"), x_q)
    if cache is None:
        k, saved_k = linear.fwd(projection(params, "k"), x_kv)
        v, saved_v = linear.fwd(projection(params, "v"), x_kv)
        k, v = split_heads(k, n_heads), split_heads(v, n_heads)
    else:
        if x_kv is not None:
            cache = _write(cache, project_kv(params, x_kv, n_heads), position)
        k, v = cache
    heads, saved_dot = dot_product_fwd(split_heads(q, n_heads), k, v, mask)
    y, saved_o = linear.fwd(projection(params, "o"), merge_heads(heads))
    if cache is not None:
        return y, cache
    return y, Saved(saved_q, saved_k, saved_v, saved_dot, saved_o)


def bwd(saved: Saved, g, n_heads: int):
    """-> (dparams, dx_q, dx_kv). For self-attention the caller adds dx_q and dx_kv."""
    d_o, d_heads = linear.bwd(saved.o, g)
    dq, dk, dv = dot_product_bwd(saved.dot_product, split_heads(d_heads, n_heads))
    d_q, dx_q = linear.bwd(saved.q, merge_heads(dq))
    d_k, dx_k = linear.bwd(saved.k, merge_heads(dk))
    d_v, dx_v = linear.bwd(saved.v, merge_heads(dv))
    dparams = {}
    for name, d in zip(PROJECTIONS, (d_q, d_k, d_v, d_o)):
        dparams[f"w_{name}"], dparams[f"b_{name}"] = d["w"], d["b"]
    return dparams, dx_q, dx_k + dx_v


def apply(params: dict, x_q, x_kv, mask, n_heads: int):
    return fwd(params, x_q, x_kv, mask, n_heads)[0]
