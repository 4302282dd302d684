"""`tokenizer_from_json`: a tokenizer of any kind back from the JSON its `to_json` wrote (in a checkpoint).

Apart from the tokenizer modules, which it reads back, so that none of them imports another's reader:
the BPE and Hugging Face tokenizers build on tokenizer.py, never the other way.
"""

from __future__ import annotations

import json

from .bpe import BpeTokenizer
from .hf_tokenizer import HuggingFaceTokenizer
from .tokenizer import CharTokenizer, TokenizerPair


def tokenizer_from_json(text: str) -> CharTokenizer | BpeTokenizer | HuggingFaceTokenizer | TokenizerPair:
    """The tokenizer (CharTokenizer, BpeTokenizer, HuggingFaceTokenizer or TokenizerPair) that its `to_json` wrote.
    A BPE or Hugging Face tokenizer needs the tokenizers library (the [text] extra) to be read back;
    its modules import that library only then, so reading a character tokenizer never needs it.

    A checkpoint whose tokenizer JSON has no "kind" holds a CharTokenizer's, which reads as one."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"tokenizer JSON is not valid JSON: {err}") from err
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind == TokenizerPair.kind:
        return TokenizerPair(_side_from_json(obj["source"], "source"), _side_from_json(obj["target"], "target"))
    if kind == "bpe":
        return BpeTokenizer.from_json(text)
    if kind == "huggingface":
        return HuggingFaceTokenizer.from_json(text)
    return CharTokenizer.from_json(text)


def _side_from_json(text: str, side: str) -> CharTokenizer | BpeTokenizer | HuggingFaceTokenizer:
    """One side of a TokenizerPair: a single vocabulary, never a pair itself."""
    tokenizer = tokenizer_from_json(text)
    if isinstance(tokenizer, TokenizerPair):
        raise ValueError(f"tokenizer JSON of a pair holds a pair as its {side}; each side must be one vocabulary")
    return tokenizer


__all__ = ["tokenizer_from_json"]
