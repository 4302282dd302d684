"""The layers' mathematics: each module holds the forward pass and its hand-written VJP side by side,
as pure functions. The parts (../parts) wrap them under one contract to be composed; these are the
kernels underneath:

    init(key, ...) -> params            a dict of arrays keyed by meaning ("w_q", "scale")
    fwd(params, x, ...) -> (y, saved)   the forward pass and the residuals its backward needs
    bwd(saved, g, ...) -> cotangents    the vector-Jacobian product: g = dL/dy in, dL/dparams and
                                        dL/dinputs out (the shape of jax.custom_vjp's fwd/bwd)
    apply(params, x, ...) -> y          fwd without the residuals

`saved` holds arrays only: the one array a backward needs (softmax's p), or a small NamedTuple of
arrays (`linear.Saved`), a JAX pytree, so it can be the residual of `jax.custom_vjp`. Static
settings (n_heads, the activation's name, whether there is a bias) are not saved: the caller
passes them to `bwd` as it passed them to `fwd`. ("saved", not "res": a residual here is the
residual connection, parts.Residual.)

Everything is written against the array namespace of the arrays passed in (`xp`), so the same
code runs on NumPy, on JAX (also under jit and jax.vjp) and on any Array API namespace. On JAX,
float64 layers need JAX's 64-bit types on: call them inside `backend.x64_scope()` (the model-level
functions, `ft.init`, `ft.apply`, ..., enter it themselves); float32 ones need nothing.
Layers without parameters (softmax, dropout, activations) drop `init` and the params arguments.
"""

from . import (
    activations,
    attention,
    dropout,
    embedding,
    feed_forward,
    glu,
    layer_norm,
    linear,
    rms_norm,
    rotary,
    softmax,
)

__all__ = [
    "activations",
    "attention",
    "dropout",
    "embedding",
    "feed_forward",
    "glu",
    "layer_norm",
    "linear",
    "rms_norm",
    "rotary",
    "softmax",
]
