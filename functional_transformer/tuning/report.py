"""`ft sweep-report`: a study's best trials as a table and its plots as PNG files.

Writes into the output folder:
- best_trials.md: the best trials (Markdown table, also printed) and trials.csv: every trial;
- optimization_history.png, param_importances.png, intermediate_values.png: Optuna's own
  matplotlib plots (importances need two finished trials that differ);
- exact_match_vs_lr_and_size.png: the score and final exact match against the learning rate and
  the parameter count, one point per finished trial.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from .sweep import SETTINGS_ATTR, SweepError, import_optuna

COLUMNS = ("number", "state", "value", "final_exact_match", "steps_to_target", "n_params", "seconds")


def _trial_row(trial) -> dict:
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "final_exact_match": attrs.get("final_exact_match"),
        "steps_to_target": attrs.get("steps_to_target"),
        "n_params": attrs.get("n_params"),
        "seconds": attrs.get("seconds"),
        **{f"param:{k}": v for k, v in sorted(trial.params.items())},
        "fail_reason": attrs.get("fail_reason", ""),
    }


def _metric(study) -> str:
    """The held-out metric that scores the study's trials (exact match for a study that does not record it)."""
    return study.user_attrs.get(SETTINGS_ATTR, {}).get("metric", "exact_match")


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def best_trials_table(study, top: int = 10) -> str:
    """A Markdown table of the `top` finished trials, best first."""
    optuna = import_optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1  # best first: the loss is minimised
    done = sorted(done, key=lambda t: (sign * t.value, t.user_attrs.get("n_params") or 0))[:top]
    if not done:
        return "no finished trials yet"
    params = sorted({name for t in done for name in t.params})
    header = ["trial", "score", "final exact match", "steps to 99.5%", "params", "seconds", *params]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in done:
        row = [
            t.number,
            t.value,
            t.user_attrs.get("final_exact_match"),
            t.user_attrs.get("steps_to_target"),
            t.user_attrs.get("n_params"),
            t.user_attrs.get("seconds"),
            *(t.params.get(p) for p in params),
        ]
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines)


def write_csv(study, path: Path) -> None:
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    fields = list(dict.fromkeys(key for row in rows for key in row)) or list(COLUMNS)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _save(ax_or_axes, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax = ax_or_axes.flat[0] if hasattr(ax_or_axes, "flat") else ax_or_axes
    fig = ax.get_figure()
    fig.set_size_inches(9, 5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lr_and_size(study, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    optuna = import_optuna()
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "learning_rate" in t.params and t.user_attrs.get("n_params")
    ]
    if not done:
        return None
    fig, (ax_lr, ax_size) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, x_of, label in (
        (ax_lr, lambda t: t.params["learning_rate"], "peak learning rate"),
        (ax_size, lambda t: t.user_attrs["n_params"], "parameters"),
    ):
        xs = [x_of(t) for t in done]
        ax.scatter(xs, [t.value for t in done], label=f"score (mean {_metric(study)} over the evaluations)")
        ax.scatter(
            xs,
            [t.user_attrs.get("final_exact_match") or 0.0 for t in done],
            marker="x",
            label="final held-out exact match",
        )
        if _metric(study) in ("exact_match", "char_accuracy"):
            ax.set(ylabel="fraction", ylim=(-0.02, 1.02))
        else:  # BLEU and chrF are 0-100, the loss unbounded: the score's own scale
            ax.set(ylabel=f"score ({_metric(study)}); exact match (fraction)")
        ax.set(xscale="log", xlabel=label)
        ax.grid(alpha=0.3)
    ax_lr.legend(loc="lower right")
    fig.suptitle(f"study {study.study_name}: {len(done)} finished trials")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(study, out_dir: Path) -> list[Path]:
    """The table, the CSV and the plots of a study in out_dir; -> the files written."""
    optuna = import_optuna()
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        raise SweepError("ft sweep-report draws with matplotlib: pip install 'functional-transformer[sweep]'") from None
    from optuna.visualization import matplotlib as optuna_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    table = out_dir / "best_trials.md"
    table.write_text(
        f"# Study {study.study_name}: best trials\n\n"
        f"Objective: {study.user_attrs.get(SETTINGS_ATTR, {}).get('objective', 'see ft sweep --help')}\n\n"
        + best_trials_table(study)
        + "\n"
    )
    written.append(table)
    write_csv(study, out_dir / "trials.csv")
    written.append(out_dir / "trials.csv")
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plots = {
        "optimization_history.png": optuna_plots.plot_optimization_history,
        "intermediate_values.png": optuna_plots.plot_intermediate_values,
    }
    varied = {name for t in done for name in t.params if len({str(u.params.get(name)) for u in done}) > 1}
    if len(done) >= 2 and varied:
        plots["param_importances.png"] = optuna_plots.plot_param_importances
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, plot in plots.items():
            if done or name == "intermediate_values.png":
                written.append(_save(plot(study), out_dir / name))
    extra = plot_lr_and_size(study, out_dir / "exact_match_vs_lr_and_size.png")
    if extra:
        written.append(extra)
    return written


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) of the finished trials; {} with fewer than two."""
    optuna = import_optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as err:  # e.g. every finished trial has the same settings
        warnings.warn(f"no parameter importances: {err}", stacklevel=2)
        return {}


__all__ = ["best_trials_table", "importances", "plot_lr_and_size", "write_csv", "write_report"]
