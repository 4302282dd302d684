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
- `iterate_batches` is one pass in the given order, the last batch possibly smaller, or filled up
  with rows that have no targets (`fill_last`): for evaluation.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np

from .tokenizer import PAD_ID, Tokenizer

Batch = dict[str, np.ndarray]
_MAX_REPORTED = 5


class EncodedPair(NamedTuple):
    """One example as ids: `src` the source, `tgt` the target between bos and eos."""

    src: tuple[int, ...]
    tgt: tuple[int, ...]


def _shorten(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def encode_pairs(pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, max_len: int | None) -> list[EncodedPair]:
    """The pairs as ids (see the module docstring); ValueError naming every example too long or empty."""
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be at least 1 (or None for no limit), got {max_len}")
    encoded: list[EncodedPair] = []
    problems: list[str] = []
    for index, (source, target) in enumerate(pairs):
        src = tuple(tokenizer.source.encode(source))
        tgt = (tokenizer.bos_id, *tokenizer.target.encode(target), tokenizer.eos_id)
        where = f"example {index} (source {_shorten(source)}, target {_shorten(target)})"
        if not src:
            problems.append(f"{where}: empty source")
        elif max_len is not None and len(src) > max_len:
            problems.append(f"{where}: source has {len(src)} tokens, more than max_len={max_len}")
        elif max_len is not None and len(tgt) - 1 > max_len:
            problems.append(
                f"{where}: target has {len(tgt) - 2} tokens, so the decoder sequence (target + bos/eos) has "
                f"{len(tgt) - 1}, more than max_len={max_len}"
            )
        encoded.append(EncodedPair(src, tgt))
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        raise ValueError(
            f"{len(problems)} example(s) cannot be used (raise max_len, or filter the data):\n{shown}{more}"
        )
    return encoded


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def make_batch(examples: Sequence[EncodedPair], pad_id: int = PAD_ID, pad_to_multiple: int = 1) -> Batch:
    """int32 arrays src (B, S), tgt_in (B, T), tgt_out (B, T), right-padded with `pad_id`."""
    if len(examples) == 0:
        raise ValueError("make_batch needs at least one example")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be at least 1, got {pad_to_multiple}")
    src_len, tgt_len = _padded_lengths(examples, pad_to_multiple)
    return _fill_batch(examples, pad_id, src_len, tgt_len)


def _padded_lengths(examples: Sequence[EncodedPair], pad_to_multiple: int) -> tuple[int, int]:
    return (_round_up(max(len(e.src) for e in examples), pad_to_multiple),
            _round_up(max(len(e.tgt) - 1 for e in examples), pad_to_multiple))


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
        raise ValueError(f"batch_size {batch_size} does not split evenly over {process_count} processes")


def _local_batch(examples, indices, process_index, process_count, pad_id, pad_to_multiple) -> Batch:
    """This process's contiguous share of the rows `indices`, padded to the lengths of all of them."""
    if process_count == 1:
        return make_batch([examples[i] for i in indices], pad_id, pad_to_multiple)
    src_len, tgt_len = _padded_lengths([examples[i] for i in indices], pad_to_multiple)
    rows = len(indices) // process_count
    mine = indices[process_index * rows:(process_index + 1) * rows]
    return _fill_batch([examples[i] for i in mine], pad_id, src_len, tgt_len)


def process_batch(
    examples: Sequence[EncodedPair], batch_size: int, seed: int, step: int, process_index: int = 0,
    process_count: int = 1, *, pad_id: int = PAD_ID, pad_to_multiple: int = 1,
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
    n = len(examples)
    _check_batching(n, batch_size, seed)
    _check_processes(batch_size, process_index, process_count)
    if start_step < 0:
        raise ValueError(f"start_step must be non-negative, got {start_step}")
    return _batches_from(examples, batch_size, seed, start_step, pad_id, pad_to_multiple, process_index,
                         process_count)


def _batches_from(examples, batch_size, seed, start_step, pad_id, pad_to_multiple, process_index=0,
                  process_count=1) -> Iterator[Batch]:
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
        yield _local_batch(examples, indices, process_index, process_count, pad_id, pad_to_multiple)
        step += 1


def iterate_batches(
    examples: Sequence[EncodedPair], batch_size: int, *, pad_id: int = PAD_ID, pad_to_multiple: int = 1,
    fill_last: bool = False,
) -> Iterator[Batch]:
    """One pass over the examples in order, `batch_size` at a time (the last batch may be smaller).

    With `fill_last`, when there is more than one batch, the last is filled up to `batch_size`
    rows with copies of its first example whose `tgt_out` is all `pad_id`: a masked loss counts
    nothing there. Every batch then has the same number of rows, so JAX compiles one program
    rather than a second one for the remainder (seconds of the first evaluation; benchmarks/README.md)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        n_fill = batch_size - len(chunk) if fill_last and len(examples) > batch_size else 0
        batch = make_batch(chunk + [chunk[0]] * n_fill, pad_id, pad_to_multiple)
        batch["tgt_out"][len(chunk) :] = pad_id
        yield batch
