"""Encoder and decoder blocks (paper §3.1, Figure 1), each a chain of residual sublayers.

encoder block: self-attention, feed-forward.
decoder block: causal self-attention, cross-attention over the encoder's memory, feed-forward.
params: {"self_attn", "ln1", "ffn", "ln2"} and {"self_attn", "ln1", "cross_attn", "ln2", "ffn", "ln3"}.
"""

from __future__ import annotations

from backends import array_namespace
from backends import random as jrandom

from . import attention, dropout, feed_forward, layer_norm, residual


def _self_attention(params, mask, n_heads):
    return lambda h: attention.fwd(params, h, h, mask, n_heads)


def _self_attention_bwd(res, g):
    d_params, dx_q, dx_kv = attention.bwd(res, g)
    return d_params, dx_q + dx_kv  # the input was both the queries and the keys/values


def _cross_attention(params, memory, mask, n_heads):
    return lambda h: attention.fwd(params, h, memory, mask, n_heads)


def _feed_forward(params, activation):
    return lambda h: feed_forward.fwd(params, h, activation)


def encoder_block_init(key, cfg) -> dict:
    dtype = getattr(array_namespace(key), cfg.dtype)
    k_attn, k_ffn = jrandom.split(key, 2)
    return {
        "self_attn": attention.init(k_attn, cfg.d_model, dtype),
        "ln1": layer_norm.init(key, cfg.d_model, dtype),
        "ffn": feed_forward.init(k_ffn, cfg.d_model, cfg.d_ff, dtype),
        "ln2": layer_norm.init(key, cfg.d_model, dtype),
    }


def encoder_block_fwd(params: dict, x, mask, cfg, key=None, train: bool = False):
    """x (B, S, D), mask (B, 1, 1, S) -> (B, S, D)."""
    k1, k2 = dropout.split_keys(key, 2)
    common = dict(norm_first=cfg.norm_first, drop_rate=cfg.drop_rate, train=train)
    x, res_1 = residual.fwd(params["ln1"], x, _self_attention(params["self_attn"], mask, cfg.n_heads), key=k1, **common)
    x, res_2 = residual.fwd(params["ln2"], x, _feed_forward(params["ffn"], cfg.activation), key=k2, **common)
    return x, (res_1, res_2)


def encoder_block_bwd(res, g, cfg):
    """-> (dparams, dx)."""
    res_1, res_2 = res
    d_ln2, d_ffn, g, _ = residual.bwd(res_2, g, feed_forward.bwd, norm_first=cfg.norm_first)
    d_ln1, d_attn, g, _ = residual.bwd(res_1, g, _self_attention_bwd, norm_first=cfg.norm_first)
    return {"self_attn": d_attn, "ln1": d_ln1, "ffn": d_ffn, "ln2": d_ln2}, g


def decoder_block_init(key, cfg) -> dict:
    dtype = getattr(array_namespace(key), cfg.dtype)
    k_self, k_cross, k_ffn = jrandom.split(key, 3)
    return {
        "self_attn": attention.init(k_self, cfg.d_model, dtype),
        "ln1": layer_norm.init(key, cfg.d_model, dtype),
        "cross_attn": attention.init(k_cross, cfg.d_model, dtype),
        "ln2": layer_norm.init(key, cfg.d_model, dtype),
        "ffn": feed_forward.init(k_ffn, cfg.d_model, cfg.d_ff, dtype),
        "ln3": layer_norm.init(key, cfg.d_model, dtype),
    }


def decoder_block_fwd(params: dict, x, memory, self_mask, cross_mask, cfg, key=None, train: bool = False):
    """x (B, T, D), memory (B, S, D), self_mask (B, 1, T, T), cross_mask (B, 1, 1, S) -> (B, T, D)."""
    k1, k2, k3 = dropout.split_keys(key, 3)
    common = dict(norm_first=cfg.norm_first, drop_rate=cfg.drop_rate, train=train)
    x, res_1 = residual.fwd(params["ln1"], x, _self_attention(params["self_attn"], self_mask, cfg.n_heads), key=k1, **common)
    x, res_2 = residual.fwd(
        params["ln2"], x, _cross_attention(params["cross_attn"], memory, cross_mask, cfg.n_heads), key=k2, **common
    )
    x, res_3 = residual.fwd(params["ln3"], x, _feed_forward(params["ffn"], cfg.activation), key=k3, **common)
    return x, (res_1, res_2, res_3)


def decoder_block_bwd(res, g, cfg):
    """-> (dparams, dx, dmemory)."""
    res_1, res_2, res_3 = res
    d_ln3, d_ffn, g, _ = residual.bwd(res_3, g, feed_forward.bwd, norm_first=cfg.norm_first)
    d_ln2, d_cross, g, (d_memory,) = residual.bwd(res_2, g, attention.bwd, norm_first=cfg.norm_first)
    d_ln1, d_self, g, _ = residual.bwd(res_1, g, _self_attention_bwd, norm_first=cfg.norm_first)
    dparams = {"self_attn": d_self, "ln1": d_ln1, "cross_attn": d_cross, "ln2": d_ln2, "ffn": d_ffn, "ln3": d_ln3}
    return dparams, g, d_memory
