"""Hugging Face GPT-2 and Llama folders in and out (hf.py, ft convert, ft generate).

Against the reference: small random GPT2LMHeadModel and LlamaForCausalLM built here with
`transformers` (nothing downloaded), saved with save_pretrained, converted, and compared in float64
on the FT_BACKEND backend; then converted back and loaded by transformers. Those tests skip where
transformers or torch is missing (the hf dependency group: uv sync --group hf). The errors for bad
folders need neither: their folders are written by to_huggingface from a preset.

Hugging Face's Llama computes its RMSNorm and its rotary table in float32 even in a float64 model
(and its "eager" attention its softmax): the float64 comparisons use the "sdpa" attention and replace
those two forwards with the same formulas in float64 (the `float64_llama` fixture), and one test
compares with the unchanged model at float32's precision.
"""

import json
import shutil

import numpy as np
import pytest

import backends
from functional_transformer import hf
from functional_transformer.cli import main
from functional_transformer.models import DecoderOnly, preset

pytestmark = pytest.mark.usefixtures("x64")

VOCAB = 40
BOS, EOS = 1, 2

GPT2_SHAPES = {
    "gpt2_tied": dict(n_embd=16, n_head=4, n_layer=2, n_positions=16),
    "gpt2_untied_relu": dict(
        n_embd=12,
        n_head=3,
        n_layer=1,
        n_positions=12,
        n_inner=20,
        tie_word_embeddings=False,
        activation_function="relu",
        layer_norm_epsilon=1e-3,
    ),
}
LLAMA_SHAPES = {
    "llama_gqa": dict(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    ),
    "llama_mqa_tied": dict(
        hidden_size=16,
        intermediate_size=20,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=16,
        tie_word_embeddings=True,
        rope_theta=500.0,
        rms_norm_eps=1e-5,
    ),
    "llama_bias": dict(
        hidden_size=12,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        attention_bias=True,
        mlp_bias=True,
    ),
}


def _transformers():
    torch = pytest.importorskip("torch", reason="torch is not installed (uv sync --group hf)")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (uv sync --group hf)")
    return torch, transformers


@pytest.fixture
def float64_llama(monkeypatch):
    """Hugging Face's Llama with its RMSNorm and rotary table in float64, as the rest of a float64 model."""
    torch, _ = _transformers()
    from transformers.models.llama import modeling_llama

    def rms_norm(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary(self, x, position_ids):
        dim = 2 * self.inv_freq.shape[0]
        base = self.config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = position_ids[..., None].double() * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", rotary)


def _reference(name: str, seed: int = 0):
    """A random float64 transformers model of the named shape, in eval mode."""
    torch, transformers = _transformers()
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS)
    if name in GPT2_SHAPES:
        config = transformers.GPT2Config(**common, **GPT2_SHAPES[name], attn_implementation="sdpa")
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(**common, **LLAMA_SHAPES[name], attn_implementation="sdpa")
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # biases and norms away from their zeros and ones, so that a misplaced one shows
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.to(torch.float64).eval()


def _ids(rows=2, length=7, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(rows, length))


def _reference_logits(model, ids):
    torch, _ = _transformers()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _relative_gap(ours, reference):
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


@pytest.mark.parametrize("name", [*GPT2_SHAPES, *LLAMA_SHAPES])
def test_converted_model_equals_transformers(backend, tmp_path, name, float64_llama):
    reference = _reference(name)
    reference.save_pretrained(tmp_path)
    model = hf.from_huggingface(tmp_path, dtype="float64", backend=backend)
    ids = _ids()
    ours = backend.to_numpy(model.logits(ids))
    assert ours.dtype == np.float64 and ours.shape == (2, 7, VOCAB)
    assert _relative_gap(ours, _reference_logits(reference, ids)) < 1e-10

    torch, _ = _transformers()
    prompt = ids[:, :3]
    with torch.no_grad():  # min_new_tokens: no early stop at eos, as eos_id -1 here
        expected = reference.generate(
            torch.tensor(prompt),
            attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    greedy = backend.to_numpy(model.generate(prompt, max_new_tokens=5, temperature=0.0, eos_id=-1))
    np.testing.assert_array_equal(greedy, expected)


@pytest.mark.parametrize("name", ["gpt2_tied", "llama_gqa"])
def test_sharded_folder_and_back_to_transformers(backend, tmp_path, name, float64_llama):
    _, transformers = _transformers()
    reference = _reference(name, seed=1)
    reference.save_pretrained(tmp_path / "in", max_shard_size="4KB")
    assert (tmp_path / "in" / hf.INDEX_NAME).is_file() and len(list((tmp_path / "in").glob("model-*"))) > 1
    model = hf.from_huggingface(tmp_path / "in", dtype="float64", backend=backend)
    ids = _ids(seed=2)
    expected = _reference_logits(reference, ids)
    assert _relative_gap(backend.to_numpy(model.logits(ids)), expected) < 1e-10

    for shard_bytes in (None, 3000):
        out = tmp_path / f"out_{shard_bytes}"
        hf.to_huggingface(model, out, max_shard_bytes=shard_bytes)
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa").eval()
        assert type(reloaded) is type(reference)
        assert _relative_gap(_reference_logits(reloaded, ids), expected) < 1e-10


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_preset_model_loads_in_transformers(backend, tmp_path, name, float64_llama):
    """The reverse path alone: a model made here, written out, equals itself in transformers."""
    _, transformers = _transformers()
    cfg = preset(name, VOCAB, d_model=16, n_heads=4, n_layers=2, max_len=16, dtype="float64", pad_id=None)
    params = DecoderOnly(cfg).init(backend.random.key(0))
    model = hf.HuggingFaceModel(cfg, params)
    hf.to_huggingface(model, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    ids = _ids(seed=3)
    assert _relative_gap(backend.to_numpy(model.logits(ids)), _reference_logits(reloaded, ids)) < 1e-10


def test_unchanged_llama_agrees_to_float32_precision(backend, tmp_path):
    """Without the float64 fixture transformers' Llama rounds its norms and rotary table to float32."""
    reference = _reference("llama_gqa")
    reference.save_pretrained(tmp_path)
    model = hf.from_huggingface(tmp_path, dtype="float64", backend=backend)
    ids = _ids()
    assert _relative_gap(backend.to_numpy(model.logits(ids)), _reference_logits(reference, ids)) < 1e-5


# --- errors: folders written here, no transformers needed --------------------------------------


def _write(tmp_path, name="llama", shard_bytes=600, **settings):
    """A random model of the preset `name` (n_kv_heads 1 for llama), written in shards of shard_bytes."""
    backend = backends.get_backend("numpy")
    cfg = preset(name, VOCAB, d_model=8, n_heads=2, n_layers=2, max_len=8, pad_id=None, **settings)
    model = hf.HuggingFaceModel(cfg, DecoderOnly(cfg).init(backend.random.key(0)))
    return hf.to_huggingface(model, tmp_path / "model", max_shard_bytes=shard_bytes)


def _edit_config(folder, **changes):
    path = folder / hf.CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_round_trip_through_a_folder_keeps_every_parameter(tmp_path):
    folder = _write(tmp_path)
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    cfg, params, tokenizer, architecture = hf.load_huggingface(folder)
    assert architecture == "llama" and tokenizer is None and cfg.n_kv_heads == 1
    backend = backends.get_backend("numpy")
    original = DecoderOnly(cfg).init(backend.random.key(0))
    for a, b in zip(backends.tree_leaves(original), backends.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def _rewrite_weights(folder, rename):
    """The folder's model.safetensors with each tensor (name, array) replaced by rename(name, array)'s pairs."""
    from functional_transformer.checkpoint_format import save_file

    path = folder / hf.WEIGHTS_NAME
    tensors = hf.read_tensors(folder)
    path.unlink()
    save_file(path, dict(pair for name, array in tensors.items() for pair in rename(name, array)))


def test_original_gpt2_names_and_mask_buffers_read(tmp_path):
    """The first GPT-2 files name the body's tensors without "transformer." and carry attn.bias masks."""
    folder = _write(tmp_path, "gpt2", shard_bytes=None)
    _, expected, _, _ = hf.load_huggingface(folder)

    def original(name, array):
        name = name.removeprefix("transformer.")
        yield name, array
        if name.endswith("attn.c_attn.weight"):
            yield name.replace("c_attn.weight", "bias"), np.tril(np.ones((1, 1, 8, 8), dtype=np.float32))

    _rewrite_weights(folder, original)
    _, params, _, _ = hf.load_huggingface(folder)
    for a, b in zip(backends.tree_leaves(expected), backends.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_weights_widen_exactly(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 files need ml_dtypes (it comes with JAX)")
    folder = _write(tmp_path, shard_bytes=None)
    _rewrite_weights(folder, lambda name, array: [(name, array.astype(ml_dtypes.bfloat16))])
    _, params, _, _ = hf.load_huggingface(folder, "float64")
    tokens = params["embed"]["tokens"]
    assert tokens.dtype == np.float64
    np.testing.assert_array_equal(tokens, tokens.astype(ml_dtypes.bfloat16).astype(np.float64))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling of rope_type 'linear'"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_parameters of rope_type 'yarn'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"architectures": ["MistralForCausalLM"]}, "architectures \\['MistralForCausalLM'\\]"),
        ({"head_dim": 8}, "head_dim=8"),
        ({"attention_bias": True}, "attention_bias=True with mlp_bias=False"),
        ({"num_hidden_layers": 3}, "lack the tensor 'model.layers.2"),
        ({"num_hidden_layers": 1}, "do(es)? not account for"),
        ({"intermediate_size": 12}, "has shape"),
        ({"tie_word_embeddings": True}, "lm_head.weight differs"),
    ],
)
def test_unsupported_or_inconsistent_settings_name_the_field(tmp_path, change, message):
    folder = _write(tmp_path)
    _edit_config(folder, **change)
    with pytest.raises(hf.HuggingFaceError, match=message):
        hf.load_huggingface(folder)


def test_gpt2_exact_gelu_is_refused(tmp_path):
    folder = _write(tmp_path, "gpt2")
    _edit_config(folder, activation_function="gelu")
    with pytest.raises(hf.HuggingFaceError, match="activation_function='gelu'.*tanh form"):
        hf.load_huggingface(folder)


def test_bad_folders_are_one_line_errors(tmp_path):
    folder = _write(tmp_path)
    shards = sorted(folder.glob("model-*.safetensors"))
    with pytest.raises(hf.HuggingFaceError, match="no config.json"):
        hf.load_huggingface(tmp_path)
    with pytest.raises(hf.HuggingFaceError, match="is not a folder"):
        hf.load_huggingface(tmp_path / "missing")

    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) - 10])
    with pytest.raises(hf.HuggingFaceError, match="truncated|shorter|bytes") as err:
        hf.load_huggingface(folder)
    assert "\n" not in str(err.value)
    shards[0].write_bytes(data)

    shards[-1].unlink()
    with pytest.raises(hf.HuggingFaceError, match=f"names the shard '{shards[-1].name}'"):
        hf.load_huggingface(folder)
    (folder / hf.INDEX_NAME).unlink()
    with pytest.raises(hf.HuggingFaceError, match="neither model.safetensors nor"):
        hf.load_huggingface(folder)


def test_models_without_a_hugging_face_shape_are_refused(tmp_path):
    backend = backends.get_backend("numpy")
    cfg = preset("gpt2", VOCAB, d_model=8, n_heads=2, n_layers=1, max_len=8, scale_embeddings=True)
    model = hf.HuggingFaceModel(cfg, DecoderOnly(cfg).init(backend.random.key(0)))
    with pytest.raises(hf.HuggingFaceError, match="scale_embeddings=True has no place in a gpt2 checkpoint"):
        hf.to_huggingface(model, tmp_path)
    folder = _write(tmp_path)
    with pytest.raises(hf.HuggingFaceError, match="already holds a model"):
        hf.to_huggingface(hf.HuggingFaceModel(*hf.load_huggingface(folder)[:2]), folder)


# --- the command line ------------------------------------------------------------------------------


def _with_tokenizer(folder):
    """A word-level tokenizer.json over VOCAB ids (the tokenizers library, the [text] extra)."""
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed (the [text] extra)")
    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(VOCAB - 3)]
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins the words with spaces
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.save(str(folder / hf.TOKENIZER_NAME))
    _edit_config(folder, bos_token_id=BOS, eos_token_id=EOS)
    return folder


def test_convert_generate_and_convert_back(tmp_path, capsys):
    folder = _with_tokenizer(_write(tmp_path))
    run = tmp_path / "run"
    assert main(["convert", "hf", str(folder), "--out", str(run), "--dtype", "float64"]) == 0
    assert "llama model" in capsys.readouterr().out

    args = [
        "generate",
        str(run),
        "--prompt",
        "w3 w4 w5",
        "--prompt",
        "w7",
        "--max-new-tokens",
        "4",
        "--seed",
        "1",
        "--top-k",
        "5",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and all(word.startswith("w") for line in lines for word in line.split())
    assert "tokens/s" in captured.err
    assert main(args) == 0 and capsys.readouterr().out.splitlines() == lines  # the seed fixes the draws
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w3 w4 w5\nw7\n")
    assert main(args[:2] + ["--input", str(prompts)] + args[6:]) == 0
    assert capsys.readouterr().out.splitlines() == lines  # the same prompts from a file
    assert main(["generate", str(run), "--prompt", "w3", "--max-new-tokens", "3", "--temperature", "0"]) == 0

    out = tmp_path / "back"
    assert main(["convert", "--to", "hf", str(run), "--out", str(out)]) == 0
    cfg, params, tokenizer, _ = hf.load_huggingface(out, "float64")
    _, original, _, _ = hf.load_huggingface(folder, "float64")
    for a, b in zip(backends.tree_leaves(original), backends.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert tokenizer.encode("w3 w4") == [6, 7] and tokenizer.bos_id == BOS


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    folder = _write(tmp_path)
    assert main(["convert", "hf", str(folder), "--out", str(tmp_path / "run")]) == 2
    assert "has no tokenizer.json" in capsys.readouterr().err
    assert main(["convert", "hf", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["convert", str(folder), "--out", str(tmp_path / "run")]) == 2
    assert "ft convert hf DIR" in capsys.readouterr().err
    assert main(["convert", "--to", "hf", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "none.safetensors"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ft generate: error:") and err.count("\n") == 1
    shutil.rmtree(folder)
