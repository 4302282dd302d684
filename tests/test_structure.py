"""The package's structure: where configuration lives, function length, import graph."""

from __future__ import annotations

import ast
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
