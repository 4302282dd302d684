"""scripts/make_stdlib_corpus.py: the docstring corpus from the standard library is three files of
single-line documents, each document in one split only, byte-identical from run to run; the
folder and file skips, the length limits and the duplicate rule hold on a small made-up library.
"""

import importlib.util
import platform
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_stdlib_corpus.py"
SPLIT_FILES = ("train.txt", "valid.txt", "test.txt")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_stdlib_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_stdlib_corpus = _load_script()


def _read_splits(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in SPLIT_FILES}


def test_real_stdlib_gives_three_disjoint_single_line_splits_identical_across_runs(tmp_path, capsys):
    argv = ["--limit-files", "40", "--max-chars", "200"]
    assert make_stdlib_corpus.main([*argv, "--out", str(tmp_path / "first")]) == 0
    assert make_stdlib_corpus.main([*argv, "--out", str(tmp_path / "second")]) == 0
    first, second = _read_splits(tmp_path / "first"), _read_splits(tmp_path / "second")
    assert first == second

    documents_by_split = {}
    for name, data in first.items():
        text = data.decode("utf-8")
        assert text == "" or text.endswith("\n")
        lines = text.split("\n")[:-1]
        for line in lines:
            assert line.strip() == line and line
            assert line.splitlines() == [line]
            assert 40 <= len(line) <= 200
        assert len(set(lines)) == len(lines)
        documents_by_split[name] = set(lines)
    assert documents_by_split["train.txt"]  # 40 files hold hundreds of docstrings; 90% go to train
    for name, documents in documents_by_split.items():
        for other, other_documents in documents_by_split.items():
            if name < other:
                assert not documents & other_documents, f"a document is in both {name} and {other}"
    summary = capsys.readouterr().out
    assert platform.python_version() in summary and "train.txt" in summary


def test_skips_tests_and_unparsable_files_cuts_at_words_and_keeps_the_first_duplicate(tmp_path):
    library = tmp_path / "lib"
    long_doc = " ".join(["word"] * 40)  # 199 characters
    sources = {
        "alpha.py": f'''\
            """Module docstring of alpha, long enough to be kept in the corpus."""

            def short():
                """Too short."""

            class Spread:
                """A class docstring
                over    several
                lines, collapsed to one line of text."""

                async def method(self):
                    """{long_doc}"""

            def again():
                """Module docstring of alpha, long enough to be kept in the corpus."""
            ''',
        "test_alpha.py": '"""A test module docstring that the corpus must never contain."""\n',
        "tests/helper.py": '"""A docstring in a tests folder that the corpus must never contain."""\n',
        "idlelib/editor.py": '"""A docstring in idlelib that the corpus must never contain at all."""\n',
        "__pycache__/cached.py": '"""A docstring in __pycache__ that the corpus must never contain."""\n',
        "broken.py": '"""A docstring in a file that does not parse, never in the corpus."""\ndef (:\n',
        "latin.py": b'"""Caf\xe9 in a file with no coding cookie does not decode, so never kept."""\n',
    }
    for relative, source in sources.items():
        path = library / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            path.write_bytes(source)
        else:
            path.write_text(textwrap.dedent(source), encoding="utf-8")

    out = tmp_path / "out"
    argv = ["--stdlib", str(library), "--out", str(out), "--max-chars", "30", "--min-chars", "20"]
    assert make_stdlib_corpus.main(argv) == 0
    documents = [line for name in SPLIT_FILES for line in (out / name).read_text(encoding="utf-8").splitlines()]
    assert sorted(documents) == [
        "A class docstring over several",  # collapsed to one line, then cut at the last space within 30
        "Module docstring of alpha,",  # once, though two docstrings hold it
        "word word word word word word",
    ]


def test_splits_follow_the_text_hash_and_bad_limits_are_refused(tmp_path):
    assert make_stdlib_corpus.split_of("some document text") == make_stdlib_corpus.split_of("some document text")
    counts = {name: 0 for name in SPLIT_FILES}
    for index in range(2000):
        counts[make_stdlib_corpus.split_of(f"document number {index}") + ".txt"] += 1
    assert 1700 < counts["train.txt"] < 1900 and counts["valid.txt"] > 50 and counts["test.txt"] > 50
    with pytest.raises(SystemExit):
        make_stdlib_corpus.main(["--out", str(tmp_path), "--min-chars", "50", "--max-chars", "20"])
    with pytest.raises(SystemExit):
        make_stdlib_corpus.main(["--out", str(tmp_path), "--stdlib", str(tmp_path / "missing")])
