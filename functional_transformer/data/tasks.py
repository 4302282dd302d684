"""Built-in character tasks: synthetic (source, target) string pairs to train and test a Transformer on.

Tasks (`TASKS`, by name):
- identity:   "apple"  -> "apple"
- reverse:    "apple"  -> "elppa"
- sort:       "apple"  -> "aelpp" (characters in code point order)
- copy-shift: "apple"  -> "bqqmf" (each letter moved one on, a->b, ..., z->a, and A->B, ..., Z->A;
              other characters are copied unchanged)
- addition:   "12+345" -> "357"   (two decimal operands, no leading zeros; the target is their sum)

Contract of `make_task_data(task, n_train, n_valid, min_len, max_len, seed, alphabet=None)`:
- a source's length is drawn uniformly from [min_len, max_len]; for addition that range is the
  number of digits of each operand, drawn independently, and `alphabet` is not used;
- the same arguments give the same pairs (NumPy's `default_rng(seed)`); another seed gives others;
- the validation sources are drawn first and are distinct; a training source equal to a validation
  source is rejected and redrawn, so no validation source occurs in training (training sources may
  repeat among themselves);
- if the lengths and alphabet cannot supply that many distinct held-out sources, it raises ValueError
  rather than loop.

`task_alphabet(task, alphabet=None)` is every character the task's sources and targets can contain,
the characters to build a `CharTokenizer` from.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ..errors import ConfigError

DEFAULT_ALPHABET = string.ascii_lowercase
DIGITS = string.digits

MAX_ADDITION_DIGITS = 18  # operands are drawn as int64: 10**18 is the largest power of ten below 2**63
_CHUNK = 1024  # sources drawn per call to the generator; part of what fixes the pairs for a seed

Pair = tuple[str, str]


def _shift_letter(c: str) -> str:
    for letters in (string.ascii_lowercase, string.ascii_uppercase):
        i = letters.find(c)
        if i >= 0:
            return letters[(i + 1) % len(letters)]
    return c


def _copy_shift(source: str) -> str:
    return "".join(_shift_letter(c) for c in source)


def _add(source: str) -> str:
    left, right = source.split("+")
    return str(int(left) + int(right))


def _draw_strings(rng: np.random.Generator, count: int, min_len: int, max_len: int, alphabet: str) -> list[str]:
    lengths = rng.integers(min_len, max_len + 1, size=count)
    letters = np.array(list(alphabet))[rng.integers(0, len(alphabet), size=int(lengths.sum()))]
    # One long string cut at the length boundaries: far faster than joining each source alone.
    text = "".join(letters.tolist())
    ends = np.cumsum(lengths).tolist()
    return [text[end - n : end] for end, n in zip(ends, lengths.tolist())]


def _draw_operands(rng: np.random.Generator, count: int, min_digits: int, max_digits: int) -> list[int]:
    n_digits = rng.integers(min_digits, max_digits + 1, size=count)
    # The leading digit is non-zero (for more than one digit), so each operand has exactly n_digits.
    low = np.where(n_digits == 1, 0, 10 ** (n_digits - 1))
    return rng.integers(low, 10**n_digits).tolist()


@dataclass(frozen=True)
class Task:
    """A character task: how to draw a source, and the target a source maps to."""

    name: str
    description: str
    target: Callable[[str], str]
    uses_alphabet: bool  # False where the task fixes its own characters (addition: digits and '+')

    def draw_sources(
        self, rng: np.random.Generator, count: int, min_len: int, max_len: int, alphabet: str
    ) -> list[str]:
        """`count` random sources; lengths (for addition, digits per operand) uniform in [min_len, max_len]."""
        if not self.uses_alphabet:
            left = _draw_operands(rng, count, min_len, max_len)
            right = _draw_operands(rng, count, min_len, max_len)
            return [f"{a}+{b}" for a, b in zip(left, right)]
        return _draw_strings(rng, count, min_len, max_len, alphabet)

    def n_sources(self, min_len: int, max_len: int, alphabet: str) -> int:
        """How many distinct sources the task can draw with these lengths and this alphabet."""
        if not self.uses_alphabet:
            per_operand = sum(10 if d == 1 else 9 * 10 ** (d - 1) for d in range(min_len, max_len + 1))
            return per_operand**2
        return sum(len(alphabet) ** n for n in range(min_len, max_len + 1))

    def alphabet(self, alphabet: str) -> str:
        """Every character this task's sources and targets can contain, sorted."""
        # The alphabet tasks map characters one to one (or permute them), so mapping each
        # character alone finds every character a target can hold.
        if not self.uses_alphabet:
            return "".join(sorted(DIGITS + "+"))
        return "".join(sorted(set(alphabet) | {t for c in alphabet for t in self.target(c)}))


TASKS: Mapping[str, Task] = MappingProxyType(
    {
        "identity": Task("identity", "copy the source", lambda s: s, True),
        "reverse": Task("reverse", "the source backwards", lambda s: s[::-1], True),
        "sort": Task("sort", "the source's characters in sorted order", lambda s: "".join(sorted(s)), True),
        "copy-shift": Task("copy-shift", "each letter moved one on in the alphabet (z -> a)", _copy_shift, True),
        "addition": Task("addition", "the sum of two decimal numbers, '12+345' -> '357'", _add, False),
    }
)


def get_task(name: str) -> Task:
    """The task called `name`; ValueError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}") from None


def _resolve_alphabet(task: Task, alphabet: str | None) -> str:
    if not task.uses_alphabet:
        if alphabet is not None:
            raise ConfigError(f"task {task.name!r} uses the digits 0-9 and takes no alphabet")
        return DIGITS
    if alphabet is None:
        return DEFAULT_ALPHABET
    if not isinstance(alphabet, str) or not alphabet:
        raise ConfigError(f"alphabet must be a non-empty string of characters, got {alphabet!r}")
    if len(set(alphabet)) != len(alphabet):
        raise ConfigError(f"alphabet has repeated characters: {alphabet!r}")
    if any(c in "\t\n\r" for c in alphabet):
        # Tasks' pairs must survive a round trip through a TSV file.
        raise ConfigError("alphabet must not contain tabs or line breaks")
    return alphabet


def task_alphabet(task: str, alphabet: str | None = None) -> str:
    """Every character that `task`'s sources and targets can contain (sorted), for building a tokenizer."""
    resolved = get_task(task)
    return resolved.alphabet(_resolve_alphabet(resolved, alphabet))


def make_task_data(
    task: str,
    n_train: int,
    n_valid: int,
    min_len: int,
    max_len: int,
    seed: int,
    alphabet: str | None = None,
) -> tuple[list[Pair], list[Pair]]:
    """(train_pairs, valid_pairs) of `task`; see the module docstring for the contract."""
    resolved = get_task(task)
    alphabet = _resolve_alphabet(resolved, alphabet)
    for name, value in (("n_train", n_train), ("n_valid", n_valid)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    lengths_are_ints = isinstance(min_len, (int, np.integer)) and isinstance(max_len, (int, np.integer))
    if not (lengths_are_ints and 1 <= min_len <= max_len):
        unit = "digits per operand" if not resolved.uses_alphabet else "length"
        raise ConfigError(
            f"need integers 1 <= min_len <= max_len ({unit}), got min_len={min_len!r}, max_len={max_len!r}"
        )
    if not resolved.uses_alphabet and max_len > MAX_ADDITION_DIGITS:
        raise ConfigError(
            f"task {task!r}: max_len is {max_len} digits per operand; at most {MAX_ADDITION_DIGITS} are supported"
        )

    available = resolved.n_sources(min_len, max_len, alphabet)
    if n_valid > available or (n_valid == available and n_train > 0):
        raise ConfigError(
            f"task {task!r} with lengths [{min_len}, {max_len}] has only {available} distinct sources: too few "
            f"for {n_valid} distinct validation sources plus training sources outside them; widen the lengths "
            f"or the alphabet"
        )

    # One stream of sources, drawn in fixed-size chunks, feeds validation and then training, so the
    # pairs depend only on the arguments (and a larger n_train only appends training pairs).
    stream = _source_stream(resolved, np.random.default_rng(seed), min_len, max_len, alphabet)
    # Rejection sampling can stall when the held-out set nearly exhausts the sources; cap the draws.
    max_draws = 100 * (n_train + n_valid) + 10_000

    valid_sources: dict[str, None] = {}  # an ordered set: draw order is kept, so results are reproducible
    draws = 0
    while len(valid_sources) < n_valid:
        draws += 1
        if draws > max_draws:
            raise ConfigError(_stalled(task, "validation", len(valid_sources), n_valid, draws))
        valid_sources[next(stream)] = None

    train_sources: list[str] = []
    draws = 0
    while len(train_sources) < n_train:
        draws += 1
        if draws > max_draws:
            raise ConfigError(_stalled(task, "training", len(train_sources), n_train, draws))
        source = next(stream)
        if source not in valid_sources:
            train_sources.append(source)

    return _pairs(resolved, train_sources), _pairs(resolved, list(valid_sources))


def _source_stream(task: Task, rng: np.random.Generator, min_len: int, max_len: int, alphabet: str) -> Iterator[str]:
    while True:
        yield from task.draw_sources(rng, _CHUNK, min_len, max_len, alphabet)


def _pairs(task: Task, sources: Sequence[str]) -> list[Pair]:
    return [(source, task.target(source)) for source in sources]


def _stalled(task: str, split: str, got: int, wanted: int, draws: int) -> str:
    return (
        f"task {task!r}: drew only {got} of {wanted} {split} sources in {draws} tries: too few new sources "
        f"remain at these lengths; widen the lengths or the alphabet, or ask for fewer examples"
    )
