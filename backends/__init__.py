"""Array backends: an array namespace plus the few things the Array API standard does not cover.

This package knows nothing about Transformers. A `Backend` offers:
- `xp`, the array namespace (`numpy` or `jax.numpy`);
- `jit(fn, static_argnames=..., donate_argnames=...)`: `jax.jit` on JAX, the identity on NumPy;
- `while_loop(cond, body, state)`: `jax.lax.while_loop` on JAX (one compiled loop under `jit`),
  a plain Python `while` on NumPy;
- `x64_scope()`: a context in which JAX computes with 64-bit types, and `in_x64_scope(fn)`, fn
  called in it (both do nothing on NumPy), so that the library's float64 never leaks out to the
  process (see JaxBackend); `with_x64_scope`, the decorator of the library's entry points;
- tree helpers for nested dicts (`tree_map`, `tree_leaves`, `tree_flatten`, `tree_unflatten`);
- `asarray` / `to_numpy` to move arrays in and out;
- `scatter_add` and `set_at`, the two functional index updates the standard lacks;
- `stop_gradient` and `relu`, for forward code whose `jax.grad` should be as lean as a
  hand-written backward (the identity and `maximum(x, 0)` where nothing differentiates);
- `random`: pure keyed random numbers (`key(seed)`, `split`, `uniform`, `normal`, `bernoulli`),
  the same numbers on every backend for the same key (see `backends.prng`).

`get_backend("numpy" | "jax")` gives one by name; `backend_of(array, ...)` gives the backend an array
belongs to, so that library code can run on whatever arrays it is handed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

from . import prng as _random
from .namespace import array_namespace
from .scope import with_x64_scope
from .tree import tree_flatten, tree_items, tree_leaves, tree_map, tree_structure, tree_unflatten

BACKEND_NAMES = ("numpy", "jax")

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "array_namespace",
    "backend_of",
    "get_backend",
    "with_x64_scope",
    "tree_flatten",
    "tree_items",
    "tree_leaves",
    "tree_map",
    "tree_structure",
    "tree_unflatten",
]


class Backend:
    """An array namespace and the helpers around it. Subclasses fill in what differs."""

    name: str = "array_api"

    def __init__(self, xp: ModuleType):
        self.xp = xp
        self.random = SimpleNamespace(
            key=lambda seed: _random.key(seed, self.xp),
            split=_random.split,
            fold_in=_random.fold_in,
            bits=_random.bits,
            uniform=_random.uniform,
            normal=_random.normal,
            bernoulli=_random.bernoulli,
            realised_probability=_random.realised_probability,
        )

    tree_map = staticmethod(tree_map)
    tree_leaves = staticmethod(tree_leaves)
    tree_items = staticmethod(tree_items)
    tree_flatten = staticmethod(tree_flatten)
    tree_unflatten = staticmethod(tree_unflatten)

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"

    def jit(
        self, fn: Callable, static_argnames: tuple[str, ...] = (), donate_argnames: tuple[str, ...] = ()
    ) -> Callable:
        return fn

    def while_loop(self, cond: Callable[[Any], Any], body: Callable[[Any], Any], state: Any) -> Any:
        """`state = body(state)` while `cond(state)` holds -> the last state. `body` must keep the
        shapes and dtypes of every array in `state` (a tree), as `jax.lax.while_loop` requires."""
        while bool(cond(state)):
            state = body(state)
        return state

    def x64_scope(self) -> contextlib.AbstractContextManager:
        """A context in which the backend computes with 64-bit types (NumPy always does)."""
        return contextlib.nullcontext()

    def in_x64_scope(self, fn: Callable) -> Callable:
        """`fn` (a jitted function too: calls and `.lower`) run inside `x64_scope()`."""
        return fn

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def tree_to_numpy(self, tree: Any) -> Any:
        return tree_map(self.to_numpy, tree)

    def tree_asarray(self, tree: Any) -> Any:
        return tree_map(self.asarray, tree)

    def is_concrete(self, x: Any) -> bool:
        """Whether x holds values Python can read now (False for a tracer inside `jit`)."""
        return True

    def block_until_ready(self, tree: Any) -> Any:
        return tree

    def scatter_add(self, target: Any, indices: Any, updates: Any) -> Any:
        """A copy of `target` (N, ...) with `updates[i]` added to row `indices[i]`, repeats summed."""
        raise NotImplementedError(f"scatter_add is not available on the {self.name} backend")

    def set_at(self, x: Any, index: Any, value: Any) -> Any:
        """A copy of `x` with `x[index] = value`."""
        raise NotImplementedError(f"set_at is not available on the {self.name} backend")

    def stop_gradient(self, x: Any) -> Any:
        """x, with a zero derivative under autodiff (the identity where nothing differentiates)."""
        return x

    def relu(self, x: Any) -> Any:
        """max(x, 0) element-wise, same dtype."""
        return self.xp.maximum(x, self.xp.asarray(0, dtype=x.dtype))


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self):
        super().__init__(np)

    def scatter_add(self, target, indices, updates):
        # Sort the rows by index and sum each run with one `add.reduceat`: `np.add.at` does the
        # same sums one row at a time, an order of magnitude slower on the embedding gradient
        # (docs/benchmarks.md, "Timings behind design choices"). The sums agree with `add.at` up
        # to float rounding (reduceat may group the additions differently) and are deterministic.
        indices = np.asarray(indices).reshape(-1)
        out = target.copy()
        if indices.size == 0:
            return out
        n_rows = target.shape[0]
        if indices.min() < -n_rows or indices.max() >= n_rows:
            raise IndexError(
                f"scatter_add: indices must be in [-{n_rows}, {n_rows}), got {indices.min()}..{indices.max()}"
            )
        indices = indices % n_rows  # -1 and n_rows - 1 must fall into the same run
        order = np.argsort(indices, kind="stable")
        sorted_indices = indices[order]
        run_starts = np.flatnonzero(np.concatenate([[True], sorted_indices[1:] != sorted_indices[:-1]]))
        out[sorted_indices[run_starts]] += np.add.reduceat(updates[order], run_starts, axis=0)
        return out

    def set_at(self, x, index, value):
        out = x.copy()
        out[index] = value
        return out


class JaxBackend(Backend):
    """JAX: `jax.numpy` plus `jax.jit`, every call of a jitted function inside `jax.enable_x64(True)`.

    The library computes some things in float64 on every backend, float32 models too: the
    learning-rate schedules and Adam's bias corrections, the sinusoidal position table, the
    float64 intermediates of `random.uniform`/`normal` that make both backends draw the same
    numbers; and `dtype="float64"` models are float64 throughout. So its JAX programs are traced
    and run with 64-bit types on, as they were when this backend turned on `jax_enable_x64` for
    the whole process. But that changed every other user of JAX in the process (`jnp.zeros(2)`
    became float64), so now the flag is set only in a scope around the library's own calls
    (`jax.enable_x64`, thread-local): around each call of a jitted function, not its definition,
    since jit traces at call time and keys its cache on the flag; around `asarray`, so that
    float64 data moved to JAX stays float64; around the public entry points (`ft.init`, `ft.apply`,
    `ft.fit`, decoding, ...: `with_x64_scope`), whose eager steps see the same dtypes; and around the
    few functions that make float64 intermediates for float32 results (the random draws, the
    learning-rate schedules, Adam's update, the sinusoidal and rotary tables), so that float32 work
    never needs x64 from the user. The layers, parts and models carry no scope: they run in their
    caller's, and float64 ones called directly on JAX need `x64_scope()` around them. Why a
    scope rather than an error asking float64 users to turn x64 on: float32 models need the
    float64 intermediates above too, and a scope keeps their numbers what they were (the same
    compiled programs) without asking anything of the user. Every array the library makes names its dtype or
    follows its inputs, so float32 models stay float32 inside the scope; outside it the process
    keeps whatever the user chose. Arrays the library returns keep their dtype; a user computing
    on float64 results with `jax.numpy` turns x64 on themselves (or uses `backend.x64_scope()`).
    """

    name = "jax"

    def __init__(self):
        try:
            import jax
            import jax.core
            import jax.numpy as jnp
        except ImportError as err:
            raise ImportError(
                "FT_BACKEND=jax needs JAX, which is not installed. Install it with "
                "`pip install 'functional-transformer[jax]'` (or `pip install jax`), or `uv sync` in a "
                "checkout, or choose the NumPy backend with FT_BACKEND=numpy."
            ) from err
        self.jax = jax
        self._tracer_type = jax.core.Tracer
        super().__init__(jnp)

    def jit(self, fn, static_argnames=(), donate_argnames=()):
        return self._jit(fn, static_argnames, donate_argnames)

    @functools.cache  # noqa: B019 - one backend object per process, so the cache never outlives it
    def _jit(self, fn: Callable, static_argnames: tuple[str, ...], donate_argnames: tuple[str, ...]) -> Callable:
        # Memoised so that wrapping the same function twice reuses one compilation cache.
        return self.in_x64_scope(self.jax.jit(fn, static_argnames=static_argnames, donate_argnames=donate_argnames))

    def x64_scope(self):
        return self.jax.enable_x64(True)  # the one setting with_x64_scope (backends/scope.py) enters too

    def in_x64_scope(self, fn):
        return _InX64Scope(fn, self)

    def asarray(self, x, dtype=None):
        with self.x64_scope():
            return self.xp.asarray(x, dtype=dtype)

    def tree_asarray(self, tree):
        with self.x64_scope():
            return tree_map(self.xp.asarray, tree)

    def while_loop(self, cond, body, state):
        # Under jit the whole loop is one XLA While, with no return to Python per pass. The barrier
        # makes the initial state real arrays: without it XLA sank the transpose that made the
        # decoding cache's cross-attention keys head-major into the loop body, redoing it every
        # pass.
        lax = self.jax.lax
        return lax.while_loop(cond, body, lax.optimization_barrier(state))

    def to_numpy(self, x):
        return np.asarray(self.jax.device_get(x))

    def is_concrete(self, x):
        return not isinstance(x, self._tracer_type)

    def block_until_ready(self, tree):
        return self.jax.block_until_ready(tree)

    def scatter_add(self, target, indices, updates):
        return target.at[indices].add(updates)

    def set_at(self, x, index, value):
        return x.at[index].set(value)

    def stop_gradient(self, x):
        return self.jax.lax.stop_gradient(x)

    def relu(self, x):
        # The same values as maximum(x, 0), but a derivative of select(x > 0, g, 0): jnp.maximum's
        # splits ties in half, a compare, select and divide more per element.
        return self.jax.nn.relu(x)


class _InX64Scope:
    """A function (a `jax.jit` one: also its `.lower`) whose every call runs in `backend.x64_scope()`."""

    def __init__(self, fn: Any, backend: Backend):  # Any: a jax.jit function has `.lower`, a Callable not
        self.fn, self.backend = fn, backend
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        with self.backend.x64_scope():
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with self.backend.x64_scope():
            return self.fn.lower(*args, **kwargs)


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend called `name` ("numpy" or "jax"); one instance per name."""
    if name == "numpy":
        return NumpyBackend()
    if name == "jax":
        return JaxBackend()
    raise ValueError(
        f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)} (for example FT_BACKEND=numpy)"
    )


@functools.cache
def _generic_backend(xp: ModuleType) -> Backend:
    return Backend(xp)


def backend_of(*arrays: Any) -> Backend:
    """The backend of the given arrays (or trees of arrays): NumPy, JAX, or a generic Array API one."""
    leaves = [leaf for a in arrays if a is not None for leaf in tree_leaves(a)]
    xp = array_namespace(*leaves)
    if xp is np:
        return get_backend("numpy")
    if xp.__name__ == "jax.numpy":
        return get_backend("jax")
    return _generic_backend(xp)
