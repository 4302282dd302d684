"""`ft sweep`: many training runs, their settings chosen by Optuna, on either backend.

Each trial draws its settings from the search space (space.py), trains with `runs.fit` for the
sweep's step budget, evaluating every `steps // n_evals` steps and at the last step, and scores

    objective = the mean of a held-out metric over those evaluations

(the normalised area under its curve): it rewards a run that ends right *and* one that gets there
early, so it still ranks settings when many of them end at 1.0. The metric (SweepConfig.objective,
`ft sweep --objective`) is exact match by default, or character accuracy, BLEU, chrF (maximised)
or the loss (minimised); it is part of the study. Each evaluation's value is reported to Optuna,
whose pruner (median or hyperband) stops hopeless trials early. A run whose loss diverges scores
its evaluations so far, the rest as 0 (with the loss as the objective it is a failed trial).
Settings the model refuses (d_model not divisible by n_heads) are failed trials with that reason;
the sweep goes on.

Every trial keeps its run folder `OUT/trial_NNNN` (metrics.jsonl, curves.png, config.toml); a trial
keeps its checkpoints only if it was the study's best when it finished, so disk use stays small.
`OUT/best.toml` holds the best trial's settings (config_file): `ft train --config OUT/best.toml`
trains that trial again, with the same metrics for the same seed.

Storage: a study lives in an Optuna storage, so `ft sweep` run again with the same --study and
--storage continues it, and several `ft sweep` processes pointed at one storage share its trials.
- `journal:PATH` (the default, `journal:OUT/study.journal`): Optuna's journal file, safe for
  concurrent workers on one machine (it locks the file), or on a shared file system.
- `sqlite:///PATH`: one file, fine for one worker at a time; Optuna advises against SQLite for
  parallel workers (it locks the whole database).
- `postgresql://...`, `mysql://...`: a database server, for workers on many machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..checkpoint import ModelConfig

import dataclasses
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import backends
from backends import Backend

from .. import api, checkpoint, config_file, run_data, runs
from ..backend_choice import default_backend
from ..config import BEST_BY, TrainConfig
from ..errors import UserInputError
from ..metrics import TEXT_METRICS, require_sacrebleu
from ..progress import ProgressLine
from ..train import TrainingDiverged
from . import space as search_space

PRUNERS = ("median", "hyperband", "none")
# The held-out metrics a sweep can score by (each maximised, but the loss minimised: config.BEST_BY).
OBJECTIVES = ("exact_match", "char_accuracy", "bleu", "chrf", "loss")
BEST_NAME = "best.toml"
TARGET_EXACT_MATCH = 0.995


class SweepError(UserInputError):
    """A sweep that cannot start: Optuna missing, a storage that does not open, a study that differs."""


class InvalidSettings(UserInputError):
    """A trial's settings that the model or the trainer refuses; the trial fails with this reason."""


class TrialDiverged(ValueError):
    """A trial whose loss diverged under a minimised objective (no loss to score); the trial fails."""


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError(
            "ft sweep needs Optuna, an optional extra: pip install 'functional-transformer[sweep]' "
            "(or, in a checkout, uv sync --extra sweep)"
        ) from None
    return optuna


def open_storage(url: str):
    """An Optuna storage from a URL: `journal:PATH` for a journal file, anything else an RDB URL."""
    optuna = import_optuna()
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:") :])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:
            raise SweepError(f"cannot open the journal storage {path}: {err}") from None
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # SQLAlchemy's errors for a bad URL, a missing driver, a server not there
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SweepError(f"cannot open the storage {url!r}: {reason}") from None


def make_pruner(name: str, n_evals: int):
    optuna = import_optuna()
    if name == "median":
        # Prune a trial worse than the median of earlier ones at the same step, once two trials
        # have finished and from the second evaluation on (the first is too noisy to judge).
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2, interval_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_evals + 1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"unknown pruner {name!r}: choose one of {PRUNERS}")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What every trial of a study shares; a resumed study must have the same."""

    data: dict  # a data spec (run_data.task_data / run_data.tsv_data)
    steps: int = 300
    n_evals: int = 6
    eval_examples: int = 500
    seed: int = 0
    objective: str = "exact_match"  # the held-out metric whose mean over the evaluations scores a trial

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """ "maximize", or "minimize" for the loss."""
        return "minimize" if BEST_BY[self.objective] == "min" else "maximize"

    @property
    def eval_every(self) -> int:
        return max(1, self.steps // self.n_evals)

    @property
    def eval_steps(self) -> list[int]:
        """The steps a trial is evaluated at: every eval_every, and the last step (as run_loop does)."""
        steps = list(range(self.eval_every, self.steps + 1, self.eval_every))
        return steps if steps[-1] == self.steps else [*steps, self.steps]

    def __post_init__(self):
        if self.steps < 1 or self.n_evals < 1 or self.eval_examples < 1:
            raise SweepError(
                f"steps, n_evals and eval_examples must be positive, got {self.steps}, {self.n_evals}, "
                f"{self.eval_examples}"
            )
        if self.objective not in OBJECTIVES:
            raise SweepError(f"unknown objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")


SETTINGS_ATTR = "ft_sweep"  # one user attribute, written at once, so a second worker never sees half of it


def study_settings(config: SweepConfig, space: dict) -> dict[str, str]:
    """What a study searches and how it scores trials; a resumed study must have the same."""
    return {
        "space": search_space.space_json(space),
        "data": json.dumps(config.data, sort_keys=True),
        "objective": f"mean held-out {config.objective} over the evaluations at steps {config.eval_steps} "
        f"({config.eval_examples} examples), {config.direction}d",
        "metric": config.objective,
        "steps": str(config.steps),
        "n_evals": str(config.n_evals),
        "eval_examples": str(config.eval_examples),
    }


def open_study(
    name: str, storage_url: str, config: SweepConfig, space: dict, pruner: str, sampler_seed: int | None = None
):
    """Create the study, or load it and check it searches the same space on the same data.
    sampler_seed (default: config.seed) seeds Optuna's sampler; workers sharing a study give
    different ones, or they would draw the same settings."""
    optuna = import_optuna()
    storage = open_storage(storage_url)
    settings = study_settings(config, space)
    n_before = 0
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
        n_before = len(existing.trials)
    except KeyError:
        existing = None
    recorded = existing.user_attrs.get(SETTINGS_ATTR) if existing is not None else None
    if recorded is not None:
        # (The objective's text is derived from the others and may be reworded between versions.)
        # A study that does not record its metric scored exact match.
        recorded = {"metric": "exact_match", **recorded}
        different = [key for key, value in settings.items() if key != "objective" and recorded.get(key) != value]
        if different:
            details = "; ".join(
                f"{key}: the study has {recorded.get(key)}, this sweep {settings[key]}" for key in different
            )
            raise SweepError(
                f"the study {name!r} in {storage_url} was made with other settings ({details}). Use "
                "another --study name, or the same settings to continue it"
            )
    # A new sampler seed per session, so a resumed study does not redraw its first random trials.
    # Multivariate TPE models the settings jointly (learning rate and model size interact).
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        seed = (config.seed if sampler_seed is None else sampler_seed) + n_before
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        direction=config.direction,
        pruner=make_pruner(pruner, config.n_evals),
        load_if_exists=True,
    )
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
    return study


def n_params(cfg: ModelConfig) -> int:
    """The parameter count of a model config (drawn on NumPy: milliseconds for these sizes)."""
    host = backends.get_backend("numpy")
    return int(sum(leaf.size for leaf in host.tree_leaves(api.init(host.random.key(0), cfg))))


def _remove_checkpoints(run_dir: Path) -> None:
    for name in checkpoint.FILE_NAMES.values():
        (run_dir / name).unlink(missing_ok=True)


def trial_train_config(config: SweepConfig, train_fields: dict) -> TrainConfig:
    """The TrainConfig a trial trains with: its drawn fields, and the sweep's steps, seed and evaluations."""
    return TrainConfig(
        **{
            **train_fields,
            "steps": config.steps,
            "seed": config.seed,
            "eval_every": config.eval_every,
            "save_every": config.steps,
            "log_every": max(1, min(config.eval_every, config.steps // 20)),
            "best_by": config.objective,
        }
    )


def make_objective(config: SweepConfig, space: dict, out_dir: Path, backend: Backend, progress: bool = True):
    """The function Optuna calls per trial: settings -> fit -> the mean of the objective's metric."""
    optuna = import_optuna()
    data = dict(config.data)
    pairs = run_data.load_pairs(data)  # to check each trial's model against the data before it trains
    metric = config.objective

    def objective(trial) -> float:
        values = search_space.suggest(trial, space)
        model, tcfg, cfg = _trial_settings(config, data, pairs, trial, values)
        run_dir = out_dir / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("backend", backend.name)
        trial.set_user_attr("n_params", n_params(cfg))  # before training: a diverged trial has a size too
        records = _TrialRecords(trial, metric, config.steps, progress)
        t0 = time.perf_counter()
        stopped = _train_trial(model, tcfg, data, run_dir, records, backend, config.eval_examples)
        seconds = time.perf_counter() - t0
        score = _record_outcome(trial, config, records, stopped, seconds)
        if progress:
            print(
                f"trial {trial.number}: {'pruned at step ' + str(records.pruned[0]) if records.pruned else stopped}; "
                f"{metric} {[round(v, 3) for v in records.values_seen]} score {score:.4f} in {seconds:.0f} s; "
                f"{values}",
                file=sys.stderr,
                flush=True,
            )
        if records.pruned:
            _remove_checkpoints(run_dir)
            raise optuna.TrialPruned(f"{metric} {records.values_seen[-1]:.4f} at evaluation {len(records.values_seen)}")
        if stopped == "diverged" and config.direction == "minimize":
            _remove_checkpoints(run_dir)
            reason = (
                f"the loss diverged after {len(records.values_seen)} evaluations; a minimised {metric} has no score "
                "for it"
            )
            trial.set_user_attr("fail_reason", reason)
            raise TrialDiverged(reason)
        _keep_checkpoints_if_best(trial, score, run_dir, config.direction)
        return score

    return objective


def _trial_settings(
    config: SweepConfig, data: dict, pairs: tuple, trial, values: dict
) -> tuple[dict, TrainConfig, ModelConfig]:
    """(model fields, TrainConfig, model config) of a trial's drawn values; settings the data or the
    configs refuse are an InvalidSettings (the trial fails, the sweep goes on)."""
    model, train_fields = search_space.split_settings(values)
    try:
        tcfg = trial_train_config(config, train_fields)
        cfg = run_data.model_config(
            run_data.tokenizer_for(data, *pairs), pairs[0] + pairs[1], model, run_data.spec_max_len(data)
        )
    except ValueError as err:
        trial.set_user_attr("fail_reason", str(err))
        raise InvalidSettings(str(err)) from None
    return model, tcfg, cfg


class _TrialRecords:
    """The callback a trial's fit calls with each record: it keeps the held-out values, reports the
    objective's to Optuna (whose pruner may stop the run) and draws the trial's progress line."""

    def __init__(self, trial, metric: str, steps: int, progress: bool):
        self.trial, self.metric = trial, metric
        self.exact_matches: list[float] = []
        self.values_seen: list[float] = []  # the objective's metric at each evaluation
        self.pruned: list[int] = []  # the step where the pruner stopped the run, if it did
        self.line = ProgressLine(f"trial {trial.number}", steps, unit="steps", enabled=progress)

    def __call__(self, step: int, record: dict) -> bool:
        if record["split"] == "train":
            self.line.label = (
                f"trial {self.trial.number}"
                + (f" (exact match {self.exact_matches[-1]:.3f})" if self.exact_matches else "")
                + f" loss {record['loss']:.4f}"
            )
            self.line.advance(step - self.line.done)
        if record["split"] != "valid":
            return False
        self.exact_matches.append(record["exact_match"])
        self.values_seen.append(record[self.metric])
        self.trial.report(record[self.metric], len(self.values_seen))
        if self.trial.should_prune():
            self.pruned.append(step)
            return True
        return False


def _train_trial(
    model: dict, tcfg: TrainConfig, data: dict, run_dir: Path, records: _TrialRecords, backend: Backend, eval_examples
) -> str:
    """Train one trial in run_dir -> "finished" (or stopped by the pruner) or "diverged"; Ctrl-C stops the sweep."""
    try:
        result = runs.fit(
            model,
            tcfg,
            data,
            out_dir=run_dir,
            overwrite=True,
            callbacks=[records],
            backend=backend,
            progress=False,
            verbose=False,
            eval_examples=eval_examples,
        )
        if result.stopped == "interrupted":  # Ctrl-C: stop the sweep; a cut-short run is no result
            raise KeyboardInterrupt
    except TrainingDiverged:
        return "diverged"
    finally:
        records.line.close()
    return "finished"


def _record_outcome(trial, config: SweepConfig, records: _TrialRecords, stopped: str, seconds: float) -> float:
    """Store what a trained trial did as its user attributes -> its score (the mean over the planned evaluations)."""
    exact_matches = records.exact_matches
    reached = [i for i, em in enumerate(exact_matches) if em >= TARGET_EXACT_MATCH]
    score = sum(records.values_seen) / len(config.eval_steps)
    trial.set_user_attr("seconds", round(seconds, 2))
    trial.set_user_attr("final_exact_match", exact_matches[-1] if exact_matches else None)
    trial.set_user_attr("best_exact_match", max(exact_matches, default=None))
    trial.set_user_attr("steps_to_target", config.eval_steps[reached[0]] if reached else None)
    trial.set_user_attr("stopped", "pruned" if records.pruned else stopped)
    return score


def _keep_checkpoints_if_best(trial, score: float, run_dir: Path, direction: str = "maximize") -> None:
    """Keep a trial's checkpoints only if it beats every trial finished so far (ties keep the first)."""
    optuna = import_optuna()
    done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = 1 if direction == "maximize" else -1
    if any(t.value is not None and sign * t.value >= sign * score for t in done):
        _remove_checkpoints(run_dir)


def run_sweep(
    study_name: str,
    storage_url: str,
    config: SweepConfig,
    *,
    n_trials: int,
    out_dir: str | os.PathLike,
    space: dict | None = None,
    pruner: str = "median",
    backend: Backend | None = None,
    sampler_seed: int | None = None,
    progress: bool = True,
):
    """Run n_trials more trials of the study (created or continued); -> the Optuna study."""
    optuna = import_optuna()
    space = search_space.check_space(space or search_space.load_space(None))
    if pruner not in PRUNERS:
        raise SweepError(f"unknown pruner {pruner!r}: choose one of {PRUNERS}")
    if n_trials < 1:
        raise SweepError(f"--trials must be at least 1, got {n_trials}")
    if config.objective in TEXT_METRICS:  # before any trial trains
        require_sacrebleu(f"--objective {config.objective}")
    backend = backend or default_backend()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SweepError(f"{out_dir} is a file: --out must be a folder (it holds the trials' run folders)")
    out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(study_name, storage_url, config, space, pruner, sampler_seed)
    if progress:
        print(
            f"backend {backend.name}; study {study_name!r} in {storage_url} ({len(study.trials)} trials so far); "
            f"{n_trials} more of {config.steps} steps; trial folders in {out_dir}",
            file=sys.stderr,
        )
    objective = make_objective(config, space, out_dir, backend, progress)
    # On Ctrl-C Optuna logs the trial's failure with the KeyboardInterrupt's traceback before it
    # re-raises it; `ft sweep` says what happened in one line instead.
    optuna_logger = logging.getLogger("optuna.study._optimize")
    interrupted_filter = _DropInterruptedTrialLogs()
    optuna_logger.addFilter(interrupted_filter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=n_trials, catch=(InvalidSettings, TrialDiverged))
    finally:  # also on Ctrl-C: the best of the trials that finished
        optuna_logger.removeFilter(interrupted_filter)
        write_best_settings(study, config, space, out_dir / BEST_NAME)
    return study


class _DropInterruptedTrialLogs(logging.Filter):
    """Drops Optuna's two log records of a trial that failed by KeyboardInterrupt."""

    def __init__(self):
        super().__init__()
        self.interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc_type = record.exc_info[0] if record.exc_info else None
        if (
            exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        ) or "KeyboardInterrupt" in record.getMessage():
            self.interrupted = True
            return False
        return not (self.interrupted and "failed with value" in record.getMessage())


def best_trial_settings(study, config: SweepConfig, space: dict) -> tuple[dict, TrainConfig]:
    """(model fields, TrainConfig) of the study's best trial, as it trained: the settings Optuna
    drew, the space's fixed values, and the sweep's steps, seed and evaluations."""
    fixed = {name: entry["value"] for name, entry in space.items() if "value" in entry}
    model, train_fields = search_space.split_settings({**fixed, **study.best_trial.params})
    return model, trial_train_config(config, train_fields)


def write_best_settings(study, config: SweepConfig, space: dict, path: Path) -> Path | None:
    """Write the best trial's settings (best_trial_settings) to `path` as a settings file that
    `ft train --config` reads; None (and nothing written) while no trial has finished."""
    optuna = import_optuna()
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    model, tcfg = best_trial_settings(study, config, space)
    best = study.best_trial
    header = (
        f"The best trial of the study {study.study_name!r} so far: trial {best.number}, score {best.value:.6g} "
        f"(mean held-out {config.objective} over its evaluations),\nrun folder "
        f"{best.user_attrs.get('run_dir')}. To train it again, with the same metrics for the same seed:\n"
        f"  ft train --config {path} --out NEW_FOLDER"
    )
    return config_file.write_settings(path, model, tcfg, config.data, config.eval_examples, header)


def summary_lines(study) -> list[str]:
    """A few lines on a study: trials by state and the best one."""
    optuna = import_optuna()
    states = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    lines = [
        f"study {study.study_name}: {len(study.trials)} trials ("
        + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + ")"
    ]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        lines.append(
            f"best: trial {best.number}, score {best.value:.4f}, final exact match "
            f"{best.user_attrs.get('final_exact_match')}, {best.user_attrs.get('n_params')} params, "
            f"run folder {best.user_attrs.get('run_dir')}"
        )
        lines.append("best settings: " + json.dumps(best.params, sort_keys=True))
    return lines


__all__ = [
    "BEST_NAME",
    "OBJECTIVES",
    "PRUNERS",
    "SweepConfig",
    "SweepError",
    "open_storage",
    "open_study",
    "run_sweep",
    "summary_lines",
]
