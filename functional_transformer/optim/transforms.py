"""Gradient transformations, their composition, and the optimisers built from them.

See the package docstring (`functional_transformer.optim`) for the contract. Each transformation
here mirrors the optax one of the same name, so that the aliases `sgd`, `adam` and `adamw` compute
what optax computes.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from backends import backend_of, tree_leaves, tree_map, with_x64_scope

from .schedules import Schedule

__all__ = [
    "GradientTransformation",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "global_norm",
    "identity",
    "scale_by_adam",
    "scale_by_learning_rate",
    "sgd",
    "trace",
]

Tree = Any
State = dict


class GradientTransformation(NamedTuple):
    """`init(params) -> state` and `update(grads, state, params=None) -> (updates, new_state)`."""

    init: Callable[[Tree], State]
    update: Callable[..., tuple[Tree, State]]


# --- helpers -------------------------------------------------------------------------------------


def _xp(*trees: Tree) -> ModuleType:
    # An empty tree has no arrays to name a namespace; there is nothing to compute on, so any will do.
    if not any(tree_leaves(tree) for tree in trees if tree is not None):
        return np
    return backend_of(*trees).xp


def _zeros_like(tree: Tree) -> Tree:
    xp = _xp(tree)
    return tree_map(lambda leaf: xp.zeros_like(leaf), tree)


def _zero_count(tree: Tree) -> Any:
    xp = _xp(tree)
    return xp.zeros((), dtype=xp.int32)


def _increment(count: Any, xp: ModuleType) -> Any:
    # Saturates instead of wrapping to a negative count after 2**31 - 1 updates (optax does the same).
    return xp.minimum(count, np.iinfo(np.int32).max - 1) + 1


def _cast(value: Any, like: Any, xp: ModuleType) -> Any:
    """`value` (a Python number or 0-d array) as a 0-d array of `like`'s dtype, so that it does not
    promote float32 leaves (NumPy 2 promotes float32 * float64 0-d array to float64)."""
    return xp.asarray(value, dtype=like.dtype)


def _check_matches(tree: Tree, reference: Tree, tree_name: str, reference_name: str, path: str = "") -> None:
    """Raise a ValueError naming the first place where `tree` differs from `reference` in keys or shapes."""
    where = f"at {path!r}" if path else "at the root"
    if isinstance(reference, dict):
        if not isinstance(tree, dict):
            raise ValueError(
                f"{tree_name} do not match {reference_name}: {where} {tree_name} have an array of shape "
                f"{tuple(tree.shape)} where {reference_name} have a dict with keys {sorted(reference)}"
            )
        missing, extra = sorted(set(reference) - set(tree)), sorted(set(tree) - set(reference))
        if missing or extra:
            raise ValueError(
                f"{tree_name} do not match {reference_name}: {where} {tree_name} lack keys {missing} "
                f"and have extra keys {extra}"
            )
        for key in sorted(reference):
            _check_matches(tree[key], reference[key], tree_name, reference_name, f"{path}.{key}" if path else key)
    elif isinstance(tree, dict):
        raise ValueError(
            f"{tree_name} do not match {reference_name}: {where} {tree_name} have a dict with keys {sorted(tree)} "
            f"where {reference_name} have an array of shape {tuple(reference.shape)}"
        )
    elif tuple(tree.shape) != tuple(reference.shape):
        raise ValueError(
            f"{tree_name} do not match {reference_name}: {where} {tree_name} have shape {tuple(tree.shape)} "
            f"but {reference_name} have shape {tuple(reference.shape)}"
        )


_STATE_PARAMS = "the params the optimizer state was initialised with"


def _one_numpy_float_dtype(*trees: Tree) -> bool:
    """Whether the leaves of `trees` are NumPy float arrays, all of one dtype: where NumPy's fused
    paths below give the generic path's numbers (no promotion between leaves to follow)."""
    leaves = [leaf for tree in trees for leaf in tree_leaves(tree)]
    return (
        len(leaves) > 0
        and all(isinstance(leaf, np.ndarray) for leaf in leaves)
        and len({leaf.dtype for leaf in leaves}) == 1
        and np.issubdtype(leaves[0].dtype, np.floating)
    )


def global_norm(tree: Tree) -> Any:
    """The L2 norm of all the leaves of `tree` taken together, as a 0-d array."""
    leaves = tree_leaves(tree)
    xp = _xp(tree)
    if not leaves:
        return xp.asarray(0.0)
    if _one_numpy_float_dtype(tree):
        # The same products and sums, the squares written into one reused buffer: fresh memory for
        # each leaf's squares is most of an elementwise pass's cost on large arrays.
        scratch = np.empty(max(leaf.size for leaf in leaves), dtype=leaves[0].dtype)
        return np.sqrt(
            sum(np.multiply(leaf, leaf, out=scratch[: leaf.size].reshape(leaf.shape)).sum() for leaf in leaves)
        )
    return xp.sqrt(sum(xp.sum(leaf * leaf) for leaf in leaves))


def apply_updates(params: Tree, updates: Tree) -> Tree:
    """`params + updates`, leaf by leaf, in the dtype of each param."""
    _check_matches(updates, params, "updates", "params")
    xp = _xp(params, updates)
    return tree_map(lambda p, u: xp.asarray(p + u, dtype=p.dtype), params, updates)


# --- composition ---------------------------------------------------------------------------------


def identity() -> GradientTransformation:
    """Leaves the updates as they are."""
    return GradientTransformation(lambda params: {}, lambda grads, state, params=None: (grads, state))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Applies `transforms` one after the other; the state is {"0": state_0, "1": state_1, ...}."""

    # Empty sub-states are left out: a checkpoint stores arrays only, so an empty dict inside the
    # state would not come back from it, and the state loaded would no longer match.
    def init(params):
        states = {str(i): t.init(params) for i, t in enumerate(transforms)}
        return {key: s for key, s in states.items() if s}

    def update(grads, state, params=None):
        unknown = sorted(set(state) - {str(i) for i in range(len(transforms))})
        if unknown:
            raise ValueError(
                f"the optimizer state has keys {unknown}, which this chain of {len(transforms)} transforms "
                "does not have: was it made by another optimizer?"
            )
        new_state = {}
        for i, t in enumerate(transforms):
            grads, s = t.update(grads, state.get(str(i), {}), params)
            if s:
                new_state[str(i)] = s
        return grads, new_state

    return GradientTransformation(init, update)


# --- transformations -----------------------------------------------------------------------------


def scale_by_adam(b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9) -> GradientTransformation:
    """Adam's rescaling (Kingma & Ba, 2015): m_hat / (sqrt(v_hat) + eps) with bias-corrected first
    and second moments, as `optax.scale_by_adam`. State: {"count", "mu", "nu"}."""
    b1, b2, eps = float(b1), float(b2), float(eps)
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"scale_by_adam needs 0 <= b1, b2 < 1, got {b1=}, {b2=}")

    def init(params):
        return {"count": _zero_count(params), "mu": _zeros_like(params), "nu": _zeros_like(params)}

    @with_x64_scope  # the bias corrections are float64 also when JAX is called without x64 (see _cast)
    def update(grads, state, params=None):
        _check_matches(grads, state["mu"], "grads", _STATE_PARAMS)
        xp = _xp(grads)
        count = _increment(state["count"], xp)
        # Computed at the count's (float64) precision and cast after: in float32, b2**count rounds
        # to 1 early and the correction would divide by zero.
        correction1, correction2 = 1 - b1**count, 1 - b2**count

        # The augmented assignments below update arrays this function has just made: in place on
        # NumPy, a rebinding on JAX. With the base model's 46M parameters this halves NumPy's
        # allocations, and fresh memory is what costs there (docs/benchmarks.md, "Timings behind
        # design choices").
        def first_moment(g, m):  # (1 - b1) g + b1 m
            mu = (1 - b1) * g
            mu += b1 * m
            return mu

        def second_moment(g, v):  # (1 - b2) g^2 + b2 v
            nu = g * g
            nu *= 1 - b2
            nu += b2 * v
            return nu

        def rescaled(m, v):  # m_hat / (sqrt(v_hat) + eps)
            denom = xp.sqrt(v / _cast(correction2, v, xp))
            denom += eps
            update = m / _cast(correction1, m, xp)
            update /= denom
            return update

        if _one_numpy_float_dtype(grads, state["mu"], state["nu"]):
            updates, mu, nu = _adam_numpy(grads, state, (b1, b2, eps), (correction1, correction2))
            return updates, {"count": count, "mu": mu, "nu": nu}
        mu = tree_map(first_moment, grads, state["mu"])
        nu = tree_map(second_moment, grads, state["nu"])
        return tree_map(rescaled, mu, nu), {"count": count, "mu": mu, "nu": nu}

    return GradientTransformation(init, update)


ADAM_CHUNK = 16384  # elements per block of NumPy's Adam update: its few live arrays stay in cache


def _adam_numpy(
    grads: Tree, state: State, betas_eps: tuple, corrections: tuple, decay: tuple | None = None, step_size=None
) -> tuple[Tree, Tree, Tree]:
    """scale_by_adam's update on NumPy leaves of one dtype -> (updates, mu, nu): the generic path's
    operations in its order, each rounded alike, but a block of ADAM_CHUNK elements at a time with
    `out=`. An elementwise pass over a large leaf is bound by memory; a block goes through all of
    them while it is in cache, so the leaf is read and written once instead of once per operation.
    decay (params, weight_decay) and step_size (a 0-d array) go on to add_decayed_weights and
    scale_by_learning_rate in the same blocks, as `adam` and `adamw` chain them."""
    b1, b2, eps = betas_eps
    dtype = tree_leaves(grads)[0].dtype
    scratch = np.empty(ADAM_CHUNK, dtype=dtype)
    correction1, correction2 = (np.asarray(c, dtype=dtype) for c in corrections)
    params, weight_decay = decay if decay is not None else (grads, None)
    step_size = None if step_size is None else np.asarray(step_size, dtype=dtype)

    def leaf_step(g, m, v, p):
        mu, nu, update = np.empty(g.shape, dtype), np.empty(g.shape, dtype), np.empty(g.shape, dtype)
        flat = [x.reshape(-1) for x in (g, m, v, mu, nu, update)]  # views, but a copy of a strided g
        p_flat = p.reshape(-1) if weight_decay is not None else None  # without decay p is g: no second copy
        for start in range(0, g.size, ADAM_CHUNK):
            g_, m_, v_, mu_, nu_, u_ = (x[start : start + ADAM_CHUNK] for x in flat)
            tmp = scratch[: g_.size]
            np.multiply(g_, 1 - b1, out=mu_)  # (1 - b1) g + b1 m
            mu_ += np.multiply(m_, b1, out=tmp)
            np.multiply(g_, g_, out=nu_)  # (1 - b2) g^2 + b2 v
            nu_ *= 1 - b2
            nu_ += np.multiply(v_, b2, out=tmp)
            np.divide(nu_, correction2, out=u_)  # m_hat / (sqrt(v_hat) + eps)
            np.sqrt(u_, out=u_)
            u_ += eps
            np.divide(np.divide(mu_, correction1, out=tmp), u_, out=u_)
            if p_flat is not None and weight_decay is not None:
                u_ += np.multiply(p_flat[start : start + ADAM_CHUNK], weight_decay, out=tmp)
            if step_size is not None:
                u_ *= step_size
        return update, mu, nu

    steps = tree_map(leaf_step, grads, state["mu"], state["nu"], params)
    return tuple(tree_map(lambda step, i=i: step[i], steps) for i in range(3))


def _adam_chain(
    learning_rate: float | Schedule, betas_eps: tuple, weight_decay: float | None = None
) -> GradientTransformation:
    """chain(scale_by_adam, [add_decayed_weights,] scale_by_learning_rate), its state and its numbers,
    with the three steps in one pass over each leaf (`_adam_numpy`) on NumPy float leaves of one dtype."""
    b1, b2, eps = (float(x) for x in betas_eps)
    parts = [scale_by_adam(b1, b2, eps)]
    if weight_decay is not None:
        parts.append(add_decayed_weights(weight_decay))
    parts.append(scale_by_learning_rate(learning_rate))
    chained = chain(*parts)
    lr_key = str(len(parts) - 1)

    def update(grads, state, params=None):
        expected_keys = {"0", lr_key} if callable(learning_rate) else {"0"}
        fusable = (
            set(state) == expected_keys
            and isinstance(state["0"], dict)
            and {"mu", "nu"} <= set(state["0"])
            and (weight_decay is None or params is not None)
            and _one_numpy_float_dtype(
                grads, state["0"]["mu"], state["0"]["nu"], params if weight_decay is not None else {}
            )
        )
        if not fusable:  # JAX, mixed dtypes, or something to report: the chain as it is
            return chained.update(grads, state, params)
        adam_state = state["0"]
        _check_matches(grads, adam_state["mu"], "grads", _STATE_PARAMS)
        decay = None
        if weight_decay is not None:
            _check_matches(grads, params, "grads", "params")
            decay = (params, float(weight_decay))
        count = _increment(adam_state["count"], np)
        lr_state = {}
        if callable(learning_rate):
            step_size = -learning_rate(state[lr_key]["count"])
            lr_state[lr_key] = {"count": _increment(state[lr_key]["count"], np)}
        else:
            step_size = -float(learning_rate)
        corrections = (1 - b1**count, 1 - b2**count)
        updates, mu, nu = _adam_numpy(grads, adam_state, (b1, b2, eps), corrections, decay, step_size)
        return updates, {"0": {"count": count, "mu": mu, "nu": nu}, **lr_state}

    return GradientTransformation(chained.init, update)


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """Adds `weight_decay * params` to the updates (decoupled weight decay, as `optax.add_decayed_weights`)."""
    weight_decay = float(weight_decay)

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("add_decayed_weights needs the params: call update(grads, state, params)")
        _check_matches(grads, params, "grads", "params")
        return tree_map(lambda g, p: g + weight_decay * p, grads, params), state

    return GradientTransformation(lambda params: {}, update)


def scale_by_learning_rate(learning_rate: float | Schedule) -> GradientTransformation:
    """Multiplies the updates by -learning_rate, a number or a schedule of the update count.
    State: {} for a number, {"count"} for a schedule (whose first update is made at count 0)."""
    if callable(learning_rate):
        schedule = learning_rate

        def init(params):
            return {"count": _zero_count(params)}

        def update(grads, state, params=None):
            xp = _xp(grads)
            step_size = -schedule(state["count"])
            updates = tree_map(lambda g: _cast(step_size, g, xp) * g, grads)
            return updates, {"count": _increment(state["count"], xp)}

        return GradientTransformation(init, update)

    step_size = -float(learning_rate)

    def update_constant(grads, state, params=None):
        return tree_map(lambda g: step_size * g, grads), state

    return GradientTransformation(lambda params: {}, update_constant)


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum, as `optax.trace`: trace = grads + decay * trace, and the updates are the trace, or
    grads + decay * trace with `nesterov`. State: {"trace"}."""
    decay = float(decay)

    def init(params):
        return {"trace": _zeros_like(params)}

    def update(grads, state, params=None):
        _check_matches(grads, state["trace"], "grads", _STATE_PARAMS)
        new_trace = tree_map(lambda g, t: g + decay * t, grads, state["trace"])
        updates = tree_map(lambda g, t: g + decay * t, grads, new_trace) if nesterov else new_trace
        return updates, {"trace": new_trace}

    return GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescales the updates to global norm `max_norm` when their global norm is above it, as
    `optax.clip_by_global_norm`; updates below it pass unchanged."""
    max_norm = float(max_norm)
    if not max_norm > 0:
        raise ValueError(f"clip_by_global_norm needs a positive max_norm, got {max_norm}")

    def update(grads, state, params=None):
        if not tree_leaves(grads):
            return grads, state
        xp = _xp(grads)
        norm = global_norm(grads)
        keep = norm < max_norm
        # One 0-d factor and one multiply per leaf (x 1.0 is exact where the updates are kept):
        # a pass over every parameter instead of three. `where` computes both sides, so the
        # unused side divides by max_norm, not by a norm that may be 0.
        factor = xp.where(keep, xp.asarray(1.0, dtype=norm.dtype), max_norm / xp.where(keep, max_norm, norm))
        return tree_map(lambda g: g * _cast(factor, g, xp), grads), state

    return GradientTransformation(lambda params: {}, update)


# --- optimisers ----------------------------------------------------------------------------------


def sgd(
    learning_rate: float | Schedule, momentum: float | None = None, nesterov: bool = False
) -> GradientTransformation:
    """Stochastic gradient descent, with optional (Nesterov) momentum, as `optax.sgd`."""
    if momentum is None:
        if nesterov:
            raise ValueError("sgd(nesterov=True) needs a momentum")
        return chain(scale_by_learning_rate(learning_rate))
    return chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))


def adam(
    learning_rate: float | Schedule, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-9
) -> GradientTransformation:
    """Adam with the defaults of "Attention Is All You Need", as `optax.adam`."""
    return _adam_chain(learning_rate, (b1, b2, eps))


def adamw(
    learning_rate: float | Schedule,
    b1: float = 0.9,
    b2: float = 0.98,
    eps: float = 1e-9,
    weight_decay: float = 0.01,
) -> GradientTransformation:
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as `optax.adamw`: the decay is
    added after the Adam rescaling and scaled by the learning rate with it."""
    return _adam_chain(learning_rate, (b1, b2, eps), float(weight_decay))
