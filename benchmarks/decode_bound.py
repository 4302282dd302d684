"""How fast cached greedy decoding could be if reading memory were all it did.

Each step of `generate.greedy` runs one token per row through the decoder, so every weight the
step uses is read once per step, whatever the batch: the decoder's self-attention projections,
cross-attention's query and output projections (its keys and values are in the cache), the
feed-forward layers, the layer norms, and the output projection. The step also reads the cache:
every layer's self-attention keys/values over all max_steps positions (masked, not skipped) and
the memory's cross-attention keys/values. With a copy bandwidth measured by NumPy, the bound is

    step time >= bytes read per step / bandwidth,    tokens/s <= batch / step time.

    uv run python -m benchmarks.decode_bound                           # tiny and base, both backends
    uv run python -m benchmarks.decode_bound --configs base --backends jax

The bandwidth is NumPy copying a float32 array far larger than the caches (`--copy-mib`), read
plus write bytes over the best time. Each backend then runs the benchmark's decode workload
(`workloads.decode_workload`: greedy, every row to full length) and, in alternation with it, the
encoder alone on the same batch (`ft.encode`): a decode call runs the encoder once over the whole
source batch, which is compute, not weight reads, so its time is taken off to give the decoder
steps' own tokens/s.
"""

from __future__ import annotations

from benchmarks.env_guard import reexec_without_slow_blas_env

if __name__ == "__main__":
    reexec_without_slow_blas_env()  # before NumPy is imported

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import backends  # noqa: E402
import functional_transformer as ft  # noqa: E402
from functional_transformer import model  # noqa: E402

from .configs import CONFIGS, BenchConfig  # noqa: E402
from .workloads import decode_workload, random_batch  # noqa: E402

CROSS_CACHED = ("w_k", "b_k", "w_v", "b_v")  # cross-attention's key/value projections run once, into the cache


def copy_bandwidth(mib: int = 256, reps: int = 10) -> float:
    """Bytes per second of NumPy copying a `mib` MiB float32 array: (read + write) / best time."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / min(times)


def bytes_read_per_step(bc: BenchConfig, steps: int | None = None) -> dict:
    """{"weights", "cache"}: the bytes one cached greedy step reads (float32, no early stop)."""
    cfg = bc.model_config()
    params = model.init(backends.get_backend("numpy").random.key(0), cfg)
    weights = 0
    for path, leaf in backends.tree_items(params["decoder"]):
        *_, sublayer, name = path.split(".")
        if not (sublayer == "cross_attn" and name in CROSS_CACHED):
            weights += leaf.nbytes
    weights += sum(leaf.nbytes for leaf in backends.tree_leaves(model.for_config(cfg).output_projection(params)))
    weights += bc.batch * cfg.d_model * 4  # the embedding rows of the batch's tokens
    steps = steps or bc.tgt_len
    itemsize = 4
    per_layer_cache = 2 * bc.batch * steps * cfg.d_model * itemsize + 2 * bc.batch * bc.src_len * cfg.d_model * itemsize
    return {"weights": weights, "cache": cfg.n_decoder_layers * per_layer_cache}


def bounds(bc: BenchConfig, bandwidth: float) -> dict:
    """The step time and tokens/s bounds from the weights alone and from weights plus cache."""
    read = bytes_read_per_step(bc)
    out = {"config": bc.name, "batch": bc.batch, "weights_mb": read["weights"] / 1e6, "cache_mb": read["cache"] / 1e6}
    for what, n_bytes in (("weights", read["weights"]), ("weights_and_cache", read["weights"] + read["cache"])):
        step_s = n_bytes / bandwidth
        out[f"{what}_step_ms"] = step_s * 1e3
        out[f"{what}_tokens_per_s"] = bc.batch / step_s
    return out


def decode_and_encoder_seconds(backend_name: str, bc: BenchConfig, reps: int) -> tuple[float, float]:
    """Median seconds of the benchmark's decode call and of ft.encode on its batch, timed in
    alternation after one warm-up call of each."""
    backend = backends.get_backend(backend_name)
    cfg = bc.model_config()
    params = ft.init(backend.random.key(0), cfg)
    host_batch = random_batch(bc)
    src = backend.asarray(host_batch["src"])
    calls = [decode_workload(backend, params, bc, host_batch, bc.tgt_len).call, lambda: ft.encode(params, src, cfg)]
    times = [[], []]
    for rep in range(reps + 1):
        for call, record in zip(calls, times):
            start = time.perf_counter()
            backend.block_until_ready(call())
            if rep:  # the first round is the warm-up (compilation on JAX)
                record.append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_bound", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["tiny", "base"])
    parser.add_argument("--backends", nargs="+", choices=backends.BACKEND_NAMES, default=list(backends.BACKEND_NAMES))
    parser.add_argument("--reps", type=int, default=5, help="timed calls of each (default 5)")
    parser.add_argument("--copy-mib", type=int, default=256, help="size of the array NumPy copies (default 256)")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth(args.copy_mib)
    print(f"NumPy copy bandwidth ({args.copy_mib} MiB, read + write): {bandwidth / 1e9:.1f} GB/s\n")
    print(
        "| config | weights MB/step | cache MB/step | bound ms/step (weights) | bound tokens/s (weights) "
        "| bound tokens/s (weights + cache) |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    table = {name: bounds(CONFIGS[name], bandwidth) for name in args.configs}
    for name, b in table.items():
        print(
            f"| {name} | {b['weights_mb']:.1f} | {b['cache_mb']:.1f} | {b['weights_step_ms']:.2f} "
            f"| {b['weights_tokens_per_s']:,.0f} | {b['weights_and_cache_tokens_per_s']:,.0f} |"
        )
    print(
        "\n| config | backend | decode ms | tokens/s | encoder ms | decoder steps tokens/s | fraction of the weights bound |"
    )
    print("|---|---|--:|--:|--:|--:|--:|")
    for name in args.configs:
        bc = CONFIGS[name]
        for backend in args.backends:
            decode_s, encode_s = decode_and_encoder_seconds(backend, bc, args.reps)
            tokens = bc.batch * bc.tgt_len
            steps_rate = tokens / (decode_s - encode_s)
            print(
                f"| {name} | {backend} | {decode_s * 1e3:,.1f} | {tokens / decode_s:,.0f} | {encode_s * 1e3:,.1f} "
                f"| {steps_rate:,.0f} | {steps_rate / table[name]['weights_tokens_per_s']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
