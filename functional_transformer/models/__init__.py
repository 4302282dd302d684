"""Three families of Transformer, each one composition of parts (../parts):

    encoder_decoder  the paper's translation model: (src, tgt_in) -> logits
    decoder_only     a causal language model (GPT): ids -> next-token logits
    encoder_only     a sequence classifier: ids -> class logits
"""

from . import decoder_only, encoder_decoder, encoder_only
from .decoder_only import DecoderConfig, DecoderOnly
from .encoder_decoder import EncoderDecoder
from .encoder_only import EncoderConfig, EncoderOnly

__all__ = ["DecoderConfig", "DecoderOnly", "EncoderConfig", "EncoderDecoder", "EncoderOnly", "decoder_only",
           "encoder_decoder", "encoder_only"]
