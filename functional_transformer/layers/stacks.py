"""The encoder and decoder stacks: N blocks in sequence (paper §3.1).

params {"layer_0": block, ..., "layer_{N-1}": block} plus "final_ln" with pre-norm, whose
residual stream is otherwise never normalised before it leaves the stack.

One loop (`_run_layers`, `_bwd_layers`) serves both stacks and the single-position decoding step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import array_namespace, with_x64_scope
from backends import random as ftrandom

from . import blocks, dropout, layer_norm


class StackSaved(NamedTuple):
    layers: tuple  # what each block saved, layer_0 first
    final_ln: Any  # layer_norm.Saved with pre-norm, else None


def _layer_names(n: int) -> list[str]:
    return [f"layer_{i}" for i in range(n)]


def _init(key, cfg, n_layers, block_init) -> dict:
    keys = ftrandom.split(key, n_layers + 1)
    params = {name: block_init(keys[i], cfg) for i, name in enumerate(_layer_names(n_layers))}
    if cfg.norm_first:
        params["final_ln"] = layer_norm.init(keys[n_layers], cfg.d_model, getattr(array_namespace(key), cfg.dtype))
    return params


@with_x64_scope
def encoder_init(key, cfg) -> dict:
    return _init(key, cfg, cfg.n_encoder_layers, blocks.encoder_block_init)


@with_x64_scope
def decoder_init(key, cfg) -> dict:
    return _init(key, cfg, cfg.n_decoder_layers, blocks.decoder_block_init)


def _run_layers(params: dict, x, block, n_layers: int, cfg, key=None):
    """x through `block(params_i, x, name, key_i) -> (x, saved_i)` for layer_0 .. layer_{n-1}, then
    final_ln with pre-norm -> (x, StackSaved)."""
    names = _layer_names(n_layers)
    saved_layers = []
    for name, k in zip(names, dropout.split_keys(key, n_layers)):
        x, saved = block(params[name], x, name, k)
        saved_layers.append(saved)
    saved_ln = None
    if cfg.norm_first:
        x, saved_ln = layer_norm.fwd(params["final_ln"], x)
    return x, StackSaved(tuple(saved_layers), saved_ln)


def _bwd_layers(saved: StackSaved, g, block_bwd, cfg):
    """The VJP of _run_layers: final_ln, then `block_bwd(saved_i, g) -> (dparams_i, dx, *extra)` from
    the last layer to the first -> (dparams, dx, *extra), each extra summed over the layers."""
    dparams = {}
    if cfg.norm_first:
        dparams["final_ln"], g = layer_norm.bwd(saved.final_ln, g)
    extra_sums = None
    for name, saved_i in reversed(list(zip(_layer_names(len(saved.layers)), saved.layers))):
        dparams[name], g, *extra = block_bwd(saved_i, g)
        extra_sums = extra if extra_sums is None else [s + e for s, e in zip(extra_sums, extra)]
    return dparams, g, *extra_sums


def encoder_fwd(params: dict, x, mask, cfg, train: bool = False, key=None):
    """x (B, S, D) -> (memory (B, S, D), saved)."""
    def block(p, h, _name, k):
        return blocks.encoder_block_fwd(p, h, mask, cfg, train, k)

    return _run_layers(params, x, block, cfg.n_encoder_layers, cfg, key)


def encoder_bwd(saved: StackSaved, g, cfg):
    """-> (dparams, dx)."""
    return _bwd_layers(saved, g, lambda s, g_i: blocks.encoder_block_bwd(s, g_i, cfg), cfg)


def decoder_fwd(params: dict, x, memory, self_mask, cross_mask, cfg, train: bool = False, key=None):
    """x (B, T, D) over memory (B, S, D) -> (y (B, T, D), saved)."""
    def block(p, h, _name, k):
        return blocks.decoder_block_fwd(p, h, memory, self_mask, cross_mask, cfg, train, k)

    return _run_layers(params, x, block, cfg.n_decoder_layers, cfg, key)


def decoder_bwd(saved: StackSaved, g, cfg):
    """-> (dparams, dx, dmemory); every layer's cross-attention adds to dmemory."""
    return _bwd_layers(saved, g, lambda s, g_i: blocks.decoder_block_bwd(s, g_i, cfg), cfg)


def decoder_cache(params: dict, memory, cfg, max_steps: int) -> dict:
    """{"layer_i": blocks.decoder_block_cache}: the key/value cache of cached decoding."""
    return {name: blocks.decoder_block_cache(params[name], memory, cfg, max_steps)
            for name in _layer_names(cfg.n_decoder_layers)}


def decoder_step(params: dict, x, cache: dict, position, self_mask, cross_mask, cfg):
    """x (B, 1, D) at `position` -> (y (B, 1, D), cache): the decoder stack in eval mode for one new
    position, each block over its cache (blocks.decoder_block_step)."""
    def block(p, h, name, _key):
        return blocks.decoder_block_step(p, h, cache[name], position, self_mask, cross_mask, cfg)

    y, saved = _run_layers(params, x, block, cfg.n_decoder_layers, cfg)
    # Here each block's second value is its updated cache.
    return y, dict(zip(_layer_names(cfg.n_decoder_layers), saved.layers))
