"""Hugging Face GPT-2 and Llama checkpoints in and out, with NumPy and the project's own safetensors
reader and writer (checkpoint_format.py): `transformers` and `torch` are never needed.

    model = from_huggingface("path/to/gpt2", dtype="float64")   # a folder save_pretrained wrote
    logits = model.logits(ids)                                  # (B, T) ids -> (B, T, V), FT_BACKEND
    to_huggingface(model, "path/to/out")                        # a folder transformers loads

A folder holds config.json, the weights (model.safetensors, or shards model-0000x-of-0000y.safetensors
named by model.safetensors.index.json) and, where present, tokenizer.json. Two architectures are
read: GPT2LMHeadModel (model_type "gpt2") and LlamaForCausalLM ("llama"); each becomes a
DecoderConfig (models/decoder_only.py) and its parameter tree. Anything else, or a setting this
library does not implement (an exact-erf GELU, rope_scaling, a head_dim other than
hidden_size / num_attention_heads, ...), is a HuggingFaceError naming the field.

Weight layouts: GPT-2's Conv1D stores (in, out), as this library does; torch.nn.Linear (Llama, and
GPT-2's lm_head) stores (out, in), transposed here. GPT-2's c_attn holds q, k, v side by side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from backends import backend_of, tree_leaves, tree_map

from .checkpoint_format import CheckpointError, UncheckedCheckpointWarning, load_file, save_file
from .errors import UserInputError
from .models import decoder_only
from .models.decoder_only import DecoderConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_NAME = "tokenizer.json"
ARCHITECTURES = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}
# GPT-2 activation_function -> this library's activation ("gelu" is the tanh form, GPT-2's gelu_new).
GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
LLAMA_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu", "gelu_new": "gelu"}
# Buffers some GPT-2 files carry that are no weights (the causal mask).
_GPT2_BUFFERS = re.compile(r".*\.attn\.(bias|masked_bias)$")


class HuggingFaceError(UserInputError):
    """A Hugging Face folder this library cannot read or write: the message names the file or field."""


# --- reading a folder ------------------------------------------------------------------------------


def read_config(folder: str | os.PathLike) -> dict:
    """config.json of a Hugging Face model folder, as a dict."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HuggingFaceError(f"{folder} is not a folder; give the folder that save_pretrained wrote")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise HuggingFaceError(f"{folder} has no {CONFIG_NAME}; it is not a Hugging Face model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HuggingFaceError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise HuggingFaceError(f"{path} must hold a JSON object")
    return config


def _load_safetensors(path: Path) -> dict:
    with warnings.catch_warnings():  # Hugging Face files never carry this library's checksums
        warnings.simplefilter("ignore", UncheckedCheckpointWarning)
        try:
            return load_file(path)[0]
        except CheckpointError as err:
            raise HuggingFaceError(str(err)) from None


def read_tensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of the folder's weights, by name: model.safetensors, or the shards its index names."""
    folder = Path(folder)
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return _load_safetensors(single)
    if not index.is_file():
        raise HuggingFaceError(
            f"{folder} has neither {WEIGHTS_NAME} nor {INDEX_NAME}; only safetensors weights are "
            "read (save with save_pretrained(..., safe_serialization=True))"
        )
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise HuggingFaceError(
            f"{index} is not a safetensors index (a JSON object with a 'weight_map'): {err}"
        ) from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise HuggingFaceError(f"{index}: 'weight_map' must map tensor names to file names")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if Path(shard).name != shard or not path.is_file():
            raise HuggingFaceError(f"{index} names the shard {shard!r}, which {folder} does not hold")
        loaded = _load_safetensors(path)
        tensors.update(loaded)
        named_here = {name for name, file in weight_map.items() if file == shard}
        if named_here - set(loaded):
            raise HuggingFaceError(
                f"{path} lacks the tensors {sorted(named_here - set(loaded))[:3]} that {index} places in it"
            )
    return tensors


def read_tokenizer(folder: str | os.PathLike, config: dict, *, required: bool = False):
    """The folder's tokenizer.json as a HuggingFaceTokenizer, or None without one. It needs the
    tokenizers library (the [text] extra): where that is missing, None, or with `required` the
    TextExtraMissing error saying how to install it."""
    path = Path(folder) / TOKENIZER_NAME
    if not path.is_file():
        return None
    from .data.bpe import TextExtraMissing, import_tokenizers
    from .data.hf_tokenizer import HuggingFaceTokenizer

    try:
        import_tokenizers()
    except TextExtraMissing as err:
        if required:
            raise TextExtraMissing(f"{path}: {err}") from None
        return None

    def special(name):
        value = config.get(name)
        if isinstance(value, list):  # some configs list several eos ids: the first ends a text
            value = value[0] if value else None
        return value if isinstance(value, int) else None

    return HuggingFaceTokenizer(
        path.read_text(encoding="utf-8"), special("bos_token_id"), special("eos_token_id"), special("pad_token_id")
    )


# --- config.json <-> DecoderConfig -----------------------------------------------------------------


def architecture_of(config: dict) -> str:
    """ "gpt2" or "llama", from config.json's architectures (or model_type)."""
    names = config.get("architectures") or []
    if names:
        if len(names) != 1 or names[0] not in ARCHITECTURES:
            raise HuggingFaceError(
                f"config.json: architectures {names} is not supported; this library reads {sorted(ARCHITECTURES)}"
            )
        return ARCHITECTURES[names[0]]
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES.values():
        raise HuggingFaceError(
            f"config.json: model_type {model_type!r} is not supported; this library reads "
            f"{sorted(ARCHITECTURES.values())}"
        )
    return model_type


def _field(config: dict, name: str, default=None, *, required: bool = False) -> Any:  # a config.json value
    if name not in config or config[name] is None:
        if required:
            raise HuggingFaceError(f"config.json has no {name!r}")
        return default
    return config[name]


def _expect(config: dict, name: str, supported, default, why: str) -> None:
    value = _field(config, name, default)
    if value not in supported:
        raise HuggingFaceError(f"config.json: {name}={value!r} is not supported ({why})")


def _gpt2_config(config: dict, dtype: str) -> DecoderConfig:
    activation = _field(config, "activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise HuggingFaceError(
            f"config.json: activation_function={activation!r} is not supported; this library has "
            f"{sorted(GPT2_ACTIVATIONS)} (its GELU is the tanh form; 'gelu' is the exact erf one)"
        )
    _expect(config, "scale_attn_weights", (True,), True, "attention scores are always scaled by 1/sqrt(head size)")
    _expect(config, "scale_attn_by_inverse_layer_idx", (False,), False, "no per-layer attention scaling")
    _expect(config, "add_cross_attention", (False,), False, "a decoder-only model has no cross-attention")
    d_model = _field(config, "n_embd", required=True)
    return DecoderConfig(
        vocab_size=_field(config, "vocab_size", required=True),
        d_model=d_model,
        n_heads=_field(config, "n_head", required=True),
        d_ff=_field(config, "n_inner", 4 * d_model),
        n_layers=_field(config, "n_layer", required=True),
        max_len=_field(config, "n_positions", required=True),
        drop_rate=float(_field(config, "resid_pdrop", 0.1)),
        pad_id=None,
        norm_first=True,
        tie_embeddings=bool(_field(config, "tie_word_embeddings", True)),
        positional="learned",
        activation=GPT2_ACTIVATIONS[activation],
        dtype=dtype,
        norm="layer",
        norm_eps=float(_field(config, "layer_norm_epsilon", 1e-5)),
        bias=True,
        gated_ffn=False,
        scale_embeddings=False,
        head_bias=False,
    )


def _rope_base(config: dict) -> float:
    """rope_theta from config.json: transformers 5 writes it in rope_parameters, earlier versions beside
    rope_scaling. Only the plain rotation is implemented: any other rope type is an error."""
    parameters = _field(config, "rope_parameters", None)
    scaling = _field(config, "rope_scaling", None)
    for name, value in (("rope_parameters", parameters), ("rope_scaling", scaling)):
        if value is None:
            continue
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else value
        if kind != "default":
            raise HuggingFaceError(
                f"config.json: {name} of rope_type {kind!r} is not supported; this library "
                "implements the plain rotation only (rope_type 'default')"
            )
    if isinstance(parameters, dict) and "rope_theta" in parameters:
        return float(parameters["rope_theta"])
    return float(_field(config, "rope_theta", 10000.0))


def _llama_config(config: dict, dtype: str) -> DecoderConfig:
    activation = _field(config, "hidden_act", "silu")
    if activation not in LLAMA_ACTIVATIONS:
        raise HuggingFaceError(
            f"config.json: hidden_act={activation!r} is not supported; this library has {sorted(LLAMA_ACTIVATIONS)}"
        )
    d_model, n_heads = (
        _field(config, "hidden_size", required=True),
        _field(config, "num_attention_heads", required=True),
    )
    head_dim = _field(config, "head_dim", None)
    if head_dim is not None and head_dim * n_heads != d_model:
        raise HuggingFaceError(
            f"config.json: head_dim={head_dim} is not supported; this library's heads are "
            f"hidden_size / num_attention_heads = {d_model // n_heads} wide"
        )
    attention_bias, mlp_bias = bool(_field(config, "attention_bias", False)), bool(_field(config, "mlp_bias", False))
    if attention_bias != mlp_bias:
        raise HuggingFaceError(
            f"config.json: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not "
            "supported; this library's bias setting covers both"
        )
    return DecoderConfig(
        vocab_size=_field(config, "vocab_size", required=True),
        d_model=d_model,
        n_heads=n_heads,
        d_ff=_field(config, "intermediate_size", required=True),
        n_layers=_field(config, "num_hidden_layers", required=True),
        max_len=_field(config, "max_position_embeddings", required=True),
        drop_rate=float(_field(config, "attention_dropout", 0.0)),
        pad_id=None,
        norm_first=True,
        tie_embeddings=bool(_field(config, "tie_word_embeddings", False)),
        positional="rope",
        activation=LLAMA_ACTIVATIONS[activation],
        dtype=dtype,
        norm="rms",
        norm_eps=float(_field(config, "rms_norm_eps", 1e-6)),
        n_kv_heads=_field(config, "num_key_value_heads", n_heads),
        bias=attention_bias,
        gated_ffn=True,
        rope_base=_rope_base(config),
        scale_embeddings=False,
        head_bias=False,
    )


def decoder_config(config: dict, dtype: str = "float32") -> tuple[DecoderConfig, str]:
    """config.json (a dict) -> (DecoderConfig, architecture "gpt2" or "llama")."""
    architecture = architecture_of(config)
    try:
        cfg = (_gpt2_config if architecture == "gpt2" else _llama_config)(config, dtype)
    except (TypeError, ValueError) as err:
        if isinstance(err, HuggingFaceError):
            raise
        raise HuggingFaceError(f"config.json describes a model this library cannot build: {err}") from None
    return cfg, architecture


# --- weights <-> the parameter tree ----------------------------------------------------------------


class _Tensors:
    """The file's tensors, handed out by name (after `prefix`) with their shapes checked; `read` names
    those handed out, so that the caller can refuse tensors nothing read."""

    def __init__(self, tensors: dict, prefix: str, dtype):
        self.tensors, self.prefix, self.dtype = tensors, prefix, dtype
        self.read: set[str] = set()

    def __call__(self, name: str, shape: tuple, *, transpose: bool = False):
        full = self.prefix + name
        if full not in self.tensors:
            raise HuggingFaceError(f"the weights lack the tensor {full!r} that config.json implies")
        array = self.tensors[full]
        stored = shape[::-1] if transpose else shape
        if tuple(array.shape) != tuple(stored):
            raise HuggingFaceError(
                f"tensor {full!r} has shape {tuple(array.shape)}, but config.json implies {tuple(stored)}"
            )
        self.read.add(full)
        array = np.asarray(array, dtype=np.float64)  # bfloat16 and float16 files widen exactly
        return np.ascontiguousarray((array.T if transpose else array).astype(self.dtype))


def _gpt2_params(take: _Tensors, cfg: DecoderConfig) -> dict:
    d, d_ff, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    blocks = {}
    for i in range(cfg.n_layers):
        h = f"h.{i}."
        w_qkv, b_qkv = take(h + "attn.c_attn.weight", (d, 3 * d)), take(h + "attn.c_attn.bias", (3 * d,))
        attention = {}
        for j, name in enumerate("qkv"):
            attention[f"w_{name}"] = np.ascontiguousarray(w_qkv[:, j * d : (j + 1) * d])
            attention[f"b_{name}"] = np.ascontiguousarray(b_qkv[j * d : (j + 1) * d])
        attention["w_o"], attention["b_o"] = take(h + "attn.c_proj.weight", (d, d)), take(h + "attn.c_proj.bias", (d,))
        blocks[f"layer_{i}"] = {
            "self_attn": attention,
            "ln1": {"scale": take(h + "ln_1.weight", (d,)), "bias": take(h + "ln_1.bias", (d,))},
            "ffn": {
                "w_1": take(h + "mlp.c_fc.weight", (d, d_ff)),
                "b_1": take(h + "mlp.c_fc.bias", (d_ff,)),
                "w_2": take(h + "mlp.c_proj.weight", (d_ff, d)),
                "b_2": take(h + "mlp.c_proj.bias", (d,)),
            },
            "ln2": {"scale": take(h + "ln_2.weight", (d,)), "bias": take(h + "ln_2.bias", (d,))},
        }
    blocks["final_ln"] = {"scale": take("ln_f.weight", (d,)), "bias": take("ln_f.bias", (d,))}
    embed = {"tokens": take("wte.weight", (v, d)), "positions": take("wpe.weight", (cfg.max_len, d))}
    return {"embed": embed, "blocks": blocks}


def _llama_params(take: _Tensors, cfg: DecoderConfig) -> dict:
    d, d_ff = cfg.d_model, cfg.d_ff
    n_kv_heads = cfg.n_heads if cfg.n_kv_heads is None else cfg.n_kv_heads  # None: one per query head
    d_kv = n_kv_heads * (d // cfg.n_heads)
    blocks = {}
    for i in range(cfg.n_layers):
        h = f"layers.{i}."
        widths = {"q": d, "k": d_kv, "v": d_kv}
        attention = {}
        for name in "qkvo":
            shape = (d, widths.get(name, d))
            attention[f"w_{name}"] = take(h + f"self_attn.{name}_proj.weight", shape, transpose=True)
            if cfg.bias:
                attention[f"b_{name}"] = take(h + f"self_attn.{name}_proj.bias", (shape[1],))
        ffn = {}
        for name, shape in (("gate", (d, d_ff)), ("up", (d, d_ff)), ("down", (d_ff, d))):
            ffn[f"w_{name}"] = take(h + f"mlp.{name}_proj.weight", shape, transpose=True)
            if cfg.bias:
                ffn[f"b_{name}"] = take(h + f"mlp.{name}_proj.bias", (shape[1],))
        blocks[f"layer_{i}"] = {
            "self_attn": attention,
            "ln1": {"scale": take(h + "input_layernorm.weight", (d,))},
            "ffn": ffn,
            "ln2": {"scale": take(h + "post_attention_layernorm.weight", (d,))},
        }
    blocks["final_ln"] = {"scale": take("norm.weight", (d,))}
    return {"embed": {"tokens": take("embed_tokens.weight", (cfg.vocab_size, d))}, "blocks": blocks}


def _body_prefix(tensors: dict, architecture: str) -> str:
    body = "transformer." if architecture == "gpt2" else "model."
    embedding = "wte.weight" if architecture == "gpt2" else "embed_tokens.weight"
    if body + embedding in tensors:
        return body
    if embedding in tensors:  # the original GPT-2 files name the body's tensors without a prefix
        return ""
    raise HuggingFaceError(
        f"the weights have no token embedding ({body + embedding!r}); they are not a {architecture} model's"
    )


def params_from_tensors(tensors: dict, cfg: DecoderConfig, architecture: str) -> dict:
    """The parameter tree (NumPy arrays of cfg.dtype) of a DecoderOnly from a Hugging Face state dict."""
    dtype = np.dtype(cfg.dtype)
    prefix = _body_prefix(tensors, architecture)
    take = _Tensors(tensors, prefix, dtype)
    params = (_gpt2_params if architecture == "gpt2" else _llama_params)(take, cfg)
    head = _Tensors(tensors, "", dtype)
    if cfg.tie_embeddings:
        if "lm_head.weight" in tensors:  # some files store the tied matrix twice: it must be the same
            if not np.array_equal(head("lm_head.weight", (cfg.vocab_size, cfg.d_model)), params["embed"]["tokens"]):
                raise HuggingFaceError(
                    "config.json: tie_word_embeddings is true but lm_head.weight differs from the "
                    "token embedding; set tie_word_embeddings to false to read them apart"
                )
    else:
        params["head"] = {"w": head("lm_head.weight", (cfg.d_model, cfg.vocab_size), transpose=True)}
    leftover = sorted(set(tensors) - take.read - head.read - {n for n in tensors if _GPT2_BUFFERS.match(n)})
    if leftover:
        raise HuggingFaceError(
            f"the weights hold tensors that config.json does not account for, e.g. {leftover[:3]} "
            f"({len(leftover)} in all); the config and the weights disagree"
        )
    return params


def tensors_from_params(params: dict, cfg: DecoderConfig, architecture: str) -> dict[str, np.ndarray]:
    """The Hugging Face state dict (NumPy arrays, the names and layouts transformers loads) of a parameter tree."""
    out: dict[str, np.ndarray] = {}
    blocks = params["blocks"]
    if architecture == "gpt2":
        body = "transformer."
        out[body + "wte.weight"] = params["embed"]["tokens"]
        out[body + "wpe.weight"] = params["embed"]["positions"]
        for i in range(cfg.n_layers):
            layer, h = blocks[f"layer_{i}"], f"{body}h.{i}."
            a = layer["self_attn"]
            out[h + "attn.c_attn.weight"] = np.concatenate([a["w_q"], a["w_k"], a["w_v"]], axis=1)
            out[h + "attn.c_attn.bias"] = np.concatenate([a["b_q"], a["b_k"], a["b_v"]])
            out[h + "attn.c_proj.weight"], out[h + "attn.c_proj.bias"] = a["w_o"], a["b_o"]
            for ln, name in (("ln1", "ln_1"), ("ln2", "ln_2")):
                out[h + f"{name}.weight"], out[h + f"{name}.bias"] = layer[ln]["scale"], layer[ln]["bias"]
            f = layer["ffn"]
            out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = f["w_1"], f["b_1"]
            out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = f["w_2"], f["b_2"]
        out[body + "ln_f.weight"], out[body + "ln_f.bias"] = blocks["final_ln"]["scale"], blocks["final_ln"]["bias"]
    else:
        body = "model."
        out[body + "embed_tokens.weight"] = params["embed"]["tokens"]
        for i in range(cfg.n_layers):
            layer, h = blocks[f"layer_{i}"], f"{body}layers.{i}."
            for name in "qkvo":
                out[h + f"self_attn.{name}_proj.weight"] = layer["self_attn"][f"w_{name}"].T
                if cfg.bias:
                    out[h + f"self_attn.{name}_proj.bias"] = layer["self_attn"][f"b_{name}"]
            for name in ("gate", "up", "down"):
                out[h + f"mlp.{name}_proj.weight"] = layer["ffn"][f"w_{name}"].T
                if cfg.bias:
                    out[h + f"mlp.{name}_proj.bias"] = layer["ffn"][f"b_{name}"]
            out[h + "input_layernorm.weight"] = layer["ln1"]["scale"]
            out[h + "post_attention_layernorm.weight"] = layer["ln2"]["scale"]
        out[body + "norm.weight"] = blocks["final_ln"]["scale"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["head"]["w"].T
    return {name: np.ascontiguousarray(array) for name, array in out.items()}


# --- which of this library's models a Hugging Face architecture can hold ----------------------------

# DecoderConfig field -> (value each architecture needs, what it means), checked before writing.
_REQUIRED = {
    "gpt2": {
        "norm": "layer",
        "positional": "learned",
        "gated_ffn": False,
        "bias": True,
        "head_bias": False,
        "scale_embeddings": False,
        "norm_first": True,
        "n_kv_heads": None,
    },
    "llama": {
        "norm": "rms",
        "positional": "rope",
        "gated_ffn": True,
        "head_bias": False,
        "scale_embeddings": False,
        "norm_first": True,
    },
}
_HF_ACTIVATION = {
    "gpt2": {"gelu": "gelu_new", "relu": "relu", "silu": "silu"},
    "llama": {"silu": "silu", "gelu": "gelu_pytorch_tanh"},
}


def architecture_for(cfg: DecoderConfig) -> str:
    """The Hugging Face architecture that holds this model ("gpt2" or "llama"), or a HuggingFaceError
    naming the first setting that neither has."""
    architecture = "llama" if cfg.norm == "rms" else "gpt2"
    for name, needed in _REQUIRED[architecture].items():
        value = getattr(cfg, name)
        if name == "n_kv_heads" and value == cfg.n_heads:
            continue
        if value != needed:
            raise HuggingFaceError(
                f"this model's {name}={value!r} has no place in a {architecture} checkpoint "
                f"(which needs {name}={needed!r}); only GPT-2- and Llama-shaped decoders convert "
                "(models.preset('gpt2' | 'llama', ...))"
            )
    if cfg.activation not in _HF_ACTIVATION[architecture]:
        raise HuggingFaceError(f"this model's activation={cfg.activation!r} has no {architecture} equivalent")
    return architecture


def hf_config(cfg: DecoderConfig, tokenizer=None) -> dict:
    """config.json for this model (a DecoderConfig that architecture_for accepts)."""
    architecture = architecture_for(cfg)
    special = (
        {
            name: getattr(tokenizer, name.replace("_token", ""), None)
            for name in ("bos_token_id", "eos_token_id", "pad_token_id")
        }
        if tokenizer is not None
        else {}
    )
    common = {
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "dtype": cfg.dtype,
        "torch_dtype": cfg.dtype,
        **{name: value for name, value in special.items() if value is not None},
    }
    activation = _HF_ACTIVATION[architecture][cfg.activation]
    eps = cfg.norm_eps if cfg.norm_eps is not None else (1e-5 if cfg.norm == "layer" else 1e-6)
    if architecture == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            **common,
            "n_embd": cfg.d_model,
            "n_head": cfg.n_heads,
            "n_layer": cfg.n_layers,
            "n_inner": cfg.d_ff,
            "n_positions": cfg.max_len,
            "activation_function": activation,
            "layer_norm_epsilon": eps,
            "resid_pdrop": cfg.drop_rate,
            "embd_pdrop": cfg.drop_rate,
            "attn_pdrop": cfg.drop_rate,
        }
    n_kv_heads = cfg.n_heads if cfg.n_kv_heads is None else cfg.n_kv_heads
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **common,
        "hidden_size": cfg.d_model,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": n_kv_heads,
        "num_hidden_layers": cfg.n_layers,
        "intermediate_size": cfg.d_ff,
        "max_position_embeddings": cfg.max_len,
        "hidden_act": activation,
        "rms_norm_eps": eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.drop_rate,
        "head_dim": cfg.d_model // cfg.n_heads,
    }


# --- the model object ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HuggingFaceModel:
    """A GPT-2- or Llama-shaped decoder: cfg (DecoderConfig), params (arrays of one backend), tokenizer
    (a HuggingFaceTokenizer, or None). What from_huggingface returns and to_huggingface writes."""

    cfg: DecoderConfig
    params: dict
    tokenizer: Any = None

    @property
    def architecture(self) -> str:
        """ "gpt2" or "llama"."""
        return architecture_for(self.cfg)

    @property
    def backend(self):
        return backend_of(self.params)

    def logits(self, ids):
        """ids (B, T) integers -> next-token logits (B, T, V), an array of the model's backend."""
        return _logits(self.params, self.backend.asarray(np.asarray(ids, dtype=np.int32)), self.cfg)

    def generate(
        self,
        prompts,
        *,
        max_new_tokens: int,
        key=None,
        temperature: float = 0.0,
        top_k=None,
        top_p=None,
        eos_id: int | None = None,
    ):
        """prompts (B, P) ids -> (B, P + max_new_tokens) (sampling.generate; greedy by default). eos_id:
        the tokenizer's, or -1 (never) without one."""
        from .sampling import generate

        if eos_id is None:
            eos_id = getattr(self.tokenizer, "eos_id", None)
        return generate(
            self.params,
            self.cfg,
            self.backend.asarray(np.asarray(prompts, dtype=np.int32)),
            max_new_tokens=max_new_tokens,
            key=key,
            eos_id=-1 if eos_id is None else eos_id,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )


def _logits(params, ids, cfg: DecoderConfig):
    # backend.jit's calls run in the x64 scope, so a float64 model stays float64 on JAX.
    return backend_of(params).jit(_apply, static_argnames=("cfg",))(params, ids, cfg=cfg)


def _apply(params, ids, cfg: DecoderConfig):
    return decoder_only.for_config(cfg).apply(params, ids)


def load_huggingface(
    folder: str | os.PathLike, dtype: str = "float32", *, tokenizer_required: bool = False
) -> tuple[DecoderConfig, dict, Any, str]:
    """A Hugging Face folder -> (DecoderConfig, params as NumPy arrays of `dtype`, tokenizer or None,
    architecture). The tokenizer: see read_tokenizer."""
    config = read_config(folder)
    cfg, architecture = decoder_config(config, dtype)
    tokenizer = read_tokenizer(folder, config, required=tokenizer_required)
    params = params_from_tensors(read_tensors(folder), cfg, architecture)
    return cfg, params, tokenizer, architecture


def from_huggingface(folder: str | os.PathLike, dtype: str = "float32", backend=None) -> HuggingFaceModel:
    """The GPT-2 or Llama model in a Hugging Face folder, on `backend` (default: FT_BACKEND's); its
    .tokenizer is the folder's tokenizer.json where it has one and the tokenizers library is installed.

        model = ft.from_huggingface("gpt2-folder", dtype="float64")
        model.logits([[464, 2068]])        # (1, 2, 50257)
    """
    from .backend_choice import default_backend

    backend = backend or default_backend()
    cfg, params, tokenizer, architecture = load_huggingface(folder, dtype)
    params = backend.tree_asarray(params)  # float64 stays float64: tree_asarray moves in the x64 scope
    return HuggingFaceModel(cfg, params, tokenizer)


def to_huggingface(model, folder: str | os.PathLike, *, max_shard_bytes: int | None = None) -> Path:
    """Write `model` (anything with .cfg, a GPT-2- or Llama-shaped DecoderConfig, and .params; a
    .tokenizer that is a HuggingFaceTokenizer adds tokenizer.json) as a folder that transformers'
    from_pretrained loads: config.json, model.safetensors (or shards of at most max_shard_bytes with
    model.safetensors.index.json) and tokenizer.json. -> the folder."""
    cfg, params = model.cfg, model.params
    if not isinstance(cfg, DecoderConfig):
        raise HuggingFaceError(f"only decoder-only models convert to Hugging Face, not a {type(cfg).__name__}")
    architecture = architecture_for(cfg)
    tokenizer = getattr(model, "tokenizer", None)
    from .data.hf_tokenizer import HuggingFaceTokenizer

    hf_tokenizer = tokenizer if isinstance(tokenizer, HuggingFaceTokenizer) else None
    leaves = tree_leaves(params)
    params = (
        tree_map(backend_of(*leaves).to_numpy, params) if leaves and not isinstance(leaves[0], np.ndarray) else params
    )
    tensors = tensors_from_params(params, cfg, architecture)
    folder = Path(folder)
    if (folder / CONFIG_NAME).exists() or any(folder.glob("model*.safetensors*")):
        raise HuggingFaceError(
            f"{folder} already holds a model; write to a new or empty folder (nothing was overwritten)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}  # transformers reads only files that say they hold PyTorch's layout
    if max_shard_bytes is None:
        save_file(folder / WEIGHTS_NAME, tensors, metadata)
    else:
        _save_shards(folder, tensors, metadata, max_shard_bytes)
    config = hf_config(cfg, hf_tokenizer)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if hf_tokenizer is not None:
        (folder / TOKENIZER_NAME).write_text(hf_tokenizer.json_text, encoding="utf-8")
    return folder


def _save_shards(folder: Path, tensors: dict, metadata: dict, max_shard_bytes: int) -> None:
    shards: list[dict] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(folder / file, shard, metadata)
        weight_map.update({name: file for name in shard})
    total = sum(array.nbytes for array in tensors.values())
    (folder / INDEX_NAME).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n", encoding="utf-8"
    )


__all__ = [
    "HuggingFaceError",
    "HuggingFaceModel",
    "architecture_for",
    "decoder_config",
    "from_huggingface",
    "hf_config",
    "load_huggingface",
    "params_from_tensors",
    "read_config",
    "read_tensors",
    "read_tokenizer",
    "tensors_from_params",
    "to_huggingface",
]
