"""The encoder-decoder Transformer (paper Figure 1): init, the forward pass, and its VJP.

Parameter tree (D = d_model, F = d_ff, V = vocabulary sizes, L = max_len):

    src_embed   {"tokens": (V_src, D)}   (+ "positions": (L, D) with positional="learned")
    tgt_embed   {"tokens": (V_tgt, D)}   (+ "positions")
    encoder     {"layer_i": {"self_attn": {w_q b_q w_k b_k w_v b_v w_o b_o}, "ln1": {scale bias},
                             "ffn": {w_1 b_1 w_2 b_2}, "ln2"}}        (+ "final_ln" with norm_first)
    decoder     {"layer_i": {"self_attn", "ln1", "cross_attn", "ln2", "ffn", "ln3"}}  (+ "final_ln")
    out_proj    {"w": (D, V_tgt), "b": (V_tgt,)}   ("b" alone with tie_embeddings: w = tgt tokens^T)

The functions here take arrays already checked; the public entry points in `api` check inputs
and run these under `jit` on JAX. With cfg.compute_dtype (bfloat16) the encoder and the decoder
cast the params to it first, so jax.grad carries the gradients back through the casts to the
float32 params, and the decoder returns its logits in cfg.dtype (see layers/precision.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import array_namespace, tree_leaves, tree_map
from backends import random as ftrandom

from .layers import dropout, embedding, linear, stacks
from .layers.precision import as_dtype


class EncodeSaved(NamedTuple):
    embed: Any  # the source ids (embedding.fwd)
    drop: Any  # dropout's scaled mask, or None
    stack: stacks.StackSaved


class DecodeSaved(NamedTuple):
    embed: Any  # the target ids
    drop: Any
    stack: stacks.StackSaved
    out: linear.Saved


class Saved(NamedTuple):
    encode: EncodeSaved
    decode: DecodeSaved


def init(key, cfg) -> dict:
    """A fresh parameter tree for `cfg`, drawn from `key` (same key, same numbers on every backend)."""
    xp = array_namespace(key)
    dtype = getattr(xp, cfg.dtype)
    learned = cfg.positional == "learned"
    k_src, k_tgt, k_enc, k_dec, k_out = ftrandom.split(key, 5)
    out_proj = linear.init(k_out, cfg.d_model, cfg.tgt_vocab_size, dtype)
    return {
        "src_embed": embedding.init(k_src, cfg.src_vocab_size, cfg.d_model, cfg.max_len, dtype, learned),
        "tgt_embed": embedding.init(k_tgt, cfg.tgt_vocab_size, cfg.d_model, cfg.max_len, dtype, learned),
        "encoder": stacks.encoder_init(k_enc, cfg),
        "decoder": stacks.decoder_init(k_dec, cfg),
        "out_proj": {"b": out_proj["b"]} if cfg.tie_embeddings else out_proj,
    }


def compute_params(params: dict, cfg) -> dict:
    """params in cfg.compute_dtype (params itself without one): the matmuls' operands."""
    if cfg.activations_dtype == cfg.dtype:
        return params
    xp = array_namespace(*tree_leaves(params))
    dtype = getattr(xp, cfg.activations_dtype)
    return tree_map(lambda leaf: as_dtype(leaf, dtype), params)


def padding_mask(ids, pad_id: int):
    """(B, L) token ids -> (B, 1, 1, L) boolean, True at real tokens: keys a query may attend to."""
    xp = array_namespace(ids)
    return xp.reshape(ids != pad_id, (ids.shape[0], 1, 1, ids.shape[1]))


def causal_mask(length: int, xp):
    """(1, 1, T, T) boolean, True where key position <= query position."""
    positions = xp.arange(length)
    return xp.reshape(positions[:, None] >= positions[None, :], (1, 1, length, length))


def output_projection(params: dict, cfg) -> dict:
    """The linear-layer params of the output projection (the tied embedding's transpose with tie_embeddings)."""
    if cfg.tie_embeddings:
        return {"w": params["tgt_embed"]["tokens"].mT, "b": params["out_proj"]["b"]}
    return params["out_proj"]


def _learned_positions(cfg) -> int | None:
    """The rows of a learned position table (embedding.bwd's n_positions); None with sinusoidal positions."""
    return cfg.max_len if cfg.positional == "learned" else None


def encode_fwd(params: dict, src, cfg, train: bool = False, key=None):
    """src (B, S) -> (memory (B, S, D), saved)."""
    k_embed, k_stack = dropout.split_keys(key, 2)
    params = compute_params(params, cfg)
    x, saved_embed = embedding.fwd(params["src_embed"], src)
    x, saved_drop = dropout.fwd(x, cfg.drop_rate, train, k_embed)
    memory, saved_stack = stacks.encoder_fwd(params["encoder"], x, padding_mask(src, cfg.pad_id), cfg, train, k_stack)
    return memory, EncodeSaved(saved_embed, saved_drop, saved_stack)


def encode_bwd(saved: EncodeSaved, d_memory, cfg) -> dict:
    """-> grads of {"src_embed", "encoder"}."""
    d_encoder, dx = stacks.encoder_bwd(saved.stack, d_memory, cfg)
    d_embed = embedding.bwd(saved.embed, dropout.bwd(saved.drop, dx), cfg.src_vocab_size, _learned_positions(cfg))
    return {"src_embed": d_embed, "encoder": d_encoder}


def decode_fwd(params: dict, memory, src, tgt_in, cfg, train: bool = False, key=None):
    """tgt_in (B, T) over memory (B, S, D) of src (B, S) -> (logits (B, T, V_tgt), saved): teacher forcing."""
    xp = array_namespace(memory)
    k_embed, k_stack = dropout.split_keys(key, 2)
    params = compute_params(params, cfg)
    memory = as_dtype(memory, getattr(xp, cfg.activations_dtype))
    y, saved_embed = embedding.fwd(params["tgt_embed"], tgt_in)
    y, saved_drop = dropout.fwd(y, cfg.drop_rate, train, k_embed)
    self_mask = causal_mask(tgt_in.shape[1], xp) & padding_mask(tgt_in, cfg.pad_id)  # (B, 1, T, T)
    cross_mask = padding_mask(src, cfg.pad_id)  # (B, 1, 1, S)
    h, saved_stack = stacks.decoder_fwd(params["decoder"], y, memory, self_mask, cross_mask, cfg, train, k_stack)
    logits, saved_out = linear.fwd(output_projection(params, cfg), h)
    logits = as_dtype(logits, getattr(xp, cfg.dtype))  # the softmax of the loss and of decoding in cfg.dtype
    return logits, DecodeSaved(saved_embed, saved_drop, saved_stack, saved_out)


def decode_bwd(saved: DecodeSaved, d_logits, cfg):
    """-> (grads of {"tgt_embed", "decoder", "out_proj"}, d_memory)."""
    d_out, dh = linear.bwd(saved.out, d_logits)
    d_decoder, dy, d_memory = stacks.decoder_bwd(saved.stack, dh, cfg)
    d_tgt_embed = embedding.bwd(saved.embed, dropout.bwd(saved.drop, dy), cfg.tgt_vocab_size, _learned_positions(cfg))
    if cfg.tie_embeddings:  # the shared matrix gets both contributions
        d_tgt_embed["tokens"] = d_tgt_embed["tokens"] + d_out["w"].mT
        d_out = {"b": d_out["b"]}
    return {"tgt_embed": d_tgt_embed, "decoder": d_decoder, "out_proj": d_out}, d_memory


def fwd(params: dict, src, tgt_in, cfg, train: bool = False, key=None):
    """src (B, S), tgt_in (B, T) -> (logits (B, T, V_tgt), saved)."""
    k_encode, k_decode = dropout.split_keys(key, 2)
    memory, saved_encode = encode_fwd(params, src, cfg, train, k_encode)
    logits, saved_decode = decode_fwd(params, memory, src, tgt_in, cfg, train, k_decode)
    return logits, Saved(saved_encode, saved_decode)


def bwd(saved: Saved, d_logits, cfg) -> dict:
    """-> grads, a tree of exactly the structure of params."""
    grads, d_memory = decode_bwd(saved.decode, d_logits, cfg)
    grads.update(encode_bwd(saved.encode, d_memory, cfg))
    return grads


def apply(params: dict, src, tgt_in, cfg, train: bool = False, key=None):
    """fwd without the residuals: logits (B, T, V_tgt)."""
    return fwd(params, src, tgt_in, cfg, train, key)[0]


def encode(params: dict, src, cfg, train: bool = False, key=None):
    """encode_fwd without the residuals: memory (B, S, D)."""
    return encode_fwd(params, src, cfg, train, key)[0]


def decode(params: dict, memory, src, tgt_in, cfg, train: bool = False, key=None):
    """decode_fwd without the residuals: logits (B, T, V_tgt)."""
    return decode_fwd(params, memory, src, tgt_in, cfg, train, key)[0]
