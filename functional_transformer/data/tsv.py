"""(source, target) pairs in a tab-separated text file.

Contract of `read_tsv(path)`:
- the file is UTF-8 (a byte-order mark at its start is dropped, with a note on stderr); each line is `source<TAB>target`, ended by "\\n" or "\\r\\n";
- a blank line (empty or only spaces, with no tab) is skipped;
- source and target are kept exactly as written (no stripping); neither may be empty;
- every bad line is found before anything is reported: a `DataError` (a ValueError) names the
  file and lists the first `MAX_REPORTED` bad lines by 1-based line number, with what is wrong;
- a file with no pairs is a `DataError`; a missing file is a `FileNotFoundError` naming the path.

`write_tsv(path, pairs)` writes pairs that `read_tsv` reads back unchanged. `read_lines(path)` reads
a file of one text per line (for `ft predict --input`), "-" being standard input.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import UserInputError

MAX_REPORTED = 10

Pair = tuple[str, str]


class DataError(UserInputError):
    """A data file's contents are not what they must be."""


def _line_problem(line: str) -> str | None:
    n_tabs = line.count("\t")
    if n_tabs == 0:
        return "no tab (expected source<TAB>target)"
    if n_tabs > 1:
        return f"{n_tabs} tabs (expected exactly 1, between source and target)"
    source, target = line.split("\t")
    if not source:
        return "empty source (nothing before the tab)"
    if not target:
        return "empty target (nothing after the tab)"
    return None


BYTE_ORDER_MARK = "\ufeff"


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_number = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}: line {line_number}: not valid UTF-8 ({err.reason})") from None
    if text.startswith(BYTE_ORDER_MARK):
        # Editors on Windows write one; kept, it would be a character of the first source (and a
        # vocabulary symbol that nothing else holds).
        print(
            f"note: {path} starts with a UTF-8 byte-order mark; it was dropped, not read as a character",
            file=sys.stderr,
        )
        text = text[len(BYTE_ORDER_MARK) :]
    return text


def read_tsv(path: str | os.PathLike) -> list[Pair]:
    """The (source, target) pairs of a `source<TAB>target` file, in file order."""
    return [pair for _, pair in _read_numbered(path)]


def tsv_line_numbers(path: str | os.PathLike) -> list[int]:
    """The 1-based line number of each pair `read_tsv(path)` returns (blank lines are skipped), to
    name a line in an error."""
    return [number for number, _ in _read_numbered(path)]


def _read_numbered(path: str | os.PathLike) -> list[tuple[int, Pair]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "TSV data file not found", str(path))
    text = _decode(path, path.read_bytes())

    pairs: list[tuple[int, Pair]] = []
    problems: list[tuple[int, str]] = []
    lines = text.split("\n")  # not splitlines(): that also splits at characters a source may hold
    for line_number, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if "\t" not in line and not line.strip():
            continue
        problem = _line_problem(line)
        if problem is None:
            source, target = line.split("\t")
            pairs.append((line_number, (source, target)))
        else:
            problems.append((line_number, problem))

    if problems:
        shown = "\n".join(f"  line {n}: {what}" for n, what in problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more bad lines" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{path}: {len(problems)} bad line(s), each must be source<TAB>target:\n{shown}{more}")
    if not pairs:
        raise DataError(f"{path}: no source<TAB>target pairs (the file is empty or only blank lines)")
    return pairs


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 file ("-": standard input), without their "\\n" or "\\r\\n"; a final line
    break ends the last line rather than starting an empty one. No lines at all is a DataError."""
    name = "standard input" if str(path) == "-" else str(path)
    if str(path) == "-":
        raw = sys.stdin.buffer.read()
    else:
        if not Path(path).exists():
            raise FileNotFoundError(errno.ENOENT, "input file not found", str(path))
        raw = Path(path).read_bytes()
    text = _decode(Path(name), raw)
    if not text:
        raise DataError(f"{name} is empty: give one source per line")
    lines = text.removesuffix("\n").split("\n")  # not splitlines(): that also splits at characters a line may hold
    return [line.removesuffix("\r") for line in lines]


def write_tsv(path: str | os.PathLike, pairs: Iterable[Pair]) -> None:
    """Write pairs as `source<TAB>target` lines; refuses fields that `read_tsv` could not read back."""
    lines = []
    for index, (source, target) in enumerate(pairs):
        for name, value in (("source", source), ("target", target)):
            if not value or any(c in value for c in "\t\n\r"):
                raise DataError(f"pair {index}: {name} {value!r} must be non-empty and hold no tab or line break")
        lines.append(f"{source}\t{target}\n")
    Path(path).write_text("".join(lines), encoding="utf-8", newline="")
