"""`--max-tokens` against fixed-size batches on varied lengths: padding, step time and training tokens/s.

The two batchings are timed in one process, interleaved.

    uv run python -m benchmarks.studies.token_batching                       # both backends, a Markdown table
    uv run python -m benchmarks.studies.token_batching --backends jax --json /tmp/tb.json

The data: `--n` pairs whose source and target lengths are drawn uniformly from [--low, --high]
(random ids of a 64-token vocabulary, like a reversal task), max_len the longest rounded up to 8.
The model is `ft train`'s default (run_data.MODEL_DEFAULTS: d_model 128, 4 heads, d_ff 512, 2 + 2
layers). Fixed batches hold --batch-size examples padded to the longest (rounded up to 8, as the
training loop does); token batches are those of `ft train --max-tokens` with --max-tokens
= batch size x max_len, the same padded budget as a fixed batch of the longest examples.

Every distinct batch shape of the timed steps is run once first (on JAX, its compilation; the
count and time are reported), then --reps rounds each time --steps steps of one batching and then
of the other. tokens/s counts real target tokens (padding and filler rows excluded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from benchmarks.env_guard import reexec_without_slow_blas_env


def make_examples(n: int, low: int, high: int, seed: int = 0):
    """n EncodedPairs with source and target lengths uniform in [low, high], ids in [4, 64)."""
    import numpy as np

    from functional_transformer.data import EncodedPair

    rng = np.random.default_rng(seed)
    lengths = rng.integers(low, high + 1, size=n)
    return [
        EncodedPair(
            tuple(int(i) for i in rng.integers(4, 64, int(length))),
            (1, *(int(i) for i in rng.integers(4, 64, int(length))), 2),
        )
        for length in lengths
    ]


def measure(backend_name: str, args) -> dict:
    """Padding fractions, step times and tokens/s of both batchings on one backend."""
    import itertools

    import backends
    from functional_transformer import TrainConfig
    from functional_transformer.config import TransformerConfig
    from functional_transformer.data import fixed_batch_plans, plan_batch, plan_counts, token_batch_plans
    from functional_transformer.runs import MODEL_DEFAULTS
    from functional_transformer.train import init_state, make_optimizer, make_train_step

    backend = backends.get_backend(backend_name)
    examples = make_examples(args.n, args.low, args.high)
    max_len = -(-(args.high + 1) // 8) * 8
    cfg = TransformerConfig(src_vocab_size=64, tgt_vocab_size=64, max_len=max_len, **MODEL_DEFAULTS)
    max_tokens = args.max_tokens or args.batch_size * max_len
    tcfg = TrainConfig()
    optimizer = make_optimizer(tcfg, cfg)
    init_key, key = backend.random.split(backend.random.key(0), 2)
    holder = {"state": init_state(init_key, cfg, optimizer)}
    step_fn = make_train_step(cfg, tcfg, optimizer, backend)
    n_timed = args.reps * args.steps
    streams = {
        "fixed": list(itertools.islice(fixed_batch_plans(examples, args.batch_size, 0, pad_to_multiple=8), n_timed)),
        "max_tokens": list(itertools.islice(token_batch_plans(examples, max_tokens, 0, max_len=max_len), n_timed)),
    }
    batches = {
        name: [backend.tree_asarray(plan_batch(examples, plan, cfg.pad_id)) for plan in plans]
        for name, plans in streams.items()
    }

    def run(batch) -> None:
        holder["state"], metrics = step_fn(holder["state"], batch, key)
        float(metrics["loss"])  # waits for the step

    result = {"backend": backend_name, "budget_tokens": max_tokens, "batch_size": args.batch_size, "max_len": max_len}
    for name, plans in streams.items():
        shapes = {}
        for plan, batch in zip(plans, batches[name]):
            shapes.setdefault((len(plan.indices), plan.src_len, plan.tgt_len), batch)
        start = time.perf_counter()
        for batch in shapes.values():  # the first call of each shape: its compilation on JAX
            run(batch)
        targets, filled, slots = (sum(c) for c in zip(*(plan_counts(examples, p) for p in plans)))
        result[name] = {
            "shapes": len(shapes),
            "first_calls_s": time.perf_counter() - start,
            "pad_fraction": 1 - filled / slots,
            "mean_rows": statistics.mean(len(p.indices) for p in plans),
            "target_tokens": targets,
            "times_s": [],
        }
    for rep in range(args.reps):
        for name in streams:  # interleaved: both see the same load
            chunk = batches[name][rep * args.steps : (rep + 1) * args.steps]
            start = time.perf_counter()
            for batch in chunk:
                run(batch)
            result[name]["times_s"].append((time.perf_counter() - start) / len(chunk))
    for name in streams:
        r = result[name]
        r["median_step_s"] = statistics.median(r["times_s"])
        r["tokens_per_s"] = r["target_tokens"] / (sum(r["times_s"]) * args.steps)
    result["tokens_per_s_ratio"] = result["max_tokens"]["tokens_per_s"] / result["fixed"]["tokens_per_s"]
    return result


def table(results: list[dict]) -> str:
    rows = [
        "| backend | batching | shapes | first calls s | padding | mean rows | median step ms | target tokens/s |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        for name, label in (
            ("fixed", f"--batch-size {r['batch_size']}"),
            ("max_tokens", f"--max-tokens {r['budget_tokens']}"),
        ):
            m = r[name]
            rows.append(
                f"| {r['backend']} | {label} | {m['shapes']} | {m['first_calls_s']:.1f} | "
                f"{100 * m['pad_fraction']:.1f}% | {m['mean_rows']:.1f} | {1e3 * m['median_step_s']:,.0f} | "
                f"{m['tokens_per_s']:,.0f} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.token_batching", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backends", nargs="+", default=["numpy", "jax"], choices=["numpy", "jax"])
    parser.add_argument("--n", type=int, default=2000, help="pairs (default 2000)")
    parser.add_argument("--low", type=int, default=10, help="shortest source and target (default 10)")
    parser.add_argument("--high", type=int, default=120, help="longest source and target (default 120)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows of a fixed batch (default 32)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget (default batch size x max_len)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round (default 10)")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds of each batching (default 3)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    import os

    results = [measure(name, args) for name in args.backends]
    load = os.getloadavg()
    print(
        f"load average at the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}; {os.cpu_count()} CPUs", file=sys.stderr
    )
    print(table(results))
    for r in results:
        print(
            f"{r['backend']}: --max-tokens trains {r['tokens_per_s_ratio']:.2f}x the target tokens/s of fixed batches"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": load, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    reexec_without_slow_blas_env()
    raise SystemExit(main())
