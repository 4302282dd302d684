"""Gated feed-forward networks (Shazeer 2020): SwiGLU (Llama) and GeGLU.

    y = (act(x W_gate) * (x W_up)) W_down        act = SiLU (SwiGLU) or GELU (GeGLU)

params {"w_gate": (d_model, d_ff), "w_up": (d_model, d_ff), "w_down": (d_ff, d_model)} and, with
bias, {"b_gate", "b_up", "b_down"}. The gate and up projections read the same input and run as
one matmul (as attention's q, k, v; layers/attention.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import array_namespace
from backends import prng as ftrandom

from . import activations, linear


class Saved(NamedTuple):
    inner: linear.Saved  # the fused gate and up projection
    gate: Any  # the activation's saved arrays
    activated: Any  # act(x W_gate), (..., d_ff)
    up: Any  # x W_up, (..., d_ff)
    outer: linear.Saved  # w_down


def init(key, d_model: int, d_ff: int, dtype, bias: bool = False) -> dict:
    params = {}
    for name, k, (d_in, d_out) in zip(
        ("gate", "up", "down"), ftrandom.split(key, 3), ((d_model, d_ff), (d_model, d_ff), (d_ff, d_model))
    ):
        proj = linear.init(k, d_in, d_out, dtype, bias)
        params[f"w_{name}"] = proj["w"]
        if bias:
            params[f"b_{name}"] = proj["b"]
    return params


def _inner(params: dict) -> dict:
    xp = array_namespace(params["w_gate"])
    fused = {"w": xp.concat([params["w_gate"], params["w_up"]], axis=1)}
    if "b_gate" in params:
        fused["b"] = xp.concat([params["b_gate"], params["b_up"]])
    return fused


def fwd(params: dict, x, activation: str = "silu"):
    """x (..., d_model) -> (y (..., d_model), saved); `activation` names the gate's ("silu", "gelu")."""
    d_ff = params["w_gate"].shape[1]
    h, saved_inner = linear.fwd(_inner(params), x)  # (..., 2 d_ff)
    activated, saved_gate = activations.FORWARD[activation](h[..., :d_ff])
    up = h[..., d_ff:]
    down = {"w": params["w_down"]} | ({"b": params["b_down"]} if "b_down" in params else {})
    y, saved_outer = linear.fwd(down, activated * up)
    return y, Saved(saved_inner, saved_gate, activated, up, saved_outer)


def bwd(saved: Saved, g, activation: str = "silu", bias: bool = False):
    """-> (dparams, dx); `activation` and `bias` as given to fwd and init."""
    xp = array_namespace(g)
    d_down, d_product = linear.bwd(saved.outer, g, bias)
    d_gate = activations.BACKWARD[activation](saved.gate, d_product * saved.up)
    d_up = d_product * saved.activated
    d_inner, dx = linear.bwd(saved.inner, xp.concat([d_gate, d_up], axis=-1), bias)
    d_ff = d_gate.shape[-1]
    dparams = {"w_gate": d_inner["w"][:, :d_ff], "w_up": d_inner["w"][:, d_ff:], "w_down": d_down["w"]}
    if bias:
        dparams |= {"b_gate": d_inner["b"][:d_ff], "b_up": d_inner["b"][d_ff:], "b_down": d_down["b"]}
    return dparams, dx


def apply(params: dict, x, activation: str = "silu"):
    return fwd(params, x, activation)[0]
