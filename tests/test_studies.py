"""The scripts behind the NumPy-against-JAX comparison (README.md, "Seeing inside"): the backward-line
count, the planted VJP slips (each must be caught, the code as it is must pass), the edit the
mistakes script makes, one compile-time measure, and (slow, with JAX) the gradient agreement.
"""

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("benchmarks") is None:  # a non-editable install: the package lives in the checkout
    sys.path.insert(0, str(REPO_ROOT))

from conftest import requires_jax  # noqa: E402

from benchmarks.studies import backward_lines, compile_times, mistakes, vjp_slips  # noqa: E402


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


def test_every_planted_vjp_slip_is_caught_and_the_code_as_it_is_passes():
    errors = vjp_slips.measure()
    right = errors.pop("none (the code as it is)")
    assert right < 1e-7
    assert len(errors) == 5 and all(error > 1e-3 for error in errors.values()), errors


def test_the_mistakes_script_still_finds_the_line_it_breaks(tmp_path):
    copy = mistakes._copy_with_bug(tmp_path)
    source = (copy / "functional_transformer" / "layers" / "attention.py").read_text()
    assert mistakes.BUG[1] + "  #" in source and mistakes.BUG[0] not in source


def test_compile_times_measures_a_first_and_a_later_call():
    result = compile_times.measure("numpy", "forward", reps=1)
    assert result["backend"] == "numpy" and result["first_s"] > 0 and result["steady_s"] > 0
    assert result["compile_s"] == pytest.approx(result["first_s"] - result["steady_s"])


@requires_jax
@pytest.mark.slow
def test_backend_agreement_float64_gradients_agree_to_rounding():
    from benchmarks.studies import backend_agreement

    result = backend_agreement.measure(
        backend_agreement.ft.TransformerConfig(
            src_vocab_size=11,
            tgt_vocab_size=13,
            d_model=12,
            n_heads=3,
            d_ff=10,
            n_encoder_layers=1,
            n_decoder_layers=1,
            max_len=9,
            dtype="float64",
        ),
        train=False,
    )
    assert result["numpy vjp vs jax autodiff"]["max_abs"] < 1e-13
