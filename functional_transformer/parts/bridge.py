"""Between a part's hand-written backward and JAX, and the check that the backward is right.

`custom_vjp(part)` is a JAX function whose derivative is the part's own `bwd`, so `jax.grad`
through any composition runs the hand-written VJPs (grad_method="vjp"). `check_part` compares a
part's `bwd` with finite differences (float64) and, where JAX is installed, with `jax.vjp` of its
forward: the test every part and combinator passes.
"""

from __future__ import annotations

import numpy as np

from backends import backend_of, get_backend, tree_leaves, tree_map, with_x64_scope
from backends import prng as ftrandom

from ..gradcheck import vjp_error
from .part import Part, checked_bwd, spec_of


def _is_array(leaf) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def custom_vjp(part: Part, *, train: bool = False):
    """-> fn(params, x, key=None, **side) -> y, differentiable by jax.grad through `part.bwd`.

    Only params and floating inputs get cotangents; token ids, the key and the side inputs (masks)
    get none. The residuals `saved` pass from fwd to bwd as arrays; what else they hold (the input
    specs the combinators check) is static and rides along in a closure."""
    import jax

    static = {}

    @jax.custom_vjp
    def fn(params, x, key, side):
        return part.fwd(params, x, train=train, key=key, **side)[0]

    def fwd_rule(params, x, key, side):
        y, saved = part.fwd(params, x, train=train, key=key, **side)
        leaves, treedef = jax.tree_util.tree_flatten(saved)
        arrays = [leaf if _is_array(leaf) else None for leaf in leaves]
        static["saved"] = (treedef, [None if _is_array(leaf) else leaf for leaf in leaves])
        static["x_spec"] = spec_of(x)
        return y, (params, arrays)

    def bwd_rule(residuals, dy):
        params, arrays = residuals
        treedef, others = static["saved"]
        saved = jax.tree_util.tree_unflatten(treedef, [a if o is None else o for a, o in zip(arrays, others)])
        dparams, dx = checked_bwd(part, params, saved, dy, static["x_spec"])
        return dparams, dx, None, None

    fn.defvjp(fwd_rule, bwd_rule)

    def call(params, x, key=None, **side):
        return fn(params, x, key, side)

    return call


def _split_inputs(x):
    """x -> (the floating leaves, a function rebuilding x from new floating leaves)."""
    spec = spec_of(x)
    flat = list(x) if isinstance(x, tuple) else [x]
    specs = list(spec) if isinstance(spec, tuple) else [spec]  # a tuple exactly when x is one
    float_at = [i for i, s in enumerate(specs) if not isinstance(s, tuple) and s.differentiable]

    def rebuild(floats):
        items = list(flat)
        for i, value in zip(float_at, floats):
            items[i] = value
        return tuple(items) if isinstance(x, tuple) else items[0]

    return tuple(flat[i] for i in float_at), float_at, rebuild


def _jax_error(part, params, x, train, key, side, n_directions) -> float:
    """The largest relative gap between part.bwd and jax.vjp of part.apply over random output directions.
    Runs in check_part's x64 scope, its only caller."""
    import jax

    backend = get_backend("jax")
    params = backend.tree_asarray(params)
    x = tuple(backend.asarray(item) for item in x) if isinstance(x, tuple) else backend.asarray(x)
    side = {name: backend.asarray(value) for name, value in side.items()}
    key = None if key is None else backend.asarray(key)
    floats, float_at, rebuild = _split_inputs(x)

    def forward(p, fl):
        return part.apply(p, rebuild(fl), train=train, key=key, **side)

    y, saved = part.fwd(params, x, train=train, key=key, **side)
    _, vjp = jax.vjp(forward, params, floats)
    worst = 0.0
    for direction in ftrandom.split(get_backend("numpy").random.key(7), n_directions):
        outputs = y if isinstance(y, tuple) else (y,)
        u = tuple(
            backend.asarray(ftrandom.normal(k, tuple(out.shape), np.float64))
            for k, out in zip(ftrandom.split(direction, len(outputs)), outputs)
        )
        u = u if isinstance(y, tuple) else u[0]
        d_params_ref, d_floats_ref = vjp(u)
        d_params, dx = checked_bwd(part, params, saved, u, spec_of(x))
        dx_list = list(dx) if isinstance(dx, tuple) else [dx]
        ours = tree_leaves(d_params) + [dx_list[i] for i in float_at]
        reference = tree_leaves(d_params_ref) + list(d_floats_ref)
        # Relative to the largest reference entry: a gradient that is zero up to rounding (the key
        # projection's bias, which softmax cancels) must not count as a large relative error.
        gaps = [
            float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
            for a, b in zip(ours, reference, strict=True)
        ]
        scale = max(float(np.max(np.abs(np.asarray(b)), initial=0.0)) for b in reference)
        worst = max(worst, max(gaps) / max(scale, 1e-12))
    return worst


@with_x64_scope
def check_part(
    part: Part,
    params: dict,
    x,
    *,
    train: bool = False,
    key=None,
    rtol: float = 1e-6,
    n_directions: int = 3,
    against_jax: bool | None = None,
    **side,
) -> dict:
    """Check `part.bwd` at (params, x): against finite differences along random directions (params and
    x in float64) and, with against_jax (default: when JAX is installed), against jax.vjp of its
    forward. -> {"finite_differences": error, "jax": error or None}; AssertionError past rtol.

        check_part(parts.SelfAttention(8, 2, causal=True, dtype="float64"), params, x)
    """
    floats, _, rebuild = _split_inputs(x)

    def forward(p, *fl):
        return part.fwd(p, rebuild(fl), train=train, key=key, **side)

    def backward(saved, g):
        if isinstance(g, dict):  # vjp_error hands a tuple output's cotangent over as {"0": .., "1": ..}
            g = tuple(g[str(i)] for i in range(len(g)))
        d_params, dx = checked_bwd(part, params, saved, g, spec_of(x))
        dx_list = list(dx) if isinstance(dx, tuple) else [dx]
        return (d_params, *[d for d in dx_list if d is not None])

    backend = backend_of(*tree_leaves(params), *floats)
    direction_key = backend.random.key(3)
    errors = {
        "finite_differences": vjp_error(
            forward, backward, (params, *floats), key=direction_key, n_directions=n_directions
        ),
        "jax": None,
    }
    if against_jax is None:
        import importlib.util

        against_jax = importlib.util.find_spec("jax") is not None
    if against_jax:
        to_numpy = backend.to_numpy
        np_params = tree_map(to_numpy, params)
        np_x = tuple(to_numpy(item) for item in x) if isinstance(x, tuple) else to_numpy(x)
        np_side = {name: to_numpy(value) for name, value in side.items()}
        np_key = None if key is None else to_numpy(key)
        errors["jax"] = _jax_error(part, np_params, np_x, train, np_key, np_side, n_directions)
    for name, error in errors.items():
        if error is not None and not error <= rtol:
            raise AssertionError(
                f"{part!r}: bwd disagrees with {name.replace('_', ' ')}: relative error {error:.3e} > rtol {rtol:.1e}"
            )
    return errors
