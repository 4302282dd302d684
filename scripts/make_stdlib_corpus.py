"""Write a language-modelling corpus of English-and-code text from the Python standard library's docstrings.

Every Python ships its standard library as source, so this needs nothing downloaded: it walks the
`.py` files under `sysconfig.get_paths()["stdlib"]` in sorted order (skipping the folders test,
tests, idlelib, lib2to3, site-packages, dist-packages and __pycache__, and files named test_*.py),
parses each with `ast` (a file that does not decode or parse is skipped) and takes every module,
class and function docstring (`ast.get_docstring(clean=True)`), in source order. A document is one
docstring on one line: whitespace and newlines collapse to single spaces, one longer than
--max-chars is cut at the last word boundary within it, one shorter than --min-chars is dropped,
and of exact duplicates only the first is kept. Each document goes to train, valid or test (90/5/5)
by the SHA-256 of its text, so a document is in one split only and the split of a text never
depends on the others.

    uv run python scripts/make_stdlib_corpus.py --out data/stdlib

The corpus depends on the exact Python version (and build) that runs this script, since its
standard library is the source: the same Python writes byte-identical files on every run, another
version writes different ones. The summary printed names the version.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import platform
import sys
import sysconfig
import warnings
from pathlib import Path

SKIPPED_FOLDERS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"})
# Per cent of documents in each split, by the first 8 hex digits of the text's SHA-256.
SPLIT_PERCENTS = {"train": 90, "valid": 5, "test": 5}
DOCSTRING_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def source_files(stdlib_dir: Path, limit_files: int | None = None) -> list[Path]:
    """The .py files under stdlib_dir that the corpus reads, sorted by path relative to stdlib_dir."""
    found = []
    for folder, subfolders, filenames in os.walk(stdlib_dir):
        # Pruning in place keeps os.walk out of the skipped folders altogether.
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
        for name in filenames:
            if name.endswith(".py") and not name.startswith("test_"):
                found.append(Path(folder) / name)
    found.sort(key=lambda path: path.relative_to(stdlib_dir).as_posix())
    return found if limit_files is None else found[:limit_files]


def _docstring_owners(node: ast.AST):
    """node and every module, class and function under it, in source order."""
    if isinstance(node, DOCSTRING_NODES):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _docstring_owners(child)


def file_docstrings(path: Path) -> list[str]:
    """The cleaned docstrings of one source file in source order; [] if it does not decode or parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules warn, they still parse
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return []
    docstrings = []
    for owner in _docstring_owners(tree):
        docstring = ast.get_docstring(owner, clean=True)
        if docstring:
            docstrings.append(docstring)
    return docstrings


def make_document(docstring: str, min_chars: int, max_chars: int) -> str | None:
    """docstring on one line, cut to at most max_chars at a word boundary; None if under min_chars or not UTF-8."""
    # str.split() splits on every character str.splitlines() breaks at, so the result is one line.
    text = " ".join(docstring.split())
    if len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        text = text[:cut] if cut > 0 else text[:max_chars]
    if len(text) < min_chars:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written as an escape in a string literal
        return None
    return text


def split_of(text: str) -> str:
    """The split (train, valid or test) a document belongs to, from the SHA-256 of its UTF-8 text."""
    percent = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100
    for name, share in SPLIT_PERCENTS.items():
        if percent < share:
            return name
        percent -= share
    raise AssertionError("SPLIT_PERCENTS must add up to 100")


def make_splits(files: list[Path], min_chars: int, max_chars: int) -> dict[str, list[str]]:
    """{split: documents} from the docstrings of files, in file then source order, each text once."""
    seen: set[str] = set()
    splits: dict[str, list[str]] = {name: [] for name in SPLIT_PERCENTS}
    for path in files:
        for docstring in file_docstrings(path):
            text = make_document(docstring, min_chars, max_chars)
            if text is None or text in seen:
                continue
            seen.add(text)
            splits[split_of(text)].append(text)
    return splits


def write_lines(path: Path, lines: list[str]) -> None:
    """Write lines newline-terminated as UTF-8, replacing path only once the whole file is written."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(line + "\n" for line in lines)
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/stdlib"),
        help="folder for train.txt, valid.txt and test.txt (default data/stdlib)",
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=400,
        help="longest document; longer docstrings are cut at a word boundary (default 400)",
    )
    parser.add_argument("--min-chars", type=int, default=40, help="shortest document kept (default 40)")
    parser.add_argument(
        "--limit-files",
        type=int,
        default=None,
        help="read only the first N source files in sorted order (for quick tests; default all)",
    )
    parser.add_argument(
        "--stdlib", type=Path, default=None, help="source folder to read instead of this Python's standard library"
    )
    args = parser.parse_args(argv)
    if args.min_chars < 1:
        parser.error(f"--min-chars must be at least 1, got {args.min_chars}")
    if args.max_chars < args.min_chars:
        parser.error(f"--max-chars ({args.max_chars}) must be at least --min-chars ({args.min_chars})")
    if args.limit_files is not None and args.limit_files < 1:
        parser.error(f"--limit-files must be at least 1, got {args.limit_files}; leave it out to read every file")
    stdlib_dir = Path(args.stdlib if args.stdlib is not None else sysconfig.get_paths()["stdlib"])
    if not stdlib_dir.is_dir():
        parser.error(f"no source folder at {stdlib_dir}; pass --stdlib with the folder of .py files to read")

    files = source_files(stdlib_dir, args.limit_files)
    splits = make_splits(files, args.min_chars, args.max_chars)
    if not any(splits.values()):
        sys.exit(
            f"no docstring of at least {args.min_chars} characters in {len(files)} files under {stdlib_dir}; "
            "read more files (--limit-files) or lower --min-chars"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    version = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"from the standard library of {version} at {stdlib_dir}: {len(files)} files read")
    for name, documents in splits.items():
        path = args.out / f"{name}.txt"
        write_lines(path, documents)
        print(f"{path}: {len(documents)} documents, {sum(len(text) for text in documents)} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
