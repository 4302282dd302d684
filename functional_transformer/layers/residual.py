"""The residual connection around a sublayer, with its layer norm and dropout (paper §3.1, §5.4).

post-norm (the paper):  y = LayerNorm(x + Dropout(Sublayer(x)))
pre-norm:               y = x + Dropout(Sublayer(LayerNorm(x)))

The sublayer comes in as a pair of closures: `sublayer_fwd(h) -> (out, saved)` and
`sublayer_bwd(saved, g) -> (dparams, dh, *extra)`, where extra holds cotangents of other inputs
(cross-attention's memory), passed through to the caller.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import dropout, layer_norm


class Saved(NamedTuple):
    ln: layer_norm.Saved
    sublayer: Any  # what sublayer_fwd saved
    drop: Any  # dropout's scaled mask, or None in eval mode


def fwd(ln_params: dict, x, sublayer_fwd, *, norm_first: bool, drop_rate: float, train: bool = False, key=None):
    """x (B, T, D) -> (y (B, T, D), saved)."""
    if norm_first:
        h, saved_ln = layer_norm.fwd(ln_params, x)
        out, saved_sub = sublayer_fwd(h)
        out, saved_drop = dropout.fwd(out, drop_rate, train, key)
        return x + out, Saved(saved_ln, saved_sub, saved_drop)
    out, saved_sub = sublayer_fwd(x)
    out, saved_drop = dropout.fwd(out, drop_rate, train, key)
    y, saved_ln = layer_norm.fwd(ln_params, x + out)
    return y, Saved(saved_ln, saved_sub, saved_drop)


def bwd(saved: Saved, g, sublayer_bwd, *, norm_first: bool):
    """-> (d_ln_params, d_sublayer_params, dx, extra)."""
    if norm_first:
        d_sub, dh, *extra = sublayer_bwd(saved.sublayer, dropout.bwd(saved.drop, g))
        d_ln, dx_ln = layer_norm.bwd(saved.ln, dh)
        return d_ln, d_sub, g + dx_ln, extra
    d_ln, d_sum = layer_norm.bwd(saved.ln, g)
    d_sub, dx_sub, *extra = sublayer_bwd(saved.sublayer, dropout.bwd(saved.drop, d_sum))
    return d_ln, d_sub, d_sum + dx_sub, extra
