"""Pictures of attention maps and of a run's curves, with matplotlib (an optional extra).

Every function here draws onto a new Figure and returns it (or its PNG bytes); nothing is shown on
a screen (the Agg backend), so it runs on a server. Without matplotlib, `require_matplotlib` raises
one clear error saying how to install it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .attention import KINDS

INSTALL_HINT = "pip install 'functional-transformer[plot]' (in a checkout: uv sync --extra plot)"


class MatplotlibMissing(UserInputError):
    """A picture was asked for where matplotlib is not installed."""


def require_matplotlib(what: str):
    """matplotlib.pyplot on the Agg backend, or MatplotlibMissing naming `what` needs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MatplotlibMissing(f"{what} draws with matplotlib, an optional extra: {INSTALL_HINT}") from None
    return plt


def _axis_labels(maps: dict, kind: str) -> tuple[list[str], list[str], str, str]:
    """(query labels, key labels, query axis title, key axis title) of one kind of map."""
    if kind == "encoder_self":
        return maps["source_tokens"], maps["source_tokens"], "source (query)", "source (key)"
    if kind == "decoder_self":
        return maps["target_out"], maps["target_in"], "writes", "reads"
    return maps["target_out"], maps["source_tokens"], "writes", "source"


def _draw_grid(subfig, maps: dict, kind: str):
    """One kind of map as a grid of heatmaps, a row per layer and a column per head."""
    weights = maps[kind]  # (L, H, queries, keys)
    n_layers, n_heads = weights.shape[:2]
    queries, keys, query_title, key_title = _axis_labels(maps, kind)
    axes = np.atleast_2d(subfig.subplots(n_layers, n_heads, squeeze=False))
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            # Weights are probabilities: one colour scale, 0 to 1, for every panel and every kind.
            image = ax.imshow(weights[layer, head], cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks(range(len(keys)), keys, fontsize=7)
            ax.set_yticks(range(len(queries)), queries, fontsize=7)
            ax.tick_params(length=0, pad=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            if layer == n_layers - 1:
                ax.set_xlabel(key_title, fontsize=8)
            if head == 0:
                ax.set_ylabel(query_title, fontsize=8)
    subfig.suptitle(KINDS[kind], fontsize=10)
    subfig.colorbar(image, ax=axes, shrink=0.8, label="weight")


def attention_figure(maps: dict, kinds=tuple(KINDS)):
    """A Figure of `kinds` (keys of KINDS), one above the other, each a grid of layers x heads."""
    plt = require_matplotlib("an attention plot")
    kinds = tuple(kinds)
    n_heads = maps[kinds[0]].shape[1]
    panel = 0.45 + 0.17 * max(len(maps["source_tokens"]), len(maps["target_in"]))  # inches per heatmap
    heights = [maps[kind].shape[0] * (panel + 0.55) + 0.4 for kind in kinds]
    fig = plt.figure(figsize=(n_heads * (panel + 0.45) + 1.2, sum(heights) + 0.5), layout="constrained")
    subfigs = fig.subfigures(len(kinds), 1, height_ratios=heights, squeeze=False)[:, 0]
    for subfig, kind in zip(subfigs, kinds):
        _draw_grid(subfig, maps, kind)
    how = "the model's greedy output" if maps["target_from"] == "greedy" else "given"
    fig.suptitle(f"{maps['source']!r} -> {maps['target']!r} (target: {how})", fontsize=11)
    return fig


def curves_figure(history: list[dict], learning_rates: tuple | None):
    """A Figure of a run's records (metrics.jsonl; curves.png and the run report draw it): training and
    held-out loss, accuracies, the learning rate (`(steps, rates)`, or None), held-out exact match."""
    plt = require_matplotlib("a plot of the training curves")
    train = [r for r in history if r["split"] == "train"]
    valid = [r for r in history if r["split"] == "valid"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained")
    (ax_loss, ax_acc), (ax_lr, ax_exact) = axes

    def line(ax, records, field, *style, **options):
        # Each family logs its own held-out metrics: a field no record has draws no line.
        records = [r for r in records if field in r]
        if records:
            ax.plot([r["step"] for r in records], [r[field] for r in records], *style, **options)

    line(ax_loss, train, "loss", label="training (label-smoothed)")
    line(ax_loss, valid, "loss", "o-", label="held-out")
    ax_loss.set(title="loss", xlabel="step", ylabel="cross-entropy", yscale="log")
    line(ax_acc, train, "accuracy", label="training, per token")
    line(ax_acc, valid, "token_accuracy", "o-", label="held-out, per token")
    line(ax_acc, valid, "char_accuracy", "s--", label="held-out, per character (greedy)")
    line(ax_acc, valid, "accuracy", "o-", label="held-out, per example (a classifier)")
    ax_acc.set(title="accuracy", xlabel="step", ylabel="fraction", ylim=(0, 1.02))
    if learning_rates is not None:
        ax_lr.plot(*learning_rates)
    ax_lr.set(title="learning rate (the run's schedule)", xlabel="step", ylabel="learning rate")
    line(ax_exact, valid, "exact_match", "o-", color="C3")
    ax_exact.set(title="held-out exact match (greedy)", xlabel="step", ylabel="fraction", ylim=(0, 1.02))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def png_bytes(fig, dpi: int = 90) -> bytes:
    """The figure as PNG bytes; the figure is closed (its memory freed)."""
    plt = require_matplotlib("a plot")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write the figure to `path` (folders made as needed) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig, dpi))
    return path


__all__ = [
    "INSTALL_HINT",
    "MatplotlibMissing",
    "attention_figure",
    "curves_figure",
    "png_bytes",
    "require_matplotlib",
    "save_png",
]
