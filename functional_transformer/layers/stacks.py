"""The encoder and decoder stacks: N blocks in sequence (paper §3.1).

params {"layer_0": block, ..., "layer_{N-1}": block} plus "final_ln" with pre-norm, whose
residual stream is otherwise never normalised before it leaves the stack.
"""

from __future__ import annotations

from backends import array_namespace
from backends import random as jrandom

from . import blocks, dropout, layer_norm


def _layer_names(n: int) -> list[str]:
    return [f"layer_{i}" for i in range(n)]


def _init(key, cfg, n_layers, block_init) -> dict:
    keys = jrandom.split(key, n_layers + 1)
    params = {name: block_init(keys[i], cfg) for i, name in enumerate(_layer_names(n_layers))}
    if cfg.norm_first:
        params["final_ln"] = layer_norm.init(keys[n_layers], cfg.d_model, getattr(array_namespace(key), cfg.dtype))
    return params


def encoder_init(key, cfg) -> dict:
    return _init(key, cfg, cfg.n_encoder_layers, blocks.encoder_block_init)


def decoder_init(key, cfg) -> dict:
    return _init(key, cfg, cfg.n_decoder_layers, blocks.decoder_block_init)


def encoder_fwd(params: dict, x, mask, cfg, key=None, train: bool = False):
    """x (B, S, D) -> memory (B, S, D)."""
    names = _layer_names(cfg.n_encoder_layers)
    layer_res = []
    for name, k in zip(names, dropout.split_keys(key, len(names))):
        x, res = blocks.encoder_block_fwd(params[name], x, mask, cfg, k, train)
        layer_res.append(res)
    res_ln = None
    if cfg.norm_first:
        x, res_ln = layer_norm.fwd(params["final_ln"], x)
    return x, (layer_res, res_ln)


def encoder_bwd(res, g, cfg):
    """-> (dparams, dx)."""
    layer_res, res_ln = res
    dparams = {}
    if cfg.norm_first:
        dparams["final_ln"], g = layer_norm.bwd(res_ln, g)
    for name, res_i in reversed(list(zip(_layer_names(cfg.n_encoder_layers), layer_res))):
        dparams[name], g = blocks.encoder_block_bwd(res_i, g, cfg)
    return dparams, g


def decoder_fwd(params: dict, x, memory, self_mask, cross_mask, cfg, key=None, train: bool = False):
    """x (B, T, D) over memory (B, S, D) -> (B, T, D)."""
    names = _layer_names(cfg.n_decoder_layers)
    layer_res = []
    for name, k in zip(names, dropout.split_keys(key, len(names))):
        x, res = blocks.decoder_block_fwd(params[name], x, memory, self_mask, cross_mask, cfg, k, train)
        layer_res.append(res)
    res_ln = None
    if cfg.norm_first:
        x, res_ln = layer_norm.fwd(params["final_ln"], x)
    return x, (layer_res, res_ln)


def decoder_bwd(res, g, cfg):
    """-> (dparams, dx, dmemory); every layer's cross-attention adds to dmemory."""
    layer_res, res_ln = res
    dparams = {}
    if cfg.norm_first:
        dparams["final_ln"], g = layer_norm.bwd(res_ln, g)
    d_memory = 0
    for name, res_i in reversed(list(zip(_layer_names(cfg.n_decoder_layers), layer_res))):
        dparams[name], g, d_mem_i = blocks.decoder_block_bwd(res_i, g, cfg)
        d_memory = d_memory + d_mem_i
    return dparams, g, d_memory
