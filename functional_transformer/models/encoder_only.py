"""An encoder-only sequence classifier: the paper's encoder, its output averaged over the real
tokens, then a linear layer to the classes. A composition of parts with no code of its own beyond
the mask it derives from pad_id:

    ids (B, T) -> Embedding -> Dropout -> Repeat(encoder block) -> MeanPool -> Linear -> (B, n_classes)

Parameter tree: {"embed": {"tokens", ["positions"]}, "encoder": {"layer_i": {"self_attn", "ln1",
"ffn", "ln2"}, ["final_ln"]}, "head": {"w", "b"}}.
"""

from __future__ import annotations

import dataclasses
import functools

from ..errors import ConfigError
from ..parts import Dropout, Embedding, Linear, MeanPool, Part, Serial
from ..parts.masks import padding_mask
from .decoder_only import _check_sizes, _from_dict, blocks


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of the classifier; n_classes is the number of labels. attention_kernel: "auto",
    "full" or "blockwise" (parts/attention.py: blockwise keeps memory linear in the length)."""

    vocab_size: int
    n_classes: int
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    n_layers: int = 2
    max_len: int = 256
    drop_rate: float = 0.1
    pad_id: int = 0
    norm_first: bool = True
    positional: str = "learned"
    activation: str = "gelu"
    dtype: str = "float32"
    attention_kernel: str = "auto"

    def __post_init__(self):
        _check_sizes(self, ("vocab_size", "n_classes", "d_model", "n_heads", "d_ff", "n_layers", "max_len"))
        if not 0 <= self.pad_id < self.vocab_size:
            raise ConfigError(f"pad_id ({self.pad_id}) must be a token id below vocab_size ({self.vocab_size})")
        _ = EncoderOnly(self).network  # building the parts checks the rest

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict):
        return _from_dict(cls, fields)


@dataclasses.dataclass(frozen=True)
class EncoderOnly(Part):
    """ids (B, T) -> class logits (B, n_classes); positions at pad_id are masked out of attention and
    of the mean. bwd returns (grads, None)."""

    cfg: EncoderConfig

    @functools.cached_property
    def network(self) -> Serial:
        cfg = self.cfg
        return Serial(
            ("embed", Embedding(cfg.vocab_size, cfg.d_model, cfg.max_len, cfg.positional, cfg.dtype)),
            Dropout(cfg.drop_rate),
            ("encoder", blocks(cfg, causal=False)),
            MeanPool(),
            ("head", Linear(cfg.d_model, cfg.n_classes, dtype=cfg.dtype)),
        )

    @property
    def needs_key(self) -> bool:
        return True

    def init(self, key) -> dict:
        return self.network.init(key)

    def fwd(self, params, x, *, train=False, key=None, **side):
        return self.network.fwd(params, x, train=train, key=key, mask=padding_mask(x, self.cfg.pad_id))

    def bwd(self, params, saved, dy):
        return self.network.bwd(params, saved, dy)


@functools.lru_cache(maxsize=64)
def for_config(cfg: EncoderConfig) -> EncoderOnly:
    return EncoderOnly(cfg)
