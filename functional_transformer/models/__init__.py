"""Three families of Transformer, each one composition of parts (../parts):

    encoder_decoder  the paper's translation model: (src, tgt_in) -> logits
    decoder_only     a causal language model (GPT): ids -> next-token logits
    encoder_only     a sequence classifier: ids -> class logits
"""

from . import encoder_decoder
from .encoder_decoder import EncoderDecoder

__all__ = ["EncoderDecoder", "encoder_decoder"]
