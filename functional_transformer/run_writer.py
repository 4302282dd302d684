"""The files a training run writes to its folder: metrics.jsonl (one JSON record per logged step and
evaluation), the last and best checkpoints (checkpoint.safetensors, best.safetensors) and curves.png.

`RunWriter` is what the training loop (train.run_loop) writes through; with many processes only
process 0 writes, and without a folder nothing is written but the records are still kept.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backends import Backend, JaxBackend

from . import checkpoint, parallel
from .config import TrainConfig, train_config_record, user_optimizer
from .data import DataError
from .errors import ConfigError
from .insight import plots

if TYPE_CHECKING:
    from .train import Run

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


class SaveFailed(OSError):
    """A checkpoint could not be written; the previous one is intact (saves are atomic)."""


def storable_opt_state(tcfg: TrainConfig, opt_state, backend: Backend):
    """The optimizer state as a checkpoint stores it: the built-in optimizers' dict as it is; an optax
    state (tuples, named tuples) as its leaves in order, {"optax_leaf_count", "optax_leaves": {"00000", ...}},
    which `restore_opt_state` puts back into the structure of the same optimizer's init."""
    if not user_optimizer(tcfg):
        return opt_state
    if not isinstance(backend, JaxBackend):
        raise ConfigError(f"an optax optimizer's state needs the JAX backend (FT_BACKEND=jax), not {backend.name}")
    leaves = backend.jax.tree_util.tree_leaves(opt_state)
    return {
        "optax_leaf_count": np.asarray(len(leaves), dtype=np.int32),
        "optax_leaves": {f"{i:05d}": leaf for i, leaf in enumerate(leaves)},
    }


def read_records(metrics_path: Path) -> list[dict]:
    """The records of a metrics.jsonl. A last line that does not parse is a write cut short (the
    process was killed, the disk filled) and is dropped; a bad line before it is an error."""
    if not metrics_path.exists():
        return []
    lines = [line for line in metrics_path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise DataError(f"{metrics_path}:{number} is not a JSON record ({err}); the file is damaged") from None
    return records


def _keep_records_up_to(metrics_path: Path, step: int) -> None:
    # A run killed after logging past its last checkpoint logs those steps again when resumed.
    if metrics_path.exists():
        records = read_records(metrics_path)
        kept = [record for record in records if record["step"] <= step]
        metrics_path.write_text("".join(json.dumps(record) + "\n" for record in kept))


class RunWriter:
    """The run's records (`history`, and metrics.jsonl), checkpoints and curves. `host` gathers a
    sharded tree to NumPy (the identity on one device); `last_saved` is the last checkpoint written."""

    def __init__(self, run: Run, tcfg: TrainConfig, start_step: int, host: Callable = lambda tree: tree):
        self.run, self.tcfg, self.host = run, tcfg, host
        # With many processes every one trains; only process 0 writes (checkpoints, metrics, plots).
        self.writes = run.out_dir is not None and parallel.process_index() == 0
        self.metrics_path = run.out_dir / METRICS_NAME if run.out_dir is not None and self.writes else None
        self.history: list[dict] = []
        self.last_saved: Path | None = None
        if self.metrics_path is not None:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            _keep_records_up_to(self.metrics_path, start_step)  # at step 0: a fresh log
        if start_step == 0 and run.data_report:  # once per run; kept in the log when it resumes
            self._append({"step": 0, "split": "data", **run.data_report})

    def _append(self, record: dict) -> None:
        self.history.append(record)
        if self.metrics_path is not None:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def log(self, record: dict) -> bool:
        """Keep and write `record`, then show it to the run's callbacks -> whether one asks to stop."""
        self._append(record)
        return any([bool(callback(record["step"], record)) for callback in self.run.callbacks])

    def save(self, state: dict, key, progress: dict, which: str = "last") -> Path | None:
        """Write the "last" or "best" checkpoint of `state` -> its path (None where this process does not
        write); SaveFailed, naming the checkpoint that stands, where the disk refuses."""
        run, backend = self.run, self.run.backend
        if run.out_dir is None:
            return None
        state, saved_key = self.host(state), self.host(key)  # a collective: every process takes part
        if not self.writes:
            return None
        state = dict(state, opt_state=storable_opt_state(self.tcfg, state["opt_state"], backend))
        try:
            path = checkpoint.save(
                checkpoint.checkpoint_path(run.out_dir, which),
                state,
                backend,
                cfg=run.cfg,
                tokenizer=run.tokenizer,
                train_config=train_config_record(self.tcfg),
                data_spec=run.data_spec,
                key=saved_key,
                progress=progress,
                labels=run.labels,
            )
        except OSError as err:  # a full disk, a lost mount: the write is atomic, so the old file stands
            raise SaveFailed(
                f"training stopped at step {int(backend.to_numpy(state['step']))}: {err}. The last "
                f"checkpoint saved before ({self.last_saved or 'none was saved yet'}) is intact; free some "
                "space or fix the folder, then resume"
            ) from err
        if which == "last":
            self.last_saved = path
        return path

    def plot(self) -> None:
        """curves.png from metrics.jsonl (where this process writes)."""
        if self.metrics_path is not None:
            plot_metrics(self.metrics_path, self.metrics_path.parent / CURVES_NAME)


def plot_metrics(metrics_path: Path, png_path: Path) -> Path | None:
    """curves.png of a metrics.jsonl (insight.plots.curves_figure, with the learning rates the records
    carry); None, with a line on stderr, where matplotlib is missing or there are no records yet."""
    try:
        plots.require_matplotlib("a plot of the training curves")
    except plots.MatplotlibMissing:
        print("matplotlib is not installed, so no plot was drawn (pip install matplotlib)", file=sys.stderr)
        return None
    records = read_records(metrics_path) if metrics_path.exists() else []
    if not records:
        return None
    with_rate = [r for r in records if r["split"] == "train" and "learning_rate" in r]
    rates = ([r["step"] for r in with_rate], [r["learning_rate"] for r in with_rate]) if with_rate else None
    return plots.save_png(plots.curves_figure(records, rates), png_path)
