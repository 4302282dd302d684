"""The encoder-decoder Transformer as functions of (params, ..., cfg): the façade over the
composition in models/encoder_decoder.py that the training step, decoding and the public entry
points (api.py) call. See there for the parameter tree.

The functions here take arrays already checked; the public entry points in `api` check inputs
and run these under `jit` on JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TransformerConfig

from .models.encoder_decoder import EncoderDecoder, Saved, for_config

__all__ = ["EncoderDecoder", "Saved", "apply", "bwd", "decode", "encode", "for_config", "fwd", "init"]


def init(key, cfg: TransformerConfig) -> dict:
    """A fresh parameter tree for `cfg`, drawn from `key` (same key, same numbers on every backend)."""
    return for_config(cfg).init(key)


def fwd(params: dict, src, tgt_in, cfg: TransformerConfig, train: bool = False, key=None):
    """src (B, S), tgt_in (B, T) -> (logits (B, T, V_tgt), saved)."""
    return for_config(cfg).fwd(params, (src, tgt_in), train=train, key=key)


def bwd(params: dict, saved: Saved, d_logits, cfg: TransformerConfig) -> dict:
    """d_logits (B, T, V_tgt) -> grads, a tree of exactly the structure of params."""
    return for_config(cfg).bwd(params, saved, d_logits)[0]


def apply(params: dict, src, tgt_in, cfg: TransformerConfig, train: bool = False, key=None):
    """fwd without the residuals: logits (B, T, V_tgt)."""
    return fwd(params, src, tgt_in, cfg, train, key)[0]


def encode(params: dict, src, cfg: TransformerConfig, train: bool = False, key=None):
    """src (B, S) -> memory (B, S, D): the encoder alone."""
    return for_config(cfg).encode_fwd(params, src, train=train, key=key)[0]


def decode(params: dict, memory, src, tgt_in, cfg: TransformerConfig, train: bool = False, key=None):
    """tgt_in (B, T) over memory (B, S, D) of src (B, S) -> logits (B, T, V_tgt), teacher-forced."""
    return for_config(cfg).decode_fwd(params, memory, src, tgt_in, train=train, key=key)[0]
