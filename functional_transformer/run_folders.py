"""Run folders: the lock that keeps one process per folder, what a folder holds, starting afresh in
one (never silently over a run), the rules a resumed run follows, and the config.toml it gets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import backends

from . import checkpoint, config_file, families
from .config import TrainConfig
from .errors import ConfigError, UserInputError
from .run_writer import read_records

if TYPE_CHECKING:
    from .train import Run

# TrainConfig fields that change what is logged, evaluated and saved, never the trajectory.
OPERATIONAL_FIELDS = ("log_every", "eval_every", "save_every", "patience")


class RunFolderError(UserInputError):
    """A run folder cannot be used as asked: it holds a run, is locked, or conflicts with a resume."""


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


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete the temporary files of checkpoint saves that never finished (call it under the lock)."""
    # A process killed mid-save leaves its temporary file (the checkpoint itself is untouched, as the
    # save renames into place); under the lock no other process can be writing one.
    for name in checkpoint.FILE_NAMES.values():
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


RUN_FILES = (checkpoint.CHECKPOINT_NAME, checkpoint.BEST_NAME, "metrics.jsonl", "curves.png", "config.toml")
# Held-out examples each evaluation decodes, unless told otherwise (fit's eval_examples).
EVAL_EXAMPLES = 500


def start_fresh(out_dir: Path, overwrite: bool, verbose: bool) -> None:
    """Make out_dir ready for a new run: an error where it holds one, unless `overwrite` (then its run files go)."""
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


def describe_spec(spec: dict) -> str:
    """What a data spec trains on, in a few words, for errors."""
    if spec["kind"] == "task":
        return f"the task {spec['task']!r}"
    if spec["kind"] in ("tsv", "text", "labelled"):
        return f"{spec['train']}" + (f" and {spec['valid']}" if spec.get("valid") else "")
    return f"{spec['n_train']} + {spec['n_valid']} pairs given in memory"


def check_resumed(kind: str, saved: dict, given: dict) -> None:
    """A RunFolderError naming the first setting of `given` that the resumed run's `saved` ones lack or differ from."""
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


def write_config(run: Run, out_dir: Path) -> None:
    """The run folder's config.toml (out_dir, run's folder): the run's settings, from which `ft train
    --config` trains it again."""
    extended = (
        f"\nThis run was extended at step {run.tcfg.schedule_start} (--resume --extend); a new run from "
        "this file takes all its steps under one schedule."
        if run.tcfg.schedule_start
        else ""
    )
    header = (
        f"The settings of this run (backend {run.backend.name}). To train it again:\n"
        f"  ft train --config {out_dir / config_file.CONFIG_NAME} --out NEW_FOLDER{extended}"
    )
    config_file.write_settings(
        out_dir / config_file.CONFIG_NAME, run.cfg, run.tcfg, run.data_spec, run.eval_examples, header
    )


def saved_eval_examples(out: Path) -> int:
    """The eval_examples a run folder's config.toml holds (the default where the folder has no config.toml)."""
    path = out / config_file.CONFIG_NAME
    return config_file.read_settings(path).data.get("eval_examples", EVAL_EXAMPLES) if path.exists() else EVAL_EXAMPLES


def read_history(out_dir: Path) -> list[dict]:
    """The records of a run folder's metrics.jsonl, in order."""
    return read_records(Path(out_dir) / "metrics.jsonl")
