"""Tree helpers for nested dicts of arrays (the only pytree this project uses).

A tree is an array (a leaf), or a dict whose values are trees. Keys are strings and are visited
in sorted order, so two trees with the same keys always flatten in the same order. These helpers
are pure Python and work on any array type, inside or outside `jax.jit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Tree = Any


def is_leaf(node: Tree) -> bool:
    return not isinstance(node, dict)


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """`fn` applied leaf by leaf to trees of the same structure; a mismatch is a ValueError."""
    if is_leaf(tree):
        for other in rest:
            if not is_leaf(other):
                raise ValueError(f"tree structure mismatch: an array against a dict with keys {sorted(other)}")
        return fn(tree, *rest)
    keys = sorted(tree)
    for other in rest:
        if is_leaf(other) or sorted(other) != keys:
            got = "an array" if is_leaf(other) else f"keys {sorted(other)}"
            raise ValueError(f"tree structure mismatch: keys {keys} against {got}")
    return {k: tree_map(fn, tree[k], *(other[k] for other in rest)) for k in keys}


def tree_items(tree: Tree, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, leaf) pairs in sorted key order, e.g. ("encoder.layer_0.ln1.scale", array)."""
    if is_leaf(tree):
        yield prefix, tree
        return
    for k in sorted(tree):
        if "." in k:
            raise ValueError(f"tree key {k!r} contains '.', which is reserved as the path separator")
        yield from tree_items(tree[k], f"{prefix}.{k}" if prefix else k)


def tree_leaves(tree: Tree) -> list[Any]:
    return [leaf for _, leaf in tree_items(tree)]


def tree_flatten(tree: Tree) -> dict[str, Any]:
    """The flat {dotted path: leaf} dict of a tree (what a checkpoint file stores)."""
    return dict(tree_items(tree))


def tree_unflatten(flat: dict[str, Any]) -> Tree:
    """The inverse of `tree_flatten`."""
    if list(flat) == [""]:
        return flat[""]
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"path {path!r} runs through a leaf")
        if last in node:
            raise ValueError(f"path {path!r} given twice")
        node[last] = leaf
    return tree


def tree_structure(tree: Tree) -> Tree:
    """The tree with every leaf replaced by its shape: handy in error messages and tests."""
    return tree_map(lambda leaf: tuple(getattr(leaf, "shape", ())), tree)
