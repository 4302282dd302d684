"""Tests of the public training API (functional_transformer.runs: ft.fit, ft.load, ft.predict,
ft.evaluate): callbacks, best and last checkpoints, patience, protected and locked run folders, and
the rules of an honest resume.

Each fit() on JAX compiles its step; the tests keep to a tiny model and a few steps, and the ones
that fit more than twice are marked slow on JAX.
"""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import functional_transformer as ft
from functional_transformer import checkpoint, runs, train
from functional_transformer.data import DataError
from functional_transformer.errors import ConfigError

ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
slow_on_jax = pytest.mark.slow if ON_JAX else (lambda test: test)
TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1}
DATA = ft.task_data("reverse", n_train=200, n_valid=12, min_len=1, max_len=4)


def tcfg(**fields):
    return ft.TrainConfig(
        **(
            {
                "steps": 6,
                "batch_size": 8,
                "learning_rate": 3e-3,
                "warmup_steps": 2,
                "log_every": 1,
                "eval_every": 3,
                "save_every": 3,
                "grad_method": "vjp",
            }
            | fields
        )
    )


def quiet_fit(*args, **kwargs):
    return ft.fit(*args, progress=False, verbose=False, **kwargs)


def params_equal(a, b) -> bool:
    fa, fb = dict(ft.backend.tree_items(a)), dict(ft.backend.tree_items(b))
    return fa.keys() == fb.keys() and all(
        np.array_equal(ft.backend.to_numpy(fa[k]), ft.backend.to_numpy(fb[k])) for k in fa
    )


# ---------------------------------------------------------------------------------------------
# fit, load, predict, evaluate


def test_fit_in_memory_writes_nothing_and_calls_back_every_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    result = quiet_fit(TINY, tcfg(), DATA, callbacks=[lambda step, record: seen.append((step, record["split"]))])
    assert list(tmp_path.iterdir()) == []
    assert result.stopped == "finished" and result.step == 6 and result.out_dir is None and result.path is None
    assert seen == [
        (1, "train"),
        (2, "train"),
        (3, "train"),
        (3, "valid"),
        (4, "train"),
        (5, "train"),
        (6, "train"),
        (6, "valid"),
    ]
    assert [(r["step"], r["split"]) for r in result.history] == seen
    valid = [r["exact_match"] for r in result.history if r["split"] == "valid"]
    assert result.best_exact_match == max(valid)
    assert result.cfg.d_model == 16 and result.cfg.src_vocab_size == result.tokenizer.vocab_size


def test_a_callback_that_returns_true_stops_after_that_step(tmp_path):
    result = quiet_fit(TINY, tcfg(), DATA, out_dir=tmp_path / "run", callbacks=[lambda step, record: step == 2])
    assert result.stopped == "callback" and result.step == 2
    assert checkpoint.load(tmp_path / "run", ft.backend).state["step"] == 2  # saved as at the end


def test_patience_stops_after_evaluations_without_improvement(tmp_path):
    # A learning rate that changes nothing: the exact match never improves after the first evaluation.
    result = quiet_fit(
        TINY,
        tcfg(steps=20, eval_every=2, patience=2, schedule="constant", learning_rate=1e-12),
        DATA,
        out_dir=tmp_path / "run",
    )
    assert result.stopped == "patience"
    assert result.step == 6  # evaluations at 2 (best), 4 and 6 (two without improvement)
    assert result.best_step == 2


def test_best_and_last_checkpoints_and_load_predict_evaluate(tmp_path):
    out = tmp_path / "run"
    result = quiet_fit(TINY, tcfg(steps=40, eval_every=10, save_every=40, learning_rate=1e-2), DATA, out_dir=out)
    best, last = checkpoint.load(out / checkpoint.BEST_NAME, ft.backend), checkpoint.load(out, ft.backend)
    assert int(ft.backend.to_numpy(last.state["step"])) == 40
    assert int(ft.backend.to_numpy(best.state["step"])) == result.best_step
    assert best.progress["best_exact_match"] == result.best_exact_match
    # ft.load reads the best checkpoint by default, the last on request.
    assert ft.load(out).step == result.best_step and ft.load(out, "last").step == 40
    model = ft.load(out, "last")
    assert params_equal(model.params, result.params)
    sources = ["ab", "dcb"]
    assert ft.predict(model, sources) == ft.predict(result, sources)
    metrics = ft.evaluate(model, [("ab", "ba")])
    assert metrics["n_examples"] == 1 and 0.0 <= metrics["exact_match"] <= 1.0


def test_fit_takes_pairs_and_a_dict_train_config():
    pairs = [("ab", "ba"), ("abc", "cba"), ("ca", "ac"), ("bca", "acb")]
    result = quiet_fit(TINY, {"steps": 2, "batch_size": 2, "eval_every": 2}, (pairs, pairs[:1]))
    assert result.step == 2 and result.tokenizer.chars == ("a", "b", "c")


def test_model_settings_that_follow_from_the_data_are_refused():
    with pytest.raises(ValueError, match=r"\['src_vocab_size'\] follow from the data"):
        quiet_fit({"src_vocab_size": 5}, tcfg(), DATA)
    wrong = ft.TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=16, n_heads=2, d_ff=32, max_len=16)
    with pytest.raises(ValueError, match="the model's src_vocab_size is 5 but the data's tokenizer needs 30"):
        quiet_fit(wrong, tcfg(), DATA)
    with pytest.raises(DataError, match="unknown task 'nope'"):
        quiet_fit(TINY, tcfg(), "nope")


# ---------------------------------------------------------------------------------------------
# Run folders


@slow_on_jax
def test_a_folder_with_a_run_is_never_overwritten_silently(tmp_path, capsys):
    out = tmp_path / "run"
    first = quiet_fit(TINY, tcfg(), DATA, out_dir=out)
    before = (out / checkpoint.CHECKPOINT_NAME).read_bytes()
    with pytest.raises(
        ft.RunFolderError,
        match=r"already holds a run at step 6 of 6, best held-out exact_match \d\.\d{4} at step \d+.* "
        r"Pass --resume .* --overwrite",
    ):
        quiet_fit(TINY, tcfg(steps=3), DATA, out_dir=out)
    assert (out / checkpoint.CHECKPOINT_NAME).read_bytes() == before
    # --overwrite replaces it, and says so.
    capsys.readouterr()
    second = ft.fit(TINY, tcfg(steps=3), DATA, out_dir=out, overwrite=True, progress=False)
    assert f"--overwrite: replacing {out}, which held a run at step 6 of 6" in capsys.readouterr().err
    assert second.step == 3 and checkpoint.load(out, ft.backend).train_config.steps == 3
    assert [r["step"] for r in second.history if r["split"] == "train"] == [1, 2, 3]
    assert first.step == 6


def test_a_locked_folder_is_refused_at_once(tmp_path):
    out = tmp_path / "run"
    with runs.locked(out):
        with pytest.raises(ft.RunFolderError, match=rf"{out} is in use by process {os.getpid()}"):
            quiet_fit(TINY, tcfg(), DATA, out_dir=out)
    assert not (out / checkpoint.CHECKPOINT_NAME).exists()


def test_the_lock_of_a_killed_process_is_released(tmp_path):
    """A process that holds the lock and is SIGKILLed leaves no stuck lock: the OS drops it."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from functional_transformer import runs
        with runs.locked(Path({str(out)!r})):
            print("locked", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "FT_BACKEND": "numpy"},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ft.RunFolderError, match=rf"in use by process {holder.pid}"):
            quiet_fit(TINY, tcfg(), DATA, out_dir=out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert quiet_fit(TINY, tcfg(steps=2), DATA, out_dir=out).step == 2


# ---------------------------------------------------------------------------------------------
# Honest resume


def saved(**fields):
    return ft.TrainConfig(**({"steps": 100, "warmup_steps": 10} | fields))


def test_resume_keeps_the_runs_settings_and_names_a_conflict():
    tc = saved()
    assert runs.resumed_train_config(tc, {}, 40, extend=False) == tc
    assert runs.resumed_train_config(tc, {"learning_rate": tc.learning_rate, "steps": 100}, 40, False) == tc
    changed = runs.resumed_train_config(
        tc, {"eval_every": 7, "patience": 3, "log_every": 1, "save_every": 9}, 40, False
    )
    assert (changed.eval_every, changed.patience, changed.log_every, changed.save_every) == (7, 3, 1, 9)
    with pytest.raises(
        ft.RunFolderError,
        match=r"learning_rate=0\.01 conflicts with the resumed run's "
        r"learning_rate=0\.002",
    ):
        runs.resumed_train_config(tc, {"learning_rate": 0.01}, 40, False)
    with pytest.raises(ft.RunFolderError, match="would cut this run's schedule of 100 steps short"):
        runs.resumed_train_config(tc, {"steps": 50}, 40, False)
    with pytest.raises(ft.RunFolderError, match="planned for 100 steps .* pass --extend"):
        runs.resumed_train_config(tc, {"steps": 200}, 100, False)
    with pytest.raises(ft.RunFolderError, match="at step 40 of 100: finish it first"):
        runs.resumed_train_config(tc, {"steps": 200}, 40, True)


def test_extending_a_cosine_run_restarts_its_schedule_and_other_schedules_continue():
    cfg = ft.TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, d_model=16, n_heads=2, d_ff=32)
    cosine = runs.resumed_train_config(saved(), {"steps": 150}, 100, extend=True)
    assert (cosine.steps, cosine.schedule_start) == (150, 100)
    lr = train.make_schedule(cosine, cfg)
    assert float(lr(100)) == 0.0  # a warm restart at the old end: warmup from 0 ...
    assert float(lr(110)) == pytest.approx(cosine.learning_rate)  # ... to the peak ...
    assert float(lr(150)) == pytest.approx(0.0, abs=1e-12)  # ... and cosine decay to 0 at the new end
    constant = runs.resumed_train_config(saved(schedule="constant"), {"steps": 150}, 100, extend=True)
    assert constant.schedule_start == 0
    assert float(train.make_schedule(constant, cfg)(120)) == pytest.approx(constant.learning_rate)


@slow_on_jax
def test_resume_through_fit_continues_and_refuses_a_conflict(tmp_path):
    out = tmp_path / "run"
    quiet_fit(TINY, tcfg(steps=4), DATA, out_dir=out)
    with pytest.raises(ft.RunFolderError, match=r"d_model=32 conflicts with the resumed run's model d_model=16"):
        quiet_fit({"d_model": 32}, None, None, out_dir=out, resume=True)
    with pytest.raises(ft.RunFolderError, match=r"n_train=10 conflicts with the resumed run's data n_train=200"):
        quiet_fit(None, None, {"n_train": 10}, out_dir=out, resume=True)
    assert quiet_fit(out_dir=out, resume=True).step == 4  # finished: nothing to do (data defaults to "reverse")
    extended = quiet_fit(None, {"steps": 6}, None, out_dir=out, resume=True, extend=True)
    assert extended.step == 6 and extended.train_config.schedule_start == 4
    assert [r["step"] for r in extended.history if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_resume_of_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ft.RunFolderError, match="does not exist: there is no run to resume"):
        quiet_fit(out_dir=tmp_path / "none", resume=True)
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        quiet_fit(out_dir=tmp_path, resume=True, overwrite=True)


# ---------------------------------------------------------------------------------------------
# Found in review: resume with the default data, data that does not apply, a cut-short log, errors
# mid-run, the progress line after a resume


def test_resume_of_another_task_with_the_default_data(tmp_path):
    out = tmp_path / "run"
    quiet_fit(TINY, tcfg(steps=2, eval_every=2), ft.task_data("sort", n_train=100, n_valid=4, max_len=3), out_dir=out)
    assert quiet_fit(out_dir=out, resume=True).step == 2
    with pytest.raises(ft.RunFolderError, match=r"task='reverse' conflicts with the resumed run's data task='sort'"):
        quiet_fit(data="reverse", out_dir=out, resume=True)
    with pytest.raises(ft.RunFolderError, match=r"train='x.tsv' does not apply to the resumed run's data"):
        quiet_fit(data={"train": "x.tsv"}, out_dir=out, resume=True)
    with pytest.raises(ft.RunFolderError, match=r"trained on the task 'sort', not on the 1 \+ 1 pairs given"):
        quiet_fit(data=([("a", "a")], [("b", "b")]), out_dir=out, resume=True)


def test_a_cut_short_last_line_of_the_log_does_not_block_resume(tmp_path):
    out = tmp_path / "run"
    quiet_fit(TINY, tcfg(steps=4, eval_every=4, save_every=2), DATA, out_dir=out)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "spl')  # a write cut short by a kill or a full disk
    assert [r["step"] for r in runs.read_history(out)][-1] == 4
    (out / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not a JSON record"):
        runs.read_history(out)


def test_an_error_mid_run_keeps_the_steps_done_so_far(tmp_path):
    def fails_at_step_3(step, record):
        if step == 3:
            raise RuntimeError("a callback's own bug")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="a callback's own bug"):
        quiet_fit(TINY, tcfg(steps=10, save_every=100, eval_every=100), DATA, out_dir=out, callbacks=[fails_at_step_3])
    assert int(ft.backend.to_numpy(checkpoint.load(out, ft.backend).state["step"])) == 3


def test_the_eta_of_a_resumed_run_uses_this_sessions_pace():
    line = train._progress_line(1050, 2000, 0.1, 0.9, 1000.0, elapsed=10.0, start_step=1000)
    assert line.endswith("eta 0:03:10")  # 50 steps in 10 s, 950 to go
    assert train._progress_line(50, 100, 0.1, 0.9, 1.0, elapsed=10.0).endswith("eta 0:00:10")


def test_a_token_budget_below_the_longest_example_leaves_the_folder_untouched(tmp_path):
    """--max-tokens that cannot hold one row is refused before the loop writes anything: no metrics,
    no step-0 checkpoint that a retry would then have to --overwrite."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="raise it to at least"):
        quiet_fit(TINY, tcfg(max_tokens=2), DATA, out_dir=out)
    assert not (out / "checkpoint.safetensors").exists() and not (out / "metrics.jsonl").exists()
    quiet_fit(TINY, tcfg(steps=1), DATA, out_dir=out)  # the retry needs no --overwrite
