"""scripts/jax_cpu_probe.py: the matmul shapes it times are the model's linear layers, a rate is
FLOPs over time (None where the library lacks the dtype), and the interleaved timer gives every call
one sample per repetition, alternating the order."""

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import requires_jax

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "jax_cpu_probe.py"


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
