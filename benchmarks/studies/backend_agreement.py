"""How closely the two backends' loss gradients agree, in float64 and float32, dropout off and on.

The loss gradient from NumPy's hand-written VJPs against `jax.grad` on JAX (and against the same
VJPs run by JAX), for one batch.

    uv run python -m benchmarks.studies.backend_agreement            # a Markdown table on stdout

Both backends get the same params (drawn once with NumPy), the same tokens (with padding) and, with
dropout on, the same masks (Threefry on both). For each pair of gradient trees it prints the
largest absolute difference over every parameter, and the largest of each leaf's difference
relative to that leaf's largest gradient entry (leaving out the key biases, see `compare`).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import backends
import functional_transformer as ft
from backends import tree_items


def make_batch(cfg, batch: int, src_len: int, tgt_len: int, seed: int) -> dict:
    """Random token ids in [1, vocab), each row padded after a random length (at least 1); tgt_out
    is padded where tgt_in is."""
    rng = np.random.default_rng(seed)

    def padded(vocab, length, lengths):
        ids = rng.integers(1, vocab, size=(batch, length), dtype=np.int32)
        ids[np.arange(length)[None, :] >= lengths[:, None]] = cfg.pad_id
        return ids

    src_lengths, tgt_lengths = rng.integers(1, src_len + 1, size=batch), rng.integers(1, tgt_len + 1, size=batch)
    return {
        "src": padded(cfg.src_vocab_size, src_len, src_lengths),
        "tgt_in": padded(cfg.tgt_vocab_size, tgt_len, tgt_lengths),
        "tgt_out": padded(cfg.tgt_vocab_size, tgt_len, tgt_lengths),
    }


def small_config(dtype: str = "float64", n_layers: int = 2) -> ft.TransformerConfig:
    """The gradient tests' shapes (tests/test_gradients.py): deliberately odd, small enough for float64;
    dropout 0.2 where a measure trains."""
    return ft.TransformerConfig(
        src_vocab_size=11,
        tgt_vocab_size=13,
        d_model=12,
        n_heads=3,
        d_ff=10,
        n_encoder_layers=n_layers,
        n_decoder_layers=n_layers,
        max_len=9,
        drop_rate=0.2,
        dtype=dtype,
    )


def compare(a: dict, b: dict) -> dict:
    """{"max_abs", "max_rel"} of two gradient trees (NumPy arrays): the largest absolute difference
    over every leaf, and the largest of each leaf's difference relative to that leaf's largest entry,
    leaving out the attention key biases b_k, whose true gradient is exactly zero (softmax ignores a
    shift along the keys), so that both backends' values there are rounding noise."""
    a, b = dict(tree_items(a)), dict(tree_items(b))
    assert a.keys() == b.keys()
    max_abs = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    max_rel = max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in a if not k.endswith("b_k"))
    return {"max_abs": max_abs, "max_rel": max_rel}


def measure(cfg, train: bool, seed: int = 0) -> dict:
    np_backend, jax_backend = backends.get_backend("numpy"), backends.get_backend("jax")
    host_params = ft.init(np_backend.random.key(seed), cfg)
    batch = make_batch(cfg, 3, 5, 7, seed)
    grads = {}
    for backend, method in ((np_backend, "vjp"), (jax_backend, "vjp"), (jax_backend, "autodiff")):
        params = backend.tree_asarray(host_params)
        key = backend.random.key(seed + 1) if train else None
        _, g = ft.loss_and_grad(
            params, {k: backend.asarray(v) for k, v in batch.items()}, cfg, train, key, method=method
        )
        grads[f"{backend.name} {method}"] = backend.tree_to_numpy(g)
    largest = max(float(np.max(np.abs(leaf))) for leaf in np_backend.tree_leaves(grads["numpy vjp"]))
    return {
        "dtype": cfg.dtype,
        "dropout": train,
        "largest_gradient": largest,
        "numpy vjp vs jax autodiff": compare(grads["numpy vjp"], grads["jax autodiff"]),
        "numpy vjp vs jax vjp": compare(grads["numpy vjp"], grads["jax vjp"]),
        "jax vjp vs jax autodiff": compare(grads["jax vjp"], grads["jax autodiff"]),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.backend_agreement", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.add_argument("--dtypes", nargs="+", choices=("float64", "float32"), default=["float64", "float32"])
    parser.add_argument(
        "--dropout", nargs="+", choices=("off", "on"), default=["off", "on"], help="dropout 0.2 or none"
    )
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each (default 2)")
    args = parser.parse_args(argv)
    results = [
        measure(small_config(dtype, args.layers), dropout == "on") for dtype in args.dtypes for dropout in args.dropout
    ]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    pairs = ("numpy vjp vs jax autodiff", "numpy vjp vs jax vjp", "jax vjp vs jax autodiff")
    print("| dtype | dropout | largest gradient | " + " | ".join(f"{p}: max abs (max rel)" for p in pairs) + " |")
    print("|---|---|--:|" + "--:|" * len(pairs))
    for r in results:
        cells = " | ".join(f"{r[p]['max_abs']:.1e} ({r[p]['max_rel']:.1e})" for p in pairs)
        print(f"| {r['dtype']} | {'on (0.2)' if r['dropout'] else 'off'} | {r['largest_gradient']:.2f} | {cells} |")


if __name__ == "__main__":
    main()
