"""The package's structure: where configuration lives, function length, import graph."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "functional_transformer"


def _imported_modules(path: Path) -> set[str]:
    """The package-relative names `path` imports (from . import x, from .y import z)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            names.add(node.module or "")
    return names


def test_train_config_lives_in_config_and_the_loop_reexports_it():
    """TrainConfig is defined beside TransformerConfig, and train.TrainConfig is the same class, so code
    that imported it from the loop module keeps working; config.py imports no loop or model module."""
    from functional_transformer import config, train

    assert train.TrainConfig is config.TrainConfig
    assert config.TrainConfig.__module__ == "functional_transformer.config"
    assert _imported_modules(PACKAGE / "config.py") <= {"errors"}


SOURCE_ROOTS = ("functional_transformer", "backends")
# What runs only under a type checker is no import at run time.
TYPE_CHECKING_NAMES = {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def _module_files() -> dict[str, Path]:
    """Every module of the library, by dotted name (a package by its own name, from its __init__.py)."""
    modules = {}
    for root in SOURCE_ROOTS:
        for path in sorted((ROOT / root).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MAX_FUNCTION_LINES = 80


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """(name, lines) of each function of `source` (methods and nested ones too) whose def line to
    last line, docstring included, is longer than `limit`."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


def test_long_functions_names_a_planted_long_function_and_only_it():
    """The length check itself: a method of 81 lines is named, one of 80 and a short function are not."""
    body = "".join(f"        x{i} = {i}\n" for i in range(79))
    source = f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{body}        return 0\n"
    assert long_functions(source) == [("long", 81)]
    assert long_functions(source, limit=81) == []


def test_no_library_function_is_over_80_lines():
    """Every function of functional_transformer/ and backends/ fits in MAX_FUNCTION_LINES (the house
    rule): a longer one is split into named pieces."""
    found = [
        f"{name} in {path.relative_to(ROOT)} ({lines} lines)"
        for path in _module_files().values()
        for name, lines in long_functions(path.read_text())
    ]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines: {'; '.join(found)}; split them into named pieces"


def _runtime_imports(tree: ast.AST):
    """The Import and ImportFrom nodes of a module, at any depth, less those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING_NAMES:
            yield from (n for child in node.orelse for n in _runtime_imports(child))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def import_graph() -> dict[str, set[str]]:
    """module -> the library modules it imports (function-level imports included): `from .x import y`
    points at x.y where that is a module, else at x."""
    modules = _module_files()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                bases, names = [alias.name for alias in node.names], []
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                bases, names = [base], [alias.name for alias in node.names]
            for base in bases:
                submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
                targets.update(submodules)
                if base in modules and len(submodules) < len(names) or (base in modules and not names):
                    targets.add(base)
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None where there is none (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one_that_is_there():
    """The cycle finder itself: a planted circle a -> b -> c -> a is named; a diamond is no circle."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None


def test_the_import_graph_sees_function_level_imports_and_skips_type_checking_ones():
    """The graph is built from what runs: an import inside a function counts; one under TYPE_CHECKING does not."""
    graph = import_graph()
    assert "functional_transformer.data.tokenizer" in graph["functional_transformer.data.saved_tokenizer"]
    assert "functional_transformer.run_writer" in graph["functional_transformer.train"]
    assert "functional_transformer.train" not in graph["functional_transformer.run_writer"]  # TYPE_CHECKING only


def test_no_import_cycle_in_the_library():
    """No module of functional_transformer/ or backends/ imports (at module or function level) a module
    that imports it back, directly or through others."""
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_module_is_named_after_a_standard_library_module():
    """A module named like one of Python's own (inspect, types, random, ...) shadows it for code that
    imports by the short name and confuses readers; the library has none."""
    clashes = sorted(
        name for name in _module_files() if name.rpartition(".")[2] in sys.stdlib_module_names and "." in name
    )
    assert not clashes, f"modules named after standard-library modules: {clashes}; rename them"
