"""Multi-head attention as parts: self-attention over one sequence, cross-attention from a sequence
to another (an encoder's output), each with a key/value cache for decoding.

params {"w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o"}, each w (d_model, d_model): the
forward and the hand-written VJP are layers/attention.py's. Self-attention also comes in today's
forms: grouped-query (n_kv_heads), without biases, with rotary positions (rope_base); w_k and w_v
are then (d_model, n_kv_heads * d_model // n_heads).

`attention_kernel` picks how the attention weights are computed (the same function either way, to
rounding): "full" materialises softmax(q k^T) per head, (B, H, T, S), as layers/attention.py does;
"blockwise" runs layers/blockwise_attention.py, tile by tile, whose memory grows linearly with the
length; "auto" (the default) uses blockwise where T * S >= AUTO_BLOCKWISE_AT, full below. Decoding
steps (one query over the cache) always use the full kernel: one row is already linear in length.
"""

from __future__ import annotations

import dataclasses

from backends import array_namespace

from ..config import ATTENTION_KERNELS
from ..errors import ConfigError
from ..layers import attention, blockwise_attention
from .masks import attention_mask
from .part import Part
from .position_wise import _check_positive, _check_width, _dtype

# "auto"'s rule: blockwise from T * S = 1024 * 1024 on. Measured on CPU with the tiny model's train
# step (docs/speed/long.md): at T = 512 the two take the same CPU time on both backends (blockwise is
# then one tile), from T = 1,024 on blockwise is faster, and full attention's (B, H, T, T) weights
# grow quadratically. Below the threshold full keeps short sequences' numbers exactly as they were.
AUTO_BLOCKWISE_AT = 1024 * 1024


def uses_blockwise(attention_kernel: str, n_queries: int, n_keys: int) -> bool:
    """Whether `attention_kernel` ("auto", "full" or "blockwise") runs blockwise for T queries and S keys."""
    if attention_kernel == "auto":
        return n_queries * n_keys >= AUTO_BLOCKWISE_AT
    return attention_kernel == "blockwise"


def _check_kernel(part) -> None:
    if part.attention_kernel not in ATTENTION_KERNELS:
        raise ConfigError(
            f"{type(part).__name__}: attention_kernel must be one of {ATTENTION_KERNELS}, got {part.attention_kernel!r}"
        )


def _check_heads(part) -> None:
    _check_positive(part, d_model=part.d_model, n_heads=part.n_heads)
    if part.d_model % part.n_heads:
        raise ConfigError(
            f"{type(part).__name__}: d_model ({part.d_model}) must be divisible by n_heads "
            f"({part.n_heads}): each head gets d_model // n_heads dimensions"
        )


def _empty_cache(x, n_heads: int, max_len: int, n_kv_heads: int | None = None) -> dict:
    """Self-attention's cache before decoding: keys and values (B, n_kv_heads, max_len, Dh), all zero."""
    xp = array_namespace(x)
    batch, _, d_model = x.shape
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    empty = xp.zeros((batch, n_kv_heads, max_len, d_model // n_heads), dtype=x.dtype)
    return {"k": empty, "v": empty}


@dataclasses.dataclass(frozen=True)
class SelfAttention(Part):
    """x (B, T, D) attends to itself -> (B, T, D). side `mask`: key padding (B, T) or a full mask
    (see masks.py); `causal=True` lets each position see only itself and earlier ones.

    n_kv_heads: key/value heads, each shared by n_heads // n_kv_heads query heads (grouped-query
    attention; 1 is multi-query; None is n_heads, the paper's). bias=False: projections without
    biases. rope_base: rotate queries and keys by rotary positions with this base (None: none).
    attention_kernel: "auto", "full" or "blockwise" (see the module's docstring)."""

    d_model: int
    n_heads: int
    causal: bool = False
    dtype: str = "float32"
    n_kv_heads: int | None = None
    bias: bool = True
    rope_base: float | None = None
    attention_kernel: str = "auto"

    def __post_init__(self):
        _check_heads(self)
        _check_kernel(self)
        if self.n_kv_heads is not None:
            _check_positive(self, n_kv_heads=self.n_kv_heads)
            if self.n_heads % self.n_kv_heads:
                raise ConfigError(
                    f"SelfAttention: n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                    f"({self.n_kv_heads}): each key/value head serves n_heads // n_kv_heads query heads"
                )
        if self.rope_base is not None:
            if not (isinstance(self.rope_base, (int, float)) and self.rope_base > 1):
                raise ConfigError(f"SelfAttention: rope_base must be a number above 1, got {self.rope_base!r}")
            if (self.d_model // self.n_heads) % 2:
                raise ConfigError(
                    f"SelfAttention: rotary positions rotate pairs of dimensions, so the head size "
                    f"d_model // n_heads ({self.d_model // self.n_heads}) must be even"
                )

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def grouped(self) -> bool:
        """Whether any of today's settings is on (else the paper's kernels, number for number)."""
        return self.kv_heads != self.n_heads or not self.bias or self.rope_base is not None

    def init(self, key) -> dict:
        if self.grouped:
            return attention.grouped_init(
                key, self.d_model, self.n_heads, self.kv_heads, _dtype(key, self.dtype), self.bias
            )
        return attention.init(key, self.d_model, _dtype(key, self.dtype))

    def fwd(self, params, x, *, train=False, key=None, mask=None, **side):
        _check_width(self, x, self.d_model)
        batch, length, _ = x.shape
        blockwise = uses_blockwise(self.attention_kernel, length, length)
        # Blockwise keeps causality a flag: built whole, the causal mask is the (T, T) matrix it avoids.
        causal_mask = self.causal and not blockwise
        mask = attention_mask(mask, "mask", batch, length, length, causal=causal_mask, xp=array_namespace(x))
        if blockwise:
            return blockwise_attention.multi_head_fwd(
                params, x, x, mask, self.n_heads, self.kv_heads, causal=self.causal, rope_base=self.rope_base
            )
        if self.grouped:
            return attention.grouped_fwd(params, x, mask, self.n_heads, self.kv_heads, self.rope_base)
        return attention.fwd(params, x, x, mask, self.n_heads)

    def bwd(self, params, saved, dy):
        if isinstance(saved, blockwise_attention.HeadsSaved):
            dparams, dx, _ = blockwise_attention.multi_head_bwd(saved, dy, causal=self.causal, bias=self.bias)
            return dparams, dx
        if self.grouped:
            return attention.grouped_bwd(saved, dy, self.n_heads, self.kv_heads, self.bias)
        dparams, dx_q, dx_kv = attention.bwd(saved, dy, self.n_heads)
        return dparams, dx_q + dx_kv  # the input was both the queries and the keys/values

    def init_cache(self, params, x, max_len, **side):
        return _empty_cache(x, self.n_heads, max_len, self.kv_heads)

    def step(self, params, x, cache, position, *, mask=None, **side):
        """x (B, 1, D) at `position`: its keys and values are written into the cache, and it attends to
        the cached positions up to and including its own (`mask`: key padding over the cache, (B, max_len))."""
        xp = array_namespace(x)
        max_len = cache["k"].shape[2]
        seen = xp.reshape(xp.arange(max_len) <= position, (1, 1, 1, max_len))
        if mask is not None:
            seen = seen & attention_mask(mask, "mask", x.shape[0], 1, max_len, causal=False, xp=xp)
        if self.grouped:
            y, kv = attention.grouped_fwd(
                params,
                x,
                seen,
                self.n_heads,
                self.kv_heads,
                self.rope_base,
                attention.KVCache(cache["k"], cache["v"]),
                position,
            )
            return y, {"k": kv.k, "v": kv.v}
        y, kv = attention.fwd(params, x, x, seen, self.n_heads, attention.KVCache(cache["k"], cache["v"]), position)
        return y, {"k": kv.k, "v": kv.v}


@dataclasses.dataclass(frozen=True)
class CrossAttention(Part):
    """(x (B, T, D), memory (B, S, D)) -> (B, T, D): x's queries attend to the memory's keys and
    values. side `memory_mask`: the memory's key padding (B, S) or a full mask. dx is (dx, d_memory).
    attention_kernel: "auto", "full" or "blockwise" (see the module's docstring)."""

    d_model: int
    n_heads: int
    dtype: str = "float32"
    attention_kernel: str = "auto"

    n_inputs = 2

    def __post_init__(self):
        _check_heads(self)
        _check_kernel(self)

    def init(self, key) -> dict:
        return attention.init(key, self.d_model, _dtype(key, self.dtype))

    def _mask(self, x, memory, memory_mask):
        return attention_mask(
            memory_mask, "memory_mask", x.shape[0], x.shape[1], memory.shape[1], causal=False, xp=array_namespace(x)
        )

    def fwd(self, params, x, *, train=False, key=None, memory_mask=None, **side):
        x, memory = x
        _check_width(self, x, self.d_model)
        _check_width(self, memory, self.d_model, "memory")
        if memory.shape[0] != x.shape[0]:
            raise ValueError(f"{self!r}: x has batch size {x.shape[0]} but the memory has {memory.shape[0]}")
        mask = self._mask(x, memory, memory_mask)
        if uses_blockwise(self.attention_kernel, x.shape[1], memory.shape[1]):
            return blockwise_attention.multi_head_fwd(params, x, memory, mask, self.n_heads, self.n_heads)
        return attention.fwd(params, x, memory, mask, self.n_heads)

    def bwd(self, params, saved, dy):
        if isinstance(saved, blockwise_attention.HeadsSaved):
            dparams, dx, d_memory = blockwise_attention.multi_head_bwd(saved, dy)
            return dparams, (dx, d_memory)
        dparams, dx, d_memory = attention.bwd(saved, dy, self.n_heads)
        return dparams, (dx, d_memory)

    def init_cache(self, params, x, max_len, **side):
        """The memory's keys and values, projected once: {"k", "v"} (B, H, S, Dh)."""
        kv = attention.project_kv(params, x[1], self.n_heads)
        return {"k": kv.k, "v": kv.v}

    def step(self, params, x, cache, position, *, memory_mask=None, **side):
        x, memory = x
        mask = self._mask(x, memory, memory_mask)
        y, _ = attention.fwd(params, x, None, mask, self.n_heads, attention.KVCache(cache["k"], cache["v"]))
        return y, cache
