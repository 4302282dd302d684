"""How much backward code was written by hand: the lines of every VJP, per module, against the forward code.

On JAX, `jax.grad` derives all of it (gradients.grad_autodiff).

    uv run python -m benchmarks.studies.backward_lines            # a Markdown table on stdout
    uv run python -m benchmarks.studies.backward_lines --json out.json

A backward function is any `def` whose name holds "bwd" (`bwd`, `dot_product_bwd`,
`encode_bwd`, `checked_bwd`, ...), read with `ast`; a function nested in one is counted once,
with it. "Code lines" leave out blank lines, comment-only lines and docstrings; "residual
types" are the NamedTuples named "...Saved", which exist only to carry the forward's residuals to
the backward.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "functional_transformer"
MODULES = [
    *sorted((PACKAGE / "layers").glob("[!_]*.py")),
    *sorted((PACKAGE / "parts").glob("[!_]*.py")),
    *sorted((PACKAGE / "models").glob("[!_]*.py")),
    PACKAGE / "loss.py",
]


def _is_backward(node: ast.AST) -> bool:
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "bwd" in node.name


def _is_residual_type(node: ast.AST) -> bool:
    return isinstance(node, ast.ClassDef) and node.name.endswith("Saved")


def _outermost(tree: ast.AST, wanted) -> list[ast.AST]:
    """The nodes that satisfy `wanted`, leaving out those inside another such node."""
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if wanted(child):
                found.append(child)
            else:
                visit(child)

    visit(tree)
    return found


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def _code_lines(source: str, tree: ast.AST) -> set[int]:
    """Line numbers that hold code: some token other than a comment, a newline or indentation, and
    not part of a docstring."""
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines - _docstring_lines(tree)


def count_module(path: Path) -> dict:
    """{"module", "backward_functions", "backward_lines", "backward_code_lines", "residual_type_lines",
    "code_lines"} of one file: lines are from `def` to the function's last line; code lines as above."""
    source = path.read_text()
    tree = ast.parse(source)
    code = _code_lines(source, tree)
    backward = _outermost(tree, _is_backward)
    residuals = _outermost(tree, _is_residual_type)
    spans = set().union(*(range(f.lineno, f.end_lineno + 1) for f in backward)) if backward else set()
    residual_spans = set().union(*(range(c.lineno, c.end_lineno + 1) for c in residuals)) if residuals else set()
    return {
        "module": str(path.relative_to(PACKAGE.parent)),
        "backward_functions": [f.name for f in backward],
        "backward_lines": len(spans),
        "backward_code_lines": len(spans & code),
        "residual_type_code_lines": len(residual_spans & code),
        "code_lines": len(code),
    }


def count_all(paths=MODULES) -> dict:
    rows = [count_module(path) for path in paths]
    total = {
        name: sum(r[name] for r in rows)
        for name in ("backward_lines", "backward_code_lines", "residual_type_code_lines", "code_lines")
    }
    total["backward_functions"] = sum(len(r["backward_functions"]) for r in rows)
    return {"modules": rows, "total": total}


def markdown(counts: dict) -> str:
    lines = [
        "| module | backward functions | backward lines | backward code lines | residual types (code lines) "
        "| module code lines | backward share |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in counts["modules"]:
        share = r["backward_code_lines"] / r["code_lines"] if r["code_lines"] else 0.0
        names = ", ".join(f"`{n}`" for n in r["backward_functions"]) or "–"
        lines.append(
            f"| `{r['module']}` | {names} | {r['backward_lines']} | {r['backward_code_lines']} | "
            f"{r['residual_type_code_lines']} | {r['code_lines']} | {share:.0%} |"
        )
    t = counts["total"]
    lines.append(
        f"| **all** | {t['backward_functions']} functions | {t['backward_lines']} | "
        f"{t['backward_code_lines']} | {t['residual_type_code_lines']} | {t['code_lines']} | "
        f"{t['backward_code_lines'] / t['code_lines']:.0%} |"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.backward_lines", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", type=Path, help="also write the counts to this JSON file")
    args = parser.parse_args(argv)
    counts = count_all()
    print(markdown(counts))
    if args.json:
        args.json.write_text(json.dumps(counts, indent=1) + "\n")


if __name__ == "__main__":
    main()
