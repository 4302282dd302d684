"""Pooling a sequence into one vector per example, for a classifier over an encoder's output."""

from __future__ import annotations

import dataclasses

from backends import array_namespace

from .part import Part


@dataclasses.dataclass(frozen=True)
class MeanPool(Part):
    """x (B, T, D) -> (B, D): the mean over the positions side `mask` (B, T) marks True (the real
    tokens), or over all positions without a mask."""

    def fwd(self, params, x, *, train=False, key=None, mask=None, **side):
        xp = array_namespace(x)
        if mask is None:
            weights = xp.full(x.shape[:2], 1.0 / x.shape[1], dtype=x.dtype)
        else:
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"mask has shape {tuple(mask.shape)}; MeanPool needs (batch, length) = {tuple(x.shape[:2])}"
                )
            counts = xp.sum(xp.astype(mask, x.dtype), axis=1, keepdims=True)  # (B, 1)
            weights = xp.astype(mask, x.dtype) / xp.maximum(counts, xp.asarray(1, dtype=x.dtype))
        return xp.sum(x * weights[..., None], axis=1), weights  # (B, D); the weights are all bwd needs

    def bwd(self, params, saved, dy):
        return {}, dy[:, None, :] * saved[..., None]  # (B, T, D)
