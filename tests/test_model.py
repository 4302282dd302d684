"""The whole model through the public API (ft.init, ft.apply, ft.encode, ft.decode, ft.loss_fn):
reproducible init, NumPy and JAX agreeing, the documented parameter tree, causality, padding
invariance, batch independence, the Array API (array_api_strict) and the input checks.

Configs are tiny so that the suite stays fast; on JAX every new config or shape compiles, so
the invariance tests share one float64 config and one pair of input shapes.
"""

import dataclasses

import numpy as np
import pytest

import backends
import functional_transformer as ft

try:
    import chex
except ImportError:  # chex is a dev dependency; the shape checks fall back to plain asserts
    chex = None

BASE = dict(
    src_vocab_size=11,
    tgt_vocab_size=13,
    d_model=16,
    n_heads=4,
    d_ff=32,
    n_encoder_layers=2,
    n_decoder_layers=2,
    max_len=24,
)
CFG32 = ft.TransformerConfig(**BASE)
CFG64 = ft.TransformerConfig(**BASE, dtype="float64")
# For the tests that draw params on the backend: small, with one matrix shape, (16, 16), for every
# weight, and learned positions and pre-norm so that every kind of leaf is drawn.
CFG_INIT = dataclasses.replace(
    CFG32, src_vocab_size=16, tgt_vocab_size=16, d_ff=16, max_len=16, positional="learned", norm_first=True
)

# Variants of the paper's model: all flags away from their defaults together, then each one alone.
# On JAX each variant compiles its own program (seconds each), so the single-flag ones are slow.
VARIANTS = [
    pytest.param({}, id="paper"),
    pytest.param(dict(norm_first=True, tie_embeddings=True, positional="learned", activation="gelu"), id="all-flags"),
    pytest.param(dict(norm_first=True), id="norm_first", marks=pytest.mark.slow),
    pytest.param(dict(tie_embeddings=True), id="tie_embeddings", marks=pytest.mark.slow),
    pytest.param(dict(positional="learned"), id="learned", marks=pytest.mark.slow),
    pytest.param(dict(activation="gelu"), id="gelu", marks=pytest.mark.slow),
]

PAD = 0
# src (2, 7) and tgt_in (2, 6): the first src row and the second target row end in padding.
SRC = np.array([[3, 7, 1, 9, 0, 0, 0], [4, 5, 6, 7, 8, 9, 10]], dtype=np.int32)
TGT = np.array([[1, 12, 3, 4, 5, 6], [2, 11, 4, 0, 0, 0]], dtype=np.int32)


def _assert_shape(x, shape):
    if chex is not None:
        chex.assert_shape(x, shape)
    assert tuple(x.shape) == tuple(shape)


def _close(actual, expected, rtol):
    """Relative closeness, with the absolute floor scaled to the largest expected magnitude."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    scale = float(np.max(np.abs(expected))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _rtol(cfg):
    return 1e-12 if cfg.dtype == "float64" else 1e-5


def _params(backend, cfg, seed=0):
    return ft.init(backend.random.key(seed), cfg)


def _logits(backend, params, src, tgt, cfg, **kw):
    return backend.to_numpy(ft.apply(params, src, tgt, cfg, **kw))


# --- init -----------------------------------------------------------------------------------------


def test_same_key_same_params(backend):
    a = backend.tree_to_numpy(_params(backend, CFG_INIT, seed=3))
    b = backend.tree_to_numpy(_params(backend, CFG_INIT, seed=3))
    flat_a, flat_b = backends.tree_flatten(a), backends.tree_flatten(b)
    assert list(flat_a) == list(flat_b)
    for path in flat_a:
        np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=path)
    c = backends.tree_flatten(backend.tree_to_numpy(_params(backend, CFG_INIT, seed=4)))
    assert not np.array_equal(flat_a["encoder.layer_0.self_attn.w_q"], c["encoder.layer_0.self_attn.w_q"])
    assert not np.array_equal(flat_a["src_embed.tokens"], c["src_embed.tokens"])


def test_params_are_on_the_backend_with_the_config_dtype(backend):
    params = _params(backend, CFG_INIT)
    for path, leaf in backends.tree_items(params):
        assert backends.backend_of(leaf) is backend, path
        assert str(leaf.dtype) == "float32", path


def test_weights_are_independent_draws(backend):
    """Each weight matrix gets its own key: no two are equal, not even across layers or stacks."""
    flat = backends.tree_flatten(backend.tree_to_numpy(_params(backend, CFG_INIT)))
    weights = {p: w for p, w in flat.items() if p.rsplit(".", 1)[-1].startswith("w_") or p.endswith("tokens")}
    first_rows = [tuple(np.round(w.ravel()[:8], 7)) for w in weights.values()]
    assert len(set(first_rows)) == len(weights)


def _init_on(b, cfg, seed=5):
    return backends.tree_flatten(b.tree_to_numpy(ft.init(b.random.key(seed), cfg)))


def _assert_same_params(actual: dict, expected: dict, dtype: str):
    """Two flattened param trees: the same paths, all of `dtype`, the same numbers."""
    assert list(actual) == list(expected)
    for path in expected:
        assert actual[path].dtype == expected[path].dtype == np.dtype(dtype), path
        _close(actual[path], expected[path], 1e-6 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_same_on_numpy_and_jax(numpy_backend, jax_backend, dtype):
    cfg = dataclasses.replace(CFG_INIT, dtype=dtype)
    _assert_same_params(_init_on(jax_backend, cfg), _init_on(numpy_backend, cfg), dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_traced_under_jit_same_as_drawn_on_host(jax_backend, dtype):
    """ft.init on a concrete JAX key draws on the host; under jit it is traced and runs in XLA.
    Both give the same numbers (float64 ranges may differ by an ulp under jit)."""
    cfg = dataclasses.replace(CFG_INIT, dtype=dtype)
    key = jax_backend.random.key(5)
    host = backends.tree_flatten(jax_backend.tree_to_numpy(ft.init(key, cfg)))
    traced = backends.tree_flatten(jax_backend.tree_to_numpy(jax_backend.jax.jit(lambda k: ft.init(k, cfg))(key)))
    _assert_same_params(traced, host, dtype)


# --- the parameter tree ---------------------------------------------------------------------------


def _documented_tree(cfg) -> dict:
    """{dotted path: shape} as model.py's docstring lays the tree out."""
    d, f, length = cfg.d_model, cfg.d_ff, cfg.max_len
    tree = {}
    for side, vocab in (("src_embed", cfg.src_vocab_size), ("tgt_embed", cfg.tgt_vocab_size)):
        tree[f"{side}.tokens"] = (vocab, d)
        if cfg.positional == "learned":
            tree[f"{side}.positions"] = (length, d)

    def attn(prefix):
        for n in "qkvo":
            tree[f"{prefix}.w_{n}"] = (d, d)
            tree[f"{prefix}.b_{n}"] = (d,)

    def ln(prefix):
        tree[f"{prefix}.scale"] = (d,)
        tree[f"{prefix}.bias"] = (d,)

    def ffn(prefix):
        tree.update({f"{prefix}.w_1": (d, f), f"{prefix}.b_1": (f,), f"{prefix}.w_2": (f, d), f"{prefix}.b_2": (d,)})

    for i in range(cfg.n_encoder_layers):
        p = f"encoder.layer_{i}"
        attn(f"{p}.self_attn"), ln(f"{p}.ln1"), ffn(f"{p}.ffn"), ln(f"{p}.ln2")
    for i in range(cfg.n_decoder_layers):
        p = f"decoder.layer_{i}"
        attn(f"{p}.self_attn"), ln(f"{p}.ln1"), attn(f"{p}.cross_attn"), ln(f"{p}.ln2"), ffn(f"{p}.ffn"), ln(f"{p}.ln3")
    if cfg.norm_first:
        ln("encoder.final_ln"), ln("decoder.final_ln")
    tree["out_proj.b"] = (cfg.tgt_vocab_size,)
    if not cfg.tie_embeddings:
        tree["out_proj.w"] = (d, cfg.tgt_vocab_size)
    return tree


@pytest.mark.parametrize(
    "flags",
    [
        {},
        dict(norm_first=True),
        dict(tie_embeddings=True),
        dict(positional="learned"),
        dict(norm_first=True, tie_embeddings=True, positional="learned", n_encoder_layers=1, n_decoder_layers=3),
    ],
    ids=["paper", "norm_first", "tied", "learned", "mixed"],
)
def test_param_tree_matches_docstring(numpy_backend, flags):
    cfg = dataclasses.replace(CFG32, **flags)
    params = ft.init(numpy_backend.random.key(0), cfg)
    got = {path: tuple(leaf.shape) for path, leaf in backends.tree_items(params)}
    assert got == _documented_tree(cfg)


def _param_shapes(backend, cfg):
    """The params tree of ft.init on the backend; on JAX only its shapes and dtypes (jax.eval_shape
    traces ft.init without compiling or running it)."""
    key = backend.random.key(0)
    if backend.name == "jax":
        return backend.jax.eval_shape(lambda k: ft.init(k, cfg), key)
    return ft.init(key, cfg)


def test_param_tree_exact_paths(backend):
    cfg = dataclasses.replace(CFG32, norm_first=True, positional="learned")
    params = _param_shapes(backend, cfg)
    _assert_shape(params["src_embed"]["tokens"], (11, 16))
    _assert_shape(params["tgt_embed"]["tokens"], (13, 16))
    _assert_shape(params["src_embed"]["positions"], (24, 16))
    _assert_shape(params["encoder"]["layer_1"]["self_attn"]["w_q"], (16, 16))
    _assert_shape(params["encoder"]["layer_0"]["ffn"]["w_1"], (16, 32))
    _assert_shape(params["encoder"]["layer_0"]["ffn"]["b_1"], (32,))
    _assert_shape(params["decoder"]["layer_1"]["ffn"]["w_2"], (32, 16))
    _assert_shape(params["decoder"]["layer_1"]["cross_attn"]["w_o"], (16, 16))
    _assert_shape(params["decoder"]["layer_0"]["ln3"]["scale"], (16,))
    _assert_shape(params["decoder"]["final_ln"]["bias"], (16,))
    _assert_shape(params["out_proj"]["w"], (16, 13))
    _assert_shape(params["out_proj"]["b"], (13,))
    assert {path: tuple(leaf.shape) for path, leaf in backends.tree_items(params)} == _documented_tree(cfg)
    assert {str(leaf.dtype) for leaf in backends.tree_leaves(params)} == {"float32"}


def test_param_init_values(backend):
    """Layer norms start as the identity, biases at zero, and the weights at their scales."""
    flat = backends.tree_flatten(backend.tree_to_numpy(_params(backend, CFG_INIT)))
    np.testing.assert_array_equal(flat["encoder.layer_0.ln1.scale"], np.ones(16))
    np.testing.assert_array_equal(flat["decoder.final_ln.bias"], np.zeros(16))
    np.testing.assert_array_equal(flat["out_proj.b"], np.zeros(16))
    np.testing.assert_array_equal(flat["decoder.layer_1.cross_attn.b_k"], np.zeros(16))
    limit = np.sqrt(6 / 32)  # Glorot uniform for a (16, 16) matrix
    w = flat["decoder.layer_1.cross_attn.w_k"]
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.8 * limit
    tokens = np.concatenate([flat["src_embed.tokens"].ravel(), flat["tgt_embed.tokens"].ravel()])
    assert 0.2 < tokens.std() < 0.3  # N(0, 1/d_model): std 0.25


def test_tied_embeddings_are_the_output_projection(numpy_backend):
    """With tie_embeddings, replacing the target table changes the output layer too: scaling the
    tokens of one target word by 0 zeroes that word's logit column (the output bias is zero)."""
    cfg = dataclasses.replace(CFG64, tie_embeddings=True)
    params = ft.init(numpy_backend.random.key(1), cfg)
    word = 12  # not in TGT's first row, so the decoder's input is unchanged for that row
    params["tgt_embed"]["tokens"] = numpy_backend.set_at(params["tgt_embed"]["tokens"], word, 0.0)
    logits = ft.apply(params, SRC[:1], TGT[:1, 2:], cfg)
    np.testing.assert_array_equal(logits[..., word], 0.0)
    assert np.all(np.abs(np.delete(logits, word, axis=-1)) > 0)


# --- NumPy against JAX ----------------------------------------------------------------------------


def _cross_backend(numpy_backend, jax_backend, cfg, train):
    params_np = ft.init(numpy_backend.random.key(2), cfg)
    params_jax = jax_backend.tree_asarray(params_np)
    rtol = _rtol(cfg)
    eval_np = _logits(numpy_backend, params_np, SRC, TGT, cfg)
    _assert_shape(eval_np, (2, 6, cfg.tgt_vocab_size))
    assert eval_np.dtype == np.dtype(cfg.dtype)
    if not train:
        _close(_logits(jax_backend, params_jax, SRC, TGT, cfg), eval_np, rtol)
        return
    train_np = _logits(numpy_backend, params_np, SRC, TGT, cfg, train=True, key=numpy_backend.random.key(9))
    train_jax = _logits(jax_backend, params_jax, SRC, TGT, cfg, train=True, key=jax_backend.random.key(9))
    _close(train_jax, train_np, rtol)
    assert not np.allclose(train_np, eval_np, rtol=1e-3)  # dropout really was on


@pytest.mark.parametrize("flags", VARIANTS)
def test_same_logits_on_numpy_and_jax(numpy_backend, jax_backend, flags):
    _cross_backend(numpy_backend, jax_backend, dataclasses.replace(CFG32, **flags), train=False)


@pytest.mark.slow
@pytest.mark.parametrize("flags", VARIANTS)
def test_same_logits_on_numpy_and_jax_with_dropout(numpy_backend, jax_backend, flags):
    _cross_backend(numpy_backend, jax_backend, dataclasses.replace(CFG32, **flags), train=True)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "dropout"])
def test_same_logits_on_numpy_and_jax_float64(numpy_backend, jax_backend, train):
    _cross_backend(numpy_backend, jax_backend, CFG64, train)


# --- invariances (float64, tight tolerances) ------------------------------------------------------


@pytest.fixture(scope="module")
def params64(backend, numpy_backend):
    """Drawn on NumPy and moved to the backend (drawing on the backend is tested above)."""
    return backend.tree_asarray(ft.init(numpy_backend.random.key(7), CFG64))


def test_logits_shape_and_finite(backend, params64):
    logits = ft.apply(params64, SRC, TGT, CFG64)
    _assert_shape(logits, (2, 6, 13))
    assert str(logits.dtype) == "float64"
    assert backends.backend_of(logits) is backend
    assert np.all(np.isfinite(backend.to_numpy(logits)))


def test_causality(backend, params64):
    """Changing tgt_in after position t leaves the logits at positions <= t unchanged."""
    base = _logits(backend, params64, SRC, TGT, CFG64)
    rng = np.random.default_rng(0)
    for t in range(TGT.shape[1] - 1):
        changed = TGT.copy()
        changed[:, t + 1 :] = rng.integers(1, 13, size=changed[:, t + 1 :].shape)
        changed[:, t + 1] = (TGT[:, t + 1] % 12) + 1  # surely different at t + 1 (and never padding)
        assert np.all(changed[:, t + 1] != TGT[:, t + 1])
        out = _logits(backend, params64, SRC, changed, CFG64)
        _close(out[:, : t + 1], base[:, : t + 1], 1e-12)
        assert not np.allclose(out[:, t + 1], base[:, t + 1], rtol=1e-6, atol=1e-9)  # the future did change


def test_source_is_not_causal(backend, params64):
    """The encoder sees the whole source: changing the last real source token changes every logit."""
    base = _logits(backend, params64, SRC, TGT, CFG64)
    changed = SRC.copy()
    changed[1, -1] = 1
    out = _logits(backend, params64, changed, TGT, CFG64)
    _close(out[0], base[0], 1e-12)  # the other row is untouched
    assert np.all(np.abs(out[1] - base[1]).max(axis=-1) > 1e-9)


def test_appending_source_padding_changes_nothing(backend, params64):
    base = _logits(backend, params64, SRC, TGT, CFG64)
    padded = np.concatenate([SRC, np.full((2, 3), PAD, SRC.dtype)], axis=1)
    _close(_logits(backend, params64, padded, TGT, CFG64), base, 1e-12)
    # And a real token there instead of padding does change the logits.
    not_padded = padded.copy()
    not_padded[:, -1] = 5
    assert not np.allclose(_logits(backend, params64, not_padded, TGT, CFG64), base, rtol=1e-6)


def test_each_row_gives_what_it_gives_alone(backend, params64):
    batch = _logits(backend, params64, SRC, TGT, CFG64)
    for i in range(SRC.shape[0]):
        alone = _logits(backend, params64, SRC[i : i + 1], TGT[i : i + 1], CFG64)
        _close(alone[0], batch[i], 1e-12)
    assert not np.allclose(batch[0], batch[1])


def test_encode_then_decode_equals_apply(backend, params64):
    memory = ft.encode(params64, SRC, CFG64)
    _assert_shape(memory, (2, 7, 16))
    logits = backend.to_numpy(ft.decode(params64, memory, SRC, TGT, CFG64))
    _close(logits, _logits(backend, params64, SRC, TGT, CFG64), 1e-12)
    with pytest.raises(ValueError, match="memory has shape"):
        ft.decode(params64, memory[:, :5], SRC, TGT, CFG64)


def _zero_norm(backend, params, stack, name):
    """A copy of params with LayerNorm `stack.name` set to scale 0, bias 0: its output is all zeros."""
    flat = backends.tree_flatten(backend.tree_to_numpy(params))
    for leaf in ("scale", "bias"):
        flat[f"{stack}.{name}.{leaf}"] = np.zeros_like(flat[f"{stack}.{name}.{leaf}"])
    flat["out_proj.b"] = np.linspace(-1.0, 1.0, flat["out_proj.b"].shape[0])
    return backend.tree_asarray(backends.tree_unflatten(flat))


def _check_last_norms_feed_the_output(backend, params, cfg, enc_norm, dec_norm):
    # The decoder's last LayerNorm feeds the output projection: zeroed, the logits are its bias alone.
    zeroed = _zero_norm(backend, params, "decoder", dec_norm)
    logits = _logits(backend, zeroed, SRC, TGT, cfg)
    _close(logits, np.broadcast_to(np.linspace(-1.0, 1.0, 13), logits.shape), 1e-12)
    # The encoder's last LayerNorm is the memory: zeroed, the source tokens no longer matter.
    zeroed = _zero_norm(backend, params, "encoder", enc_norm)
    other_src = np.where(SRC != PAD, (SRC % 10) + 1, PAD)  # the same padding, other words
    _close(_logits(backend, zeroed, other_src, TGT, cfg), _logits(backend, zeroed, SRC, TGT, cfg), 1e-12)
    assert not np.allclose(_logits(backend, params, other_src, TGT, cfg), _logits(backend, params, SRC, TGT, cfg))


def test_post_norm_last_layer_norms_feed_the_output(backend, params64):
    _check_last_norms_feed_the_output(backend, params64, CFG64, "layer_1.ln2", "layer_1.ln3")


@pytest.mark.slow  # a config of its own: one more program to compile on JAX
def test_pre_norm_final_layer_norms_feed_the_output(backend, numpy_backend):
    cfg = dataclasses.replace(CFG64, norm_first=True)
    params = backend.tree_asarray(ft.init(numpy_backend.random.key(7), cfg))
    _check_last_norms_feed_the_output(backend, params, cfg, "final_ln", "final_ln")


def test_dropout_in_training(backend, params64):
    eval_logits = _logits(backend, params64, SRC, TGT, CFG64)
    a = _logits(backend, params64, SRC, TGT, CFG64, train=True, key=backend.random.key(1))
    b = _logits(backend, params64, SRC, TGT, CFG64, train=True, key=backend.random.key(1))
    c = _logits(backend, params64, SRC, TGT, CFG64, train=True, key=backend.random.key(2))
    np.testing.assert_array_equal(a, b)  # same key, same dropout masks
    assert not np.allclose(a, c, rtol=1e-3)
    assert not np.allclose(a, eval_logits, rtol=1e-3)


@pytest.mark.slow  # on JAX a key where there was None is a new program to compile
def test_eval_ignores_the_key(backend, params64):
    np.testing.assert_array_equal(
        _logits(backend, params64, SRC, TGT, CFG64, train=False, key=backend.random.key(1)),
        _logits(backend, params64, SRC, TGT, CFG64),
    )


@pytest.mark.slow
def test_loss_is_finite_and_ignores_padding(backend, params64):
    tgt_out = np.concatenate([TGT[:, 1:], np.zeros((2, 1), TGT.dtype)], axis=1)
    batch = {"src": SRC, "tgt_in": TGT, "tgt_out": tgt_out}
    loss = float(ft.loss_fn(params64, batch, CFG64))
    assert np.isfinite(loss) and loss > 0
    # Against cross-entropy computed here with label smoothing 0.1 over the real target tokens.
    logits = _logits(backend, params64, SRC, TGT, CFG64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    real = tgt_out != PAD
    nll = -np.take_along_axis(log_p, tgt_out[..., None].astype(np.int64), -1)[..., 0]
    per_token = 0.9 * nll - 0.1 * log_p.mean(-1)
    np.testing.assert_allclose(loss, per_token[real].sum() / real.sum(), rtol=1e-10)


# --- the Array API standard -----------------------------------------------------------------------


def test_forward_on_array_api_strict(backend):
    aas = pytest.importorskip("array_api_strict")
    params = backend.tree_to_numpy(_params(backend, CFG_INIT))
    expected = ft.apply(params, SRC, TGT, CFG_INIT)
    strict = backends.tree_map(lambda leaf: aas.asarray(np.asarray(leaf)), params)
    logits = ft.apply(strict, aas.asarray(SRC), aas.asarray(TGT), CFG_INIT)
    assert backends.array_namespace(logits) is aas
    _close(np.asarray(logits), expected, 1e-5)


# --- bad input ------------------------------------------------------------------------------------


def test_config_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"d_model \(18\) must be divisible by n_heads \(4\)"):
        dataclasses.replace(CFG32, d_model=18)


@pytest.mark.parametrize(
    "field",
    [
        "src_vocab_size",
        "tgt_vocab_size",
        "d_model",
        "n_heads",
        "d_ff",
        "n_encoder_layers",
        "n_decoder_layers",
        "max_len",
    ],
)
@pytest.mark.parametrize("value", [0, -3, 2.0, True])
def test_config_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
        dataclasses.replace(CFG32, **{field: value})


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_config_drop_rate_out_of_range(rate):
    with pytest.raises(ValueError, match="drop_rate must be in"):
        dataclasses.replace(CFG32, drop_rate=rate)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("dtype", "float16", "dtype"),
        ("activation", "tanh", "activation"),
        ("positional", "rope", "positional"),
        ("pad_id", 11, "pad_id"),
        ("pad_id", -1, "pad_id"),
    ],
)
def test_config_other_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CFG32, **{field: value})


def test_config_accepts_boundaries():
    assert dataclasses.replace(CFG32, drop_rate=0.0).drop_rate == 0.0
    assert dataclasses.replace(CFG32, pad_id=10).pad_id == 10
    assert CFG32.d_head == 4
    assert ft.TransformerConfig.from_dict(CFG32.to_dict()) == CFG32
    with pytest.raises(ValueError, match="unknown"):
        ft.TransformerConfig.from_dict({**CFG32.to_dict(), "n_layers": 3})


@pytest.fixture(scope="module")
def params32(backend, numpy_backend):
    return backend.tree_asarray(ft.init(numpy_backend.random.key(0), CFG32))


@pytest.mark.parametrize(
    "which, row, col, value, match",
    [
        ("src", 0, 2, -1, r"src holds token id -1 at \[0, 2\]"),
        ("src", 1, 6, 11, r"src holds token id 11 at \[1, 6\], outside the vocabulary \[0, 11\)"),
        ("tgt_in", 0, 0, -5, r"tgt_in holds token id -5 at \[0, 0\]"),
        ("tgt_in", 1, 3, 13, r"tgt_in holds token id 13 at \[1, 3\], outside the vocabulary \[0, 13\)"),
    ],
)
def test_token_ids_out_of_range(params32, which, row, col, value, match):
    src, tgt = SRC.copy(), TGT.copy()
    (src if which == "src" else tgt)[row, col] = value
    with pytest.raises(ValueError, match=match):
        ft.apply(params32, src, tgt, CFG32)


def test_vocabularies_are_not_swapped(backend, params32):
    """12 is a target word but not a source word: fine in tgt_in, an error in src."""
    tgt = TGT.copy()
    tgt[0, 0] = 12
    assert _logits(backend, params32, SRC, tgt, CFG32).shape == (2, 6, 13)
    src = SRC.copy()
    src[0, 0] = 12
    with pytest.raises(ValueError, match="src holds token id 12"):
        ft.apply(params32, src, TGT, CFG32)


@pytest.mark.parametrize("which", ["src", "tgt_in"])
def test_sequence_longer_than_max_len(params32, which):
    long = np.ones((2, 25), np.int32)
    src, tgt = (long, TGT) if which == "src" else (SRC, long)
    with pytest.raises(ValueError, match=f"{which} has length 25, longer than max_len=24"):
        ft.apply(params32, src, tgt, CFG32)


def test_wrong_rank(params32):
    with pytest.raises(ValueError, match=r"src must be a 2-D integer array.*got shape \(7,\)"):
        ft.apply(params32, SRC[0], TGT, CFG32)
    with pytest.raises(ValueError, match="tgt_in must be a 2-D"):
        ft.apply(params32, SRC, TGT[None], CFG32)


def test_float_token_ids(params32):
    with pytest.raises(TypeError, match="src must hold integer token ids, got dtype float"):
        ft.apply(params32, SRC.astype(np.float32), TGT, CFG32)
    with pytest.raises(TypeError, match="tgt_in must hold integer token ids"):
        ft.apply(params32, SRC, TGT.astype(np.float64), CFG32)


def test_empty_input(params32):
    with pytest.raises(ValueError, match="empty"):
        ft.apply(params32, SRC[:, :0], TGT, CFG32)


def test_train_without_key(params32):
    with pytest.raises(ValueError, match="needs a key for dropout"):
        ft.apply(params32, SRC, TGT, CFG32, train=True)
    with pytest.raises(ValueError, match="needs a key for dropout"):
        ft.loss_fn(params32, {"src": SRC, "tgt_in": TGT, "tgt_out": TGT}, CFG32, train=True)


@pytest.mark.slow  # a config of its own: one more program to compile on JAX
def test_train_without_key_is_fine_without_dropout(backend, params64):
    cfg = dataclasses.replace(CFG64, drop_rate=0.0)
    _close(_logits(backend, params64, SRC, TGT, cfg, train=True), _logits(backend, params64, SRC, TGT, CFG64), 1e-12)


def test_mismatched_batch_sizes(params32):
    with pytest.raises(ValueError, match="src has batch size 2 but tgt_in has 1"):
        ft.apply(params32, SRC, TGT[:1], CFG32)
    with pytest.raises(ValueError, match="batch size"):
        ft.loss_fn(params32, {"src": SRC, "tgt_in": TGT, "tgt_out": TGT[:1]}, CFG32)


def test_loss_batch_missing_tgt_out(params32):
    with pytest.raises(ValueError, match=r"batch is missing \['tgt_out'\]"):
        ft.loss_fn(params32, {"src": SRC, "tgt_in": TGT}, CFG32)


def test_loss_bad_tgt_out(params32):
    bad = TGT.copy()
    bad[0, 1] = 13
    with pytest.raises(ValueError, match="tgt_out holds token id 13"):
        ft.loss_fn(params32, {"src": SRC, "tgt_in": TGT, "tgt_out": bad}, CFG32)
    with pytest.raises(ValueError, match="must have one shape"):
        ft.loss_fn(params32, {"src": SRC, "tgt_in": TGT, "tgt_out": TGT[:, :5]}, CFG32)


def test_params_of_another_dtype(params32):
    with pytest.raises(TypeError, match="cfg.dtype is 'float64'"):
        ft.apply(params32, SRC, TGT, CFG64)
