"""One trajectory, two backends: the same model, seed and dropout masks trained on NumPy and on JAX.

Both loss curves are plotted in one figure, with their relative gap.

    uv run python -m benchmarks.studies.trajectory --steps 300 --plot docs/trajectory.png

Both runs draw the same params and the same dropout masks (Threefry on both backends) and see the
same batches, so any gap between the curves is float32 rounding (BLAS against XLA), which grows
slowly over steps. The largest relative gap is printed and written next to the plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import backends
from functional_transformer import TrainConfig
from functional_transformer.config import TransformerConfig
from functional_transformer.data import CharTokenizer, batch_iterator, encode_pairs, make_task_data, task_alphabet
from functional_transformer.train import init_state, make_optimizer, make_train_step


def run(backend_name: str, steps: int, seed: int, n_layers: int = 2) -> list[float]:
    """The per-step training losses of the reverse task on one backend."""
    backend = backends.get_backend(backend_name)
    train_pairs, _ = make_task_data("reverse", 5000, 10, 1, 10, seed)
    tokenizer = CharTokenizer.from_texts([task_alphabet("reverse")])
    cfg = TransformerConfig(
        src_vocab_size=tokenizer.vocab_size,
        tgt_vocab_size=tokenizer.vocab_size,
        d_model=64,
        n_heads=4,
        d_ff=256,
        n_encoder_layers=n_layers,
        n_decoder_layers=n_layers,
        max_len=16,
        drop_rate=0.1,
    )
    tcfg = TrainConfig(steps=steps, batch_size=32, learning_rate=2e-3, warmup_steps=50, seed=seed)
    optimizer = make_optimizer(tcfg, cfg)
    init_key, key = backend.random.split(backend.random.key(seed), 2)
    state = init_state(init_key, cfg, optimizer)
    step_fn = make_train_step(cfg, tcfg, optimizer, backend)
    batches = batch_iterator(
        encode_pairs(train_pairs, tokenizer, cfg.max_len), tcfg.batch_size, seed, pad_to_multiple=8
    )
    losses = []
    for _ in range(steps):
        state, metrics = step_fn(state, backend.tree_asarray(next(batches)), key)
        losses.append(float(metrics["loss"]))
    return losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.trajectory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps on each backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each (default 2)")
    parser.add_argument("--plot", type=Path, default=Path("docs/trajectory.png"), help="where to write the PNG")
    args = parser.parse_args(argv)
    curves = {name: run(name, args.steps, args.seed, args.layers) for name in ("numpy", "jax")}
    a, b = np.asarray(curves["numpy"]), np.asarray(curves["jax"])
    gap = np.abs(a - b) / np.abs(a)
    summary = {
        "steps": args.steps,
        "max_relative_gap": float(gap.max()),
        "relative_gap_first_50": float(gap[:50].max()),
        "final_loss": {"numpy": a[-1], "jax": b[-1]},
    }
    print(json.dumps(summary, indent=1, default=float))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_gap) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot(a, label="NumPy (hand-written VJPs)", lw=2)
    ax.plot(b, "--", label="JAX (jax.grad under jit)", lw=1.5)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="same seed, dropout 0.1 on")
    ax.legend()
    ax_gap.semilogy(np.maximum(gap, 1e-12))
    ax_gap.set(xlabel="step", ylabel="|loss_numpy - loss_jax| / loss_numpy", title="relative gap (float32)")
    for axis in (ax, ax_gap):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=100)
    args.plot.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
