"""From string pairs to padded NumPy batches, in an order a resumed run can reproduce.

Contract:
- `encode_pairs` turns (source, target) strings into `EncodedPair(src, tgt)`: `src` is the source's
  ids (from `tokenizer.source`), `tgt` is `[bos] + target ids + [eos]`. The decoder reads `tgt[:-1]` (`[bos] + target`) and is
  trained to predict `tgt[1:]` (`target + [eos]`). An example whose source, or whose decoder
  sequence (target + 1), is longer than `max_len` is an error, never silently truncated; so is an
  empty source (the encoder would have nothing to attend to).
- `make_batch` gives {"src": (B, S), "tgt_in": (B, T), "tgt_out": (B, T)}, int32 NumPy arrays padded
  with `pad_id` on the right to the longest in the batch, rounded up to `pad_to_multiple` (so that
  JAX compiles one program per length bucket rather than per length). `tgt_out[:, :-1]` equals
  `tgt_in[:, 1:]` wherever both are tokens.
- `batch_iterator` is infinite: the examples, reshuffled each epoch, are read as one stream and cut
  into batches of exactly `batch_size` (a batch may span two epochs; nothing is dropped). Epoch e's
  order is a permutation drawn from (seed, e) alone, so batch k is a pure function of
  (examples, batch_size, seed, k): `batch_iterator(..., start_step=k)` yields the same batches as a
  fresh iterator after k batches, without building the k skipped ones.
- With many processes (`process_index`, `process_count`), each builds only its contiguous share of
  batch k's rows (`process_batch`), padded to the whole global batch's lengths (computed from the
  examples' lengths alone), so every process's arrays have the same shape and the processes'
  slices, concatenated in process order, are the global batch.
- `token_batch_plans` (`--max-tokens`) groups examples of similar length instead: an example's size
  is max(source length, decoder length); it falls in the first of `bucket_lengths(max_len)` at
  least that long (multiples of 8 to 64, then four steps per doubling), and a batch of bucket
  length L has `token_rows(max_tokens, L)` rows (max_tokens // L rounded down to a multiple of 8,
  or a power of two below 8), its source and target both padded to L. Each epoch permutes every
  bucket's examples and cuts them into full batches; the few left over join the next longer
  bucket, and those of the longest end in one last batch filled up with rows that have no targets
  (index -1: a copy of the batch's first example whose `tgt_out` is all pad). The epoch's batches
  are then shuffled. The number of batches per epoch depends only on the lengths, so batch k is a
  pure function of (examples, max_tokens, max_len, seed, k), and the shapes are one per bucket
  used: JAX compiles a handful of programs, not one per batch.
- A `BatchPlan` (the example indices of one global batch and its padded lengths) is what both
  orders produce; `plan_batch` builds a process's rows of it and `plan_counts` its token counts.
- `iterate_batches` is one pass in the given order, the last batch possibly smaller, or filled up
  with rows that have no targets (`fill_last`): for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from .tokenizer import PAD_ID, Tokenizer, special_id

Batch = dict[str, np.ndarray]
_MAX_REPORTED = 5


class EncodedPair(NamedTuple):
    """One example as ids: `src` the source, `tgt` the target between bos and eos."""

    src: tuple[int, ...]
    tgt: tuple[int, ...]


def _shorten(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def length_problem(example: EncodedPair, max_len: int | None) -> str | None:
    """Why `example` does not fit a model of `max_len` (its source, or bos + target, is longer), or None."""
    if not example.src:
        return "empty source"
    if max_len is not None and len(example.src) > max_len:
        return f"source has {len(example.src)} tokens, more than max_len={max_len}"
    if max_len is not None and len(example.tgt) - 1 > max_len:
        return (
            f"target has {len(example.tgt) - 2} tokens, so the decoder sequence (target + bos/eos) has "
            f"{len(example.tgt) - 1}, more than max_len={max_len}"
        )
    return None


def encode_pair(source: str, target: str, tokenizer: Tokenizer) -> EncodedPair:
    """One pair as ids, `tgt` between bos and eos; no length check."""
    return EncodedPair(
        tuple(tokenizer.source.encode(source)),
        (special_id(tokenizer, "bos_id"), *tokenizer.target.encode(target), special_id(tokenizer, "eos_id")),
    )


def encode_pairs(
    pairs: Sequence[tuple[str, str]],
    tokenizer: Tokenizer,
    max_len: int | None,
    where: Callable[[int], str] | None = None,
) -> list[EncodedPair]:
    """The pairs as ids (see the module docstring); ValueError naming every example too long or empty.

    where(i) names example i in that error (default "example i (source ..., target ...)"), e.g.
    a file and line."""
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be at least 1 (or None for no limit), got {max_len}")
    encoded = [encode_pair(source, target, tokenizer) for source, target in pairs]
    problems = [
        (index, problem)
        for index, example in enumerate(encoded)
        if (problem := length_problem(example, max_len)) is not None
    ]
    if problems:

        def name(index):
            if where is not None:
                return where(index)
            source, target = pairs[index]
            return f"example {index} (source {_shorten(source)}, target {_shorten(target)})"

        shown = "\n".join(f"  {name(index)}: {problem}" for index, problem in problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        raise ValueError(
            f"{len(problems)} example(s) cannot be used (each must fit the model's max_len: shorten or remove "
            f"them, or use a model with a larger max_len):\n{shown}{more}"
        )
    return encoded


def fit_to_length(
    examples: Sequence[EncodedPair], max_len: int, truncate: bool = False
) -> tuple[list[EncodedPair], int]:
    """(the examples that fit max_len, how many did not): those are dropped, or with `truncate` cut
    to fit (the source to max_len ids, the target to max_len - 1 ids and eos; see `length_problem`)."""
    kept, n_long = [], 0
    for example in examples:
        if length_problem(example, max_len) is None:
            kept.append(example)
            continue
        n_long += 1
        if truncate:
            tgt = example.tgt if len(example.tgt) - 1 <= max_len else (*example.tgt[:max_len], example.tgt[-1])
            kept.append(EncodedPair(example.src[:max_len], tgt))
    return kept, n_long


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is at least n."""
    return -(-n // multiple) * multiple


def make_batch(examples: Sequence[EncodedPair], pad_id: int = PAD_ID, pad_to_multiple: int = 1) -> Batch:
    """int32 arrays src (B, S), tgt_in (B, T), tgt_out (B, T), right-padded with `pad_id`."""
    if len(examples) == 0:
        raise ValueError("make_batch needs at least one example")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be at least 1, got {pad_to_multiple}")
    src_len, tgt_len = _padded_lengths(examples, pad_to_multiple)
    return _fill_batch(examples, pad_id, src_len, tgt_len)


def _padded_lengths(
    examples: Sequence[EncodedPair], pad_to_multiple: int, max_len: int | None = None
) -> tuple[int, int]:
    # Rounding up never goes past the model's max_len (which need not be a multiple of 8).
    src_len = round_up(max(len(e.src) for e in examples), pad_to_multiple)
    tgt_len = round_up(max(len(e.tgt) - 1 for e in examples), pad_to_multiple)
    if max_len is None:
        return src_len, tgt_len
    return min(src_len, max_len), min(tgt_len, max_len)


def _fill_batch(examples: Sequence[EncodedPair], pad_id: int, src_len: int, tgt_len: int) -> Batch:
    src = np.full((len(examples), src_len), pad_id, dtype=np.int32)
    tgt_in = np.full((len(examples), tgt_len), pad_id, dtype=np.int32)
    tgt_out = np.full((len(examples), tgt_len), pad_id, dtype=np.int32)
    for row, example in enumerate(examples):
        src[row, : len(example.src)] = example.src
        tgt_in[row, : len(example.tgt) - 1] = example.tgt[:-1]
        tgt_out[row, : len(example.tgt) - 1] = example.tgt[1:]
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


def _check_batching(n_examples: int, batch_size: int, seed: int) -> None:
    if n_examples == 0:
        raise ValueError("no examples to batch")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def epoch_permutation(n_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in `epoch`: a permutation of range(n_examples) from (seed, epoch) alone."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n_examples)


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The example indices of batch number `step` (0-based) of `batch_iterator`."""
    _check_batching(n_examples, batch_size, seed)
    return _batch_indices(n_examples, batch_size, seed, step, lambda epoch: epoch_permutation(n_examples, seed, epoch))


def _batch_indices(n_examples: int, batch_size: int, seed: int, step: int, permutation) -> np.ndarray:
    # Positions step*B .. step*B + B - 1 of the stream epoch 0, epoch 1, ... (each n_examples long).
    positions = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, n_examples)
    indices = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(epochs):
        in_epoch = epochs == epoch
        indices[in_epoch] = permutation(int(epoch))[offsets[in_epoch]]
    return indices


def _check_processes(batch_size: int, process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
    if batch_size % process_count:
        raise ConfigError(f"batch_size {batch_size} does not split evenly over {process_count} processes")


class BatchPlan(NamedTuple):
    """One global training batch before it is built: which examples, and the lengths it is padded to."""

    indices: np.ndarray  # (rows,) example indices; -1 marks a filler row (no targets), only at the end
    src_len: int
    tgt_len: int


def plan_batch(
    examples: Sequence[EncodedPair],
    plan: BatchPlan,
    pad_id: int = PAD_ID,
    process_index: int = 0,
    process_count: int = 1,
) -> Batch:
    """Process `process_index`'s contiguous share of the plan's rows (all of them with one process),
    padded to the plan's lengths. A filler row is a copy of the batch's first example whose
    `tgt_out` is all `pad_id`, so a masked loss counts nothing there."""
    rows = len(plan.indices) // process_count
    mine = plan.indices[process_index * rows : (process_index + 1) * rows]
    first = examples[plan.indices[0]]
    batch = _fill_batch([examples[i] if i >= 0 else first for i in mine], pad_id, plan.src_len, plan.tgt_len)
    batch["tgt_out"][mine < 0] = pad_id
    return batch


def plan_counts(examples: Sequence[EncodedPair], plan: BatchPlan) -> tuple[int, int, int]:
    """(target tokens, source + decoder tokens, source + decoder slots) of the global batch: the
    padding fraction is 1 - tokens / slots (filler rows are all padding)."""
    real = [examples[i] for i in plan.indices if i >= 0]
    targets = sum(len(e.tgt) - 1 for e in real)
    return targets, targets + sum(len(e.src) for e in real), len(plan.indices) * (plan.src_len + plan.tgt_len)


def _local_batch(examples, indices, process_index, process_count, pad_id, pad_to_multiple) -> Batch:
    """This process's contiguous share of the rows `indices`, padded to the lengths of all of them."""
    plan = BatchPlan(indices, *_padded_lengths([examples[i] for i in indices], pad_to_multiple))
    return plan_batch(examples, plan, pad_id, process_index, process_count)


def process_batch(
    examples: Sequence[EncodedPair],
    batch_size: int,
    seed: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
    *,
    pad_id: int = PAD_ID,
    pad_to_multiple: int = 1,
) -> Batch:
    """Process `process_index`'s rows of global batch `step` (batch_size // process_count of them,
    padded to the global batch's lengths); with one process, the whole batch."""
    _check_batching(len(examples), batch_size, seed)
    _check_processes(batch_size, process_index, process_count)
    indices = batch_indices(len(examples), batch_size, seed, step)
    return _local_batch(examples, indices, process_index, process_count, pad_id, pad_to_multiple)


def batch_iterator(
    examples: Sequence[EncodedPair],
    batch_size: int,
    seed: int,
    start_step: int = 0,
    *,
    pad_id: int = PAD_ID,
    pad_to_multiple: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Training batches for step start_step, start_step + 1, ...; batch k depends only on (seed, k).
    With process_count > 1, each is this process's share of the global batch (`process_batch`)."""
    _check_processes(batch_size, process_index, process_count)
    plans = fixed_batch_plans(examples, batch_size, seed, start_step, pad_to_multiple=pad_to_multiple)
    return (plan_batch(examples, plan, pad_id, process_index, process_count) for plan in plans)


def fixed_batch_plans(
    examples: Sequence[EncodedPair],
    batch_size: int,
    seed: int,
    start_step: int = 0,
    *,
    pad_to_multiple: int = 1,
    max_len: int | None = None,
) -> Iterator[BatchPlan]:
    """The plans of `batch_iterator`: batch_size rows each, padded to the longest rounded up to
    pad_to_multiple, but never past max_len."""
    n = len(examples)
    _check_batching(n, batch_size, seed)
    if start_step < 0:
        raise ValueError(f"start_step must be non-negative, got {start_step}")
    return _fixed_plans_from(examples, batch_size, seed, start_step, pad_to_multiple, max_len)


def _fixed_plans_from(examples, batch_size, seed, start_step, pad_to_multiple, max_len) -> Iterator[BatchPlan]:
    n = len(examples)
    cache: dict[int, np.ndarray] = {}  # the permutations in use; a batch spans at most a few epochs

    def permutation(epoch: int) -> np.ndarray:
        if epoch not in cache:
            for old in [e for e in cache if e < epoch]:
                del cache[old]  # later steps never go back to an earlier epoch
            cache[epoch] = epoch_permutation(n, seed, epoch)
        return cache[epoch]

    step = start_step
    while True:
        indices = _batch_indices(n, batch_size, seed, step, permutation)
        yield BatchPlan(indices, *_padded_lengths([examples[i] for i in indices], pad_to_multiple, max_len))
        step += 1


# ---------------------------------------------------------------------------------------------
# Batches of about max_tokens tokens from length buckets (see the module docstring)


def bucket_lengths(max_len: int) -> tuple[int, ...]:
    """The padded lengths of token-budget batches: 8, 16, ..., 64, then four steps per doubling
    (80, 96, 112, 128, 160, ...), below max_len, and max_len itself."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    lengths, length = [], 8
    while length < max_len:
        lengths.append(length)
        length += 8 if length < 64 else 2 ** (length.bit_length() - 3)
    return (*lengths, max_len)


def token_rows(max_tokens: int, length: int) -> int:
    """Rows of a batch of `length` within max_tokens: max_tokens // length rounded down to a multiple
    of 8, or to a power of two below 8 (so that 1, 2, 4 or 8 devices split every batch); 0 if none fits."""
    rows = max_tokens // length
    return rows - rows % 8 if rows >= 8 else (1 << (rows.bit_length() - 1) if rows else 0)


def example_size(example: EncodedPair) -> int:
    """The length an example needs: the longer of its source and its decoder sequence (bos + target)."""
    return max(len(example.src), len(example.tgt) - 1)


class TokenBuckets(NamedTuple):
    """The examples grouped by padded length for a token budget; `epoch_plans` orders one epoch."""

    bucket_of: np.ndarray  # (n_examples,) index into `lengths` of each example's bucket
    lengths: tuple[int, ...]  # the padded length of each bucket that holds examples, ascending
    rows: tuple[int, ...]  # rows of a batch of each bucket
    batches_per_epoch: int

    def epoch_plans(self, seed: int, epoch: int) -> list[BatchPlan]:
        """Epoch `epoch`'s batches in training order, from (seed, epoch) alone."""
        rng = np.random.default_rng([int(seed), int(epoch)])
        plans, carried = [], np.empty(0, dtype=np.int64)
        for bucket, (length, rows) in enumerate(zip(self.lengths, self.rows)):
            pool = np.concatenate([carried, rng.permutation(np.flatnonzero(self.bucket_of == bucket))])
            n_full = len(pool) // rows
            plans += [BatchPlan(pool[k * rows : (k + 1) * rows], length, length) for k in range(n_full)]
            carried = pool[n_full * rows :]  # shorter than the next bucket's length: they join it
        if len(carried):
            filler = np.full(self.rows[-1] - len(carried), -1, dtype=np.int64)
            plans.append(BatchPlan(np.concatenate([carried, filler]), self.lengths[-1], self.lengths[-1]))
        return [plans[i] for i in rng.permutation(len(plans))]

    def check_split(self, count: int, what: str = "devices") -> None:
        """ValueError unless every batch's rows split evenly over `count` devices (or processes)."""
        bad = [(rows, length) for rows, length in zip(self.rows, self.lengths) if rows % count]
        if bad:
            rows, length = bad[-1]
            raise ConfigError(
                f"batches of {length} tokens per row have {rows} rows within --max-tokens, which do not "
                f"split evenly over {count} {what}; raise --max-tokens to at least {count * length}, "
                "or use 1, 2, 4 or 8 of them"
            )


def token_buckets(examples: Sequence[EncodedPair], max_tokens: int, max_len: int) -> TokenBuckets:
    """The buckets of `token_batch_plans`; ValueError if a used bucket's length exceeds max_tokens."""
    if not examples:
        raise ValueError("no examples to batch")
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be at least 1, got {max_tokens}")
    all_lengths = np.asarray(bucket_lengths(max_len))
    sizes = np.fromiter((example_size(e) for e in examples), dtype=np.int64, count=len(examples))
    if sizes.max() > max_len:
        raise ConfigError(f"an example needs {sizes.max()} tokens, more than max_len={max_len}")
    used, bucket_of = np.unique(np.searchsorted(all_lengths, sizes), return_inverse=True)
    lengths = tuple(int(n) for n in all_lengths[used])
    rows = tuple(token_rows(max_tokens, n) for n in lengths)
    if rows[-1] == 0:
        raise ConfigError(
            f"--max-tokens {max_tokens} is less than one row of the longest examples, padded to "
            f"{lengths[-1]} tokens; raise it to at least {lengths[-1]}"
        )
    counts = np.bincount(bucket_of, minlength=len(lengths))
    n_batches, carried = 0, 0
    for count, n_rows in zip(counts, rows):
        n_batches += (carried + count) // n_rows
        carried = (carried + count) % n_rows
    return TokenBuckets(bucket_of.reshape(-1), lengths, rows, n_batches + (carried > 0))


def token_batch_plans(
    examples: Sequence[EncodedPair], max_tokens: int, seed: int, start_step: int = 0, *, max_len: int
) -> Iterator[BatchPlan]:
    """Plans of batches of at most max_tokens padded tokens (rows x length) from length buckets,
    for step start_step, start_step + 1, ...; batch k depends only on (examples, max_tokens, max_len, seed, k)."""
    return _token_plans_from(token_buckets(examples, max_tokens, max_len), seed, start_step)


def _token_plans_from(buckets: TokenBuckets, seed: int, start_step: int) -> Iterator[BatchPlan]:
    _check_batching(len(buckets.bucket_of), 1, seed)
    if start_step < 0:
        raise ValueError(f"start_step must be non-negative, got {start_step}")
    return _token_plans_after(buckets, seed, start_step)


def _token_plans_after(buckets: TokenBuckets, seed: int, start_step: int) -> Iterator[BatchPlan]:
    epoch, offset = divmod(start_step, buckets.batches_per_epoch)
    while True:
        yield from buckets.epoch_plans(seed, epoch)[offset:]
        epoch, offset = epoch + 1, 0


def token_batch_iterator(
    examples: Sequence[EncodedPair],
    max_tokens: int,
    seed: int,
    start_step: int = 0,
    *,
    max_len: int,
    pad_id: int = PAD_ID,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """The batches of `token_batch_plans` (this process's rows of each)."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, process_count), got {process_index} of {process_count}")
    buckets = token_buckets(examples, max_tokens, max_len)
    buckets.check_split(process_count, "processes")
    plans = _token_plans_from(buckets, seed, start_step)
    return (plan_batch(examples, plan, pad_id, process_index, process_count) for plan in plans)


def iterate_batches(
    examples: Sequence[EncodedPair],
    batch_size: int,
    *,
    pad_id: int = PAD_ID,
    pad_to_multiple: int = 1,
    fill_last: bool = False,
) -> Iterator[Batch]:
    """One pass over the examples in order, `batch_size` at a time (the last batch may be smaller).

    With `fill_last`, when there is more than one batch, the last is filled up to `batch_size`
    rows with copies of its first example whose `tgt_out` is all `pad_id`: a masked loss counts
    nothing there. Every batch then has the same number of rows, so JAX compiles one program
    rather than a second one for the remainder (seconds of the first evaluation;
    docs/benchmarks.md, "Timings behind design choices")."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        n_fill = batch_size - len(chunk) if fill_last and len(examples) > batch_size else 0
        batch = make_batch(chunk + [chunk[0]] * n_fill, pad_id, pad_to_multiple)
        batch["tgt_out"][len(chunk) :] = pad_id
        yield batch
