"""The configurations: the model's (TransformerConfig) and the training's (TrainConfig), frozen (hashable)
dataclasses, so they can be static arguments of jit. The other model families' configs are in models/."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError

ACTIVATIONS = ("relu", "gelu")
POSITIONAL = ("sinusoidal", "learned")
DTYPES = ("float32", "float64")
# Besides the parameter dtype itself: bfloat16 matmuls and activations over float32 master params.
COMPUTE_DTYPES = ("bfloat16",)
ATTENTION_KERNELS = ("auto", "full", "blockwise")  # the attention parts' kernels (parts/attention.py)


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


SCHEDULES = ("transformer", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd")
# What a checkpoint's train config says of an optimizer given as an optax GradientTransformation: the
# object itself (its functions, its hyperparameters in their closures) cannot be written down.
USER_OPTIMIZER = "optax"
# How gradients are taken: the hand-written VJPs, or the backend's autodiff (JAX only).
GRAD_METHODS = ("vjp", "autodiff")
# Each model family's held-out metrics, with the direction that is better.
METRICS = {
    "encoder_decoder": {
        "exact_match": "max",
        "char_accuracy": "max",
        "token_accuracy": "max",
        "bleu": "max",
        "chrf": "max",
        "loss": "min",
    },
    "decoder": {"loss": "min", "perplexity": "min", "token_accuracy": "max"},
    "encoder": {"accuracy": "max", "loss": "min"},
}
# The held-out metric that picks a family's best checkpoint when TrainConfig.best_by is None.
DEFAULT_BEST_BY = {"encoder_decoder": "exact_match", "decoder": "loss", "encoder": "accuracy"}
# The held-out metrics that can choose the best checkpoint (of any family), each with its better direction.
BEST_BY = {name: better for metrics in METRICS.values() for name, better in metrics.items()}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train. learning_rate is the peak rate of the "cosine" and "constant" schedules and
    the scale of the paper's "transformer" schedule (d_model^-0.5 * min(step^-0.5, step * warmup^-1.5))."""

    steps: int = 2000
    batch_size: int = 64
    # Batches of at most this many padded tokens (rows x length) from examples of similar length,
    # instead of batch_size examples (None: batch_size).
    max_tokens: int | None = None
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    schedule: str = "cosine"
    # "adam", "adamw", "sgd", or an optax GradientTransformation (JAX only) used as the whole update
    # rule: learning_rate, schedule, warmup_steps, weight_decay and clip_norm then do not apply.
    optimizer: Any = "adam"
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500
    save_every: int = 500
    grad_method: str | None = None
    # Stop after this many held-out evaluations without a better `best_by` (0: never).
    patience: int = 0
    # The held-out metric (a key of BEST_BY) that picks best.safetensors and that patience watches;
    # None: the model family's own (exact_match for the encoder-decoder; DEFAULT_BEST_BY above).
    best_by: str | None = None
    # The step at which the schedule (re)started: 0, or where `ft train --resume --extend` added
    # steps to a finished run (a warm restart of the cosine schedule; see make_optimizer).
    schedule_start: int = 0
    # Micro-batches whose gradients make one update: the update of one batch this many times larger
    # (each micro-batch weighted by its real target tokens), in the memory of one micro-batch.
    accumulate_steps: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every", "eval_every", "save_every", "accumulate_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1 (or None for batch_size batches), got {self.max_tokens}")
        if self.patience < 0:
            raise ConfigError(f"patience must be 0 (off) or positive, got {self.patience}")
        if not 0 <= self.schedule_start < self.steps:
            raise ConfigError(
                f"schedule_start must be in [0, steps), got {self.schedule_start} with steps {self.steps}"
            )
        if self.grad_method not in (None, *GRAD_METHODS):
            raise ConfigError(f"grad_method must be one of {GRAD_METHODS} or None, got {self.grad_method!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.best_by is not None and self.best_by not in BEST_BY:
            raise ConfigError(f"best_by must be one of {tuple(BEST_BY)} or None, got {self.best_by!r}")
        if isinstance(self.optimizer, str):
            if self.optimizer not in (*OPTIMIZERS, USER_OPTIMIZER):
                raise ConfigError(
                    f"optimizer must be one of {OPTIMIZERS} or an optax GradientTransformation, got {self.optimizer!r}"
                )
        elif not (
            callable(getattr(self.optimizer, "init", None)) and callable(getattr(self.optimizer, "update", None))
        ):
            raise ConfigError(
                f"optimizer must be one of {OPTIMIZERS} or an optax GradientTransformation (with init "
                f"and update), got {type(self.optimizer).__name__}"
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def user_optimizer(tcfg: TrainConfig) -> bool:
    """Whether tcfg's optimizer is an optax GradientTransformation given in Python (not a built-in name)."""
    return not isinstance(tcfg.optimizer, str)


def train_config_record(tcfg: TrainConfig) -> dict:
    """tcfg as the JSON-ready dict a checkpoint stores: an optax optimizer is written as "optax"."""
    record = dataclasses.asdict(dataclasses.replace(tcfg, optimizer="adam"))
    return dict(record, optimizer=USER_OPTIMIZER if user_optimizer(tcfg) else tcfg.optimizer)
