"""The default backend: FT_BACKEND ("numpy" or "jax"), read once, on first use (`default_backend()`)."""

from __future__ import annotations

import functools
import os

import backends

from .errors import ConfigError


@functools.cache
def default_backend() -> backends.Backend:
    """The backend FT_BACKEND names (numpy where it is unset); set but empty is an error, not numpy."""
    name = os.environ.get("FT_BACKEND")
    if name is None:
        return backends.get_backend("numpy")
    if not name.strip():
        raise ConfigError("FT_BACKEND is set but empty: set it to numpy or jax (FT_BACKEND=jax), or unset it for numpy")
    return backends.get_backend(name.strip().lower())
