"""Tests of the command line's rough edges: exit statuses, Ctrl-C anywhere in `ft train` and
`ft sweep`, progress lines, a byte-order mark, standard input, and odd --out and FT_BACKEND values."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import backends
import functional_transformer as ft
from functional_transformer import checkpoint, cli, run_writer, runs, train
from functional_transformer.data import read_tsv
from functional_transformer.progress import ProgressLine

REPO = Path(__file__).resolve().parent.parent
TINY = ["--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--layers", "1"]
TRAIN = [
    "train",
    "--task",
    "reverse",
    "--n-train",
    "200",
    "--n-valid",
    "10",
    "--max-len",
    "5",
    *TINY,
    "--steps",
    "6",
    "--batch-size",
    "8",
    "--log-every",
    "2",
    "--eval-every",
    "4",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny model trained for two steps on NumPy (it loads on either backend)."""
    out = tmp_path_factory.mktemp("run") / "run"
    ft.fit(
        {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1},
        {"steps": 2, "batch_size": 8, "eval_every": 2},
        ft.task_data("reverse", n_train=200, n_valid=10, max_len=5),
        out_dir=out,
        backend=backends.get_backend("numpy"),
        progress=False,
        verbose=False,
    )
    return out


# ---------------------------------------------------------------------------------------------
# Exit statuses


def test_a_user_error_exits_2_a_runtime_failure_1_and_an_internal_bug_shows_its_traceback(
    monkeypatch, capsys, tmp_path
):
    def raising(error):
        def command(args):
            raise error

        return command

    monkeypatch.setattr(cli, "_eval", raising(ft.UserInputError("bad input; fix it")))
    assert cli.main(["eval", "--checkpoint", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "ft eval: error: bad input; fix it\n"
    monkeypatch.setattr(cli, "_eval", raising(train.TrainingDiverged("the loss became nan")))
    assert cli.main(["eval", "--checkpoint", str(tmp_path)]) == 1
    monkeypatch.setattr(cli, "_eval", raising(OSError(28, "No space left on device")))
    assert cli.main(["eval", "--checkpoint", str(tmp_path)]) == 1
    monkeypatch.setattr(cli, "_eval", raising(FileNotFoundError(2, "input file not found", "x.tsv")))
    assert cli.main(["eval", "--checkpoint", str(tmp_path)]) == 2
    monkeypatch.setattr(cli, "_eval", raising(ValueError("an internal check failed")))
    with pytest.raises(ValueError, match="an internal check failed"):  # a bug: the traceback, not one line
        cli.main(["eval", "--checkpoint", str(tmp_path)])


def test_settings_out_of_range_are_user_errors():
    for make in (
        lambda: ft.TrainConfig(steps=0),
        lambda: ft.TransformerConfig(src_vocab_size=8, tgt_vocab_size=8, d_model=30, n_heads=4),
    ):
        with pytest.raises(ft.UserInputError):
            make()


def test_out_naming_a_file_says_it_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert cli.main([*TRAIN, "--out", str(tmp_path / "file")]) == 2
    assert "is a file: --out (out_dir) must be a folder" in capsys.readouterr().err
    assert cli.main(["sweep", "--task", "reverse", "--out", str(tmp_path / "file"), "--trials", "1"]) == 2
    assert "is a file: --out must be a folder" in capsys.readouterr().err


def test_an_empty_ft_backend_is_an_error_naming_the_choices(tmp_path):
    env = dict(os.environ, FT_BACKEND="")
    done = subprocess.run(
        [sys.executable, "-m", "functional_transformer", "eval", "--checkpoint", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ft eval: error: FT_BACKEND is set but empty: set it to numpy or jax (FT_BACKEND=jax), or unset it for numpy"
    )


def test_a_one_line_tsv_without_valid_warns_that_there_is_no_held_out_set(tmp_path, capsys):
    (tmp_path / "one.tsv").write_text("abc\tcba\n")
    train_pairs, valid_pairs = runs.load_pairs(ft.tsv_data(tmp_path / "one.tsv"))
    assert (train_pairs, valid_pairs) == ([("abc", "cba")], [])
    assert "has a single pair, too few to hold one out: there is no held-out set" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A byte-order mark, standard input


def test_a_byte_order_mark_is_dropped_with_one_note(tmp_path, capsys):
    (tmp_path / "bom.tsv").write_bytes("\ufeffabc\tcba\nxy\tyx\n".encode("utf-8"))
    assert read_tsv(tmp_path / "bom.tsv") == [("abc", "cba"), ("xy", "yx")]
    err = capsys.readouterr().err
    assert err.count("byte-order mark") == 1 and "bom.tsv" in err
    tokenizer = runs.tokenizer_for(ft.tsv_data(tmp_path / "bom.tsv"), read_tsv(tmp_path / "bom.tsv"), [])
    assert tokenizer.source.unknown_symbols(["\ufeff"]) == ["\ufeff"]  # not in the vocabulary


class FakeStdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)


def test_predict_from_standard_input_drops_a_bom_and_names_the_line_of_an_error(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", FakeStdin("\ufeffabc\nba\n".encode("utf-8")))
    assert cli.main(["predict", "--checkpoint", str(run_dir), "--input", "-", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and "byte-order mark" in captured.err
    monkeypatch.setattr(sys, "stdin", FakeStdin(b"abc\nab!\nok\nA\n"))
    assert cli.main(["predict", "--checkpoint", str(run_dir), "--input", "-"]) == 2
    err = capsys.readouterr().err
    assert "(in standard input: line 2, 4)" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_progress_line_is_rewritten_in_place_on_a_terminal_and_plain_lines_elsewhere():
    terminal = Terminal()
    with ProgressLine("decoding", 3, unit="sources", stream=terminal) as line:
        for _ in range(3):
            line.advance()
    assert terminal.getvalue().count("\r") == 4 and terminal.getvalue().endswith("decoding: 3/3 sources [0 s]\n")
    log = io.StringIO()
    with ProgressLine("decoding", 1000, stream=log, interval_s=3600) as line:
        for _ in range(1000):
            line.advance()
    assert log.getvalue() == "decoding: 1000/1000 [0 s]\n"  # one line, not a thousand
    quiet = io.StringIO()
    with ProgressLine("decoding", 3, stream=quiet, enabled=False) as line:
        line.advance(3)
    assert quiet.getvalue() == ""


def test_eval_and_predict_input_show_progress_unless_told_not_to(run_dir, tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(run_dir), "--n", "5"]) == 0
    assert "evaluating: 5/5 sources" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", str(run_dir), "--n", "5", "--no-progress"]) == 0
    assert "evaluating" not in capsys.readouterr().err
    (tmp_path / "in.txt").write_text("abc\nba\n")
    assert cli.main(["predict", "--checkpoint", str(run_dir), "--input", str(tmp_path / "in.txt")]) == 0
    assert "decoding: 2/2 sources" in capsys.readouterr().err
    assert cli.main(["predict", "--checkpoint", str(run_dir), "abc"]) == 0  # a few arguments: no line
    assert "decoding" not in capsys.readouterr().err


def test_held_out_evaluations_during_training_show_progress(tmp_path, capsys):
    ft.fit(
        {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1},
        {"steps": 2, "batch_size": 8, "eval_every": 2, "log_every": 2, "grad_method": "vjp"},
        ft.task_data("reverse", n_train=200, n_valid=10, max_len=5),
        progress=True,
        verbose=False,
    )
    err = capsys.readouterr().err
    assert "eval @ 2: 10/10 sources" in err and "eval @ 2: loss" in err


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def interrupting_fit(monkeypatch, at_step):
    real_fit = cli.fit

    def interrupt(step, record):
        if step >= at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "fit", lambda *a, callbacks=(), **k: real_fit(*a, callbacks=[*callbacks, interrupt], **k))


def test_ctrl_c_in_training_saves_the_checkpoint_and_curves_and_exits_130(tmp_path, monkeypatch, capsys):
    interrupting_fit(monkeypatch, at_step=2)
    assert cli.main([*TRAIN, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted at step 2" in err
    assert checkpoint.load(tmp_path / "run", ft.backend).state["step"] == 2
    assert (tmp_path / "run" / "curves.png").exists() or not _has_matplotlib()


def _has_matplotlib():
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def test_ctrl_c_while_the_curves_are_drawn_still_writes_them(tmp_path, monkeypatch, capsys):
    if not _has_matplotlib():
        pytest.skip("matplotlib is not installed")
    real_plot, calls = run_writer.plot_metrics, []

    def plot_interrupted_once(*args):
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_plot(*args)

    monkeypatch.setattr(run_writer, "plot_metrics", plot_interrupted_once)
    assert cli.main([*TRAIN, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted while writing the checkpoint and curves" in err
    assert (tmp_path / "run" / "curves.png").exists() and len(calls) == 2


def test_ctrl_c_before_training_starts_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "load_pairs", interrupted)
    assert cli.main([*TRAIN, "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "ft train: interrupted"


def test_ctrl_c_in_a_sweep_is_the_tools_one_line_not_optunas_traceback(tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "fit", interrupted)
    argv = [
        "sweep",
        "--task",
        "reverse",
        "--n-train",
        "100",
        "--n-valid",
        "5",
        "--max-len",
        "4",
        "--trials",
        "2",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "sweep"),
        "--no-progress",
    ]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: the trial that was running is marked failed")


# ---------------------------------------------------------------------------------------------
# Flags


def test_the_new_flags_are_in_the_help(capsys):
    for command, flags in (
        ("train", ["--accumulate", "--tensorboard", "--no-progress"]),
        ("eval", ["--no-progress"]),
        ("predict", ["--no-progress"]),
        ("sweep", ["--no-progress"]),
    ):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert all(flag in out for flag in flags), (command, flags)


def test_train_accumulate_and_tensorboard_flags(tmp_path, capsys):
    pytest.importorskip("tensorboardX")
    assert (
        cli.main([*TRAIN, "--accumulate", "2", "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "run")])
        == 0
    )
    assert ft.load(tmp_path / "run", "last").train_config.accumulate_steps == 2
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_train_tensorboard_without_tensorboardx_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    assert cli.main([*TRAIN, "--tensorboard", str(tmp_path / "tb"), "--out", str(tmp_path / "run")]) == 2
    assert "tensorboardX, an optional extra" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
