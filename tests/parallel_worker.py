"""Run by tests/test_parallel.py in a subprocess whose XLA_FLAGS simulate 8 CPU devices (the flag must
be set before JAX starts, so not in the pytest process). Trains the same tiny run at several
device counts and writes each run's losses and final params, and how its params are laid out, to
an .npz file: `python tests/parallel_worker.py OUT.npz RUNS_JSON [CHECKPOINT_DIR]`, where RUNS_JSON
is a list of [devices, shard_params, grad_method] or [devices, shard_params, grad_method, max_tokens]."""

import json
import sys

import jax
import numpy as np

import functional_transformer as ft

MODEL = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1, "drop_rate": 0.1}
DATA = ft.task_data("reverse", n_train=256, n_valid=8, max_len=6)
STEPS = 20


def flat(tree, prefix):
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def main(out, runs, checkpoint_dir=None):
    arrays = {}
    for devices, shard_params, grad_method, *max_tokens in runs:
        label = f"{devices}-{'fsdp' if shard_params else 'dp'}-{grad_method}" + "".join(f"-tok{n}" for n in max_tokens)
        batching = {"max_tokens": max_tokens[0]} if max_tokens else {"batch_size": 16}
        to_disk = checkpoint_dir if (checkpoint_dir and devices == 8 and shard_params) else None
        result = ft.fit(
            MODEL,
            {
                "steps": STEPS,
                **batching,
                "log_every": 1,
                "eval_every": STEPS,
                "save_every": STEPS,
                "grad_method": grad_method,
            },
            DATA,
            out_dir=to_disk,
            overwrite=True,
            progress=False,
            verbose=False,
            devices=devices,
            shard_params=shard_params,
        )
        checkpoint_dir = None if to_disk else checkpoint_dir
        arrays[label + "/loss"] = np.asarray([r["loss"] for r in result.history if r["split"] == "train"])
        arrays[label + "/exact_match"] = np.asarray(result.history[-1]["exact_match"])
        # The fraction of each matrix one device holds, and how many devices the array spans.
        fractions = [
            x.addressable_shards[0].data.size / x.size for x in jax.tree_util.tree_leaves(result.params) if x.ndim >= 2
        ]
        arrays[label + "/matrix_fraction"] = np.asarray(fractions)
        arrays[label + "/n_devices"] = np.asarray(len(jax.tree_util.tree_leaves(result.params)[0].sharding.device_set))
        arrays.update(flat(result.params, label + "/params"))
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
