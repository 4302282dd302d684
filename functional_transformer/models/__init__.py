"""Three families of Transformer, each one composition of parts (../parts):

encoder_decoder  the paper's translation model: (src, tgt_in) -> logits
decoder_only     a causal language model (GPT): ids -> next-token logits
encoder_only     a sequence classifier: ids -> class logits
presets          decoder-only architectures by name: preset("gpt2" | "llama", vocab_size, ...)
"""

from . import decoder_only, encoder_decoder, encoder_only, presets
from .decoder_only import DecoderConfig, DecoderOnly
from .encoder_decoder import EncoderDecoder
from .encoder_only import EncoderConfig, EncoderOnly
from .presets import preset

__all__ = [
    "DecoderConfig",
    "DecoderOnly",
    "EncoderConfig",
    "EncoderDecoder",
    "EncoderOnly",
    "decoder_only",
    "encoder_decoder",
    "encoder_only",
    "preset",
    "presets",
]
