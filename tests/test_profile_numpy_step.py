"""benchmarks/studies/profile_numpy_step.py: the NumPy train step's time grouped by kind of operation.

NumPy only (the script profiles the NumPy backend), so these run in the NumPy suite."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "studies" / "profile_numpy_step.py"

pytestmark = pytest.mark.skipif(
    os.environ.get("FT_BACKEND", "numpy") != "numpy", reason="profiles the NumPy backend: tested in the NumPy run"
)


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("ft_profile_numpy_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


def test_lines_go_to_their_kind(script):
    """A matrix product is "matmuls" in any file; other lines go by their file."""
    layers = REPO / "functional_transformer" / "layers"
    linear = layers / "linear.py"
    assert script.kind_of(str(linear), _line_of(linear, "y = x2 @ w")) == "matmuls"
    assert script.kind_of(str(linear), _line_of(linear, 'y += params["b"]')) == "heads: bias, transposes, concats"
    softmax = layers / "softmax.py"
    assert script.kind_of(str(softmax), _line_of(softmax, "total = xp.sum(p")) == "softmax"
    random = REPO / "backends" / "prng.py"
    assert script.kind_of(str(random), _line_of(random, "x1 |= high_bits")) == "dropout: random bits"


@pytest.mark.slow
def test_profile_of_the_tiny_step_covers_the_main_kinds(script):
    kinds, step_seconds, lines = script.profile("tiny", 1)
    assert step_seconds > 0 and sum(lines.values()) > 0
    for kind in ("matmuls", "softmax", "layer norm", "dropout: random bits", "optimizer"):
        assert kinds.get(kind, 0) > 0, kind
    assert set(kinds) <= set(script.ORDER)
