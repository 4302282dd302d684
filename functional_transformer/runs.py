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

The data specs (`task_data`, `tsv_data`, ...) live in run_data.py and the run folders' rules (lock,
resume) in run_folders.py; their public names are re-exported here.
"""

import contextlib
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backends import Backend, with_x64_scope

from . import checkpoint, families, inference, parallel, run_folders
from .backend_choice import default_backend
from .checkpoint import ModelConfig
from .config import USER_OPTIMIZER, TrainConfig
from .data import DataError, Tokenizer
from .errors import ConfigError
from .models import DecoderConfig, EncoderConfig

# The data specs, and the run folders' rules, are re-exported: `runs.task_data`, `runs.locked` and the
# others are where code that trains runs has always found them.
from .run_data import (
    DATA_FIELDS,
    FILE_KINDS,
    MODEL_DEFAULTS,
    describe_data_report,
    fit_data,
    labelled_data,
    load_pairs,
    model_config,
    spec_max_len,
    task_data,
    text_data,
    tokenizer_for,
    tokenizer_spec,
    tsv_data,
)
from .run_folders import (
    EVAL_EXAMPLES,
    RunFolderError,
    locked,
    read_history,
    resumed_train_config,
)
from .train import (
    Callback,
    Run,
    check_batches_split,
    check_best_by,
    check_optimizer,
    run_loop,
    with_best_by,
)


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
    model: dict | ModelConfig | None = None,
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
    out = _checked_out_dir(out_dir, resume, overwrite, eval_examples)
    # With many processes only process 0 owns the run folder (it alone writes there).
    lead = parallel.process_index() == 0
    with locked(out) if out is not None and lead else contextlib.nullcontext():
        if out is not None and lead:
            run_folders.remove_stale_temp_files(out)
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
        if resume and out is not None:
            if eval_examples is None:
                loop_options["eval_examples"] = run_folders.saved_eval_examples(out)
            return _resume(out, model, train_config, data, extend, verbose, loop_options)
        loop_options["eval_examples"] = EVAL_EXAMPLES if eval_examples is None else eval_examples
        run = _new_run(model, train_config, data, arch, verbose, loop_options)
        if out is not None and lead:
            run_folders.start_fresh(out, overwrite, verbose)
            run_folders.write_config(run, out)
        if verbose:
            print(_describe_new_run(run), file=sys.stderr)
        return _result(run, run_loop(run))


def _checked_out_dir(out_dir, resume: bool, overwrite: bool, eval_examples: int | None) -> Path | None:
    """fit's run folder as a Path (None: in memory), after checking it and the options that go with it."""
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run, or replace it")
    if eval_examples is not None and eval_examples < 1:
        raise ConfigError(f"eval_examples must be at least 1, got {eval_examples}")
    if out_dir is None:
        if resume:
            raise ConfigError("resume needs the out_dir of the run to continue")
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file: --out (out_dir) must be a folder, the run folder; choose another path")
    if resume and not out.is_dir():
        raise RunFolderError(f"{out} does not exist: there is no run to resume; leave out --resume to start one there")
    return out


def _new_run(model, train_config, data, arch: str | None, verbose: bool, loop_options: dict) -> Run:
    """A new run of fit: its data read, its tokenizer learned, its model config made, and all of it checked
    before a run folder is touched."""
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
        longest = max(len(tokenizer.source.encode(text)) for text, _ in train_pairs + valid_pairs) if labels else None
        cfg = families.make_config(arch, tokenizer, model, longest=longest, n_classes=len(labels or ()))
    tcfg = with_best_by(tcfg, cfg)
    run = _make_run(cfg, tcfg, tokenizer, spec, train_pairs, valid_pairs, loop_options, verbose, labels)
    if run.mesh is not None:
        check_batches_split(run, run.mesh)
    check_best_by(tcfg, cfg)
    check_optimizer(tcfg, run.backend)
    return run


def _describe_new_run(run: Run) -> str:
    """The line fit prints as a new run starts: backend, devices, data sizes, vocabulary, where it writes."""
    arch = families.arch_of(run.cfg)
    examples = {"encoder_decoder": "pairs", "decoder": "windows", "encoder": "examples"}[arch]
    held_out = "documents" if arch == "decoder" else examples
    return (
        f"backend {run.backend.name}; {parallel.describe(run.mesh, run.shard_params)}{len(run.train_examples)} "
        f"training {examples} and {len(run.valid_pairs)} held-out {held_out}; {_describe_vocabulary(run.cfg)}; "
        f"writing to {run.out_dir if run.out_dir else 'memory only'}"
    )


def _describe_vocabulary(cfg: ModelConfig) -> str:
    if isinstance(cfg, EncoderConfig):
        return f"vocabulary {cfg.vocab_size}, {cfg.n_classes} classes"
    if isinstance(cfg, DecoderConfig):
        return f"vocabulary {cfg.vocab_size}"
    if cfg.src_vocab_size == cfg.tgt_vocab_size:
        return f"vocabulary {cfg.src_vocab_size}"
    return f"vocabularies {cfg.src_vocab_size} (source) and {cfg.tgt_vocab_size} (target)"


def _family_examples(cfg: ModelConfig, tokenizer, train_pairs, valid_pairs, labels) -> tuple[list, dict]:
    """A language model's or a classifier's training examples and its data report: the windows and
    the held-out unigram baseline, or how many texts were cut to max_len."""
    if isinstance(cfg, DecoderConfig):
        examples = families.encode_documents([d for _, d in train_pairs], tokenizer, cfg.max_len)
        held_out = families.encode_documents([d for _, d in valid_pairs], tokenizer, cfg.max_len) if valid_pairs else []
        report: dict[str, float] = {"windows": len(examples), "tokens": sum(len(e.tgt) - 1 for e in examples)}
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
    run_folders.check_resumed("model", cfg.to_dict(), dict(model or {}))
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
                f"{out} was trained on {run_folders.describe_spec(spec)}, not on the {len(pairs[0])} + "
                f"{len(pairs[1])} pairs given; a resumed run keeps its data"
            )
    run_folders.check_resumed(
        "data", {"tokenizer": {"kind": "char"}, **spec}, dict(data or {})
    )  # characters, if not said
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
        run_folders.write_config(run, out)  # the operational fields or the steps may have changed
    if verbose:
        print(f"resuming {out} at step {step} of {tcfg.steps}", file=sys.stderr)
    return _result(run, run_loop(run, loaded.state, loaded.key, loaded.progress or None))


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
        return inference.held_out_metrics(model.params, model.cfg, model.tokenizer, documents, **options)
    if model.arch == "encoder":
        return inference.held_out_metrics(
            model.params, model.cfg, model.tokenizer, list(pairs), labels=model.labels, **options
        )
    return inference.evaluate(model.params, model.cfg, model.tokenizer, list(pairs), beam_size=beam_size, **options)


__all__ = [
    "DATA_FIELDS",
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
    "locked",
    "model_config",
    "predict",
    "read_history",
    "resumed_train_config",
    "spec_max_len",
    "task_data",
    "text_data",
    "tokenizer_for",
    "tokenizer_spec",
    "tsv_data",
]
