"""Check a hand-written VJP in one line, by finite differences along random directions.

    from functional_transformer.gradcheck import check_vjp
    check_vjp(linear.fwd, linear.bwd, (params, x), key=ft.random.key(0))

For random directions v (in the inputs) and u (in the output) it compares the VJP's
<bwd(u), v> with the central difference <u, (f(x + eps v) - f(x - eps v)) / (2 eps)>: one scalar
per direction, exact for any correct VJP up to O(eps^2) truncation and rounding (the random
projection check of HIPS autograd's check_vjp). Use float64 inputs; inputs that are not
differentiated (token ids, masks, config) are closed over in `fwd`, and the settings a `bwd` takes
(n_heads, the activation) in `bwd`: `lambda saved, g: attention.bwd(saved, g, n_heads)`.

`fwd(*primals) -> (out, saved)` and `bwd(saved, g) -> cotangents` follow the layers' contract:
cotangents is one tree per primal (a tuple when there are several; the first `len(primals)`
entries are used, so a bwd that returns more, such as attention's dx_kv, can be sliced by the caller).
"""

from __future__ import annotations

from backends import backend_of, tree_leaves, tree_map, with_x64_scope
from backends import prng as ftrandom


def _random_like(key, tree):
    leaves = tree_leaves(tree)
    keys = ftrandom.split(key, max(len(leaves), 1))
    it = iter(range(len(leaves)))
    return tree_map(lambda leaf: ftrandom.normal(keys[next(it)], tuple(leaf.shape), leaf.dtype), tree)


def _as_tree(values) -> dict:
    """Tuples as dicts keyed "0", "1", ... (the tree helpers walk dicts only)."""
    if isinstance(values, (tuple, list)):
        return {str(i): _as_tree(v) for i, v in enumerate(values)}
    return values


def _vdot(a, b, xp) -> float:
    return float(sum(float(xp.sum(x * y)) for x, y in zip(tree_leaves(a), tree_leaves(b), strict=True)))


def vjp_error(fwd, bwd, primals: tuple, *, key, eps: float = 1e-6, n_directions: int = 3) -> float:
    """The largest relative gap between the VJP and finite differences over `n_directions` directions."""
    primals = tuple(primals)
    tree = _as_tree(primals)
    xp = backend_of(tree).xp
    for leaf in tree_leaves(tree):
        if leaf.dtype != xp.float64:
            raise TypeError(f"check_vjp needs float64 inputs for accurate finite differences, got {leaf.dtype}")
    out, saved = fwd(*primals)
    worst = 0.0
    for direction_key in ftrandom.split(key, n_directions):
        k_in, k_out = ftrandom.split(direction_key, 2)
        v = _random_like(k_in, tree)
        u = _random_like(k_out, _as_tree(out))
        cotangents = bwd(saved, u)
        if len(primals) == 1:
            cotangents = (cotangents,)
        analytic = _vdot(_as_tree(tuple(cotangents[: len(primals)])), v, xp)
        shifted = [tree_map(lambda p, d, step=sign * eps: p + step * d, tree, v) for sign in (1.0, -1.0)]
        plus, minus = (_as_tree(fwd(*(t[str(i)] for i in range(len(primals))))[0]) for t in shifted)
        numeric = _vdot(_as_tree(u), tree_map(lambda a, b: (a - b) / (2 * eps), plus, minus), xp)
        worst = max(worst, abs(analytic - numeric) / max(abs(numeric), abs(analytic), 1e-12))
    return worst


@with_x64_scope
def check_vjp(fwd, bwd, primals: tuple, *, key, rtol: float = 1e-6, eps: float = 1e-6, n_directions: int = 3) -> float:
    """Raise AssertionError if the VJP disagrees with finite differences by more than rtol; return the error."""
    error = vjp_error(fwd, bwd, primals, key=key, eps=eps, n_directions=n_directions)
    if not error <= rtol:
        raise AssertionError(f"VJP disagrees with finite differences: relative error {error:.3e} > rtol {rtol:.1e}")
    return error
