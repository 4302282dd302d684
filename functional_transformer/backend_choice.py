"""The default backend: FT_BACKEND ("numpy" or "jax"), read once, on first use (`default_backend()`)."""

from __future__ import annotations

import functools
import os

import backends


@functools.cache
def default_backend() -> backends.Backend:
    return backends.get_backend(os.environ.get("FT_BACKEND", "numpy").strip().lower() or "numpy")
