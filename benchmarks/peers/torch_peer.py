"""The benchmarked model in PyTorch eager: `nn.Transformer`, loaded with our own initial parameters.

The model of benchmarks.configs (float32, post-norm, untied, ReLU, dropout 0.1) as a PyTorch user
writes it: `nn.Transformer(norm_first=False)` whose encoder and decoder have no final LayerNorm
(ours has none: functional_transformer/model.py adds "final_ln" only with pre-norm), between
`nn.Embedding`s scaled by sqrt(d_model) plus the sinusoidal table and an untied `nn.Linear` output
projection. nn.Transformer's layers carry two dropouts the paper's model (and ours) does not have,
on the attention weights and inside the feed-forward network; both are switched off, leaving the
residual and embedding dropout of paper §5.4. The parameters are ours (`ft.init(key(0))`) copied in,
so the two models compute the same function: `python -m benchmarks.peers.torch_check` checks the
logits, the loss and its gradients, the optimizer's update and greedy decoding against ours.

The three measures mirror benchmarks.workloads:
- forward: eval mode under `torch.no_grad()`, src (B, S), tgt_in (B, T) -> logits (B, T, V).
- train: one full step of train.make_train_step with the benchmark's TrainConfig: forward with
  dropout, cross-entropy with label smoothing 0.1 over the non-pad targets, backward,
  global-norm clipping to 1.0, Adam (b1 0.9, b2 0.98, eps 1e-9) at our schedule's learning rate,
  plus the same metrics (token accuracy, the gradient norm). PyTorch's default Adam (no fused or
  foreach flag set).
- decode: greedy decoding with a key/value cache, written as eager PyTorch over the same modules'
  weights (nn.Transformer has no cache): the encoder once, each decoder layer's cross-attention
  keys/values once, then one token per step whose self-attention runs over the keys/values
  written so far (torch's scaled_dot_product_attention, the kernel nn.MultiheadAttention uses),
  pad never chosen, every row forced to its full length (eos never produced), stopping early
  only when every row has ended, as generate.greedy does.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import backends
import functional_transformer as ft
from functional_transformer import train as ft_train
from functional_transformer.layers.positional import sinusoidal

from .. import flops
from ..configs import BenchConfig
from ..workloads import BOS_ID, NEVER_EOS, Workload
from . import PeerRuntime


def runtime() -> PeerRuntime:
    """PyTorch on the CPU with one thread per usable core (like OpenBLAS and XLA's defaults)."""
    torch.set_num_threads(usable_cores())
    return PeerRuntime(name="torch", asarray=torch.from_numpy)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def info() -> dict:
    """What the JSON records about the peer: versions, threads, the build."""
    return {
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "usable_cores": usable_cores(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available(),
        "cuda_available": torch.cuda.is_available(),
    }


class TorchTransformer(nn.Module):
    """Our encoder-decoder Transformer as PyTorch modules; forward(src (B, S), tgt_in (B, T)) -> logits (B, T, V)."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.norm_first or cfg.tie_embeddings or cfg.positional != "sinusoidal" or cfg.dtype != "float32":
            raise ValueError(
                "the PyTorch peer implements the benchmarked model only: float32, post-norm, "
                "untied, sinusoidal positions"
            )
        self.cfg = cfg
        layer_args = dict(
            d_model=cfg.d_model,
            nhead=cfg.n_heads,
            dim_feedforward=cfg.d_ff,
            dropout=cfg.drop_rate,
            activation=cfg.activation,
            batch_first=True,
            norm_first=False,
        )
        encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_args), cfg.n_encoder_layers, norm=None)
        decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_args), cfg.n_decoder_layers, norm=None)
        self.transformer = nn.Transformer(
            d_model=cfg.d_model, nhead=cfg.n_heads, custom_encoder=encoder, custom_decoder=decoder, batch_first=True
        )
        for layer in [*encoder.layers, *decoder.layers]:
            layer.dropout = nn.Identity()  # the dropout inside the feed-forward network
            for attention in (layer.self_attn, getattr(layer, "multihead_attn", None)):
                if attention is not None:
                    attention.dropout = 0.0  # the dropout on the attention weights
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.d_model)
        self.embed_dropout = nn.Dropout(cfg.drop_rate)
        self.out_proj = nn.Linear(cfg.d_model, cfg.tgt_vocab_size)
        table = sinusoidal(cfg.max_len, cfg.d_model, np.float32, np)
        self.register_buffer("positions", torch.from_numpy(np.ascontiguousarray(table)), persistent=False)

    def embed(self, embedding: nn.Embedding, ids, offset: int = 0):
        """ids (B, T) at positions offset.. -> (B, T, D): scaled token embedding plus positions, then dropout."""
        x = embedding(ids) * math.sqrt(self.cfg.d_model) + self.positions[offset : offset + ids.shape[1]]
        return self.embed_dropout(x)

    def encode(self, src):
        """src (B, S) -> memory (B, S, D)."""
        return self.transformer.encoder(self.embed(self.src_embed, src), src_key_padding_mask=src == self.cfg.pad_id)

    def forward(self, src, tgt_in):
        memory = self.encode(src)
        length = tgt_in.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)  # True: may not attend
        h = self.transformer.decoder(
            self.embed(self.tgt_embed, tgt_in),
            memory,
            tgt_mask=causal,
            tgt_key_padding_mask=tgt_in == self.cfg.pad_id,
            memory_key_padding_mask=src == self.cfg.pad_id,
            tgt_is_causal=True,
        )
        return self.out_proj(h)


def _linear(module: nn.Linear, params: dict, w: str, b: str) -> None:
    module.weight.copy_(torch.from_numpy(np.ascontiguousarray(params[w].T)))
    module.bias.copy_(torch.from_numpy(params[b]))


def _attention(module: nn.MultiheadAttention, params: dict) -> None:
    module.in_proj_weight.copy_(torch.from_numpy(np.concatenate([params[f"w_{p}"].T for p in "qkv"])))
    module.in_proj_bias.copy_(torch.from_numpy(np.concatenate([params[f"b_{p}"] for p in "qkv"])))
    _linear(module.out_proj, params, "w_o", "b_o")


def _layer_norm(module: nn.LayerNorm, params: dict) -> None:
    module.weight.copy_(torch.from_numpy(params["scale"]))
    module.bias.copy_(torch.from_numpy(params["bias"]))


def _feed_forward(layer, params: dict) -> None:
    _linear(layer.linear1, params, "w_1", "b_1")
    _linear(layer.linear2, params, "w_2", "b_2")


@torch.no_grad()
def load_params(model: TorchTransformer, params: dict) -> TorchTransformer:
    """Copy our parameter tree (NumPy arrays, model.py's layout) into `model`; -> model."""
    model.src_embed.weight.copy_(torch.from_numpy(params["src_embed"]["tokens"]))
    model.tgt_embed.weight.copy_(torch.from_numpy(params["tgt_embed"]["tokens"]))
    for i, layer in enumerate(model.transformer.encoder.layers):
        p = params["encoder"][f"layer_{i}"]
        _attention(layer.self_attn, p["self_attn"])
        _layer_norm(layer.norm1, p["ln1"])
        _feed_forward(layer, p["ffn"])
        _layer_norm(layer.norm2, p["ln2"])
    for i, layer in enumerate(model.transformer.decoder.layers):
        p = params["decoder"][f"layer_{i}"]
        _attention(layer.self_attn, p["self_attn"])
        _layer_norm(layer.norm1, p["ln1"])
        _attention(layer.multihead_attn, p["cross_attn"])
        _layer_norm(layer.norm2, p["ln2"])
        _feed_forward(layer, p["ffn"])
        _layer_norm(layer.norm3, p["ln3"])
    _linear(model.out_proj, params["out_proj"], "w", "b")
    return model


def our_params(bc: BenchConfig) -> dict:
    """ft.init(key(0)) of the config on NumPy: the same numbers every backend of ours starts from."""
    numpy_backend = backends.get_backend("numpy")
    return numpy_backend.tree_to_numpy(ft.init(numpy_backend.random.key(0), bc.model_config()))


def build(bc: BenchConfig, drop_rate: float = 0.1) -> TorchTransformer:
    """The peer model of `bc` with our initial parameters."""
    return load_params(TorchTransformer(bc.model_config(drop_rate)), our_params(bc))


def n_params(model: nn.Module) -> int:
    """Trainable parameters (the positions are a buffer, as our sinusoidal table is no parameter)."""
    return sum(p.numel() for p in model.parameters())


def host_tensors(host_batch: dict) -> dict:
    """The benchmark batch as int64 tensors (PyTorch's index type)."""
    return {name: torch.from_numpy(ids.astype(np.int64)) for name, ids in host_batch.items()}


class TrainStep:
    """train.make_train_step's step in PyTorch: call() -> (loss, metrics), updating the model in place."""

    def __init__(self, model: TorchTransformer, bc: BenchConfig, batch: dict):
        cfg = model.cfg
        self.tcfg = ft_train.TrainConfig(batch_size=bc.batch)
        if self.tcfg.optimizer != "adam":
            raise ValueError(f"the PyTorch peer's step is Adam's, not {self.tcfg.optimizer}")
        self.model, self.batch, self.vocab = model, batch, cfg.tgt_vocab_size
        self.schedule = ft_train.make_schedule(self.tcfg, cfg)
        self.loss_fn = nn.CrossEntropyLoss(ignore_index=cfg.pad_id, label_smoothing=self.tcfg.label_smoothing)
        # optim.adam's defaults are the paper's (b1 0.9, b2 0.98, eps 1e-9); lr is set every step.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)
        self.count = 0
        self.pad_id = cfg.pad_id

    def __call__(self):
        model, batch = self.model, self.batch
        model.train()
        logits = model(batch["src"], batch["tgt_in"])
        loss = self.loss_fn(logits.reshape(-1, self.vocab), batch["tgt_out"].reshape(-1))
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = self.update()
        with torch.no_grad():
            valid = batch["tgt_out"] != self.pad_id
            accuracy = ((logits.argmax(-1) == batch["tgt_out"]) & valid).sum() / valid.sum().clamp(min=1)
        return loss, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm}

    def update(self):
        """The optimizer's part of the step, from the parameters' .grad: clipping, the learning
        rate of our schedule at this step, Adam. -> the gradient norm before clipping."""
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.clip_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.schedule(np.asarray(self.count, dtype=np.float64)))
        self.optimizer.step()
        self.count += 1
        return grad_norm


def _heads(x, n_heads: int):
    """(B, T, D) -> (B, H, T, Dh)."""
    batch, length, d_model = x.shape
    return x.view(batch, length, n_heads, d_model // n_heads).transpose(1, 2)


def _merge(x):
    """(B, H, T, Dh) -> (B, T, D)."""
    batch, n_heads, length, d_head = x.shape
    return x.transpose(1, 2).reshape(batch, length, n_heads * d_head)


def _cross_keys_values(attention: nn.MultiheadAttention, memory, n_heads: int):
    d = memory.shape[-1]
    k, v = F.linear(memory, attention.in_proj_weight[d:], attention.in_proj_bias[d:]).chunk(2, dim=-1)
    return _heads(k, n_heads), _heads(v, n_heads)


@torch.no_grad()
def greedy(model: TorchTransformer, src, *, bos_id: int, eos_id: int, max_steps: int):
    """src (B, S) -> tokens (B, max_steps) as generate.greedy: eval mode, a key/value cache, the
    argmax token (never pad) each step, pad after end-of-sequence, stopping once every row has ended."""
    model.eval()
    cfg = model.cfg
    n_heads, d, pad = cfg.n_heads, cfg.d_model, cfg.pad_id
    batch = src.shape[0]
    memory = model.encode(src)
    cross_mask = (src != pad).view(batch, 1, 1, -1)  # True: may attend
    layers = list(model.transformer.decoder.layers)
    cross = [_cross_keys_values(layer.multihead_attn, memory, n_heads) for layer in layers]
    shape = (batch, n_heads, max_steps, d // n_heads)
    self_cache = [(memory.new_empty(shape), memory.new_empty(shape)) for _ in layers]
    tokens = torch.full((batch,), bos_id, dtype=torch.int64)
    finished = torch.zeros(batch, dtype=torch.bool)
    output = torch.full((batch, max_steps), pad, dtype=torch.int64)
    for position in range(max_steps):
        x = model.embed(model.tgt_embed, tokens.view(batch, 1), offset=position)  # (B, 1, D)
        for layer, (cache_k, cache_v), (cross_k, cross_v) in zip(layers, self_cache, cross):
            attention = layer.self_attn
            q, k, v = (
                _heads(t, n_heads)
                for t in F.linear(x, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
            )
            cache_k[:, :, position] = k[:, :, 0]
            cache_v[:, :, position] = v[:, :, 0]
            a = F.scaled_dot_product_attention(q, cache_k[:, :, : position + 1], cache_v[:, :, : position + 1])
            x = layer.norm1(x + attention.out_proj(_merge(a)))
            cross_attention = layer.multihead_attn
            q = _heads(F.linear(x, cross_attention.in_proj_weight[:d], cross_attention.in_proj_bias[:d]), n_heads)
            a = F.scaled_dot_product_attention(q, cross_k, cross_v, attn_mask=cross_mask)
            x = layer.norm2(x + cross_attention.out_proj(_merge(a)))
            x = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
        logits = model.out_proj(x[:, 0])
        logits[:, pad] = -math.inf
        tokens = torch.where(finished, pad, logits.argmax(-1))
        finished |= tokens == eos_id
        output[:, position] = tokens
        if bool(finished.all()):
            break
    return output


def workloads(bc: BenchConfig, measures: list[str], host_batch: dict, decode_steps: int):
    """The peer's Workloads for `measures` ("forward", "train", "decode"), each on a fresh copy of
    our initial parameters; FLOPs and tokens as ours (the same model and calls)."""
    cfg = bc.model_config()
    batch = host_tensors(host_batch)
    for measure in measures:
        model = build(bc)
        if measure == "forward":
            model.eval()

            def call(model=model):
                with torch.no_grad():
                    return model(batch["src"], batch["tgt_in"])

            yield Workload(
                "forward", call, flops.forward_flops(cfg, bc.batch, bc.src_len, bc.tgt_len), bc.batch * bc.tgt_len
            )
        elif measure == "train":
            yield Workload(
                "train",
                TrainStep(model, bc, batch),
                flops.train_flops(cfg, bc.batch, bc.src_len, bc.tgt_len),
                bc.batch * bc.tgt_len,
                details={"grad_method": "torch.autograd"},
            )
        elif measure == "decode":

            def call(model=model):
                return greedy(model, batch["src"], bos_id=BOS_ID, eos_id=NEVER_EOS, max_steps=decode_steps)

            yield Workload(
                "decode",
                call,
                flops.greedy_decode_flops(cfg, bc.batch, bc.src_len, decode_steps),
                bc.batch * decode_steps,
                details={"decode_steps": decode_steps},
            )


def params_summary(bc: BenchConfig) -> dict:
    """The peer's parameter count next to ours, and the largest |logit difference| of an eval
    forward on the benchmark batch against ours on NumPy: the evidence that it is the same model."""
    from ..workloads import random_batch

    model = build(bc).eval()
    host_batch = random_batch(bc)
    batch = host_tensors(host_batch)
    with torch.no_grad():
        torch_logits = model(batch["src"], batch["tgt_in"]).numpy()
    numpy_backend = backends.get_backend("numpy")
    params = ft.init(numpy_backend.random.key(0), bc.model_config())
    our_logits = ft.apply(params, host_batch["src"], host_batch["tgt_in"], bc.model_config())
    ours = sum(leaf.size for leaf in numpy_backend.tree_leaves(params))
    return {
        "n_params": n_params(model),
        "our_n_params": int(ours),
        "max_abs_logit_diff_vs_ours": float(np.max(np.abs(torch_logits - our_logits))),
    }
