"""What a first call costs on each backend: the first train step, forward pass and decode against later calls.

The model is `ft train`'s default. On JAX the difference is tracing and XLA compilation; NumPy has
nothing to compile.

    uv run python -m benchmarks.studies.compile_times                  # both backends, a Markdown table
    uv run python -m benchmarks.studies.compile_times --backends jax

The model is `ft train`'s default (run_data.MODEL_DEFAULTS: d_model 128, 4 heads, d_ff 512, 2 + 2
layers) on the reverse task's vocabulary, max_len 16, batch 64, float32; each measure runs in a
fresh process, so that no earlier compilation is reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

MEASURES = ("train", "forward", "decode")
REPO = Path(__file__).resolve().parents[2]  # the child imports benchmarks from here


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(backend_name: str, what: str, reps: int) -> dict:
    """{"first_s", "steady_s", "compile_s"} of one measure on one backend, in this process."""
    import numpy as np

    import backends
    from functional_transformer import TrainConfig, api, generate
    from functional_transformer.data import CharTokenizer, encode_pairs, make_batch, make_task_data, task_alphabet
    from functional_transformer.runs import MODEL_DEFAULTS, model_config
    from functional_transformer.train import init_state, make_optimizer, make_train_step

    backend = backends.get_backend(backend_name)
    tokenizer = CharTokenizer.from_texts([task_alphabet("reverse")])
    pairs = make_task_data("reverse", 64, 0, 12, 12, 0)[0]  # 64 strings of 12 letters: one shape
    cfg = model_config(tokenizer, pairs, MODEL_DEFAULTS)
    batch = backend.tree_asarray(make_batch(encode_pairs(pairs, tokenizer, cfg.max_len), cfg.pad_id, 8))
    tcfg = TrainConfig()
    optimizer = make_optimizer(tcfg, cfg)
    init_key, key = backend.random.split(backend.random.key(0), 2)
    state = {"state": init_state(init_key, cfg, optimizer)}

    if what == "train":
        step_fn = make_train_step(cfg, tcfg, optimizer, backend)

        def call():
            state["state"], metrics = step_fn(state["state"], batch, key)
            float(metrics["loss"])  # waits for the result
    elif what == "forward":

        def call():
            np.asarray(backend.to_numpy(api.apply(state["state"]["params"], batch["src"], batch["tgt_in"], cfg)))
    else:

        def call():
            np.asarray(
                backend.to_numpy(
                    generate.greedy(
                        state["state"]["params"],
                        batch["src"],
                        cfg,
                        bos_id=tokenizer.bos_id,
                        eos_id=tokenizer.eos_id,
                        max_steps=13,
                    )
                )
            )

    first = _timed(call)
    steady = statistics.median(_timed(call) for _ in range(reps))
    return {"backend": backend_name, "measure": what, "first_s": first, "steady_s": steady, "compile_s": first - steady}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.compile_times", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--backends", nargs="+", default=["numpy", "jax"], choices=["numpy", "jax"])
    parser.add_argument("--measures", nargs="+", choices=MEASURES, default=list(MEASURES))
    parser.add_argument("--reps", type=int, default=3, help="calls after the first; their median is the steady time")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "MEASURE"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one, args.reps)))
        return
    rows = []
    for backend_name in args.backends:
        for what in args.measures:
            child = [
                sys.executable,
                "-m",
                "benchmarks.studies.compile_times",
                "--reps",
                str(args.reps),
                "--one",
                backend_name,
                what,
            ]
            out = subprocess.run(child, check=True, capture_output=True, text=True, cwd=REPO).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(
                f"{backend_name} {what}: {rows[-1]['first_s']:.2f} s first, {rows[-1]['steady_s']:.3f} s after",
                file=sys.stderr,
            )
    print("| backend | measure | first call s | later calls s (median) | first - later s |")
    print("|---|---|--:|--:|--:|")
    for r in rows:
        print(f"| {r['backend']} | {r['measure']} | {r['first_s']:.2f} | {r['steady_s']:.3f} | {r['compile_s']:.2f} |")


if __name__ == "__main__":
    main()
