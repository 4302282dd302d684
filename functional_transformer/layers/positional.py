"""Sinusoidal positional encoding (paper §3.5), a constant table rather than a layer:

PE[pos, 2i] = sin(pos / 10000^(2i/d)),   PE[pos, 2i+1] = cos(pos / 10000^(2i/d))
"""

from __future__ import annotations

from types import ModuleType

from backends import with_x64_scope


@with_x64_scope
def sinusoidal(n_positions: int, d_model: int, dtype, xp: ModuleType, offset=0):
    """Rows offset .. offset + n_positions - 1 of the table, (n_positions, d_model), computed in
    float64 and cast to `dtype`, so that every backend gives the same float32 numbers. `offset`
    may be a traced integer (cached decoding under jit)."""
    positions = xp.reshape(xp.arange(n_positions, dtype=xp.float64) + offset, (-1, 1))  # (T, 1)
    inv_freq = 10000.0 ** (-xp.arange(0, d_model, 2, dtype=xp.float64) / d_model)  # (ceil(d/2),)
    angles = positions * inv_freq  # (T, ceil(d/2))
    # Interleave sin and cos: column 2i is sin, column 2i+1 is cos.
    table = xp.reshape(xp.stack([xp.sin(angles), xp.cos(angles)], axis=-1), (n_positions, -1))
    return xp.astype(table[:, :d_model], dtype)
