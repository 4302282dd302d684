"""`ft info`: what a run folder or a checkpoint file holds, in a few lines, without training or decoding.

For each checkpoint (a folder's last and best, or the one file): its step and whether its SHA-256
checksums verify; then, from the last checkpoint (or the file), the best held-out value and the
metric that chose it, the parameter count, the tokenizer, and the model, training and data
settings. A missing path, a folder without a checkpoint or a damaged file is an error naming it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import backends

from .. import checkpoint, families
from ..checkpoint_format import CheckpointError, UncheckedCheckpointWarning
from ..config import train_config_record


def _load_verified(path: Path) -> tuple[checkpoint.Checkpoint, str]:
    """(the loaded checkpoint, a phrase on its checksums); CheckpointError where they do not match."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UncheckedCheckpointWarning)
        loaded = checkpoint.load(path, backends.get_backend("numpy"))
    if any(issubclass(w.category, UncheckedCheckpointWarning) for w in caught):
        return loaded, "no checksums (written by an earlier version or another tool): cannot be verified"
    return loaded, "checksums verified (SHA-256 of every tensor and of the header)"


def _describe_tokenizer(tokenizer) -> str:
    source, target = tokenizer.source, tokenizer.target
    if source is target:
        return f"{source.kind}, one vocabulary of {source.vocab_size} ids for sources and targets"
    return (
        f"{source.kind} source vocabulary of {source.vocab_size} ids, {target.kind} target vocabulary of "
        f"{target.vocab_size} ids"
    )


def _fields(fields: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in fields.items() if value is not None)


def info_lines(path: str | Path) -> list[str]:
    """The lines `ft info PATH` prints for a run folder or a .safetensors checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a run folder or a .safetensors checkpoint file")
    if path.is_dir():
        files = [checkpoint.checkpoint_path(path, which) for which in ("last", "best")]
        files = [f for f in files if f.exists()]
        if not files:
            raise CheckpointError(
                f"{path} holds no checkpoint ({checkpoint.CHECKPOINT_NAME} or "
                f"{checkpoint.BEST_NAME}): not a run folder, or a run stopped before its first save"
            )
        lines = [f"run folder: {path}"]
    else:
        files, lines = [path], [f"checkpoint file: {path}"]
    loaded = []
    for file in files:
        checkpoint_loaded, checksums = _load_verified(file)
        loaded.append(checkpoint_loaded)
        lines.append(
            f"{file.name}: step {checkpoint_loaded.step} of {checkpoint_loaded.train_config.steps}; {checksums}"
        )
    main = loaded[0]  # the last checkpoint: the run's own progress and settings
    train_config, progress, cfg = main.train_config, main.progress or {}, main.cfg
    # best_by None: the family's own metric; files that lack best_value chose by exact match and kept only that.
    best_by = train_config.best_by or families.DEFAULT_BEST_BY[main.arch]
    best_value = progress.get("best_value", progress.get("best_exact_match"))
    if best_value is not None:
        lines.append(
            f"best held-out {best_by}: {best_value:.4f} at step {progress.get('best_step')} "
            f"(best_by {best_by} chose {checkpoint.BEST_NAME})"
        )
    else:
        lines.append("best held-out value: none (no evaluation on held-out data yet)")
    params = main.state["params"]
    leaves = backends.get_backend("numpy").tree_leaves(params)
    n_params = sum(int(leaf.size) for leaf in leaves)
    lines.append(
        f"parameters: {n_params:,} ({sum(int(leaf.nbytes) for leaf in leaves) / 2**20:.2f} MiB in "
        f"{cfg.dtype}); written on the {main.written_on} backend"
    )
    lines.append(f"tokenizer: {_describe_tokenizer(main.tokenizer)}")
    lines.append(f"model: {_fields(cfg.to_dict())}")
    lines.append(f"training: {_fields(train_config_record(train_config))}")
    lines.append(f"data: {_fields(main.data_spec)}")
    return lines


__all__ = ["info_lines"]
