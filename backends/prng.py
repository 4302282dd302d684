"""Pure, keyed random numbers: one counter-based generator, written once against the array namespace.

The generator is Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011), the one JAX itself uses. A key is a uint32 array of shape (2,). Every function
takes a key and derives its numbers from (key, counter) alone, so there is no global state and the
same key gives bit-identical integers on NumPy, JAX (CPU, GPU, TPU) and any Array API namespace.

Key derivation follows JAX's partitionable threefry scheme (`jax_threefry_partitionable=True`, JAX's
default): `key(seed)` is `[seed >> 32, seed & 0xFFFFFFFF]`, and element i of any draw hashes its own
counter pair (i >> 32, i & 0xFFFFFFFF) and nothing else, so `split`, `fold_in` and `bits` agree
with `jax.random.PRNGKey`, `jax.random.split`, `jax.random.fold_in` and `jax.random.bits` bit for
bit (a test checks this). Because element i depends on (key, i) alone, a device holding a slice of
a sharded array (a slice of the batch) draws exactly its slice: the numbers do not depend on how
an array is split over devices. (Until the sharding work the layout hashed element i together with
element i + n/2, JAX's older scheme; draws made since differ, saved params are unaffected.)

Like JAX: use a key once, either to split it or to draw from it.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .namespace import array_namespace
from .scope import with_x64_scope

Array = Any

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # Threefry's key-schedule constant


def threefry2x32(key: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32-20 of counter words (x0, x1) under `key` (uint32 (2,)); returns two uint32 arrays.

    The rounds use augmented assignments (`x0 += x1`): NumPy updates its arrays in place, JAX
    rebinds the name to a new immutable array, so one text serves both. Only the two arrays made
    by the first additions are ever updated, never the caller's. On NumPy this is several times
    faster than a new array per operation, most of whose cost is fresh memory for the allocator to
    fault in (docs/benchmarks.md, "Timings behind design choices"), and dropout hashes millions
    of words per training step.
    """
    k0, k1 = key[0:1], key[1:2]  # (1,) arrays, not scalars: NumPy warns when scalar arithmetic wraps
    schedule = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + k0  # new arrays: from here on the updates below may happen in place
    x1 = x1 + k1
    if isinstance(x0, np.ndarray) and x0.ndim == 1:
        for start in range(0, x0.shape[0], THREEFRY_BLOCK):
            _threefry_rounds_numpy(x0[start : start + THREEFRY_BLOCK], x1[start : start + THREEFRY_BLOCK], schedule)
        return x0, x1
    for group in range(5):  # 5 groups of 4 rounds, a key injection after each group
        for r in _ROTATIONS[group % 2]:
            x0 += x1
            high_bits = x1 << r  # x1 rotated left by r: (x1 << r) | (x1 >> (32 - r))
            x1 >>= 32 - r
            x1 |= high_bits
            x1 ^= x0
        x0 += schedule[(group + 1) % 3]
        x1 += schedule[(group + 2) % 3] + (group + 1)
    return x0, x1


THREEFRY_BLOCK = 32768  # lanes per block of NumPy's Threefry: two words and a scratch stay in L2 cache


def _threefry_rounds_numpy(x0: np.ndarray, x1: np.ndarray, schedule: tuple) -> None:
    """threefry2x32's 20 rounds on one block of NumPy words, in place, the rotation's high bits in a
    scratch array (`out=`): no new array per operation, and 20 rounds over a block while it is in
    cache instead of 20 passes over all of memory. The same integer operations, so the same bits."""
    high_bits = np.empty_like(x1)
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 += x1
            np.left_shift(x1, r, out=high_bits)
            x1 >>= 32 - r
            x1 |= high_bits
            x1 ^= x0
        x0 += schedule[(group + 1) % 3]
        x1 += schedule[(group + 2) % 3] + (group + 1)


@with_x64_scope
def key(seed: int, xp: ModuleType) -> Array:
    """A key from a non-negative integer seed below 2**64, as a uint32 (2,) array of namespace `xp`."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return xp.asarray([seed >> 32, seed & 0xFFFFFFFF], dtype=xp.uint32)


def _check_key(key: Array) -> ModuleType:
    xp = array_namespace(key)
    if key.shape != (2,) or key.dtype != xp.uint32:
        raise ValueError(
            f"a random key is a uint32 array of shape (2,), got dtype {key.dtype} and shape {key.shape}; "
            "make one with ft.random.key(seed) and derive more with ft.random.split(key, n)"
        )
    return xp


def _lanes(key: Array, n: int) -> tuple[Array, Array]:
    """Threefry of the counter pairs (i >> 32, i & 0xFFFFFFFF) for i in 0..n-1: two uint32 (n,) arrays.

    One lane per element, as in JAX's partitionable scheme; n < 2**32 here, so the high word is 0."""
    xp = _check_key(key)
    if n >= 2**32:
        raise ValueError(f"at most 2**32 - 1 random lanes per draw, got {n}")
    return threefry2x32(key, xp.zeros(n, dtype=xp.uint32), xp.arange(n, dtype=xp.uint32))


@with_x64_scope
def split(key: Array, num: int = 2) -> Array:
    """`num` new independent keys, shape (num, 2)."""
    xp = _check_key(key)
    y0, y1 = _lanes(key, num)
    return xp.stack([y0, y1], axis=1)


@with_x64_scope
def fold_in(key: Array, data) -> Array:
    """A new key from `key` and a non-negative integer (or integer array) `data` below 2**32, such
    as a step count: the same as jax.random.fold_in (Threefry of the counter pair (0, data))."""
    xp = _check_key(key)
    data = xp.reshape(xp.astype(xp.asarray(data), xp.uint32), (1,))
    y0, y1 = threefry2x32(key, xp.zeros(1, dtype=xp.uint32), data)
    return xp.concat([y0, y1])


@with_x64_scope
def bits(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniform uint32 words of the given shape: element i is the xor of lane i's two words (as JAX)."""
    xp = _check_key(key)
    y0, y1 = _lanes(key, math.prod(shape))
    return xp.reshape(y0 ^ y1, shape)


@with_x64_scope
def uniform(key: Array, shape: tuple[int, ...], dtype: Any = None, minval: float = 0.0, maxval: float = 1.0) -> Array:
    """Uniform floats in [minval, maxval), float32 (24 random bits) or float64 (53 random bits).

    Built from integer words with exact scaling, so both backends give bit-identical results.
    float32 draws apply minval/maxval in float64 and round once: under jit, XLA may fuse the
    multiply-add (one rounding instead of two), which would otherwise move a float32 draw by an
    ulp. float64 draws with a range other than [0, 1) can still differ by an ulp under jit.
    """
    xp = _check_key(key)
    dtype = xp.float32 if dtype is None else dtype
    n = math.prod(shape)
    if dtype == xp.float64:
        y0, y1 = _lanes(key, n)  # element i takes both words of its own lane
        hi = xp.astype(y0 >> 5, xp.float64)  # 27 bits
        lo = xp.astype(y1 >> 6, xp.float64)  # 26 bits
        u = (hi * 2.0**26 + lo) * 2.0**-53
        return xp.reshape(minval + (maxval - minval) * u, shape)
    if dtype != xp.float32:
        raise ValueError(f"uniform draws float32 or float64, not {dtype}")
    u = xp.astype(bits(key, (n,)) >> 8, xp.float64) * 2.0**-24  # 24 bits, exact in float32 and float64
    return xp.reshape(xp.astype(minval + (maxval - minval) * u, xp.float32), shape)


@with_x64_scope
def normal(key: Array, shape: tuple[int, ...], dtype: Any = None) -> Array:
    """Standard normal floats (Box-Muller, computed in float64 and then cast to `dtype`).

    Working in float64 makes the result identical across backends after the cast to float32
    (their float64 log/cos differ by at most an ulp); it costs nothing that matters at init time.
    """
    xp = _check_key(key)
    dtype = xp.float32 if dtype is None else dtype
    n = math.prod(shape)
    # Element i uses uniforms 2i and 2i + 1: its own, so a slice of the draw needs only its lanes.
    u = uniform(key, (n, 2), xp.float64)
    radius = xp.sqrt(-2.0 * xp.log1p(-u[:, 0]))  # 1 - u is in (0, 1], so the log is finite
    z = radius * xp.cos((2.0 * math.pi) * u[:, 1])
    return xp.astype(xp.reshape(z, shape), dtype)


BERNOULLI_BITS = 16  # bits per Bernoulli draw: a 32-bit Threefry word gives two draws


def realised_probability(p: float) -> float:
    """The probability `bernoulli(key, p, ...)` really draws True with: p rounded to 1/2**16."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability must be in [0, 1], got {p}")
    return round(p * 2**BERNOULLI_BITS) / 2**BERNOULLI_BITS


@with_x64_scope
def bernoulli(key: Array, p: float, shape: tuple[int, ...]) -> Array:
    """Booleans that are True with probability `realised_probability(p)` (p to 16 bits).

    Draws 2j and 2j + 1 compare the two words of lane j (their high 16 bits): one Threefry lane
    per two draws, half the hashing of a lane per draw, and a slice of the draw that starts at an
    even element (a shard of a batch of sequences padded to a multiple of 8) needs only its own
    lanes. The probability is off by at most 2**-17.
    """
    xp = _check_key(key)
    n = math.prod(shape)
    threshold = round(realised_probability(p) * 2**BERNOULLI_BITS)
    if threshold == 2**BERNOULLI_BITS:  # p == 1: `threshold << 16` below would not fit in 32 bits
        return xp.ones(shape, dtype=xp.bool)
    y0, y1 = _lanes(key, (n + 1) // 2)
    # `(word >> 16) < threshold` is `word < threshold << 16`: comparing whole words skips a
    # shift and its array, which halves this function's time on NumPy
    # (docs/benchmarks.md, "Timings behind design choices").
    limit = xp.asarray(threshold << BERNOULLI_BITS, dtype=xp.uint32)  # a Python int above 2**31 overflows JAX's int32
    draws_kept = xp.reshape(xp.stack([y0 < limit, y1 < limit], axis=1), (-1,))
    return xp.reshape(draws_kept[:n], shape)
