"""Tests of attention maps (functional_transformer.insight: ft.attention_maps, the plots) and of
`ft attention`: shapes and labels, that the weights are the attention layer's own (a spy on
layers.attention.dot_product_fwd), the same numbers on NumPy and JAX, clear errors, and the
missing-matplotlib message. Plot tests skip where matplotlib (the [plot] extra) is not installed.
"""

import importlib.util
import sys

import numpy as np
import pytest
from conftest import requires_jax

import backends
import functional_transformer as ft
from functional_transformer import cli
from functional_transformer.data import CharTokenizer, task_alphabet
from functional_transformer.inference import UnknownSymbolError
from functional_transformer.insight import KINDS, attention, plots
from functional_transformer.layers import attention as attention_layer

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is the [plot] extra, not installed here")
NP = backends.get_backend("numpy")
TOKENIZER = CharTokenizer.from_texts([task_alphabet("reverse")])
LAYERS, HEADS = 2, 2


def config(dtype="float32"):
    return ft.TransformerConfig(
        src_vocab_size=TOKENIZER.vocab_size,
        tgt_vocab_size=TOKENIZER.vocab_size,
        d_model=16,
        n_heads=HEADS,
        d_ff=32,
        n_encoder_layers=LAYERS,
        n_decoder_layers=LAYERS,
        max_len=10,
        dtype=dtype,
    )


def init_params(backend, cfg):
    """The same numbers on every backend: drawn on NumPy, then moved."""
    return backend.tree_asarray(ft.init(NP.random.key(0), cfg))


@pytest.fixture(scope="module")
def cfg():
    return config()


@pytest.fixture(scope="module")
def params(backend, cfg):
    return init_params(backend, cfg)


def test_maps_have_one_grid_per_kind_labelled_with_the_tokens(params, cfg):
    maps = ft.attention_maps(params, cfg, TOKENIZER, "apple", "elppa")
    assert maps["source"] == "apple" and maps["target"] == "elppa" and maps["target_from"] == "given"
    assert maps["source_tokens"] == list("apple")
    assert maps["target_in"] == ["<bos>", *"elppa"]
    assert maps["target_out"] == [*"elppa", "<eos>"]
    assert len(maps["predicted"]) == 6
    assert maps["encoder_self"].shape == (LAYERS, HEADS, 5, 5)
    assert maps["decoder_self"].shape == (LAYERS, HEADS, 6, 6)
    assert maps["cross"].shape == (LAYERS, HEADS, 6, 5)
    for kind in KINDS:
        assert isinstance(maps[kind], np.ndarray)
        np.testing.assert_allclose(maps[kind].sum(axis=-1), 1.0, rtol=1e-5)  # each query's weights: a distribution
        assert (maps[kind] >= 0).all()


def test_decoder_self_attention_is_causal(params, cfg):
    weights = ft.attention_maps(params, cfg, TOKENIZER, "apple", "elppa")["decoder_self"]
    future = np.triu(np.ones(weights.shape[-2:], dtype=bool), k=1)
    assert (weights[..., future] == 0).all()
    assert (weights[..., ~future] > 0).all()


def test_the_target_is_the_models_greedy_output_unless_given(params, cfg):
    maps = ft.attention_maps(params, cfg, TOKENIZER, "abc")
    greedy = ft.predict(ft.TrainedModel(params, cfg, TOKENIZER), ["abc"])[0]
    assert maps["target_from"] == "greedy"
    assert maps["target"] == greedy[: cfg.max_len - 1]
    assert maps["target_in"] == ["<bos>", *maps["target"]]


def test_the_weights_are_the_attention_layers_own(cfg, monkeypatch):
    """Every p that layers.attention computes in the forward pass is a map, in order: encoder
    layers' self-attention, then each decoder layer's self- and cross-attention."""
    seen = []
    original = attention_layer.dot_product_fwd

    def spy(q, k, v, mask=None):
        out, saved = original(q, k, v, mask)
        seen.append(np.asarray(saved.p))
        return out, saved

    monkeypatch.setattr(attention_layer, "dot_product_fwd", spy)
    maps = ft.attention_maps(init_params(NP, cfg), cfg, TOKENIZER, "apple", "elppa")  # NumPy: no jit, values seen
    assert len(seen) == 3 * LAYERS
    encoder, decoder = seen[:LAYERS], seen[LAYERS:]
    for layer in range(LAYERS):
        np.testing.assert_array_equal(maps["encoder_self"][layer], encoder[layer][0])
        np.testing.assert_array_equal(maps["decoder_self"][layer], decoder[2 * layer][0])
        np.testing.assert_array_equal(maps["cross"][layer], decoder[2 * layer + 1][0])


@requires_jax
@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_numpy_and_jax_give_the_same_maps(numpy_backend, jax_backend, dtype, rtol):
    cfg = config(dtype)
    on_numpy = ft.attention_maps(init_params(numpy_backend, cfg), cfg, TOKENIZER, "banana")
    on_jax = ft.attention_maps(init_params(jax_backend, cfg), cfg, TOKENIZER, "banana")
    assert on_numpy["target"] == on_jax["target"]
    for kind in KINDS:
        np.testing.assert_allclose(on_jax[kind], on_numpy[kind], rtol=rtol, atol=rtol * 1e-2)


def test_unknown_characters_are_refused_unless_allowed(params, cfg):
    with pytest.raises(UnknownSymbolError, match="'A', '!'|'!', 'A'"):
        ft.attention_maps(params, cfg, TOKENIZER, "Ab!")
    with pytest.raises(UnknownSymbolError, match="'Z'"):
        ft.attention_maps(params, cfg, TOKENIZER, "ab", target="Z")
    maps = ft.attention_maps(params, cfg, TOKENIZER, "aB", "ba", allow_unknown=True)
    assert maps["source_tokens"] == ["a", "B"] and maps["cross"].shape[-1] == 2


@pytest.mark.parametrize(
    "source, target, message",
    [
        ("", None, "the source is empty"),
        ("a" * 11, None, "the source has 11 tokens; this model reads at most max_len=10"),
        ("abc", "a" * 10, "the target has 10 tokens; this model's decoder reads at most 9"),
    ],
)
def test_lengths_the_model_cannot_read_are_one_line_errors(params, cfg, source, target, message):
    with pytest.raises(ValueError, match=message) as info:
        ft.attention_maps(params, cfg, TOKENIZER, source, target)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Plots and ft attention


@needs_matplotlib
def test_attention_figure_has_a_heatmap_per_layer_and_head_labelled_with_tokens(params, cfg):
    maps = ft.attention_maps(params, cfg, TOKENIZER, "apple", "elppa")
    fig = plots.attention_figure(maps)
    heatmaps = [ax for ax in fig.get_axes() if ax.images and ax.get_title().startswith("layer")]
    assert len(heatmaps) == 3 * LAYERS * HEADS
    cross = heatmaps[-1]  # the last: cross-attention, last layer, last head
    assert [t.get_text() for t in cross.get_xticklabels()] == list("apple")
    assert [t.get_text() for t in cross.get_yticklabels()] == [*"elppa", "<eos>"]
    np.testing.assert_array_equal(cross.images[0].get_array(), maps["cross"][-1, -1])
    assert plots.png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    only_cross = plots.attention_figure(maps, ["cross"])
    assert (
        len([ax for ax in only_cross.get_axes() if ax.images and ax.get_title().startswith("layer")]) == LAYERS * HEADS
    )


def test_without_matplotlib_plots_are_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(plots.MatplotlibMissing, match=r"ft attention draws with matplotlib.*\[plot\]"):
        plots.require_matplotlib("ft attention")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run folder on the FT_BACKEND backend."""
    out = tmp_path_factory.mktemp("attention") / "run"
    argv = [
        "train",
        "--task",
        "reverse",
        "--steps",
        "10",
        "--n-train",
        "100",
        "--n-valid",
        "8",
        "--max-len",
        "5",
        "--out",
        str(out),
        "--eval-every",
        "10",
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--d-ff",
        "32",
        "--layers",
        "1",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    return out


@needs_matplotlib
def test_ft_attention_writes_a_png_and_says_what_it_drew(run_dir, tmp_path, capsys):
    out = tmp_path / "pics" / "attn.png"
    assert cli.main(["attention", "--checkpoint", str(run_dir), "abc", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "source: abc" and lines[1].startswith("target (greedy): ")
    assert lines[2] == f"wrote {out}: encoder_self, decoder_self, cross; 1 layers x 2 heads each"
    assert (
        cli.main(
            ["attention", "--checkpoint", str(run_dir), "abc", "--target", "cba", "--kind", "cross", "--out", str(out)]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[1:] == [
        "target (given): cba",
        f"wrote {out}: cross; 1 layers x 2 heads each",
    ]


def test_ft_attention_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["attention", "--checkpoint", str(tmp_path / "none"), "abc"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["attention", "--checkpoint", str(run_dir), "abc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ft attention: error: ft attention draws with matplotlib") and err.count("\n") == 1
    assert "pip install 'functional-transformer[plot]'" in err
    assert not (tmp_path / "attention.png").exists()


@needs_matplotlib
def test_ft_attention_refuses_unknown_characters(run_dir, tmp_path, capsys):
    assert cli.main(["attention", "--checkpoint", str(run_dir), "aB", "--out", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ft attention: error: 'B' is not in this model's vocabulary") and err.count("\n") == 1
    assert (
        cli.main(["attention", "--checkpoint", str(run_dir), "aB", "--allow-unknown", "--out", str(tmp_path / "a.png")])
        == 0
    )


@requires_jax
def test_a_checkpoint_from_one_backend_gives_the_same_maps_on_the_other(run_dir, numpy_backend, jax_backend):
    """run_dir was trained on FT_BACKEND: across the two suites, each backend reads the other's checkpoint."""
    on = {b.name: ft.load(run_dir, backend=b) for b in (numpy_backend, jax_backend)}
    maps = {name: ft.attention_maps(m.params, m.cfg, m.tokenizer, "abcd") for name, m in on.items()}
    assert maps["numpy"]["target"] == maps["jax"]["target"]
    for kind in KINDS:
        np.testing.assert_allclose(maps["jax"][kind], maps["numpy"][kind], rtol=1e-5, atol=1e-7)


def test_token_label_names_the_special_tokens():
    assert [attention.token_label(TOKENIZER, i) for i in range(5)] == ["<pad>", "<bos>", "<eos>", "<unk>", "a"]
