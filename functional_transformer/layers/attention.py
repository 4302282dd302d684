"""Scaled dot-product attention and multi-head attention (paper §3.2).

Multi-head params: {"w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o"}, each w (d_model,
d_model). Heads are a batch axis of the matmuls, (B, H, T, Dh): no Python loop over heads.
Masks are boolean, True where a query may attend, broadcastable to (B, H, T_q, T_kv).
"""

from __future__ import annotations

import math

from backends import array_namespace
from backends import random as jrandom

from . import linear, softmax

PROJECTIONS = ("q", "k", "v", "o")


def init(key, d_model: int, dtype) -> dict:
    params = {}
    for name, k in zip(PROJECTIONS, jrandom.split(key, len(PROJECTIONS))):
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
    return p @ v, (q, k, v, p, scale)


def dot_product_bwd(res, g):
    """-> (dq, dk, dv)."""
    q, k, v, p, scale = res
    dv = p.mT @ g  # (B, H, S, Dh)
    d_scores = softmax.bwd(p, g @ v.mT)  # (B, H, T, S); zero where masked
    dq = (d_scores @ k) * scale
    dk = d_scores.mT @ (q * scale)
    return dq, dk, dv


def fwd(params: dict, x_q, x_kv, mask, n_heads: int):
    """x_q (B, T, D) attends to x_kv (B, S, D) -> (B, T, D). Self-attention passes x_q as x_kv."""
    q, res_q = linear.fwd(projection(params, "q"), x_q)
    k, res_k = linear.fwd(projection(params, "k"), x_kv)
    v, res_v = linear.fwd(projection(params, "v"), x_kv)
    heads, res_attn = dot_product_fwd(split_heads(q, n_heads), split_heads(k, n_heads), split_heads(v, n_heads), mask)
    y, res_o = linear.fwd(projection(params, "o"), merge_heads(heads))
    return y, (res_q, res_k, res_v, res_attn, res_o, n_heads)


def bwd(res, g):
    """-> (dparams, dx_q, dx_kv). For self-attention the caller adds dx_q and dx_kv."""
    res_q, res_k, res_v, res_attn, res_o, n_heads = res
    d_o, d_heads = linear.bwd(res_o, g)
    dq, dk, dv = dot_product_bwd(res_attn, split_heads(d_heads, n_heads))
    d_q, dx_q = linear.bwd(res_q, merge_heads(dq))
    d_k, dx_k = linear.bwd(res_k, merge_heads(dk))
    d_v, dx_v = linear.bwd(res_v, merge_heads(dv))
    dparams = {}
    for name, d in zip(PROJECTIONS, (d_q, d_k, d_v, d_o)):
        dparams[f"w_{name}"], dparams[f"b_{name}"] = d["w"], d["b"]
    return dparams, dx_q, dx_k + dx_v


def apply(params: dict, x_q, x_kv, mask, n_heads: int):
    return fwd(params, x_q, x_kv, mask, n_heads)[0]
