"""The encoder-decoder Transformer of the paper (Figure 1), composed from parts.

    encoder block:  Residual(SelfAttention)            -> Residual(FeedForward)
    decoder block:  Residual(SelfAttention, causal)    -> Residual(CrossAttention over the memory)
                                                        -> Residual(FeedForward)
    encoder:        src ids -> Embedding -> Dropout -> Repeat(encoder block)          -> memory
    decoder:        (tgt ids, memory) -> Embedding -> Dropout -> Repeat(decoder block) -> Linear -> logits

The decoder's blocks carry the stream (x, memory): each cross-attention reads the memory, and its
cotangents from every block add up. Parameter tree (D = d_model, V = vocabulary sizes):

    src_embed   {"tokens": (V_src, D)}   (+ "positions": (max_len, D) with positional="learned")
    tgt_embed   {"tokens": (V_tgt, D)}   (+ "positions")
    encoder     {"layer_i": {"self_attn", "ln1", "ffn", "ln2"}}                (+ "final_ln" with norm_first)
    decoder     {"layer_i": {"self_attn", "ln1", "cross_attn", "ln2", "ffn", "ln3"}}  (+ "final_ln")
    out_proj    {"w": (D, V_tgt), "b": (V_tgt,)}   ("b" alone with tie_embeddings: w = tgt tokens^T)

With cfg.compute_dtype (bfloat16, JAX) the params are cast to it before the forward pass, so
jax.grad carries the gradients back through the casts; the logits come out in cfg.dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

from backends import array_namespace, tree_leaves, tree_map
from backends import prng as ftrandom

from ..config import TransformerConfig
from ..layers.precision import as_dtype
from ..parts import (
    CrossAttention,
    Dropout,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    Part,
    Repeat,
    Residual,
    SelfAttention,
    Serial,
    padding_mask,
)
from ..parts.part import keys_for
from . import heads


def _residual(cfg: TransformerConfig, sublayer: Part, name: str, norm_name: str) -> Residual:
    return Residual(
        sublayer,
        cfg.d_model,
        norm_first=cfg.norm_first,
        drop_rate=cfg.drop_rate,
        name=name,
        norm_name=norm_name,
        dtype=cfg.dtype,
    )


def _self_attention(cfg: TransformerConfig, *, causal: bool) -> SelfAttention:
    return SelfAttention(
        cfg.d_model, cfg.n_heads, causal=causal, dtype=cfg.dtype, attention_kernel=cfg.attention_kernel
    )


def encoder_block(cfg: TransformerConfig) -> Serial:
    """x (B, S, D) -> (B, S, D); side `mask`: the source's key padding (B, S)."""
    return Serial(
        _residual(cfg, _self_attention(cfg, causal=False), "self_attn", "ln1"),
        _residual(cfg, FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, cfg.dtype), "ffn", "ln2"),
    )


def decoder_block(cfg: TransformerConfig) -> Serial:
    """(x (B, T, D), memory (B, S, D)) -> (y, memory); side `mask` (the target's padding (B, T)) and
    `memory_mask` (the source's (B, S))."""
    return Serial(
        _residual(cfg, _self_attention(cfg, causal=True), "self_attn", "ln1"),
        _residual(
            cfg,
            CrossAttention(cfg.d_model, cfg.n_heads, dtype=cfg.dtype, attention_kernel=cfg.attention_kernel),
            "cross_attn",
            "ln2",
        ),
        _residual(cfg, FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, cfg.dtype), "ffn", "ln3"),
    )


def stack(cfg: TransformerConfig, block: Part, n_layers: int) -> Repeat:
    """n_layers blocks, and with pre-norm the final layer norm the residual stream otherwise never gets."""
    return Repeat(block, n_layers, final=LayerNorm(cfg.d_model, cfg.dtype) if cfg.norm_first else None)


class EncodeSaved(NamedTuple):
    embed: Any
    drop: Any
    stack: Any


class DecodeSaved(NamedTuple):
    embed: Any
    drop: Any
    stack: Any
    out: Any


class Saved(NamedTuple):
    encode: EncodeSaved
    decode: DecodeSaved


@dataclasses.dataclass(frozen=True)
class EncoderDecoder(Part):
    """(src (B, S), tgt_in (B, T)) token ids -> logits (B, T, V_tgt), teacher-forced. Masks come from
    cfg.pad_id. The ids get no gradient: bwd returns (grads, (None, None))."""

    cfg: TransformerConfig

    n_inputs = 2

    @functools.cached_property
    def src_embed(self) -> Embedding:
        cfg = self.cfg
        return Embedding(cfg.src_vocab_size, cfg.d_model, cfg.max_len, cfg.positional, cfg.dtype, name="src")

    @functools.cached_property
    def tgt_embed(self) -> Embedding:
        cfg = self.cfg
        return Embedding(cfg.tgt_vocab_size, cfg.d_model, cfg.max_len, cfg.positional, cfg.dtype, name="tgt_in")

    @functools.cached_property
    def encoder(self) -> Repeat:
        return stack(self.cfg, encoder_block(self.cfg), self.cfg.n_encoder_layers)

    @functools.cached_property
    def decoder(self) -> Repeat:
        return stack(self.cfg, decoder_block(self.cfg), self.cfg.n_decoder_layers)

    @functools.cached_property
    def out_proj(self) -> Linear:
        return Linear(self.cfg.d_model, self.cfg.tgt_vocab_size, dtype=self.cfg.dtype)

    @property
    def dropout(self) -> Dropout:
        return Dropout(self.cfg.drop_rate)

    @property
    def needs_key(self) -> bool:
        return True

    def init(self, key) -> dict:
        k_src, k_tgt, k_enc, k_dec, k_out = ftrandom.split(key, 5)
        out_proj = self.out_proj.init(k_out)
        return {
            "src_embed": self.src_embed.init(k_src),
            "tgt_embed": self.tgt_embed.init(k_tgt),
            "encoder": self.encoder.init(k_enc),
            "decoder": self.decoder.init(k_dec),
            "out_proj": heads.init(out_proj, self.cfg.tie_embeddings),
        }

    def compute_params(self, params: dict) -> dict:
        """params in cfg.compute_dtype (params itself without one): the matmuls' operands."""
        cfg = self.cfg
        if cfg.activations_dtype == cfg.dtype:
            return params
        dtype = getattr(array_namespace(*tree_leaves(params)), cfg.activations_dtype)
        return tree_map(lambda leaf: as_dtype(leaf, dtype), params)

    def output_projection(self, params: dict) -> dict:
        """The output projection's linear params (the target embedding's transpose with tie_embeddings)."""
        return heads.projection(params["out_proj"], params["tgt_embed"]["tokens"], self.cfg.tie_embeddings)

    def encode_fwd(self, params: dict, src, *, train=False, key=None):
        """src (B, S) -> (memory (B, S, D), saved)."""
        k_embed, k_stack = keys_for((self.dropout, self.encoder), key)
        params = self.compute_params(params)
        x, saved_embed = self.src_embed.fwd(params["src_embed"], src)
        x, saved_drop = self.dropout.fwd({}, x, train=train, key=k_embed)
        memory, saved_stack = self.encoder.fwd(
            params["encoder"], x, train=train, key=k_stack, mask=padding_mask(src, self.cfg.pad_id)
        )
        return memory, EncodeSaved(saved_embed, saved_drop, saved_stack)

    def encode_bwd(self, params: dict, saved: EncodeSaved, d_memory) -> dict:
        """-> grads of {"src_embed", "encoder"}."""
        d_encoder, dx = self.encoder.bwd(params["encoder"], saved.stack, d_memory)
        _, dx = self.dropout.bwd({}, saved.drop, dx)
        d_embed, _ = self.src_embed.bwd(params["src_embed"], saved.embed, dx)
        return {"src_embed": d_embed, "encoder": d_encoder}

    def decode_fwd(self, params: dict, memory, src, tgt_in, *, train=False, key=None):
        """tgt_in (B, T) over memory (B, S, D) of src (B, S) -> (logits (B, T, V_tgt), saved)."""
        xp = array_namespace(memory)
        k_embed, k_stack = keys_for((self.dropout, self.decoder), key)
        params = self.compute_params(params)
        memory = as_dtype(memory, getattr(xp, self.cfg.activations_dtype))
        y, saved_embed = self.tgt_embed.fwd(params["tgt_embed"], tgt_in)
        y, saved_drop = self.dropout.fwd({}, y, train=train, key=k_embed)
        (h, _), saved_stack = self.decoder.fwd(
            params["decoder"],
            (y, memory),
            train=train,
            key=k_stack,
            mask=padding_mask(tgt_in, self.cfg.pad_id),
            memory_mask=padding_mask(src, self.cfg.pad_id),
        )
        logits, saved_out = self.out_proj.fwd(self.output_projection(params), h)
        logits = as_dtype(logits, getattr(xp, self.cfg.dtype))  # the loss's and decoding's softmax in dtype
        return logits, DecodeSaved(saved_embed, saved_drop, saved_stack, saved_out)

    def decode_bwd(self, params: dict, saved: DecodeSaved, d_logits):
        """-> (grads of {"tgt_embed", "decoder", "out_proj"}, d_memory)."""
        xp = array_namespace(d_logits)
        d_out, dh = self.out_proj.bwd(self.output_projection(params), saved.out, d_logits)
        memory_shape = (dh.shape[0], saved.stack.inputs[0][1].shape[1], dh.shape[2])
        d_decoder, (dy, d_memory) = self.decoder.bwd(
            params["decoder"], saved.stack, (dh, xp.zeros(memory_shape, dtype=dh.dtype))
        )
        _, dy = self.dropout.bwd({}, saved.drop, dy)
        d_tgt_embed, _ = self.tgt_embed.bwd(params["tgt_embed"], saved.embed, dy)
        d_out, d_tgt_embed["tokens"] = heads.split_grads(d_out, d_tgt_embed["tokens"], self.cfg.tie_embeddings)
        return {"tgt_embed": d_tgt_embed, "decoder": d_decoder, "out_proj": d_out}, d_memory

    def fwd(self, params, x, *, train=False, key=None, **side):
        src, tgt_in = x
        k_encode, k_decode = keys_for((self.encoder, self.decoder), key)
        memory, saved_encode = self.encode_fwd(params, src, train=train, key=k_encode)
        logits, saved_decode = self.decode_fwd(params, memory, src, tgt_in, train=train, key=k_decode)
        return logits, Saved(saved_encode, saved_decode)

    def bwd(self, params, saved: Saved, dy):
        grads, d_memory = self.decode_bwd(params, saved.decode, dy)
        grads.update(self.encode_bwd(params, saved.encode, d_memory))
        return grads, (None, None)

    def init_cache(self, params, x, max_len, *, memory_mask=None, **side):
        """The decoder's cache for decoding over `memory`: x is (tgt ids (B, 1), memory (B, S, D))."""
        ids, memory = x
        params = self.compute_params(params)
        y = self.tgt_embed.output_like(params["tgt_embed"], ids)
        return self.decoder.init_cache(params["decoder"], (y, memory), max_len, memory_mask=memory_mask)

    def step(self, params, x, cache, position, *, memory_mask=None, **side):
        """(tokens (B, 1), memory (B, S, D)) at `position` -> (logits (B, 1, V_tgt), cache)."""
        ids, memory = x
        xp = array_namespace(memory)
        params = self.compute_params(params)
        y, _ = self.tgt_embed.step(params["tgt_embed"], ids, None, position)
        (h, _), cache = self.decoder.step(params["decoder"], (y, memory), cache, position, memory_mask=memory_mask)
        logits = self.out_proj.apply(self.output_projection(params), h)
        return as_dtype(logits, getattr(xp, self.cfg.dtype)), cache


@functools.lru_cache(maxsize=64)
def for_config(cfg: TransformerConfig) -> EncoderDecoder:
    """The model of `cfg` (one object per config, so its parts are built once)."""
    return EncoderDecoder(cfg)
