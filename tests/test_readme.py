"""README.md's code runs as written: its ```python blocks, in order, in one namespace (as a reader
who pastes them one after another would), in a temporary working directory, on the backend
FT_BACKEND names. A block whose first line is `# excerpt from <path>` is a copy of source code, not
run: its lines must appear, in order, in that file, so that the README cannot drift from the code
(tests/test_docs.py checks the excerpts of the README and of every docs page). The helpers here
serve the docs pages too.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXCERPT = re.compile(r"# excerpt from (\S+)$")
HAS_JAX = importlib.util.find_spec("jax") is not None


def python_blocks(text: str, name: str = "README.md") -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) for every ```python fence of the Markdown
    `text` (the file `name`), in order. A fence may be indented (inside a list item); its code is
    dedented by the fence's indentation."""
    blocks, lines = [], text.splitlines()
    info = start = indent = None
    for i, line in enumerate(lines):
        fence = line.strip()
        if start is None and fence.startswith("```"):
            info, start, indent = fence[3:].strip(), i + 1, len(line) - len(line.lstrip())
        elif start is not None and fence == "```":
            if info == "python":
                code = [text_line[indent:] for text_line in lines[start:i]]
                blocks.append((start + 1, "\n".join(code) + "\n"))
            start = None
    assert start is None, f"{name}:{start}: a code block is never closed"
    return blocks


def is_excerpt(code: str) -> bool:
    return bool(EXCERPT.match(code.splitlines()[0]))


def run_blocks(path: Path, blocks: list[tuple[int, str]]) -> dict:
    """Runs the runnable `blocks` of the Markdown file `path` in order in one namespace, each
    compiled under the file's name and padded so that a traceback points at its own line numbers."""
    namespace: dict = {"__name__": "__docs__"}
    for line, code in blocks:
        if not is_excerpt(code):
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)  # noqa: S102
    return namespace


def excerpt_problem(line: int, code: str, name: str = "README.md") -> str | None:
    """Why the excerpt starting at `name`:`line` is not a verbatim copy of its source, or None.
    Its non-blank lines must all occur, in the same order, among the source file's lines."""
    first, *body = code.splitlines()
    source_path = ROOT / EXCERPT.match(first).group(1)
    if not source_path.is_file():
        return f"{name}:{line} quotes {source_path.relative_to(ROOT)}, which does not exist"
    source = source_path.read_text(encoding="utf-8").splitlines()
    position = 0
    for offset, text in enumerate(body, start=1):
        if not text.strip():
            continue
        try:
            position = source.index(text, position) + 1
        except ValueError:
            return (
                f"{name}:{line + offset}: {text!r} is not in {source_path.relative_to(ROOT)} (in this "
                "order): copy the excerpt again from the source"
            )
    return None


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [(line, code) for line, code in BLOCKS if not is_excerpt(code)]


def test_the_readme_has_python_blocks():
    assert len(RUNNABLE) >= 3


def test_every_python_block_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_blocks(README, RUNNABLE)


def test_an_excerpt_that_drifted_is_caught():
    code = '# excerpt from functional_transformer/layers/linear.py\ndef bwd(saved: Saved, g, bias: bool = True):\n    dparams = {"w": saved.x2.mT @ g2}\n'
    assert excerpt_problem(1, code) is None
    assert excerpt_problem(1, code.replace("saved.x2.mT @ g2", "x2.mT @ g2")) is not None
    lines = code.splitlines()
    swapped = "\n".join([lines[0], *reversed(lines[1:])])  # every line still there, in the wrong order
    assert excerpt_problem(1, swapped) is not None
    assert excerpt_problem(1, code.replace("layers/linear.py", "layers/nothing.py")) is not None


def test_an_indented_block_is_found_and_dedented():
    text = "- a list item:\n\n  ```python\n  x = 1\n  ```\n"
    assert python_blocks(text) == [(4, "x = 1\n")]
