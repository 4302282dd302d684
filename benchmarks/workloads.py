"""What is timed: one call of ft.apply, of the train step, or of greedy decoding, on one backend.

A `Workload` wraps one such call as a zero-argument function returning the arrays to wait on,
together with the model FLOPs and target tokens of one call. The train step donates its state on
JAX, so its workload feeds the state it returns into the next call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

import functional_transformer as ft
from backends import Backend
from functional_transformer import parallel
from functional_transformer import train as ft_train
from functional_transformer.generate import greedy
from functional_transformer.layers import dropout

from . import flops
from .configs import BenchConfig

BOS_ID = 1
NEVER_EOS = -1  # outside every vocabulary: argmax never produces it, so decoding never stops early


@dataclasses.dataclass
class Workload:
    """One benchmarked call. `call()` runs it once and returns the arrays to block on."""

    measure: str  # "forward", "train", "train_vjp", "decode" or "dropout"
    call: Callable[[], Any]
    flops: int  # model matmul FLOPs of one call (see flops.py); 0 for "dropout"
    tokens: int  # target tokens of one call: batch * tgt_len, or batch * steps for decoding
    details: dict = dataclasses.field(default_factory=dict)
    xla_stats: Callable[[], dict] | None = None  # JAX only: XLA's own FLOP and memory estimates


def random_batch(bc: BenchConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """{"src": (B, S), "tgt_in": (B, T), "tgt_out": (B, T)} int32 ids in [1, vocab): no padding (pad_id 0)."""
    rng = np.random.default_rng(seed)
    shapes = {"src": (bc.batch, bc.src_len), "tgt_in": (bc.batch, bc.tgt_len), "tgt_out": (bc.batch, bc.tgt_len)}
    return {name: rng.integers(1, bc.vocab_size, shape, dtype=np.int32) for name, shape in shapes.items()}


def forward_workload(backend: Backend, params: dict, bc: BenchConfig, host_batch: dict) -> Workload:
    """ft.apply in eval mode (no dropout): src (B, S), tgt_in (B, T) -> logits (B, T, V)."""
    cfg = bc.model_config()
    src, tgt_in = backend.asarray(host_batch["src"]), backend.asarray(host_batch["tgt_in"])
    return Workload(
        measure="forward",
        call=lambda: ft.apply(params, src, tgt_in, cfg),
        flops=flops.forward_flops(cfg, bc.batch, bc.src_len, bc.tgt_len),
        tokens=bc.batch * bc.tgt_len,
    )


def train_workload(
    backend: Backend,
    bc: BenchConfig,
    host_batch: dict,
    grad_method: str | None = None,
    mesh=None,
    shard_params: bool = False,
) -> Workload:
    """The full step of train.make_train_step: forward and backward with dropout 0.1, global-norm
    clipping, Adam. grad_method None is the backend's default ("vjp" on NumPy, "autodiff" i.e.
    jax.grad on JAX); "vjp" on JAX runs the hand-written VJPs under jit. With a device `mesh`
    (parallel.make_mesh) the step is the sharded one of train.run_loop: the batch's rows split over
    the devices, the state replicated or (shard_params) its matrices split."""
    cfg = bc.model_config()
    tcfg = ft_train.TrainConfig(batch_size=bc.batch, grad_method=grad_method)
    optimizer = ft_train.make_optimizer(tcfg, cfg)
    state = ft_train.init_state(backend.random.key(0), cfg, optimizer)
    dropout_key = backend.random.key(1)
    if mesh is None:
        step = ft_train.make_train_step(cfg, tcfg, optimizer, backend)
        batch = backend.tree_asarray(host_batch)
    else:
        parallel.check_batch_size(bc.batch, mesh)
        state = parallel.place_state(state, mesh, shard_params)
        step = ft_train.make_train_step(
            cfg, tcfg, optimizer, backend, mesh=mesh, state=state, shard_params=shard_params
        )
        batch = parallel.put_batch(host_batch, mesh)
        dropout_key = backend.jax.device_put(dropout_key, parallel.replicated(mesh))
    holder = {"state": state}

    def call():
        holder["state"], metrics = step(holder["state"], batch, dropout_key)  # the old state is donated on JAX
        return holder["state"], metrics

    def xla_stats() -> dict:
        compiled = step.lower(holder["state"], batch, dropout_key).compile()
        return _compiled_stats(compiled)

    method = grad_method or ft.default_grad_method(backend)
    return Workload(
        measure="train_vjp" if (backend.name == "jax" and method == "vjp") else "train",
        call=call,
        flops=flops.train_flops(cfg, bc.batch, bc.src_len, bc.tgt_len),
        tokens=bc.batch * bc.tgt_len,
        details={
            "grad_method": method,
            "devices": parallel.device_count(mesh),
            "shard_params": bool(shard_params and mesh is not None),
        },
        xla_stats=xla_stats if backend.name == "jax" else None,
    )


def decode_workload(backend: Backend, params: dict, bc: BenchConfig, host_batch: dict, steps: int) -> Workload:
    """generate.greedy with the KV cache, `steps` tokens per row: src (B, S) -> tokens (B, steps).
    eos_id is NEVER_EOS, so every call runs all `steps` steps."""
    cfg = bc.model_config()
    src = backend.asarray(host_batch["src"])
    return Workload(
        measure="decode",
        call=lambda: greedy(params, src, cfg, bos_id=BOS_ID, eos_id=NEVER_EOS, max_steps=steps),
        flops=flops.greedy_decode_flops(cfg, bc.batch, bc.src_len, steps),
        tokens=bc.batch * steps,
        details={"decode_steps": steps},
    )


def dropout_sites(bc: BenchConfig) -> list[tuple[int, int, int]]:
    """The shape of every dropout of the model's training step: the two embeddings, two sub-layers
    per encoder layer, three per decoder layer (the paper's residual dropout)."""
    src, tgt = (bc.batch, bc.src_len, bc.d_model), (bc.batch, bc.tgt_len, bc.d_model)
    return [src, tgt] + [src] * (2 * bc.n_layers) + [tgt] * (3 * bc.n_layers)


def dropout_workload(backend: Backend, bc: BenchConfig) -> Workload:
    """All the dropout work of one training step, alone: at every site, the forward (draw the mask,
    apply it) and the backward (apply it to the gradient), jitted as one function on JAX. Its
    median over the train step's median is dropout's share of the step."""
    cfg = bc.model_config()
    shapes = dropout_sites(bc)
    xs = [backend.xp.ones(shape, dtype=backend.xp.float32) for shape in shapes]

    def all_dropouts(xs, key):
        keys = dropout.split_keys(key, len(xs))
        outs = []
        for x, k in zip(xs, keys):
            y, scaled_mask = dropout.fwd(x, cfg.drop_rate, train=True, key=k)
            outs.append((y, dropout.bwd(scaled_mask, x)))  # x stands in for the incoming gradient
        return outs

    run = backend.jit(all_dropouts) if backend.name == "jax" else all_dropouts
    key = backend.random.key(1)
    return Workload(
        measure="dropout",
        call=lambda: run(xs, key),
        flops=0,
        tokens=bc.batch * bc.tgt_len,
        details={"dropout_sites": len(shapes), "drop_rate": cfg.drop_rate},
    )


def _compiled_stats(compiled) -> dict:
    """XLA's FLOP count and memory plan of a compiled step (None where unavailable)."""
    stats: dict = {"xla_flops": None, "xla_memory_bytes": None}
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        stats["xla_flops"] = float(cost["flops"])
    except Exception:  # noqa: BLE001 - optional diagnostics
        pass
    try:
        mem = compiled.memory_analysis()
        stats["xla_memory_bytes"] = int(
            mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
        )
    except Exception:  # noqa: BLE001
        pass
    return stats
