"""Training checkpoints: one safetensors file holding everything needed to resume or predict.

Stored trees: "params", "opt_state" and "train" ({"step", "key"}: the step count, which is also
the data position, and the run's RNG key). Stored metadata (JSON strings): the model family
("arch": "encoder_decoder", "decoder" or "encoder"; files without it are encoder-decoders), the model config,
the training config, the tokenizer (any kind: tokenizer_from_json reads it back), the data spec and the backend that wrote it. Writes are
atomic (checkpoint_format.save_file writes a temporary file, then renames it), so a crash
mid-save leaves the previous checkpoint intact. A checkpoint written on one backend loads on the
other: arrays come back as NumPy and are moved to the backend asked for.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from backends import Backend

from .checkpoint_format import CheckpointError, load_tree, save_tree
from .config import TrainConfig, TransformerConfig
from .data import Tokenizer, tokenizer_from_json
from .data.bpe import TextExtraMissing
from .models import DecoderConfig, EncoderConfig

CHECKPOINT_NAME = "checkpoint.safetensors"
BEST_NAME = "best.safetensors"
FILE_NAMES = {"last": CHECKPOINT_NAME, "best": BEST_NAME}
FORMAT = "functional_transformer.checkpoint.v1"
# The model families and their configs: the checkpoint's "arch" says which reads "model_config".
ARCHS = {"encoder_decoder": TransformerConfig, "decoder": DecoderConfig, "encoder": EncoderConfig}
# A model config of any family.
ModelConfig = TransformerConfig | DecoderConfig | EncoderConfig


def arch_of(cfg: ModelConfig) -> str:
    """The family name of a model config ("encoder_decoder", "decoder", "encoder")."""
    for name, config_type in ARCHS.items():
        if isinstance(cfg, config_type):
            return name
    raise TypeError(f"not a model config of this library: {type(cfg).__name__}")


def checkpoint_path(path: str | os.PathLike, which: str = "last") -> Path:
    """A run folder's checkpoint file ("last": checkpoint.safetensors, the one training resumes
    from; "best": best.safetensors, the best by the run's best_by held-out metric), or the file itself when given one."""
    if which not in FILE_NAMES:
        raise ValueError(f"which must be one of {sorted(FILE_NAMES)}, got {which!r}")
    path = Path(path)
    return path / FILE_NAMES[which] if path.is_dir() or path.suffix != ".safetensors" else path


def resolve(path: str | os.PathLike, which: str | None = None) -> Path:
    """The checkpoint file that `ft eval`/`ft predict` read: with which=None, a run folder's best
    checkpoint where it has one, else its last."""
    if which is None:
        best = checkpoint_path(path, "best")
        return best if best.exists() else checkpoint_path(path, "last")
    return checkpoint_path(path, which)


def save(
    path,
    state: dict,
    backend: Backend,
    *,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    train_config: dict,
    data_spec: dict,
    key,
    progress: dict | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Write the training state (params, opt_state, step) and everything around it to `path`
    (a file, or a run folder for its last checkpoint); progress is the loop's best-so-far record;
    labels are a classifier's class names (class id i is labels[i])."""
    path = checkpoint_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trees = {
        "params": backend.tree_to_numpy(state["params"]),
        "opt_state": backend.tree_to_numpy(state["opt_state"]),
        "train": {"step": backend.to_numpy(state["step"]), "key": backend.to_numpy(key)},
    }
    metadata = {
        "format": FORMAT,
        "arch": arch_of(cfg),
        "model_config": json.dumps(cfg.to_dict()),
        "train_config": json.dumps(train_config),
        "data_spec": json.dumps(data_spec),
        "vocabulary": tokenizer.to_json(),
        "backend": backend.name,
        "progress": json.dumps(progress or {}),
    }
    if labels is not None:
        metadata["labels"] = json.dumps(list(labels))
    save_tree(path, trees, metadata)
    return path


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read onto a backend.

    state: {"params", "opt_state", "step"}, the training state on the backend; key: the run's RNG key;
    arch: the model family ("encoder_decoder", "decoder", "encoder"); cfg: its model config;
    train_config: the TrainConfig it trained with (an optax optimizer reads back as "optax");
    data_spec: where its data came from; written_on: the name of the backend that wrote it (None in
    files that do not record it); progress: the loop's best-so-far record ({} before any);
    labels: a classifier's class names, else None; path: the file read."""

    state: dict
    key: Any
    arch: str
    cfg: ModelConfig
    tokenizer: Tokenizer
    train_config: TrainConfig
    data_spec: dict
    written_on: str | None
    progress: dict
    labels: list[str] | None
    path: Path

    @property
    def step(self) -> int:
        """The number of updates taken (also the data position training resumes from)."""
        return int(np.asarray(self.state["step"]))


def load(path, backend: Backend) -> Checkpoint:
    """Read a checkpoint onto `backend`. `path` is a file or a run folder (its last checkpoint)."""
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
    arch = metadata.get("arch", "encoder_decoder")  # absent in files with an encoder-decoder
    if arch not in ARCHS:
        raise CheckpointError(
            f"{path} holds a model of the family {arch!r}, which this version does not know "
            f"(it knows {sorted(ARCHS)}); it was written by a newer version"
        )
    try:
        cfg = ARCHS[arch].from_dict(json.loads(metadata["model_config"]))
        labels = json.loads(metadata["labels"]) if "labels" in metadata else None
        tokenizer = tokenizer_from_json(metadata["vocabulary"])
        train_config = TrainConfig(**json.loads(metadata["train_config"]))
        data_spec = json.loads(metadata["data_spec"])
        progress = json.loads(metadata.get("progress", "{}"))  # absent in files without a best checkpoint
    except TextExtraMissing as err:
        raise TextExtraMissing(f"{path} holds a BPE tokenizer: {err}") from None
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} has unreadable metadata ({err}); the file is damaged") from err
    state = {
        "params": backend.tree_asarray(trees["params"]),
        "opt_state": backend.tree_asarray(trees["opt_state"]),
        "step": backend.asarray(trees["train"]["step"]),
    }
    return Checkpoint(
        state=state,
        key=backend.asarray(trees["train"]["key"]),
        arch=arch,
        cfg=cfg,
        tokenizer=tokenizer,
        train_config=train_config,
        data_spec=data_spec,
        written_on=metadata.get("backend"),
        progress=progress,
        labels=labels,
        path=path,
    )
