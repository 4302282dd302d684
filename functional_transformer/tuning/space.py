"""A sweep's search space: which model and training settings vary, and over what.

A space maps a setting's name (a TransformerConfig or TrainConfig field) to one of
    {"low": a, "high": b}              an int range when a and b are ints, else a float range;
                                       with "log": true on a log scale, with "step": s on a grid
    {"choices": [x, y, ...]}           one of these values
    {"value": x}                       fixed
which is also its TOML form (`ft sweep --space space.toml`):

    [learning_rate]
    low = 3e-4
    high = 1e-2
    log = true

    [d_model]
    choices = [32, 64]

A file's entries replace the default's entries of the same name; the others keep the default.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

from ..errors import UserInputError

MODEL_SETTINGS = (
    "d_model",
    "n_heads",
    "d_ff",
    "n_encoder_layers",
    "n_decoder_layers",
    "drop_rate",
    "norm_first",
    "tie_embeddings",
    "activation",
    "positional",
)
TRAIN_SETTINGS = (
    "learning_rate",
    "warmup_steps",
    "schedule",
    "optimizer",
    "weight_decay",
    "clip_norm",
    "label_smoothing",
    "batch_size",
)
SETTINGS = MODEL_SETTINGS + TRAIN_SETTINGS
ENTRY_KEYS = {"low", "high", "log", "step", "choices", "value"}

# The default: around `ft train`'s defaults, wide enough to find both smaller models and faster
# learning rates. "transformer" is left out of the schedules because learning_rate means a scale of
# d_model^-0.5 there, not a peak rate; a space file can add it.
DEFAULT_SPACE: dict[str, dict] = {
    "learning_rate": {"low": 3e-4, "high": 1e-2, "log": True},
    "warmup_steps": {"low": 0, "high": 100, "step": 10},
    "schedule": {"choices": ["cosine", "constant"]},
    "d_model": {"choices": [32, 64, 128]},
    "n_heads": {"choices": [1, 2, 4, 8]},
    "d_ff": {"choices": [64, 128, 256, 512]},
    "n_encoder_layers": {"low": 1, "high": 3},
    "n_decoder_layers": {"low": 1, "high": 3},
    "drop_rate": {"low": 0.0, "high": 0.3},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "batch_size": {"choices": [32, 64, 128]},
    "norm_first": {"choices": [False, True]},
}


class SpaceError(UserInputError):
    """A search space that cannot be used: an unknown setting, an empty range, a bad entry."""


def check_space(space: dict[str, dict], where: str = "the search space") -> dict[str, dict]:
    """The space, checked: every name a known setting, every entry well formed and non-empty."""
    for name, entry in space.items():
        if name not in SETTINGS:
            raise SpaceError(f"{where}: unknown setting {name!r}; the settings a sweep can vary are {list(SETTINGS)}")
        if not isinstance(entry, dict):
            raise SpaceError(f"{where}: {name} must be a table (low/high, choices or value), got {entry!r}")
        unknown = set(entry) - ENTRY_KEYS
        if unknown:
            raise SpaceError(
                f"{where}: {name} has unknown keys {sorted(unknown)}; use low/high/log/step, choices or value"
            )
        kinds = [k for k in ("value", "choices", "low") if k in entry]
        if len(kinds) != 1 or (("low" in entry) != ("high" in entry)):
            raise SpaceError(f"{where}: {name} needs exactly one of: low and high, choices, value")
        if "choices" in entry and (not isinstance(entry["choices"], list) or not entry["choices"]):
            raise SpaceError(f"{where}: {name} has no choices")
        if "low" in entry:
            low, high = entry["low"], entry["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
                raise SpaceError(f"{where}: {name} low and high must be numbers, got {low!r} and {high!r}")
            if not low <= high or not (math.isfinite(low) and math.isfinite(high)):
                raise SpaceError(f"{where}: {name} has an empty range: low {low} > high {high}")
            if entry.get("log") and low <= 0:
                raise SpaceError(f"{where}: {name} is on a log scale, so low must be positive, got {low}")
            if entry.get("log") and "step" in entry:
                raise SpaceError(f"{where}: {name} cannot have both log and step")
    return space


def load_space(path: str | Path | None) -> dict[str, dict]:
    """The default space, with the entries of a TOML file (if any) over it."""
    space = {name: dict(entry) for name, entry in DEFAULT_SPACE.items()}
    if path is None:
        return check_space(space)
    path = Path(path)
    try:
        given = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpaceError(f"the space file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpaceError(f"{path} is not valid TOML: {err}") from None
    check_space(given, str(path))
    return check_space({**space, **given})


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    """One value per setting, drawn through an Optuna trial (fixed values are recorded as attributes)."""
    values = {}
    for name, entry in space.items():
        if "value" in entry:
            values[name] = entry["value"]
        elif "choices" in entry:
            values[name] = trial.suggest_categorical(name, entry["choices"])
        elif isinstance(entry["low"], int) and isinstance(entry["high"], int):
            values[name] = trial.suggest_int(
                name, entry["low"], entry["high"], step=entry.get("step", 1), log=bool(entry.get("log"))
            )
        else:
            values[name] = trial.suggest_float(
                name, float(entry["low"]), float(entry["high"]), log=bool(entry.get("log")), step=entry.get("step")
            )
    return values


def split_settings(values: dict[str, Any]) -> tuple[dict, dict]:
    """(TransformerConfig fields, TrainConfig fields) of one trial's values."""
    return (
        {k: v for k, v in values.items() if k in MODEL_SETTINGS},
        {k: v for k, v in values.items() if k in TRAIN_SETTINGS},
    )


def space_json(space: dict[str, dict]) -> str:
    """A canonical text of the space, to tell whether a resumed study searches the same one."""
    return json.dumps(space, sort_keys=True)
