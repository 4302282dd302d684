"""Long sequences: the tiny model's train step at long lengths, full against blockwise attention.

The step at T = 512 .. 16,384 (batch 1) with each `attention_kernel` (parts/attention.py): time and
peak memory.

    uv run python -m benchmarks.studies.long_attention                       # both backends, every length
    uv run python -m benchmarks.studies.long_attention --backends numpy --lengths 512 2048 --reps 3

Each (backend, kernel, length) point runs in a subprocess of its own, so that its peak memory is its
own: the process's peak resident set (ru_maxrss) on both backends, and on JAX also XLA's plan of the
compiled step (arguments + outputs - aliased + temporaries, `compiled.memory_analysis()`). The step
is train.make_train_step's (dropout 0.1, clipping, Adam), source and target both T tokens. Full
attention saves its (B, H, T, T) weights for every attention layer; where that estimate alone is
over --full-limit-gb the point is not run and the table says why. Times are the median wall time of
--reps steps after one warm-up step (which compiles on JAX), with the process's CPU time beside it:
on a shared machine the wall time is noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

LENGTHS = (512, 2048, 8192, 16384)
KERNELS = ("full", "blockwise")
BACKENDS = ("numpy", "jax")
GIB = 1024**3


def model_config(length: int, kernel: str):
    """The tiny benchmark model with T = S = `length` and the given attention kernel."""
    from benchmarks.configs import CONFIGS

    bench = dataclasses.replace(CONFIGS["tiny"], batch=1, src_len=length, tgt_len=length)
    return dataclasses.replace(bench.model_config(), attention_kernel=kernel), bench


def full_weights_bytes(length: int, batch: int = 1) -> int:
    """What full attention keeps for the backward of the tiny model: float32 (B, H, T, T) weights for
    each encoder self-attention and each decoder self- and cross-attention."""
    cfg, _ = model_config(length, "full")
    n_attention = cfg.n_encoder_layers + 2 * cfg.n_decoder_layers
    return n_attention * batch * cfg.n_heads * length * length * 4


def measure_point(kernel: str, length: int, reps: int) -> dict:
    """One train step of the tiny model at `length` on FT_BACKEND's backend: warm-up, then `reps`
    timed steps -> {"wall_s", "cpu_s", "peak_rss_bytes", "xla_bytes", "loss"}."""
    from backends import get_backend
    from benchmarks.workloads import _compiled_stats, random_batch
    from functional_transformer import train as ft_train

    backend = get_backend(os.environ.get("FT_BACKEND", "numpy"))
    cfg, bench = model_config(length, kernel)
    tcfg = ft_train.TrainConfig(batch_size=1)
    optimizer = ft_train.make_optimizer(tcfg, cfg)
    state = ft_train.init_state(backend.random.key(0), cfg, optimizer)
    step = ft_train.make_train_step(cfg, tcfg, optimizer, backend)
    batch = backend.tree_asarray(random_batch(bench))
    key = backend.random.key(1)
    xla_bytes = None
    if backend.name == "jax":
        xla_bytes = _compiled_stats(step.lower(state, batch, key).compile())["xla_memory_bytes"]
    state, metrics = step(state, batch, key)  # warm-up (compiles on JAX)
    backend.block_until_ready(metrics)
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch, key)
        backend.block_until_ready(metrics)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: kB
        "xla_bytes": xla_bytes,
        "loss": float(np.asarray(metrics["loss"])),
    }


def run_point(backend: str, kernel: str, length: int, reps: int, timeout_s: float) -> dict:
    """measure_point in a fresh process (its own peak memory) -> the point's record."""
    record = {"backend": backend, "kernel": kernel, "length": length}
    command = [
        sys.executable,
        "-m",
        "benchmarks.studies.long_attention",
        "--point",
        kernel,
        str(length),
        "--reps",
        str(reps),
    ]
    env = dict(os.environ, FT_BACKEND=backend)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return record | {"error": f"over the {timeout_s:.0f} s limit"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return record | {"error": f"exit {done.returncode}: {last}"}
    return record | json.loads(done.stdout.strip().splitlines()[-1])


def _gib(n) -> str:
    return "–" if n is None else f"{n / GIB:.2f} GiB"


def table(records: list[dict]) -> str:
    """The results as a Markdown table, one row per (backend, length), full beside blockwise."""
    lines = [
        "| backend | T | full: time (CPU) | full: peak RSS | full: XLA plan | blockwise: time (CPU) "
        "| blockwise: peak RSS | blockwise: XLA plan | blockwise / full time |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    by_key = {(r["backend"], r["length"], r["kernel"]): r for r in records}
    for backend, length in dict.fromkeys((r["backend"], r["length"]) for r in records):
        cells = []
        for kernel in KERNELS:
            r = by_key.get((backend, length, kernel))
            if r is None or "error" in r or "skipped" in r:
                why = "not run" if r is None else r.get("error") or r["skipped"]
                cells += [why, "–", "–"]
            else:
                cells += [f"{r['wall_s']:.2f} s ({r['cpu_s']:.2f} s)", _gib(r["peak_rss_bytes"]), _gib(r["xla_bytes"])]
        full, blockwise = by_key.get((backend, length, "full")), by_key.get((backend, length, "blockwise"))
        ratio = "–"
        if full and blockwise and "wall_s" in full and "wall_s" in blockwise:
            ratio = f"{blockwise['wall_s'] / full['wall_s']:.2f}x"
        lines.append(f"| {backend} | {length:,} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--reps", type=int, default=2, help="timed steps per point after the warm-up (default 2)")
    parser.add_argument(
        "--full-limit-gb",
        type=float,
        default=4.0,
        help="skip full attention where its saved weights alone exceed this many GiB (default 4)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per point (default 1800)")
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--point", nargs=2, metavar=("KERNEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:  # a child: one point on FT_BACKEND, its record as the last line of stdout
        print(json.dumps(measure_point(args.point[0], int(args.point[1]), args.reps)))
        return
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    records = []
    for backend in args.backends:
        for length in args.lengths:
            for kernel in args.kernels:
                estimate = full_weights_bytes(length)
                if kernel == "full" and estimate > args.full_limit_gb * GIB:
                    record = {"backend": backend, "kernel": kernel, "length": length}
                    records.append(record | {"skipped": f"weights alone {estimate / GIB:.1f} GiB"})
                    continue
                records.append(run_point(backend, kernel, length, args.reps, args.timeout))
                print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    print(table(records))


if __name__ == "__main__":
    main()
