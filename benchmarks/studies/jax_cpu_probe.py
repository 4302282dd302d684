"""Where JAX's CPU step time goes, against PyTorch eager, under XLA flags and in bfloat16.

Matmul GFLOP/s at the model's shapes (XLA, PyTorch, NumPy; float32 and bfloat16), and the
benchmark's calls under several XLA_FLAGS settings, interleaved.

    uv run --group peers python benchmarks/studies/jax_cpu_probe.py matmul --configs tiny base --rounds 3
    uv run python benchmarks/studies/jax_cpu_probe.py flags --configs tiny --rounds 4 \\
        --variant default= --variant no-ynn=--xla_cpu_experimental_ynn_fusion_type=
    uv run --group peers python benchmarks/studies/jax_cpu_probe.py peers --configs tiny base \\
        --measures forward train decode --rounds 4
    uv run python benchmarks/studies/jax_cpu_probe.py profile --configs tiny --reps 5
    uv run python benchmarks/studies/jax_cpu_probe.py dtypes --configs tiny base --measures train forward --reps 10

`matmul` times every distinct (m, k) @ (k, n) product of the train step's linear layers (m = batch *
length) plus a 2048 cube, each library in its own process, the libraries in turn over --rounds
rounds, and reports each rate's best round. `flags` runs each variant in its own process (XLA reads XLA_FLAGS once),
the variants in turn and the order reversed every round, so load from other processes falls on all
of them alike; it prints each variant's median process-CPU and wall time per call over all rounds.
`peers` does the same for JAX against PyTorch eager (benchmarks/peers), the fair comparison on a
machine that others load. `profile`
traces the JAX train step with jax.profiler and sums its thunks' times by what each fused kernel
does in the optimized HLO (matmul, dropout's random bits, reduction, copies, element-wise). `dtypes`
times each call in float32 and with compute_dtype="bfloat16", interleaved in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import numpy as np  # noqa: E402


def model_shapes(config: str) -> list[tuple[int, int, int]]:
    """The distinct (m, k, n) of the config's linear layers in the train step's forward."""
    from benchmarks.configs import CONFIGS

    bc = CONFIGS[config]
    m = bc.batch * bc.tgt_len
    shapes = {(m, bc.d_model, 3 * bc.d_model), (m, bc.d_model, bc.d_model), (m, bc.d_model, bc.d_ff)}
    shapes |= {(m, bc.d_ff, bc.d_model), (m, bc.d_model, bc.vocab_size)}
    return sorted(shapes)


def _median_seconds(call, reps: int) -> float:
    call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(lib: str, m: int, k: int, n: int, dtype: str, reps: int) -> float | None:
    """GFLOP/s of one (m, k) @ (k, n) product in `dtype` on `lib` (median of reps); None where the
    library has no such dtype (NumPy and bfloat16)."""
    rng = np.random.default_rng(0)
    a32, b32 = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    if lib == "xla":
        import jax
        import jax.numpy as jnp

        a, b = jnp.asarray(a32, dtype=dtype), jnp.asarray(b32, dtype=dtype)
        matmul = jax.jit(lambda a, b: a @ b)
        seconds = _median_seconds(lambda: matmul(a, b).block_until_ready(), reps)
    elif lib == "torch":
        import torch

        ta, tb = torch.from_numpy(a32).to(getattr(torch, dtype)), torch.from_numpy(b32).to(getattr(torch, dtype))
        with torch.no_grad():
            seconds = _median_seconds(lambda: ta @ tb, reps)
    elif dtype == "float32":
        seconds = _median_seconds(lambda: a32 @ b32, reps)
    else:
        return None
    return 2 * m * k * n / seconds / 1e9


def run_matmul(args) -> None:
    # One process per library: an idle thread pool of one library (OpenBLAS's, XLA's) spinning
    # beside another's work slows it by an order of magnitude on 2 cores. Over several rounds, the
    # libraries in turn (order reversed every round), each rate is its best round: the least loaded.
    shapes = sorted({s for c in args.configs for s in model_shapes(c)} | {(2048, 2048, 2048)})
    rates: dict = {}
    libs = ["xla", "torch", "numpy"]
    for round_ in range(args.rounds):
        for lib in libs if round_ % 2 == 0 else libs[::-1]:
            cmd = [sys.executable, __file__, "_matmul", "--lib", lib, "--configs", *args.configs]
            done = subprocess.run(
                cmd + ["--reps", str(args.reps), "--dtypes", *args.dtypes], capture_output=True, text=True
            )
            if done.returncode != 0:
                print(f"{lib}: skipped ({done.stderr.strip().splitlines()[-1]})", file=sys.stderr)
                continue
            best = rates.setdefault(lib, {})
            for key, rate in json.loads(done.stdout):
                if rate is not None:
                    best[tuple(key)] = max(rate, best.get(tuple(key), 0.0))
    print(f"best of {args.rounds} rounds, load average {os.getloadavg()[0]:.1f} at the end")
    print("| m x k x n | dtype | XLA GFLOP/s | PyTorch GFLOP/s | NumPy GFLOP/s |")
    print("|---|---|--:|--:|--:|")
    for dtype in args.dtypes:
        for m, k, n in shapes:
            got = [rates.get(lib, {}).get((m, k, n, dtype)) for lib in ("xla", "torch", "numpy")]
            cells = [f"{r:,.0f}" if r is not None else "–" for r in got]
            print(f"| {m} x {k} x {n} | {dtype} | " + " | ".join(cells) + " |", flush=True)


def run_matmul_child(args) -> None:
    shapes = sorted({s for c in args.configs for s in model_shapes(c)} | {(2048, 2048, 2048)})
    out = [[[*s, d], matmul_rate(args.lib, *s, d, args.reps)] for d in args.dtypes for s in shapes]
    print(json.dumps(out))


def jax_call(config: str, measure: str, compute_dtype: str | None):
    """The benchmark's JAX `measure` ("train", "forward" or "decode") call on `config`, warmed up (compiled)."""
    import dataclasses

    import backends
    import functional_transformer as ft
    from benchmarks import workloads
    from benchmarks.configs import CONFIGS

    backend = backends.get_backend("jax")
    bc = dataclasses.replace(CONFIGS[config], compute_dtype=compute_dtype)
    host_batch = workloads.random_batch(bc)
    if measure == "train":
        workload = workloads.train_workload(backend, bc, host_batch)
    elif measure == "decode":
        params = ft.init(backend.random.key(0), bc.model_config())
        workload = workloads.decode_workload(backend, params, bc, host_batch, bc.tgt_len)
    else:
        params = ft.init(backend.random.key(0), bc.model_config())
        workload = workloads.forward_workload(backend, params, bc, host_batch)
    for _ in range(2):
        backend.block_until_ready(workload.call())
    return lambda: backend.block_until_ready(workload.call())


def time_interleaved(calls: dict, reps: int) -> dict:
    """{name: ([cpu s], [wall s])}: the calls in turn, the order reversed every repetition."""
    names, out = list(calls), {name: ([], []) for name in calls}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            c, t = time.process_time(), time.perf_counter()
            calls[name]()
            out[name][1].append(time.perf_counter() - t)
            out[name][0].append(time.process_time() - c)
    return out


def torch_calls(configs: list[str], measures: list[str]) -> dict:
    """{"config measure": call} of the benchmark's PyTorch eager peer (benchmarks/peers), warmed up."""
    from benchmarks import workloads
    from benchmarks.configs import CONFIGS
    from benchmarks.peers import torch_peer

    torch_peer.runtime()
    calls = {}
    for config in configs:
        bc = CONFIGS[config]
        for workload in torch_peer.workloads(bc, measures, workloads.random_batch(bc), bc.tgt_len):
            for _ in range(2):
                workload.call()
            calls[f"{config} {workload.measure}"] = workload.call
    return calls


def time_calls(lib: str, configs: list[str], measures: list[str], reps: int, compute_dtype: str | None) -> dict:
    """{"config measure": ([cpu s], [wall s])} of the benchmark's calls on `lib` in this process."""
    if lib == "torch":
        return time_interleaved(torch_calls(configs, measures), reps)
    calls = {f"{c} {m}": jax_call(c, m, compute_dtype) for c in configs for m in measures}
    return time_interleaved(calls, reps)


def alternate_processes(variants: list[tuple[str, str, str]], args) -> dict:
    """{variant name: {call: ([cpu s], [wall s])}}: each variant (name, lib, XLA_FLAGS) timed in its
    own process, the variants in turn, the order reversed every round."""
    samples: dict = {name: {} for name, _, _ in variants}
    for round_ in range(args.rounds):
        for name, lib, flags in variants if round_ % 2 == 0 else variants[::-1]:
            env = dict(os.environ, XLA_FLAGS=flags)
            cmd = [sys.executable, __file__, "_child", "--lib", lib, "--configs", *args.configs]
            cmd += ["--measures", *args.measures, "--reps", str(args.reps)]
            cmd += ["--compute-dtype", args.compute_dtype] if args.compute_dtype else []
            result = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
            for call, (cpu, wall) in result.items():
                got = samples[name].setdefault(call, ([], []))
                got[0].extend(cpu), got[1].extend(wall)
    return samples


def run_flags(args) -> None:
    variants = [(name, "xla", flags) for name, flags in (v.split("=", 1) for v in args.variant)]
    samples = alternate_processes(variants, args)
    print(f"{args.rounds} rounds x {args.reps} calls, load average {os.getloadavg()[0]:.1f} at the end")
    print("| variant | XLA_FLAGS | call | cpu median ms | wall median ms |")
    print("|---|---|---|--:|--:|")
    for name, _, flags in variants:
        for call, (cpu, wall) in samples[name].items():
            cpu_ms, wall_ms = statistics.median(cpu) * 1e3, statistics.median(wall) * 1e3
            print(f"| {name} | `{flags}` | {call} | {cpu_ms:,.1f} | {wall_ms:,.1f} |")


def run_peers(args) -> None:
    """JAX (jax.grad) against PyTorch eager, each in its own process, alternated."""
    samples = alternate_processes([("jax", "xla", ""), ("torch", "torch", "")], args)
    print(f"{args.rounds} rounds x {args.reps} calls, load average {os.getloadavg()[0]:.1f} at the end")
    print("| call | PyTorch eager wall median ms | JAX wall median ms | JAX / PyTorch wall | JAX / PyTorch cpu |")
    print("|---|--:|--:|--:|--:|")
    for call in samples["torch"]:
        (tc, tw), (jc, jw) = ([statistics.median(v) for v in samples[lib][call]] for lib in ("torch", "jax"))
        print(f"| {call} | {tw * 1e3:,.1f} | {jw * 1e3:,.1f} | {jw / tw:.2f}x | {jc / tc:.2f}x |")


def run_dtypes(args) -> None:
    """float32 against compute_dtype="bfloat16", interleaved in this process."""
    calls = {
        (c, m, dtype): jax_call(c, m, None if dtype == "float32" else dtype)
        for c in args.configs
        for m in args.measures
        for dtype in ("float32", "bfloat16")
    }
    samples = time_interleaved(calls, args.reps)
    print(f"{args.reps} alternations, load average {os.getloadavg()[0]:.1f} at the end")
    print("| config | measure | float32 cpu / wall ms | bfloat16 cpu / wall ms | bfloat16 / float32 (cpu, wall) |")
    print("|---|---|--:|--:|--:|")
    for c in args.configs:
        for m in args.measures:
            (c32, w32), (c16, w16) = (
                [statistics.median(v) * 1e3 for v in samples[c, m, d]] for d in ("float32", "bfloat16")
            )
            print(
                f"| {c} | {m} | {c32:,.1f} / {w32:,.1f} | {c16:,.1f} / {w16:,.1f} | {c16 / c32:.2f}, {w16 / w32:.2f} |"
            )


THUNK_KINDS = (
    "matmul",
    "random bits",
    "reduction",
    "copy, concatenate, slice",
    "element-wise",
)


def fusion_kind(ops: set[str], result_type: str) -> str:
    """What a fused computation of the optimized HLO does, from its ops and its result's type."""
    if "dot" in ops:
        return "matmul"
    if result_type in ("pred", "u32", "u64") or ops & {"xor", "shift-right-logical", "shift-left"}:
        return "random bits"  # dropout's Threefry rounds and its masks
    if "reduce" in ops:
        return "reduction"
    if ops & {"concatenate", "slice", "copy", "transpose"}:
        return "copy, concatenate, slice"
    return "element-wise"


def thunk_kinds(hlo_text: str) -> dict[str, str]:
    """{instruction name: kind} for the entry computation of an optimized HLO module's text."""
    import re

    computations = {
        m.group(1).lstrip("%"): set(re.findall(r"= \S+ ([\w-]+)\(", m.group(2)))
        for m in re.finditer(r"\n(%?[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S)
    }
    kinds = {}
    for line in hlo_text[hlo_text.index("ENTRY") :].splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\S* ([\w-]+)\(", line)
        if not m:
            continue
        name, result_type, op = m.groups()
        if op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line).group(1)
            kinds[name] = fusion_kind(computations.get(called, set()), result_type)
        elif op in ("dot", "copy", "transpose", "concatenate", "slice"):
            kinds[name] = fusion_kind({op}, result_type)
    return kinds


def run_profile(args) -> None:
    """The JAX train step's thunk times by kind, from a jax.profiler trace of --reps steps."""
    import collections
    import glob
    import gzip
    import re
    import tempfile

    import jax

    call = jax_call(args.configs[0], "train", args.compute_dtype)
    hlo_text = _train_step_hlo(args.configs[0], args.compute_dtype)
    kinds = thunk_kinds(hlo_text)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.reps):
                call()
        (path,) = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
        trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_kind = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in kinds:
            per_kind[kinds[event["name"]]] += event.get("dur", 0) / 1e3 / args.reps
    total = sum(per_kind.values())
    print(f"{args.configs[0]} train, {args.reps} steps traced, load average {os.getloadavg()[0]:.1f}")
    print("| thunks that are | ms per step | share |")
    print("|---|--:|--:|")
    for kind in THUNK_KINDS:
        print(f"| {kind} | {per_kind[kind]:,.1f} | {100 * per_kind[kind] / total:.0f}% |")
    counts = collections.Counter(kinds.values())
    print("instructions of the entry computation by kind:", dict(counts))
    # XLA's CPU backend may run a bfloat16 dot as a float32 one between conversions: count both.
    dot_types = collections.Counter(re.findall(r"= (\w+)\[[^\]]*\]\S* dot\(", hlo_text))
    entry = hlo_text[hlo_text.index("ENTRY") :]
    n_converts = len(re.findall(r"%wrapped_convert[.\d]* = ", entry))
    print(f"dots by result type: {dict(dot_types)}; conversion fusions: {n_converts}")


def _train_step_hlo(config: str, compute_dtype: str | None) -> str:
    """The optimized HLO text of the benchmark's JAX train step on `config`."""
    import dataclasses

    import backends
    from benchmarks.configs import CONFIGS
    from functional_transformer import train as ft_train

    backend = backends.get_backend("jax")
    bc = dataclasses.replace(CONFIGS[config], compute_dtype=compute_dtype)
    cfg = bc.model_config()
    tcfg = ft_train.TrainConfig(batch_size=bc.batch)
    optimizer = ft_train.make_optimizer(tcfg, cfg)
    state = ft_train.init_state(backend.random.key(0), cfg, optimizer)
    step = ft_train.make_train_step(cfg, tcfg, optimizer, backend)
    from benchmarks import workloads

    batch = backend.tree_asarray(workloads.random_batch(bc))
    return step.lower(state, batch, backend.random.key(1)).compile().as_text()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("matmul", "flags", "peers", "dtypes", "profile", "_child", "_matmul"))
    parser.add_argument("--lib", choices=("xla", "torch", "numpy"), default="xla")
    parser.add_argument("--configs", nargs="+", default=["tiny"])
    parser.add_argument("--measures", nargs="+", choices=("train", "forward", "decode"), default=["train", "forward"])
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compute-dtype", choices=("bfloat16",), default=None)
    parser.add_argument("--variant", action="append", default=[], help="NAME=XLA_FLAGS (repeatable)")
    args = parser.parse_args(argv)
    if args.mode == "matmul":
        run_matmul(args)
    elif args.mode == "peers":
        run_peers(args)
    elif args.mode == "profile":
        run_profile(args)
    elif args.mode == "dtypes":
        run_dtypes(args)
    elif args.mode == "_matmul":
        run_matmul_child(args)
    elif args.mode == "flags":
        if not args.variant:
            parser.error("flags needs at least one --variant NAME=XLA_FLAGS, e.g. --variant default=")
        run_flags(args)
    else:
        print(json.dumps(time_calls(args.lib, args.configs, args.measures, args.reps, args.compute_dtype)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
