"""Masks: which keys a query may attend to. Boolean, True = attend.

A part reads a mask from the `side` inputs of fwd (`mask` for self-attention, `memory_mask` for
cross-attention over an encoder's output) in one of two shapes:

    (B, S)           key padding: True at the real tokens of each sequence (padding_mask)
    (B, 1 or H, T, S) a full mask, broadcast over heads (causal_mask & padding, or your own)

Causal masking is a setting of the attention part (`causal=True`), not something to pass in.
"""

from __future__ import annotations

from backends import array_namespace


def padding_mask(ids, pad_id: int):
    """ids (B, S) -> (B, S) boolean, True at real tokens (ids != pad_id)."""
    return ids != pad_id


def causal_mask(length: int, xp):
    """(1, 1, T, T) boolean, True where key position <= query position."""
    positions = xp.arange(length)
    return xp.reshape(positions[:, None] >= positions[None, :], (1, 1, length, length))


def attention_mask(mask, name: str, batch: int, n_queries: int, n_keys: int, *, causal: bool, xp):
    """The mask an attention layer applies, (B, 1, T, S) or broadcastable to it, or None for no mask:
    `mask` (key padding (B, S), or a full (B, 1|H, T, S) mask, or None) combined with the causal
    mask when `causal`. Wrong shapes are an error naming `name`."""
    if mask is not None:
        if not hasattr(mask, "dtype") or not array_namespace(mask).isdtype(mask.dtype, "bool"):
            raise TypeError(
                f"{name} must be a boolean array (True = may attend), got {getattr(mask, 'dtype', type(mask))}"
            )
        if mask.ndim == 2:
            if tuple(mask.shape) != (batch, n_keys):
                raise ValueError(
                    f"{name} has shape {tuple(mask.shape)}; a key-padding mask must be (batch, keys) = "
                    f"{(batch, n_keys)}"
                )
            mask = xp.reshape(mask, (batch, 1, 1, n_keys))
        elif mask.ndim == 4:
            b, h, t, s = mask.shape
            if b not in (1, batch) or t not in (1, n_queries) or s != n_keys:
                raise ValueError(
                    f"{name} has shape {tuple(mask.shape)}; a full mask must broadcast to "
                    f"(batch, heads, queries, keys) = ({batch}, H, {n_queries}, {n_keys})"
                )
        else:
            raise ValueError(
                f"{name} has rank {mask.ndim} (shape {tuple(mask.shape)}): pass a key-padding mask "
                f"(batch, keys) or a full mask (batch, 1, queries, keys)"
            )
    if causal:
        if n_queries != n_keys:
            raise ValueError(f"causal attention needs as many queries as keys, got {n_queries} and {n_keys}")
        causal_part = causal_mask(n_queries, xp)
        mask = causal_part if mask is None else causal_part & mask
    return mask
