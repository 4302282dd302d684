"""Pure, keyed random numbers: one counter-based generator, written once against the array namespace.

The generator is Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as
1, 2, 3", SC 2011), the one JAX itself uses. A key is a uint32 array of shape (2,). Every function
takes a key and derives its numbers from (key, counter) alone, so there is no global state and the
same key gives bit-identical integers on NumPy, JAX (CPU, GPU, TPU) and any Array API namespace.

Key derivation follows JAX's original (non-partitionable) threefry scheme exactly:
`key(seed)` is `[seed >> 32, seed & 0xFFFFFFFF]`, `split(key, n)` and `bits(key, shape)` hash the
counters `0, 1, 2, ...`; so with `jax_threefry_partitionable=False` they agree with
`jax.random.PRNGKey`, `jax.random.split` and `jax.random.bits` bit for bit (a test checks this).

Like JAX: use a key once, either to split it or to draw from it.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from .namespace import array_namespace

Array = Any

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # Threefry's key-schedule constant


def threefry2x32(key: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32-20 of counter words (x0, x1) under `key` (uint32 (2,)); returns two uint32 arrays.

    The rounds use augmented assignments (`x0 += x1`): NumPy updates its arrays in place, JAX
    rebinds the name to a new immutable array, so one text serves both. Only the two arrays made
    by the first additions are ever updated, never the caller's. On NumPy this is several times
    faster than a new array per operation, most of whose cost is fresh memory for the allocator to
    fault in (benchmarks/README.md, "Timings behind design choices"), and dropout hashes millions
    of words per training step.
    """
    k0, k1 = key[0:1], key[1:2]  # (1,) arrays, not scalars: NumPy warns when scalar arithmetic wraps
    schedule = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + k0  # new arrays: from here on the updates below may happen in place
    x1 = x1 + k1
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


def _words(key: Array, n: int) -> Array:
    """n uint32 words: Threefry of the counters 0..n-1, taken in two halves as JAX does."""
    xp = _check_key(key)
    counts = xp.arange(n, dtype=xp.uint32)
    if n % 2:  # an odd count is padded with one zero word, as in JAX
        counts = xp.concat([counts, xp.zeros(1, dtype=xp.uint32)])
    half = counts.shape[0] // 2
    y0, y1 = threefry2x32(key, counts[:half], counts[half:])
    return xp.concat([y0, y1])[:n]


def split(key: Array, num: int = 2) -> Array:
    """`num` new independent keys, shape (num, 2)."""
    xp = _check_key(key)
    return xp.reshape(_words(key, 2 * num), (num, 2))


def fold_in(key: Array, data) -> Array:
    """A new key from `key` and a non-negative integer (or integer array) `data` below 2**32, such
    as a step count: the same as jax.random.fold_in (Threefry of the counter pair (0, data))."""
    xp = _check_key(key)
    data = xp.reshape(xp.astype(xp.asarray(data), xp.uint32), (1,))
    y0, y1 = threefry2x32(key, xp.zeros(1, dtype=xp.uint32), data)
    return xp.concat([y0, y1])


def bits(key: Array, shape: tuple[int, ...]) -> Array:
    """Uniform uint32 words of the given shape."""
    xp = _check_key(key)
    return xp.reshape(_words(key, math.prod(shape)), shape)


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
        words = _words(key, 2 * n)
        hi = xp.astype(words[:n] >> 5, xp.float64)  # 27 bits
        lo = xp.astype(words[n:] >> 6, xp.float64)  # 26 bits
        u = (hi * 2.0**26 + lo) * 2.0**-53
        return xp.reshape(minval + (maxval - minval) * u, shape)
    if dtype != xp.float32:
        raise ValueError(f"uniform draws float32 or float64, not {dtype}")
    u = xp.astype(_words(key, n) >> 8, xp.float64) * 2.0**-24  # 24 bits, exact in float32 and float64
    return xp.reshape(xp.astype(minval + (maxval - minval) * u, xp.float32), shape)


def normal(key: Array, shape: tuple[int, ...], dtype: Any = None) -> Array:
    """Standard normal floats (Box-Muller, computed in float64 and then cast to `dtype`).

    Working in float64 makes the result identical across backends after the cast to float32
    (their float64 log/cos differ by at most an ulp); it costs nothing that matters at init time.
    """
    xp = _check_key(key)
    dtype = xp.float32 if dtype is None else dtype
    n = math.prod(shape)
    u = uniform(key, (2, n), xp.float64)
    radius = xp.sqrt(-2.0 * xp.log1p(-u[0]))  # 1 - u is in (0, 1], so the log is finite
    z = radius * xp.cos((2.0 * math.pi) * u[1])
    return xp.astype(xp.reshape(z, shape), dtype)


BERNOULLI_BITS = 16  # bits per Bernoulli draw: a 32-bit Threefry word gives two draws


def realised_probability(p: float) -> float:
    """The probability `bernoulli(key, p, ...)` really draws True with: p rounded to 1/2**16."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability must be in [0, 1], got {p}")
    return round(p * 2**BERNOULLI_BITS) / 2**BERNOULLI_BITS


def bernoulli(key: Array, p: float, shape: tuple[int, ...]) -> Array:
    """Booleans that are True with probability `realised_probability(p)` (p to 16 bits).

    Each 32-bit word yields two 16-bit draws: half the hashing of one word per draw. Dropout
    draws millions of these per training step, so this halves its cost against a float
    comparison, with the probability off by at most 2**-17. Draw i is the low half of word i and
    draw m + i the high half of word i (m words in all).
    """
    xp = _check_key(key)
    n = math.prod(shape)
    threshold = round(realised_probability(p) * 2**BERNOULLI_BITS)
    if threshold == 2**BERNOULLI_BITS:  # p == 1: `threshold << 16` below would not fit in 32 bits
        return xp.ones(shape, dtype=xp.bool)
    words = _words(key, (n + 1) // 2)
    # `(word >> 16) < threshold` is `word < threshold << 16`: comparing whole words skips a
    # shift and its array, which halves this function's time on NumPy (benchmarks/README.md).
    draws_kept = xp.concat([(words & 0xFFFF) < threshold, words < (threshold << BERNOULLI_BITS)])
    return xp.reshape(draws_kept[:n], shape)
