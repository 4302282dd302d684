"""Named decoder-only architectures, built from the same parts as any DecoderOnly:

    gpt2   pre-norm LayerNorm (eps 1e-5), learned absolute positions, GELU (tanh form), tied input
           and output embeddings, biases everywhere but the output projection, embeddings not
           scaled by sqrt(d_model)
    llama  pre-norm RMSNorm (eps 1e-6), rotary positions (base 10000), SwiGLU feed-forward,
           grouped-query attention (n_kv_heads = n_heads // 2 by default), no biases, an untied
           output projection, embeddings not scaled

    cfg = preset("llama", vocab_size=64, d_model=64, n_heads=4, n_layers=2)   # a DecoderConfig

Sizes and any other DecoderConfig field given as keywords override the preset's.
"""

from __future__ import annotations

import math

from ..errors import ConfigError
from .decoder_only import DecoderConfig

_SIZES = {"d_model": 128, "n_heads": 4, "n_layers": 4, "max_len": 256}


def _swiglu_width(d_model: int) -> int:
    """Llama's feed-forward width: 2/3 of 4 d_model (the gate makes three matrices of two), up to a multiple of 8."""
    return 8 * math.ceil(8 * d_model / 3 / 8)


def _gpt2(sizes: dict) -> dict:
    return {
        "d_ff": 4 * sizes["d_model"],
        "drop_rate": 0.1,
        "norm_first": True,
        "norm": "layer",
        "norm_eps": 1e-5,
        "positional": "learned",
        "activation": "gelu",
        "gated_ffn": False,
        "bias": True,
        "head_bias": False,
        "tie_embeddings": True,
        "scale_embeddings": False,
    }


def _llama(sizes: dict) -> dict:
    n_heads = sizes["n_heads"]
    return {
        "d_ff": _swiglu_width(sizes["d_model"]),
        "drop_rate": 0.0,
        "norm_first": True,
        "norm": "rms",
        "norm_eps": 1e-6,
        "positional": "rope",
        "rope_base": 10000.0,
        "activation": "silu",
        "gated_ffn": True,
        "bias": False,
        "head_bias": False,
        "tie_embeddings": False,
        "scale_embeddings": False,
        "n_kv_heads": n_heads // 2 if n_heads % 2 == 0 else n_heads,
    }


PRESETS = {"gpt2": _gpt2, "llama": _llama}


def preset(name: str, vocab_size: int, **sizes) -> DecoderConfig:
    """The DecoderConfig of architecture `name` ("gpt2" or "llama") for `vocab_size` tokens; `sizes`
    (d_model, n_heads, n_layers, max_len, d_ff, n_kv_heads, ...) override the defaults."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    base = {**_SIZES, **{k: v for k, v in sizes.items() if k in _SIZES}}
    return DecoderConfig(vocab_size=vocab_size, **{**base, **PRESETS[name](base), **sizes})
