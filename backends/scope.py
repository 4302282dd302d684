"""`with_x64_scope`: the decorator of the library's entry points on JAX (see backends.JaxBackend)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable


def with_x64_scope(fn: Callable) -> Callable:
    """`fn` run with JAX's 64-bit types on (`jax.enable_x64(True)`, thread-local) whenever JAX is
    loaded: the decorator of the library's public entry points, whose eager steps (moving token ids,
    the decoding loop) must see the dtypes the jitted functions they call see, and of the functions
    that make float64 intermediates for float32 results (random draws, schedules). Not of what only
    such an entry point calls (layers, parts, models): they run in their caller's scope. Without JAX
    loaded there are no JAX arrays to handle."""

    @functools.wraps(fn)
    def scoped(*args, **kwargs):
        jax = sys.modules.get("jax")
        if jax is None:
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return scoped
