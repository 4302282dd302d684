"""Output: a Markdown report (stdout), the JSON results file, and a PNG chart."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .peers import PEER_TITLES, PEERS


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _mib(n_bytes) -> str:
    return "–" if n_bytes is None else f"{n_bytes / 2**20:,.1f}"


def results_table(records: list[dict]) -> str:
    """One row per backend x config x measure."""
    header = (
        "| backend | config | measure | median ms | min–max ms | compile s | tokens/s | GFLOP/call | GFLOP/s "
        "| % of peak | peak mem MiB (how) |"
    )
    rule = "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
    rows = [header, rule]
    for r in records:
        rows.append(
            f"| {r['backend']} | {r['config']} | {r['measure']} | {r['median_s'] * 1e3:,.1f} "
            f"| {r['min_s'] * 1e3:,.1f}–{r['max_s'] * 1e3:,.1f} | {_fmt(r['compile_s'], '.1f')} "
            f"| {r['tokens_per_s']:,.0f} | {r['model_gflop']:,.2f} | {_fmt(r['gflops'], ',.1f')} "
            f"| {_fmt(None if r['peak_fraction'] is None else 100 * r['peak_fraction'], '.1f')} "
            f"| {_mib(r['peak_mem_bytes'])} ({r['peak_mem_method']}) |"
        )
    return "\n".join(rows)


def speedups(records: list[dict]) -> list[dict]:
    """JAX's speedup over NumPy (NumPy median / JAX median) for each config and measure both ran;
    train_vjp on JAX is compared with NumPy's train (both are the hand-written VJPs)."""
    by_key = {(r["backend"], r["config"], r["measure"]): r for r in records}
    out = []
    for (backend, config, measure), jax_record in by_key.items():
        if backend != "jax":
            continue
        numpy_record = by_key.get(("numpy", config, "train" if measure == "train_vjp" else measure))
        if numpy_record:
            out.append(
                {
                    "config": config,
                    "measure": measure,
                    "numpy_median_s": numpy_record["median_s"],
                    "jax_median_s": jax_record["median_s"],
                    "speedup": numpy_record["median_s"] / jax_record["median_s"],
                }
            )
    return out


def speedup_table(records: list[dict]) -> str:
    rows = ["| config | measure | NumPy median ms | JAX median ms | JAX speedup |", "|---|---|--:|--:|--:|"]
    for s in speedups(records):
        rows.append(
            f"| {s['config']} | {s['measure']} | {s['numpy_median_s'] * 1e3:,.1f} "
            f"| {s['jax_median_s'] * 1e3:,.1f} | {s['speedup']:.2f}x |"
        )
    return "\n".join(rows) if len(rows) > 2 else "(JAX and NumPy were not both measured: no speedups)"


def grad_method_table(records: list[dict]) -> str:
    """On JAX: the jax.grad train step against the hand-written VJPs under jit."""
    by_key = {(r["config"], r["measure"]): r for r in records if r["backend"] == "jax"}
    rows = ["| config | jax.grad step ms | VJP step ms | jax.grad / VJP time |", "|---|--:|--:|--:|"]
    for (config, measure), autodiff in by_key.items():
        vjp = by_key.get((config, "train_vjp"))
        if measure == "train" and vjp:
            rows.append(
                f"| {config} | {autodiff['median_s'] * 1e3:,.1f} | {vjp['median_s'] * 1e3:,.1f} "
                f"| {autodiff['median_s'] / vjp['median_s']:.2f} |"
            )
    return "\n".join(rows) if len(rows) > 2 else ""


def vs_peer(records: list[dict], peer: str) -> list[dict]:
    """Our median over the peer's, for each record of ours whose config and measure the peer ran
    (train_vjp against the peer's train): below 1 we are faster."""
    theirs = {(r["config"], r["measure"]): r for r in records if r["backend"] == peer}
    out = []
    for r in records:
        peer_record = theirs.get((r["config"], _panel_measure(r["measure"])))
        if r["backend"] not in PEERS and peer_record:
            out.append(
                {
                    "backend": r["backend"],
                    "config": r["config"],
                    "measure": r["measure"],
                    "median_s": r["median_s"],
                    "peer_median_s": peer_record["median_s"],
                    "ratio": r["median_s"] / peer_record["median_s"],
                }
            )
    return out


def _ours_label(backend: str, measure: str) -> str:
    return f"{backend} VJPs" if measure == "train_vjp" else backend


def _ratio(value: float | None) -> str:
    """1.25x, 0.50x; two significant digits below 0.1 (0.0047x), "–" for none."""
    if value is None:
        return "–"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def peer_table(records: list[dict], peer: str) -> str:
    """One row per config x measure the peer ran: its median, and each of ours as a multiple of it."""
    ratios = vs_peer(records, peer)
    columns = list(dict.fromkeys(_ours_label(s["backend"], s["measure"]) for s in ratios))
    cells = {
        (s["config"], _panel_measure(s["measure"]), _ours_label(s["backend"], s["measure"])): s["ratio"] for s in ratios
    }
    title = PEER_TITLES.get(peer, peer)
    rows = [
        f"| config | measure | {title} median ms | " + " | ".join(columns) + " |",
        "|---|---|--:|" + "--:|" * len(columns),
    ]
    for r in records:
        if r["backend"] != peer:
            continue
        row = [_ratio(cells.get((r["config"], r["measure"], c))) for c in columns]
        rows.append(f"| {r['config']} | {r['measure']} | {r['median_s'] * 1e3:,.1f} | " + " | ".join(row) + " |")
    return "\n".join(rows) if columns and len(rows) > 2 else ""


def peer_lines(env: dict) -> list[str]:
    """What each peer ran on, and the evidence that it is our model, from env["peers"]."""
    lines = []
    for peer, info in (env.get("peers") or {}).items():
        setup = ", ".join(f"{k} {v}" for k, v in info.items() if k != "same_model")
        lines.append(f"- peer {peer}: {setup}")
        for config, same in info.get("same_model", {}).items():
            lines.append(
                f"- peer {peer}, {config}: {same['n_params']:,} parameters (ours {same['our_n_params']:,}); "
                f"eval logits within {same['max_abs_logit_diff_vs_ours']:.1e} of ours on NumPy"
            )
    return lines


def environment_lines(env: dict, peaks: dict) -> list[str]:
    lines = [
        f"- CPU: {env.get('cpu_model')} ({env.get('usable_cpus')} usable of {env.get('cpu_count')}); "
        f"load average at start {env.get('load_average')}",
        f"- NumPy {env.get('numpy_version')}; BLAS: {blas_summary(env.get('numpy_blas') or {})}",
    ]
    if env.get("jax"):
        lines.append(f"- JAX {env['jax']['jax_version']} on {', '.join(env['jax']['devices'])}")
    guard = env.get("slow_blas_env_guard") or {}
    if guard.get("reexecuted"):
        lines.append(f"- re-executed without {', '.join(guard['removed_env_vars'])}")
    for backend, peak in peaks.items():
        lines.append(
            f"- {backend} matmul peak ({peak['n']}x{peak['n']} float32, best of {peak['reps']}): "
            f"{peak['best_gflops']:,.1f} GFLOP/s (median {peak['median_gflops']:,.1f})"
        )
    lines += peer_lines(env)
    for note in env.get("notes", []):
        lines.append(f"- note: {note}")
    return lines


def blas_summary(blas: dict) -> str:
    pools = blas.get("threadpool_info")
    if not pools:
        return blas.get("note", "unknown")
    return (
        "; ".join(
            f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, {p.get('num_threads')} threads)"
            for p in pools
            if p.get("user_api") == "blas"
        )
        or "none found"
    )


def dropout_shares(records: list[dict]) -> list[dict]:
    """Dropout's share of the train step: the "dropout" median over the "train" median, for each
    backend and config where both ran."""
    by_key = {(r["backend"], r["config"], r["measure"]): r for r in records}
    return [
        {
            "backend": backend,
            "config": config,
            "dropout_median_s": r["median_s"],
            "train_median_s": by_key[(backend, config, "train")]["median_s"],
            "share": r["median_s"] / by_key[(backend, config, "train")]["median_s"],
        }
        for (backend, config, measure), r in by_key.items()
        if measure == "dropout" and (backend, config, "train") in by_key
    ]


def dropout_table(records: list[dict]) -> str:
    rows = [
        "| backend | config | dropout ms (fwd + bwd, every site) | train step ms | share of the step |",
        "|---|---|--:|--:|--:|",
    ]
    for s in dropout_shares(records):
        rows.append(
            f"| {s['backend']} | {s['config']} | {s['dropout_median_s'] * 1e3:,.1f} "
            f"| {s['train_median_s'] * 1e3:,.1f} | {100 * s['share']:.1f}% |"
        )
    return "\n".join(rows) if len(rows) > 2 else ""


def markdown_report(records: list[dict], env: dict, peaks: dict) -> str:
    parts = [
        "## Functional Transformer benchmarks",
        "",
        *environment_lines(env, peaks),
        "",
        results_table(records),
        "",
        "### JAX speedup over NumPy",
        "",
        speedup_table(records),
    ]
    grad_table = grad_method_table(records)
    if grad_table:
        parts += ["", "### JAX: jax.grad against the hand-written VJPs (both under jit)", "", grad_table]
    drop_table = dropout_table(records)
    if drop_table:
        parts += ["", "### Dropout's share of the train step", "", drop_table]
    for peer in PEERS:
        table = peer_table(records, peer)
        if table:
            parts += [
                "",
                f"### Against {PEER_TITLES[peer]} (our median / theirs: below 1.00x we are faster)",
                "",
                table,
            ]
    dev_table = devices_table(records)
    if dev_table:
        parts += ["", "### The train step by device count", "", dev_table]
    return "\n".join(parts)


def devices_table(records: list[dict]) -> str:
    """One row per config x device count, for the records of `--devices` (they carry tokens_per_s_per_device)."""
    rows = [
        "| config | devices | params | median ms | min–max ms | compile s | tokens/s | tokens/s per device |",
        "|---|--:|---|--:|--:|--:|--:|--:|",
    ]
    for r in records:
        if "tokens_per_s_per_device" not in r:
            continue
        layout = "sharded" if r["shard_params"] else ("one device" if r["devices"] == 1 else "replicated")
        rows.append(
            f"| {r['config']} | {r['devices']} | {layout} | {r['median_s'] * 1e3:,.1f} "
            f"| {r['min_s'] * 1e3:,.1f}–{r['max_s'] * 1e3:,.1f} | {_fmt(r['compile_s'], '.1f')} "
            f"| {r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_device']:,.0f} |"
        )
    return "\n".join(rows) if len(rows) > 2 else ""


def write_json(path: Path, records: list[dict], env: dict, peaks: dict, settings: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": env,
        "settings": settings,
        "matmul_peak": peaks,
        "records": records,
        "speedups": speedups(records),
        "dropout_shares": dropout_shares(records),
        **{f"vs_{peer}": vs_peer(records, peer) for peer in PEERS},
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def plot(path: Path, records: list[dict]) -> Path | None:
    """Median time per call by config, one panel per measure (log scale), JAX's speedup, and our
    time over each peer's (benchmarks/peers) where one ran."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    measures = [m for m in ("forward", "train", "decode") if any(_panel_measure(r["measure"]) == m for r in records)]
    configs = list(dict.fromkeys(r["config"] for r in records))
    peer_ratios = {peer: vs_peer(records, peer) for peer in PEERS if vs_peer(records, peer)}
    n_panels = len(measures) + 1 + len(peer_ratios)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 4), squeeze=False)
    for ax, measure in zip(axes[0], measures):
        series = [
            (b, m)
            for b, m in dict.fromkeys((r["backend"], r["measure"]) for r in records)
            if _panel_measure(m) == measure
        ]
        for backend, series_measure in series:
            _time_series(ax, records, configs, backend, series_measure)
        ax.set_xticks(range(len(configs)), configs)
        ax.set_xlim(-0.5, len(configs) - 0.5)
        ax.set(yscale="log", ylabel="seconds per call (median; bars: min-max)", title=f"{measure}: time per call")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax = axes[0][len(measures)]
    ups = speedups(records)
    if ups:
        kinds = list(dict.fromkeys(s["measure"] for s in ups))
        values = [
            [next((s["speedup"] for s in ups if s["config"] == c and s["measure"] == k), math.nan) for c in configs]
            for k in kinds
        ]
        _grouped_bars(ax, configs, kinds, values)
        ax.set_ylim(0, 1.3 * max((v for row in values for v in row if not math.isnan(v)), default=1.0))
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set(ylabel="NumPy time / JAX time", title="JAX speedup over NumPy")
    else:
        ax.text(0.5, 0.5, "JAX and NumPy not both measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for ax, (peer, ratios) in zip(axes[0][len(measures) + 1 :], peer_ratios.items()):
        _ratio_panel(ax, configs, ratios, PEER_TITLES[peer])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ratio_panel(ax, configs: list[str], ratios: list[dict], peer_title: str) -> None:
    """Grouped bars per config: each of our (backend, measure) medians over the peer's."""
    series = list(dict.fromkeys((s["backend"], s["measure"]) for s in ratios))
    found = {(s["backend"], s["measure"], s["config"]): s["ratio"] for s in ratios}
    values = [[found.get((backend, measure, c), math.nan) for c in configs] for backend, measure in series]
    _grouped_bars(ax, configs, [f"{backend} {measure}" for backend, measure in series], values)
    ax.axhline(1.0, color="black", linewidth=0.8)
    # Log scale: 0.5x and 2x lie equally far from 1.
    ax.set(yscale="log", ylabel=f"our time / {peer_title}'s (log)", title=f"vs {peer_title} (< 1: we are faster)")


def _panel_measure(measure: str) -> str:
    return "train" if measure == "train_vjp" else measure


def _time_series(ax, records, configs, backend, measure) -> None:
    """Median seconds per config as a line with min-max error bars; missing configs are gaps."""
    found = {r["config"]: r for r in records if (r["backend"], r["measure"]) == (backend, measure)}
    xs = [i for i, c in enumerate(configs) if c in found]
    medians = [found[configs[i]]["median_s"] for i in xs]
    lower = [m - found[configs[i]]["min_s"] for i, m in zip(xs, medians)]
    upper = [found[configs[i]]["max_s"] - m for i, m in zip(xs, medians)]
    label = f"{backend} {measure}" + (" (jax.grad)" if backend == "jax" and measure == "train" else "")
    ax.errorbar(xs, medians, yerr=[lower, upper], marker="o", capsize=3, label=label)


def _grouped_bars(ax, groups: list[str], labels: list[str], values: list[list[float]]) -> None:
    width = 0.8 / max(len(labels), 1)
    for i, (label, row) in enumerate(zip(labels, values)):
        positions = [g + (i - (len(labels) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(positions, row, width, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
