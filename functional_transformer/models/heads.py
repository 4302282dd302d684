"""The output projection to the vocabulary, on its own weights or tied to the token embedding
(paper §3.4): the same matrix reads tokens in and writes logits out, so its gradient is the sum of
both uses."""

from __future__ import annotations


def projection(head: dict, tokens, tied: bool) -> dict:
    """The linear params of the projection: `head` itself, or {"w": tokens^T, "b": head["b"]} when tied
    ({"w": tokens^T} for a head without bias, GPT-2's). tokens: the embedding table (V, D)."""
    return {"w": tokens.mT} | ({"b": head["b"]} if "b" in head else {}) if tied else head


def split_grads(d_projection: dict, d_tokens, tied: bool):
    """-> (d_head, d_tokens): with tied weights the projection's dw^T joins the embedding's gradient."""
    if not tied:
        return d_projection, d_tokens
    return {name: d for name, d in d_projection.items() if name != "w"}, d_tokens + d_projection["w"].mT


def init(params: dict, tied: bool) -> dict:
    """A head's params from a fresh Linear's: the bias alone when tied (nothing without a bias)."""
    return {name: p for name, p in params.items() if name != "w"} if tied else params
