"""Training runs from Python: `fit` a model on a task or your own pairs, `load` it back, `predict`.

    import functional_transformer as ft
    result = ft.fit(data="reverse", train_config=ft.TrainConfig(steps=300), out_dir="runs/quick")
    model = ft.load("runs/quick")                  # the best checkpoint of the run folder
    print(ft.predict(model, ["apple", "banana"]))  # greedy; beam_size=4 for beam search

`ft train` is a thin layer over `fit`, so both follow the same rules for a run folder:
- a folder that holds a checkpoint is never overwritten silently: `resume=True` continues it,
  `overwrite=True` starts again (saying what it replaces), anything else is an error;
- one process at a time: `fit` holds an OS file lock on `DIR/.lock` while it runs (released by the
  OS when the process ends, even by SIGKILL, so a crash never leaves the folder locked);
- a resumed run keeps its own settings and schedule: a setting given with `resume=True` that
  differs from the checkpoint's is an error naming it, and training past the planned number of
  steps needs `extend=True` (a finished cosine run then restarts its schedule: warmup and cosine
  decay over the added steps; the "transformer" and "constant" schedules have no end and continue).
Only `log_every`, `eval_every`, `save_every` and `patience` may change on resume: they change what
is logged, evaluated and saved, never the trajectory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import backends
from backends import Backend, with_x64_scope

from . import checkpoint, families, inference, parallel
from .backend_choice import default_backend
from .checkpoint import ModelConfig
from .config import USER_OPTIMIZER, TrainConfig, TransformerConfig
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
from .errors import ConfigError, UserInputError
from .train import (
    Callback,
    Run,
    check_batches_split,
    check_best_by,
    check_optimizer,
    read_records,
    run_loop,
    with_best_by,
)

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
# TrainConfig fields that change what is logged, evaluated and saved, never the trajectory.
OPERATIONAL_FIELDS = ("log_every", "eval_every", "save_every", "patience")
TASK_DATA_DEFAULTS = {"n_train": 50_000, "n_valid": 500, "min_len": 1, "max_len": 12}
TOKENIZERS = ("char", "bpe")


class RunFolderError(UserInputError):
    """A run folder cannot be used as asked: it holds a run, is locked, or conflicts with a resume."""


# ---------------------------------------------------------------------------------------------
# Data


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
    return [pair for pair in valid_pairs if length_problem(encode_pair(*pair, tokenizer), max_len) is None]


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
    options = spec.get("tokenizer") or {"kind": "char"}
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


# ---------------------------------------------------------------------------------------------
# Run folders


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive OS lock on out_dir/.lock, or fail at once naming the process that holds it."""
    import fcntl  # POSIX; the lock dies with its process, so a killed run never leaves it stuck

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFolderError(
                f"{out_dir} is in use by {holder}; wait for it to finish or choose another folder"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def describe_run(out_dir: Path) -> str:
    """One line on the run a folder holds: its step, planned steps and best held-out value (of its best_by)."""
    if not checkpoint.checkpoint_path(out_dir).exists():
        return "only a best checkpoint (best.safetensors; the run was stopped before its last one was saved)"
    try:
        loaded = checkpoint.load(out_dir, backends.get_backend("numpy"))
    except ValueError as err:
        return f"a checkpoint that does not load ({err})"
    line = f"a run at step {loaded.step} of {loaded.train_config.steps}"
    progress = loaded.progress
    best = progress.get("best_value", progress.get("best_exact_match"))  # files without best_value chose by it
    if best is not None:
        best_by = loaded.train_config.best_by or families.DEFAULT_BEST_BY[loaded.arch]
        line += f", best held-out {best_by} {best:.4f} at step {progress['best_step']}"
    return line


def _remove_stale_temp_files(out_dir: Path) -> None:
    # A process killed mid-save leaves its temporary file (the checkpoint itself is untouched, as the
    # save renames into place); under the lock no other process can be writing one.
    for name in checkpoint.FILE_NAMES.values():
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


RUN_FILES = (checkpoint.CHECKPOINT_NAME, checkpoint.BEST_NAME, "metrics.jsonl", "curves.png", "config.toml")
# Held-out examples each evaluation decodes, unless told otherwise (fit's eval_examples).
EVAL_EXAMPLES = 500


def _start_fresh(out_dir: Path, overwrite: bool, verbose: bool) -> None:
    if not checkpoint.checkpoint_path(out_dir).exists() and not checkpoint.checkpoint_path(out_dir, "best").exists():
        return
    what = describe_run(out_dir)
    if not overwrite:
        raise RunFolderError(
            f"{out_dir} already holds {what}. Pass --resume (resume=True) to continue it, "
            f"--overwrite (overwrite=True) to replace it with a new run, or choose another --out"
        )
    if verbose:
        print(f"--overwrite: replacing {out_dir}, which held {what}", file=sys.stderr)
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def resumed_train_config(saved: TrainConfig, changes: dict, step: int, extend: bool) -> TrainConfig:
    """The TrainConfig a resumed run continues with: the saved one, with operational changes, and
    more steps only when extending a finished run. Any other difference is an error naming it."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown TrainConfig fields {sorted(unknown)}")
    for name, value in changes.items():
        if name in (*OPERATIONAL_FIELDS, "steps", "schedule_start") or value == getattr(saved, name):
            continue
        raise RunFolderError(
            f"{name}={value!r} conflicts with the resumed run's {name}={getattr(saved, name)!r}; "
            "a resumed run keeps its settings: leave it out, or start a new run (--overwrite)"
        )
    operational = {name: changes[name] for name in OPERATIONAL_FIELDS if name in changes}
    steps = changes.get("steps", saved.steps)
    if steps == saved.steps:
        return dataclasses.replace(saved, **operational)
    if steps < saved.steps:
        raise RunFolderError(
            f"steps={steps} would cut this run's schedule of {saved.steps} steps short (the learning "
            "rate would change under it); to stop earlier use patience or Ctrl-C"
        )
    if not extend:
        raise RunFolderError(
            f"this run was planned for {saved.steps} steps and its schedule ends there; to train it "
            f"to {steps}, pass --extend (extend=True): a cosine schedule restarts (warmup, then "
            "decay over the added steps), the others continue"
        )
    if step < saved.steps:
        raise RunFolderError(
            f"the run is at step {step} of {saved.steps}: finish it first (--resume without --steps), then extend it"
        )
    start = saved.steps if saved.schedule == "cosine" else saved.schedule_start
    return dataclasses.replace(saved, steps=steps, schedule_start=start, **operational)


def _describe_spec(spec: dict) -> str:
    if spec["kind"] == "task":
        return f"the task {spec['task']!r}"
    if spec["kind"] in ("tsv", "text", "labelled"):
        return f"{spec['train']}" + (f" and {spec['valid']}" if spec.get("valid") else "")
    return f"{spec['n_train']} + {spec['n_valid']} pairs given in memory"


def _check_resumed(kind: str, saved: dict, given: dict) -> None:
    for name, value in given.items():
        if name not in saved:
            raise RunFolderError(
                f"{name}={value!r} does not apply to the resumed run's {kind} ({sorted(saved)}); "
                "a resumed run keeps its settings: leave it out, or start a new run (--overwrite)"
            )
        if saved[name] != value:
            raise RunFolderError(
                f"{name}={value!r} conflicts with the resumed run's {kind} {name}={saved[name]!r}; "
                "a resumed run keeps its settings: leave it out, or start a new run (--overwrite)"
            )


# ---------------------------------------------------------------------------------------------
# fit, load, predict, evaluate


@dataclasses.dataclass
class TrainedModel:
    """What `predict` and `evaluate` need: params with their config and tokenizer."""

    params: dict
    cfg: ModelConfig
    tokenizer: Tokenizer
    train_config: TrainConfig | None = None
    data_spec: dict | None = None
    step: int = 0
    path: Path | None = None
    labels: list[str] | None = None  # a classifier's class names

    @property
    def arch(self) -> str:
        """The model family: "encoder_decoder", "decoder" or "encoder"."""
        return families.arch_of(self.cfg)


@dataclasses.dataclass
class FitResult(TrainedModel):
    """A finished (or stopped) `fit`: the model, its metrics history and how it ended.

    history: every record of the run (metrics.jsonl's, where it has a folder), train and valid;
    stopped: "finished", "interrupted", "callback" or "patience"; best_value: the best held-out value
    of the run's best_by metric, reached at best_step (None without held-out data); best_exact_match:
    the held-out exact match at best_step (the best of the run when best_by is exact_match)."""

    state: dict | None = None
    key: Any = None
    history: list[dict] = dataclasses.field(default_factory=list)
    best_exact_match: float | None = None
    best_value: float | None = None
    best_step: int | None = None
    stopped: str = "finished"
    seconds: float = 0.0
    out_dir: Path | None = None


# In-memory data of each family: its spec kind.
MEMORY_KINDS = {"encoder_decoder": "pairs", "decoder": "documents", "encoder": "labelled_pairs"}


def _as_data_spec(data, seed: int, arch: str | None) -> tuple[dict, tuple | None]:
    """(spec, in-memory pairs or None) from a task name, a spec dict or (train, valid) examples:
    (source, target) pairs, documents (strings, for arch "decoder") or (text, label) pairs (arch "encoder")."""
    if isinstance(data, str):
        return task_data(data, seed=seed), None
    if isinstance(data, dict):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        train, valid = list(data[0]), list(data[1])
        if not train:
            raise DataError("no training examples were given")
        if arch == "decoder" or (arch is None and isinstance(train[0], str)):
            train, valid, arch = [("", d) for d in train], [("", d) for d in valid], "decoder"
        kind = MEMORY_KINDS[arch or "encoder_decoder"]
        return {"kind": kind, "n_train": len(train), "n_valid": len(valid), "seed": seed}, (train, valid)
    raise TypeError(
        "data must be a task name, a data spec (ft.task_data, ft.tsv_data, ft.text_data, ft.labelled_data) "
        "or (train, valid) examples"
    )


def _arch_for(model, spec: dict, arch: str | None) -> str:
    """The model family: the config's, else `arch`, else the data's; a mismatch is an error."""
    data_arch = {**FILE_KINDS, **{kind: name for name, kind in MEMORY_KINDS.items()}}[spec["kind"]]
    if model is not None and not isinstance(model, dict):
        config_arch = families.arch_of(model)
        if arch is not None and arch != config_arch:
            raise ConfigError(f"arch={arch!r} but the model is a {type(model).__name__} ({config_arch})")
        arch = config_arch
    arch = arch or data_arch
    if arch not in families.ARCHS:
        raise ConfigError(f"unknown arch {arch!r}: choose one of {', '.join(families.ARCHS)}")
    if arch != data_arch:
        wanted = {
            "encoder_decoder": "a task or source<TAB>target pairs (ft.task_data, ft.tsv_data)",
            "decoder": "plain text, one document per line (ft.text_data)",
            "encoder": "text<TAB>label lines (ft.labelled_data)",
        }[arch]
        raise ConfigError(f"the {arch} model trains on {wanted}; the data given is of kind {spec['kind']!r}")
    return arch


@with_x64_scope
def fit(
    model: dict | TransformerConfig | None = None,
    train_config: TrainConfig | dict | None = None,
    data: str | dict | tuple | None = None,
    *,
    arch: str | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    extend: bool = False,
    callbacks: Sequence[Callback] = (),
    backend: Backend | None = None,
    progress: bool = True,
    verbose: bool = True,
    eval_examples: int | None = None,
    devices=1,
    shard_params: bool = False,
) -> FitResult:
    """Train a Transformer and return the result (see the module docstring for run folders).

    arch: the model family, "encoder_decoder" (the paper's), "decoder" (a causal language model) or
      "encoder" (a classifier); default: the model config's, else the data's (text -> decoder,
      labelled -> encoder, else encoder_decoder).
    model: config fields over MODEL_DEFAULTS (families.MODEL_DEFAULTS for "decoder" and "encoder";
      the vocabulary, and an encoder-decoder's max_len, follow from the data), or a whole config
      (TransformerConfig, DecoderConfig, EncoderConfig). train_config: a TrainConfig, or a dict of its fields.
    data: a task name (default "reverse"), a spec from `task_data`/`tsv_data` (encoder-decoder),
      `text_data` (decoder), `labelled_data` (encoder), or (train, valid) in memory: (source, target)
      pairs, documents (strings) or (text, label) pairs. out_dir: the run folder (checkpoints, metrics.jsonl, curves.png),
      or None to keep everything in memory. callbacks: `callback(step, record)` after each logged
      record and evaluation; a truthy return stops the run (see train.Callback).
    progress: progress lines on stderr; verbose: a line on the data and the run folder on stderr.
    eval_examples: held-out examples each evaluation decodes (default 500; a resumed run: its own).
    A run folder gets config.toml, the run's settings resolved (config_file), from which
    `ft train --config DIR/config.toml` trains the same run again. With resume=True, model, data and train_config may be left out; what is given must agree with
    the run (train_config's steps may grow with extend=True).
    devices: 1, a count, "all" or a jax.sharding.Mesh with the one axis "data" (JAX only): the
      global batch (train_config's batch_size, which the count must divide) is split over them;
      shard_params also splits the params' and optimizer's matrices (see parallel.py). The
      trajectory is the same at any count, and a run may resume on another count.
    """
    backend = backend or default_backend()
    mesh = parallel.make_mesh(devices, backend)
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run, or replace it")
    if eval_examples is not None and eval_examples < 1:
        raise ConfigError(f"eval_examples must be at least 1, got {eval_examples}")
    if resume and out_dir is None:
        raise ConfigError("resume needs the out_dir of the run to continue")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file: --out (out_dir) must be a folder, the run folder; choose another path")
    if resume and not out.is_dir():
        raise RunFolderError(f"{out} does not exist: there is no run to resume; leave out --resume to start one there")
    # With many processes only process 0 owns the run folder (it alone writes there).
    lead = parallel.process_index() == 0
    with locked(out) if out is not None and lead else contextlib.nullcontext():
        if out is not None and lead:
            _remove_stale_temp_files(out)
        # What the loop needs besides the model, data and TrainConfig: the same for a new run and a resumed one.
        loop_options = dict(
            out_dir=out,
            backend=backend,
            eval_examples=eval_examples,
            progress=progress,
            callbacks=tuple(callbacks),
            mesh=mesh,
            shard_params=shard_params,
        )
        if resume:
            if eval_examples is None:
                loop_options["eval_examples"] = _saved_eval_examples(out)
            return _resume(out, model, train_config, data, extend, verbose, loop_options)
        loop_options["eval_examples"] = EVAL_EXAMPLES if eval_examples is None else eval_examples
        if isinstance(train_config, dict):
            train_config = TrainConfig(**train_config)
        tcfg = train_config or TrainConfig()
        if data is None and (arch or "encoder_decoder") != "encoder_decoder":
            raise ConfigError(
                f"arch={arch!r} needs data: ft.text_data(...) for 'decoder', ft.labelled_data(...) for 'encoder'"
            )
        spec, pairs = _as_data_spec("reverse" if data is None else data, tcfg.seed, arch)
        arch = _arch_for(model, spec, arch)
        train_pairs, valid_pairs = pairs or load_pairs(spec)
        tokenizer = tokenizer_for(spec, train_pairs, valid_pairs)
        labels = sorted({label for _, label in train_pairs}) if arch == "encoder" else None
        if arch == "encoder_decoder":
            cfg = model_config(tokenizer, train_pairs + valid_pairs, model, spec_max_len(spec))
        else:
            longest = (
                max(len(tokenizer.source.encode(text)) for text, _ in train_pairs + valid_pairs) if labels else None
            )
            cfg = families.make_config(arch, tokenizer, model, longest=longest, n_classes=len(labels or ()))
        tcfg = with_best_by(tcfg, cfg)
        run = _make_run(cfg, tcfg, tokenizer, spec, train_pairs, valid_pairs, loop_options, verbose, labels)
        if mesh is not None:
            check_batches_split(run, mesh)  # before a run folder is made
        check_best_by(tcfg, cfg)
        check_optimizer(tcfg, backend)
        if out is not None and lead:
            _start_fresh(out, overwrite, verbose)
            _write_config(run)
        if verbose:
            examples = {"encoder_decoder": "pairs", "decoder": "windows", "encoder": "examples"}[arch]
            held_out = "documents" if arch == "decoder" else examples
            print(
                f"backend {backend.name}; {parallel.describe(mesh, shard_params)}{len(run.train_examples)} training "
                f"{examples} and {len(run.valid_pairs)} held-out {held_out}; {_describe_vocabulary(cfg)}; writing to "
                f"{out if out else 'memory only'}",
                file=sys.stderr,
            )
        return _result(run, run_loop(run))


def _describe_vocabulary(cfg: ModelConfig) -> str:
    if not isinstance(cfg, TransformerConfig):
        classes = f", {cfg.n_classes} classes" if hasattr(cfg, "n_classes") else ""
        return f"vocabulary {cfg.vocab_size}{classes}"
    if cfg.src_vocab_size == cfg.tgt_vocab_size:
        return f"vocabulary {cfg.src_vocab_size}"
    return f"vocabularies {cfg.src_vocab_size} (source) and {cfg.tgt_vocab_size} (target)"


def _family_examples(cfg: ModelConfig, tokenizer, train_pairs, valid_pairs, labels) -> tuple[list, dict]:
    """A language model's or a classifier's training examples and its data report: the windows and
    the held-out unigram baseline, or how many texts were cut to max_len."""
    if families.arch_of(cfg) == "decoder":
        examples = families.encode_documents([d for _, d in train_pairs], tokenizer, cfg.max_len)
        held_out = families.encode_documents([d for _, d in valid_pairs], tokenizer, cfg.max_len) if valid_pairs else []
        report = {"windows": len(examples), "tokens": sum(len(e.tgt) - 1 for e in examples)}
        if held_out:
            report["unigram_perplexity"] = families.unigram_perplexity(examples, held_out, cfg.vocab_size)
        return examples, report
    examples, n_cut = families.encode_labelled(train_pairs, tokenizer, labels, cfg.max_len)
    families.encode_labelled(valid_pairs, tokenizer, labels, cfg.max_len)  # a held-out label unknown: said now
    return examples, {"n_train": len(examples), "cut_to_max_len": n_cut}


def _make_run(
    cfg: ModelConfig, tcfg, tokenizer, spec, train_pairs, valid_pairs, loop_options, verbose, labels=None
) -> Run:
    if families.arch_of(cfg) == "encoder_decoder":
        examples, valid_pairs, report = fit_data(spec, tokenizer, cfg.max_len, train_pairs, valid_pairs)
        if verbose and report:
            print(describe_data_report(report), file=sys.stderr)
    else:
        examples, report = _family_examples(cfg, tokenizer, train_pairs, valid_pairs, labels)
        if verbose:
            print(
                "data: "
                + ", ".join(
                    f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
                    for name, value in report.items()
                ),
                file=sys.stderr,
            )
    return Run(
        cfg=cfg,
        tcfg=tcfg,
        tokenizer=tokenizer,
        data_spec=spec,
        valid_pairs=valid_pairs,
        train_examples=examples,
        data_report=report,
        labels=labels,
        **loop_options,
    )


def _resume(out: Path, model, train_config, data, extend, verbose, loop_options) -> FitResult:
    backend = loop_options["backend"]
    if not checkpoint.checkpoint_path(out).exists():
        raise RunFolderError(f"{out} holds no checkpoint to resume; leave out --resume to start a run there")
    loaded = checkpoint.load(out, backend)
    cfg, tokenizer, spec = loaded.cfg, loaded.tokenizer, loaded.data_spec
    if model is not None and not isinstance(model, dict):
        model = model.to_dict()
    _check_resumed("model", cfg.to_dict(), dict(model or {}))
    pairs = None
    if isinstance(data, str):
        data = {"task": data}
    elif isinstance(data, (tuple, list)):
        pairs, data = (list(data[0]), list(data[1])), None
        if spec["kind"] == "documents":
            pairs = ([("", d) for d in pairs[0]], [("", d) for d in pairs[1]])
        if spec["kind"] not in MEMORY_KINDS.values() or (len(pairs[0]), len(pairs[1])) != (
            spec["n_train"],
            spec["n_valid"],
        ):
            raise RunFolderError(
                f"{out} was trained on {_describe_spec(spec)}, not on the {len(pairs[0])} + "
                f"{len(pairs[1])} pairs given; a resumed run keeps its data"
            )
    _check_resumed("data", {"tokenizer": {"kind": "char"}, **spec}, dict(data or {}))  # characters, if not said
    if isinstance(train_config, TrainConfig):
        train_config = dataclasses.asdict(train_config)
    step = loaded.step
    saved, changes = loaded.train_config, dict(train_config or {})
    if saved.optimizer == USER_OPTIMIZER:
        given = changes.pop("optimizer", None)
        if given is None or isinstance(given, str):
            raise RunFolderError(
                f"{out} was trained with an optax optimizer given in Python, which a checkpoint cannot "
                "hold, so it cannot resume from the folder alone (nor with ft train --resume): resume "
                "it in Python with the same optimizer, ft.fit(train_config={'optimizer': ...}, "
                "out_dir=..., resume=True)"
            )
        saved = dataclasses.replace(saved, optimizer=given)
    tcfg = resumed_train_config(with_best_by(saved, cfg), changes, step, extend)
    if spec["kind"] in MEMORY_KINDS.values() and pairs is None:
        raise RunFolderError(f"{out} was trained on examples given in memory; pass them again as data=(train, valid)")
    train_pairs, valid_pairs = pairs or load_pairs(spec)
    run = _make_run(cfg, tcfg, tokenizer, spec, train_pairs, valid_pairs, loop_options, verbose, loaded.labels)
    if parallel.process_index() == 0:
        _write_config(run)  # the operational fields or the steps may have changed
    if verbose:
        print(f"resuming {out} at step {step} of {tcfg.steps}", file=sys.stderr)
    return _result(run, run_loop(run, loaded.state, loaded.key, loaded.progress or None))


def _write_config(run: Run) -> None:
    """The run folder's config.toml: the run's settings, from which `ft train --config` trains it again."""
    from . import config_file  # it builds data specs with this module's functions

    extended = (
        f"\nThis run was extended at step {run.tcfg.schedule_start} (--resume --extend); a new run from "
        "this file takes all its steps under one schedule."
        if run.tcfg.schedule_start
        else ""
    )
    header = (
        f"The settings of this run (backend {run.backend.name}). To train it again:\n"
        f"  ft train --config {run.out_dir / config_file.CONFIG_NAME} --out NEW_FOLDER{extended}"
    )
    config_file.write_settings(
        run.out_dir / config_file.CONFIG_NAME, run.cfg, run.tcfg, run.data_spec, run.eval_examples, header
    )


def _saved_eval_examples(out: Path) -> int:
    """The eval_examples a run folder's config.toml holds (the default where the folder has no config.toml)."""
    from . import config_file

    path = out / config_file.CONFIG_NAME
    return config_file.read_settings(path).data.get("eval_examples", EVAL_EXAMPLES) if path.exists() else EVAL_EXAMPLES


def read_history(out_dir: Path) -> list[dict]:
    """The records of a run folder's metrics.jsonl, in order."""
    return read_records(Path(out_dir) / "metrics.jsonl")


def _result(run: Run, looped: dict) -> FitResult:
    summary, state = looped["summary"], looped["state"]
    return FitResult(
        params=state["params"],
        cfg=run.cfg,
        tokenizer=run.tokenizer,
        train_config=run.tcfg,
        data_spec=run.data_spec,
        step=summary["step"],
        labels=run.labels,
        path=Path(summary["checkpoint"]) if summary["checkpoint"] else None,
        state=state,
        key=looped["key"],
        history=read_history(run.out_dir) if run.out_dir and parallel.process_index() == 0 else looped["history"],
        best_exact_match=summary["best_exact_match"],
        best_value=summary["best_value"],
        best_step=summary["best_step"],
        stopped=summary["stopped"],
        seconds=summary["seconds"],
        out_dir=run.out_dir,
    )


def load(path: str | os.PathLike, which: str | None = None, backend: Backend | None = None) -> TrainedModel:
    """A trained model from a run folder or a checkpoint file, on `backend` (default FT_BACKEND).

    which: "best" (the best by the run's best_by held-out metric), "last" (where training stopped), or None: the
    best where the folder has one, else the last."""
    backend = backend or default_backend()
    loaded = checkpoint.load(checkpoint.resolve(path, which), backend)
    return TrainedModel(
        params=loaded.state["params"],
        cfg=loaded.cfg,
        tokenizer=loaded.tokenizer,
        train_config=loaded.train_config,
        data_spec=loaded.data_spec,
        step=loaded.step,
        path=loaded.path,
        labels=loaded.labels,
    )


def predict(model: TrainedModel, sources: Sequence[str], *, beam_size: int = 1, **options) -> list[str]:
    """One output per input: the decoded target of an encoder-decoder (greedy, or beam search with
    beam_size > 1), a classifier's label, or a language model's continuation of the text
    (`inference.continue_texts`: greedy unless given a temperature and a key)."""
    if isinstance(sources, str):
        sources = [sources]
    if model.arch == "encoder":
        return inference.classify(model.params, model.cfg, model.tokenizer, model.labels, list(sources), **options)
    if model.arch == "decoder":
        return inference.continue_texts(model.params, model.cfg, model.tokenizer, list(sources), **options)
    return inference.predict(model.params, model.cfg, model.tokenizer, list(sources), beam_size=beam_size, **options)


def evaluate(model: TrainedModel, pairs: Sequence, *, beam_size: int = 1, **options) -> dict:
    """Held-out metrics: for an encoder-decoder on (source, target) pairs {"loss", "token_accuracy",
    "exact_match", "char_accuracy", "n_examples"}, and "bleu", "chrf" with their signatures where
    sacreBLEU is installed; for a language model on documents (strings) {"loss", "perplexity",
    "token_accuracy", ...}; for a classifier on (text, label) pairs {"loss", "accuracy", "confusion", ...}."""
    if model.arch == "decoder":
        documents = [("", d) if isinstance(d, str) else d for d in pairs]
        return families.evaluate(model.params, model.cfg, model.tokenizer, documents, **options)
    if model.arch == "encoder":
        return families.evaluate(model.params, model.cfg, model.tokenizer, list(pairs), labels=model.labels, **options)
    return inference.evaluate(model.params, model.cfg, model.tokenizer, list(pairs), beam_size=beam_size, **options)


__all__ = [
    "FitResult",
    "MODEL_DEFAULTS",
    "RunFolderError",
    "TrainedModel",
    "evaluate",
    "fit",
    "fit_data",
    "labelled_data",
    "load",
    "load_pairs",
    "model_config",
    "predict",
    "task_data",
    "text_data",
    "tokenizer_for",
    "tokenizer_spec",
    "tsv_data",
]
