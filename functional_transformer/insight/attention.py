"""Attention maps: every attention weight of one forward pass, labelled with its tokens.

The weights are the `p` that scaled dot-product attention keeps for its backward
(layers/attention.py, `DotProductSaved.p`, (B, H, T_q, T_k)), read out of the residuals of the
model's own forward pass (`model.fwd` in eval mode: no dropout), the pass that training
differentiates. There is no second copy of attention here to drift from the one that is trained.

Query rows of the decoder's maps are labelled with the token each position writes (its output:
the target, then end-of-sequence), key columns with what the keys' positions read (decoder
self-attention: beginning-of-sequence, then the target; cross-attention: the source). So a row
"e" of a cross-attention map shows where the model looked to write "e".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import TransformerConfig

import numpy as np

from backends import array_namespace, with_x64_scope

from .. import checks, inference, model
from ..data import DataError, Tokenizer, encode_pairs, make_batch, special_id

# kind -> what a plot calls it; each is a (layers, heads, queries, keys) array in attention_maps.
KINDS = {
    "encoder_self": "encoder self-attention",
    "decoder_self": "decoder self-attention (causal)",
    "cross": "cross-attention (decoder over encoder)",
}


def _weights(params: dict, src, tgt_in, cfg: TransformerConfig) -> dict:
    """src (B, S), tgt_in (B, T) -> {"encoder_self": (L_enc, B, H, S, S), "decoder_self": (L_dec, B,
    H, T, T), "cross": (L_dec, B, H, T, S), "predicted": (B, T) argmax ids}. Under jit on JAX the
    residuals nobody reads here (projections, layer norms) are never materialised."""
    logits, saved = model.fwd(params, src, tgt_in, cfg)
    xp = array_namespace(logits)
    # Each block is a Serial of residuals: its children are (self-attention, [cross-attention,] feed-forward).
    encoder, decoder = saved.encode.stack.layers, saved.decode.stack.layers
    return {
        "encoder_self": xp.stack([block.children[0].sublayer.dot_product.p for block in encoder]),
        "decoder_self": xp.stack([block.children[0].sublayer.dot_product.p for block in decoder]),
        "cross": xp.stack([block.children[1].sublayer.dot_product.p for block in decoder]),
        "predicted": xp.argmax(logits, axis=-1),
    }


def token_label(tokenizer, token_id: int) -> str:
    """The text of one id for an axis label: its character or piece, or the special token's name
    (`tokenizer` is one side's: a Tokenizer's .source or .target)."""
    return tokenizer.token_text(token_id)


def _check_lengths(tokenizer: Tokenizer, source: str, target: str | None, max_len: int) -> None:
    # One line each, where encode_pairs (made for data files) lists every bad example.
    if not source:
        raise DataError("the source is empty: the encoder needs at least one character to attend to")
    n_source = len(tokenizer.source.encode(source))
    if n_source > max_len:
        raise DataError(f"the source has {n_source} tokens; this model reads at most max_len={max_len}")
    n_target = None if target is None else len(tokenizer.target.encode(target))
    if n_target is not None and n_target + 1 > max_len:
        raise DataError(
            f"the target has {n_target} tokens; this model's decoder reads at most "
            f"{max_len - 1} (max_len={max_len}, less one for beginning-of-sequence)"
        )


@with_x64_scope
def attention_maps(
    params: dict,
    cfg: TransformerConfig,
    tokenizer: Tokenizer,
    source: str,
    target: str | None = None,
    *,
    allow_unknown: bool = False,
) -> dict:
    """Every attention weight of the forward pass on one example, on the params' backend.

    target: the decoder's input, teacher-forced; None decodes it greedily first (the model's own
    answer). Characters outside the vocabulary raise inference.UnknownSymbolError unless allow_unknown.

    -> {"source": str, "target": str, "target_from": "given" | "greedy",
        "source_tokens": S labels (the source's characters or pieces),
        "target_in": T labels (<bos> + target: what each decoder position reads),
        "target_out": T labels (target + <eos>: what each position writes),
        "predicted": T labels (the model's argmax at each position, teacher-forced on target),
        "encoder_self": (L_enc, H, S, S), "decoder_self": (L_dec, H, T, T), "cross": (L_dec, H, T, S)}
    with T = len(target) + 1; the maps are NumPy float arrays, queries by keys, each row summing to 1.
    """
    _check_lengths(tokenizer, source, target, cfg.max_len)
    unknown = inference.unknown_in_pairs(tokenizer, [(source, target or "")])
    if unknown and not allow_unknown:
        raise inference.UnknownSymbolError(unknown, tokenizer)
    target_from = "given"
    if target is None:
        # At most max_len - 1 characters, so that <bos> + target fits the decoder's max_len.
        # annotated: the with_x64_scope decorator hides predict's return type from the type checker
        predicted: list[str] = inference.predict(
            params, cfg, tokenizer, [source], max_steps=cfg.max_len - 1, allow_unknown=True
        )
        target = predicted[0]
        target_from = "greedy"
    example = encode_pairs([(source, target)], tokenizer, cfg.max_len)[0]
    batch = make_batch([example], special_id(tokenizer, "pad_id"))
    backend, arrays = checks.prepare_inputs(params, cfg, False, None, src=batch["src"], tgt_in=batch["tgt_in"])
    weights = backend.jit(_weights, static_argnames=("cfg",))(params, arrays["src"], arrays["tgt_in"], cfg)
    host = {name: np.asarray(backend.to_numpy(value)) for name, value in weights.items()}
    return {
        "source": source,
        "target": target,
        "target_from": target_from,
        "source_tokens": tokenizer.source.pieces(source),
        "target_in": [token_label(tokenizer.target, i) for i in example.tgt[:-1]],
        "target_out": [token_label(tokenizer.target, i) for i in example.tgt[1:]],
        "predicted": [token_label(tokenizer.target, int(i)) for i in host["predicted"][0]],
        **{kind: host[kind][:, 0] for kind in KINDS},  # the batch of one dropped: (L, H, queries, keys)
    }


__all__ = ["KINDS", "attention_maps", "token_label"]
