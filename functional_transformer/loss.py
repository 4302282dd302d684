"""Cross-entropy over the last axis with label smoothing, and its VJP: logits (..., V) against
integer targets (...), for a sequence model's tokens (B, T, V) or a classifier's examples (B, V).

The target distribution puts 1 - eps on the true class plus eps / V on every class (PyTorch's
CrossEntropyLoss(label_smoothing=eps) convention), so per token

    loss = -(1 - eps) * log p[y] - eps * mean_c log p[c]

Positions whose target is `ignore_index` (the padding id; None ignores nothing) are left out;
the mean is over the others (an all-padding batch gives 0, not NaN). log p comes from a shifted log-softmax, so large
logits never overflow.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from backends import array_namespace

from .layers.softmax import log_softmax


class Saved(NamedTuple):
    log_probs: Any  # (..., V)
    targets: Any  # (...)
    valid: Any  # (...) boolean, True at real targets
    denom: Any  # (), the number of real target tokens (at least 1)


def fwd(logits, targets, ignore_index: int | None, label_smoothing: float = 0.0):
    """logits (..., V), targets (...) integer -> (loss (), metrics, saved).

    metrics: {"loss", "n_tokens" (targets not ignored), "accuracy" (argmax == target among them)}.
    """
    xp = array_namespace(logits)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets have shape {tuple(targets.shape)}; logits {tuple(logits.shape)} need targets of "
            f"shape {tuple(logits.shape[:-1])} (one class id per row of logits)"
        )
    log_probs = log_softmax(logits)  # (..., V)
    valid = targets != ignore_index if ignore_index is not None else xp.ones(targets.shape, dtype=xp.bool)
    n_tokens = xp.sum(xp.astype(valid, xp.int32))
    denom = xp.astype(xp.maximum(n_tokens, xp.asarray(1, dtype=xp.int32)), logits.dtype)
    log_p_true = xp.take_along_axis(log_probs, xp.astype(targets, xp.int32)[..., None], axis=-1)[..., 0]  # (...)
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
    """g () -> d_logits (..., V) = g * (softmax - target distribution) / n_tokens at the targets not
    ignored, 0 at the others; label_smoothing as given to fwd."""
    log_probs, targets, valid, denom = saved
    xp = array_namespace(log_probs)
    vocab = log_probs.shape[-1]
    one_hot = xp.astype(xp.arange(vocab) == targets[..., None], log_probs.dtype)
    d_logits = xp.exp(log_probs) - label_smoothing / vocab - (1.0 - label_smoothing) * one_hot
    weight = xp.astype(valid, log_probs.dtype) * (g / denom)  # (...)
    return d_logits * weight[..., None]


def apply(logits, targets, ignore_index: int | None, label_smoothing: float = 0.0):
    return fwd(logits, targets, ignore_index, label_smoothing)[0]
