"""Check that the PyTorch peer computes what our model computes, config by config:

    uv run --group peers python -m benchmarks.peers.torch_check [--configs tiny base]

With our initial parameters copied in and dropout off (drop_rate 0: the masks are the one thing
the two cannot share), it compares on the benchmark batch: the eval logits; the loss and every
parameter's gradient (our hand-written VJPs on NumPy against torch.autograd); the parameters after
three steps of each side's optimizer fed the same gradients (clipping, Adam, our learning-rate
schedule); and the tokens
of greedy decoding with the cache. It also counts parameters. Prints one line per check and exits
1 if any is off. PyTorch is used here, never in the library or its tests.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import backends
import functional_transformer as ft
from functional_transformer import generate, gradients, optim
from functional_transformer import train as ft_train

from ..configs import CONFIGS, BenchConfig
from ..workloads import BOS_ID, NEVER_EOS, random_batch
from . import torch_peer

# A different model (a missing dropout switch, a transposed weight, another scale) is off by O(1).
# PyTorch's float32 gradients lie up to ~6e-4 (per leaf, small config) from a float64 run of our
# model, where ours lie within ~1e-6 of it: hence the gradients' 1e-3. The parameters move by about
# the learning rate early in warmup (1e-5, 2e-5), and a float32 parameter near 1 (a layer norm's
# scale) rounds to 1.2e-7, so their change is compared to 1e-3 too.
TOLERANCES = {"logits": 1e-4, "loss": 1e-5, "grads": 1e-3, "updates": 1e-3}


def torch_tree(model: torch_peer.TorchTransformer, params_like: dict, tensor_of) -> dict:
    """A tree shaped like our params whose leaves come from the peer: `tensor_of(torch tensor)`
    (e.g. the parameter itself or its .grad) mapped back to our layout."""

    def linear(module, w, b):
        return {w: tensor_of(module.weight).T, b: tensor_of(module.bias)}

    def attention(module):
        d = module.embed_dim
        w_in, b_in = tensor_of(module.in_proj_weight), tensor_of(module.in_proj_bias)
        out = {}
        for i, name in enumerate("qkv"):
            out[f"w_{name}"], out[f"b_{name}"] = w_in[i * d : (i + 1) * d].T, b_in[i * d : (i + 1) * d]
        return out | linear(module.out_proj, "w_o", "b_o")

    def layer_norm(module):
        return {"scale": tensor_of(module.weight), "bias": tensor_of(module.bias)}

    def ffn(layer):
        return linear(layer.linear1, "w_1", "b_1") | linear(layer.linear2, "w_2", "b_2")

    tree = {
        "src_embed": {"tokens": tensor_of(model.src_embed.weight)},
        "tgt_embed": {"tokens": tensor_of(model.tgt_embed.weight)},
        "out_proj": linear(model.out_proj, "w", "b"),
        "encoder": {},
        "decoder": {},
    }
    for i, layer in enumerate(model.transformer.encoder.layers):
        tree["encoder"][f"layer_{i}"] = {
            "self_attn": attention(layer.self_attn),
            "ln1": layer_norm(layer.norm1),
            "ffn": ffn(layer),
            "ln2": layer_norm(layer.norm2),
        }
    for i, layer in enumerate(model.transformer.decoder.layers):
        tree["decoder"][f"layer_{i}"] = {
            "self_attn": attention(layer.self_attn),
            "ln1": layer_norm(layer.norm1),
            "cross_attn": attention(layer.multihead_attn),
            "ln2": layer_norm(layer.norm2),
            "ffn": ffn(layer),
            "ln3": layer_norm(layer.norm3),
        }
    assert set(tree) == set(params_like)
    return tree


def relative_l2_error(ours: dict, theirs: dict, skip: tuple[str, ...] = ()) -> float:
    """The worst leaf's ||a - b|| / ||a|| (leaves matched by their dotted paths), leaving out the
    paths ending with one of `skip`. Per leaf, not per element: some gradients nearly cancel (the
    key weights': softmax ignores a shift common to every key), so single elements are mostly the
    rounding noise of float32 sums taken in different orders."""
    worst = 0.0
    for (path, a), (other_path, b) in zip(backends.tree_items(ours), backends.tree_items(theirs)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert path == other_path and a.shape == b.shape, (path, other_path, a.shape, b.shape)
        if path.endswith(skip):
            continue
        worst = max(worst, float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)))
    return worst


def check_config(bc: BenchConfig) -> list[tuple[str, float, float]]:
    """-> [(check, error, tolerance)] for one config, with dropout off."""
    numpy_backend = backends.get_backend("numpy")
    cfg = bc.model_config(drop_rate=0.0)
    host_batch = random_batch(bc)
    params = ft.init(numpy_backend.random.key(0), cfg)
    model = torch_peer.load_params(torch_peer.TorchTransformer(cfg), numpy_backend.tree_to_numpy(params))
    batch = torch_peer.host_tensors(host_batch)
    results = [
        (
            "parameter count",
            abs(torch_peer.n_params(model) - sum(leaf.size for leaf in numpy_backend.tree_leaves(params))),
            0,
        )
    ]

    with torch.no_grad():
        torch_logits = model.eval()(batch["src"], batch["tgt_in"]).numpy()
    our_logits = ft.apply(params, host_batch["src"], host_batch["tgt_in"], cfg)
    results.append(("eval logits, max |diff|", float(np.max(np.abs(torch_logits - our_logits))), TOLERANCES["logits"]))

    tcfg = ft_train.TrainConfig(batch_size=bc.batch)
    grads, metrics = gradients.grad_vjp(params, host_batch, cfg, False, None, tcfg.label_smoothing)
    step = torch_peer.TrainStep(model, bc, batch)
    model.train()
    logits = model(batch["src"], batch["tgt_in"])
    loss = step.loss_fn(logits.reshape(-1, cfg.tgt_vocab_size), batch["tgt_out"].reshape(-1))
    model.zero_grad()
    loss.backward()
    results.append(("loss, |diff|", abs(loss.item() - float(metrics["loss"])), TOLERANCES["loss"]))
    torch_grads = torch_tree(model, params, lambda t: t.grad.numpy())
    # The key bias's gradient is zero in exact arithmetic (the same shift of every key's score):
    # both sides hold rounding noise there.
    results.append(
        (
            "gradients (key biases left out), worst leaf's relative L2 error",
            relative_l2_error(grads, torch_grads, skip=("b_k",)),
            TOLERANCES["grads"],
        )
    )

    # The optimizers alone, fed the same gradients (ours) three times: clipping, Adam, the schedule
    # (whose first learning rate is 0: warmup from 0).
    optimizer = ft_train.make_optimizer(tcfg, cfg)
    opt_state, ours_params = optimizer.init(params), params
    model = torch_peer.load_params(torch_peer.TorchTransformer(cfg), numpy_backend.tree_to_numpy(params))
    same_grads = torch_peer.load_params(torch_peer.TorchTransformer(cfg), numpy_backend.tree_to_numpy(grads))
    step = torch_peer.TrainStep(model, bc, batch)
    for _ in range(3):
        updates, opt_state = optimizer.update(grads, opt_state, ours_params)
        ours_params = optim.apply_updates(ours_params, updates)
        for p, g in zip(model.parameters(), same_grads.parameters()):
            p.grad = g.detach().clone()
        step.update()
    ours_moved = numpy_backend.tree_map(lambda new, old: new - old, ours_params, params)
    theirs_moved = numpy_backend.tree_map(
        lambda new, old: new - old, torch_tree(model, params, lambda t: t.detach().numpy()), params
    )
    results.append(
        (
            "parameter change after 3 optimizer steps, worst leaf's relative L2 error",
            relative_l2_error(ours_moved, theirs_moved),
            TOLERANCES["updates"],
        )
    )

    steps = bc.tgt_len
    model = torch_peer.load_params(torch_peer.TorchTransformer(cfg), numpy_backend.tree_to_numpy(params))
    torch_tokens = torch_peer.greedy(model, batch["src"], bos_id=BOS_ID, eos_id=NEVER_EOS, max_steps=steps).numpy()
    our_tokens = generate.greedy(params, host_batch["src"], cfg, bos_id=BOS_ID, eos_id=NEVER_EOS, max_steps=steps)
    results.append(("greedy tokens, fraction that differ", float(np.mean(torch_tokens != our_tokens)), 0.0))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.torch_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args(argv)
    torch_peer.runtime()
    failed = False
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.configs:
        for check, error, tolerance in check_config(CONFIGS[name]):
            ok = error <= tolerance
            failed |= not ok
            print(f"{name:5s} {check}: {error:.3g} (tolerance {tolerance:g}) {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
