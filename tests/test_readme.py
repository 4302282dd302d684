"""README.md's code runs as written: its ```python blocks, in order, in one namespace (as a reader
who pastes them one after another would), in a temporary working directory, on the backend
FT_BACKEND names. A block whose first line is `# excerpt from <path>` is a copy of source code, not
run: its lines must appear, in order, in that file, so that the README cannot drift from the code.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXCERPT = re.compile(r"# excerpt from (\S+)$")
HAS_JAX = importlib.util.find_spec("jax") is not None


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) for every ```python fence, in order."""
    blocks, lines = [], text.splitlines()
    info = start = None
    for i, line in enumerate(lines):
        fence = line.strip()
        if start is None and fence.startswith("```"):
            info, start = fence[3:].strip(), i + 1
        elif start is not None and fence == "```":
            if info == "python":
                blocks.append((start + 1, "\n".join(lines[start:i]) + "\n"))
            start = None
    assert start is None, f"README.md:{start}: a code block is never closed"
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [(line, code) for line, code in BLOCKS if not EXCERPT.match(code.splitlines()[0])]
EXCERPTS = [(line, code) for line, code in BLOCKS if EXCERPT.match(code.splitlines()[0])]


def test_the_readme_has_python_blocks_of_both_kinds():
    assert len(RUNNABLE) >= 8 and len(EXCERPTS) >= 2


@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed (one block moves params to JAX)")
def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for line, code in RUNNABLE:
        # Padded so that a traceback points at README.md's own line numbers.
        exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)  # noqa: S102


def excerpt_problem(line: int, code: str) -> str | None:
    """Why the excerpt starting at README.md:`line` is not a verbatim copy of its source, or None.
    Its non-blank lines must all occur, in the same order, among the source file's lines."""
    first, *body = code.splitlines()
    source_path = ROOT / EXCERPT.match(first).group(1)
    if not source_path.is_file():
        return f"README.md:{line} quotes {source_path}, which does not exist"
    source = source_path.read_text(encoding="utf-8").splitlines()
    position = 0
    for offset, text in enumerate(body, start=1):
        if not text.strip():
            continue
        try:
            position = source.index(text, position) + 1
        except ValueError:
            return (
                f"README.md:{line + offset}: {text!r} is not in {source_path.relative_to(ROOT)} (in this "
                "order): copy the excerpt again from the source"
            )
    return None


@pytest.mark.parametrize("line,code", EXCERPTS, ids=[f"README.md:{line}" for line, _ in EXCERPTS])
def test_excerpts_are_verbatim_copies_of_their_source(line, code):
    assert excerpt_problem(line, code) is None, excerpt_problem(line, code)


def test_an_excerpt_that_drifted_is_caught():
    line, code = next((line, code) for line, code in EXCERPTS if "linear.py" in code.splitlines()[0])
    assert excerpt_problem(line, code.replace("saved.x2.mT @ g2", "x2.mT @ g2")) is not None
    lines = code.splitlines()
    swapped = "\n".join([lines[0], *reversed(lines[1:])])  # every line still there, in the wrong order
    assert excerpt_problem(line, swapped) is not None
    assert excerpt_problem(line, code.replace("layers/linear.py", "layers/nothing.py")) is not None
