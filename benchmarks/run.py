"""The benchmark driver: parse flags, measure every backend x config x measure, write the outputs.

    python -m benchmarks                       # all backends, configs and measures
    python -m benchmarks --quick               # tiny config, 2 reps, 8 decode steps
    python -m benchmarks --backends numpy --configs tiny small --measure train --reps 3
    python -m benchmarks --backends jax --configs big --measure train --compute-dtype bfloat16 --peak-tflops 989  # a GPU
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks --configs tiny --devices 1 2 8
    uv run --group peers python -m benchmarks --peers torch   # PyTorch eager in the same run

Progress goes to stderr; the Markdown report goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import backends
import functional_transformer as ft
from backends import Backend
from functional_transformer import parallel
from functional_transformer.config import COMPUTE_DTYPES

from . import report
from .configs import CONFIGS, DEFAULT_CONFIGS, BenchConfig
from .environment import environment, jax_info, load_average
from .peak import matmul_peak
from .peers import PEER_MEASURES, PEERS, check_installed
from .timing import time_workload
from .workloads import Workload, decode_workload, dropout_workload, forward_workload, random_batch, train_workload

MEASURES = ("forward", "train", "train_vjp", "decode", "dropout")
DEFAULT_MEASURES = ("forward", "train", "decode")  # "train" also runs dropout, and train_vjp on JAX
HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Settings:
    backends: tuple[str, ...]
    configs: tuple[str, ...]
    measures: tuple[str, ...]
    with_train_vjp: bool  # whether "train" adds "train_vjp" on JAX (not with --quick, to save a compilation)
    reps: int
    decode_steps: int | None  # None: each config's tgt_len
    peak_n: int
    peak_reps: int
    blas_threads: int | None
    json_path: Path
    plot_path: Path
    quick: bool
    devices: tuple[int, ...] = ()  # JAX only: time the train step on each of these device counts
    compute_dtype: str | None = None  # TransformerConfig.compute_dtype of every config (None: float32)
    peak_tflops: float | None = None  # "% of peak" against this given peak instead of the measured matmul peak
    shard_params: bool = False  # with devices: params sharded over them (else data parallel)
    peers: tuple[str, ...] = ()  # other libraries' implementations timed in the same run (benchmarks/peers)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=backends.BACKEND_NAMES,
        default=None,
        help="backends to measure (default: every one installed)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=None,
        help=f"model configs (default: {' '.join(DEFAULT_CONFIGS)}; tiny with --quick; big is for a GPU)",
    )
    parser.add_argument(
        "--measure",
        nargs="+",
        choices=MEASURES,
        default=None,
        help="what to time (default: forward train decode; train also times train_vjp on JAX)",
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed calls after the warm-up (default 5; 2 with --quick)"
    )
    parser.add_argument(
        "--decode-steps",
        type=int,
        default=None,
        help="tokens decoded per row (default: the config's target length; 8 with --quick)",
    )
    parser.add_argument(
        "--peak-size", type=int, default=None, help="n of the n x n matmul peak (default 2048; 1024 with --quick)"
    )
    parser.add_argument(
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        default=None,
        help="JAX only: matmuls and activations in this dtype over float32 params (default float32)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="report %% of peak (model FLOPs utilisation) against this peak in TFLOP/s, such as the "
        "card's dense bf16 peak, instead of the measured float32 matmul peak",
    )
    parser.add_argument(
        "--json", type=Path, default=HERE / "results.json", help="results file (default benchmarks/results.json)"
    )
    parser.add_argument(
        "--plot", type=Path, default=HERE / "results.png", help="chart (default benchmarks/results.png)"
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=None,
        help="limit NumPy's BLAS to this many threads (threadpoolctl; default: leave it alone)",
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        type=int,
        default=None,
        metavar="N",
        help="JAX only: time the train step on each of these device counts (on CPU, simulate "
        "devices with XLA_FLAGS=--xla_force_host_platform_device_count=8)",
    )
    parser.add_argument(
        "--shard-params",
        action="store_true",
        help="with --devices: shard the params over the devices (default: data parallel)",
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=PEERS,
        default=None,
        help="also time these libraries' implementations of the same model and calls, and our time "
        "over theirs (needs the optional group: uv run --group peers python -m benchmarks ...)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small subset: tiny config, 2 reps, 8 decode steps, no train_vjp unless asked for",
    )
    return parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Explicit flags win; --quick only changes the defaults."""
    quick = args.quick

    def pick(value, default, quick_default):
        return value if value is not None else (quick_default if quick else default)

    reps = pick(args.reps, 5, 2)
    if reps < 1:
        raise SystemExit("--reps must be at least 1")
    devices = tuple(args.devices or ())
    if args.shard_params and not devices:
        raise SystemExit("--shard-params needs --devices")
    if args.compute_dtype and args.backends != ["jax"]:
        raise SystemExit(
            f"--compute-dtype {args.compute_dtype} needs --backends jax (NumPy computes in float32 and float64 only)"
        )
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise SystemExit(f"--peak-tflops must be positive, got {args.peak_tflops}")
    if devices:
        if any(n < 1 for n in devices):
            raise SystemExit(f"--devices must be positive counts, got {' '.join(map(str, devices))}")
        if args.backends and tuple(args.backends) != ("jax",):
            raise SystemExit("--devices needs the JAX backend (--backends jax); the NumPy backend runs on one device")
        if args.measure and tuple(args.measure) != ("train",):
            raise SystemExit("--devices times the train step only (--measure train)")
        if args.peers:
            raise SystemExit("--peers compares one device with one device: run it without --devices")
    peers = tuple(dict.fromkeys(args.peers or ()))
    check_installed(peers)
    return Settings(
        backends=("jax",) if devices else tuple(args.backends or backends.BACKEND_NAMES),
        configs=tuple(pick(args.configs, list(DEFAULT_CONFIGS), ["tiny"])),
        measures=("train",) if devices else tuple(args.measure or DEFAULT_MEASURES),
        with_train_vjp=not quick and not devices and args.compute_dtype is None,  # the VJPs run in float32 only
        reps=reps,
        decode_steps=pick(args.decode_steps, None, 8),
        peak_n=pick(args.peak_size, 2048, 1024),
        peak_reps=pick(None, 5, 3),
        blas_threads=args.blas_threads,
        json_path=args.json,
        plot_path=args.plot,
        quick=quick,
        devices=devices,
        shard_params=args.shard_params,
        peers=peers,
        compute_dtype=args.compute_dtype,
        peak_tflops=args.peak_tflops,
    )


def installed_backends(requested: tuple[str, ...], notes: list[str]) -> list[str]:
    """The requested backends whose library is installed; a note for each one skipped."""
    names = []
    for name in requested:
        if name == "jax" and importlib.util.find_spec("jax") is None:
            notes.append("JAX is not installed: the jax backend was skipped (uv sync, or pip install jax)")
            continue
        names.append(name)
    return names


def backend_measures(backend: Backend, measures: tuple[str, ...], with_train_vjp: bool = True) -> list[str]:
    """The measures to run on `backend`: "train" adds "train_vjp" on JAX when with_train_vjp, and
    "dropout" (its share of the step); NumPy has no train_vjp (its train step is the hand-written
    VJPs already)."""
    out = []
    for measure in measures:
        if backend.name == "numpy" and measure == "train_vjp":
            continue
        out.append(measure)
        if backend.name == "jax" and measure == "train" and with_train_vjp and "train_vjp" not in measures:
            out.append("train_vjp")
        if measure == "train" and "dropout" not in measures:
            out.append("dropout")
    return out


def check_devices(backend: Backend, devices: tuple[int, ...]) -> None:
    """SystemExit naming what is missing when `devices` cannot all be had (before anything is timed)."""
    for n in devices:
        try:
            mesh = parallel.make_mesh(n, backend)
        except parallel.ParallelError as err:
            raise SystemExit(f"--devices: {err}") from err
        if mesh is not None and backend.jax.process_count() > 1:
            raise SystemExit("--devices measures one process's devices; run it without jax.distributed")


def device_workloads(
    backend: Backend, bc: BenchConfig, devices: tuple[int, ...], shard_params: bool
) -> Iterator[Workload]:
    """The train step on each device count: data parallel, or with the params sharded."""
    host_batch = random_batch(bc)
    for n in devices:
        yield train_workload(backend, bc, host_batch, mesh=parallel.make_mesh(n, backend), shard_params=shard_params)


def decode_steps_of(bc: BenchConfig, decode_steps: int | None) -> int:
    """Tokens decoded per row: --decode-steps (None: the config's target length), at most max_len."""
    return min(decode_steps or bc.tgt_len, bc.model_config().max_len)


def workloads(backend: Backend, bc: BenchConfig, measures: list[str], decode_steps: int | None) -> Iterator[Workload]:
    """Workloads built one at a time, so that each one's arrays can be freed before the next."""
    host_batch = random_batch(bc)
    params = ft.init(backend.random.key(0), bc.model_config())
    steps = decode_steps_of(bc, decode_steps)
    for measure in measures:
        if measure == "forward":
            yield forward_workload(backend, params, bc, host_batch)
        elif measure == "train":
            yield train_workload(backend, bc, host_batch)
        elif measure == "train_vjp":
            yield train_workload(backend, bc, host_batch, grad_method="vjp")
        elif measure == "decode":
            yield decode_workload(backend, params, bc, host_batch, steps)
        elif measure == "dropout":
            yield dropout_workload(backend, bc)


def params_summary(backend: Backend, bc: BenchConfig) -> dict:
    """Parameter count and sum of |values| of ft.init(key(0)): equal across backends when the params are."""
    leaves = [backend.to_numpy(leaf) for leaf in backend.tree_leaves(ft.init(backend.random.key(0), bc.model_config()))]
    return {
        "n_params": int(sum(leaf.size for leaf in leaves)),
        "abs_sum": float(sum(np.abs(leaf).sum(dtype=np.float64) for leaf in leaves)),
    }


def make_record(backend: Backend, bc: BenchConfig, workload: Workload, timing, peak_gflops: float) -> dict:
    median = timing.median_s
    achieved = workload.flops / median / 1e9 if workload.flops else None  # None: no matmuls (dropout)
    record = {
        "backend": backend.name,
        "config": bc.name,
        "measure": workload.measure,
        "reps": len(timing.times_s),
        "median_s": median,
        "min_s": min(timing.times_s),
        "max_s": max(timing.times_s),
        "times_s": timing.times_s,
        "first_call_s": timing.first_call_s,
        "compile_s": timing.first_call_s - median if backend.name == "jax" else None,
        "tokens_per_call": workload.tokens,
        "tokens_per_s": workload.tokens / median,
        "model_gflop": workload.flops / 1e9,
        "gflops": achieved,
        "peak_gflops": peak_gflops,
        "peak_fraction": achieved / peak_gflops if achieved is not None and peak_gflops else None,
        "peak_mem_bytes": timing.peak_mem_bytes,
        "peak_mem_method": timing.peak_mem_method,
        "batch": bc.batch,
        "src_len": bc.src_len,
        "tgt_len": bc.tgt_len,
        "compute_dtype": bc.model_config().activations_dtype,
        **workload.details,
    }
    if workload.xla_stats is not None:
        record.update(workload.xla_stats())
    return record


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_backend(name: str, settings: Settings, params_info: dict) -> tuple[list[dict], dict]:
    """-> (records, matmul peak) for one backend over every config and measure."""
    backend = backends.get_backend(name)
    if settings.devices:
        check_devices(backend, settings.devices)

    def plan(bc: BenchConfig) -> Iterator[Workload]:
        params_info.setdefault(bc.name, {})[name] = params_summary(backend, bc)
        if settings.devices:
            return device_workloads(backend, bc, settings.devices, settings.shard_params)
        return workloads(
            backend, bc, backend_measures(backend, settings.measures, settings.with_train_vjp), settings.decode_steps
        )

    return time_workloads(backend, settings, plan)


def run_peer(name: str, settings: Settings) -> tuple[list[dict], dict, dict]:
    """-> (records, matmul peak, info) for a peer library (benchmarks/peers) over every config and
    the measures it implements, timed as ours are. info: its versions and threads, and per config
    the evidence that it is our model ("same_model": parameter counts, logits against ours)."""
    peer = importlib.import_module(f"benchmarks.peers.{name}_peer")
    runtime = peer.runtime()
    measures = [m for m in settings.measures if m in PEER_MEASURES[name]]
    same_model = {}

    def plan(bc: BenchConfig) -> Iterator[Workload]:
        same_model[bc.name] = peer.params_summary(bc)
        return peer.workloads(bc, measures, random_batch(bc), decode_steps_of(bc, settings.decode_steps))

    records, peak = time_workloads(runtime, settings, plan)
    return records, peak, {**peer.info(), "same_model": same_model}


def time_workloads(backend, settings: Settings, plan) -> tuple[list[dict], dict]:
    """The matmul peak, then every workload of `plan(bc)` for each config, timed by time_workload.
    `backend`: one of ours, or a peers.PeerRuntime. -> (records, matmul peak)."""
    name = backend.name
    progress(f"[{name}] matmul peak, {settings.peak_n}x{settings.peak_n} float32 ...")
    peak = matmul_peak(backend, settings.peak_n, settings.peak_reps)
    progress(f"[{name}] peak {peak['best_gflops']:.1f} GFLOP/s")
    peak_gflops = settings.peak_tflops * 1e3 if settings.peak_tflops else peak["best_gflops"]
    records = []
    for config_name in settings.configs:
        bc = dataclasses.replace(CONFIGS[config_name], compute_dtype=settings.compute_dtype)
        for workload in plan(bc):
            where = f" on {workload.details['devices']} device(s)" if settings.devices else ""
            progress(f"[{name}] {config_name} {workload.measure}{where} ...")
            timing = time_workload(workload.call, backend, settings.reps)
            record = make_record(backend, bc, workload, timing, peak_gflops)
            if settings.devices:
                record["tokens_per_s_per_device"] = record["tokens_per_s"] / record["devices"]
            records.append(record)
            compile_note = f", compile {record['compile_s']:.1f} s" if record["compile_s"] is not None else ""
            rate_note = f", {record['gflops']:.1f} GFLOP/s" if record["gflops"] is not None else ""
            progress(
                f"[{name}] {config_name} {workload.measure}: median {record['median_s'] * 1e3:.1f} ms, "
                f"{record['tokens_per_s']:,.0f} tokens/s{rate_note}{compile_note}"
            )
            del workload
            gc.collect()
    return records, peak


def blas_thread_limit(threads: int | None):
    """A context limiting NumPy's BLAS threads (threadpoolctl), or doing nothing for None."""
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as err:
        raise SystemExit("--blas-threads needs threadpoolctl (pip install threadpoolctl)") from err
    return threadpool_limits(limits=threads, user_api="blas")


def main(argv: list[str] | None = None) -> int:
    settings = resolve_settings(parse_args(argv))
    with blas_thread_limit(settings.blas_threads):
        return run(settings)


def run(settings: Settings) -> int:
    """Measure, then write the JSON and PNG and print the Markdown report."""
    notes: list[str] = []
    names = installed_backends(settings.backends, notes)
    if not names:
        progress("no backend to measure: " + "; ".join(notes))
        return 1
    env = environment()
    env["notes"] = notes
    if settings.compute_dtype:
        notes.append(f"every model computes in {settings.compute_dtype} over float32 params (--compute-dtype)")
    if settings.peak_tflops:
        notes.append(
            f"% of peak is the model FLOPs utilisation against the given peak of {settings.peak_tflops:g} "
            "TFLOP/s (--peak-tflops), not the measured matmul peak"
        )
    if env["slow_blas_env_guard"]["slow_blas_env_vars_present"]:
        notes.append(
            "OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set in this process (main() was called without the "
            "`python -m benchmarks` guard): NumPy timings may be slow"
        )
    start = time.perf_counter()
    records, peaks, params_info = [], {}, {}
    for name in names:
        backend_records, peaks[name] = run_backend(name, settings, params_info)
        records += backend_records
    env["peers"] = {}
    for name in settings.peers:
        peer_records, peaks[name], env["peers"][name] = run_peer(name, settings)
        records += peer_records
    env["jax"] = env["jax"] or jax_info()  # JAX is imported only once its backend has run
    env["load_average_at_end"] = load_average()
    env["total_seconds"] = time.perf_counter() - start
    settings_record = {**dataclasses.asdict(settings), "params": params_info}
    report.write_json(settings.json_path, records, env, peaks, settings_record)
    plot_path = report.plot(settings.plot_path, records)
    print(report.markdown_report(records, env, peaks))
    progress(f"wrote {settings.json_path}" + (f" and {plot_path}" if plot_path else ""))
    return 0
