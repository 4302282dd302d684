"""Rotary position embeddings (RoPE, Su et al. 2021), as Llama applies them to queries and keys.

Each pair of dimensions (i, i + Dh/2) of a head is rotated by the angle position * base^(-2i/Dh)
(the "rotate_half" layout of Hugging Face's Llama, not the interleaved pairs (2i, 2i+1) of the
paper). With c = cos(angle), s = sin(angle), both (T, Dh) with each frequency twice:

    y = x * c + rotate_half(x) * s,      rotate_half([x1, x2]) = [-x2, x1]

A rotation is orthogonal, so the backward is the inverse rotation of the gradient:

    dx = g * c + rotate_half^T(g * s),   rotate_half^T([g1, g2]) = [g2, -g1]

The dot product of a rotated query at position m and a rotated key at position n depends on m - n
only: attention sees relative positions, and the embedding adds no absolute ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import array_namespace, with_x64_scope

BASE = 10000.0


class Table(NamedTuple):
    """cos and sin of the angles, (T, Dh) each, for T consecutive positions."""

    cos: Any
    sin: Any


@with_x64_scope
def table(n_positions: int, d_head: int, dtype, xp, offset=0, base: float = BASE) -> Table:
    """The rotation of positions offset .. offset + n_positions - 1 for heads of d_head dimensions,
    computed in float64 and cast to `dtype` (as positional.sinusoidal). `offset` may be traced."""
    if d_head % 2:
        raise ValueError(f"rotary positions need an even head size, got {d_head}")
    positions = xp.reshape(xp.arange(n_positions, dtype=xp.float64) + offset, (-1, 1))  # (T, 1)
    inv_freq = base ** (-xp.arange(0, d_head, 2, dtype=xp.float64) / d_head)  # (Dh/2,)
    angles = positions * inv_freq  # (T, Dh/2)
    angles = xp.concat([angles, angles], axis=-1)  # (T, Dh): frequency i at i and i + Dh/2
    return Table(xp.astype(xp.cos(angles), dtype), xp.astype(xp.sin(angles), dtype))


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] over the last axis."""
    xp = array_namespace(x)
    half = x.shape[-1] // 2
    return xp.concat([-x[..., half:], x[..., :half]], axis=-1)


def rotate_half_transposed(g):
    """The transpose of rotate_half: [g1, g2] -> [g2, -g1]."""
    xp = array_namespace(g)
    half = g.shape[-1] // 2
    return xp.concat([g[..., half:], -g[..., :half]], axis=-1)


def fwd(x, rotation: Table):
    """x (..., T, Dh) (heads: (B, H, T, Dh)) -> y of the same shape. The backward needs only the
    table, which the caller keeps, so nothing is saved."""
    return x * rotation.cos + rotate_half(x) * rotation.sin


def bwd(rotation: Table, g):
    """g (..., T, Dh) -> dx: the inverse rotation."""
    return g * rotation.cos + rotate_half_transposed(g * rotation.sin)


def apply(x, rotation: Table):
    return fwd(x, rotation)
