"""A byte-pair-encoding tokenizer trained with Hugging Face `tokenizers` (the [text] extra).

Contract (the interface of tokenizer.py, so it stands wherever a CharTokenizer does):
- ids 0-3 are pad, bos, eos and unk, as for every tokenizer; the rest are the characters of the
  data (every one seen in the texts and the alphabet it was trained with) and the merges learned;
- text is split before each space (the space stays at the start of the next piece) and nothing is
  normalised, so `decode(encode(text)) == text` for any text whose characters were seen;
  a character never seen encodes as unk and decodes as U+FFFD, like CharTokenizer's;
- the special tokens are ids only: a text that spells "<pad>" is encoded as its characters;
- `to_json` / `from_json` round-trip exactly (the tokenizers library's own JSON, inside ours).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, CharTokenizer, OneVocabulary, decode_ids
from .tsv import DataError

INSTALL_HINT = "pip install 'functional-transformer[text]' (in a checkout: uv sync --extra text)"

_JSON_KIND = "bpe"
_JSON_VERSION = 1
# The special tokens' names inside the library's vocabulary: each has a space after its first
# character, and the pre-tokenizer splits before every space, so no merge of text can spell one
# (a merge that spelled "<eos>" would otherwise be read as the end of the sequence).
_HF_SPECIAL_TOKENS = tuple(f"{name[0]} {name[1:]}" for name in SPECIAL_TOKENS)


class TextExtraMissing(DataError):
    """A feature of the [text] extra was asked for where its library is not installed."""


def import_tokenizers():
    """The `tokenizers` module, or TextExtraMissing saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise TextExtraMissing(
            f"BPE tokenizers need the Hugging Face tokenizers library, an optional extra: {INSTALL_HINT}"
        ) from None
    return tokenizers


class LibraryEncoding:
    """encode, encode_many and pieces of a tokenizer that wraps a `tokenizers` library object, `self._hf`."""

    _hf: Any  # a tokenizers.Tokenizer (optional dependency), set by the subclass

    def encode(self, text: str) -> list[int]:
        """The ids of `text`'s pieces (unk for characters never seen); no special tokens added."""
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, in one call into the library (faster on large data)."""
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def pieces(self, text: str) -> list[str]:
        """The part of `text` that each id of `encode(text)` stands for (an unknown character as itself)."""
        return [text[start:end] for start, end in self._hf.encode(text, add_special_tokens=False).offsets]


@dataclass(frozen=True)
class BpeTokenizer(LibraryEncoding, OneVocabulary):
    """Subword pieces learned by BPE over the characters of the training data; see the module docstring."""

    json_text: str  # the tokenizers library's serialisation; equality and hashing go by it
    _hf: Any = field(init=False, repr=False, compare=False)  # a tokenizers.Tokenizer
    _tokens: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _alphabet: CharTokenizer = field(init=False, repr=False, compare=False)

    kind = _JSON_KIND
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __post_init__(self):
        hf = import_tokenizers().Tokenizer.from_str(self.json_text)
        vocab = hf.get_vocab(with_added_tokens=False)
        tokens = [""] * len(vocab)
        for token, i in vocab.items():
            tokens[i] = token
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != _HF_SPECIAL_TOKENS:
            raise ValueError(
                f"a BPE tokenizer's first ids must be the special tokens {_HF_SPECIAL_TOKENS}, "
                f"got {tokens[: len(SPECIAL_TOKENS)]}"
            )
        object.__setattr__(self, "_hf", hf)
        object.__setattr__(self, "_tokens", tuple(tokens))
        single = sorted({t for t in tokens[len(SPECIAL_TOKENS) :] if len(t) == 1})
        object.__setattr__(self, "_alphabet", CharTokenizer(tuple(single)))

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, alphabet: Iterable[str] = (), what: str = "training"
    ) -> BpeTokenizer:
        """BPE with at most `vocab_size` ids learned from `texts`; every character of `texts` and of
        `alphabet` (e.g. held-out texts, so none of theirs is unknown) gets an id of its own.

        A vocab_size below the special tokens plus those characters is a DataError naming the
        smallest that fits (`what` names the texts in it)."""
        tokenizers = import_tokenizers()
        texts = list(texts)
        chars = sorted({c for text in [*texts, *alphabet] for c in text})
        smallest = len(SPECIAL_TOKENS) + len(chars)
        if vocab_size < smallest:
            raise DataError(
                f"--vocab-size {vocab_size} is too small for the {len(chars)} distinct characters of the "
                f"{what} data: BPE needs at least {smallest} ids ({len(SPECIAL_TOKENS)} special tokens + "
                f"one per character); raise --vocab-size"
            )
        hf = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=_HF_SPECIAL_TOKENS[UNK_ID]))
        hf.pre_tokenizer = tokenizers.pre_tokenizers.Split(" ", behavior="merged_with_next")
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(_HF_SPECIAL_TOKENS), initial_alphabet=chars, show_progress=False
        )
        hf.train_from_iterator(texts, trainer)
        # The special tokens stay in the vocabulary (ids 0-3) but are not matched in text either, so
        # every text is read as its characters, as CharTokenizer reads it.
        serialised = json.loads(hf.to_str())
        serialised["added_tokens"] = []
        return cls(json.dumps(serialised, ensure_ascii=False))

    @property
    def vocab_size(self) -> int:
        """The number of ids: the special tokens, the characters and the merged pieces."""
        return len(self._tokens)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` up to the first eos; pad and bos are skipped, unk becomes U+FFFD."""
        return decode_ids(ids, self.token_text, self.vocab_size)

    def token_text(self, token_id: int) -> str:
        """The text of one id: its piece, or the special token's name."""
        return SPECIAL_TOKENS[token_id] if token_id < len(SPECIAL_TOKENS) else self._tokens[token_id]

    def unknown_symbols(self, texts: Iterable[str]) -> list[str]:
        """The characters of `texts` that have no id (those `encode` maps to unk), each once, sorted."""
        return self._alphabet.unknown_symbols(texts)

    def describe(self, limit: int = 40) -> str:
        """The vocabulary, short: its size and its characters."""
        return f"{self.vocab_size} BPE pieces over the characters {self._alphabet.describe(limit)}"

    def to_json(self) -> str:
        """The tokenizer as a JSON string that `from_json` reads back."""
        return json.dumps(
            {"kind": _JSON_KIND, "version": _JSON_VERSION, "tokenizer": self.json_text}, ensure_ascii=False
        )

    @classmethod
    def from_json(cls, text: str) -> BpeTokenizer:
        """The tokenizer that `to_json` wrote (needs the tokenizers library)."""
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("kind") != _JSON_KIND or not isinstance(obj.get("tokenizer"), str):
            raise ValueError(f"tokenizer JSON must be an object with kind {_JSON_KIND!r} and a 'tokenizer' string")
        if obj.get("version") != _JSON_VERSION:
            raise ValueError(
                f"BPE tokenizer JSON version {obj.get('version')!r} is not supported (expected {_JSON_VERSION})"
            )
        return cls(obj["tokenizer"])


__all__ = ["BpeTokenizer", "INSTALL_HINT", "TextExtraMissing", "import_tokenizers"]
