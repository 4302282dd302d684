"""Tests of the command line (functional_transformer.cli): ft train / eval / predict, through
cli.main([...]) in this process (on the FT_BACKEND backend) and once through `python -m`.

One tiny model is trained once per module (`trained`) and shared by the eval, predict and resume
tests; each test that writes copies it first.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from functional_transformer import checkpoint, cli
from functional_transformer import checkpoint_format as cf
from functional_transformer.backend_choice import default_backend
from functional_transformer.data import TASKS, DataError, make_task_data
from functional_transformer.inference import UnknownSymbolError, evaluate, predict

ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
slow_on_jax = pytest.mark.slow if ON_JAX else (lambda test: test)
REPO = Path(__file__).resolve().parent.parent
TINY = ["--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--layers", "1", "--no-progress"]
TRAIN_FLAGS = [
    "--arch",
    "--task",
    "--data",
    "--valid",
    "--out",
    "--resume",
    "--min-len",
    "--max-len",
    "--truncate-long",
    "--n-train",
    "--n-valid",
    "--max-tokens",
    "--d-model",
    "--n-heads",
    "--d-ff",
    "--layers",
    "--drop-rate",
    "--norm-first",
    "--tie-embeddings",
    "--preset",
    "--dtype",
    "--compute-dtype",
    "--attention-kernel",
    "--steps",
    "--batch-size",
    "--learning-rate",
    "--warmup-steps",
    "--schedule",
    "--optimizer",
    "--weight-decay",
    "--clip-norm",
    "--label-smoothing",
    "--seed",
    "--log-every",
    "--eval-every",
    "--save-every",
    "--grad-method",
    "--no-progress",
    "--overwrite",
    "--extend",
    "--patience",
    "--devices",
    "--shard-params",
    "--coordinator",
    "--num-processes",
    "--process-id",
    "--tokenizer",
    "--vocab-size",
    "--joint-vocab",
    "--best-by",
    "--config",
    "--eval-examples",
    "--encoder-layers",
    "--decoder-layers",
    "--no-norm-first",
    "--no-tie-embeddings",
    "--no-truncate-long",
    "--no-joint-vocab",
]
EVAL_FLAGS = [
    "--checkpoint",
    "--which",
    "--task",
    "--data",
    "--n",
    "--beam",
    "--seed",
    "--allow-unknown",
    "--output",
    "--batch-size",
]
PREDICT_FLAGS = [
    "--checkpoint",
    "--which",
    "--beam",
    "inputs",
    "--allow-unknown",
    "--input",
    "--output",
    "--batch-size",
]
# Training options, progress lines (tests/test_cli_edges.py tests them).
TRAIN_FLAGS = [*TRAIN_FLAGS, "--accumulate", "--tensorboard"]
EVAL_FLAGS = [*EVAL_FLAGS, "--no-progress"]
PREDICT_FLAGS = [*PREDICT_FLAGS, "--no-progress"]


def run_help(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def load_step(path):
    return int(np.asarray(default_backend().to_numpy(checkpoint.load(path, default_backend()).state["step"])))


# ---------------------------------------------------------------------------------------------
# --help


def test_top_level_help_lists_the_commands(capsys):
    out = run_help(capsys, ["--help"])
    for word in ("train", "eval", "predict", "FT_BACKEND", "--debug", "traceback"):
        assert word in out


@pytest.mark.parametrize("command, flags", [("train", TRAIN_FLAGS), ("eval", EVAL_FLAGS), ("predict", PREDICT_FLAGS)])
def test_subcommand_help_mentions_every_flag(capsys, command, flags):
    out = run_help(capsys, [command, "--help"])
    for flag in flags:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out), f"{flag} missing from ft {command} --help"
    # And the parser has no flag that this list forgets.
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    options = {s for a in sub._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    positionals = {a.dest for a in sub._actions if not a.option_strings}
    assert options | positionals == set(flags)


def test_train_help_shows_the_task_choices(capsys):
    out = run_help(capsys, ["train", "--help"])
    for task in TASKS:
        assert task in out


def test_python_dash_m_help_works():
    env = dict(os.environ, FT_BACKEND="numpy")
    proc = subprocess.run(
        [sys.executable, "-m", "functional_transformer", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "predict" in proc.stdout and proc.stdout.startswith("usage: ft")


def test_bad_arguments_exit_2(capsys):
    for argv in (
        [],
        ["train", "--task", "no-such-task"],
        ["eval"],
        ["predict", "--checkpoint", "x"],
        ["train", "--task", "reverse", "--data", "x.tsv"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2, argv
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# train, eval, predict on one tiny run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = [
        "train",
        "--task",
        "reverse",
        "--steps",
        "20",
        "--n-train",
        "200",
        "--n-valid",
        "20",
        "--max-len",
        "5",
        "--out",
        str(out),
        "--eval-every",
        "20",
        *TINY,
    ]
    return out, cli.main(argv)


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the module's trained run folder, for a test that changes it."""
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


def test_train_returns_0_and_writes_the_run(trained, capsys):
    out, code = trained
    assert code == 0
    assert (out / checkpoint.CHECKPOINT_NAME).exists()
    assert (out / "metrics.jsonl").exists()
    assert load_step(out) == 20
    loaded = checkpoint.load(out, default_backend())
    assert loaded.data_spec == {
        "kind": "task",
        "task": "reverse",
        "n_train": 200,
        "n_valid": 20,
        "min_len": 1,
        "max_len": 5,
        "seed": 0,
    }
    cfg = loaded.cfg
    assert (cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.n_encoder_layers, cfg.n_decoder_layers) == (16, 2, 32, 1, 1)
    assert cfg.max_len == 8  # the longest sequence (5 + eos + 1), rounded up to a multiple of 8
    assert loaded.train_config.steps == 20 and loaded.train_config.eval_every == 20


@slow_on_jax
def test_train_prints_a_summary(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--task",
            "reverse",
            "--steps",
            "2",
            "--n-train",
            "50",
            "--n-valid",
            "5",
            "--max-len",
            "3",
            "--out",
            str(tmp_path),
            "--batch-size",
            "8",
            *TINY,
        ]
    )
    assert code == 0
    out, err = capsys.readouterr()
    assert re.search(r"^finished at step 2 in [\d.]+ s; checkpoint .*checkpoint\.safetensors$", out, re.M)
    assert re.search(r"^held-out exact_match: \d\.\d{4}$", out, re.M)
    assert "backend " + default_backend().name in err
    assert "[" not in err  # --no-progress: no progress bar


def test_eval_ends_with_exact_match(trained, capsys):
    out_dir, _ = trained
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = re.fullmatch(r"exact_match: (\S+)", lines[-1])
    assert match, lines
    assert 0.0 <= float(match.group(1)) <= 1.0
    assert "n_examples: 20" in lines  # the run's own held-out set
    for name in ("loss", "token_accuracy", "char_accuracy"):
        assert any(line.startswith(f"{name}: ") for line in lines)


@slow_on_jax  # new batch shapes: JAX compiles the evaluation again
def test_eval_on_fresh_task_strings_and_tsv(trained, tmp_path, capsys):
    out_dir, _ = trained
    capsys.readouterr()
    assert (
        cli.main(["eval", "--checkpoint", str(out_dir / checkpoint.CHECKPOINT_NAME), "--task", "reverse", "--n", "7"])
        == 0
    )
    n_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("n_examples: "))
    assert 1 <= int(n_line.split()[1]) <= 7  # at most --n (strings seen in training may be left out)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("abc\tcba\nxy\tyx\n")
    assert cli.main(["eval", "--checkpoint", str(out_dir), "--data", str(tsv)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "n_examples: 2" in lines and lines[-1].startswith("exact_match: ")


def test_predict_prints_one_line_per_input(trained, capsys):
    out_dir, _ = trained
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(out_dir), "apple", "banana"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    loaded = checkpoint.load(out_dir, default_backend())
    assert lines == predict(loaded.state["params"], loaded.cfg, loaded.tokenizer, ["apple", "banana"])


@slow_on_jax  # two more batch shapes to compile
def test_evaluate_and_predict_do_not_depend_on_batch_size(trained):
    """A batch size of 6 splits the 20 held-out pairs into 4 batches, the last filled up with rows
    that have no targets (iterate_batches' fill_last); one batch of 20 has no fill rows."""
    out_dir, _ = trained
    loaded = checkpoint.load(out_dir, default_backend())
    params, cfg, tokenizer = loaded.state["params"], loaded.cfg, loaded.tokenizer
    pairs = make_task_data("reverse", n_train=0, n_valid=20, min_len=1, max_len=5, seed=3)[1]
    small, whole = (evaluate(params, cfg, tokenizer, pairs, batch_size=b) for b in (6, 64))
    assert small["exact_match"] == whole["exact_match"] and small["char_accuracy"] == whole["char_accuracy"]
    assert small["n_examples"] == whole["n_examples"] == 20
    np.testing.assert_allclose(small["loss"], whole["loss"], rtol=1e-5)
    np.testing.assert_allclose(small["token_accuracy"], whole["token_accuracy"], rtol=1e-6)
    sources = [s for s, _ in pairs]
    assert predict(params, cfg, tokenizer, sources, batch_size=6) == predict(params, cfg, tokenizer, sources)


def test_predict_with_a_source_longer_than_max_len_exits_2(trained, capsys):
    out_dir, _ = trained
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(out_dir), "a" * 20]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ft predict: error:") and "max_len=8" in err


# ---------------------------------------------------------------------------------------------
# Symbols outside the vocabulary: refused unless --allow-unknown / allow_unknown=True

UNKNOWN_MESSAGE = (
    "'!', 'A' are not in this model's vocabulary (it knows: a-z); pass --allow-unknown "
    "(allow_unknown=True in Python) to map them to the unknown token"
)


def test_predict_refuses_unknown_symbols(trained):
    out_dir, _ = trained
    loaded = checkpoint.load(out_dir, default_backend())
    with pytest.raises(UnknownSymbolError) as info:
        predict(loaded.state["params"], loaded.cfg, loaded.tokenizer, ["banana", "Apple!"])
    assert isinstance(info.value, DataError)
    assert info.value.symbols == ["!", "A"]
    assert str(info.value) == UNKNOWN_MESSAGE


def test_predict_with_allow_unknown_reads_them_as_the_unknown_token(trained):
    out_dir, _ = trained
    loaded = checkpoint.load(out_dir, default_backend())
    params, cfg, tokenizer = loaded.state["params"], loaded.cfg, loaded.tokenizer
    # U+FFFD is outside the vocabulary too: both inputs encode to the same ids.
    got = predict(params, cfg, tokenizer, ["Apple!", "banana"], allow_unknown=True)
    assert got == predict(params, cfg, tokenizer, ["\ufffdpple\ufffd", "banana"], allow_unknown=True)
    assert len(got) == 2


def held_out_with_unknowns(out_dir):
    """The run's held-out pairs (whose shapes JAX has compiled) with an 'A' in the first target and a
    '!' in the second source."""
    pairs = cli.load_pairs(checkpoint.load(out_dir, default_backend()).data_spec)[1]
    (s0, t0), (s1, t1) = pairs[:2]
    return [(s0, "A" + t0[1:]), ("!" + s1[1:], t1), *pairs[2:]]


def test_evaluate_refuses_unknown_symbols_in_sources_and_targets(trained):
    out_dir, _ = trained
    loaded = checkpoint.load(out_dir, default_backend())
    pairs = held_out_with_unknowns(out_dir)
    with pytest.raises(UnknownSymbolError) as info:
        evaluate(loaded.state["params"], loaded.cfg, loaded.tokenizer, pairs)
    assert info.value.symbols == ["!", "A"]
    assert str(info.value).startswith(
        "'!', 'A' (in 2 of 20 examples) are not in this model's vocabulary (it knows: a-z); pass --allow-unknown"
    )
    for pair in pairs[:2]:  # one unknown symbol, in the target or in the source, is enough
        with pytest.raises(UnknownSymbolError):
            evaluate(loaded.state["params"], loaded.cfg, loaded.tokenizer, [pair])


def test_evaluate_with_allow_unknown_counts_the_examples(trained):
    out_dir, _ = trained
    loaded = checkpoint.load(out_dir, default_backend())
    params, cfg, tokenizer = loaded.state["params"], loaded.cfg, loaded.tokenizer
    pairs = held_out_with_unknowns(out_dir)
    result = evaluate(params, cfg, tokenizer, pairs, allow_unknown=True)
    assert result["n_with_unknown"] == 2 and result["n_examples"] == 20
    clean = evaluate(params, cfg, tokenizer, cli.load_pairs(loaded.data_spec)[1])
    assert clean["n_with_unknown"] == 0
    # The target "A..." can never be matched: the model cannot write an 'A'.
    assert result["exact_match"] <= clean["exact_match"]


def test_cli_predict_and_eval_refuse_unknown_symbols_in_one_line(trained, tmp_path, capsys):
    out_dir, _ = trained
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in held_out_with_unknowns(out_dir)))
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(out_dir), "banana", "Apple!"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"ft predict: error: {UNKNOWN_MESSAGE}\n"
    assert cli.main(["eval", "--checkpoint", str(out_dir), "--data", str(tsv)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("ft eval: error: '!', 'A' (in 2 of 20 examples) are not in this model's vocabulary")


def test_cli_allow_unknown(trained, tmp_path, capsys):
    out_dir, _ = trained
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in held_out_with_unknowns(out_dir)))
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(out_dir), "--allow-unknown", "Apple!", "banana"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli.main(["eval", "--checkpoint", str(out_dir), "--data", str(tsv), "--allow-unknown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "n_examples: 20" in lines and "n_with_unknown: 2" in lines and lines[-1].startswith("exact_match: ")


# ---------------------------------------------------------------------------------------------
# Checksums: a damaged checkpoint is refused, one without checksums loads with a warning


def test_a_checkpoint_with_a_flipped_data_byte_exits_2(trained, tmp_path, capsys):
    out_dir, _ = trained
    raw = bytearray((out_dir / checkpoint.CHECKPOINT_NAME).read_bytes())
    raw[-3] ^= 0x01  # in the last tensor's data
    bad = tmp_path / checkpoint.CHECKPOINT_NAME
    bad.write_bytes(bytes(raw))
    capsys.readouterr()
    for command in (["eval", "--checkpoint", str(tmp_path)], ["predict", "--checkpoint", str(bad), "abc"]):
        assert cli.main(command) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert err.startswith(f"ft {command[0]}: error: {bad}: tensor ")
        assert "does not match its SHA-256 checksum; the file is damaged or was edited" in err


def test_a_checkpoint_without_checksums_loads_with_a_one_line_warning(trained, tmp_path, capsys):
    out_dir, _ = trained
    raw = (out_dir / checkpoint.CHECKPOINT_NAME).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    for key in (cf.CHECKSUMS_KEY, cf.HEADER_CHECKSUM_KEY):  # as written before checksums were added
        del header["__metadata__"][key]
    header_bytes = json.dumps(header).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    old = tmp_path / checkpoint.CHECKPOINT_NAME
    old.write_bytes(len(header_bytes).to_bytes(8, "little") + header_bytes + raw[8 + n :])
    capsys.readouterr()
    assert cli.main(["predict", "--checkpoint", str(old), "apple", "banana"]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"ft predict: warning: {old} carries no checksums (it was written by an earlier version, "
        "or by another tool), so damage to it cannot be detected\n"
    )
    loaded = checkpoint.load(out_dir, default_backend())
    params, cfg, tokenizer = loaded.state["params"], loaded.cfg, loaded.tokenizer
    assert out.splitlines() == predict(params, cfg, tokenizer, ["apple", "banana"])


# ---------------------------------------------------------------------------------------------
# FT_BACKEND errors: one line and exit 2, a traceback with --debug

NO_JAX = "import sys; sys.modules['jax'] = None; from functional_transformer.cli import main; sys.exit(main())"


def run_ft(args, backend, without_jax=False):
    env = dict(os.environ, FT_BACKEND=backend)
    if without_jax:
        command = [sys.executable, "-c", NO_JAX, *args]
    else:
        command = [sys.executable, "-m", "functional_transformer", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "backend, without_jax, message",
    [
        ("torch", False, "ft predict: error: unknown backend 'torch': choose one of numpy, jax"),
        ("jax", True, "ft predict: error: FT_BACKEND=jax needs JAX, which is not installed."),
    ],
    ids=["unknown-backend", "jax-missing"],
)
def test_a_bad_backend_is_one_line_and_exit_2(tmp_path, backend, without_jax, message):
    args = ["predict", "--checkpoint", str(tmp_path), "abc"]
    proc = run_ft(args, backend, without_jax)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    debug = run_ft(["--debug", *args], backend, without_jax)
    assert debug.returncode == 1
    assert debug.stderr.startswith("Traceback (most recent call last):")
    expected_type = "ValueError" if backend == "torch" else "ImportError"
    assert debug.stderr.splitlines()[-1].startswith(f"{expected_type}: {message.split('error: ')[1]}")


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    with pytest.raises(cf.CheckpointError, match="does not exist"):
        cli.main(["--debug", "predict", "--checkpoint", str(tmp_path), "abc"])
    assert capsys.readouterr().err == ""


@slow_on_jax
def test_resume_continues_from_the_saved_step(trained_copy, capsys):
    copy = trained_copy
    capsys.readouterr()
    # Past the planned 20 steps only with --extend (issue 11: never a silent change of schedule).
    assert cli.main(["train", "--resume", "--out", str(copy), "--steps", "25", "--no-progress"]) == 2
    assert "pass --extend" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--extend", "--out", str(copy), "--steps", "25", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert f"resuming {copy} at step 20" in err
    assert "finished at step 25" in out
    assert load_step(copy) == 25
    loaded = checkpoint.load(copy, default_backend())
    assert loaded.train_config.steps == 25
    assert loaded.data_spec["task"] == "reverse"
    # Only the 5 new steps ran: the log holds the first run's records (logged and evaluated at its last
    # step), then the resumed run's.
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(20, "train"), (20, "valid"), (25, "train"), (25, "valid")]


# ---------------------------------------------------------------------------------------------
# Errors: exit code 2 and a message


def test_bad_tsv_line_reports_the_line_number_and_exits_2(tmp_path, capsys):
    data = tmp_path / "train.tsv"
    data.write_text("abc\tcba\nhello\tolleh\nno tab here\nxy\tyx\n")
    code = cli.main(["train", "--data", str(data), "--steps", "1", "--out", str(tmp_path / "run"), *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "ft train: error:" in err and "line 3" in err and "no tab" in err
    assert "line 1" not in err and "line 2" not in err
    assert not (tmp_path / "run" / checkpoint.CHECKPOINT_NAME).exists()


def test_missing_data_file_exits_2(tmp_path, capsys):
    code = cli.main(["train", "--data", str(tmp_path / "absent.tsv"), "--steps", "1", "--out", str(tmp_path), *TINY])
    assert code == 2
    assert "absent.tsv" in capsys.readouterr().err


def test_resume_without_a_checkpoint_exits_2(tmp_path, capsys):
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "empty"), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "ft train: error:" in err and "does not exist" in err


def test_damaged_checkpoint_exits_2(trained, tmp_path, capsys):
    out_dir, _ = trained
    bad = tmp_path / checkpoint.CHECKPOINT_NAME
    data = (out_dir / checkpoint.CHECKPOINT_NAME).read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    for command in (["eval", "--checkpoint", str(tmp_path)], ["predict", "--checkpoint", str(bad), "abc"]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert f"ft {command[0]}: error:" in err and "truncated" in err


def test_invalid_model_flags_exit_2(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--task",
            "reverse",
            "--steps",
            "1",
            "--n-train",
            "20",
            "--n-valid",
            "2",
            "--max-len",
            "3",
            "--out",
            str(tmp_path),
            "--d-model",
            "10",
            "--n-heads",
            "3",
            "--layers",
            "1",
            "--no-progress",
        ]
    )
    assert code == 2
    assert "divisible" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Every task


@slow_on_jax
@pytest.mark.parametrize("task", ["identity", "sort", "copy-shift", "addition"])
def test_every_task_trains_a_couple_of_steps(task, tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--task",
            task,
            "--steps",
            "2",
            "--n-train",
            "40",
            "--n-valid",
            "4",
            "--max-len",
            "3",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path),
            *TINY,
        ]
    )
    assert code == 0
    loaded = checkpoint.load(tmp_path, default_backend())
    assert loaded.data_spec["task"] == task
    assert load_step(tmp_path) == 2
    alphabet = set(loaded.tokenizer.chars)
    if task == "addition":
        assert alphabet == set("0123456789+")
    else:
        assert set("abcxyz") <= alphabet
    capsys.readouterr()
    source = "12+345" if task == "addition" else "abc"
    assert cli.main(["predict", "--checkpoint", str(tmp_path), source]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Never lose a trained model (issue 11): protected folders, one writer, honest resume


def test_a_trained_run_is_not_replaced_without_overwrite(trained_copy, capsys):
    """Case 1: `ft train --out runs/reverse --steps 3` over a trained run used to replace it silently."""
    copy = trained_copy
    before = (copy / checkpoint.CHECKPOINT_NAME).read_bytes()
    capsys.readouterr()
    argv = [
        "train",
        "--task",
        "reverse",
        "--steps",
        "3",
        "--n-train",
        "200",
        "--n-valid",
        "20",
        "--max-len",
        "5",
        "--out",
        str(copy),
        *TINY,
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ft train: error: ")
    assert "already holds a run at step 20 of 20" in err and "--resume" in err and "--overwrite" in err
    assert (copy / checkpoint.CHECKPOINT_NAME).read_bytes() == before
    assert cli.main([*argv, "--overwrite"]) == 0
    assert "--overwrite: replacing" in capsys.readouterr().err
    assert load_step(copy) == 3


def test_resume_refuses_a_flag_that_conflicts_with_the_run(trained_copy, capsys):
    """Case 5: every flag given with --resume used to be ignored silently."""
    copy = trained_copy
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(copy), "--learning-rate", "0.5", "--no-progress"]) == 2
    assert "learning_rate=0.5 conflicts with the resumed run's learning_rate=0.002" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(copy), "--d-model", "64", "--no-progress"]) == 2
    assert "d_model=64 conflicts" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(copy), "--steps", "10", "--no-progress"]) == 2
    assert "would cut this run's schedule of 20 steps short" in capsys.readouterr().err
    # The same values as the run's, and operational flags, are fine: a finished run resumes to its end.
    assert (
        cli.main(["train", "--resume", "--out", str(copy), "--d-model", "16", "--eval-every", "5", "--no-progress"])
        == 0
    )
    assert load_step(copy) == 20


def test_a_second_ft_train_on_the_same_folder_refuses_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functional_transformer",
            "train",
            "--task",
            "reverse",
            "--steps",
            "100000",
            "--n-train",
            "100",
            "--n-valid",
            "5",
            "--max-len",
            "3",
            "--out",
            str(out),
            *TINY,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "writing to" in first.stderr.readline()  # it holds the lock from before this line on
        assert cli.main(["train", "--task", "reverse", "--steps", "2", "--out", str(out), *TINY]) == 2
        err = capsys.readouterr().err
        assert f"is in use by process {first.pid}" in err
        assert cli.main(["train", "--resume", "--out", str(out), "--no-progress"]) == 2
    finally:
        first.kill()
        first.wait(timeout=60)


@pytest.mark.parametrize("arch", ["encoder_decoder", "decoder"])
def test_attention_kernel_flag_reaches_the_model_config(arch, tmp_path, capsys):
    """--attention-kernel blockwise is stored in the run's model config, and the run trains with it."""
    argv = ["train", "--task", "reverse", "--steps", "1", "--n-train", "16", "--n-valid", "2", "--max-len", "4"]
    if arch == "decoder":
        argv = ["train", "--arch", "decoder", "--data", str(tmp_path / "text.txt"), "--steps", "1", "--max-len", "8"]
        (tmp_path / "text.txt").write_text("abcabc\nbcabca\ncabcab\n" * 4)
    out = tmp_path / "run"
    assert cli.main([*argv, "--batch-size", "4", "--attention-kernel", "blockwise", "--out", str(out), *TINY]) == 0
    assert checkpoint.load(out, default_backend()).cfg.attention_kernel == "blockwise"
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--task", "reverse", "--attention-kernel", "tiled", "--out", str(tmp_path / "x")])
    assert info.value.code == 2 and "--attention-kernel" in capsys.readouterr().err
