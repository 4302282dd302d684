"""Tokenizers: one interface for characters (`CharTokenizer`) and subwords (`bpe.BpeTokenizer`).

Every tokenizer has pad_id, bos_id, eos_id, unk_id (0, 1, 2, 3, the ids the model and the decoders
use), `vocab_size`, `encode(text) -> ids` (no special tokens added), `pieces(text)` (the text each of
those ids stands for), `decode(ids) -> text` (up to the first eos; pad and bos skipped; unk
written as U+FFFD), `token_text(id)`, `unknown_symbols(texts)`,
`describe()` and `to_json()`; `saved_tokenizer.tokenizer_from_json` reads back any of them. `source` and `target`
are the tokenizers of each side: the tokenizer itself where the two sides share a vocabulary, the
two halves of a `TokenizerPair` where they do not. Code that encodes a source or decodes a target
goes through `.source` / `.target`, so it works with either. `Vocabulary` is what one side offers;
`special_id(tokenizer, "pad_id")` is a special id, or a ConfigError where a Hugging Face model's
tokenizer has none (its ids may be None).

A character-level tokenizer: one id per character, four special ids first.

Contract:
- ids 0, 1, 2, 3 are the special tokens pad, bos, eos and unk, on every `CharTokenizer`;
- the characters follow in sorted (code point) order, so the same set of characters always gives
  the same ids, whatever order the texts that built it came in;
- `encode` maps a character outside the vocabulary to the unk id and adds no special tokens;
  `unknown_symbols` lists the characters it would map so, for callers that refuse them;
- `decode` stops at the first eos, skips pad and bos, and writes unk as U+FFFD;
- `to_json` / `from_json` round-trip exactly, so a checkpoint can carry its vocabulary;
- two tokenizers are equal when their characters are equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import ConfigError

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # names, in id order; never produced by `decode`
UNK_CHAR = "\N{REPLACEMENT CHARACTER}"

_JSON_KIND = "char"
_JSON_VERSION = 1


class Vocabulary(Protocol):
    """One side's vocabulary (a CharTokenizer, BpeTokenizer or HuggingFaceTokenizer, or either half
    of a TokenizerPair): what encoding sources and decoding targets need of it."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def pieces(self, text: str) -> list[str]: ...

    def unknown_symbols(self, texts: Iterable[str]) -> list[str]: ...

    def describe(self, limit: int = 40) -> str: ...

    def to_json(self) -> str: ...


class Tokenizer(Protocol):
    """What training, prediction and checkpoints need of a tokenizer (CharTokenizer, BpeTokenizer or
    TokenizerPair): the special ids, each side's vocabulary, a description and the JSON."""

    @property
    def pad_id(self) -> int | None: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def source(self) -> Vocabulary: ...

    @property
    def target(self) -> Vocabulary: ...

    def describe(self, limit: int = 40) -> str: ...

    def to_json(self) -> str: ...


def special_id(tokenizer: Tokenizer, name: str) -> int:
    """The tokenizer's special id `name` ("pad_id", "bos_id" or "eos_id"). Every tokenizer this project
    builds has all three; a Hugging Face model's may lack some (GPT-2 has no pad), and then a task
    that needs the id is a ConfigError naming it."""
    value = getattr(tokenizer, name)
    if value is None:
        raise ConfigError(
            f"this tokenizer has no {name.removesuffix('_id')} token ({name} None), which this needs; "
            "use a tokenizer that has one (ft generate continues a text without a pad token)"
        )
    return value


class OneVocabulary:
    """A tokenizer whose source and target sides are itself: one vocabulary for both."""

    @property
    def source(self):
        return self

    @property
    def target(self):
        return self


@dataclass(frozen=True)
class CharTokenizer(OneVocabulary):
    """A vocabulary of single characters, in sorted order, after the four special tokens."""

    chars: tuple[str, ...]
    _ids: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        chars = tuple(self.chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer characters must be single-character strings, got {c!r}")
        if list(chars) != sorted(set(chars)):
            raise ValueError(
                "CharTokenizer characters must be distinct and sorted; build one with CharTokenizer.from_texts"
            )
        object.__setattr__(self, "chars", chars)
        # The lookup is derived from `chars`, so it is left out of equality, hashing and repr.
        object.__setattr__(self, "_ids", {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)})

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The tokenizer whose characters are every character that occurs in `texts`."""
        if isinstance(texts, str):
            texts = [texts]  # a lone string is one text, not an iterable of one-character texts
        return cls(tuple(sorted({c for text in texts for c in text})))

    kind = _JSON_KIND
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def token_text(self, token_id: int) -> str:
        """The text of one id: its character, or the special token's name."""
        if token_id < len(SPECIAL_TOKENS):
            return SPECIAL_TOKENS[token_id]
        return self.chars[token_id - len(SPECIAL_TOKENS)]

    @property
    def vocab_size(self) -> int:
        """The number of ids: the special tokens plus the characters."""
        return len(SPECIAL_TOKENS) + len(self.chars)

    def encode(self, text: str) -> list[int]:
        """The id of each character of `text` (unk for characters outside the vocabulary)."""
        ids = self._ids
        return [ids.get(c, UNK_ID) for c in text]

    def pieces(self, text: str) -> list[str]:
        """The part of `text` that each id of `encode(text)` stands for: its characters."""
        return list(text)

    def unknown_symbols(self, texts: Iterable[str]) -> list[str]:
        """The characters of `texts` outside the vocabulary (those `encode` maps to unk), each once,
        in sorted order."""
        if isinstance(texts, str):
            texts = [texts]
        ids = self._ids
        return sorted({c for text in texts for c in text if c not in ids})

    def describe(self, limit: int = 40) -> str:
        """The characters, short and readable: runs of three or more consecutive code points as
        ranges ("a-z"), spaces, controls and the separators , - ' as Python literals; at most
        `limit` items, then a count."""
        items: list[str] = []
        chars = self.chars
        i = 0
        while i < len(chars):
            j = i
            while j + 1 < len(chars) and ord(chars[j + 1]) == ord(chars[j]) + 1:
                j += 1
            if j - i >= 2:
                items.append(f"{_show(chars[i])}-{_show(chars[j])}")
            else:
                items.extend(_show(c) for c in chars[i : j + 1])
            i = j + 1
        if not items:
            return "no characters"
        if len(items) > limit:
            return ", ".join(items[:limit]) + f", ... ({len(chars)} characters in all)"
        return ", ".join(items)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` up to the first eos; pad and bos are skipped, unk becomes U+FFFD."""
        return decode_ids(ids, self.token_text, self.vocab_size)

    def to_json(self) -> str:
        """The vocabulary as a JSON string that `from_json` reads back."""
        return json.dumps({"kind": _JSON_KIND, "version": _JSON_VERSION, "chars": list(self.chars)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """The tokenizer that `to_json` wrote."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"tokenizer JSON is not valid JSON: {err}") from err
        if not isinstance(obj, dict) or obj.get("kind") != _JSON_KIND:
            raise ValueError(f"tokenizer JSON must be an object with kind {_JSON_KIND!r}, got {text[:80]!r}")
        if obj.get("version") != _JSON_VERSION:
            version = obj.get("version")
            raise ValueError(f"tokenizer JSON version {version!r} is not supported (expected {_JSON_VERSION})")
        chars = obj.get("chars")
        if not isinstance(chars, list):
            raise ValueError("tokenizer JSON must have a list of characters under 'chars'")
        return cls(tuple(chars))


def decode_ids(ids: Iterable[int], token_text: Callable[[int], str], vocab_size: int) -> str:
    """The text of `ids` up to the first eos: pad and bos skipped, unk written as U+FFFD, every other
    id as `token_text(id)`; an id outside [0, vocab_size) is a ValueError."""
    out = []
    for raw in ids:
        i = int(raw)
        if i == EOS_ID:
            break
        if i in (PAD_ID, BOS_ID):
            continue
        if i == UNK_ID:
            out.append(UNK_CHAR)
        elif len(SPECIAL_TOKENS) <= i < vocab_size:
            out.append(token_text(i))
        else:
            raise ValueError(f"token id {i} is outside this tokenizer's vocabulary of {vocab_size} ids")
    return "".join(out)


@dataclass(frozen=True)
class TokenizerPair:
    """Separate vocabularies: `source` encodes the sources, `target` the targets (and decodes outputs).

    Both keep the special ids 0-3, so pad, bos and eos mean the same on each side."""

    source: Vocabulary
    target: Vocabulary
    kind = "pair"
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def describe(self, limit: int = 40) -> str:
        """Both sides' vocabularies, each as its tokenizer describes it."""
        return f"source: {self.source.describe(limit)}; target: {self.target.describe(limit)}"

    def to_json(self) -> str:
        """Both tokenizers as one JSON string that `tokenizer_from_json` reads back."""
        return json.dumps(
            {
                "kind": self.kind,
                "version": _JSON_VERSION,
                "source": self.source.to_json(),
                "target": self.target.to_json(),
            },
            ensure_ascii=False,
        )


def _show(c: str) -> str:
    return c if c.isprintable() and not c.isspace() and c not in ",-'" else repr(c)
