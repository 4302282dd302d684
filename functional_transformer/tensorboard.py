"""TensorBoard event files from a run's records, with tensorboardX (the [tensorboard] extra).

    writer = ft.TensorBoardWriter("runs/tb/reverse")
    ft.fit(data="reverse", out_dir="runs/reverse", callbacks=[writer])   # ft train --tensorboard DIR
    writer.close()

Every number of every training record and held-out evaluation (loss, accuracy, grad_norm,
learning_rate, tokens_per_s, exact_match, ...) becomes a scalar named "<split>/<field>"
("train/loss", "valid/exact_match") at the record's step; `tensorboard --logdir runs/tb` shows them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserInputError

INSTALL_HINT = "pip install 'functional-transformer[tensorboard]' (in a checkout: uv sync --extra tensorboard)"


class TensorBoardMissing(UserInputError):
    """TensorBoard events were asked for where tensorboardX is not installed."""


def import_tensorboardx():
    """The tensorboardX module, or TensorBoardMissing saying how to install it."""
    try:
        import tensorboardX
    except ImportError:
        raise TensorBoardMissing(
            f"TensorBoard events are written with tensorboardX, an optional extra: {INSTALL_HINT}"
        ) from None
    return tensorboardX


class TensorBoardWriter:
    """A training callback (`callback(step, record)`, see train.Callback) that writes each record's
    numbers as TensorBoard scalars under `log_dir`; it never stops the run. The folder is made at the
    first record; `close()` (or a `with` block) flushes and closes the event file."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self._tensorboardx = import_tensorboardx()  # a missing extra is said before anything trains
        self._writer = None

    def __call__(self, step: int, record: dict) -> bool:
        if self._writer is None:
            self._writer = self._tensorboardx.SummaryWriter(str(self.log_dir))
        split = record.get("split", "train")
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{split}/{name}", value, step)
        self._writer.flush()  # a record is written every log_every steps: cheap, and a killed run keeps it
        return False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["TensorBoardMissing", "TensorBoardWriter", "import_tensorboardx"]
