"""The parts and their combinators: every backward against finite differences (float64) and jax.vjp
(check_part), the structure checks that turn a wrong gradient into an error, the input checks, the
decoding step against the full forward pass, and the paper's model recomposed from the parts
against the numbers the hand-written model gave before it was a composition."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import backends
import functional_transformer as ft
from backends import tree_flatten
from functional_transformer import models
from functional_transformer import parts as P

HAS_JAX = importlib.util.find_spec("jax") is not None
ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
NP = backends.get_backend("numpy")
B, T, S, D, H = 2, 5, 4, 8, 2
F64 = "float64"

pytestmark = pytest.mark.usefixtures("x64")


def _x(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _randomized(params, seed):
    """No zero biases or unit scales to hide a slip in a backward."""
    rng = np.random.default_rng(seed)
    return backends.tree_map(lambda leaf: np.asarray(leaf) + 0.1 * rng.standard_normal(np.shape(leaf)), params)


def _on(backend, tree):
    if isinstance(tree, tuple):
        return tuple(_on(backend, item) for item in tree)
    if isinstance(tree, dict):
        return backend.tree_asarray(tree)
    return backend.asarray(tree)


KEY_MASK = np.array([[True] * T, [True, True, True, False, False]])  # (B, T): the second row padded
MEMORY_MASK = np.array([[True] * S, [True, True, False, False]])  # (B, S)
IDS = np.array([[1, 3, 4, 5, 2], [1, 6, 7, 0, 0]])


def _residual(sublayer, norm_first, **kw):
    return P.Residual(sublayer, D, norm_first=norm_first, drop_rate=0.2, dtype=F64, **kw)


def _block(norm_first):
    return P.Serial(
        _residual(P.SelfAttention(D, H, causal=True, dtype=F64), norm_first, name="attn", norm_name="ln1"),
        _residual(P.FeedForward(D, 12, "gelu", F64), norm_first, name="ffn", norm_name="ln2"),
    )


def _cross_block(norm_first):
    return P.Serial(
        _residual(P.SelfAttention(D, H, causal=True, dtype=F64), norm_first, name="self_attn", norm_name="ln1"),
        _residual(P.CrossAttention(D, H, dtype=F64), norm_first, name="cross_attn", norm_name="ln2"),
        _residual(P.FeedForward(D, 12, "relu", F64), norm_first, name="ffn", norm_name="ln3"),
    )


# name -> (part, input, side inputs, train)
CASES = {
    "linear": (P.Linear(D, 3, dtype=F64), _x(1, (B, T, D)), {}, False),
    "linear_no_bias": (P.Linear(D, 3, bias=False, dtype=F64), _x(1, (B, T, D)), {}, False),
    "layer_norm": (P.LayerNorm(D, F64), _x(2, (B, T, D)), {}, False),
    "relu": (P.Activation("relu"), _x(3, (B, T, D)), {}, False),
    "gelu": (P.Activation("gelu"), _x(3, (B, T, D)), {}, False),
    "feed_forward": (P.FeedForward(D, 12, "gelu", F64), _x(4, (B, T, D)), {}, False),
    "dropout": (P.Dropout(0.3), _x(5, (B, T, D)), {}, True),
    "embedding_sinusoidal": (P.Embedding(9, D, 6, dtype=F64), IDS, {}, False),
    "embedding_learned": (P.Embedding(9, D, 6, "learned", F64), IDS, {}, False),
    "self_attention_padding": (P.SelfAttention(D, H, dtype=F64), _x(6, (B, T, D)), {"mask": KEY_MASK}, False),
    "self_attention_causal_padding": (
        P.SelfAttention(D, H, causal=True, dtype=F64),
        _x(6, (B, T, D)),
        {"mask": KEY_MASK},
        False,
    ),
    "self_attention_full_mask": (
        P.SelfAttention(D, H, dtype=F64),
        _x(6, (B, T, D)),
        {"mask": np.tril(np.ones((T, T), bool))[None, None] & KEY_MASK[:, None, None, :]},
        False,
    ),
    "cross_attention": (
        P.CrossAttention(D, H, dtype=F64),
        (_x(7, (B, T, D)), _x(8, (B, S, D))),
        {"memory_mask": MEMORY_MASK},
        False,
    ),
    "mean_pool": (P.MeanPool(), _x(9, (B, T, D)), {"mask": KEY_MASK}, False),
    "residual_postnorm": (_residual(P.FeedForward(D, 12, "relu", F64), False), _x(10, (B, T, D)), {}, True),
    "residual_prenorm": (_residual(P.FeedForward(D, 12, "relu", F64), True), _x(10, (B, T, D)), {}, True),
    "residual_over_a_stream": (
        _residual(P.CrossAttention(D, H, dtype=F64), True),
        (_x(11, (B, T, D)), _x(12, (B, S, D))),
        {"memory_mask": MEMORY_MASK},
        True,
    ),
    "serial_block": (_block(True), _x(13, (B, T, D)), {"mask": KEY_MASK}, True),
    "repeat_with_final": (
        P.Repeat(_block(True), 2, final=P.LayerNorm(D, F64)),
        _x(14, (B, T, D)),
        {"mask": KEY_MASK},
        True,
    ),
    "repeat_of_cross_blocks": (
        P.Repeat(_cross_block(False), 2),
        (_x(15, (B, T, D)), _x(16, (B, S, D))),
        {"mask": KEY_MASK, "memory_mask": MEMORY_MASK},
        True,
    ),
    "parallel_and_select": (
        P.Serial(P.Parallel(("a", P.Linear(D, D, dtype=F64)), ("b", P.LayerNorm(D, F64))), P.Select(1)),
        (_x(17, (B, T, D)), _x(18, (B, S, D))),
        {},
        False,
    ),
    "gpt_from_parts": (
        P.Serial(
            ("embed", P.Embedding(9, D, 6, "learned", F64)),
            P.Dropout(0.1),
            ("blocks", P.Repeat(_block(True), 2, final=P.LayerNorm(D, F64))),
            ("head", P.Linear(D, 9, dtype=F64)),
        ),
        IDS,
        {},
        True,
    ),
}


def _case(backend, name):
    part, x, side, train = CASES[name]
    params = _randomized(part.init(NP.random.key(3)), 42)
    return part, _on(backend, params), _on(backend, x), {k: backend.asarray(v) for k, v in side.items()}, train


# On JAX each case compiles eagerly op by op: the default run keeps the combinators' composite cases.
FAST_ON_JAX = {
    "linear",
    "self_attention_causal_padding",
    "residual_over_a_stream",
    "repeat_of_cross_blocks",
    "gpt_from_parts",
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=(pytest.mark.slow,) if ON_JAX and n not in FAST_ON_JAX else ()) for n in CASES]
)
def test_every_part_backward_matches_finite_differences_and_jax(backend, name):
    part, params, x, side, train = _case(backend, name)
    errors = P.check_part(part, params, x, train=train, key=backend.random.key(5), rtol=1e-6, **side)
    assert errors["finite_differences"] < 1e-6
    if HAS_JAX:
        assert errors["jax"] < 1e-10


@pytest.mark.parametrize("family", ["decoder", "encoder", "encoder_decoder"])
def test_the_three_families_backward_matches_jax(backend, family):
    """The models as parts: their hand-written backward against finite differences and jax.vjp."""
    if family == "decoder":
        part = models.decoder_only.for_config(
            models.DecoderConfig(vocab_size=9, d_model=D, n_heads=H, d_ff=12, n_layers=2, max_len=6, dtype=F64)
        )
        x = IDS
    elif family == "encoder":
        part = models.encoder_only.for_config(
            models.EncoderConfig(
                vocab_size=9, n_classes=3, d_model=D, n_heads=H, d_ff=12, n_layers=2, max_len=6, dtype=F64
            )
        )
        x = IDS
    else:
        part = models.encoder_decoder.for_config(
            ft.TransformerConfig(
                src_vocab_size=9,
                tgt_vocab_size=9,
                d_model=D,
                n_heads=H,
                d_ff=12,
                n_encoder_layers=1,
                n_decoder_layers=2,
                max_len=6,
                dtype=F64,
                tie_embeddings=True,
                norm_first=True,
            )
        )
        x = (IDS, IDS[:, :4])
    params = _on(backend, _randomized(part.init(NP.random.key(3)), 7))
    errors = P.check_part(part, params, _on(backend, x), train=True, key=backend.random.key(5), rtol=1e-6)
    assert errors["finite_differences"] < 1e-6
    if HAS_JAX:
        assert errors["jax"] < 1e-10


# --- a gradient of the wrong structure is an error naming the part -------------------------------


@dataclasses.dataclass(frozen=True)
class _ForgetsKeysAndValues(P.SelfAttention):
    """The slip the old residual let through: attention's three cotangents passed where one is due."""

    def bwd(self, params, saved, dy):
        from functional_transformer.layers import attention

        return attention.bwd(saved, dy, self.n_heads)  # (dparams, dx_q, dx_kv): one value too many


@dataclasses.dataclass(frozen=True)
class _DropsABias(P.Linear):
    def bwd(self, params, saved, dy):
        dparams, dx = super().bwd(params, saved, dy)
        return {"w": dparams["w"]}, dx


@dataclasses.dataclass(frozen=True)
class _WrongShape(P.Linear):
    def bwd(self, params, saved, dy):
        dparams, dx = super().bwd(params, saved, dy)
        return dparams, dx[:, :1]


@dataclasses.dataclass(frozen=True)
class _DropsTheMemory(P.CrossAttention):
    def bwd(self, params, saved, dy):
        dparams, (dx, _) = super().bwd(params, saved, dy)
        return dparams, dx


@pytest.mark.parametrize(
    "sublayer, x, side, message",
    [
        (_ForgetsKeysAndValues(D, H, dtype=F64), _x(1, (B, T, D)), {}, "must return (dparams, dx), got 3 values"),
        (_DropsABias(D, D, dtype=F64), _x(1, (B, T, D)), {}, "missing ['b']"),
        (_WrongShape(D, D, dtype=F64), _x(1, (B, T, D)), {}, "dx must mirror x"),
        (_DropsTheMemory(D, H, dtype=F64), (_x(1, (B, T, D)), _x(2, (B, S, D))), {}, "dx must mirror x"),
    ],
)
def test_a_gradient_of_the_wrong_structure_is_an_error_naming_the_part(backend, sublayer, x, side, message):
    part = P.Residual(sublayer, D, dtype=F64)
    params = _on(backend, part.init(NP.random.key(0)))
    x = _on(backend, x)
    y, saved = part.fwd(params, x)
    dy = tuple(backend.xp.ones_like(item) for item in y) if isinstance(y, tuple) else backend.xp.ones_like(y)
    with pytest.raises(P.GradientStructureError) as err:
        part.bwd(params, saved, dy)
    assert message in str(err.value) and type(sublayer).__name__ in str(err.value)


def test_serial_reports_a_gradient_no_part_returned(backend):
    part = P.Serial(("a", P.Linear(D, D, dtype=F64)), P.Activation("relu"))

    @dataclasses.dataclass(frozen=True)
    class Silent(P.Activation):
        def bwd(self, params, saved, dy):
            return {"stray": dy}, dy

    wrong = P.Serial(("a", P.Linear(D, D, dtype=F64)), Silent("relu"))
    params = _on(backend, part.init(NP.random.key(0)))
    x = backend.asarray(_x(1, (B, T, D)))
    _, saved = wrong.fwd(params, x)
    with pytest.raises(P.GradientStructureError, match="stray"):
        wrong.bwd(params, saved, backend.xp.ones((B, T, D)))


# --- the input checks -----------------------------------------------------------------------------


def test_heads_that_do_not_divide_the_width_are_an_error():
    with pytest.raises(ValueError, match=r"d_model \(8\) must be divisible by n_heads \(3\)"):
        P.SelfAttention(8, 3)
    with pytest.raises(ValueError, match="n_heads"):
        models.DecoderConfig(vocab_size=10, d_model=8, n_heads=3)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.ones((B,), bool), "rank 1"),
        (np.ones((T, B), bool), r"key-padding mask must be \(batch, keys\)"),  # (B, S) with B == T swapped
        (np.ones((B, 1, T, T + 1), bool), "a full mask must broadcast"),
        (np.ones((B, T)), "must be a boolean array"),
    ],
)
def test_a_mask_of_the_wrong_shape_is_an_error_naming_it(backend, mask, message):
    part = P.SelfAttention(D, H, dtype=F64)
    params = _on(backend, part.init(NP.random.key(0)))
    with pytest.raises((ValueError, TypeError), match=message) as err:
        part.fwd(params, backend.asarray(_x(1, (B, T, D))), mask=backend.asarray(mask))
    assert "mask" in str(err.value)


def test_ids_out_of_range_are_an_error_naming_them(backend):
    part = P.Embedding(9, D, 6, name="prompt")
    params = part.init(backend.random.key(0))
    with pytest.raises(ValueError, match=r"prompt holds token id 9 at \[0, 1\]"):
        part.fwd(params, backend.asarray(np.array([[1, 9]])))
    with pytest.raises(ValueError, match="longer than max_len=6"):
        part.fwd(params, backend.asarray(np.ones((1, 7), dtype=np.int32)))


def test_a_width_mismatch_names_the_part(backend):
    part = P.Linear(D, 3)
    with pytest.raises(ValueError, match=r"Linear.*has 5 features on its last axis, expected 8"):
        part.fwd(part.init(backend.random.key(0)), backend.xp.ones((2, 5)))


def test_loss_targets_must_match_the_logits(backend):
    with pytest.raises(ValueError, match=r"targets have shape \(2, 3\); logits \(2, 5\) need targets of shape \(2,\)"):
        ft.loss.fwd(backend.xp.zeros((2, 5)), backend.xp.zeros((2, 3), dtype=backend.xp.int32), None)


def test_cross_entropy_over_classes_with_and_without_an_ignore_index(backend):
    """(B, V) logits, as a classifier has, with no ignore index: the mean of -log p[y]."""
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = np.array([0, 2])
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(log_p[0, 0] + log_p[1, 2]) / 2
    value, metrics, _ = ft.loss.fwd(backend.asarray(logits), backend.asarray(targets), None)
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    assert int(metrics["n_tokens"]) == 2 and float(metrics["accuracy"]) == 0.5
    value, metrics, _ = ft.loss.fwd(backend.asarray(logits), backend.asarray(targets), 2)  # class 2 ignored
    np.testing.assert_allclose(float(value), -log_p[0, 0], rtol=1e-6)


# --- properties --------------------------------------------------------------------------------


def test_a_causal_model_never_looks_ahead(backend):
    cfg = models.DecoderConfig(vocab_size=9, d_model=D, n_heads=H, d_ff=12, n_layers=2, max_len=6)
    model = models.decoder_only.for_config(cfg)
    params = model.init(backend.random.key(0))
    ids = np.array([[1, 3, 4, 5, 6]])
    changed = ids.copy()
    changed[0, 3] = 8
    a, b = (np.asarray(model.apply(params, backend.asarray(i))) for i in (ids, changed))
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert np.abs(a[:, 3:] - b[:, 3:]).max() > 1e-3


def test_the_classifier_ignores_padding(backend):
    """Appending pad tokens changes neither the logits nor the gradients (float64)."""
    cfg = models.EncoderConfig(
        vocab_size=9, n_classes=3, d_model=D, n_heads=H, d_ff=12, n_layers=2, max_len=8, dtype=F64, drop_rate=0.0
    )
    model = models.encoder_only.for_config(cfg)
    params = model.init(backend.random.key(0))
    short, padded = np.array([[3, 4, 5]]), np.array([[3, 4, 5, 0, 0]])
    (a, saved_a), (b, saved_b) = (model.fwd(params, backend.asarray(i)) for i in (short, padded))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    g = backend.asarray(np.array([[1.0, -2.0, 0.5]]))
    for (path, x), (_, y) in zip(
        backends.tree_items(model.bwd(params, saved_a, g)[0]), backends.tree_items(model.bwd(params, saved_b, g)[0])
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-12, err_msg=path)


def test_the_decoding_step_equals_the_full_forward_pass(backend):
    cfg = models.DecoderConfig(
        vocab_size=9,
        d_model=D,
        n_heads=H,
        d_ff=12,
        n_layers=2,
        max_len=8,
        dtype=F64,
        norm_first=False,
        tie_embeddings=False,
        positional="sinusoidal",
    )
    model = models.decoder_only.for_config(cfg)
    params = model.init(backend.random.key(1))
    ids = backend.asarray(np.array([[1, 3, 4, 5, 6, 7], [1, 8, 7, 6, 5, 4]]))
    full = np.asarray(model.apply(params, ids))
    cache = model.init_cache(params, ids[:, :1], 8)
    for t in range(ids.shape[1]):
        logits, cache = model.step(params, ids[:, t : t + 1], cache, backend.asarray(t))
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, t], rtol=1e-10, atol=1e-12)


# --- the paper's model, recomposed ----------------------------------------------------------------

REFERENCE = Path(__file__).parent / "data" / "encoder_decoder_before_parts.npz"
REFERENCE_CONFIGS = {
    "postnorm": {},
    "prenorm_tied_learned_gelu": dict(norm_first=True, tie_embeddings=True, positional="learned", activation="gelu"),
}


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_the_recomposed_encoder_decoder_gives_the_numbers_of_the_hand_chained_one(backend, name):
    """The reference holds the logits (train mode, dropout on) and the hand-written gradients of the
    encoder-decoder as it was before it was a composition of parts (written by that code, float64,
    fixed keys). The composition draws the same params and dropout masks and runs the same operations
    in the same order: on the machine that made the file the numbers were bit-identical; a different
    BLAS may round a matmul differently, hence the 1e-12."""
    ref = np.load(REFERENCE)
    cfg = ft.TransformerConfig(
        src_vocab_size=13,
        tgt_vocab_size=11,
        d_model=8,
        n_heads=2,
        d_ff=12,
        n_encoder_layers=2,
        n_decoder_layers=2,
        max_len=8,
        dtype="float64",
        drop_rate=0.1,
        **REFERENCE_CONFIGS[name],
    )
    params = ft.init(backend.random.key(1), cfg)
    batch = {k: ref[f"{name}/{k}"] for k in ("src", "tgt_in", "tgt_out")}
    key = backend.random.key(5)
    logits = ft.apply(params, batch["src"], batch["tgt_in"], cfg, train=True, key=key)
    np.testing.assert_allclose(np.asarray(logits), ref[f"{name}/logits_train"], rtol=1e-12, atol=1e-13)
    grads, _ = ft.grad_and_metrics(params, batch, cfg, train=True, key=key, method="vjp")
    flat = tree_flatten(grads)
    assert sorted(flat) == sorted(k.split("/grads/")[1] for k in ref.files if "/grads/" in k and k.startswith(name))
    for path, value in flat.items():
        np.testing.assert_allclose(np.asarray(value), ref[f"{name}/grads/{path}"], rtol=1e-11, atol=1e-13, err_msg=path)


# --- JAX: the bridge, and the same sampled tokens on both backends ---------------------------------


@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
def test_custom_vjp_makes_jax_grad_run_the_hand_written_backward(jax_backend):
    jax = jax_backend.jax
    calls = []

    @dataclasses.dataclass(frozen=True)
    class Counted(P.FeedForward):
        def bwd(self, params, saved, dy):
            calls.append(1)
            return super().bwd(params, saved, dy)

    part = P.Serial(("ffn", Counted(D, 12, "gelu", F64)), ("ln", P.LayerNorm(D, F64)))
    params = jax_backend.tree_asarray(_randomized(part.init(NP.random.key(0)), 3))
    x = jax_backend.asarray(_x(1, (B, T, D)))
    fn = P.custom_vjp(part)
    ours = jax.grad(lambda p: jax.numpy.sum(fn(p, x) ** 2))(params)
    reference = jax.grad(lambda p: jax.numpy.sum(part.apply(p, x) ** 2))(params)
    assert calls, "jax.grad did not call the hand-written backward"
    for (path, a), (_, b) in zip(backends.tree_items(ours), backends.tree_items(reference)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12, err_msg=path)


@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
@pytest.mark.parametrize(
    "settings",
    [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.8, top_k=4), dict(temperature=1.2, top_p=0.7)],
)
def test_sampling_gives_the_same_tokens_on_both_backends(settings):
    cfg = models.DecoderConfig(vocab_size=13, d_model=D, n_heads=H, d_ff=12, n_layers=2, max_len=16)
    prompts = np.array([[1, 3, 4, 0], [1, 6, 0, 0], [1, 5, 7, 9]])
    tokens = {}
    for name in ("numpy", "jax"):
        backend = backends.get_backend(name)
        params = backend.tree_asarray(models.decoder_only.for_config(cfg).init(NP.random.key(2)))
        tokens[name] = np.asarray(
            ft.sampling.generate(
                params, cfg, prompts, max_new_tokens=10, eos_id=2, key=backend.random.key(9), **settings
            )
        )
    np.testing.assert_array_equal(tokens["numpy"], tokens["jax"])
    np.testing.assert_array_equal(tokens["numpy"][:, :2], prompts[:, :2])  # the prompts are kept


def test_sampling_filters(backend):
    logits = backend.asarray(np.log(np.array([[0.5, 0.3, 0.15, 0.05]])))
    p = np.asarray(ft.sampling.filtered_probabilities(logits, top_k=2))
    np.testing.assert_allclose(p, [[0.625, 0.375, 0, 0]], rtol=1e-6)
    p = np.asarray(ft.sampling.filtered_probabilities(logits, top_p=0.85))  # 0.5 + 0.3 < 0.85: three kept
    np.testing.assert_allclose(p, [[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="top_p must be in"):
        ft.sampling.generate({}, None, np.zeros((1, 1)), max_new_tokens=1, eos_id=2, top_p=0.0)
