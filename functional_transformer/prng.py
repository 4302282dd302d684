"""Keyed random numbers for users of the library, as `ft.random`: `ft.random.key(seed)` makes a key on the
default backend (FT_BACKEND); the rest take a key and stay on its backend. See backends.prng."""

from __future__ import annotations

from backends.prng import bernoulli, bits, fold_in, normal, realised_probability, split, uniform

from .backend_choice import default_backend

__all__ = ["key", "split", "fold_in", "bits", "uniform", "normal", "bernoulli", "realised_probability"]


def key(seed: int, backend=None):
    """A uint32 (2,) key from an integer seed, on `backend` (default: the one FT_BACKEND names)."""
    return (backend or default_backend()).random.key(seed)
