"""functional_transformer: the Transformer of "Attention Is All You Need" as pure functions.

    import functional_transformer as ft
    cfg = ft.TransformerConfig(src_vocab_size=32, tgt_vocab_size=32)
    params = ft.init(ft.random.key(0), cfg)
    logits = ft.apply(params, src, tgt_in, cfg)

Composing your own model from the parts, each with its hand-written backward (see parts/):

    from functional_transformer import parts as P
    block = P.Serial(P.Residual(P.SelfAttention(64, 4, causal=True), 64, norm_first=True),
                     P.Residual(P.FeedForward(64, 256, "gelu"), 64, norm_first=True, name="ffn", norm_name="ln2"))
    y, saved = block.fwd(block.init(key), x)

Training and using a model from Python (see runs.py):

    result = ft.fit(data="reverse", train_config=ft.TrainConfig(steps=300), out_dir="runs/quick")
    model = ft.load("runs/quick")
    ft.predict(model, ["apple"])
    maps = ft.attention_maps(model.params, model.cfg, model.tokenizer, "apple")   # insight/

GPT-2 and Llama checkpoints from Hugging Face (hf.py), and back:

    model = ft.from_huggingface("path/to/folder", dtype="float64")
    model.logits(ids)                                   # (B, T) -> (B, T, V)
    ft.to_huggingface(model, "path/to/out")

The backend is FT_BACKEND ("numpy", the default, or "jax"), read once, on first use: `ft.backend`.
Importing the package never fails on a bad FT_BACKEND; using the backend does (ValueError for an
unknown name, ImportError when JAX is asked for and not installed), so that `ft` can report it.
"""

from typing import TYPE_CHECKING

from . import generate, hf, layers, loss, models, optim, parts, sampling
from . import prng as random  # ft.random: keyed random numbers (a module not named after Python's own)
from .api import (
    apply,
    decode,
    default_grad_method,
    encode,
    grad_and_metrics,
    init,
    loss_and_grad,
    loss_and_metrics,
    loss_fn,
)
from .backend_choice import default_backend
from .config import TrainConfig, TransformerConfig
from .errors import ConfigError, UserInputError
from .hf import from_huggingface, to_huggingface
from .insight import attention_maps
from .models import DecoderConfig, EncoderConfig
from .runs import (
    FitResult,
    RunFolderError,
    TrainedModel,
    evaluate,
    fit,
    labelled_data,
    load,
    predict,
    task_data,
    text_data,
    tokenizer_spec,
    tsv_data,
)
from .tensorboard import TensorBoardWriter

if TYPE_CHECKING:  # `backend` is made on first use by __getattr__; declared here for type checkers
    from backends import Backend

    backend: Backend


def __getattr__(name: str):
    if name == "backend":  # resolved lazily (PEP 562), so that a bad FT_BACKEND does not break the import
        return default_backend()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DecoderConfig",
    "EncoderConfig",
    "labelled_data",
    "text_data",
    "FitResult",
    "TensorBoardWriter",
    "UserInputError",
    "RunFolderError",
    "TrainConfig",
    "TrainedModel",
    "TransformerConfig",
    "evaluate",
    "fit",
    "from_huggingface",
    "hf",
    "load",
    "predict",
    "task_data",
    "to_huggingface",
    "tokenizer_spec",
    "tsv_data",
    "apply",
    "attention_maps",
    "backend",
    "decode",
    "default_grad_method",
    "encode",
    "grad_and_metrics",
    "init",
    "layers",
    "loss",
    "models",
    "optim",
    "parts",
    "sampling",
    "generate",
    "loss_and_grad",
    "loss_and_metrics",
    "loss_fn",
    "random",
]
