"""Position-wise feed-forward network (paper §3.3): w_2(act(w_1 x + b_1)) + b_2.

params {"w_1": (d_model, d_ff), "b_1": (d_ff,), "w_2": (d_ff, d_model), "b_2": (d_model,)}.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import prng as ftrandom

from . import activations, linear


class Saved(NamedTuple):
    inner: linear.Saved  # w_1
    activation: Any  # the activation's saved arrays (activations.py)
    outer: linear.Saved  # w_2


def init(key, d_model: int, d_ff: int, dtype) -> dict:
    k1, k2 = ftrandom.split(key, 2)
    inner, outer = linear.init(k1, d_model, d_ff, dtype), linear.init(k2, d_ff, d_model, dtype)
    return {"w_1": inner["w"], "b_1": inner["b"], "w_2": outer["w"], "b_2": outer["b"]}


def fwd(params: dict, x, activation: str = "relu"):
    """x (B, T, d_model) -> (y (B, T, d_model), saved)."""
    h, saved_inner = linear.fwd({"w": params["w_1"], "b": params["b_1"]}, x)  # (B, T, d_ff)
    a, saved_act = activations.FORWARD[activation](h)
    y, saved_outer = linear.fwd({"w": params["w_2"], "b": params["b_2"]}, a)
    return y, Saved(saved_inner, saved_act, saved_outer)


def bwd(saved: Saved, g, activation: str = "relu"):
    """-> (dparams, dx); `activation` as given to fwd."""
    d_2, da = linear.bwd(saved.outer, g)
    d_1, dx = linear.bwd(saved.inner, activations.BACKWARD[activation](saved.activation, da))
    return {"w_1": d_1["w"], "b_1": d_1["b"], "w_2": d_2["w"], "b_2": d_2["b"]}, dx


def apply(params: dict, x, activation: str = "relu"):
    return fwd(params, x, activation)[0]
