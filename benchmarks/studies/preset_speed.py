"""The gpt2 and llama presets' train steps at one size: median CPU time per step and tokens per CPU-second.

The two steps alternate in one process, so load from other processes falls on both alike.

    FT_BACKEND=jax uv run python -m benchmarks.studies.preset_speed            # the README's comparison
    FT_BACKEND=numpy uv run python -m benchmarks.studies.preset_speed --reps 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import functional_transformer as ft
from functional_transformer import train
from functional_transformer.models import presets


def measure(backend, *, d_model=64, n_heads=4, n_layers=2, length=256, batch=32, vocab=105, reps=8) -> dict:
    """{preset: median CPU seconds of one train step of batch x length tokens}."""
    tcfg = ft.TrainConfig(batch_size=batch)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, size=(batch, length + 1)).astype(np.int32)
    host = {"src": np.zeros((batch, 0), np.int32), "tgt_in": ids[:, :-1], "tgt_out": ids[:, 1:]}
    runs = {}
    for name in ("gpt2", "llama"):
        cfg = presets.preset(name, vocab, pad_id=0, d_model=d_model, n_heads=n_heads, n_layers=n_layers, max_len=length)
        optimizer = train.make_optimizer(tcfg, cfg)
        state = train.init_state(backend.random.key(0), cfg, optimizer)
        step = train.make_train_step(cfg, tcfg, optimizer, backend)
        batch_arrays, key = backend.tree_asarray(host), backend.random.key(1)
        for _ in range(2):  # compiled (JAX) and warm
            state, metrics = step(state, batch_arrays, key)
            backend.block_until_ready(metrics)
        runs[name] = {"step": step, "state": state, "batch": batch_arrays, "key": key, "times": []}
    for rep in range(reps):
        for name in ("gpt2", "llama") if rep % 2 == 0 else ("llama", "gpt2"):
            run = runs[name]
            start = time.process_time()
            run["state"], metrics = run["step"](run["state"], run["batch"], run["key"])
            backend.block_until_ready(metrics)
            run["times"].append(time.process_time() - start)
    return {name: statistics.median(run["times"]) for name, run in runs.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.preset_speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--reps", type=int, default=8, help="timed steps of each preset (default 8)")
    parser.add_argument("--d-model", type=int, default=64, help="model width, 4 heads (default 64)")
    parser.add_argument("--n-layers", type=int, default=2, help="decoder blocks (default 2)")
    parser.add_argument("--length", type=int, default=256, help="tokens per row (default 256)")
    parser.add_argument("--batch", type=int, default=32, help="rows per step (default 32)")
    args = parser.parse_args(argv)
    backend = ft.backend
    times = measure(
        backend, d_model=args.d_model, n_layers=args.n_layers, length=args.length, batch=args.batch, reps=args.reps
    )
    for name, seconds in times.items():
        print(
            f"{backend.name} {name}: median CPU {seconds * 1e3:.1f} ms per step of {args.batch} x {args.length} tokens, "
            f"{args.batch * args.length / seconds:,.0f} tokens per CPU-second"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
