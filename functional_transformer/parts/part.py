"""The one contract every part follows, and the checks the combinators run on it.

A part is a small immutable value made from its settings (a frozen dataclass: hashable, so it can
be a static argument of `jit`). Its methods are pure functions:

    init(key) -> params                          a dict of arrays keyed by meaning ({} if none)
    fwd(params, x, *, train=False, key=None, **side) -> (y, saved)
    bwd(params, saved, dy) -> (dparams, dx)      dparams mirrors params, dx mirrors x
    apply(params, x, *, train=False, key=None, **side) -> y

`x` is one array, or a tuple of arrays for a part with several inputs (cross-attention reads
`(x, memory)`); `dx` then is a tuple of the same length. An integer or boolean input (token ids)
gets `None` as its cotangent. `side` holds what every part of a composition may read but nobody
differentiates: masks (`mask`, `memory_mask`, see masks.py). Combinators pass it to every child.

Decoding one position at a time over a key/value cache (KV cache):

    init_cache(params, x, max_len, **side) -> cache   x: the input for one position, (B, 1, ...)
    step(params, x, cache, position, **side) -> (y, cache)

Position-wise parts keep no cache (`None`) and step as they apply.

A combinator calls a child's `bwd` through `checked_bwd`, which compares the cotangents with the
structure of what the child read and of its params: a part whose backward returns a gradient of the
wrong structure is an error naming the part, never silently dropped or broadcast.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from backends import array_namespace
from backends import prng as ftrandom


class Part:
    """The base of every part: override init, fwd, bwd (and init_cache/step where decoding needs them)."""

    # How many inputs the part reads: 1 is a plain array x, n > 1 a tuple (x_1, ..., x_n).
    n_inputs = 1

    @property
    def needs_key(self) -> bool:
        """Whether fwd draws random numbers in training (dropout): combinators give it a key of its own."""
        return False

    def init(self, key) -> dict:
        return {}

    def fwd(self, params: dict, x, *, train: bool = False, key=None, **side):
        raise NotImplementedError(f"{self!r} has no fwd")

    def bwd(self, params: dict, saved, dy):
        raise NotImplementedError(f"{self!r} has no hand-written bwd")

    def apply(self, params: dict, x, *, train: bool = False, key=None, **side):
        """fwd without the residuals."""
        return self.fwd(params, x, train=train, key=key, **side)[0]

    def init_cache(self, params: dict, x, max_len: int, **side) -> dict | None:
        """The part's decoding cache for inputs like x (B, 1, ...); None for a position-wise part."""
        return None

    def output_like(self, params: dict, x):
        """An array (or tuple) shaped like the part's output for an input like x, with no compute to
        speak of: what a composition hands the next part's init_cache. This default keeps x's shape."""
        return x

    def step(self, params: dict, x, cache, position, **side):
        """One decoding position in eval mode -> (y, cache). Position-wise: apply, cache unchanged."""
        return self.apply(params, x, **side), cache

    def __call__(self, params: dict, x, **kwargs):
        return self.apply(params, x, **kwargs)


# --- the structure of inputs, recorded in fwd and checked against the cotangents in bwd -------


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """What a cotangent of one input array must look like: its shape, and None for an integer or
    boolean input (no gradient). Not a tuple: a tuple spec stands for a tuple input."""

    shape: tuple
    differentiable: bool


def spec_of(x):
    """The spec of an input: an ArraySpec, or a tuple of specs for a tuple input."""
    if isinstance(x, tuple):
        return tuple(spec_of(item) for item in x)
    xp = array_namespace(x)
    return ArraySpec(tuple(x.shape), bool(xp.isdtype(x.dtype, ("real floating", "complex floating"))))


def _describe(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    if isinstance(value, ArraySpec):
        return f"array{value.shape}" if value.differentiable else f"ids{value.shape} (cotangent None)"
    if isinstance(value, dict):
        return f"dict with keys {sorted(value)}"
    return f"array{tuple(getattr(value, 'shape', ()))}"


def _matches(spec, dx) -> bool:
    if isinstance(spec, tuple):
        return isinstance(dx, tuple) and len(dx) == len(spec) and all(map(_matches, spec, dx))
    if not spec.differentiable:
        return dx is None
    return dx is not None and not isinstance(dx, (tuple, list, dict)) and tuple(dx.shape) == spec.shape


def _param_mismatch(params, dparams, path: str = "") -> str | None:
    """Where dparams differs from params in keys or shapes, or None."""
    if isinstance(params, dict):
        if not isinstance(dparams, dict):
            return f"{path or 'params'}: expected a dict with keys {sorted(params)}, got {_describe(dparams)}"
        if sorted(params) != sorted(dparams):
            missing, extra = sorted(set(params) - set(dparams)), sorted(set(dparams) - set(params))
            return f"{path or 'params'}: gradient keys differ from the params' (missing {missing}, unexpected {extra})"
        for name in params:
            problem = _param_mismatch(params[name], dparams[name], f"{path}.{name}" if path else name)
            if problem:
                return problem
        return None
    if dparams is None or isinstance(dparams, (dict, tuple, list)) or tuple(dparams.shape) != tuple(params.shape):
        return f"{path}: gradient {_describe(dparams)} for a parameter of shape {tuple(params.shape)}"
    return None


class GradientStructureError(ValueError):
    """A part's bwd returned cotangents that do not mirror its params or inputs."""


def check_param_grads(part: Part, params: dict, dparams) -> None:
    """dparams must mirror params (keys and shapes), else an error naming `part`."""
    problem = _param_mismatch(params, dparams)
    if problem:
        raise GradientStructureError(f"{part!r}.bwd: {problem}")


def checked_bwd(part: Part, params: dict, saved, dy, x_spec, *, shared_params: bool = False):
    """part.bwd(params, saved, dy) -> (dparams, dx), checked against params and the input spec.

    shared_params: `params` is a dict the part shares with its siblings (a bare child of Serial),
    so its gradients may cover some of the keys; the owner checks that together they cover all."""
    result = part.bwd(params, saved, dy)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise GradientStructureError(
            f"{part!r}.bwd must return (dparams, dx), got {len(result) if isinstance(result, tuple) else 1} values"
        )
    dparams, dx = result
    if shared_params and isinstance(dparams, dict) and set(dparams) <= set(params):
        params = {name: params[name] for name in dparams}
    problem = _param_mismatch(params, dparams)
    if problem:
        raise GradientStructureError(f"{part!r}.bwd: {problem}")
    if not _matches(x_spec, dx):
        raise GradientStructureError(
            f"{part!r}.bwd returned dx {_describe(dx)} for an input {_describe(x_spec)}: dx must mirror x "
            "(one cotangent per input, None for integer inputs)"
        )
    return dparams, dx


def zeros_like_spec(spec, dtype, xp) -> Any:  # an array, None, or a tuple of them as the spec nests
    """A zero cotangent for an input of this spec (None for an integer input)."""
    if isinstance(spec, tuple):
        return tuple(zeros_like_spec(s, dtype, xp) for s in spec)
    return xp.zeros(spec.shape, dtype=dtype) if spec.differentiable else None


def add_cotangents(a, b) -> Any:  # an array, None, or a tuple of them as a and b nest
    """a + b for cotangents of one input (None is an integer input's: it stays None)."""
    if isinstance(a, tuple):
        return tuple(map(add_cotangents, a, b))
    return None if a is None else a + b


def keys_for(parts, key) -> list:
    """One dropout key per part that needs one (None for the others, and all None without a key).

    A single such part gets `key` itself; several get `split(key, n)` in order, so a composition draws
    exactly the numbers the hand-written model drew before it was a composition."""
    wanted = [i for i, part in enumerate(parts) if part.needs_key]
    keys = [None] * len(parts)
    if key is None or not wanted:
        return keys
    if len(wanted) == 1:
        keys[wanted[0]] = key
        return keys
    split = ftrandom.split(key, len(wanted))
    for j, i in enumerate(wanted):
        keys[i] = split[j]
    return keys
