"""A decoder-only causal language model (GPT): each position predicts the next token from the ones
before it, composed from the same parts as the paper's decoder, without the cross-attention.

    ids (B, T) -> Embedding -> Dropout -> Repeat(Residual(SelfAttention, causal) -> Residual(FeedForward))
               -> [final LayerNorm with pre-norm] -> Linear (tied to the embedding by default) -> (B, T, V)

Parameter tree: {"embed": {"tokens", ["positions"]}, "blocks": {"layer_i": {"self_attn", "ln1",
"ffn", "ln2"}, ["final_ln"]}, "head": {"w", "b"} ("b" alone when tied)}. A tied head without a bias
has no params: the tree then has no "head".

The same composition makes GPT-2 and Llama (models/presets.py): the settings choose RMSNorm or
LayerNorm (norm, norm_eps), rotary or learned positions (positional "rope", rope_base), a gated
feed-forward (gated_ffn with activation "silu": SwiGLU), grouped-query attention (n_kv_heads),
biases or none (bias, head_bias), and whether the embedding is scaled by sqrt(d_model).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, NamedTuple

from backends import prng as ftrandom

from ..errors import ConfigError
from ..parts import (
    Dropout,
    Embedding,
    FeedForward,
    GatedFeedForward,
    Linear,
    Part,
    Repeat,
    Residual,
    SelfAttention,
    Serial,
    norm,
)
from ..parts.masks import padding_mask
from ..parts.part import keys_for

if TYPE_CHECKING:
    from .encoder_only import EncoderConfig  # which builds its blocks with this module
from . import heads


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyperparameters of the causal language model. Defaults: a small GPT (pre-norm, learned
    positions, GELU, tied embeddings). pad_id pads batches and is never predicted; bos_id and
    eos_id open and close each document. pad_id None: the vocabulary has no padding token (a
    converted GPT-2 or Llama): no key is masked and every token may be sampled.

    Today's settings (models/presets.py): norm "layer" or "rms", norm_eps (None: 1e-5 for layer
    norm, 1e-6 for RMSNorm); positional "learned", "sinusoidal" or "rope" (rotary, base rope_base);
    activation "relu", "gelu" (tanh form) or "silu"; gated_ffn (SwiGLU with "silu", GeGLU with
    "gelu"); n_kv_heads (grouped-query attention; None: n_heads); bias (attention and feed-forward
    biases; False needs gated_ffn); head_bias (the output projection's); scale_embeddings (the
    paper's sqrt(d_model); GPT-2 and Llama do not scale). attention_kernel: "auto", "full" or
    "blockwise" (parts/attention.py: blockwise keeps memory linear in the length)."""

    vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    n_layers: int = 4
    max_len: int = 256
    drop_rate: float = 0.1
    pad_id: int | None = 0
    norm_first: bool = True
    tie_embeddings: bool = True
    positional: str = "learned"
    activation: str = "gelu"
    dtype: str = "float32"
    norm: str = "layer"
    norm_eps: float | None = None
    n_kv_heads: int | None = None
    bias: bool = True
    gated_ffn: bool = False
    rope_base: float = 10000.0
    scale_embeddings: bool = True
    head_bias: bool = True
    attention_kernel: str = "auto"

    def __post_init__(self):
        _check_sizes(self, ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_len"))
        if self.pad_id is not None and not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(
                f"pad_id ({self.pad_id}) must be a token id below vocab_size ({self.vocab_size}), "
                "or None for a vocabulary without padding"
            )
        if self.positional not in POSITIONAL:
            raise ConfigError(f"DecoderConfig.positional must be one of {POSITIONAL}, got {self.positional!r}")
        if not self.bias and not self.gated_ffn:
            raise ConfigError(
                "DecoderConfig: bias=False is for the gated feed-forward (gated_ffn=True, Llama's); "
                "the ungated one always has biases"
            )
        model = DecoderOnly(self)
        _ = model.embed, model.blocks  # building the parts checks the rest (heads dividing d_model, rates)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict):
        return _from_dict(cls, fields)


POSITIONAL = ("learned", "sinusoidal", "rope")


def _check_sizes(cfg: DecoderConfig | EncoderConfig, names) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}")


def _from_dict(cls, fields: dict):
    unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**fields)


def _setting(cfg: DecoderConfig | EncoderConfig, name: str, default):
    """A DecoderConfig setting, or the paper's value for a config without it (EncoderConfig)."""
    return getattr(cfg, name, default)


def block(cfg: DecoderConfig | EncoderConfig, *, causal: bool) -> Serial:
    """One pre- or post-norm Transformer block: self-attention, then the feed-forward network."""
    norm_kind, norm_eps = _setting(cfg, "norm", "layer"), _setting(cfg, "norm_eps", None)

    def residual(sublayer, name, norm_name):
        return Residual(
            sublayer,
            cfg.d_model,
            norm_first=cfg.norm_first,
            drop_rate=cfg.drop_rate,
            name=name,
            norm_name=norm_name,
            dtype=cfg.dtype,
            norm=norm_kind,
            norm_eps=norm_eps,
        )

    bias = _setting(cfg, "bias", True)
    # Only a DecoderConfig has rotary positions: an EncoderConfig's Embedding refuses "rope".
    rope_base = float(cfg.rope_base) if isinstance(cfg, DecoderConfig) and cfg.positional == "rope" else None
    attention = SelfAttention(
        cfg.d_model,
        cfg.n_heads,
        causal=causal,
        dtype=cfg.dtype,
        n_kv_heads=_setting(cfg, "n_kv_heads", None),
        bias=bias,
        rope_base=rope_base,
        attention_kernel=_setting(cfg, "attention_kernel", "auto"),
    )
    if _setting(cfg, "gated_ffn", False):
        ffn = GatedFeedForward(cfg.d_model, cfg.d_ff, cfg.activation, bias, cfg.dtype)
    else:
        ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.activation, cfg.dtype)
    return Serial(residual(attention, "self_attn", "ln1"), residual(ffn, "ffn", "ln2"))


def blocks(cfg: DecoderConfig | EncoderConfig, *, causal: bool) -> Repeat:
    final = norm(_setting(cfg, "norm", "layer"), cfg.d_model, cfg.dtype, _setting(cfg, "norm_eps", None))
    return Repeat(block(cfg, causal=causal), cfg.n_layers, final=final if cfg.norm_first else None)


class Saved(NamedTuple):
    embed: Any
    drop: Any
    blocks: Any
    head: Any


@dataclasses.dataclass(frozen=True)
class DecoderOnly(Part):
    """ids (B, T) -> next-token logits (B, T, V). Keys at pad_id are masked; bwd returns (grads, None)."""

    cfg: Any

    @functools.cached_property
    def embed(self) -> Embedding:
        cfg = self.cfg
        positional = "none" if cfg.positional == "rope" else cfg.positional  # rotary acts in attention
        return Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, positional, cfg.dtype, scale=cfg.scale_embeddings)

    @functools.cached_property
    def blocks(self) -> Repeat:
        return blocks(self.cfg, causal=True)

    @functools.cached_property
    def head(self) -> Linear:
        return Linear(self.cfg.d_model, self.cfg.vocab_size, bias=self.cfg.head_bias, dtype=self.cfg.dtype)

    @property
    def dropout(self) -> Dropout:
        return Dropout(self.cfg.drop_rate)

    @property
    def needs_key(self) -> bool:
        return True

    def init(self, key) -> dict:
        k_embed, k_blocks, k_head = ftrandom.split(key, 3)
        params = {"embed": self.embed.init(k_embed), "blocks": self.blocks.init(k_blocks)}
        head = heads.init(self.head.init(k_head), self.cfg.tie_embeddings)
        return params | ({"head": head} if head else {})  # a tied head without bias has no params

    def _projection(self, params):
        return heads.projection(params.get("head", {}), params["embed"]["tokens"], self.cfg.tie_embeddings)

    def _padding_mask(self, ids):
        return None if self.cfg.pad_id is None else padding_mask(ids, self.cfg.pad_id)

    def fwd(self, params, x, *, train=False, key=None, **side):
        k_embed, k_blocks = keys_for((self.dropout, self.blocks), key)
        h, saved_embed = self.embed.fwd(params["embed"], x)
        h, saved_drop = self.dropout.fwd({}, h, train=train, key=k_embed)
        h, saved_blocks = self.blocks.fwd(params["blocks"], h, train=train, key=k_blocks, mask=self._padding_mask(x))
        logits, saved_head = self.head.fwd(self._projection(params), h)
        return logits, Saved(saved_embed, saved_drop, saved_blocks, saved_head)

    def bwd(self, params, saved: Saved, dy):
        d_projection, dh = self.head.bwd(self._projection(params), saved.head, dy)
        d_blocks, dh = self.blocks.bwd(params["blocks"], saved.blocks, dh)
        _, dh = self.dropout.bwd({}, saved.drop, dh)
        d_embed, _ = self.embed.bwd(params["embed"], saved.embed, dh)
        d_head, d_embed["tokens"] = heads.split_grads(d_projection, d_embed["tokens"], self.cfg.tie_embeddings)
        return {"embed": d_embed, "blocks": d_blocks} | ({"head": d_head} if "head" in params else {}), None

    def init_cache(self, params, x, max_len, **side):
        """x: ids (B, 1) -> {"layer_i": {...}}: every block's empty key/value cache of max_len positions."""
        h = self.embed.output_like(params["embed"], x)
        return self.blocks.init_cache(params["blocks"], h, max_len)

    def step(self, params, x, cache, position, **side):
        """ids (B, 1) at `position` -> (logits (B, 1, V), cache)."""
        h, _ = self.embed.step(params["embed"], x, None, position)
        h, cache = self.blocks.step(params["blocks"], h, cache, position)
        return self.head.apply(self._projection(params), h), cache


@functools.lru_cache(maxsize=64)
def for_config(cfg: DecoderConfig) -> DecoderOnly:
    return DecoderOnly(cfg)
