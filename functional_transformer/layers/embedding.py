"""Token embedding scaled by sqrt(d_model) (paper §3.4) plus positions (§3.5).

params {"tokens": (vocab, d_model)} and, for learned positions, {"positions": (max_len, d_model)};
without "positions" the sinusoidal table is added.
"""

from __future__ import annotations

import math

from backends import array_namespace, backend_of
from backends import prng as ftrandom

from .positional import sinusoidal


def init(key, vocab_size: int, d_model: int, max_len: int, dtype, learned_positions: bool = False) -> dict:
    """tokens ~ N(0, 1/d_model), so the scaled embedding has unit variance."""
    k_tokens, k_positions = ftrandom.split(key, 2)
    params = {"tokens": ftrandom.normal(k_tokens, (vocab_size, d_model), dtype) * (d_model**-0.5)}
    if learned_positions:
        # The same root-mean-square as the sinusoidal table (1/sqrt(2)).
        params["positions"] = ftrandom.normal(k_positions, (max_len, d_model), dtype) * (0.5**0.5)
    return params


def fwd(params: dict, ids, offset=0, *, scale: bool = True, sinusoidal_positions: bool = True):
    """ids (B, T) integer at positions offset .. offset + T - 1 -> (x (B, T, d_model), flat_ids (B*T,)),
    the ids being all the backward needs.

    A non-zero offset serves cached decoding, which embeds one new token at a time. scale=False
    leaves out the paper's sqrt(d_model) (GPT-2, Llama); sinusoidal_positions=False adds no
    positions where params has no "positions" (rotary positions act in attention instead)."""
    tokens = params["tokens"]
    xp = array_namespace(tokens)
    batch, length = ids.shape
    d_model = tokens.shape[1]
    flat_ids = xp.reshape(ids, (-1,))
    x = xp.reshape(xp.take(tokens, flat_ids, axis=0), (batch, length, d_model))
    if scale:
        x = x * math.sqrt(d_model)
    if "positions" in params:
        x = x + xp.take(params["positions"], xp.arange(length) + offset, axis=0)
    elif sinusoidal_positions:
        x = x + sinusoidal(length, d_model, x.dtype, xp, offset)
    return x, flat_ids


def bwd(flat_ids, g, vocab_size: int, n_positions: int | None = None, *, scale: bool = True):
    """g (B, T, d_model) -> dparams. The token gradient is a scatter-add over the ids (no one-hot of
    vocab size). n_positions: the rows of the learned position table; None without one. scale as fwd's."""
    xp = array_namespace(g)
    d_model = g.shape[-1]
    g_rows = xp.reshape(g, (-1, d_model))
    if scale:
        g_rows = g_rows * math.sqrt(d_model)
    zeros = xp.zeros((vocab_size, d_model), dtype=g.dtype)
    dparams = {"tokens": backend_of(g).scatter_add(zeros, flat_ids, g_rows)}
    if n_positions is not None:
        length = g.shape[1]
        unused = xp.zeros((n_positions - length, d_model), dtype=g.dtype)
        dparams["positions"] = xp.concat([xp.sum(g, axis=0), unused], axis=0)
    return dparams


def apply(params: dict, ids, offset=0, *, scale: bool = True, sinusoidal_positions: bool = True):
    return fwd(params, ids, offset, scale=scale, sinusoidal_positions=sinusoidal_positions)[0]
