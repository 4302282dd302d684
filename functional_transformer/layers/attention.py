"""Scaled dot-product attention and multi-head attention (paper §3.2).

Multi-head params: {"w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o"}, each w (d_model,
d_model). Heads are a batch axis of the matmuls, (B, H, T, Dh): no Python loop over heads.
Masks are boolean, True where a query may attend, broadcastable to (B, H, T_q, T_kv).

The input projections that read the same input run as one matmul on the weights side by side:
q, k, v (d_model, 3 d_model) for self-attention, k, v (d_model, 2 d_model) for cross-attention's
memory, as PyTorch's in_proj_weight. One wider matmul is faster than three narrow ones on both
backends, concatenating the weights included; the params keep one matrix per projection.

Today's decoders change three things, in `grouped_init` / `grouped_fwd` / `grouped_bwd` (the
paper's `fwd` / `bwd` above stay as they were, number for number):
- grouped-query attention (Ainslie et al. 2023): n_kv_heads < n_heads key/value heads, each shared
  by n_heads / n_kv_heads query heads (n_kv_heads = 1 is multi-query attention); w_k and w_v are
  (d_model, n_kv_heads * Dh). The backward sums the shared heads' gradients;
- no biases (Llama): params without "b_q", ..., "b_o";
- rotary positions (layers/rotary.py) applied to the queries and keys of each head.

For decoding, `fwd` takes an optional key/value cache (`KVCache`): the keys and values of earlier
positions (self-attention) or of the encoder's memory (cross-attention), so that one new query
costs one projection instead of re-projecting every key.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from backends import array_namespace, backend_of
from backends import prng as ftrandom

from . import linear, rotary, softmax

PROJECTIONS = ("q", "k", "v", "o")
# The input projections, grouped by the input they read (one matmul per group).
SELF_INPUTS = (("q", "k", "v"),)
CROSS_INPUTS = (("q",), ("k", "v"))


class DotProductSaved(NamedTuple):
    q: Any  # (B, H, T, Dh)
    k: Any  # (B, H, S, Dh)
    v: Any  # (B, H, S, Dh)
    p: Any  # (B, H, T, S), the attention weights


class Saved(NamedTuple):
    """The input projections' residuals, the dot product's and the output projection's."""

    inputs: tuple  # linear.Saved per group of SELF_INPUTS (one) or CROSS_INPUTS (two)
    dot_product: DotProductSaved
    o: linear.Saved


class KVCache(NamedTuple):
    """Keys and values kept across decoding steps, (B, H, S, Dh) each."""

    k: Any
    v: Any


def init(key, d_model: int, dtype) -> dict:
    params = {}
    for name, k in zip(PROJECTIONS, ftrandom.split(key, len(PROJECTIONS))):
        proj = linear.init(k, d_model, d_model, dtype)
        params[f"w_{name}"], params[f"b_{name}"] = proj["w"], proj["b"]
    return params


def projection(params: dict, name: str) -> dict:
    """The linear-layer params of projection `name` ("q", "k", "v" or "o")."""
    return {"w": params[f"w_{name}"], "b": params[f"b_{name}"]}


def fused_projection(params: dict, names: tuple) -> dict:
    """The linear-layer params of projections `names` side by side: w (D, len(names) D), b (len(names) D)."""
    if len(names) == 1:
        return projection(params, names[0])
    xp = array_namespace(params["w_q"])
    return {
        "w": xp.concat([params[f"w_{name}"] for name in names], axis=1),
        "b": xp.concat([params[f"b_{name}"] for name in names]),
    }


def _project_heads(params: dict, x, names: tuple, n_heads: int):
    """x (B, T, D) -> ((B, H, T, Dh) per name, saved): the projections `names` as one matmul."""
    xp = array_namespace(x)
    y, saved = linear.fwd(fused_projection(params, names), x)  # (B, T, n D)
    batch, length, _ = x.shape
    d_head = x.shape[-1] // n_heads
    # One transpose for all of them: (B, T, n, H, Dh) -> (n, B, H, T, Dh).
    heads = xp.permute_dims(xp.reshape(y, (batch, length, len(names), n_heads, d_head)), (2, 0, 3, 1, 4))
    return tuple(heads[i, ...] for i in range(len(names))), saved


def _project_heads_bwd(saved: linear.Saved, d_heads: tuple, splits: tuple):
    """The backward of _project_heads: d_heads (B, H, T, Dh) per name -> (dparams per name, dx per
    group), the names grouped as `splits` gives: one matmul for the weights' gradient, one per group
    for the input's (self-attention's caller adds the queries' and the keys/values' parts)."""
    xp = array_namespace(d_heads[0])
    n, (batch, n_heads, length, d_head) = len(d_heads), d_heads[0].shape
    d_model = n_heads * d_head
    if isinstance(d_heads[0], np.ndarray):  # one copy into (B, T, n, H, Dh), not a stack and a copy
        g = np.empty((batch, length, n, n_heads, d_head), dtype=np.result_type(*d_heads))
        for i, d_head_i in enumerate(d_heads):
            g[:, :, i] = np.permute_dims(d_head_i, (0, 2, 1, 3))
        g = g.reshape(batch * length, n * d_model)
    else:
        g = xp.reshape(xp.permute_dims(xp.stack(d_heads), (1, 3, 0, 2, 4)), (batch * length, n * d_model))
    d_w, d_b = saved.x2.mT @ g, xp.sum(g, axis=0)
    dparams, dxs, start = [], [], 0
    for size in splits:
        block = slice(start * d_model, (start + size) * d_model)
        dxs.append(xp.reshape(g[:, block] @ saved.w[:, block].mT, (batch, length, d_model)))
        start += size
    for i in range(n):
        block = slice(i * d_model, (i + 1) * d_model)
        dparams.append({"w": d_w[:, block], "b": d_b[block]})
    return dparams, dxs


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
    dq = d_scores @ k
    dq *= scale  # dq is new: in place on NumPy, rebound on JAX
    dk = d_scores.mT @ (q * scale)
    return dq, dk, dv


def project_kv(params: dict, x_kv, n_heads: int) -> KVCache:
    """x_kv (B, S, D) -> its keys and values, (B, H, S, Dh) each: a cache of the memory for cross-attention."""
    return KVCache(*_project_heads(params, x_kv, ("k", "v"), n_heads)[0])


def _write(cache: KVCache, new: KVCache, position) -> KVCache:
    """The cache with one position's keys and values (B, H, 1, Dh) written in at `position`."""
    backend = backend_of(cache.k)
    at = (slice(None), slice(None), position)
    return KVCache(backend.set_at(cache.k, at, new.k[:, :, 0]), backend.set_at(cache.v, at, new.v[:, :, 0]))


def fwd(
    params: dict, x_q, x_kv, mask, n_heads: int, cache: KVCache | None = None, position=None
) -> tuple[Any, Any]:  # (y, Saved), or with a cache (y, KVCache)
    """x_q (B, T, D) attends to x_kv (B, S, D) -> (y (B, T, D), saved). Self-attention passes x_q as x_kv.

    With a `cache` (decoding, eval mode: no backward follows) the keys and values are the cache's
    and the second value returned is the updated cache, not residuals. x_kv None attends to the
    cache as it is (cross-attention over the memory, see project_kv); x_kv (B, 1, D) first writes
    its keys and values in at `position` (self-attention over the positions decoded so far). The
    mask then covers the cache's positions. x_kv given as the very object x_q is self-attention:
    its q, k and v are one matmul."""
    if x_kv is x_q:  # self-attention
        (q, k, v), saved_qkv = _project_heads(params, x_q, ("q", "k", "v"), n_heads)
        saved_inputs = (saved_qkv,)
        if cache is not None:
            cache = _write(cache, KVCache(k, v), position)
            k, v = cache
    else:
        (q,), saved_q = _project_heads(params, x_q, ("q",), n_heads)
        saved_inputs = (saved_q,)
        if cache is None:
            (k, v), saved_kv = _project_heads(params, x_kv, ("k", "v"), n_heads)
            saved_inputs += (saved_kv,)
        else:
            if x_kv is not None:
                cache = _write(cache, project_kv(params, x_kv, n_heads), position)
            k, v = cache
    heads, saved_dot = dot_product_fwd(q, k, v, mask)
    y, saved_o = linear.fwd(projection(params, "o"), merge_heads(heads))
    if cache is not None:
        return y, cache
    return y, Saved(saved_inputs, saved_dot, saved_o)


def bwd(saved: Saved, g, n_heads: int):
    """-> (dparams, dx_q, dx_kv). For self-attention the caller adds dx_q and dx_kv."""
    d_o, d_heads = linear.bwd(saved.o, g)
    d_qkv: dict[str, Any] = dict(
        zip(("q", "k", "v"), dot_product_bwd(saved.dot_product, split_heads(d_heads, n_heads)))
    )
    dparams, dxs = {}, []
    groups = SELF_INPUTS if len(saved.inputs) == 1 else CROSS_INPUTS
    for names, saved_in in zip(groups, saved.inputs):
        splits = (1, 2) if len(names) == 3 else (len(names),)  # dx_q apart from dx_kv
        d_in, dx_in = _project_heads_bwd(saved_in, tuple(d_qkv[name] for name in names), splits)
        for name, d in zip(names, d_in):
            dparams[f"w_{name}"], dparams[f"b_{name}"] = d["w"], d["b"]
        dxs += dx_in
    dparams["w_o"], dparams["b_o"] = d_o["w"], d_o["b"]
    dx_q, dx_kv = dxs
    return {f"{kind}_{name}": dparams[f"{kind}_{name}"] for name in PROJECTIONS for kind in "wb"}, dx_q, dx_kv


def apply(params: dict, x_q, x_kv, mask, n_heads: int):
    return fwd(params, x_q, x_kv, mask, n_heads)[0]


# --- grouped-query attention, optionally without biases and with rotary positions -------------


class GroupedSaved(NamedTuple):
    qkv: linear.Saved  # the fused q, k, v projection
    rotation: Any  # rotary.Table, or None without rotary positions
    dot_product: DotProductSaved  # k and v repeated to n_heads
    o: linear.Saved


def grouped_init(key, d_model: int, n_heads: int, n_kv_heads: int, dtype, bias: bool = True) -> dict:
    """{"w_q": (D, D), "w_k", "w_v": (D, n_kv_heads * Dh), "w_o": (D, D)} and, with bias, "b_q", ..."""
    d_kv = n_kv_heads * (d_model // n_heads)
    widths = {"q": d_model, "k": d_kv, "v": d_kv, "o": d_model}
    params = {}
    for name, k in zip(PROJECTIONS, ftrandom.split(key, len(PROJECTIONS))):
        proj = linear.init(k, d_model, widths[name], dtype, bias)
        params[f"w_{name}"] = proj["w"]
        if bias:
            params[f"b_{name}"] = proj["b"]
    return params


def _grouped_linear(params: dict, names: tuple) -> dict:
    """The linear params of projections `names` side by side (no "b" without biases)."""
    xp = array_namespace(params["w_o"])

    def join(kind, axis):
        arrays = [params[f"{kind}_{name}"] for name in names]
        return arrays[0] if len(arrays) == 1 else xp.concat(arrays, axis=axis)

    return {"w": join("w", 1)} | ({"b": join("b", 0)} if "b_o" in params else {})


def repeat_kv(x, n_rep: int):
    """(B, Hkv, S, Dh) -> (B, Hkv * n_rep, S, Dh): query head j reads key/value head j // n_rep."""
    if n_rep == 1:
        return x
    xp = array_namespace(x)
    batch, n_kv, length, d_head = x.shape
    return xp.reshape(
        xp.broadcast_to(x[:, :, None], (batch, n_kv, n_rep, length, d_head)), (batch, n_kv * n_rep, length, d_head)
    )


def repeat_kv_bwd(g, n_rep: int):
    """The backward of repeat_kv: each key/value head gets the sum of its query heads' gradients."""
    if n_rep == 1:
        return g
    xp = array_namespace(g)
    batch, n_heads, length, d_head = g.shape
    return xp.sum(xp.reshape(g, (batch, n_heads // n_rep, n_rep, length, d_head)), axis=2)


def grouped_fwd(
    params: dict,
    x,
    mask,
    n_heads: int,
    n_kv_heads: int,
    rope_base: float | None = None,
    cache: KVCache | None = None,
    position=None,
) -> tuple[Any, Any]:  # (y, GroupedSaved), or with a cache (y, KVCache)
    """Self-attention of x (B, T, D) with n_kv_heads key/value heads -> (y (B, T, D), saved).

    rope_base: rotate queries and keys (rotary.py) with this base, None for no rotation. With a
    `cache` of (B, n_kv_heads, max_len, Dh) keys (rotated) and values, x is the one position at
    `position` (decoding, eval mode): its keys and values are written in, and the second value
    returned is the updated cache."""
    xp = array_namespace(x)
    batch, length, d_model = x.shape
    d_head = d_model // n_heads
    d_kv = n_kv_heads * d_head
    h, saved_qkv = linear.fwd(_grouped_linear(params, ("q", "k", "v")), x)  # (B, T, D + 2 d_kv)
    q = split_heads(h[..., :d_model], n_heads)
    k = split_heads(h[..., d_model : d_model + d_kv], n_kv_heads)
    v = split_heads(h[..., d_model + d_kv :], n_kv_heads)
    rotation = None
    if rope_base is not None:
        rotation = rotary.table(length, d_head, x.dtype, xp, 0 if position is None else position, rope_base)
        q, k = rotary.fwd(q, rotation), rotary.fwd(k, rotation)
    if cache is not None:
        cache = _write(cache, KVCache(k, v), position)
        k, v = cache
    n_rep = n_heads // n_kv_heads
    heads, saved_dot = dot_product_fwd(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), mask)
    y, saved_o = linear.fwd(_grouped_linear(params, ("o",)), merge_heads(heads))
    if cache is not None:
        return y, cache
    return y, GroupedSaved(saved_qkv, rotation, saved_dot, saved_o)


def grouped_bwd(saved: GroupedSaved, g, n_heads: int, n_kv_heads: int, bias: bool = True):
    """-> (dparams, dx); the settings as given to grouped_init and grouped_fwd."""
    xp = array_namespace(g)
    n_rep = n_heads // n_kv_heads
    d_o, d_heads = linear.bwd(saved.o, g, bias)
    dq, dk, dv = dot_product_bwd(saved.dot_product, split_heads(d_heads, n_heads))
    dk, dv = repeat_kv_bwd(dk, n_rep), repeat_kv_bwd(dv, n_rep)
    if saved.rotation is not None:
        dq, dk = rotary.bwd(saved.rotation, dq), rotary.bwd(saved.rotation, dk)
    d_qkv = xp.concat([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)
    d_in, dx = linear.bwd(saved.qkv, d_qkv, bias)
    d_model, d_kv = dq.shape[1] * dq.shape[3], dk.shape[1] * dk.shape[3]
    columns = {"q": slice(0, d_model), "k": slice(d_model, d_model + d_kv), "v": slice(d_model + d_kv, None)}
    dparams = {}
    for name in PROJECTIONS:
        if name == "o":
            dparams["w_o"] = d_o["w"]
            if bias:
                dparams["b_o"] = d_o["b"]
            continue
        dparams[f"w_{name}"] = d_in["w"][:, columns[name]]
        if bias:
            dparams[f"b_{name}"] = d_in["b"][columns[name]]
    return dparams, dx
