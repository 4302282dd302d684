"""What the gradient check catches: check_vjp's error with one typical slip planted in a hand-written VJP.

Each slip is of the kind a person writing these VJPs makes; check_vjp's relative error is measured on
the whole model + loss (NumPy, float64), against the error of the code as it is.

    uv run python -m benchmarks.studies.vjp_slips            # a Markdown table on stdout

Each slip replaces one function for the duration of its measurement (the layers call each other
through their modules, so a replaced function is the one used); check_vjp raises above 1e-6.
JAX's `jax.grad` cannot make these slips: it writes no backward code to slip in.
"""

from __future__ import annotations

import argparse
import contextlib
import math

import backends
import functional_transformer as ft
from backends import array_namespace
from functional_transformer import loss, model, parts
from functional_transformer.gradcheck import vjp_error
from functional_transformer.layers import attention, embedding, layer_norm, softmax

from .backend_agreement import make_batch, small_config

_dot_product_bwd, _softmax_bwd = attention.dot_product_bwd, softmax.bwd


def _scale_forgotten(saved, g):
    """dq and dk without the 1/sqrt(d_head) of the scores."""
    dq, dk, dv = _dot_product_bwd(saved, g)
    scale = math.sqrt(saved.q.shape[-1])
    return dq * scale, dk * scale, dv


def _softmax_sum_term_forgotten(p, g):
    """dx = p * g, without the - p * sum(g * p) that keeps the rows' sum fixed."""
    return g * p


def _layer_norm_mean_forgotten(saved, g):
    """dx without subtracting mean(dx_hat): the mean that the forward subtracts is treated as a constant."""
    x_hat, inv_std, scale = saved
    xp = array_namespace(g)
    lead = tuple(range(g.ndim - 1))
    dparams = {"scale": xp.sum(g * x_hat, axis=lead), "bias": xp.sum(g, axis=lead)}
    dx_hat = g * scale
    return dparams, inv_std * (dx_hat - x_hat * xp.mean(dx_hat * x_hat, axis=-1, keepdims=True))


def _self_attention_keys_forgotten(self, params, saved, g):
    """Self-attention's input is the queries and the keys/values: only the queries' part passed on."""
    d_params, dx_q, _ = attention.bwd(saved, g, self.n_heads)
    return d_params, dx_q


_embedding_bwd = embedding.bwd


def _embedding_scale_forgotten(flat_ids, g, vocab_size, n_positions=None, **settings):
    """The token rows' gradient without the forward's sqrt(d_model)."""
    return _embedding_bwd(flat_ids, g / math.sqrt(g.shape[-1]), vocab_size, n_positions, **settings)


SLIPS = {
    "none (the code as it is)": [],
    "attention: 1/sqrt(d_head) forgotten in dq, dk": [(attention, "dot_product_bwd", _scale_forgotten)],
    "softmax: the - p * sum(g * p) term forgotten": [(softmax, "bwd", _softmax_sum_term_forgotten)],
    "layer norm: the mean's gradient forgotten": [(layer_norm, "bwd", _layer_norm_mean_forgotten)],
    "self-attention: the keys/values' cotangent not added": [
        (parts.SelfAttention, "bwd", _self_attention_keys_forgotten)
    ],
    "embedding: sqrt(d_model) forgotten": [(embedding, "bwd", _embedding_scale_forgotten)],
}


@contextlib.contextmanager
def planted(replacements):
    saved = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    try:
        for module, name, wrong in replacements:
            setattr(module, name, wrong)
        yield
    finally:
        for module, name, right in saved:
            setattr(module, name, right)


def measure() -> dict:
    """{slip: check_vjp's relative error} on the model + loss, float64, dropout on."""
    backend = backends.get_backend("numpy")
    cfg = small_config("float64")
    batch = make_batch(cfg, 3, 5, 7, seed=0)
    params = ft.init(backend.random.key(0), cfg)
    key = backend.random.key(1)

    def fwd(p):
        logits, saved_model = model.fwd(p, batch["src"], batch["tgt_in"], cfg, True, key)
        value, _, saved_loss = loss.fwd(logits, batch["tgt_out"], cfg.pad_id, 0.1)
        return value, (saved_model, saved_loss)

    def bwd(saved, g):
        saved_model, saved_loss = saved
        return model.bwd(params, saved_model, loss.bwd(saved_loss, g, 0.1), cfg)

    errors = {}
    for slip, replacements in SLIPS.items():
        with planted(replacements):
            errors[slip] = vjp_error(fwd, bwd, (params,), key=backend.random.key(2))
    return errors


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.vjp_slips", description=__doc__.split("\n\n")[0]
    )
    parser.parse_args(argv)
    print("| slip planted in the backward pass | check_vjp relative error | caught (> 1e-6)? |")
    print("|---|--:|---|")
    for slip, error in measure().items():
        print(f"| {slip} | {error:.1e} | {'yes' if error > 1e-6 else 'no'} |")


if __name__ == "__main__":
    main()
