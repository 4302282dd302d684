"""scripts/mutations.py: plants a listed bug in a copy of the tree, runs the named tests, and says
killed or survived; its data file matches the current code.

The script runs pytest on NumPy itself (each mutation names its backend), so these tests run once,
in the NumPy suite."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "mutations.py"

pytestmark = pytest.mark.skipif(
    os.environ.get("FT_BACKEND", "numpy") != "numpy",
    reason="the script picks each mutation's backend itself: tested in the NumPy run",
)


@pytest.fixture(scope="module")
def script():
    """The script as a module (registered while it runs: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("ft_mutations_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_listed_mutation_applies_to_the_current_code(script):
    """Each mutation's old text occurs exactly once in its file (else the script refuses the data file)."""
    mutations = script.load_mutations(script.DEFAULT_DATA)
    names = {m.name for m in mutations}
    assert {"bpe-targets-without-eos", "beam-alpha-ignored", "beam-search-without-x64-scope"} <= names


def test_a_mutation_the_tests_catch_is_killed_and_the_tree_is_left_alone():
    before = (REPO / "functional_transformer" / "generate.py").read_text(encoding="utf-8")
    done = run_script("--only", "length-penalty-offset")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| length-penalty-offset" in done.stdout and "killed" in done.stdout
    assert (REPO / "functional_transformer" / "generate.py").read_text(encoding="utf-8") == before


def test_a_mutation_no_test_catches_survives_and_fails_the_run(tmp_path):
    """A mutation of a comment (no test can see it), expected to be killed: survived, exit code 1."""
    data = tmp_path / "mutations.toml"
    data.write_text(
        '[[mutation]]\nname = "comment-only"\nfile = "functional_transformer/generate.py"\n'
        'old = "# A finished hypothesis can only continue with pad"\n'
        'new = "# A finished hypothesis continues only with pad"\n'
        'tests = ["tests/test_generate.py", "-k", "length_penalty"]\nbackend = "numpy"\n',
        encoding="utf-8",
    )
    done = run_script("--data", str(data), "--no-baseline")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "survived" in done.stdout and "NOT killed: comment-only (numpy, survived)" in done.stdout


def test_stale_or_malformed_mutations_are_refused(script, tmp_path):
    data = tmp_path / "mutations.toml"
    data.write_text(
        '[[mutation]]\nname = "gone"\nfile = "functional_transformer/generate.py"\nold = "no such text"\n'
        'new = "x"\ntests = ["tests"]\nbackend = "numpy"\n',
        encoding="utf-8",
    )
    with pytest.raises(script.DataFileError, match="occurs 0 times in functional_transformer/generate.py"):
        script.load_mutations(data)
    data.write_text(
        '[[mutation]]\nname = "bad"\nfile = "functional_transformer/generate.py"\nold = "import"\n'
        'new = "x"\ntests = ["tests"]\nbackend = "torch"\n',
        encoding="utf-8",
    )
    with pytest.raises(script.DataFileError, match="backend 'torch' must be one of numpy, jax, both"):
        script.load_mutations(data)
    done = run_script("--data", str(data))
    assert done.returncode == 2 and done.stderr.startswith("mutations: error:")
