"""The residual connection around a sublayer, with its layer norm and dropout (paper §3.1, §5.4).

post-norm (the paper):  y = LayerNorm(x + Dropout(Sublayer(x)))
pre-norm:               y = x + Dropout(Sublayer(LayerNorm(x)))

The sublayer comes in as a pair of closures: `sublayer_fwd(h) -> (out, res)` and
`sublayer_bwd(res, g) -> (dparams, dh, *extra)`, where extra holds cotangents of other inputs
(cross-attention's memory), passed through to the caller.
"""

from __future__ import annotations

from . import dropout, layer_norm


def fwd(ln_params: dict, x, sublayer_fwd, *, norm_first: bool, drop_rate: float, key=None, train: bool = False):
    """x (B, T, D) -> (y (B, T, D), res)."""
    if norm_first:
        h, res_ln = layer_norm.fwd(ln_params, x)
        out, res_sub = sublayer_fwd(h)
        out, res_drop = dropout.fwd(out, drop_rate, key, train)
        return x + out, (res_ln, res_sub, res_drop)
    out, res_sub = sublayer_fwd(x)
    out, res_drop = dropout.fwd(out, drop_rate, key, train)
    y, res_ln = layer_norm.fwd(ln_params, x + out)
    return y, (res_ln, res_sub, res_drop)


def bwd(res, g, sublayer_bwd, *, norm_first: bool):
    """-> (d_ln_params, d_sublayer_params, dx, extra)."""
    res_ln, res_sub, res_drop = res
    if norm_first:
        d_sub, dh, *extra = sublayer_bwd(res_sub, dropout.bwd(res_drop, g))
        d_ln, dx_ln = layer_norm.bwd(res_ln, dh)
        return d_ln, d_sub, g + dx_ln, extra
    d_ln, d_sum = layer_norm.bwd(res_ln, g)
    d_sub, dx_sub, *extra = sublayer_bwd(res_sub, dropout.bwd(res_drop, d_sum))
    return d_ln, d_sub, d_sum + dx_sub, extra
