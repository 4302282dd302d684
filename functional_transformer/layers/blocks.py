"""Encoder and decoder blocks (paper §3.1, Figure 1), each a chain of residual sublayers.

encoder block: self-attention, feed-forward.
decoder block: causal self-attention, cross-attention over the encoder's memory, feed-forward.
params: {"self_attn", "ln1", "ffn", "ln2"} and {"self_attn", "ln1", "cross_attn", "ln2", "ffn", "ln3"}.

The decoder block is written once (`_decoder_block`): training runs it over whole sequences
(`decoder_block_fwd`), cached decoding one position at a time over a key/value cache
(`decoder_block_step`).
"""

from __future__ import annotations

from typing import NamedTuple

from backends import array_namespace, with_x64_scope
from backends import random as ftrandom

from . import attention, dropout, feed_forward, layer_norm, residual


class EncoderBlockSaved(NamedTuple):
    self_attn: residual.Saved
    ffn: residual.Saved


class DecoderBlockSaved(NamedTuple):
    self_attn: residual.Saved
    cross_attn: residual.Saved
    ffn: residual.Saved


def _self_attention(params, mask, n_heads, cache=None, position=None):
    return lambda h: attention.fwd(params, h, h, mask, n_heads, cache, position)


def _self_attention_bwd(n_heads):
    def bwd(saved, g):
        d_params, dx_q, dx_kv = attention.bwd(saved, g, n_heads)
        return d_params, dx_q + dx_kv  # the input was both the queries and the keys/values

    return bwd


def _cross_attention(params, memory, mask, n_heads, cache=None):
    return lambda h: attention.fwd(params, h, memory, mask, n_heads, cache)


def _cross_attention_bwd(n_heads):
    return lambda saved, g: attention.bwd(saved, g, n_heads)


def _feed_forward(params, activation):
    return lambda h: feed_forward.fwd(params, h, activation)


def _feed_forward_bwd(activation):
    return lambda saved, g: feed_forward.bwd(saved, g, activation)


def _residual_settings(cfg, train):
    return dict(norm_first=cfg.norm_first, drop_rate=cfg.drop_rate, train=train)


@with_x64_scope
def encoder_block_init(key, cfg) -> dict:
    dtype = getattr(array_namespace(key), cfg.dtype)
    k_attn, k_ffn = ftrandom.split(key, 2)
    return {
        "self_attn": attention.init(k_attn, cfg.d_model, dtype),
        "ln1": layer_norm.init(key, cfg.d_model, dtype),
        "ffn": feed_forward.init(k_ffn, cfg.d_model, cfg.d_ff, dtype),
        "ln2": layer_norm.init(key, cfg.d_model, dtype),
    }


def encoder_block_fwd(params: dict, x, mask, cfg, train: bool = False, key=None):
    """x (B, S, D), mask (B, 1, 1, S) -> (y (B, S, D), saved)."""
    k1, k2 = dropout.split_keys(key, 2)
    settings = _residual_settings(cfg, train)
    self_attention = _self_attention(params["self_attn"], mask, cfg.n_heads)
    x, saved_attn = residual.fwd(params["ln1"], x, self_attention, key=k1, **settings)
    x, saved_ffn = residual.fwd(params["ln2"], x, _feed_forward(params["ffn"], cfg.activation), key=k2, **settings)
    return x, EncoderBlockSaved(saved_attn, saved_ffn)


def encoder_block_bwd(saved: EncoderBlockSaved, g, cfg):
    """-> (dparams, dx)."""
    nf = cfg.norm_first
    d_ln2, d_ffn, g, _ = residual.bwd(saved.ffn, g, _feed_forward_bwd(cfg.activation), norm_first=nf)
    d_ln1, d_attn, g, _ = residual.bwd(saved.self_attn, g, _self_attention_bwd(cfg.n_heads), norm_first=nf)
    return {"self_attn": d_attn, "ln1": d_ln1, "ffn": d_ffn, "ln2": d_ln2}, g


@with_x64_scope
def decoder_block_init(key, cfg) -> dict:
    dtype = getattr(array_namespace(key), cfg.dtype)
    k_self, k_cross, k_ffn = ftrandom.split(key, 3)
    return {
        "self_attn": attention.init(k_self, cfg.d_model, dtype),
        "ln1": layer_norm.init(key, cfg.d_model, dtype),
        "cross_attn": attention.init(k_cross, cfg.d_model, dtype),
        "ln2": layer_norm.init(key, cfg.d_model, dtype),
        "ffn": feed_forward.init(k_ffn, cfg.d_model, cfg.d_ff, dtype),
        "ln3": layer_norm.init(key, cfg.d_model, dtype),
    }


def _decoder_block(params: dict, x, self_attention, cross_attention, cfg, train: bool, key):
    """The decoder block around two attention closures `h -> (out, saved)`: over whole sequences
    (training) or over a key/value cache (decoding), the same sublayers in the same order."""
    k1, k2, k3 = dropout.split_keys(key, 3)
    settings = _residual_settings(cfg, train)
    x, saved_self = residual.fwd(params["ln1"], x, self_attention, key=k1, **settings)
    x, saved_cross = residual.fwd(params["ln2"], x, cross_attention, key=k2, **settings)
    x, saved_ffn = residual.fwd(params["ln3"], x, _feed_forward(params["ffn"], cfg.activation), key=k3, **settings)
    return x, DecoderBlockSaved(saved_self, saved_cross, saved_ffn)


def decoder_block_fwd(params: dict, x, memory, self_mask, cross_mask, cfg, train: bool = False, key=None):
    """x (B, T, D), memory (B, S, D), self_mask (B, 1, T, T), cross_mask (B, 1, 1, S) -> (y (B, T, D), saved)."""
    self_attention = _self_attention(params["self_attn"], self_mask, cfg.n_heads)
    cross_attention = _cross_attention(params["cross_attn"], memory, cross_mask, cfg.n_heads)
    return _decoder_block(params, x, self_attention, cross_attention, cfg, train, key)


def decoder_block_bwd(saved: DecoderBlockSaved, g, cfg):
    """-> (dparams, dx, dmemory)."""
    nf = cfg.norm_first
    d_ln3, d_ffn, g, _ = residual.bwd(saved.ffn, g, _feed_forward_bwd(cfg.activation), norm_first=nf)
    d_ln2, d_cross, g, (d_memory,) = residual.bwd(saved.cross_attn, g, _cross_attention_bwd(cfg.n_heads), norm_first=nf)
    d_ln1, d_self, g, _ = residual.bwd(saved.self_attn, g, _self_attention_bwd(cfg.n_heads), norm_first=nf)
    dparams = {"self_attn": d_self, "ln1": d_ln1, "cross_attn": d_cross, "ln2": d_ln2, "ffn": d_ffn, "ln3": d_ln3}
    return dparams, g, d_memory


def decoder_block_cache(params: dict, memory, cfg, max_steps: int) -> dict:
    """The block's key/value cache for decoding {"self_k", "self_v", "cross_k", "cross_v"}: empty
    self-attention keys/values (B, H, max_steps, Dh) and the memory's (B, H, S, Dh), projected once."""
    xp = array_namespace(memory)
    empty = xp.zeros((memory.shape[0], cfg.n_heads, max_steps, cfg.d_head), dtype=memory.dtype)
    cross = attention.project_kv(params["cross_attn"], memory, cfg.n_heads)
    return {"self_k": empty, "self_v": empty, "cross_k": cross.k, "cross_v": cross.v}


def decoder_block_step(params: dict, x, cache: dict, position, self_mask, cross_mask, cfg):
    """x (B, 1, D) at `position` -> (y (B, 1, D), cache): the block in eval mode over its cache, with
    this position's self-attention keys/values written in. self_mask (B, 1, 1, max_steps) covers the
    cached positions, cross_mask (B, 1, 1, S) the memory's."""
    self_kv = attention.KVCache(cache["self_k"], cache["self_v"])
    cross_kv = attention.KVCache(cache["cross_k"], cache["cross_v"])
    self_attention = _self_attention(params["self_attn"], self_mask, cfg.n_heads, self_kv, position)
    cross_attention = _cross_attention(params["cross_attn"], None, cross_mask, cfg.n_heads, cross_kv)
    y, saved = _decoder_block(params, x, self_attention, cross_attention, cfg, False, None)
    # Given a cache, attention returns the updated cache where training keeps its residuals.
    self_kv = saved.self_attn.sublayer
    return y, dict(cache, self_k=self_kv.k, self_v=self_kv.v)
