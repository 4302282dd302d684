"""A run report: one self-contained HTML page about a trained run (`ft report`).

The page shows the run's configs, its curves (loss, accuracy, the learning rate of its schedule,
held-out exact match over time), sample predictions (greedy and beam search, right and wrong, with
the target), the attention maps of a few held-out examples, and the checkpoint's size and
parameter count per component. Images are PNGs embedded as data: URIs and the style is inline, with
no script: the page needs no network and no other file to be viewed, mailed or archived.

The learning rate is not in metrics.jsonl; it is recomputed from the run's TrainConfig by
`train.make_schedule`, the function the optimizer itself calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..checkpoint import ModelConfig

import base64
import datetime
import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backends import Backend

from .. import checkpoint, inference
from ..backend_choice import default_backend
from ..config import TrainConfig, TransformerConfig, train_config_record
from ..data import DataError
from ..errors import ConfigError
from ..run_data import load_pairs
from ..run_folders import read_history
from ..train import make_schedule
from . import plots
from .attention import attention_maps

BEAM_SIZE = 4  # the paper's
MODEL_ORDER = ("src_embed", "tgt_embed", "encoder", "decoder", "out_proj")  # the parameter tree's parts (model.py)


# ---------------------------------------------------------------------------------------------
# What the page shows, as plain data


def parameter_counts(params: dict) -> list[dict]:
    """[{"component", "parameters", "bytes"}]: each top-level part of the tree, the encoder's and
    decoder's layers one by one (and final_ln where there is one), then "total"."""

    def count(tree) -> tuple[int, int]:
        leaves = tree.values() if isinstance(tree, dict) else [tree]
        sizes = [
            count(leaf)
            if isinstance(leaf, dict)
            else (int(np.prod(leaf.shape)), int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize)
            for leaf in leaves
        ]
        return sum(s[0] for s in sizes), sum(s[1] for s in sizes)

    def layers_first(name: str):  # layer_0, layer_1, ..., layer_10 in number order, then final_ln
        return (0, int(name.removeprefix("layer_")), "") if name.startswith("layer_") else (1, 0, name)

    # In the model's order, whatever order the tree's keys come in (JAX sorts a dict's keys).
    parts = sorted(
        params, key=lambda part: (MODEL_ORDER.index(part) if part in MODEL_ORDER else len(MODEL_ORDER), part)
    )
    rows = []
    for part in parts:
        stack = part in ("encoder", "decoder")
        names = sorted(params[part], key=layers_first) if stack else [None]
        for name in names:
            n, size = count(params[part][name] if stack else params[part])
            rows.append({"component": f"{part}.{name}" if stack else part, "parameters": n, "bytes": size})
    rows.append(
        {"component": "total", "parameters": sum(r["parameters"] for r in rows), "bytes": sum(r["bytes"] for r in rows)}
    )
    return rows


def learning_rates(tcfg: TrainConfig, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(steps, rates): the rate of the update that ends each step, from the run's own schedule,
    over the steps of its current schedule (an extended run restarted it at schedule_start)."""
    counts = np.arange(tcfg.schedule_start, tcfg.steps)  # updates made before each step's update
    return counts + 1, np.asarray(make_schedule(tcfg, cfg)(counts))


def sample_predictions(
    params: dict, cfg: TransformerConfig, tokenizer, pairs: Sequence[tuple[str, str]], beam_size: int = BEAM_SIZE
) -> list[dict]:
    """[{"source", "target", "greedy", "beam"}], one per pair, decoded both ways."""
    sources = [source for source, _ in pairs]
    greedy = inference.predict(params, cfg, tokenizer, sources, allow_unknown=True)
    beam = inference.predict(params, cfg, tokenizer, sources, beam_size=beam_size, allow_unknown=True)
    return [{"source": s, "target": t, "greedy": g, "beam": b} for (s, t), g, b in zip(pairs, greedy, beam)]


def pick_samples(rows: list[dict], n_wrong: int = 8, n_right: int = 8) -> list[dict]:
    """Up to n_wrong rows that greedy or beam search got wrong, then up to n_right they both got right."""
    wrong = [r for r in rows if r["greedy"] != r["target"] or r["beam"] != r["target"]]
    right = [r for r in rows if r["greedy"] == r["target"] and r["beam"] == r["target"]]
    return wrong[:n_wrong] + right[:n_right]


def pick_attention_sources(rows: list[dict], n: int = 3) -> list[str]:
    """A few sources to show the attention of: the first, the longest, and the first greedy got wrong."""
    if not rows:
        return []
    candidates = [rows[0]["source"], max(rows, key=lambda r: len(r["source"]))["source"]]
    candidates += [r["source"] for r in rows if r["greedy"] != r["target"]][:1]
    return list(dict.fromkeys(candidates))[:n]


# ---------------------------------------------------------------------------------------------
# HTML


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { font-family: ui-monospace, monospace; white-space: pre; }
td.right { background: #e8f5e9; } td.wrong { background: #ffebee; }
.configs { display: flex; gap: 2em; flex-wrap: wrap; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _key_values(title: str, fields: dict) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in fields.items())
    return f"<div><h3>{_e(title)}</h3><table>{rows}</table></div>"


def _table(header: list[str], rows: list[list[str]], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    head = "".join(
        f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(header)
    )
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(value) -> str:
    return f'<td class="num">{_e(value)}</td>'


def _text(value: str, verdict: bool | None = None) -> str:
    css = "text" if verdict is None else f"text {'right' if verdict else 'wrong'}"
    mark = "" if verdict is None else (" ✓" if verdict else " ✗")
    return f'<td class="{css}">{_e(value) if value else "<i>(empty)</i>"}{mark}</td>'


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def _evaluations_table(valid: list[dict]) -> str:
    rows = [
        [
            _num(r["step"]),
            _num(f"{r['loss']:.4f}"),
            _num(f"{r['token_accuracy']:.4f}"),
            _num(f"{r['exact_match']:.4f}"),
            _num(f"{r['char_accuracy']:.4f}"),
            _num(r["n_examples"]),
        ]
        for r in valid
    ]
    return _table(
        ["step", "loss", "token accuracy", "exact match", "char accuracy", "examples"], rows, numeric={0, 1, 2, 3, 4, 5}
    )


def _samples_html(rows: list[dict], shown: list[dict]) -> str:
    n = len(rows)
    greedy_right = sum(r["greedy"] == r["target"] for r in rows)
    beam_right = sum(r["beam"] == r["target"] for r in rows)
    summary = (
        f"<p>The first {n} held-out examples (never seen in training): greedy decoding got {greedy_right}/{n} "
        f"exactly right, beam search (beam {BEAM_SIZE}, length penalty 0.6) {beam_right}/{n}. Shown: up to 8 "
        "that either got wrong, then up to 8 that both got right.</p>"
    )
    table = _table(
        ["source", "target", "greedy", f"beam {BEAM_SIZE}"],
        [
            [
                _text(r["source"]),
                _text(r["target"]),
                _text(r["greedy"], r["greedy"] == r["target"]),
                _text(r["beam"], r["beam"] == r["target"]),
            ]
            for r in shown
        ],
    )
    return summary + table


def _checkpoint_html(files: dict, used: Path, counts: list[dict]) -> str:
    total = counts[-1]["bytes"]
    file_rows = [
        [
            _text(name),
            _num(_size(size)),
            _num(f"{size / total:.2f}x"),
            f"<td>{'read for this page' if path == used else ''}</td>",
        ]
        for name, (path, size) in files.items()
    ]
    files_table = _table(["file", "size", "size / params", ""], file_rows, numeric={1, 2})
    count_rows = [[_text(r["component"]), _num(f"{r['parameters']:,}"), _num(_size(r["bytes"]))] for r in counts]
    note = (
        "<p class='note'>A checkpoint holds the params, the optimizer's state (Adam: two moments, each the "
        "size of the params) and a small header, so it is about three times the params.</p>"
    )
    return files_table + note + _table(["component", "parameters", "size"], count_rows, numeric={1, 2})


# ---------------------------------------------------------------------------------------------
# The page


def build_report(
    path: str | Path,
    which: str | None = None,
    *,
    backend: Backend | None = None,
    n_examples: int = 100,
    n_attention: int = 3,
) -> str:
    """The HTML of the report on a run folder (or one of its checkpoint files); `which` as for
    ft.load. n_examples held-out examples are decoded both ways; n_attention of them drawn."""
    plots.require_matplotlib("ft report")  # before the slow part, so a missing extra fails at once
    backend = backend or default_backend()
    used = checkpoint.resolve(path, which)
    loaded = checkpoint.load(used, backend)
    folder = used.parent
    cfg, tokenizer, tcfg = loaded.cfg, loaded.tokenizer, loaded.train_config
    if not isinstance(cfg, TransformerConfig):
        raise ConfigError(
            f"{used} holds a {loaded.arch} model; the run report draws an encoder-decoder run (source, target "
            "and their attention): use ft eval and ft predict for it"
        )
    params = loaded.state["params"]
    predictions, rows = _predictions_html(params, cfg, tokenizer, loaded.data_spec, n_examples)
    sections = [
        _heading_html(loaded, used, backend),
        "<h2>Configuration</h2><div class='configs'>"
        + _key_values("model", cfg.to_dict())
        + _key_values("training", train_config_record(tcfg))
        + _key_values("data", loaded.data_spec)
        + "</div>",
        _curves_html(read_history(folder), tcfg, cfg, folder),
        predictions,
        _attention_html(params, cfg, tokenizer, rows, n_attention),
        _files_html(folder, used, params),
    ]
    title = f"Run report: {folder}"
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def _heading_html(loaded: checkpoint.Checkpoint, used: Path, backend: Backend) -> str:
    """The page's first paragraph: which checkpoint, its step and best held-out value, and who made the page."""
    tcfg, progress = loaded.train_config, loaded.progress or {}
    best = progress.get("best_exact_match")
    best_line = (
        f"held-out exact match {best:.4f} at its best step by {_e(tcfg.best_by)}, {progress.get('best_step')}; "
        if best is not None
        else ""
    )
    return (
        f"<p>Checkpoint <code>{_e(used)}</code> at step {loaded.step} of {tcfg.steps}; {best_line}written on the "
        f"{_e(loaded.written_on)} backend, read on {_e(backend.name)} for this page, made "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by <code>ft report</code>.</p>"
    )


def _curves_html(history: list[dict], tcfg: TrainConfig, cfg: ModelConfig, folder: Path) -> str:
    """The Curves section: the curves of metrics.jsonl with the learning rate, and the held-out evaluations."""
    if not history:
        return f"<h2>Curves</h2>\n<p class='note'>No metrics.jsonl in {_e(folder)}: no curves to draw.</p>"
    curves = plots.png_bytes(plots.curves_figure(history, learning_rates(tcfg, cfg)))
    restart = (
        f" The schedule restarted at step {tcfg.schedule_start} (the run was extended); earlier steps "
        "followed the schedule before it."
        if tcfg.schedule_start
        else ""
    )
    parts = [
        "<h2>Curves</h2>",
        _img(curves, "loss, accuracy, learning rate and held-out exact match against the step"),
        f"<p class='note'>From {_e(folder / 'metrics.jsonl')} ({len(history)} records); the "
        f"learning rate from the run's TrainConfig ({_e(tcfg.schedule)} schedule, peak "
        f"{tcfg.learning_rate:g}, warmup {tcfg.warmup_steps}).{restart}</p>",
    ]
    valid = [r for r in history if r["split"] == "valid"]
    if valid:
        parts.append("<h3>Held-out evaluations</h3>" + _evaluations_table(valid))
    return "\n".join(parts)


def _predictions_html(params: dict, cfg: TransformerConfig, tokenizer, spec: dict, n_examples: int) -> tuple[str, list]:
    """(the Sample predictions section, its rows): up to n_examples of the run's held-out pairs decoded."""
    try:
        held_out = load_pairs(spec)[1][:n_examples]
    except (DataError, OSError) as err:
        held_out, reason = [], str(err)
    else:
        reason = "the run has no held-out examples"
    rows = sample_predictions(params, cfg, tokenizer, held_out) if held_out else []
    if rows:
        return "<h2>Sample predictions</h2>\n" + _samples_html(rows, pick_samples(rows)), rows
    return f"<h2>Sample predictions</h2>\n<p class='note'>No held-out examples to decode: {_e(reason)}.</p>", rows


def _attention_html(params: dict, cfg: TransformerConfig, tokenizer, rows: list, n_attention: int) -> str:
    """The Attention section: every attention map of n_attention of the decoded examples."""
    sources = pick_attention_sources(rows, n_attention)
    if not sources:
        return "<h2>Attention</h2>\n<p class='note'>No examples to draw (see Sample predictions).</p>"
    parts = [
        "<h2>Attention</h2>",
        "<p class='note'>Every attention weight of one forward pass, teacher-forced on the model's "
        "own greedy output: a row per query, a column per key, each row summing to 1. Decoder rows are "
        "labelled with the token the position writes, columns with what the keys' positions read.</p>",
    ]
    for source in sources:
        maps = attention_maps(params, cfg, tokenizer, source, allow_unknown=True)
        parts.append(f"<h3>{_e(repr(source))} &rarr; {_e(repr(maps['target']))}</h3>")
        parts.append(_img(plots.png_bytes(plots.attention_figure(maps), dpi=72), f"attention maps of {source!r}"))
    return "\n".join(parts)


def _files_html(folder: Path, used: Path, params: dict) -> str:
    """The Checkpoint section: the run folder's checkpoint files and sizes, and the parameter counts."""
    files = {}
    for name in checkpoint.FILE_NAMES.values():
        file = folder / name
        if file.exists():
            files[name] = (file, file.stat().st_size)
    if used.name not in files:
        files[used.name] = (used, used.stat().st_size)
    return "<h2>Checkpoint</h2>\n" + _checkpoint_html(files, used, parameter_counts(params))


def write_report(path: str | Path, out: str | Path | None = None, which: str | None = None, **options) -> Path:
    """Write build_report's page to `out` (default: report.html in the run folder) -> its path."""
    page = build_report(path, which, **options)
    out = Path(out) if out is not None else checkpoint.resolve(path, which).parent / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


__all__ = [
    "build_report",
    "learning_rates",
    "parameter_counts",
    "pick_attention_sources",
    "pick_samples",
    "sample_predictions",
    "write_report",
]
