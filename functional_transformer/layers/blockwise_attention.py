"""Blockwise (flash-style) scaled dot-product attention: memory linear in the length.

The same function as attention.dot_product_fwd, softmax(q k^T / sqrt(Dh), mask) v, computed one
(query block, key block) tile at a time, so that no (T, S) matrix of a whole head ever exists:

- forward (online softmax, Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022): per query
  block a running row max m, a running sum l of exp(s - m) and an accumulator of exp(s - m) v;
  each key block rescales them by exp(m_old - m_new). The output is acc / l; the residual kept for
  the backward is the log-sum-exp m + log l per query, (B, H, T), not the probabilities.
- backward (FlashAttention-2): per tile the probabilities are recomputed as exp(s - logsumexp),
  and with D = rowsum(dO * O) the score gradient is p * (dO v^T - D): dq, dk and dv accumulate
  tile by tile.

Memory beyond the inputs and outputs is O(B * H * block_q * block_k) per tile. Causal attention
skips the tiles above the diagonal (about half of them) and builds the causal mask only on the
tiles that cross it. Grouped-query heads (k, v with n_kv_heads = H / G heads) are never repeated:
the G query heads of a key/value head are rows of one matmul against its keys.

Masks: `mask` is boolean, True where a query may attend, broadcastable to (B, H, T, S) with a batch
axis of 1 or B, a head axis of 1 or H and a query axis of 1 or T (a key padding mask is (B, 1, 1, S));
`causal=True` adds the causal mask without building it. A query with no key to attend to gets a zero
output and zero gradients, as softmax.fwd gives it.

On NumPy the tiles are a Python loop with the accumulators in place. On JAX they are `lax.map` and
`lax.fori_loop` under one `jax.custom_vjp` whose backward is the hand-written one above, so
`jax.grad` of a model using it keeps O(T * block) memory too (a plain loop would make jax.grad save
every tile's probabilities). T and S need not be multiples of the block sizes.

Scores, the running max and sum and the accumulator are at least float32 (bfloat16 inputs), as the
full kernel's softmax; the matmuls run in the inputs' dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from backends import array_namespace, backend_of

from . import attention, linear, rotary
from .precision import as_dtype, at_least_float32

# Tile sizes: for one causal attention layer of the tiny model (4 heads of 32) at T = 1,024 and 2,048,
# forward and backward on NumPy, tiles of 512 took less CPU time than tiles of 1,024 or 2,048 (the
# CPU of docs/speed/long.md); a tile of 4 heads is then 4 MiB of float32 scores.
BLOCK_Q = 512
BLOCK_K = 512


class Saved(NamedTuple):
    """The backward's residuals: the inputs, the output and each query's log-sum-exp. The weights only
    where one tile holds every query and key (NumPy): no more memory than a tile, and the backward
    is spared their recompute, which would make a short sequence slower than the full kernel."""

    q: Any  # (B, H, T, Dh)
    k: Any  # (B, Hkv, S, Dh)
    v: Any  # (B, Hkv, S, Dh)
    mask: Any  # as given to fwd, or None
    out: Any  # (B, H, T, Dh)
    logsumexp: Any  # (B, H, T), at least float32; +inf for a query that sees no key
    weights: Any = None  # the one tile's softmax weights (B, Hkv, G T, S), else None


def _check(q, k, v, mask) -> None:
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(
            f"blockwise attention takes q (B, H, T, Dh) and k, v (B, Hkv, S, Dh) of one shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[1] % k.shape[1]:
        raise ValueError(
            f"blockwise attention: q {tuple(q.shape)} and k {tuple(k.shape)} must share batch and head size, "
            "and q's heads must be a multiple of k's (grouped-query attention)"
        )
    if mask is not None:
        if mask.ndim != 4 or not array_namespace(mask).isdtype(mask.dtype, "bool"):
            raise ValueError(
                f"blockwise attention: mask must be boolean (B or 1, H or 1, T or 1, S), True where a query may "
                f"attend; got dtype {mask.dtype} with shape {tuple(mask.shape)} (parts.masks builds one)"
            )
        b, h, t, s = mask.shape
        if b not in (1, q.shape[0]) or h not in (1, q.shape[1]) or t not in (1, q.shape[2]) or s != k.shape[2]:
            raise ValueError(
                f"blockwise attention: mask {tuple(mask.shape)} must broadcast to (B, H, T, S) = "
                f"{(q.shape[0], q.shape[1], q.shape[2], k.shape[2])} with 1 or the full size on the first three axes"
            )


def _grouped_mask(mask, n_kv_heads: int):
    """mask (b, h, t, S) -> (b, Hkv or 1, G or 1, t, S): the head axis split as the query heads are."""
    if mask is None:
        return None
    b, h, t, s = mask.shape
    if h == 1:
        return array_namespace(mask).reshape(mask, (b, 1, 1, t, s))
    return array_namespace(mask).reshape(mask, (b, n_kv_heads, h // n_kv_heads, t, s))


def _tile_mask(mask_block, causal: bool, q_positions, k_positions, n_keys: int | None):
    """The mask of one tile, broadcastable to (B, Hkv, G, n, m), or None where every entry is kept.
    mask_block: the grouped mask's tile or None; q_positions (n,), k_positions (m,): the tile's
    positions, for the causal mask; n_keys: mask keys at positions >= n_keys (JAX's padding)."""
    keep = mask_block
    xp = array_namespace(q_positions)
    if causal:
        visible = q_positions[:, None] >= k_positions[None, :]
        keep = visible if keep is None else keep & visible
    if n_keys is not None:
        real = xp.reshape(k_positions < n_keys, (1, -1))
        keep = real if keep is None else keep & real
    return keep


def _scores(q_tile, k_tile, keep, groups: tuple):
    """q_tile (B, Hkv, G n, Dh) (scaled), k_tile (B, Hkv, m, Dh) -> s (B, Hkv, G n, m), masked to -inf."""
    xp = array_namespace(q_tile)
    s = at_least_float32(q_tile @ k_tile.mT)
    if keep is None:
        return s
    batch, n_kv, n_groups, n = groups
    s5 = xp.reshape(s, (batch, n_kv, n_groups, n, s.shape[-1]))
    if isinstance(s5, np.ndarray):  # s is new: masked in place, one pass and no second tile
        np.copyto(s5, -np.inf, where=~keep)
        return s
    s5 = xp.where(keep, s5, xp.asarray(-xp.inf, dtype=s.dtype))
    return xp.reshape(s5, s.shape)


def _exp_shifted(s, shift):
    """exp(s - shift); on NumPy in place over s, a tile the caller no longer needs."""
    if isinstance(s, np.ndarray):
        np.subtract(s, shift, out=s)
        return np.exp(s, out=s)
    return array_namespace(s).exp(s - shift)


def _online_update(state, s, v_tile):
    """One key tile into the running (max, sum, accumulator) of a query tile: the online softmax."""
    xp = array_namespace(s)
    row_max, total, acc = state
    new_max = xp.maximum(row_max, xp.max(s, axis=-1, keepdims=True))
    # A row that has seen only masked keys keeps max -inf; shift it by 0 so exp gives 0, not NaN.
    shift = xp.where(new_max == -xp.inf, xp.asarray(0, dtype=s.dtype), new_max)
    p = _exp_shifted(s, shift)
    rescale = xp.exp(row_max - shift)
    total = total * rescale + xp.sum(p, axis=-1, keepdims=True)
    acc = acc * rescale + as_dtype(p, v_tile.dtype) @ v_tile
    return (new_max, total, acc), p


def _finish(state, dtype):
    """(max, sum, accumulator) -> (out tile in dtype, log-sum-exp (+inf where no key was seen))."""
    xp = array_namespace(state[2])
    row_max, total, acc = state
    seen = total > 0
    safe_total = xp.where(seen, total, xp.asarray(1, dtype=total.dtype))
    out = acc / safe_total
    # +inf makes exp(s - lse) zero in the backward for every key of a row that saw none.
    lse = xp.where(seen, row_max + xp.log(safe_total), xp.inf)
    return as_dtype(out, dtype), lse[..., 0]


def _tile_grads(q_tile, k_tile, v_tile, g_tile, lse_tile, delta_tile, keep, groups, scale: float, p=None):
    """The backward of one tile -> (dq_tile, dk_tile, dv_tile) to add, dq and dk scaled: q_tile is
    scaled; lse_tile and delta_tile (B, Hkv, G n, 1); p: the tile's weights if kept, else recomputed."""
    if p is None:
        p = _exp_shifted(_scores(q_tile, k_tile, keep, groups), lse_tile)
    dv = as_dtype(p, g_tile.dtype).mT @ g_tile
    dp = at_least_float32(g_tile @ v_tile.mT)
    if isinstance(dp, np.ndarray):  # dp is new: the score gradient p * (dp - D) in place
        dp -= delta_tile
        dp *= p
        ds = dp
    else:
        ds = p * (dp - delta_tile)
    ds = as_dtype(ds, q_tile.dtype)
    return (ds @ k_tile) * scale, ds.mT @ q_tile, dv


def _shapes(q, k):
    batch, n_heads, length, d_head = q.shape
    n_kv = k.shape[1]
    return batch, n_kv, n_heads // n_kv, length, d_head


def fwd(q, k, v, mask=None, *, causal: bool = False, block_q: int = BLOCK_Q, block_k: int = BLOCK_K):
    """softmax(q k^T / sqrt(Dh), mask, causal) v, tile by tile. q (B, H, T, Dh), k and v (B, Hkv, S, Dh)
    with H a multiple of Hkv -> (out (B, H, T, Dh), Saved). causal needs T == S."""
    _check(q, k, v, mask)
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs as many queries as keys, got {q.shape[2]} and {k.shape[2]}")
    if backend_of(q).name == "jax":
        out, lse = _jax_kernels(causal, block_q, block_k)[0](q, k, v, mask)
        lse = backend_of(q).stop_gradient(lse)  # a by-product: its cotangent is taken to be zero
    else:
        out, lse, weights = _loop_fwd(q, k, v, mask, causal, block_q, block_k)
        return out, Saved(q, k, v, mask, out, lse, weights)
    return out, Saved(q, k, v, mask, out, lse)


def bwd(saved: Saved, g, *, causal: bool = False, block_q: int = BLOCK_Q, block_k: int = BLOCK_K):
    """g = dL/dout (B, H, T, Dh) -> (dq, dk, dv), the settings as given to fwd."""
    if backend_of(g).name == "jax":
        return _jax_kernels(causal, block_q, block_k)[1](saved, g)
    return _loop_bwd(saved, g, causal, block_q, block_k)


def apply(q, k, v, mask=None, *, causal: bool = False, block_q: int = BLOCK_Q, block_k: int = BLOCK_K):
    return fwd(q, k, v, mask, causal=causal, block_q=block_q, block_k=block_k)[0]


# --- multi-head attention over the blockwise kernel ----------------------------------------------


class HeadsSaved(NamedTuple):
    """multi_head_fwd's residuals."""

    inputs: tuple  # linear.Saved: (q, k, v fused) for self-attention, (q, (k, v) fused) for cross
    rotation: Any  # rotary.Table, or None without rotary positions
    dot_product: Saved
    o: linear.Saved


def multi_head_fwd(params: dict, x_q, x_kv, mask, n_heads: int, n_kv_heads: int, *, causal=False, rope_base=None):
    """attention.fwd / attention.grouped_fwd with the blockwise kernel: x_q (B, T, D) attends to x_kv
    (B, S, D) (the very object x_q for self-attention) -> (y (B, T, D), HeadsSaved). params are
    attention.init's or grouped_init's (with or without biases); `mask` as fwd takes it."""
    xp = array_namespace(x_q)
    d_model = x_q.shape[-1]
    d_kv = n_kv_heads * (d_model // n_heads)
    if x_kv is x_q:
        h, saved_qkv = linear.fwd(attention._grouped_linear(params, ("q", "k", "v")), x_q)
        q, k, v = h[..., :d_model], h[..., d_model : d_model + d_kv], h[..., d_model + d_kv :]
        saved_inputs = (saved_qkv,)
    else:
        q, saved_q = linear.fwd(attention._grouped_linear(params, ("q",)), x_q)
        h, saved_kv = linear.fwd(attention._grouped_linear(params, ("k", "v")), x_kv)
        k, v = h[..., :d_kv], h[..., d_kv:]
        saved_inputs = (saved_q, saved_kv)
    q, k, v = (
        attention.split_heads(q, n_heads),
        attention.split_heads(k, n_kv_heads),
        attention.split_heads(v, n_kv_heads),
    )
    rotation = None
    if rope_base is not None:
        rotation = rotary.table(x_q.shape[1], d_model // n_heads, x_q.dtype, xp, 0, rope_base)
        q, k = rotary.fwd(q, rotation), rotary.fwd(k, rotation)
    heads, saved_dot = fwd(q, k, v, mask, causal=causal)
    y, saved_o = linear.fwd(attention._grouped_linear(params, ("o",)), attention.merge_heads(heads))
    return y, HeadsSaved(saved_inputs, rotation, saved_dot, saved_o)


def multi_head_bwd(saved: HeadsSaved, g, *, causal=False, bias: bool = True):
    """-> (dparams, dx_q, dx_kv): dx_kv is None for self-attention (dx_q is the whole input's)."""
    xp = array_namespace(g)
    d_o, d_heads = linear.bwd(saved.o, g, bias)
    dq, dk, dv = bwd(saved.dot_product, attention.split_heads(d_heads, saved.dot_product.q.shape[1]), causal=causal)
    if saved.rotation is not None:
        dq, dk = rotary.bwd(saved.rotation, dq), rotary.bwd(saved.rotation, dk)
    dq, dk, dv = attention.merge_heads(dq), attention.merge_heads(dk), attention.merge_heads(dv)
    widths = {"q": dq.shape[-1], "k": dk.shape[-1], "v": dv.shape[-1]}
    if len(saved.inputs) == 1:
        d_in, dx_q = linear.bwd(saved.inputs[0], xp.concat([dq, dk, dv], axis=-1), bias)
        groups, dx_kv = ((("q", "k", "v"), d_in),), None
    else:
        d_in_q, dx_q = linear.bwd(saved.inputs[0], dq, bias)
        d_in_kv, dx_kv = linear.bwd(saved.inputs[1], xp.concat([dk, dv], axis=-1), bias)
        groups = ((("q",), d_in_q), (("k", "v"), d_in_kv))
    dparams = {}
    for names, d_in in groups:
        start = 0
        for name in names:
            columns = slice(start, start + widths[name])
            dparams[f"w_{name}"] = d_in["w"][:, columns]
            if bias:
                dparams[f"b_{name}"] = d_in["b"][columns]
            start += widths[name]
    dparams["w_o"] = d_o["w"]
    if bias:
        dparams["b_o"] = d_o["b"]
    order = [f"{kind}_{name}" for name in attention.PROJECTIONS for kind in "wb"]
    return {name: dparams[name] for name in order if name in dparams}, dx_q, dx_kv


# --- NumPy (and any eager namespace): a Python loop over tiles -----------------------------------


def _key_stop(i1: int, n_keys: int, causal: bool) -> int:
    """The end of the keys a query tile ending at i1 sees: causal queries see no later key."""
    return min(i1, n_keys) if causal else n_keys


def _contiguous(x):
    """x in C order: NumPy's batched matmul over strided heads (split_heads' views) falls off BLAS's
    fast path, several times slower on a tile (docs/speed/long.md)."""
    return np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x


def _loop_tile_mask(mask_g, causal, i0, i1, j0, j1, xp):
    """One tile's mask on the loop path; the causal part only where the tile crosses the diagonal."""
    mask_block = None
    if mask_g is not None:
        rows = slice(i0, i1) if mask_g.shape[3] > 1 else slice(None)
        mask_block = mask_g[:, :, :, rows, j0:j1]
    crosses = causal and j1 - 1 > i0
    return _tile_mask(mask_block, crosses, xp.arange(i0, i1), xp.arange(j0, j1), None)


def _loop_fwd(q, k, v, mask, causal, block_q, block_k):
    xp = array_namespace(q)
    batch, n_kv, n_groups, length, d_head = shapes = _shapes(q, k)
    scale = 1.0 / math.sqrt(d_head)
    q_g = xp.reshape(q, shapes)
    k, v = _contiguous(k), _contiguous(v)
    mask_g = _grouped_mask(mask, n_kv)
    out = xp.empty(shapes, dtype=q.dtype)
    acc_dtype = at_least_float32(q[:0, :0, :0]).dtype
    lse = xp.empty((batch, n_kv, n_groups, length), dtype=acc_dtype)
    state = p = None  # the last tile's, kept when there is only one
    for i0 in range(0, length, block_q):
        i1 = min(i0 + block_q, length)
        rows = n_groups * (i1 - i0)
        q_tile = xp.reshape(q_g[:, :, :, i0:i1] * scale, (batch, n_kv, rows, d_head))
        state = (
            xp.full((batch, n_kv, rows, 1), -xp.inf, dtype=acc_dtype),
            xp.zeros((batch, n_kv, rows, 1), dtype=acc_dtype),
            xp.zeros((batch, n_kv, rows, d_head), dtype=acc_dtype),
        )
        for j0 in range(0, _key_stop(i1, k.shape[2], causal), block_k):
            j1 = min(j0 + block_k, k.shape[2])
            keep = _loop_tile_mask(mask_g, causal, i0, i1, j0, j1, xp)
            s = _scores(q_tile, k[:, :, j0:j1], keep, (batch, n_kv, n_groups, i1 - i0))
            state, p = _online_update(state, s, v[:, :, j0:j1])
        out_tile, lse_tile = _finish(state, q.dtype)
        out[:, :, :, i0:i1] = xp.reshape(out_tile, (batch, n_kv, n_groups, i1 - i0, d_head))
        lse[:, :, :, i0:i1] = xp.reshape(lse_tile, (batch, n_kv, n_groups, i1 - i0))
    weights = None
    if p is not None and state is not None and length <= block_q and k.shape[2] <= block_k:
        # One tile: p is exp(s - max), normalised here.
        p /= xp.where(state[1] > 0, state[1], xp.asarray(1, dtype=p.dtype))
        weights = p
    return xp.reshape(out, q.shape), xp.reshape(lse, q.shape[:3]), weights


def _loop_bwd(saved: Saved, g, causal, block_q, block_k):
    xp = array_namespace(g)
    q, k, v, mask, out, lse = saved[:6]
    batch, n_kv, n_groups, length, d_head = shapes = _shapes(q, k)
    scale = 1.0 / math.sqrt(d_head)
    q_g, g_g = xp.reshape(q, shapes), xp.reshape(g, shapes)
    k, v = _contiguous(k), _contiguous(v)
    lse_g = xp.reshape(lse, shapes[:4])
    delta_g = xp.sum(at_least_float32(g) * at_least_float32(out), axis=-1)
    delta_g = xp.reshape(delta_g, shapes[:4])
    mask_g = _grouped_mask(mask, n_kv)
    dq = xp.empty(shapes, dtype=q.dtype)  # every query tile is written below
    dk, dv = xp.zeros(k.shape, dtype=k.dtype), xp.zeros(v.shape, dtype=v.dtype)
    # The forward's one-tile weights serve only a backward that is one tile too (its blocks may differ).
    one_tile_weights = saved.weights if length <= block_q and k.shape[2] <= block_k else None
    for i0 in range(0, length, block_q):
        i1 = min(i0 + block_q, length)
        n = i1 - i0
        rows = (batch, n_kv, n_groups * n)

        def tile(x, i0=i0, i1=i1, rows=rows):
            return xp.reshape(x[:, :, :, i0:i1], (*rows, *x.shape[4:]))

        q_tile, g_tile = xp.reshape(q_g[:, :, :, i0:i1] * scale, (*rows, d_head)), tile(g_g)
        lse_tile, delta_tile = tile(lse_g)[..., None], tile(delta_g)[..., None]
        dq_tile = xp.zeros((*rows, d_head), dtype=q.dtype)
        for j0 in range(0, _key_stop(i1, k.shape[2], causal), block_k):
            j1 = min(j0 + block_k, k.shape[2])
            keep = _loop_tile_mask(mask_g, causal, i0, i1, j0, j1, xp)
            grads = _tile_grads(
                q_tile,
                k[:, :, j0:j1],
                v[:, :, j0:j1],
                g_tile,
                lse_tile,
                delta_tile,
                keep,
                (batch, n_kv, n_groups, n),
                scale,
                one_tile_weights,
            )
            dq_tile += grads[0]
            dk[:, :, j0:j1] += grads[1]
            dv[:, :, j0:j1] += grads[2]
        dq[:, :, :, i0:i1] = xp.reshape(dq_tile, (batch, n_kv, n_groups, n, d_head))
    return xp.reshape(dq, q.shape), dk, dv


# --- JAX: lax loops under one custom_vjp --------------------------------------------------------


def _padded(x, axis: int, size: int, value):
    """x padded with `value` along `axis` to `size`."""
    xp = array_namespace(x)
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return xp.pad(x, widths, constant_values=value)


class _Tiling(NamedTuple):
    """The tile sizes (at most the lengths) and the padded lengths of a JAX call."""

    block_q: int
    block_k: int
    n_q: int  # query tiles
    n_k: int  # key tiles
    n_keys: int | None  # the real key count where keys were padded, else None


def _tiling(length: int, n_keys: int, block_q: int, block_k: int) -> _Tiling:
    block_q, block_k = min(block_q, length), min(block_k, n_keys)
    n_q, n_k = -(-length // block_q), -(-n_keys // block_k)
    return _Tiling(block_q, block_k, n_q, n_k, None if n_k * block_k == n_keys else n_keys)


def _jax_tile_mask(mask_g, causal, tiling: _Tiling, i0, j0):
    """One tile's mask at traced offsets i0 (queries) and j0 (keys)."""
    import jax.numpy as jnp
    from jax import lax

    mask_block = None
    if mask_g is not None:
        mask_block = lax.dynamic_slice_in_dim(mask_g, j0, tiling.block_k, axis=4)
        if mask_g.shape[3] > 1:
            mask_block = lax.dynamic_slice_in_dim(mask_block, i0, tiling.block_q, axis=3)
    q_positions, k_positions = i0 + jnp.arange(tiling.block_q), j0 + jnp.arange(tiling.block_k)
    return _tile_mask(mask_block, causal, q_positions, k_positions, tiling.n_keys)


def _jax_inputs(q, k, v, mask, tiling: _Tiling):
    """q grouped (B, Hkv, G, T', Dh) and scaled, k and v (B, Hkv, S', Dh), the grouped mask: padded."""
    shapes = _shapes(q, k)
    q_g = _padded(q.reshape(shapes) * (1.0 / math.sqrt(shapes[4])), 3, tiling.n_q * tiling.block_q, 0)
    k, v = (_padded(x, 2, tiling.n_k * tiling.block_k, 0) for x in (k, v))
    mask_g = _grouped_mask(mask, shapes[1])
    if mask_g is not None:
        mask_g = _padded(mask_g, 4, tiling.n_k * tiling.block_k, False)
        if mask_g.shape[3] > 1:
            mask_g = _padded(mask_g, 3, tiling.n_q * tiling.block_q, True)
    return q_g, k, v, mask_g


def _rows(x_g, i0, block: int):
    """The tile of queries i0 .. i0 + block of x_g (B, Hkv, G, T', ...) as rows (B, Hkv, G block, ...)."""
    from jax import lax

    tile = lax.dynamic_slice_in_dim(x_g, i0, block, axis=3)
    return tile.reshape(tile.shape[0], tile.shape[1], tile.shape[2] * block, *tile.shape[4:])


def _jax_fwd(q, k, v, mask, causal, block_q, block_k):
    import jax.numpy as jnp
    from jax import lax

    batch, n_kv, n_groups, length, d_head = _shapes(q, k)
    tiling = _tiling(length, k.shape[2], block_q, block_k)
    q_g, k_p, v_p, mask_g = _jax_inputs(q, k, v, mask, tiling)
    acc_dtype = at_least_float32(q[:0, :0, :0]).dtype
    rows = n_groups * tiling.block_q

    def query_tile(i):
        i0 = i * tiling.block_q
        q_tile = _rows(q_g, i0, tiling.block_q)

        def key_tile(j, state):
            j0 = j * tiling.block_k
            keep = _jax_tile_mask(mask_g, causal, tiling, i0, j0)
            k_tile = lax.dynamic_slice_in_dim(k_p, j0, tiling.block_k, axis=2)
            s = _scores(q_tile, k_tile, keep, (batch, n_kv, n_groups, tiling.block_q))
            return _online_update(state, s, lax.dynamic_slice_in_dim(v_p, j0, tiling.block_k, axis=2))[0]

        state = (
            jnp.full((batch, n_kv, rows, 1), -jnp.inf, dtype=acc_dtype),
            jnp.zeros((batch, n_kv, rows, 1), dtype=acc_dtype),
            jnp.zeros((batch, n_kv, rows, d_head), dtype=acc_dtype),
        )
        # Causal: the key tiles up to the one holding the tile's last query; the rest are all masked.
        stop = jnp.minimum((i0 + tiling.block_q - 1) // tiling.block_k + 1, tiling.n_k) if causal else tiling.n_k
        return _finish(lax.fori_loop(0, stop, key_tile, state), q.dtype)

    out, lse = lax.map(query_tile, jnp.arange(tiling.n_q))  # (n_q, B, Hkv, G bq, Dh), (n_q, B, Hkv, G bq)
    out = out.reshape(tiling.n_q, batch, n_kv, n_groups, tiling.block_q, d_head).transpose(1, 2, 3, 0, 4, 5)
    lse = lse.reshape(tiling.n_q, batch, n_kv, n_groups, tiling.block_q).transpose(1, 2, 3, 0, 4)
    out = out.reshape(batch, n_kv * n_groups, -1, d_head)[:, :, :length]
    return out, lse.reshape(batch, n_kv * n_groups, -1)[:, :, :length]


def _jax_bwd(saved: Saved, g, causal, block_q, block_k):
    import jax.numpy as jnp
    from jax import lax

    q, k, v, mask, out, lse = saved[:6]
    batch, n_kv, n_groups, length, d_head = shapes = _shapes(q, k)
    scale = 1.0 / math.sqrt(d_head)
    tiling = _tiling(length, k.shape[2], block_q, block_k)
    q_g, k_p, v_p, mask_g = _jax_inputs(q, k, v, mask, tiling)
    padded_length = tiling.n_q * tiling.block_q
    g_g = _padded(g.reshape(shapes), 3, padded_length, 0)
    # Padded queries: lse +inf gives them zero probabilities, so they add nothing to dk and dv.
    lse_g = _padded(lse.reshape(shapes[:4]), 3, padded_length, jnp.inf)[..., None]
    delta = jnp.sum(at_least_float32(g) * at_least_float32(out), axis=-1)
    delta_g = _padded(delta.reshape(shapes[:4]), 3, padded_length, 0)[..., None]
    groups = (batch, n_kv, n_groups, tiling.block_q)

    def key_tile(dq, j):
        j0 = j * tiling.block_k
        k_tile = lax.dynamic_slice_in_dim(k_p, j0, tiling.block_k, axis=2)
        v_tile = lax.dynamic_slice_in_dim(v_p, j0, tiling.block_k, axis=2)

        def query_tile(i, carry):
            dq, dk_tile, dv_tile = carry
            i0 = i * tiling.block_q
            keep = _jax_tile_mask(mask_g, causal, tiling, i0, j0)
            tiles = (_rows(x, i0, tiling.block_q) for x in (q_g, g_g, lse_g, delta_g))
            dq_add, dk_add, dv_add = _tile_grads(*_first(tiles, k_tile, v_tile), keep, groups, scale)
            dq_old = lax.dynamic_slice_in_dim(dq, i0, tiling.block_q, axis=3)
            dq = lax.dynamic_update_slice_in_dim(dq, dq_old + dq_add.reshape(dq_old.shape), i0, axis=3)
            return dq, dk_tile + dk_add, dv_tile + dv_add

        zeros = jnp.zeros(k_tile.shape, dtype=k.dtype)
        # Causal: from the first query tile whose last query sees this key tile.
        start = j0 // tiling.block_q if causal else 0
        dq, dk_tile, dv_tile = lax.fori_loop(start, tiling.n_q, query_tile, (dq, zeros, zeros))
        return dq, (dk_tile, dv_tile)

    dq, (dk, dv) = lax.scan(key_tile, jnp.zeros(q_g.shape, dtype=q.dtype), jnp.arange(tiling.n_k))
    dq = dq.reshape(batch, n_kv * n_groups, -1, d_head)[:, :, :length]

    def keys(x):  # (n_k, B, Hkv, bk, Dh) -> (B, Hkv, S, Dh)
        return x.transpose(1, 2, 0, 3, 4).reshape(batch, n_kv, -1, d_head)[:, :, : k.shape[2]]

    return dq, keys(dk), keys(dv)


def _first(tiles, k_tile, v_tile):
    """(q, g, lse, delta) row tiles -> the argument order of _tile_grads."""
    q_tile, g_tile, lse_tile, delta_tile = tiles
    return q_tile, k_tile, v_tile, g_tile, lse_tile, delta_tile


@functools.cache
def _jax_kernels(causal: bool, block_q: int, block_k: int):
    """-> ((q, k, v, mask) -> (out, logsumexp), a jax.custom_vjp whose backward is _jax_bwd;
    (saved, g) -> (dq, dk, dv), that backward): jitted, so eager calls compile once per shape
    (inside a caller's jit they are inlined). One pair per setting."""
    import jax

    forward = jax.jit(lambda q, k, v, mask: _jax_fwd(q, k, v, mask, causal, block_q, block_k))
    backward = jax.jit(lambda saved, g: _jax_bwd(saved, g, causal, block_q, block_k))

    @jax.custom_vjp
    def attention(q, k, v, mask):
        return forward(q, k, v, mask)

    def fwd_rule(q, k, v, mask):
        out, lse = forward(q, k, v, mask)
        return (out, lse), Saved(q, k, v, mask, out, lse)

    def bwd_rule(saved, cotangents):
        g, _ = cotangents  # the log-sum-exp's: fwd stops its gradient, so it is zero
        dq, dk, dv = backward(saved, g)
        return dq, dk, dv, None

    attention.defvjp(fwd_rule, bwd_rule)
    return attention, backward
