"""Run settings as TOML: `ft train --config FILE`, every run folder's config.toml, a sweep's best.toml.

A settings file has up to three tables, each optional:

    [model]            # the model config's fields, over the defaults of `ft train` (runs.MODEL_DEFAULTS)
    d_model = 64
    n_encoder_layers = 2

    [train]            # TrainConfig fields
    steps = 1000
    learning_rate = 0.003

    [data]             # what `ft train`'s data and tokenizer flags say
    task = "reverse"   # or: train = "train.tsv" and valid = "valid.tsv" (relative to this file's folder)
    seed = 0

The [model] table holds every field of the model's config except those that follow from the data
(the vocabulary sizes, pad_id and an encoder-decoder's max_len, a TSV run's max_len being its [data]
max_len; a classifier's n_classes and max_len). Which config: the [data] kind says the family, as
`ft train --arch` does: "text" (one document per line) trains a DecoderConfig language model,
"labelled" (text<TAB>label) an EncoderConfig classifier, a task or "tsv" the TransformerConfig
encoder-decoder. The [train]
table holds every TrainConfig field except schedule_start, which only `--resume --extend` sets.
The [data] table's keys are DATA_KEYS: the task and its sizes, or the TSV files; the seed of the
data (default: [train] seed); the tokenizer ("char" or "bpe", vocab_size, joint_vocab); and
eval_examples, the held-out examples each evaluation decodes. A key the tables do not know, or a
value of the wrong type, is an error naming the key and the file.

Files are read with the standard library's `tomllib` and written by `to_toml`, a writer for the
flat subset these files use (tables of strings, integers, floats, booleans; None is left out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import ModelConfig

import dataclasses
import os
import re
import tempfile
import tomllib
import types
import typing
from pathlib import Path

from . import families, runs
from .config import TrainConfig, train_config_record
from .data import DataError
from .errors import ConfigError

CONFIG_NAME = "config.toml"
# TrainConfig fields a file does not set: the step where an extended run's schedule restarted.
TRAIN_INTERNAL = ("schedule_start",)
# The [data] keys and their types; "kind" is written to say what the data were.
DATA_KEYS: dict[str, type] = {
    "kind": str,
    "task": str,
    "train": str,
    "valid": str,
    "n_train": int,
    "n_valid": int,
    "min_len": int,
    "max_len": int,
    "truncate_long": bool,
    "seed": int,
    "tokenizer": str,
    "vocab_size": int,
    "joint_vocab": bool,
    "eval_examples": int,
}
# The keys that say where the data come from; a --task or --data flag replaces all of them.
DATA_SOURCE_KEYS = ("kind", "task", "train", "valid")
DEFAULT_EVAL_EXAMPLES = 500


class ConfigFileError(ConfigError):
    """A settings file that cannot be used: not there, not TOML, an unknown key, a wrong type."""


# The [data] kinds of the language model's and the classifier's files; the others are the encoder-decoder's.
KIND_ARCH = {"text": "decoder", "labelled": "encoder", "documents": "decoder", "labelled_pairs": "encoder"}
# Config fields that follow from the data, per family.
FAMILY_DATA_FIELDS = {
    "encoder_decoder": runs.DATA_FIELDS,
    "decoder": ("vocab_size", "pad_id"),
    "encoder": ("vocab_size", "pad_id", "n_classes", "max_len"),
}


def arch_of_data(table: dict) -> str:
    """The model family a [data] table's kind trains."""
    return KIND_ARCH.get(table.get("kind", ""), "encoder_decoder")


def model_keys(arch: str = "encoder_decoder") -> dict[str, object]:
    """The [model] keys: the family's config fields less those the data decide, with their types."""
    config = families.CONFIGS[arch]
    hints = typing.get_type_hints(config)
    return {f.name: hints[f.name] for f in dataclasses.fields(config) if f.name not in FAMILY_DATA_FIELDS[arch]}


def train_keys() -> dict[str, object]:
    """The [train] keys: TrainConfig's fields less TRAIN_INTERNAL, with their types."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if f.name not in TRAIN_INTERNAL}


# ---------------------------------------------------------------------------------------------
# Writing


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:  # other control characters have no short escape
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value, where: str) -> str:
    if isinstance(value, bool):  # before int: a bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same float; TOML spells inf, -inf and nan alike.
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item, where) for item in value) + "]"
    raise TypeError(f"{where}: cannot write {type(value).__name__} {value!r} as a TOML value")


def to_toml(tables: dict[str, dict], header: str = "") -> str:
    """TOML text of {table name: {key: value}} (values: str, int, float, bool, lists of them; None
    is left out), after `header`'s lines as comments."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, table in tables.items():
        if lines:
            lines.append("")
        lines.append(f"[{_toml_key(name)}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value, f'[{name}] {key}')}")
    return "\n".join(lines) + "\n"


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename: a reader never sees half of it."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def data_table(spec: dict, eval_examples: int = DEFAULT_EVAL_EXAMPLES) -> dict:
    """The [data] table of a data spec (runs.task_data / runs.tsv_data; a TSV's paths made absolute,
    so the file works from any folder)."""
    table = {"kind": spec["kind"]}
    if spec["kind"] == "task":
        table.update({name: spec[name] for name in ("task", "n_train", "n_valid", "min_len", "max_len")})
    elif spec["kind"] in ("tsv", "text", "labelled"):
        table.update(
            train=str(Path(spec["train"]).resolve()),
            valid=str(Path(spec["valid"]).resolve()) if spec.get("valid") else None,
            max_len=spec.get("max_len"),
            truncate_long=spec.get("truncate_long"),
        )
    else:  # pairs given in memory: said, so that reading the file back refuses it instead of guessing
        table.update(n_train=spec["n_train"], n_valid=spec["n_valid"])
    table["seed"] = spec["seed"]
    tokenizer = spec.get("tokenizer") or {"kind": "char"}
    table.update(
        tokenizer=tokenizer["kind"], vocab_size=tokenizer.get("vocab_size"), joint_vocab=tokenizer.get("joint")
    )
    table["eval_examples"] = eval_examples
    return table


def settings_tables(
    cfg: ModelConfig | dict, tcfg: TrainConfig, spec: dict, eval_examples: int = DEFAULT_EVAL_EXAMPLES
) -> dict[str, dict]:
    """{"model", "train", "data"} tables of a run: cfg's fields less the data's (a dict: its fields
    over the defaults `fit` uses), every TrainConfig field but TRAIN_INTERNAL, and data_table(spec)."""
    arch = KIND_ARCH.get(spec["kind"], "encoder_decoder")
    fields = cfg.to_dict() if not isinstance(cfg, dict) else {**model_defaults(arch), **cfg}
    model = {name: fields[name] for name in model_keys(arch) if name in fields}
    record = train_config_record(tcfg)  # an optax optimizer, which no file can hold, as "optax"
    train = {name: record[name] for name in train_keys()}
    return {"model": model, "train": train, "data": data_table(spec, eval_examples)}


def model_defaults(arch: str = "encoder_decoder") -> dict:
    """What `fit` builds when told nothing: runs.MODEL_DEFAULTS (families.MODEL_DEFAULTS) over the config's own defaults."""
    own = {
        f.name: f.default
        for f in dataclasses.fields(families.CONFIGS[arch])
        if f.default is not dataclasses.MISSING and f.name not in FAMILY_DATA_FIELDS[arch]
    }
    return {**own, **(runs.MODEL_DEFAULTS if arch == "encoder_decoder" else families.MODEL_DEFAULTS[arch])}


def write_settings(
    path: str | os.PathLike,
    cfg: ModelConfig | dict,
    tcfg: TrainConfig,
    spec: dict,
    eval_examples: int = DEFAULT_EVAL_EXAMPLES,
    header: str = "",
) -> Path:
    """Write a run's settings (settings_tables) to `path` as TOML, atomically."""
    return write_text_atomically(path, to_toml(settings_tables(cfg, tcfg, spec, eval_examples), header))


# ---------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass(frozen=True)
class Settings:
    """A settings file's tables, checked: TransformerConfig fields, TrainConfig fields, [data] keys
    (train and valid paths resolved against the file's folder); path is the file."""

    model: dict
    train: dict
    data: dict
    path: Path


def _type_name(hint) -> str:
    names = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}
    options = [h for h in typing.get_args(hint) if h is not type(None)] if _is_union(hint) else [hint]
    return " or ".join(names.get(h, getattr(h, "__name__", str(h))) for h in options)


def _is_union(hint) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


def _checked(value, hint, where: str):
    """value as the field's type wants it (an integer is a float where a float is asked), or ConfigFileError."""
    options = [h for h in typing.get_args(hint) if h is not type(None)] if _is_union(hint) else [hint]
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    if not any(option in (bool, int, float, str) for option in options):
        return value  # a field of another type: its dataclass checks it
    shown = "a table" if isinstance(value, dict) else repr(value)
    raise ConfigFileError(f"{where} must be {_type_name(hint)}, got {shown}")


def _checked_table(table, keys: dict, name: str, path: Path) -> dict:
    if not isinstance(table, dict):
        raise ConfigFileError(f"{path}: {name} must be a table ([{name}]), got {table!r}")
    unknown = sorted(set(table) - set(keys))
    if unknown:
        hint = ""
        if name == "model" and set(unknown) & set(runs.DATA_FIELDS):
            hint = f"; {sorted(set(unknown) & set(runs.DATA_FIELDS))} follow from the data"
        raise ConfigFileError(
            f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'[{name}] {key}' for key in unknown)}{hint}; the [{name}] keys are "
            f"{', '.join(keys)}"
        )
    return {key: _checked(value, keys[key], f"{path}: [{name}] {key}") for key, value in table.items()}


def read_settings(path: str | os.PathLike) -> Settings:
    """The checked tables of the settings file at `path`; ConfigFileError naming the file and the
    key for anything it cannot use."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"the settings file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{path} is a folder; give its {CONFIG_NAME} (--config {path / CONFIG_NAME})") from None
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        tables = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigFileError(f"{path} is not valid TOML: {err}") from None
    data_table_given = tables.get("data", {})
    arch = arch_of_data(data_table_given if isinstance(data_table_given, dict) else {})
    known = {"model": model_keys(arch), "train": train_keys(), "data": DATA_KEYS}
    unknown = sorted(set(tables) - set(known))
    if unknown:
        raise ConfigFileError(
            f"{path}: unknown table or key {', '.join(unknown)}; a settings file has the tables "
            "[model], [train] and [data]"
        )
    checked = {name: _checked_table(tables.get(name, {}), keys, name, path) for name, keys in known.items()}
    data = checked["data"]
    for name in ("train", "valid"):  # relative to the file, so that the file works from any folder
        if name in data:
            data[name] = str(path.parent / data[name])
    return Settings(model=checked["model"], train=checked["train"], data=data, path=path)


def data_spec(table: dict, default_seed: int, where: str = "the data") -> tuple[dict, int]:
    """(the data spec, eval_examples) of a [data] table (DATA_KEYS; `ft train` builds one from its
    flags too): a task (default reverse) or TSV files, their sizes, seed (default: default_seed)
    and tokenizer."""
    table = dict(table)
    eval_examples = table.pop("eval_examples", DEFAULT_EVAL_EXAMPLES)
    if eval_examples < 1:
        raise ConfigFileError(f"{where}: eval_examples must be at least 1, got {eval_examples}")
    seed = table.pop("seed", default_seed)
    kind = table.pop("kind", "tsv" if "train" in table else "task")
    if kind in ("pairs", "documents", "labelled_pairs"):
        raise ConfigFileError(
            f"{where}: the run's data were given in memory (ft.fit(data=(train, valid))), "
            "which a file cannot hold; give --task or --data"
        )
    if kind not in ("task", "tsv", "text", "labelled"):
        raise ConfigFileError(f"{where}: kind must be 'task', 'tsv', 'text' or 'labelled', got {kind!r}")
    if "task" in table and "train" in table:
        raise ConfigFileError(f"{where}: give a task or a training file (train), not both")
    tokenizer = None
    if {"tokenizer", "vocab_size", "joint_vocab"} & set(table):
        tokenizer = runs.tokenizer_spec(
            table.pop("tokenizer", "char"), table.pop("vocab_size", None), bool(table.pop("joint_vocab", False))
        )
        if tokenizer == {"kind": "char"}:
            tokenizer = None  # the default, left out of the spec as runs.task_data leaves it out
    if kind in ("text", "labelled"):
        if "train" not in table:
            raise ConfigFileError(f"{where}: kind {kind!r} needs train (a file)")
        train, valid = table.pop("train"), table.pop("valid", None)
        if table:
            raise DataError(f"{sorted(table)} do not apply to kind {kind!r} ({KIND_ARCH[kind]} models)")
        read = runs.text_data if kind == "text" else runs.labelled_data
        return read(train, valid, seed=seed, tokenizer=tokenizer), eval_examples
    if kind == "tsv":
        if "train" not in table:
            raise ConfigFileError(f"{where}: kind 'tsv' needs train (a TSV file)")
        train, valid = table.pop("train"), table.pop("valid", None)
        max_len, truncate = table.pop("max_len", None), table.pop("truncate_long", None)
        if table:
            raise DataError(f"{sorted(table)} size the built-in tasks; they do not apply to --data")
        return runs.tsv_data(
            train, valid, seed=seed, tokenizer=tokenizer, max_len=max_len, truncate_long=bool(truncate)
        ), eval_examples
    if "valid" in table:
        raise DataError("--valid (valid in [data]) is a held-out TSV file for --data, not for a task")
    if table.pop("truncate_long", None):
        raise DataError(
            "--truncate-long cuts pairs of --data files longer than --max-len; a task's strings all fit "
            "(truncate_long in [data])"
        )
    return runs.task_data(table.pop("task", "reverse"), seed=seed, tokenizer=tokenizer, **table), eval_examples


__all__ = [
    "CONFIG_NAME",
    "ConfigFileError",
    "DATA_KEYS",
    "Settings",
    "arch_of_data",
    "data_spec",
    "data_table",
    "model_keys",
    "read_settings",
    "settings_tables",
    "to_toml",
    "train_keys",
    "write_settings",
]
