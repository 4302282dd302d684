"""functional_transformer: the Transformer of "Attention Is All You Need" as pure functions.

    import functional_transformer as ft
    cfg = ft.TransformerConfig(src_vocab_size=32, tgt_vocab_size=32)
    params = ft.init(ft.random.key(0), cfg)
    logits = ft.apply(params, src, tgt_in, cfg)

The backend is FT_BACKEND ("numpy", the default, or "jax"), read once at import: `ft.backend`.
"""

from . import layers, random
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
from .config import TransformerConfig

backend = default_backend()

__all__ = [
    "TransformerConfig",
    "apply",
    "backend",
    "decode",
    "default_grad_method",
    "encode",
    "grad_and_metrics",
    "init",
    "layers",
    "loss_and_grad",
    "loss_and_metrics",
    "loss_fn",
    "random",
]
