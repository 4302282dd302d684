"""A/B timing of one benchmarked call built from two source trees, in one process, calls interleaved.

    python -m benchmarks.studies.ab OLD_TREE NEW_TREE --config tiny --reps 30 --methods autodiff vjp numpy

OLD_TREE and NEW_TREE are checkouts (e.g. `git worktree add /tmp/old <commit>`). Each variant is
imported from its tree and warmed up (compiled on JAX), then the variants are called in turn,
the order reversed every repetition, so load from other processes falls on all of them alike.
Prints each variant's median wall and process-CPU time and the new/old ratios: on a shared machine
the CPU-time ratio is the steadier one. Methods: "autodiff" and "vjp" (the JAX train step with
that grad_method), "numpy" (the NumPy train step); `--measure forward` times ft.apply instead,
`--measure decode` greedy decoding with the key/value cache ("autodiff" and "vjp" are then both JAX).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

PACKAGES = ("functional_transformer", "backends", "benchmarks")


def build(src_dir: str, config: str, method: str, measure: str):
    """(call, block) of `measure` with `method`, imported from the tree at src_dir."""
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            del sys.modules[name]
    sys.path.insert(0, src_dir)
    try:
        import backends
        import functional_transformer as ft
        from benchmarks import workloads
        from benchmarks.configs import CONFIGS

        backend = backends.get_backend("numpy" if method == "numpy" else "jax")
        bc, host_batch = CONFIGS[config], workloads.random_batch(CONFIGS[config])
        if measure == "train":
            workload = workloads.train_workload(backend, bc, host_batch, None if method == "numpy" else method)
        else:
            params = ft.init(backend.random.key(0), bc.model_config())
            if measure == "decode":  # greedy decoding with the key/value cache, bc.tgt_len steps
                workload = workloads.decode_workload(backend, params, bc, host_batch, bc.tgt_len)
            else:
                workload = workloads.forward_workload(backend, params, bc, host_batch)
        for _ in range(3):
            backend.block_until_ready(workload.call())
        return workload.call, backend.block_until_ready
    finally:
        sys.path.remove(src_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--measure", choices=("train", "forward", "decode"), default="train")
    parser.add_argument("--methods", nargs="+", choices=("autodiff", "vjp", "numpy"), default=["autodiff", "vjp"])
    args = parser.parse_args(argv)
    variants = {
        (tree, m): build(path, args.config, m, args.measure)
        for m in args.methods
        for tree, path in (("old", args.old), ("new", args.new))
    }
    names = list(variants)
    wall, cpu = {n: [] for n in names}, {n: [] for n in names}
    load_before = os.getloadavg()
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            call, block = variants[name]
            c, t = time.process_time(), time.perf_counter()
            block(call())
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    w = {n: statistics.median(v) * 1e3 for n, v in wall.items()}
    c = {n: statistics.median(v) * 1e3 for n, v in cpu.items()}
    print(
        f"{args.config} {args.measure}, {args.reps} alternations, load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    for n in names:
        print(
            f"  {n[0]:>3} {n[1]:>8}: wall median {w[n]:9.1f} ms (min {min(wall[n]) * 1e3:.1f}), cpu median {c[n]:9.1f} ms"
        )
    for m in args.methods:
        print(f"  new/old {m}: wall {w['new', m] / w['old', m]:.3f}, cpu {c['new', m] / c['old', m]:.3f}")
    if {"autodiff", "vjp"} <= set(args.methods):
        for tree in ("old", "new"):
            print(
                f"  {tree} autodiff/vjp: wall {w[tree, 'autodiff'] / w[tree, 'vjp']:.3f}, "
                f"cpu {c[tree, 'autodiff'] / c[tree, 'vjp']:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
