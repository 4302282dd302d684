"""Token embeddings with positions: ids (B, T) -> vectors (B, T, d_model)."""

from __future__ import annotations

import dataclasses

from backends import array_namespace, backend_of

from .. import checks
from ..errors import ConfigError
from ..layers import embedding
from .part import Part
from .position_wise import _check_positive, _dtype

POSITIONAL = ("sinusoidal", "learned", "none")


@dataclasses.dataclass(frozen=True)
class Embedding(Part):
    """tokens[ids] * sqrt(d_model) + positions (paper §3.4-3.5); params {"tokens": (V, D)} and, with
    learned positions, {"positions": (max_len, D)}. The ids get no gradient (dx is None).

    positional "none" adds no positions (a model with rotary positions in its attention);
    scale=False leaves out the sqrt(d_model) (GPT-2 and Llama do not scale).
    `name` says what the ids are in error messages ("src", "ids", ...)."""

    vocab_size: int
    d_model: int
    max_len: int
    positional: str = "sinusoidal"
    dtype: str = "float32"
    name: str = "ids"
    scale: bool = True

    def __post_init__(self):
        _check_positive(self, vocab_size=self.vocab_size, d_model=self.d_model, max_len=self.max_len)
        if self.positional not in POSITIONAL:
            raise ConfigError(f"Embedding: positional must be one of {POSITIONAL}, got {self.positional!r}")

    def init(self, key) -> dict:
        return embedding.init(
            key, self.vocab_size, self.d_model, self.max_len, _dtype(key, self.dtype), self.positional == "learned"
        )

    def _check(self, ids) -> None:
        checks.check_token_ids(self.name, ids, self.vocab_size, self.max_len, backend_of(ids))

    def fwd(self, params, x, *, train=False, key=None, **side):
        self._check(x)
        return embedding.fwd(params, x, **self._settings)

    @property
    def _settings(self) -> dict:
        return {"scale": self.scale, "sinusoidal_positions": self.positional == "sinusoidal"}

    def bwd(self, params, saved, dy):
        n_positions = self.max_len if self.positional == "learned" else None
        return embedding.bwd(saved, dy, self.vocab_size, n_positions, scale=self.scale), None

    def output_like(self, params, x):
        xp = array_namespace(params["tokens"])
        return xp.zeros((*x.shape, self.d_model), dtype=params["tokens"].dtype)

    def step(self, params, x, cache, position, **side):
        """ids (B, 1) at `position` -> (B, 1, d_model)."""
        self._check(x)
        return embedding.apply(params, x, position, **self._settings), cache
