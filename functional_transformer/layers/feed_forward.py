"""Position-wise feed-forward network (paper §3.3): w_2(act(w_1 x + b_1)) + b_2.

params {"w_1": (d_model, d_ff), "b_1": (d_ff,), "w_2": (d_ff, d_model), "b_2": (d_model,)}.
"""

from __future__ import annotations

from backends import random as jrandom

from . import activations, linear


def init(key, d_model: int, d_ff: int, dtype) -> dict:
    k1, k2 = jrandom.split(key, 2)
    inner, outer = linear.init(k1, d_model, d_ff, dtype), linear.init(k2, d_ff, d_model, dtype)
    return {"w_1": inner["w"], "b_1": inner["b"], "w_2": outer["w"], "b_2": outer["b"]}


def fwd(params: dict, x, activation: str = "relu"):
    """x (B, T, d_model) -> (B, T, d_model)."""
    h, res_1 = linear.fwd({"w": params["w_1"], "b": params["b_1"]}, x)  # (B, T, d_ff)
    a, res_act = activations.FORWARD[activation](h)
    y, res_2 = linear.fwd({"w": params["w_2"], "b": params["b_2"]}, a)
    return y, (res_1, res_act, res_2, activation)


def bwd(res, g):
    """-> (dparams, dx)."""
    res_1, res_act, res_2, activation = res
    d_2, da = linear.bwd(res_2, g)
    d_1, dx = linear.bwd(res_1, activations.BACKWARD[activation](res_act, da))
    return {"w_1": d_1["w"], "b_1": d_1["b"], "w_2": d_2["w"], "b_2": d_2["b"]}, dx


def apply(params: dict, x, activation: str = "relu"):
    return fwd(params, x, activation)[0]
