"""Parts: the layers of a Transformer as values you compose, each with its hand-written backward.

    from functional_transformer import parts as P
    block = P.Serial(
        P.Residual(P.SelfAttention(64, 4, causal=True), 64, norm_first=True, name="attn", norm_name="ln1"),
        P.Residual(P.FeedForward(64, 256, "gelu"), 64, norm_first=True, name="ffn", norm_name="ln2"),
    )
    params = block.init(key)
    y, saved = block.fwd(params, x, train=True, key=k)     # x (B, T, 64)
    dparams, dx = block.bwd(params, saved, dy)              # derived from the parts' own VJPs

The contract every part follows is in part.py; the combinators that derive init, fwd, bwd and
the decoding step of a composition are in combinators.py; `custom_vjp` and `check_part` (bridge.py)
connect a part's backward to JAX and check it.
"""

from .attention import CrossAttention, SelfAttention
from .bridge import check_part, custom_vjp
from .combinators import Parallel, Repeat, Residual, Select, Serial
from .embedding import Embedding
from .masks import attention_mask, causal_mask, padding_mask
from .part import GradientStructureError, Part, checked_bwd
from .pooling import MeanPool
from .position_wise import Activation, Dropout, FeedForward, GatedFeedForward, LayerNorm, Linear, RMSNorm, norm

__all__ = [
    "Activation",
    "CrossAttention",
    "Dropout",
    "Embedding",
    "FeedForward",
    "GatedFeedForward",
    "GradientStructureError",
    "LayerNorm",
    "Linear",
    "MeanPool",
    "Parallel",
    "RMSNorm",
    "Part",
    "Repeat",
    "Residual",
    "Select",
    "SelfAttention",
    "Serial",
    "attention_mask",
    "causal_mask",
    "check_part",
    "checked_bwd",
    "custom_vjp",
    "norm",
    "padding_mask",
]
