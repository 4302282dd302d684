"""The layers, each a module of pure functions with one contract:

    init(key, ...) -> params            a dict of arrays keyed by meaning ("w_q", "scale")
    fwd(params, x, ...) -> (y, saved)   the forward pass and the residuals its backward needs
    bwd(saved, g, ...) -> cotangents    the vector-Jacobian product: g = dL/dy in, dL/dparams and
                                        dL/dinputs out (the shape of jax.custom_vjp's fwd/bwd)
    apply(params, x, ...) -> y          fwd without the residuals

`saved` holds arrays only: the one array a backward needs (softmax's p), or a small NamedTuple of
arrays (`linear.Saved`), a JAX pytree, so it can be the residual of `jax.custom_vjp`. Static
settings (n_heads, the activation's name, whether there is a bias) are not saved: the caller
passes them to `bwd` as it passed them to `fwd`. ("saved", not "res": residual.py is the
residual connection.)

Everything is written against the array namespace of the arrays passed in (`xp`), so the same
code runs on NumPy, on JAX (also under jit and jax.vjp) and on any Array API namespace.
Layers without parameters (softmax, dropout, activations) drop `init` and the params arguments.
"""

from . import (
    activations,
    attention,
    blocks,
    dropout,
    embedding,
    feed_forward,
    layer_norm,
    linear,
    residual,
    softmax,
    stacks,
)

__all__ = [
    "activations",
    "attention",
    "blocks",
    "dropout",
    "embedding",
    "feed_forward",
    "layer_norm",
    "linear",
    "residual",
    "softmax",
    "stacks",
]
