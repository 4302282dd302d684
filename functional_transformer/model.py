"""The encoder-decoder Transformer (paper Figure 1): init, the forward pass, and its VJP.

Parameter tree (D = d_model, F = d_ff, V = vocabulary sizes, L = max_len):

    src_embed   {"tokens": (V_src, D)}   (+ "positions": (L, D) with positional="learned")
    tgt_embed   {"tokens": (V_tgt, D)}   (+ "positions")
    encoder     {"layer_i": {"self_attn": {w_q b_q w_k b_k w_v b_v w_o b_o}, "ln1": {scale bias},
                             "ffn": {w_1 b_1 w_2 b_2}, "ln2"}}        (+ "final_ln" with norm_first)
    decoder     {"layer_i": {"self_attn", "ln1", "cross_attn", "ln2", "ffn", "ln3"}}  (+ "final_ln")
    out_proj    {"w": (D, V_tgt), "b": (V_tgt,)}   ("b" alone with tie_embeddings: w = tgt tokens^T)

The functions here take arrays already checked; the public entry points in `api` check inputs
and run these under `jit` on JAX.
"""

from __future__ import annotations

from backends import array_namespace
from backends import random as jrandom

from .layers import dropout, embedding, linear, stacks


def init(key, cfg) -> dict:
    """A fresh parameter tree for `cfg`, drawn from `key` (same key, same numbers on every backend)."""
    xp = array_namespace(key)
    dtype = getattr(xp, cfg.dtype)
    learned = cfg.positional == "learned"
    k_src, k_tgt, k_enc, k_dec, k_out = jrandom.split(key, 5)
    out_proj = linear.init(k_out, cfg.d_model, cfg.tgt_vocab_size, dtype)
    return {
        "src_embed": embedding.init(k_src, cfg.src_vocab_size, cfg.d_model, cfg.max_len, dtype, learned),
        "tgt_embed": embedding.init(k_tgt, cfg.tgt_vocab_size, cfg.d_model, cfg.max_len, dtype, learned),
        "encoder": stacks.encoder_init(k_enc, cfg),
        "decoder": stacks.decoder_init(k_dec, cfg),
        "out_proj": {"b": out_proj["b"]} if cfg.tie_embeddings else out_proj,
    }


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


def encode_fwd(params: dict, src, cfg, key=None, train: bool = False):
    """src (B, S) -> memory (B, S, D)."""
    k_embed, k_stack = dropout.split_keys(key, 2)
    x, res_embed = embedding.fwd(params["src_embed"], src)
    x, res_drop = dropout.fwd(x, cfg.drop_rate, k_embed, train)
    memory, res_stack = stacks.encoder_fwd(params["encoder"], x, padding_mask(src, cfg.pad_id), cfg, k_stack, train)
    return memory, (res_embed, res_drop, res_stack)


def encode_bwd(res, d_memory, cfg) -> dict:
    """-> grads of {"src_embed", "encoder"}."""
    res_embed, res_drop, res_stack = res
    d_encoder, dx = stacks.encoder_bwd(res_stack, d_memory, cfg)
    return {"src_embed": embedding.bwd(res_embed, dropout.bwd(res_drop, dx)), "encoder": d_encoder}


def decode_fwd(params: dict, memory, src, tgt_in, cfg, key=None, train: bool = False):
    """tgt_in (B, T) over memory (B, S, D) of src (B, S) -> logits (B, T, V_tgt)."""
    xp = array_namespace(memory)
    k_embed, k_stack = dropout.split_keys(key, 2)
    y, res_embed = embedding.fwd(params["tgt_embed"], tgt_in)
    y, res_drop = dropout.fwd(y, cfg.drop_rate, k_embed, train)
    self_mask = causal_mask(tgt_in.shape[1], xp) & padding_mask(tgt_in, cfg.pad_id)  # (B, 1, T, T)
    cross_mask = padding_mask(src, cfg.pad_id)  # (B, 1, 1, S)
    h, res_stack = stacks.decoder_fwd(params["decoder"], y, memory, self_mask, cross_mask, cfg, k_stack, train)
    logits, res_out = linear.fwd(output_projection(params, cfg), h)
    return logits, (res_embed, res_drop, res_stack, res_out)


def decode_bwd(res, d_logits, cfg):
    """-> (grads of {"tgt_embed", "decoder", "out_proj"}, d_memory)."""
    res_embed, res_drop, res_stack, res_out = res
    d_out, dh = linear.bwd(res_out, d_logits)
    d_decoder, dy, d_memory = stacks.decoder_bwd(res_stack, dh, cfg)
    d_tgt_embed = embedding.bwd(res_embed, dropout.bwd(res_drop, dy))
    if cfg.tie_embeddings:  # the shared matrix gets both contributions
        d_tgt_embed["tokens"] = d_tgt_embed["tokens"] + d_out["w"].mT
        d_out = {"b": d_out["b"]}
    return {"tgt_embed": d_tgt_embed, "decoder": d_decoder, "out_proj": d_out}, d_memory


def fwd(params: dict, src, tgt_in, cfg, key=None, train: bool = False):
    """src (B, S), tgt_in (B, T) -> (logits (B, T, V_tgt), res)."""
    k_encode, k_decode = dropout.split_keys(key, 2)
    memory, res_encode = encode_fwd(params, src, cfg, k_encode, train)
    logits, res_decode = decode_fwd(params, memory, src, tgt_in, cfg, k_decode, train)
    return logits, (res_encode, res_decode)


def bwd(res, d_logits, cfg) -> dict:
    """-> grads, a tree of exactly the structure of params."""
    res_encode, res_decode = res
    grads, d_memory = decode_bwd(res_decode, d_logits, cfg)
    grads.update(encode_bwd(res_encode, d_memory, cfg))
    return grads
