"""A training run's data: data specs (a built-in task, TSV, text or labelled files), reading them into
pairs, the tokenizer learned from them, fitting the pairs to a model's max_len, and the model config
the data imply. `fit` (runs.py) and settings files (config_file.py) build on these.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from .config import TransformerConfig
from .data import (
    TASKS,
    CharTokenizer,
    DataError,
    Tokenizer,
    TokenizerPair,
    encode_pairs,
    fit_to_length,
    length_problem,
    make_task_data,
    read_lines,
    read_tsv,
    task_alphabet,
    tsv_line_numbers,
)
from .data.batching import encode_pair, round_up
from .errors import ConfigError

# The model `ft train` and `fit` build when not told otherwise: small enough to train on a laptop's
# CPU in minutes, large enough to learn every built-in task (TransformerConfig's own defaults are
# the paper's base model).
MODEL_DEFAULTS = {
    "d_model": 128,
    "n_heads": 4,
    "d_ff": 512,
    "n_encoder_layers": 2,
    "n_decoder_layers": 2,
    "drop_rate": 0.1,
}
# Fields that follow from the data: the vocabulary and the longest sequence.
DATA_FIELDS = ("src_vocab_size", "tgt_vocab_size", "max_len", "pad_id")
TASK_DATA_DEFAULTS = {"n_train": 50_000, "n_valid": 500, "min_len": 1, "max_len": 12}
TOKENIZERS = ("char", "bpe")


def tokenizer_spec(kind: str = "char", vocab_size: int | None = None, joint: bool = False) -> dict:
    """How to build a run's tokenizer: {"kind": "char"} (one id per character, both sides sharing
    them), or {"kind": "bpe", "vocab_size", "joint"}: byte-pair encoding learned from the training
    pairs with at most vocab_size ids, one vocabulary for sources and targets (joint) or one each."""
    if kind not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZERS)}")
    if kind == "char":
        if vocab_size is not None:
            raise ConfigError(
                "the char tokenizer's vocabulary is the data's characters; --vocab-size is for --tokenizer bpe"
            )
        return {"kind": "char"}
    from .data.bpe import import_tokenizers

    import_tokenizers()  # a missing extra is said before any data is read
    if vocab_size is None or vocab_size < 1:
        raise ConfigError(f"--tokenizer bpe needs a positive --vocab-size (e.g. 1000), got {vocab_size}")
    return {"kind": "bpe", "vocab_size": vocab_size, "joint": bool(joint)}


def task_data(task: str, *, seed: int = 0, tokenizer: dict | None = None, **sizes) -> dict:
    """The data spec of a built-in task: {"kind": "task", "task", "n_train", "n_valid", "min_len",
    "max_len", "seed"} and "tokenizer" (a `tokenizer_spec`) where given; sizes default to
    TASK_DATA_DEFAULTS (the CLI's)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}: choose one of {sorted(TASKS)}")
    unknown = set(sizes) - set(TASK_DATA_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown task data options {sorted(unknown)}: choose from {sorted(TASK_DATA_DEFAULTS)}")
    return {"kind": "task", "task": task, **TASK_DATA_DEFAULTS, **sizes, "seed": seed, **_tokenizer_entry(tokenizer)}


def tsv_data(
    train: str | os.PathLike,
    valid: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    tokenizer: dict | None = None,
    max_len: int | None = None,
    truncate_long: bool = False,
) -> dict:
    """The data spec of TSV files; without `valid`, a deterministic 5% of `train` is held out.

    tokenizer: a `tokenizer_spec` (default: characters).

    max_len: the model's longest sequence in tokens (TransformerConfig.max_len; default: the data's
    longest): training pairs whose source, or bos + target, is longer are dropped, or with
    `truncate_long` cut to fit, and counted (see `fit_data`); so are the pairs held out of `train`;
    a longer line in `valid` is an error naming it (held-out data is never cut)."""
    spec = {
        "kind": "tsv",
        "train": str(train),
        "valid": str(valid) if valid else None,
        "seed": seed,
        **_tokenizer_entry(tokenizer),
    }
    if max_len is not None:
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2:
            raise ConfigError(f"max_len must be an integer of at least 2 (a token and eos), got {max_len!r}")
        spec.update(max_len=max_len, truncate_long=bool(truncate_long))
    elif truncate_long:
        raise ConfigError("truncate_long cuts pairs longer than max_len: give max_len (--max-len) too")
    return spec


def text_data(
    train: str | os.PathLike, valid: str | os.PathLike | None = None, *, seed: int = 0, tokenizer: dict | None = None
) -> dict:
    """The data spec of plain text for a language model (arch "decoder"): one document per line
    (blank lines skipped); without `valid`, a deterministic 5% of the documents is held out."""
    return {
        "kind": "text",
        "train": str(train),
        "valid": str(valid) if valid else None,
        "seed": seed,
        **_tokenizer_entry(tokenizer),
    }


def labelled_data(
    train: str | os.PathLike, valid: str | os.PathLike | None = None, *, seed: int = 0, tokenizer: dict | None = None
) -> dict:
    """The data spec of `text<TAB>label` files for a classifier (arch "encoder"); without `valid`, a
    deterministic 5% of `train` is held out. The classes are the training file's labels, sorted."""
    return {
        "kind": "labelled",
        "train": str(train),
        "valid": str(valid) if valid else None,
        "seed": seed,
        **_tokenizer_entry(tokenizer),
    }


# The data kind each model family reads from files (in memory: documents, or (text, label) pairs).
FILE_KINDS = {"text": "decoder", "labelled": "encoder", "tsv": "encoder_decoder", "task": "encoder_decoder"}


def _tokenizer_entry(tokenizer: dict | None) -> dict:
    # Left out for characters unless asked for, so a spec reads as it did before tokenizers had kinds.
    return {} if tokenizer is None else {"tokenizer": tokenizer_spec(**tokenizer)}


def spec_max_len(spec: dict) -> int | None:
    """The model max_len a data spec asks for: a TSV spec's max_len (a task's max_len sizes its strings)."""
    return spec.get("max_len") if spec["kind"] == "tsv" else None


def check_held_out_lengths(pairs, tokenizer: Tokenizer, max_len: int, path) -> None:
    """A DataError naming the file and line of each pair of `pairs` (read_tsv(path), or its first
    len(pairs)) that does not fit max_len: held-out data is never silently cut."""
    problems = [
        (i, problem)
        for i, (source, target) in enumerate(pairs)
        if (problem := length_problem(encode_pair(source, target, tokenizer), max_len)) is not None
    ]
    if problems:
        lines = tsv_line_numbers(path)
        shown = "; ".join(f"line {lines[i]}: {problem}" for i, problem in problems[:5])
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise DataError(
            f"{path}: {len(problems)} line(s) longer than this model reads (max_len={max_len} tokens): "
            f"{shown}{more}. Held-out data is never cut: shorten or remove those lines, or train with "
            "a larger --max-len"
        )


def fit_data(
    spec: dict, tokenizer: Tokenizer, max_len: int, train_pairs, valid_pairs
) -> tuple[list, list, dict | None]:
    """(training examples, held-out pairs, report) for a model of max_len.

    Without a max_len in the spec the model fits all the data (an over-long pair is an error, as in
    encode_pairs) and the report is None. With one, over-long training pairs are dropped (or cut:
    truncate_long), over-long pairs held out of the training file are dropped, and a `valid` file's
    over-long line is an error; the report counts them."""
    if spec_max_len(spec) is None:
        return encode_pairs(train_pairs, tokenizer, max_len), valid_pairs, None
    truncate = spec.get("truncate_long", False)
    examples, n_long = fit_to_length(encode_pairs(train_pairs, tokenizer, None), max_len, truncate)
    kept_valid = fit_held_out(spec, tokenizer, max_len, valid_pairs)
    if not examples:
        raise DataError(
            f"every training pair of {spec['train']} is longer than max_len={max_len} tokens; raise --max-len"
        )
    return (
        examples,
        kept_valid,
        {
            "max_len": max_len,
            "n_train": len(examples),
            "truncated" if truncate else "dropped": n_long,
            "held_out_dropped": len(valid_pairs) - len(kept_valid),
        },
    )


def fit_held_out(spec: dict, tokenizer: Tokenizer, max_len: int, valid_pairs) -> list:
    """The held-out pairs of a run with a max_len (fit_data): all of a `valid` file's, each checked
    (an over-long line is an error naming it), or those held out of the training file that fit."""
    if spec_max_len(spec) is None:
        return valid_pairs
    if spec.get("valid"):
        check_held_out_lengths(valid_pairs, tokenizer, max_len, spec["valid"])
        return valid_pairs
    return [
        (source, target)
        for source, target in valid_pairs
        if length_problem(encode_pair(source, target, tokenizer), max_len) is None
    ]


def describe_data_report(report: dict) -> str:
    """One line on what fit_data did, for the log."""
    n_long = report.get("truncated", report.get("dropped"))
    line = (
        f"max_len {report['max_len']}: {'truncated' if 'truncated' in report else 'dropped'} {n_long} of "
        f"{report['n_train'] + (0 if 'truncated' in report else n_long)} training pairs longer than that"
    )
    if report["held_out_dropped"]:
        line += f"; dropped {report['held_out_dropped']} held-out pairs longer than that"
    return line


def _read_documents(path) -> list[tuple[str, str]]:
    """A text file's non-blank lines as ("", document) pairs: documents are targets with no source."""
    documents = [("", line) for line in read_lines(path) if line.strip()]
    if not documents:
        raise DataError(f"{path} holds no text (every line is blank): give one document per line")
    return documents


def load_pairs(spec: dict) -> tuple[list, list]:
    """(train pairs, held-out pairs) from a data spec: a built-in task, TSV files, text files (pairs
    ("", document)) or labelled files (pairs (text, label))."""
    if spec["kind"] == "task":
        return make_task_data(
            spec["task"], spec["n_train"], spec["n_valid"], spec["min_len"], spec["max_len"], spec["seed"]
        )
    if spec["kind"] not in ("tsv", "text", "labelled"):
        raise DataError(f"this run's data ({spec['kind']!r}) was given in memory; pass the pairs again")
    read = _read_documents if spec["kind"] == "text" else read_tsv
    train = read(spec["train"])
    if spec.get("valid"):
        valid = read(spec["valid"])
    else:  # hold out a deterministic 5% whose inputs (a source, a document, a text) never occur in training
        which = 1 if spec["kind"] == "text" else 0
        order = np.random.default_rng(spec["seed"]).permutation(len(train))
        n_valid = max(1, len(train) // 20) if len(train) > 1 else 0
        if not n_valid:
            print(
                f"warning: {spec['train']} has a single pair, too few to hold one out: there is no held-out set "
                "(no evaluations, no best checkpoint); pass --valid FILE to give one",
                file=sys.stderr,
            )
        valid = [train[i] for i in order[:n_valid]]
        held_out = {pair[which] for pair in valid}
        train = [train[i] for i in order[n_valid:] if train[i][which] not in held_out]
        if not train:
            raise DataError(f"{spec['train']} has too few distinct examples to hold some out; pass --valid")
    return train, valid


def tokenizer_for(spec: dict, train, valid) -> Tokenizer:
    """The tokenizer of the spec's "tokenizer" entry (default: characters) for these pairs.

    Characters: a task's alphabet, or every character of the pairs. BPE: learned from the training
    pairs; every character of the held-out pairs (and of a task's alphabet) gets an id too, so, as
    with characters, none is unknown."""
    options: dict[str, Any] = spec.get("tokenizer") or {"kind": "char"}
    alphabet = [task_alphabet(spec["task"])] if spec["kind"] in ("task",) else []
    if spec["kind"] in ("text", "labelled", "documents", "labelled_pairs"):  # one vocabulary, for the texts alone
        which = 1 if spec["kind"] in ("text", "documents") else 0
        texts, extra = [pair[which] for pair in train], [pair[which] for pair in valid]
        if options["kind"] == "char":
            return CharTokenizer.from_texts(texts + extra)
        from .data.bpe import BpeTokenizer

        return BpeTokenizer.train(texts, options["vocab_size"], extra, "text")
    if options["kind"] == "char":
        return CharTokenizer.from_texts(alphabet or [text for pair in train + valid for text in pair])
    from .data.bpe import BpeTokenizer

    size = options["vocab_size"]
    if options["joint"]:
        return BpeTokenizer.train(
            [text for pair in train for text in pair],
            size,
            alphabet + [text for pair in valid for text in pair],
            "source and target",
        )
    return TokenizerPair(
        BpeTokenizer.train([s for s, _ in train], size, alphabet + [s for s, _ in valid], "source"),
        BpeTokenizer.train([t for _, t in train], size, alphabet + [t for _, t in valid], "target"),
    )


def model_config(
    tokenizer: Tokenizer, pairs, model: dict | TransformerConfig | None = None, max_len: int | None = None
) -> TransformerConfig:
    """The TransformerConfig for data: vocabulary sizes, pad id and max_len (the longest source or
    target + end-of-sequence in tokens, rounded up to 8; or `max_len` where given, which the data is
    then fitted to: fit_data) from the tokenizer and pairs, the rest from `model` (a dict of
    TransformerConfig fields over MODEL_DEFAULTS, or a whole config, checked against the data)."""
    longest = max(max(len(tokenizer.source.encode(s)), len(tokenizer.target.encode(t)) + 1) for s, t in pairs)
    derived = {
        "src_vocab_size": tokenizer.source.vocab_size,
        "tgt_vocab_size": tokenizer.target.vocab_size,
        "max_len": round_up(longest + 1, 8) if max_len is None else max_len,
        "pad_id": tokenizer.pad_id,
    }
    if isinstance(model, TransformerConfig):
        for name in ("src_vocab_size", "tgt_vocab_size", "pad_id"):
            if getattr(model, name) != derived[name]:
                raise ConfigError(
                    f"the model's {name} is {getattr(model, name)} but the data's tokenizer needs "
                    f"{derived[name]}; pass a dict of the other fields and let fit fill these in"
                )
        if max_len is not None and model.max_len != max_len:
            raise ConfigError(
                f"the model's max_len ({model.max_len}) differs from the data's max_len ({max_len}); give one of them"
            )
        if max_len is None and model.max_len < longest:
            raise ConfigError(
                f"the model's max_len ({model.max_len}) is shorter than the data's longest sequence ({longest} tokens)"
            )
        return model
    fields = dict(model or {})
    given = sorted(set(fields) & set(DATA_FIELDS))
    if given:
        raise ConfigError(f"{given} follow from the data; leave them out (or pass a whole TransformerConfig)")
    return TransformerConfig.from_dict({**MODEL_DEFAULTS, **fields, **derived})
