"""Mixed precision (TransformerConfig.compute_dtype): the casts around the steps that stay wide.

With bfloat16 activations (8 bits of mantissa) a softmax's normalising sum and a layer norm's mean
and variance lose too much, so those widen to float32 and cast their result back. At float32 and
float64 both functions return their input itself: no copy, the same numbers as before.
"""

from __future__ import annotations

from backends import array_namespace


def at_least_float32(x):
    """x (any shape), in float32 when its dtype is narrower (bfloat16), else x itself."""
    xp = array_namespace(x)
    return xp.astype(x, xp.float32) if xp.finfo(x.dtype).bits < 32 else x


def as_dtype(x, dtype):
    """x in `dtype`; x itself when it already is (NumPy's astype would copy)."""
    return x if x.dtype == dtype else array_namespace(x).astype(x, dtype)
