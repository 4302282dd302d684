"""Data for sequence-to-sequence training: tokenizers (characters; BPE in `bpe`, the [text] extra), built-in character tasks, TSV files,
and padded NumPy batches in a reproducible order.

Everything here is plain Python and NumPy: batches are int32 NumPy arrays, which the training loop
moves to the chosen backend. Nothing here holds global mutable state.

Typical use:
    train, valid = make_task_data("reverse", n_train=10_000, n_valid=500, min_len=3, max_len=12, seed=0)
    tokenizer = CharTokenizer.from_texts([task_alphabet("reverse")])
    examples = encode_pairs(train, tokenizer, max_len=16)
    batches = batch_iterator(examples, batch_size=64, seed=0, start_step=step)
    # or batches of about 4096 padded tokens from examples of similar length:
    batches = token_batch_iterator(examples, max_tokens=4096, seed=0, start_step=step, max_len=16)
"""

from .batching import (
    Batch,
    BatchPlan,
    EncodedPair,
    TokenBuckets,
    batch_indices,
    batch_iterator,
    bucket_lengths,
    encode_pairs,
    epoch_permutation,
    fit_to_length,
    fixed_batch_plans,
    iterate_batches,
    length_problem,
    make_batch,
    plan_batch,
    plan_counts,
    process_batch,
    token_batch_iterator,
    token_batch_plans,
    token_buckets,
    token_rows,
)
from .saved_tokenizer import tokenizer_from_json
from .tasks import DEFAULT_ALPHABET, TASKS, Task, get_task, make_task_data, task_alphabet
from .tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    CharTokenizer,
    Tokenizer,
    TokenizerPair,
    Vocabulary,
    special_id,
)
from .tsv import DataError, read_lines, read_tsv, tsv_line_numbers, write_tsv

__all__ = [
    "BOS_ID",
    "Batch",
    "BatchPlan",
    "CharTokenizer",
    "DEFAULT_ALPHABET",
    "DataError",
    "EOS_ID",
    "EncodedPair",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "TASKS",
    "TokenBuckets",
    "Task",
    "Tokenizer",
    "TokenizerPair",
    "UNK_ID",
    "Vocabulary",
    "batch_indices",
    "batch_iterator",
    "bucket_lengths",
    "encode_pairs",
    "epoch_permutation",
    "fit_to_length",
    "fixed_batch_plans",
    "get_task",
    "iterate_batches",
    "length_problem",
    "make_batch",
    "make_task_data",
    "plan_batch",
    "plan_counts",
    "process_batch",
    "read_lines",
    "read_tsv",
    "special_id",
    "task_alphabet",
    "token_batch_iterator",
    "token_batch_plans",
    "token_buckets",
    "token_rows",
    "tokenizer_from_json",
    "tsv_line_numbers",
    "write_tsv",
]
