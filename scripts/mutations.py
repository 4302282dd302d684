"""Plant small bugs one at a time and check that the tests catch each one (mutation testing by hand).

Each mutation in the data file (default scripts/mutations.toml) names a file, an exact text in it,
the text that replaces it, the pytest arguments to run and the backend(s) to run them on. The
script copies the working tree (uncommitted changes included; .git, .venv and caches left out)
into a temporary folder once, then for each mutation and backend: replaces the text there, runs
pytest there with this interpreter, and puts the file back. The working tree is never written.

A mutation is "killed" when pytest reports failing tests (exit code 1), "survived" when the tests
pass, and "error" for any other outcome (collection error, no tests collected, timeout): an
error says nothing about the tests, so it counts against the run like a survivor. A mutation
marked `expect = "survived"` is a known equivalent one (its `why` says why no test can see it):
it is run and shown, and its surviving is no failure. Before the
mutations, each distinct (tests, backend) runs once on the unmutated copy and must pass, since a
test that already fails would "kill" every mutation.

    uv run python scripts/mutations.py                          # every mutation
    uv run python scripts/mutations.py --only beam-alpha-ignored bpe-targets-without-eos
    uv run python scripts/mutations.py --list

Exit code: 0 when every mutation expected to be killed was, 1 when one survived or any errored (or
the tests fail without a mutation), 2 for a bad data file or an unknown --only name.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(__file__).resolve().parent / "mutations.toml"
BACKENDS = ("numpy", "jax")
# Left out of the copy: the environment (the copy runs with this interpreter), git's data, caches, and
# the top-level folders that .gitignore names (run folders, downloaded data, built wheels).
_IGNORED_ANYWHERE = shutil.ignore_patterns(".git", ".venv", ".venv-*", "__pycache__", ".pytest_cache", "*.egg-info")
_IGNORED_AT_TOP = {"runs", "data", "dist", ".whl", ".gl"}


def ignored(folder: str, names: list[str]) -> set[str]:
    """shutil.copytree's `ignore`: what of `names` in `folder` stays out of the copy."""
    at_top = Path(folder).resolve() == REPO
    return set(_IGNORED_ANYWHERE(folder, names)) | ({n for n in names if n in _IGNORED_AT_TOP} if at_top else set())


FIELDS = {"name", "file", "old", "new", "tests", "backend", "why", "expect"}
EXPECTATIONS = ("killed", "survived")


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments: test files, node ids, -k expressions
    backends: tuple[str, ...]
    why: str = ""
    expect: str = "killed"  # "survived": a known equivalent mutation (no test can tell it apart), listed with its why


class DataFileError(ValueError):
    """The data file is malformed or a mutation does not apply to the tree."""


def load_mutations(path: Path, root: Path = REPO) -> list[Mutation]:
    """The mutations of the TOML file at `path` ([[mutation]] tables), each checked against `root`:
    its file exists and holds `old` exactly once."""
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8")).get("mutation", [])
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise DataFileError(f"cannot read {path}: {err}") from err
    mutations, names = [], set()
    for i, table in enumerate(tables):
        where = f"{path.name}, mutation {i + 1} ({table.get('name', 'unnamed')})"
        missing = {"name", "file", "old", "new", "tests", "backend"} - set(table)
        unknown = set(table) - FIELDS
        if missing or unknown:
            raise DataFileError(
                f"{where}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}; "
                f"each mutation has {sorted(FIELDS)} ('why' and 'expect' optional)"
            )
        if table.get("expect", "killed") not in EXPECTATIONS:
            raise DataFileError(f"{where}: expect must be one of {', '.join(EXPECTATIONS)}, got {table['expect']!r}")
        backend = table["backend"]
        backends = BACKENDS if backend == "both" else (backend,)
        if any(b not in BACKENDS for b in backends):
            raise DataFileError(f"{where}: backend {backend!r} must be one of numpy, jax, both")
        tests = table["tests"]
        if isinstance(tests, str) or not tests or not all(isinstance(t, str) for t in tests):
            raise DataFileError(f"{where}: tests must be a non-empty list of pytest arguments, got {tests!r}")
        if table["name"] in names:
            raise DataFileError(f"{where}: the name {table['name']!r} is used twice")
        names.add(table["name"])
        mutation = Mutation(
            table["name"],
            table["file"],
            table["old"],
            table["new"],
            tuple(tests),
            backends,
            table.get("why", ""),
            table.get("expect", "killed"),
        )
        if mutation.old == mutation.new:
            raise DataFileError(f"{where}: old and new are the same text, so nothing would be planted")
        target = root / mutation.file
        if not target.is_file():
            raise DataFileError(f"{where}: {mutation.file} does not exist")
        count = target.read_text(encoding="utf-8").count(mutation.old)
        if count != 1:
            raise DataFileError(
                f"{where}: the old text occurs {count} times in {mutation.file}, it must occur "
                "exactly once; update the mutation to the current code"
            )
        mutations.append(mutation)
    return mutations


def run_pytest(copy: Path, tests: tuple[str, ...], backend: str, timeout_s: float) -> tuple[int | None, float, str]:
    """pytest on `tests` in the copy, on `backend` -> (exit code or None on timeout, seconds, output summary):
    the summary is the first failing test's id where one failed, else the last lines of the output."""
    env = dict(os.environ, FT_BACKEND=backend, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, f"timed out after {timeout_s:.0f} s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    failed = [line.split()[1] for line in lines if line.startswith("FAILED ")]
    summary = failed[0] if done.returncode == 1 and failed else "\n".join(lines[-3:])
    return done.returncode, time.perf_counter() - start, summary


def check_imports_from(copy: Path) -> None:
    """Fail unless the copy's packages, not the working tree's, are the ones its tests import."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    code = "import backends, functional_transformer as ft; print(ft.__file__); print(backends.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True, check=True)
    for line in done.stdout.split():
        if not Path(line).resolve().is_relative_to(copy.resolve()):
            raise RuntimeError(f"the copy imports {line}, outside the copy {copy}: mutations would not be seen")


def outcome(code: int | None) -> str:
    return {0: "survived", 1: "killed"}.get(code, "error")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the TOML file of mutations")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run (default 900)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the check that the tests pass on the unmutated copy"
    )
    args = parser.parse_args(argv)
    try:
        mutations = load_mutations(args.data)
    except DataFileError as err:
        print(f"mutations: error: {err}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutations})
        if unknown:
            print(f"mutations: error: no mutation named {', '.join(unknown)}; see --list", file=sys.stderr)
            return 2
        mutations = [m for m in mutations if m.name in args.only]
    if args.list:
        for m in mutations:
            print(f"{m.name:40} {'+'.join(m.backends):9} expect {m.expect:8} {m.file}  [{' '.join(m.tests)}]")
        return 0

    with tempfile.TemporaryDirectory(prefix="ft-mutations-") as temp:
        copy = Path(temp) / "tree"
        shutil.copytree(REPO, copy, ignore=ignored)
        check_imports_from(copy)
        if not args.no_baseline:
            for tests, backend in dict.fromkeys((m.tests, b) for m in mutations for b in m.backends):
                code, seconds, tail = run_pytest(copy, tests, backend, args.timeout)
                print(
                    f"unmutated: FT_BACKEND={backend} pytest {' '.join(tests)}: exit {code} ({seconds:.0f} s)",
                    flush=True,
                )
                if code != 0:
                    print(
                        f"mutations: error: the tests fail without any mutation (FT_BACKEND={backend} pytest "
                        f"{' '.join(tests)}, exit code {code}):\n{tail}",
                        file=sys.stderr,
                    )
                    return 1
        rows = []
        for m in mutations:
            target = copy / m.file
            original = target.read_text(encoding="utf-8")
            target.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                for backend in m.backends:
                    code, seconds, tail = run_pytest(copy, m.tests, backend, args.timeout)
                    rows.append((m, backend, outcome(code), code, seconds, tail if code == 1 else ""))
                    print(f"{m.name:40} {backend:6} {outcome(code):9} (exit {code}, {seconds:.0f} s)", flush=True)
                    if outcome(code) == "error":
                        print(f"    {tail}", flush=True)
            finally:
                target.write_text(original, encoding="utf-8")
    return report(rows)


def report(rows: list) -> int:
    """Print the table of (mutation, backend, outcome, exit code, seconds, first failed test) rows -> the exit code."""
    print()
    print(f"| {'mutation':40} | backend | result   | expected | exit | seconds | first failed test")
    print(f"|{'-' * 42}|---------|----------|----------|------|---------|------------------")
    for m, backend, result, code, seconds, caught_by in rows:
        print(f"| {m.name:40} | {backend:7} | {result:8} | {m.expect:8} | {str(code):4} | {seconds:7.0f} | {caught_by}")
    failed = [
        (m, backend, result)
        for m, backend, result, *_ in rows
        if result == "error" or (m.expect == "killed" and result != "killed")
    ]
    newly_killed = [m.name for m, _, result, *_ in rows if m.expect == "survived" and result == "killed"]
    expected = sum(m.expect == "killed" for m, *_ in rows)
    killed = sum(m.expect == "killed" and result == "killed" for m, _, result, *_ in rows)
    print(
        f"\n{killed} of the {expected} mutations that the tests must catch were killed"
        + (
            f"; NOT killed: {', '.join(f'{m.name} ({backend}, {result})' for m, backend, result in failed)}"
            if failed
            else ""
        )
    )
    if newly_killed:
        print(f'now killed though listed as expect = "survived" (update their entries): {", ".join(newly_killed)}')
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
