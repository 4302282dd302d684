"""Tests of `ft sweep` / `ft sweep-report` (functional_transformer.tuning): trials recorded, pruning,
the report's files, resuming a study, two workers on one journal, bad input, and the same trial on
both backends. Optuna is an optional extra: without it these skip, except the test of the error
that says how to install it.

A tiny model and task keep every trial under a second on NumPy (a few seconds on JAX, which
compiles each trial's step).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import backends
from functional_transformer import checkpoint, cli, runs
from functional_transformer.tuning import space as search_space
from functional_transformer.tuning import sweep  # imports Optuna only when a sweep runs
from functional_transformer.tuning.space import SpaceError, load_space

REPO = Path(__file__).resolve().parent.parent
ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"

HAS_OPTUNA = importlib.util.find_spec("optuna") is not None
needs_optuna = pytest.mark.skipif(not HAS_OPTUNA, reason="Optuna is the [sweep] extra, not installed here")

SPACE_TOML = """
[learning_rate]
choices = [0.01, 1e-7]
[schedule]
value = "constant"
[warmup_steps]
value = 0
[d_model]
value = 16
[n_heads]
choices = [2, 3]
[d_ff]
value = 32
[n_encoder_layers]
value = 1
[n_decoder_layers]
value = 1
[drop_rate]
value = 0.0
[label_smoothing]
value = 0.0
[batch_size]
value = 16
[norm_first]
value = false
"""
DATA = runs.task_data("reverse", n_train=200, n_valid=30, min_len=1, max_len=2)
CONFIG = sweep.SweepConfig(data=DATA, steps=40, n_evals=4, eval_examples=30)
GOOD, BAD = {"learning_rate": 0.01, "n_heads": 2}, {"learning_rate": 1e-7, "n_heads": 2}


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(SPACE_TOML)
    return path


def enqueue(storage, space, trials):
    study = sweep.open_study("s", storage, CONFIG, space, "median")
    for params in trials:
        study.enqueue_trial(params)


def states(study):
    return [t.state.name for t in study.trials]


@needs_optuna
def test_a_sweep_records_trials_prunes_reports_and_resumes(tmp_path, space_file, capsys):
    storage, out = f"journal:{tmp_path / 'study.journal'}", tmp_path / "trials"
    space = load_space(space_file)
    # Two good trials set the median; a learning rate of 1e-7 learns nothing and is pruned.
    enqueue(storage, space, [GOOD, GOOD, BAD])
    study = sweep.run_sweep("s", storage, CONFIG, n_trials=3, out_dir=out, space=space, progress=False)
    assert states(study) == ["COMPLETE", "COMPLETE", "PRUNED"]
    good = study.trials[0]
    assert CONFIG.eval_steps == [10, 20, 30, 40]
    assert good.value == pytest.approx(sum(good.intermediate_values.values()) / CONFIG.n_evals)
    assert 0 < good.value <= 1 and good.user_attrs["n_params"] > 0
    assert good.user_attrs["final_exact_match"] == good.intermediate_values[CONFIG.n_evals]
    assert len(study.trials[2].intermediate_values) < CONFIG.n_evals  # stopped early
    # Every trial keeps its metrics; only the best (the first of two equal ones) keeps checkpoints.
    for t in study.trials:
        records = runs.read_history(out / f"trial_{t.number:04d}")
        assert records and records[-1]["step"] <= CONFIG.steps
    assert (out / "trial_0000" / "best.safetensors").exists()
    assert not list((out / "trial_0001").glob("*.safetensors")) and not list((out / "trial_0002").glob("*.safetensors"))

    # Resuming the study adds trials to it.
    again = sweep.run_sweep("s", storage, CONFIG, n_trials=1, out_dir=out, space=space, progress=False)
    assert len(again.trials) == 4 and again.trials[3].state.name in ("COMPLETE", "PRUNED", "FAIL")

    # The report: table, CSV and plots.
    capsys.readouterr()
    assert cli.main(["sweep-report", "--study", "s", "--storage", storage, "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| trial | score |") and "\n| 0 | " in printed
    # (No importances: the finished trials share their settings.)
    for name in (
        "best_trials.md",
        "trials.csv",
        "optimization_history.png",
        "intermediate_values.png",
        "exact_match_vs_lr_and_size.png",
    ):
        path = tmp_path / "report" / name
        assert path.exists() and path.stat().st_size > 100, name
    assert (tmp_path / "report" / "trials.csv").read_text().count("\n") == 5  # header + 4 trials


@needs_optuna
def test_settings_the_model_refuses_are_a_failed_trial_with_the_reason(tmp_path, space_file):
    storage = f"journal:{tmp_path / 'study.journal'}"
    space = load_space(space_file)
    enqueue(storage, space, [{"learning_rate": 0.01, "n_heads": 3}, GOOD])  # 16 is not divisible by 3
    study = sweep.run_sweep("s", storage, CONFIG, n_trials=2, out_dir=tmp_path / "t", space=space, progress=False)
    assert states(study) == ["FAIL", "COMPLETE"]
    assert "d_model (16) must be divisible by n_heads (3)" in study.trials[0].user_attrs["fail_reason"]


@needs_optuna
def test_two_workers_on_one_journal_share_the_study(tmp_path, space_file):
    """Two `ft sweep` processes on one journal file: every trial asked for is recorded once."""
    storage = f"journal:{tmp_path / 'study.journal'}"
    argv = [
        sys.executable,
        "-m",
        "functional_transformer",
        "sweep",
        "--task",
        "reverse",
        "--n-train",
        "200",
        "--n-valid",
        "30",
        "--min-len",
        "1",
        "--max-len",
        "2",
        "--steps",
        "20",
        "--evals",
        "2",
        "--eval-examples",
        "30",
        "--space",
        str(space_file),
        "--study",
        "shared",
        "--storage",
        storage,
        "--out",
        str(tmp_path / "trials"),
        "--pruner",
        "none",
        "--trials",
        "3",
    ]
    env = dict(os.environ, FT_BACKEND="numpy")  # the storage is what is tested; NumPy starts fastest
    workers = [
        subprocess.Popen(
            [*argv, "--sampler-seed", str(seed)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    try:
        outputs = [w.communicate(timeout=240) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    import optuna

    study = optuna.load_study(study_name="shared", storage=sweep.open_storage(storage))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(6))  # 3 + 3, none lost, none twice
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in study.trials)
    assert len({t.user_attrs.get("run_dir") for t in study.trials if t.state.name == "COMPLETE"}) == sum(
        t.state.name == "COMPLETE" for t in study.trials
    )


@needs_optuna
@pytest.mark.skipif(not ON_JAX, reason="compares NumPy with JAX; runs once, in the JAX suite")
def test_the_same_trials_give_the_same_results_on_both_backends(tmp_path, space_file):
    import backends

    space = load_space(space_file)
    results = {}
    for name in ("numpy", "jax"):
        storage = f"journal:{tmp_path / name / 'study.journal'}"
        enqueue(storage, space, [GOOD, {"learning_rate": 0.01, "n_heads": 2}])
        study = sweep.run_sweep(
            "s",
            storage,
            CONFIG,
            n_trials=2,
            out_dir=tmp_path / name / "t",
            space=space,
            pruner="none",
            backend=backends.get_backend(name),
            progress=False,
        )
        losses = [
            [r["loss"] for r in runs.read_history(tmp_path / name / "t" / f"trial_{t.number:04d}")]
            for t in study.trials
        ]
        results[name] = ([t.params for t in study.trials], [t.intermediate_values for t in study.trials], losses)
    assert results["numpy"][0] == results["jax"][0]
    assert results["numpy"][1] == results["jax"][1]  # the same exact matches at every evaluation
    for a, b in zip(results["numpy"][2], results["jax"][2]):
        # One trajectory in float32 on both; 40 steps at learning rate 1e-2 let rounding grow to
        # about 1e-3 (test_training's trajectory test allows the same over its longer run).
        assert a[:2] == pytest.approx(b[:2], rel=1e-4)  # the records at steps 10 (train, then held out)
        assert a == pytest.approx(b, rel=2e-3)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_a_bad_space_file_is_a_clear_error(tmp_path):
    cases = {
        "[dmodel]\nchoices = [16]\n": "unknown setting 'dmodel'",
        "[d_model]\nlow = 64\nhigh = 32\n": "d_model has an empty range: low 64 > high 32",
        "[d_model]\nchoices = []\n": "d_model has no choices",
        "[learning_rate]\nlow = 0.0\nhigh = 0.1\nlog = true\n": "log scale, so low must be positive",
        "[d_model]\nlow = 1\n": "needs exactly one of",
        "[d_model]\nchoice = [1]\n": "unknown keys ['choice']",
        "d_model = [": "is not valid TOML",
    }
    for text, message in cases.items():
        path = tmp_path / "space.toml"
        path.write_text(text)
        with pytest.raises(SpaceError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_space(path)
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "missing.toml")


def test_a_trial_is_scored_over_every_evaluation_it_makes():
    uneven = sweep.SweepConfig(data=DATA, steps=200, n_evals=6)
    assert uneven.eval_every == 33 and uneven.eval_steps == [33, 66, 99, 132, 165, 198, 200]


def test_the_default_space_is_valid_and_every_setting_is_known():
    space = load_space(None)
    assert set(space) <= set(search_space.SETTINGS) and "learning_rate" in space and "d_model" in space


@needs_optuna
def test_a_study_with_other_settings_is_refused_without_losing_a_trial(tmp_path, space_file):
    storage = f"journal:{tmp_path / 'study.journal'}"
    space = load_space(space_file)
    enqueue(storage, space, [GOOD])
    sweep.run_sweep(
        "s", storage, CONFIG, n_trials=1, out_dir=tmp_path / "t", space=space, pruner="none", progress=False
    )
    other = dict(space, d_model={"value": 32})
    with pytest.raises(sweep.SweepError, match=r"was made with other settings \(space: "):
        sweep.run_sweep("s", storage, CONFIG, n_trials=1, out_dir=tmp_path / "t", space=other, progress=False)
    with pytest.raises(sweep.SweepError, match="steps: the study has 40, this sweep 80"):
        sweep.run_sweep(
            "s",
            storage,
            sweep.SweepConfig(data=DATA, steps=80, n_evals=4, eval_examples=30),
            n_trials=1,
            out_dir=tmp_path / "t",
            space=space,
            progress=False,
        )
    import optuna

    study = optuna.load_study(study_name="s", storage=sweep.open_storage(storage))
    assert states(study) == ["COMPLETE"]


@needs_optuna
def test_cli_errors_are_one_line(tmp_path, space_file, capsys):
    base = ["sweep", "--task", "reverse", "--trials", "1", "--out", str(tmp_path / "t")]
    cases = [
        ([*base, "--storage", "sqlite:////proc/no/such/dir/s.db"], "cannot open the storage"),
        ([*base, "--storage", "postgresql://127.0.0.1:1/nowhere"], "cannot open the storage"),
        ([*base, "--space", str(tmp_path / "missing.toml")], "does not exist"),
        (["sweep", "--data", "x.tsv", "--n-train", "5", "--out", str(tmp_path / "t")], "size the built-in tasks"),
        (
            ["sweep-report", "--storage", f"journal:{tmp_path / 'j'}", "--study", "none", "--out", str(tmp_path)],
            "there is no study 'none'",
        ),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("ft sweep") and message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_without_optuna_ft_sweep_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['optuna'] = None\n"
        "from functional_transformer import cli\n"
        f"sys.exit(cli.main(['sweep', '--trials', '1', '--out', {str(tmp_path)!r}]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, FT_BACKEND="numpy"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "ft sweep: error: ft sweep needs Optuna, an optional extra: pip install "
        "'functional-transformer[sweep]' (or, in a checkout, uv sync --extra sweep)"
    )


@needs_optuna
def test_sweep_settings_are_recorded_in_the_study(tmp_path, space_file):
    storage = f"journal:{tmp_path / 'study.journal'}"
    study = sweep.open_study("s", storage, CONFIG, load_space(space_file), "median")
    settings = study.user_attrs[sweep.SETTINGS_ATTR]
    assert json.loads(settings["data"]) == DATA and settings["steps"] == "40"


@needs_optuna
def test_ctrl_c_stops_the_sweep_and_keeps_the_finished_trials(tmp_path, space_file, monkeypatch, capsys):
    """A trial cut short by Ctrl-C is no result: it is marked failed and the sweep stops (exit 130)."""
    storage = f"journal:{tmp_path / 'study.journal'}"
    space = load_space(space_file)
    enqueue(storage, space, [GOOD, GOOD, GOOD])
    real_fit, calls = runs.fit, []

    def fit_interrupted_the_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            kwargs["callbacks"] = [*kwargs["callbacks"], lambda step, record: _raise(KeyboardInterrupt)]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runs, "fit", fit_interrupted_the_second_time)
    argv = [
        "sweep",
        "--task",
        "reverse",
        "--n-train",
        "200",
        "--n-valid",
        "30",
        "--min-len",
        "1",
        "--max-len",
        "2",
        "--steps",
        "40",
        "--evals",
        "4",
        "--eval-examples",
        "30",
        "--space",
        str(space_file),
        "--study",
        "s",
        "--storage",
        storage,
        "--out",
        str(tmp_path / "t"),
        "--trials",
        "3",
    ]
    assert cli.main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    import optuna

    study = optuna.load_study(study_name="s", storage=sweep.open_storage(storage))
    assert states(study)[:2] == ["COMPLETE", "FAIL"] and len(study.trials) == 3  # the third never ran


def _raise(error):
    raise error


@needs_optuna
def test_an_int_range_on_a_log_scale_draws_ints():
    import optuna

    trial = optuna.create_study().ask()
    values = search_space.suggest(trial, {"d_ff": {"low": 64, "high": 512, "log": True}})
    assert isinstance(values["d_ff"], int) and 64 <= values["d_ff"] <= 512


# ---------------------------------------------------------------------------------------------
# best.toml, --objective, the report's default storage


@needs_optuna
def test_best_toml_trains_the_best_trial_again_with_the_same_metrics(tmp_path, space_file, capsys):
    # Two encoder layers and one decoder layer: the separate counts travel through best.toml.
    space_file.write_text(
        SPACE_TOML.replace("[n_encoder_layers]\nvalue = 1", "[n_encoder_layers]\nvalue = 2").replace(
            "[n_heads]\nchoices = [2, 3]", "[n_heads]\nvalue = 2"
        )
    )
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--task",
        "reverse",
        "--n-train",
        "200",
        "--n-valid",
        "30",
        "--min-len",
        "1",
        "--max-len",
        "2",
        "--steps",
        "20",
        "--evals",
        "2",
        "--eval-examples",
        "20",
        "--space",
        str(space_file),
        "--study",
        "b",
        "--out",
        str(out),
        "--trials",
        "2",
        "--pruner",
        "none",
        "--objective",
        "loss",
        "--seed",
        "3",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"best settings: {out / 'best.toml'}" in printed
    import optuna

    study = optuna.load_study(study_name="b", storage=sweep.open_storage(f"journal:{out / 'study.journal'}"))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs[sweep.SETTINGS_ATTR]["metric"] == "loss"
    best = study.best_trial
    assert best.value == min(t.value for t in study.trials if t.value is not None)
    assert (
        cli.main(["train", "--config", str(out / "best.toml"), "--out", str(tmp_path / "again"), "--no-progress"]) == 0
    )
    capsys.readouterr()
    trial_records = runs.read_history(Path(best.user_attrs["run_dir"]))
    again = runs.read_history(tmp_path / "again")
    wall_clock = ("time_s", "tokens_per_s")
    assert [{k: v for k, v in r.items() if k not in wall_clock} for r in again] == [
        {k: v for k, v in r.items() if k not in wall_clock} for r in trial_records
    ]
    losses = [r["loss"] for r in again if r["split"] == "valid"]
    assert sum(losses) / len(losses) == pytest.approx(best.value, rel=1e-12)
    loaded = checkpoint.load(tmp_path / "again", backends.get_backend("numpy"))
    assert (loaded.cfg.n_encoder_layers, loaded.cfg.n_decoder_layers) == (2, 1)
    assert loaded.train_config.best_by == "loss" and loaded.data_spec["seed"] == 3

    # ft sweep-report finds the study in ft sweep's default storage from --out; lowest loss first.
    assert cli.main(["sweep-report", "--study", "b", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[2].startswith(f"| {best.number} | ")
    assert (out / "best_trials.md").exists()
    # Another objective is another study.
    with pytest.raises(sweep.SweepError, match="metric: the study has loss, this sweep exact_match"):
        sweep.open_study(
            "b",
            f"journal:{out / 'study.journal'}",
            sweep.SweepConfig(data=DATA, steps=20, n_evals=2, eval_examples=20, seed=3),
            load_space(space_file),
            "none",
        )


@needs_optuna
def test_objective_and_report_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # as if the [text] extra were not installed
    assert cli.main(["sweep", "--task", "reverse", "--objective", "bleu", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ft sweep: error: --objective bleu needs sacreBLEU") and err.count("\n") == 1
    assert cli.main(["sweep-report", "--study", "x", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "study.journal (ft sweep's default storage for --out" in err and err.count("\n") == 1
    with pytest.raises(sweep.SweepError, match="unknown objective 'bleu4'"):
        sweep.SweepConfig(data=DATA, objective="bleu4")
