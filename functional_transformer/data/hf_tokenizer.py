"""A Hugging Face model's own tokenizer (its tokenizer.json), wrapped with the `tokenizers` library
(the [text] extra) in the interface of tokenizer.py, so that a converted GPT-2 or Llama run folder
encodes and decodes text as the model was trained to.

Unlike the project's tokenizers, its special ids are the model's: bos_id and eos_id from its
config.json, pad_id and unk_id where it has them (None otherwise; GPT-2 has neither).
`encode` adds no special tokens; `decode` stops at the first eos and leaves out special tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .bpe import LibraryEncoding, import_tokenizers
from .tokenizer import OneVocabulary

_JSON_KIND = "huggingface"
_JSON_VERSION = 1


@dataclass(frozen=True)
class HuggingFaceTokenizer(LibraryEncoding, OneVocabulary):
    """tokenizer.json as the tokenizers library reads it, with the model's special ids."""

    json_text: str
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    _hf: Any = field(init=False, repr=False, compare=False)  # a tokenizers.Tokenizer (optional dependency)

    kind = _JSON_KIND

    def __post_init__(self):
        try:
            hf = import_tokenizers().Tokenizer.from_str(self.json_text)
        except Exception as err:  # the library raises its own Exception type for a bad file
            raise ConfigError(f"tokenizer.json is not a tokenizer the tokenizers library reads: {err}") from None
        object.__setattr__(self, "_hf", hf)
        for name in ("bos_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} {value} is outside the tokenizer's {self.vocab_size} ids")

    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included."""
        return self._hf.get_vocab_size(with_added_tokens=True)

    @property
    def unk_id(self) -> int | None:
        token = getattr(self._hf.model, "unk_token", None)
        return None if token is None else self._hf.token_to_id(token)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` up to the first eos, special tokens left out."""
        kept = []
        for raw in ids:
            i = int(raw)
            if i == self.eos_id:
                break
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside this tokenizer's vocabulary of {self.vocab_size} ids")
            kept.append(i)
        return self._hf.decode(kept, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self._hf.id_to_token(token_id)

    def unknown_symbols(self, texts: Iterable[str]) -> list[str]:
        """The characters of `texts` that encode as the unknown token (none for byte-level BPE)."""
        unk = self.unk_id
        if unk is None:
            return []
        chars = sorted({c for text in ([texts] if isinstance(texts, str) else texts) for c in text})
        return [c for c in chars if unk in self.encode(c)]

    def describe(self, limit: int = 40) -> str:
        model = type(self._hf.model).__name__
        return f"{self.vocab_size} ids of a Hugging Face {model} tokenizer (bos {self.bos_id}, eos {self.eos_id})"

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": _JSON_KIND,
                "version": _JSON_VERSION,
                "tokenizer": self.json_text,
                "bos_id": self.bos_id,
                "eos_id": self.eos_id,
                "pad_id": self.pad_id,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> HuggingFaceTokenizer:
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("kind") != _JSON_KIND or not isinstance(obj.get("tokenizer"), str):
            raise ConfigError(f"tokenizer JSON must be an object with kind {_JSON_KIND!r} and a 'tokenizer' string")
        if obj.get("version") != _JSON_VERSION:
            raise ConfigError(
                f"Hugging Face tokenizer JSON version {obj.get('version')!r} is not supported "
                f"(expected {_JSON_VERSION})"
            )
        return cls(obj["tokenizer"], obj.get("bos_id"), obj.get("eos_id"), obj.get("pad_id"))
