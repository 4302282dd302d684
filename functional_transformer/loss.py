"""Token-level cross-entropy with label smoothing, and its VJP.

The target distribution puts 1 - eps on the true class plus eps / V on every class (PyTorch's
CrossEntropyLoss(label_smoothing=eps) convention), so per token

    loss = -(1 - eps) * log p[y] - eps * mean_c log p[c]

Positions whose target is pad_id are ignored; the mean is over the real target tokens
(an all-padding batch gives 0, not NaN). log p comes from a shifted log-softmax, so large
logits never overflow.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import array_namespace

from .layers.softmax import log_softmax


class Saved(NamedTuple):
    log_probs: Any  # (B, T, V)
    targets: Any  # (B, T)
    valid: Any  # (B, T) boolean, True at real target tokens
    denom: Any  # (), the number of real target tokens (at least 1)


def fwd(logits, targets, pad_id: int, label_smoothing: float = 0.0):
    """logits (B, T, V), targets (B, T) -> (loss (), metrics, saved).

    metrics: {"loss", "n_tokens" (real target tokens), "accuracy" (argmax == target among them)}.
    """
    xp = array_namespace(logits)
    log_probs = log_softmax(logits)  # (B, T, V)
    valid = targets != pad_id  # (B, T)
    n_tokens = xp.sum(xp.astype(valid, xp.int32))
    denom = xp.astype(xp.maximum(n_tokens, xp.asarray(1, dtype=xp.int32)), logits.dtype)
    log_p_true = xp.take_along_axis(log_probs, xp.astype(targets, xp.int32)[..., None], axis=-1)[..., 0]  # (B, T)
    per_token = -((1.0 - label_smoothing) * log_p_true + label_smoothing * xp.mean(log_probs, axis=-1))
    zero = xp.asarray(0, dtype=logits.dtype)
    loss = xp.sum(xp.where(valid, per_token, zero)) / denom
    correct = valid & (xp.argmax(logits, axis=-1) == targets)
    metrics = {
        "loss": loss,
        "n_tokens": n_tokens,
        "accuracy": xp.sum(xp.astype(correct, logits.dtype)) / denom,
    }
    return loss, metrics, Saved(log_probs, targets, valid, denom)


def bwd(saved: Saved, g, label_smoothing: float):
    """g () -> d_logits (B, T, V) = g * (softmax - target distribution) / n_tokens at real tokens, 0 at
    padding; label_smoothing as given to fwd."""
    log_probs, targets, valid, denom = saved
    xp = array_namespace(log_probs)
    vocab = log_probs.shape[-1]
    one_hot = xp.astype(xp.arange(vocab) == targets[..., None], log_probs.dtype)
    d_logits = xp.exp(log_probs) - label_smoothing / vocab - (1.0 - label_smoothing) * one_hot
    weight = xp.astype(valid, log_probs.dtype) * (g / denom)  # (B, T)
    return d_logits * weight[..., None]


def apply(logits, targets, pad_id: int, label_smoothing: float = 0.0):
    return fwd(logits, targets, pad_id, label_smoothing)[0]
