"""benchmarks/studies/jax_cpu_probe.py: the matmul shapes it times are the model's linear layers, a rate is
FLOPs over time (None where the library lacks the dtype), and the interleaved timer gives every call
one sample per repetition, alternating the order."""

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import requires_jax

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "studies" / "jax_cpu_probe.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("jax_cpu_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load_script()


def test_model_shapes_are_the_tiny_models_linear_layers():
    # tiny: batch 64 x length 32 rows, d_model 128, d_ff 512, vocabulary 32
    assert probe.model_shapes("tiny") == [
        (2048, 128, 32),
        (2048, 128, 128),
        (2048, 128, 384),
        (2048, 128, 512),
        (2048, 512, 128),
    ]


def test_numpy_matmul_rate_is_positive_and_none_for_bfloat16():
    rate = probe.matmul_rate("numpy", 64, 32, 16, "float32", reps=2)
    assert rate is not None and rate > 0
    assert probe.matmul_rate("numpy", 64, 32, 16, "bfloat16", reps=2) is None


@requires_jax
def test_xla_matmul_rate_in_bfloat16_is_positive():
    assert probe.matmul_rate("xla", 64, 32, 16, "bfloat16", reps=2) > 0


def test_interleaved_timer_alternates_the_order():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    samples = probe.time_interleaved(calls, reps=3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert all(len(cpu) == len(wall) == 3 for cpu, wall in samples.values())


def test_flags_without_a_variant_is_an_error(capsys):
    with pytest.raises(SystemExit):
        probe.main(["flags"])
    assert "--variant" in capsys.readouterr().err


HLO = """HloModule step

%fused_dot (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  ROOT %d = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_bits (p0: u32[8]) -> pred[8] {
  %p0 = u32[8]{0} parameter(0)
  %x = u32[8]{0} xor(%p0, %p0)
  ROOT %c = pred[8]{0} compare(%x, %p0), direction=LT
}

%fused_sum (p0: f32[4,2]) -> f32[4] {
  %p0 = f32[4,2]{1,0} parameter(0)
  %z = f32[] constant(0)
  ROOT %r = f32[4]{0} reduce(%p0, %z), dimensions={1}, to_apply=%add
}

%fused_relu (p0: f32[4,2]) -> f32[4,2] {
  %p0 = f32[4,2]{1,0} parameter(0)
  ROOT %m = f32[4,2]{1,0} maximum(%p0, %p0)
}

ENTRY %main (a: f32[4,8], b: f32[8,2], k: u32[8]) -> f32[4] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %k = u32[8]{0} parameter(2)
  %ynn_fusion.3 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot
  %bits_fusion = pred[8]{0} fusion(%k), kind=kLoop, calls=%fused_bits
  %relu_fusion = f32[4,2]{1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fused_relu
  %copy.1 = f32[4,2]{1,0} copy(%relu_fusion)
  ROOT %sum_fusion = f32[4]{0} fusion(%copy.1), kind=kLoop, calls=%fused_sum
}
"""


def test_thunk_kinds_sorts_the_entry_instructions_by_what_their_fusion_does():
    assert probe.thunk_kinds(HLO) == {
        "ynn_fusion.3": "matmul",
        "bits_fusion": "random bits",
        "relu_fusion": "element-wise",
        "copy.1": "copy, concatenate, slice",
        "sum_fusion": "reduction",
    }
