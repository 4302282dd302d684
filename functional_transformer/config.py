"""The model's configuration: one frozen (hashable) dataclass, so it can be a static argument of jit."""

from __future__ import annotations

import dataclasses

from .errors import ConfigError

ACTIVATIONS = ("relu", "gelu")
POSITIONAL = ("sinusoidal", "learned")
DTYPES = ("float32", "float64")
# Besides the parameter dtype itself: bfloat16 matmuls and activations over float32 master params.
COMPUTE_DTYPES = ("bfloat16",)
ATTENTION_KERNELS = ("auto", "full", "blockwise")  # as parts.attention.ATTENTION_KERNELS


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the encoder-decoder Transformer; defaults are the paper's base model.

    norm_first=False is the paper's post-norm residual `LayerNorm(x + Dropout(Sublayer(x)))`;
    True is pre-norm `x + Dropout(Sublayer(LayerNorm(x)))` with a final LayerNorm per stack.
    tie_embeddings=True shares the target embedding with the output projection (paper §3.4).
    drop_rate is the residual and embedding dropout of paper §5.4.
    dtype is the parameters' (and the optimizer state's) dtype; compute_dtype="bfloat16" runs the
    matmuls and activations in bfloat16 over them (JAX only), with softmax, layer-norm statistics,
    the logits and the loss in dtype; None computes in dtype.
    attention_kernel: "auto", "full" or "blockwise", how every attention layer computes its weights
    (parts/attention.py: blockwise keeps memory linear in the length; auto picks it for long inputs).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    max_len: int = 512
    drop_rate: float = 0.1
    pad_id: int = 0
    norm_first: bool = False
    tie_embeddings: bool = False
    dtype: str = "float32"
    activation: str = "relu"
    positional: str = "sinusoidal"
    compute_dtype: str | None = None
    attention_kernel: str = "auto"

    def __post_init__(self):
        for name in (
            "src_vocab_size",
            "tgt_vocab_size",
            "d_model",
            "n_heads",
            "d_ff",
            "n_encoder_layers",
            "n_decoder_layers",
            "max_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"TransformerConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}): "
                "each head gets d_model // n_heads dimensions"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ConfigError(f"pad_id ({self.pad_id}) must be a valid token id of both vocabularies")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.compute_dtype not in (None, self.dtype, *COMPUTE_DTYPES):
            raise ConfigError(
                f"compute_dtype must be None (compute in dtype={self.dtype!r}) or one of {COMPUTE_DTYPES}, "
                f"got {self.compute_dtype!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.positional not in POSITIONAL:
            raise ConfigError(f"positional must be one of {POSITIONAL}, got {self.positional!r}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ConfigError(f"attention_kernel must be one of {ATTENTION_KERNELS}, got {self.attention_kernel!r}")

    @property
    def activations_dtype(self) -> str:
        """The dtype of the matmuls and activations: compute_dtype, or dtype when that is None."""
        return self.compute_dtype or self.dtype

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> TransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ConfigError(f"unknown TransformerConfig fields: {sorted(unknown)}")
        return cls(**fields)
