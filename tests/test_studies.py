"""The studies (benchmarks/studies): each runs end to end on a tiny shape, through its main() or, where it
imports the library from other trees, `python -m` in a fresh process; plus what each must find (every
planted VJP slip caught, the line the mistakes study breaks still there, the backends' gradients agreeing).
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("benchmarks") is None:  # a non-editable install: the package lives in the checkout
    sys.path.insert(0, str(REPO_ROOT))

from conftest import requires_jax  # noqa: E402

from benchmarks.studies import (  # noqa: E402
    backend_agreement,
    backward_lines,
    compile_times,
    mistakes,
    preset_speed,
    profile_step,
    token_batching,
    trajectory,
    vjp_slips,
)

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _study(name: str, *argv: str) -> subprocess.CompletedProcess:
    """`python -m benchmarks.studies.NAME ARGV` in a fresh process at the repository root."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.studies.{name}", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_every_study_is_listed_with_its_purpose():
    import benchmarks.studies

    modules = sorted(path.stem for path in Path(benchmarks.studies.__file__).parent.glob("[!_]*.py"))
    for name in modules:
        assert f"- `{name}`: " in benchmarks.studies.__doc__, name
        doc = importlib.import_module(f"benchmarks.studies.{name}").__doc__
        assert doc.split("\n")[1] == "", f"{name}: the docstring's first line is not a one-line purpose"


def test_backward_lines_counts_each_backward_function_once_without_docstrings_or_comments(tmp_path, monkeypatch):
    source = textwrap.dedent('''\
        """Module docstring."""
        from typing import NamedTuple


        class Saved(NamedTuple):
            x: int


        def fwd(x):
            return x, Saved(x)


        def bwd(saved, g):
            """Docstring: not code."""
            # a comment: not code

            def inner_bwd(h):  # nested: counted with bwd, once
                return h
            return inner_bwd(g)


        def _bwd_layers(g):
            return g
        ''')
    path = tmp_path / "layer.py"
    path.write_text(source)
    monkeypatch.setattr(backward_lines, "PACKAGE", tmp_path / "package")  # names relative to its parent
    counts = backward_lines.count_module(path)
    assert counts["backward_functions"] == ["bwd", "_bwd_layers"]
    assert counts["backward_lines"] == 7 + 2
    assert counts["backward_code_lines"] == 4 + 2  # def, def inner, return h, return inner; def, return
    assert counts["residual_type_code_lines"] == 2
    assert counts["code_lines"] == 1 + 2 + 2 + 6  # import; class; fwd; the two backward functions


def test_backward_lines_of_the_package_name_every_layers_backward():
    counts = backward_lines.count_all()
    names = {row["module"]: row["backward_functions"] for row in counts["modules"]}
    assert names["functional_transformer/layers/attention.py"] == [
        "_project_heads_bwd",
        "dot_product_bwd",
        "bwd",
        "repeat_kv_bwd",
        "grouped_bwd",
    ]
    assert names["functional_transformer/models/encoder_decoder.py"] == ["encode_bwd", "decode_bwd", "bwd"]
    assert 0 < counts["total"]["backward_code_lines"] < counts["total"]["code_lines"]
    assert "| **all** |" in backward_lines.markdown(counts)


def test_backward_lines_main_prints_the_table_and_writes_the_json(tmp_path, capsys):
    backward_lines.main(["--json", str(tmp_path / "counts.json")])
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert capsys.readouterr().out.rstrip("\n") == backward_lines.markdown(counts)
    assert counts["total"]["backward_functions"] == sum(len(row["backward_functions"]) for row in counts["modules"])


def test_every_planted_vjp_slip_is_caught_and_the_code_as_it_is_passes(monkeypatch, capsys):
    measure, measured = vjp_slips.measure, {}
    monkeypatch.setattr(vjp_slips, "measure", lambda: measured.setdefault("errors", measure()))  # main's errors, kept
    vjp_slips.main([])
    errors = dict(measured["errors"])
    right = errors.pop("none (the code as it is)")
    assert right < 1e-7
    assert len(errors) == 5 and all(error > 1e-3 for error in errors.values()), errors
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.rsplit("|", 2)[1].strip() for row in rows] == ["no"] + ["yes"] * 5


def test_the_mistakes_script_still_finds_the_line_it_breaks(tmp_path):
    copy = mistakes._copy_with_bug(tmp_path)
    source = (copy / "functional_transformer" / "layers" / "attention.py").read_text()
    assert mistakes.BUG[1] + "  #" in source and mistakes.BUG[0] not in source


def test_the_shape_mistake_fails_where_the_keys_transpose_was_forgotten(capsys):
    mistakes.main(["--backends", "numpy", "--mistakes", "shape", "--tail", "3"])
    out = capsys.readouterr().out
    assert "### shape: `FT_BACKEND=numpy python apply.py`" in out and "### shape: `FT_BACKEND=numpy ft train`" in out
    assert out.count("ValueError: matmul") == 2 and out.count("(exit status 1)") == 2
    assert "### nan" not in out


@pytest.mark.slow
def test_the_nan_mistake_stops_training_with_a_clear_error(capsys):
    mistakes.main(["--backends", "numpy", "--mistakes", "nan"])
    out = capsys.readouterr().out
    assert "ft train: error: the loss became nan" in out and "(exit status 1)" in out


def test_compile_times_measures_a_first_and_a_later_call():
    result = compile_times.measure("numpy", "forward", reps=1)
    assert result["backend"] == "numpy" and result["first_s"] > 0 and result["steady_s"] > 0
    assert result["compile_s"] == pytest.approx(result["first_s"] - result["steady_s"])


def test_compile_times_main_runs_each_measure_in_a_fresh_process(capsys):
    compile_times.main(["--backends", "numpy", "--measures", "forward", "--reps", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| backend | measure | first call s | later calls s (median) | first - later s |"
    assert len(lines) == 3 and lines[2].startswith("| numpy | forward | ")


@requires_jax
@pytest.mark.slow  # compiles the JAX gradient or train step: tens of seconds on a small CPU
def test_backend_agreement_float64_gradients_agree_to_rounding(capsys):
    backend_agreement.main(["--json", "--dtypes", "float64", "--dropout", "off", "--layers", "1"])
    [result] = json.loads(capsys.readouterr().out)
    assert result["dtype"] == "float64" and result["dropout"] is False
    for pair in ("numpy vjp vs jax autodiff", "numpy vjp vs jax vjp", "jax vjp vs jax autodiff"):
        assert result[pair]["max_abs"] < 1e-13, (pair, result[pair])


@requires_jax
@pytest.mark.slow  # compiles the JAX gradient or train step: tens of seconds on a small CPU
@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="the trajectory study plots with matplotlib, which is not installed")
def test_trajectory_trains_on_both_backends_and_plots(tmp_path, capsys):
    plot = tmp_path / "trajectory.png"
    trajectory.main(["--steps", "2", "--layers", "1", "--plot", str(plot)])
    summary = json.loads(plot.with_suffix(".json").read_text())
    assert summary["steps"] == 2 and 0 <= summary["max_relative_gap"] < 1e-3
    assert set(summary["final_loss"]) == {"numpy", "jax"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {plot}" in capsys.readouterr().out


def test_token_batching_reports_both_batchings(tmp_path, capsys):
    """On a tiny workload (NumPy: nothing to compile): padding, shapes and tokens/s."""
    argv = ["--backends", "numpy", "--n", "60", "--low", "2", "--high", "20", "--batch-size", "4"]
    token_batching.main([*argv, "--steps", "1", "--reps", "2", "--json", str(tmp_path / "tb.json")])
    [result] = json.loads((tmp_path / "tb.json").read_text())["results"]
    assert result["budget_tokens"] == 4 * 24 and result["max_len"] == 24
    for name in ("fixed", "max_tokens"):
        r = result[name]
        assert 0 <= r["pad_fraction"] < 1 and r["shapes"] >= 1 and len(r["times_s"]) == 2 and r["tokens_per_s"] > 0
    assert result["max_tokens"]["pad_fraction"] < result["fixed"]["pad_fraction"]
    out = capsys.readouterr().out
    assert "| numpy | --batch-size 4 |" in out and "| numpy | --max-tokens 96 |" in out


def test_preset_speed_times_both_presets(capsys):
    """The gpt2 against llama step times on a tiny size, on the suite's backend."""
    preset_speed.main(["--d-model", "8", "--n-layers", "1", "--length", "8", "--batch", "2", "--reps", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].split()[1] for line in lines] == ["gpt2", "llama"]
    assert all("per step of 2 x 8 tokens" in line for line in lines)


def test_profile_step_prints_the_top_functions(capsys):
    profile_step.main(["--backend", "numpy", "--config", "tiny", "--measure", "forward", "--top", "3"])
    out = capsys.readouterr().out
    assert out.count("Ordered by: cumulative time") == 1 and out.count("Ordered by: internal time") == 1


def test_ab_compares_a_tree_with_itself():
    """In a fresh process: the study imports the library from each tree, which would replace this process's."""
    result = _study(
        "ab",
        str(REPO_ROOT),
        str(REPO_ROOT),
        "--config",
        "tiny",
        "--measure",
        "forward",
        "--methods",
        "numpy",
        "--reps",
        "2",
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny forward, 2 alternations")
    assert lines[1].lstrip().startswith("old    numpy: wall median") and lines[2].lstrip().startswith("new    numpy:")
    assert lines[3].startswith("  new/old numpy: wall ")
