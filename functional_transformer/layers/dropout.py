"""Inverted dropout: zero each entry with probability drop_rate and scale the rest by 1/keep.

Randomness comes only from the explicit key (Threefry, the same masks on every backend).
The keep probability is realised to 1/65536 (16-bit draws, see backends.prng.bernoulli) and the
scale uses the realised value, so E[dropout(x)] == x exactly.
"""

from __future__ import annotations

from backends import array_namespace
from backends import prng as ftrandom


def fwd(x, drop_rate: float, train: bool = False, key=None):
    """x (any shape) -> (y, scaled_mask), the mask the backward reuses (None when not training or
    drop_rate == 0: then y is x)."""
    if not train or drop_rate == 0.0:
        return x, None
    if key is None:
        raise ValueError("dropout is on (train=True, drop_rate > 0) but no key was given: pass key=ft.random.key(seed)")
    xp = array_namespace(x)
    keep_prob = ftrandom.realised_probability(1.0 - drop_rate)
    keep = ftrandom.bernoulli(key, keep_prob, x.shape)
    scaled_mask = xp.astype(keep, x.dtype)  # a new array, so scaling it in place is safe (JAX rebinds)
    scaled_mask *= 1.0 / keep_prob  # reused as is by the backward
    return x * scaled_mask, scaled_mask


def bwd(scaled_mask, g):
    return g if scaled_mask is None else g * scaled_mask


def apply(x, drop_rate: float, train: bool = False, key=None):
    return fwd(x, drop_rate, train, key)[0]


def split_keys(key, n: int) -> list:
    """n independent keys from `key`, or n Nones when there is no key (eval mode)."""
    if key is None:
        return [None] * n
    keys = ftrandom.split(key, n)
    return [keys[i] for i in range(n)]
