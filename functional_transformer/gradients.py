"""The gradient of the loss on one batch, by the hand-written VJPs ("vjp") or by jax.grad
("autodiff"), for the public entry points (api) and the train step (train), which jit them.

These take a batch already checked and on the params' backend and return (grads, metrics) with
metrics {"loss", "n_tokens", "accuracy"}. They serve every model family: families.inputs says
what a batch feeds the model and what the loss compares its logits with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backends import Backend

from . import families, loss
from .config import GRAD_METHODS

if TYPE_CHECKING:
    from .checkpoint import ModelConfig


def default_grad_method(backend: Backend) -> str:
    """ "vjp" on NumPy (the only method there), "autodiff" on JAX."""
    return "autodiff" if backend.name == "jax" else "vjp"


def batch_metrics(params: dict, batch: dict, cfg: ModelConfig, train: bool, key, label_smoothing: float) -> dict:
    """The loss and metrics of one batch, without gradients."""
    x, targets, ignore_index = families.inputs(cfg, batch)
    logits = families.model_of(cfg).apply(params, x, train=train, key=key)
    _, metrics, _ = loss.fwd(logits, targets, ignore_index, label_smoothing)
    return metrics


def grad_vjp(params: dict, batch: dict, cfg: ModelConfig, train: bool, key, label_smoothing: float):
    """-> (grads, metrics) from the hand-written VJPs: forward with residuals, then backward."""
    model = families.model_of(cfg)
    x, targets, ignore_index = families.inputs(cfg, batch)
    logits, saved_model = model.fwd(params, x, train=train, key=key)
    _, metrics, saved_loss = loss.fwd(logits, targets, ignore_index, label_smoothing)
    grads, _ = model.bwd(params, saved_model, loss.bwd(saved_loss, 1.0, label_smoothing))
    return grads, metrics


def grad_autodiff(params: dict, batch: dict, cfg: ModelConfig, train: bool, key, label_smoothing: float):
    """-> (grads, metrics) from jax.grad of the same forward pass (JAX only)."""
    import jax

    def objective(p):
        metrics = batch_metrics(p, batch, cfg, train, key, label_smoothing)
        return metrics["loss"], metrics

    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, metrics


def grad_function(method: str):
    """grad_vjp or grad_autodiff by name."""
    if method not in GRAD_METHODS:
        raise ValueError(f"unknown gradient method {method!r}: choose one of {GRAD_METHODS}")
    return grad_vjp if method == "vjp" else grad_autodiff
