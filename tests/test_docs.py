"""The docs site's code runs as written, and the user docs carry no development history.

Every ```python block of each page under docs/ runs, per page, in order, in one namespace, in a
temporary working directory, on the backend FT_BACKEND names (the conventions of
tests/test_readme.py, whose helpers these are); a `# excerpt from <path>` block is checked to be a
verbatim copy of its source instead. README.md and every page are searched for issue numbers,
rounds, commit hashes and machine paths, which belong in the git log, not in user docs.
"""

from __future__ import annotations

import re

import pytest
from test_readme import HAS_JAX, README, ROOT, excerpt_problem, is_excerpt, python_blocks, run_blocks

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
PAGE_BLOCKS = {page: python_blocks(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT))) for page in PAGES}
RUNNABLE_PAGES = [page for page, blocks in PAGE_BLOCKS.items() if any(not is_excerpt(code) for _, code in blocks)]
EXCERPTS = [
    (page, line, code)
    for page, blocks in [(README, python_blocks(README.read_text(encoding="utf-8"))), *PAGE_BLOCKS.items()]
    for line, code in blocks
    if is_excerpt(code)
]
# Pages whose blocks move arrays to JAX.
NEEDS_JAX = {"design.md"}

# What user docs must not say: history and machine paths. Each pattern names what it catches.
HISTORY = {
    "an issue number": re.compile(r"\bissues? #?\d+|(?<![\w&/])#\d+\b", re.IGNORECASE),
    "a round of work": re.compile(r"\bround \d+", re.IGNORECASE),
    "a commit hash": re.compile(r"`[0-9a-f]{7,40}`"),
    "an absolute machine path": re.compile(r"(?<![\w.])/(?:work|tmp)/"),
}
# Lines that must keep such a text, each for a reason: a scratch output folder in a command.
ALLOWED = [re.compile(r"--(?:out|json|plot) /tmp/\S+")]


def history_in(text: str, name: str) -> list[str]:
    """'name:line: what (the text)' for every line of `text` that matches a HISTORY pattern outside
    ALLOWED."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for allowed in ALLOWED:
            line = allowed.sub("", line)
        for what, pattern in HISTORY.items():
            match = pattern.search(line)
            if match:
                found.append(f"{name}:{number}: {what} ({match.group(0)!r})")
    return found


def test_the_docs_have_runnable_blocks_and_excerpts():
    assert len(RUNNABLE_PAGES) >= 5 and len(EXCERPTS) >= 2


@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=[str(page.relative_to(DOCS)) for page in RUNNABLE_PAGES])
def test_every_python_block_of_a_page_runs_in_order(page, tmp_path, monkeypatch):
    if str(page.relative_to(DOCS)) in NEEDS_JAX and not HAS_JAX:
        pytest.skip("JAX is not installed (this page's blocks use it)")
    monkeypatch.chdir(tmp_path)
    run_blocks(page, PAGE_BLOCKS[page])


@pytest.mark.parametrize(
    "page,line,code", EXCERPTS, ids=[f"{page.relative_to(ROOT)}:{line}" for page, line, _ in EXCERPTS]
)
def test_excerpts_are_verbatim_copies_of_their_source(page, line, code):
    problem = excerpt_problem(line, code, str(page.relative_to(ROOT)))
    assert problem is None, problem


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: str(page.relative_to(ROOT)))
def test_user_docs_carry_no_history_or_machine_paths(page):
    found = history_in(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))
    assert not found, "user docs say what is, not how it came to be:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "fixed in issue 12",
        "see #12",
        "measured in round 3",
        "at commit `c81f7c8`",
        '  File "/work/wt/x.py", line 3',
        "written to /tmp/run",
    ],
)
def test_each_kind_of_history_is_caught(text):
    assert history_in(text, "page.md")


@pytest.mark.parametrize(
    "text",
    [
        "uv run python -m benchmarks --configs long --json /tmp/l.json --plot /tmp/l.png",
        "the `#` comment and [a link](#a-section)",
        "ft train --max-tokens 4096 and 16 rounds of Threefry",
    ],
)
def test_what_may_stay_is_not_flagged(text):
    assert not history_in(text, "page.md")
