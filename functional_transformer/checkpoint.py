"""Training checkpoints: one safetensors file holding everything needed to resume or predict.

Stored trees: "params", "opt_state" and "train" ({"step", "key"}: the step count, which is also
the data position, and the run's RNG key). Stored metadata (JSON strings): the model config,
the training config, the vocabulary, the data spec and the backend that wrote it. Writes are
atomic (checkpoint_format.save_file writes a temporary file, then renames it), so a crash
mid-save leaves the previous checkpoint intact. A checkpoint written on one backend loads on the
other: arrays come back as NumPy and are moved to the backend asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from backends import Backend

from .checkpoint_format import CheckpointError, load_tree, save_tree
from .config import TransformerConfig
from .data import CharTokenizer

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "functional_transformer.checkpoint.v1"


def checkpoint_path(path: str | os.PathLike) -> Path:
    """A run folder's checkpoint file, or the file itself when given one."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() or path.suffix != ".safetensors" else path


def save(path, state: dict, backend: Backend, *, cfg: TransformerConfig, tokenizer: CharTokenizer,
         train_config: dict, data_spec: dict, key) -> Path:
    """Write the training state (params, opt_state, step) and everything around it to `path`."""
    path = checkpoint_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trees = {
        "params": backend.tree_to_numpy(state["params"]),
        "opt_state": backend.tree_to_numpy(state["opt_state"]),
        "train": {"step": backend.to_numpy(state["step"]), "key": backend.to_numpy(key)},
    }
    metadata = {
        "format": FORMAT,
        "model_config": json.dumps(cfg.to_dict()),
        "train_config": json.dumps(train_config),
        "data_spec": json.dumps(data_spec),
        "vocabulary": tokenizer.to_json(),
        "backend": backend.name,
    }
    save_tree(path, trees, metadata)
    return path


def load(path, backend: Backend) -> dict[str, Any]:
    """Read a checkpoint onto `backend`: {"state", "key", "cfg", "tokenizer", "train_config", "data_spec", "backend"}."""
    path = checkpoint_path(path)
    trees, metadata = load_tree(path)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a functional_transformer checkpoint "
            f"(its format field is {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    missing = {"params", "opt_state", "train"} - set(trees)
    if missing:
        raise CheckpointError(f"{path} lacks the trees {sorted(missing)}; it may have been written by another tool")
    try:
        cfg = TransformerConfig.from_dict(json.loads(metadata["model_config"]))
        tokenizer = CharTokenizer.from_json(metadata["vocabulary"])
        train_config = json.loads(metadata["train_config"])
        data_spec = json.loads(metadata["data_spec"])
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} has unreadable metadata ({err}); the file is damaged") from err
    state = {
        "params": backend.tree_asarray(trees["params"]),
        "opt_state": backend.tree_asarray(trees["opt_state"]),
        "step": backend.asarray(trees["train"]["step"]),
    }
    return {
        "state": state,
        "key": backend.asarray(trees["train"]["key"]),
        "cfg": cfg,
        "tokenizer": tokenizer,
        "train_config": train_config,
        "data_spec": data_spec,
        "backend": metadata.get("backend"),
    }
