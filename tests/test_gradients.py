"""Gradients: every hand-written VJP against finite differences (check_vjp, on the FT_BACKEND
backend) and against jax.vjp (float64, 1e-10), the whole model + loss likewise, method="vjp"
against method="autodiff", NumPy against JAX, the loss against NumPy references, padding and
masking invariances, the structure of the grads tree, and check_vjp's own power to catch a wrong VJP.

Shapes are small and deliberately odd: batch 3, source length 5, target length 7, d_model 12 with
3 heads (d_head 4), d_ff 10, vocabularies 11 and 13. Every input is drawn in NumPy from a fixed seed
and moved to the backend under test, so both backends see the same numbers.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import backends
import functional_transformer as ft
from backends import tree_items, tree_leaves, tree_map, tree_structure
from functional_transformer import loss, model, parts
from functional_transformer.config import TransformerConfig
from functional_transformer.gradcheck import check_vjp, vjp_error
from functional_transformer.layers import (
    activations,
    attention,
    dropout,
    embedding,
    feed_forward,
    layer_norm,
    linear,
    softmax,
)
from functional_transformer.models import encoder_decoder

# These gradient checks build float64 arrays on JAX themselves (and call layers outside the library's
# entry points), so they run with JAX's 64-bit types on, as a float64 user of JAX does.
pytestmark = pytest.mark.usefixtures("x64")

NP = backends.get_backend("numpy")

B, S, T = 3, 5, 7  # batch, source length, target length
D, H, F = 12, 3, 10  # d_model, heads, d_ff
V_SRC, V_TGT = 11, 13
MAX_LEN = 9
PAD = 0
DROP = 0.2
SRC_LENGTHS = (5, 3, 4)
TGT_LENGTHS = (7, 4, 6)

ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
# Eager JAX compiles every operation afresh for each new shape and dtype, and a model under jax.jit
# compiles for seconds, so on JAX (and in the comparisons with JAX, which run whatever FT_BACKEND
# is) the default run keeps a few representative cases; `-m slow` adds the rest.
SLOW_ON_JAX = (pytest.mark.slow,) if ON_JAX else ()
slow_on_jax = pytest.mark.slow if ON_JAX else (lambda test: test)
JAX_RTOL = 1e-10  # hand-written VJP against jax.vjp, float64
F64_RTOL = 1e-10
F32_RTOL = 1e-4


# --- helpers -------------------------------------------------------------------------------------


def _normal(seed, shape, scale=1.0):
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _convert(backend, obj):
    """NumPy arrays (in dicts and tuples) -> arrays of `backend`, dtypes kept."""
    if isinstance(obj, dict):
        return {k: _convert(backend, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return tuple(_convert(backend, v) for v in obj)
    return backend.asarray(obj)


def _randomize(tree, seed, scale=0.1):
    """Every leaf plus Gaussian noise: no zero biases or unit layer-norm scales to hide a bug."""
    rng = np.random.default_rng(seed)
    return tree_map(lambda leaf: np.asarray(leaf) + scale * rng.standard_normal(np.shape(leaf)), tree)


def _as_tree(values):
    if isinstance(values, (tuple, list)):
        return {str(i): _as_tree(v) for i, v in enumerate(values)}
    return values


def _rel_err(a, b) -> float:
    """max|a - b| / max|b| (max|a - b| where b is all zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    return diff / scale if scale > 0 else diff


def _is_zero_gradient_leaf(path: str) -> bool:
    """Attention's key bias b_k has a gradient that is identically zero: it shifts every key score
    of a query by the same q.b_k, which the softmax ignores. Its computed value is rounding noise."""
    return path == "b_k" or path.endswith(".b_k")


def assert_trees_close(actual, expected, rtol, what=""):
    """Same structure; every leaf finite and within relative error max|a - b| / max|b| <= rtol.

    Leaves whose true gradient is zero (b_k) hold only rounding noise on both sides, so for them
    max|a - b| is measured against the largest entry of the whole tree instead."""
    actual, expected = _as_tree(actual), _as_tree(expected)
    assert tree_structure(actual) == tree_structure(expected), f"{what}: tree structures differ"
    global_scale = max(
        (float(np.max(np.abs(np.asarray(b, dtype=np.float64)))) for b in tree_leaves(expected) if np.size(b)),
        default=0.0,
    )
    worst = []
    for (path, a), (_, b) in zip(tree_items(actual), tree_items(expected), strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert np.all(np.isfinite(a)), f"{what} {path}: non-finite values"
        if a.size == 0:
            continue
        diff = float(np.max(np.abs(a - b)))
        scale = global_scale if _is_zero_gradient_leaf(path) else float(np.max(np.abs(b)))
        err = diff / scale if scale > 0 else diff
        if not err <= rtol:
            worst.append(f"{path}: {err:.3e}")
    assert not worst, f"{what}: relative error above {rtol:.1e} in " + ", ".join(worst)


def _lengths_mask(lengths, length):
    return np.arange(length)[None, :] < np.asarray(lengths)[:, None]  # (B, L), True at real tokens


def _src_key_mask():
    return _lengths_mask(SRC_LENGTHS, S).reshape(B, 1, 1, S)


def _tgt_self_mask():
    causal = np.tril(np.ones((T, T), dtype=bool)).reshape(1, 1, T, T)
    return causal & _lengths_mask(TGT_LENGTHS, T).reshape(B, 1, 1, T)


def _batch(seed=0, src_lengths=SRC_LENGTHS, tgt_lengths=TGT_LENGTHS, src_len=S, tgt_len=T):
    """Token ids with pad_id only at the padded tails (real ids are >= 1)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(1, V_SRC, size=(B, src_len)) * _lengths_mask(src_lengths, src_len)
    tgt_valid = _lengths_mask(tgt_lengths, tgt_len)
    tgt_in = rng.integers(1, V_TGT, size=(B, tgt_len)) * tgt_valid
    tgt_out = rng.integers(1, V_TGT, size=(B, tgt_len)) * tgt_valid
    return {"src": src.astype(np.int32), "tgt_in": tgt_in.astype(np.int32), "tgt_out": tgt_out.astype(np.int32)}


def _cfg(**overrides):
    fields = dict(
        src_vocab_size=V_SRC,
        tgt_vocab_size=V_TGT,
        d_model=D,
        n_heads=H,
        d_ff=F,
        n_encoder_layers=2,
        n_decoder_layers=2,
        max_len=MAX_LEN,
        drop_rate=DROP,
        pad_id=PAD,
        dtype="float64",
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def _np_params(cfg, seed=0, noise=0.1):
    """ft.init on NumPy, then perturbed (float64 unless cfg says otherwise)."""
    params = model.init(NP.random.key(seed), cfg)
    if noise:
        params = _randomize(params, seed + 100, noise)
    return tree_map(lambda leaf: np.asarray(leaf, dtype=cfg.dtype), params)


# --- the VJP cases: each builds (fwd, bwd, primals) on a backend ---------------------------------
# fwd(*primals) -> (out, saved); bwd(saved, g) -> one cotangent per primal (a bare tree for one primal).


def _case_linear(backend, bias=True):
    params = {"w": _normal(1, (D, F), 0.4)}
    if bias:
        params["b"] = _normal(2, (F,))
    x = _normal(3, (B, S, D))
    return linear.fwd, (lambda saved, g: linear.bwd(saved, g, bias)), _convert(backend, (params, x))


def _case_layer_norm(backend):
    params = {"scale": 1.0 + _normal(1, (D,), 0.3), "bias": _normal(2, (D,))}
    x = 2.0 + _normal(3, (B, T, D), 1.5)
    return layer_norm.fwd, layer_norm.bwd, _convert(backend, (params, x))


def _softmax_mask():
    mask = np.random.default_rng(4).random((B, 4, 6)) < 0.7
    mask[0, 1, :] = False  # a fully masked row
    mask[1, 2, :] = True
    return mask


def _case_softmax(backend, masked=True):
    x = _normal(1, (B, 4, 6), 2.0)
    mask = backend.asarray(_softmax_mask()) if masked else None
    return (lambda x: softmax.fwd(x, mask)), softmax.bwd, (backend.asarray(x),)


def _case_softmax_broadcast_mask(backend):
    x = _normal(1, (B, H, T, S), 2.0)
    mask = backend.asarray(_src_key_mask())
    return (lambda x: softmax.fwd(x, mask)), softmax.bwd, (backend.asarray(x),)


def _case_relu(backend):
    x = _normal(1, (B, T, F))
    x = np.sign(x) * (np.abs(x) + 0.05)  # no input within 0.05 of the kink
    return activations.relu_fwd, activations.relu_bwd, (backend.asarray(x),)


def _case_gelu(backend):
    return activations.gelu_fwd, activations.gelu_bwd, (backend.asarray(_normal(1, (B, T, F), 2.0)),)


def _case_dropout(backend):
    key = backend.random.key(7)
    x = _normal(1, (B, T, D))
    return (lambda x: dropout.fwd(x, 0.3, True, key)), dropout.bwd, (backend.asarray(x),)


def _embedding_ids():
    ids = np.random.default_rng(5).integers(0, 4, size=(B, T))  # ids 0..3 of 11: many repeats
    ids[0, :3] = 2
    return ids.astype(np.int32)


def _case_embedding(backend, learned=False):
    params = {"tokens": _normal(1, (V_SRC, D), D**-0.5)}
    if learned:
        params["positions"] = _normal(2, (MAX_LEN, D), 0.7)
    ids = backend.asarray(_embedding_ids())
    n_positions = MAX_LEN if learned else None
    return (
        (lambda p: embedding.fwd(p, ids)),
        (lambda saved, g: embedding.bwd(saved, g, V_SRC, n_positions)),
        (_convert(backend, params),),
    )


def _dot_product_mask():
    """Causal and key padding, (B, 1, T, T); batch 2 has its first key padded, so query 0 of batch 2
    has nothing to attend to (a fully masked row)."""
    keys = _lengths_mask(TGT_LENGTHS, T)
    keys[2, 0] = False
    causal = np.tril(np.ones((T, T), dtype=bool)).reshape(1, 1, T, T)
    return causal & keys.reshape(B, 1, 1, T)


def _case_dot_product_self(backend):
    q, k, v = (_normal(i, (B, H, T, D // H)) for i in (1, 2, 3))
    mask = backend.asarray(_dot_product_mask())
    return (
        (lambda q, k, v: attention.dot_product_fwd(q, k, v, mask)),
        attention.dot_product_bwd,
        _convert(backend, (q, k, v)),
    )


def _case_dot_product_cross(backend):
    q = _normal(1, (B, H, T, D // H))
    k, v = (_normal(i, (B, H, S, D // H)) for i in (2, 3))
    mask = backend.asarray(_src_key_mask())
    return (
        (lambda q, k, v: attention.dot_product_fwd(q, k, v, mask)),
        attention.dot_product_bwd,
        _convert(backend, (q, k, v)),
    )


def _attention_params(seed=1):
    return _randomize(attention.init(NP.random.key(seed), D, np.float64), seed + 100, 0.2)


def _case_attention_self(backend):
    mask = backend.asarray(_tgt_self_mask())

    def fwd(p, x):
        return attention.fwd(p, x, x, mask, H)

    def bwd(saved, g):
        dp, dx_q, dx_kv = attention.bwd(saved, g, H)
        return dp, dx_q + dx_kv

    return fwd, bwd, _convert(backend, (_attention_params(), _normal(2, (B, T, D))))


def _case_attention_cross(backend):
    mask = backend.asarray(_src_key_mask())
    primals = (_attention_params(), _normal(2, (B, T, D)), _normal(3, (B, S, D)))
    return (
        (lambda p, xq, xkv: attention.fwd(p, xq, xkv, mask, H)),
        (lambda saved, g: attention.bwd(saved, g, H)),
        _convert(backend, primals),
    )


def _ffn_params(seed=1):
    return _randomize(feed_forward.init(NP.random.key(seed), D, F, np.float64), seed + 100, 0.2)


def _case_feed_forward(backend, activation):
    return (
        (lambda p, x: feed_forward.fwd(p, x, activation)),
        (lambda saved, g: feed_forward.bwd(saved, g, activation)),
        _convert(backend, (_ffn_params(), _normal(2, (B, T, D)))),
    )


def _ln_params(seed):
    return {"scale": 1.0 + _normal(seed, (D,), 0.2), "bias": _normal(seed + 1, (D,), 0.2)}


def _part_case(backend, part, params, x, key=None, train=False, **side):
    """(fwd, bwd, primals) of a part for the checks below: fwd(params, *float inputs) -> (y, saved),
    bwd(saved, g) -> (dparams, *dx of the float inputs); side inputs (masks) are closed over."""
    inputs = x if isinstance(x, tuple) else (x,)
    primals = _convert(backend, (params, *inputs))
    side = {name: backend.asarray(value) for name, value in side.items()}

    def fwd(p, *xs):
        return part.fwd(p, xs if isinstance(x, tuple) else xs[0], train=train, key=key, **side)

    def bwd(saved, g):
        if isinstance(g, dict):  # check_vjp hands a tuple output's cotangent over as {"0": .., "1": ..}
            g = tuple(g[str(i)] for i in range(len(g)))
        dparams, dx = part.bwd(primals[0], saved, g)
        return (dparams, *(dx if isinstance(x, tuple) else (dx,)))

    return fwd, bwd, primals


def _residual(sublayer, norm_first, name="sublayer"):
    return parts.Residual(
        sublayer, D, norm_first=norm_first, drop_rate=DROP, name=name, norm_name="ln", dtype="float64"
    )


def _case_residual_ffn(backend, norm_first, train):
    part = _residual(parts.FeedForward(D, F, "gelu", "float64"), norm_first)
    params = {"ln": _ln_params(5), "sublayer": _ffn_params()}
    return _part_case(backend, part, params, _normal(2, (B, T, D)), backend.random.key(11), train)


def _case_residual_cross_attention(backend, norm_first):
    """A sublayer with an extra input (the memory), whose cotangent the residual passes through."""
    part = _residual(parts.CrossAttention(D, H, "float64"), norm_first)
    params = {"ln": _ln_params(5), "sublayer": _attention_params()}
    return _part_case(
        backend,
        part,
        params,
        (_normal(2, (B, T, D)), _normal(3, (B, S, D))),
        backend.random.key(12),
        True,
        memory_mask=_lengths_mask(SRC_LENGTHS, S),
    )


def _layer_cfg(norm_first, activation="relu"):
    return _cfg(norm_first=norm_first, activation=activation)


def _case_encoder_block(backend, norm_first, train):
    cfg = _layer_cfg(norm_first, "gelu")
    part = encoder_decoder.encoder_block(cfg)
    params = _randomize(part.init(NP.random.key(3)), 103, 0.1)
    return _part_case(
        backend, part, params, _normal(2, (B, S, D)), backend.random.key(13), train, mask=_lengths_mask(SRC_LENGTHS, S)
    )


def _case_decoder_block(backend, norm_first, train):
    cfg = _layer_cfg(norm_first, "relu")
    part = encoder_decoder.decoder_block(cfg)
    params = _randomize(part.init(NP.random.key(4)), 104, 0.1)
    return _part_case(
        backend,
        part,
        params,
        (_normal(2, (B, T, D)), _normal(3, (B, S, D))),
        backend.random.key(14),
        train,
        mask=_lengths_mask(TGT_LENGTHS, T),
        memory_mask=_lengths_mask(SRC_LENGTHS, S),
    )


def _case_encoder_stack(backend, norm_first, train):
    cfg = _layer_cfg(norm_first, "gelu")
    part = encoder_decoder.stack(cfg, encoder_decoder.encoder_block(cfg), cfg.n_encoder_layers)
    params = _randomize(part.init(NP.random.key(5)), 105, 0.1)
    return _part_case(
        backend, part, params, _normal(2, (B, S, D)), backend.random.key(15), train, mask=_lengths_mask(SRC_LENGTHS, S)
    )


def _case_decoder_stack(backend, norm_first, train):
    cfg = _layer_cfg(norm_first, "gelu")
    part = encoder_decoder.stack(cfg, encoder_decoder.decoder_block(cfg), cfg.n_decoder_layers)
    params = _randomize(part.init(NP.random.key(6)), 106, 0.1)
    return _part_case(
        backend,
        part,
        params,
        (_normal(2, (B, T, D)), _normal(3, (B, S, D))),
        backend.random.key(16),
        train,
        mask=_lengths_mask(TGT_LENGTHS, T),
        memory_mask=_lengths_mask(SRC_LENGTHS, S),
    )


def _case_loss(backend, label_smoothing):
    targets = backend.asarray(_batch()["tgt_out"])

    def fwd(logits):
        value, _, saved = loss.fwd(logits, targets, PAD, label_smoothing)
        return value, saved

    logits = backend.asarray(_normal(1, (B, T, V_TGT), 2.0))
    return fwd, (lambda saved, g: loss.bwd(saved, g, label_smoothing)), (logits,)


def _model_loss_fns(cfg, batch, key, train, params, label_smoothing=0.1):
    def fwd(params):
        logits, saved_model = model.fwd(params, batch["src"], batch["tgt_in"], cfg, train, key)
        value, _, saved_loss = loss.fwd(logits, batch["tgt_out"], cfg.pad_id, label_smoothing)
        return value, (saved_model, saved_loss)

    def bwd(saved, g):
        saved_model, saved_loss = saved
        return model.bwd(params, saved_model, loss.bwd(saved_loss, g, label_smoothing), cfg)

    return fwd, bwd


def _case_model(backend, norm_first, tie, train, **cfg_overrides):
    cfg = _cfg(norm_first=norm_first, tie_embeddings=tie, **cfg_overrides)
    batch = _convert(backend, _batch())
    params = _convert(backend, _np_params(cfg))
    fwd, bwd = _model_loss_fns(cfg, batch, backend.random.key(17), train, params)
    return fwd, bwd, (params,)


CASES = {
    "linear": _case_linear,
    "linear_no_bias": lambda be: _case_linear(be, bias=False),
    "layer_norm": _case_layer_norm,
    "softmax_masked": _case_softmax,
    "softmax_unmasked": lambda be: _case_softmax(be, masked=False),
    "softmax_broadcast_mask": _case_softmax_broadcast_mask,
    "relu": _case_relu,
    "gelu": _case_gelu,
    "dropout_train": _case_dropout,
    "embedding": _case_embedding,
    "embedding_learned": lambda be: _case_embedding(be, learned=True),
    "dot_product_self_causal_padding": _case_dot_product_self,
    "dot_product_cross_padding": _case_dot_product_cross,
    "attention_self": _case_attention_self,
    "attention_cross": _case_attention_cross,
    "feed_forward_relu": lambda be: _case_feed_forward(be, "relu"),
    "feed_forward_gelu": lambda be: _case_feed_forward(be, "gelu"),
    "loss_smoothing_0": lambda be: _case_loss(be, 0.0),
    "loss_smoothing_0.1": lambda be: _case_loss(be, 0.1),
}
for _nf in (False, True):
    _tag = "prenorm" if _nf else "postnorm"
    CASES[f"residual_cross_attention_{_tag}"] = lambda be, nf=_nf: _case_residual_cross_attention(be, nf)
    for _train in (False, True):
        _t = f"{_tag}_{'dropout' if _train else 'eval'}"
        CASES[f"residual_ffn_{_t}"] = lambda be, nf=_nf, tr=_train: _case_residual_ffn(be, nf, tr)
        CASES[f"encoder_block_{_t}"] = lambda be, nf=_nf, tr=_train: _case_encoder_block(be, nf, tr)
        CASES[f"decoder_block_{_t}"] = lambda be, nf=_nf, tr=_train: _case_decoder_block(be, nf, tr)
        CASES[f"encoder_stack_{_t}"] = lambda be, nf=_nf, tr=_train: _case_encoder_stack(be, nf, tr)
        CASES[f"decoder_stack_{_t}"] = lambda be, nf=_nf, tr=_train: _case_decoder_stack(be, nf, tr)
    for _tie in (False, True):
        for _train in (False, True):
            _name = f"model_{_tag}_{'tied' if _tie else 'untied'}_{'dropout' if _train else 'eval'}"
            CASES[_name] = lambda be, nf=_nf, ti=_tie, tr=_train: _case_model(be, nf, ti, tr)
CASES["model_learned_positions_gelu"] = lambda be: _case_model(
    be, True, False, True, positional="learned", activation="gelu"
)
CASES["model_float32_prenorm_tied_dropout"] = lambda be: _case_model(be, True, True, True, dtype="float32")
CASES["model_one_layer_each"] = lambda be: _case_model(be, False, True, True, n_encoder_layers=1, n_decoder_layers=1)


# --- 1. finite differences on the FT_BACKEND backend ---------------------------------------------


FLOAT64_CASES = [name for name in CASES if "float32" not in name]

# Eager JAX compiles every operation afresh for each new shape (check_vjp's random directions
# included), which makes each case take seconds there. On JAX the default run keeps four cases
# (the same code is checked against jax.vjp below); the NumPy run and `-m slow` check them all.
FAST_FD_CASES_ON_JAX = {"linear", "softmax_masked", "dropout_train", "embedding_learned"}
# For the comparisons with jax.vjp (which run whatever FT_BACKEND is), the default run takes the
# single layers and one whole model in eval mode (the model composes all the rest), each under one
# jax.jit. The other composites are slow here: they are checked by finite differences on NumPy by
# default, and the single layers (dropout included) against jax.vjp.
FAST_COMPOSITES_FOR_JAX_VJP = {"model_prenorm_tied_eval"}
SLOW_JAX_VJP_CASES = {"softmax_unmasked", "loss_smoothing_0", "embedding", "dot_product_cross_padding"} | {
    n
    for n in CASES
    if n.startswith(("residual", "encoder", "decoder", "model")) and n not in FAST_COMPOSITES_FOR_JAX_VJP
}


def _case_params(names, slow):
    return [pytest.param(n, id=n, marks=(pytest.mark.slow,) if n in slow else ()) for n in names]


@pytest.mark.parametrize(
    "name",
    _case_params(FLOAT64_CASES, {n for n in FLOAT64_CASES if n not in FAST_FD_CASES_ON_JAX} if ON_JAX else set()),
)
def test_vjp_matches_finite_differences(backend, name):
    fwd, bwd, primals = CASES[name](backend)
    error = check_vjp(fwd, bwd, primals, key=backend.random.key(1234), n_directions=3)
    assert error <= 1e-6


def test_dropout_case_really_drops(backend):
    """The dropout check is only meaningful if the fixed mask drops some entries and keeps others."""
    fwd, _, (x,) = _case_dropout(backend)
    y = np.asarray(fwd(x)[0])
    assert 0 < np.sum(y == 0) < y.size
    np.testing.assert_allclose(y[y != 0], np.asarray(x)[y != 0] / 0.7, rtol=1e-4)


def test_embedding_bwd_sums_repeated_ids(backend):
    """The token gradient is a scatter-add: a row used k times gets the sum of its k cotangents."""
    fwd, bwd, (params,) = _case_embedding(backend, learned=True)
    ids = _embedding_ids()
    g = _normal(9, (B, T, D))
    grads = bwd(fwd(params)[1], backend.asarray(g))
    expected = np.zeros((V_SRC, D))
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, D) * np.sqrt(D))
    np.testing.assert_allclose(np.asarray(grads["tokens"]), expected, rtol=1e-12, atol=1e-12)
    positions = np.zeros((MAX_LEN, D))
    positions[:T] = g.sum(axis=0)
    np.testing.assert_allclose(np.asarray(grads["positions"]), positions, rtol=1e-12, atol=1e-12)


# --- 2. hand-written VJPs against jax.vjp ----------------------------------------------------------


def _run_eagerly(name):
    """Eager JAX compiles every op for each new shape (seconds for a block); jax.jit compiles one
    program (quicker for a single layer and for the model, whose many ops are the costly part)."""
    return name.startswith(("residual", "encoder", "decoder")) or (name.startswith("model") and "eval" not in name)


@pytest.mark.parametrize("name", _case_params(list(CASES), SLOW_JAX_VJP_CASES))
def test_vjp_matches_jax_vjp(jax_backend, name):
    """float64: 1e-10 per leaf; the float32 model: 1e-4. jax.vjp of the forward pass is what
    method="autodiff" differentiates."""
    jax = jax_backend.jax
    fwd, bwd, primals = CASES[name](jax_backend)
    out = jax.eval_shape(lambda *args: fwd(*args)[0], *primals)
    g = jax_backend.asarray(_normal(99, tuple(out.shape)), dtype=out.dtype)

    def both(primals, g):
        _, vjp_fn = jax.vjp(lambda *args: fwd(*args)[0], *primals)
        ours = bwd(fwd(*primals)[1], g)
        return vjp_fn(g), (ours,) if len(primals) == 1 else tuple(ours)

    expected, ours = both(primals, g) if _run_eagerly(name) else jax.jit(both)(primals, g)
    assert len(ours) == len(primals) == len(expected)
    assert_trees_close(ours, expected, F32_RTOL if "float32" in name else JAX_RTOL, name)


# The entry points run under jit on JAX, and a model compiles slowly there (seconds; tens of seconds
# with dropout, whose Threefry mask generation triples the program, on a busy CPU). The tests that
# go through them share one config, the batch shapes of _batch() and label_smoothing 0.1, so each
# (method, train) pair compiles once per session. By default: autodiff with dropout (the
# cross-backend check) and, on JAX, vjp in eval mode. ft.grad_and_metrics(method="vjp") against
# method="autodiff" is in the slow set: by default the same comparison runs eagerly
# (test_vjp_matches_jax_vjp[model_prenorm_tied_eval]: jax.vjp of the forward pass is what autodiff
# computes) and transitively (NumPy VJP == JAX autodiff, NumPy VJP == JAX VJP layer by layer).
# Other configs and float32 (which compiles everything afresh, eager or not) are in the slow set.
API_CONFIGS = {
    "prenorm_tied_gelu_learned_f64": dict(
        norm_first=True, tie_embeddings=True, activation="gelu", positional="learned", dtype="float64"
    ),
}
SLOW_API_CONFIGS = {
    "postnorm_untied_f32": dict(dtype="float32"),
    "postnorm_untied_f64": dict(dtype="float64"),
    "prenorm_tied_gelu_learned_f32": dict(
        norm_first=True, tie_embeddings=True, activation="gelu", positional="learned", dtype="float32"
    ),
    "postnorm_tied_2_layers_f64": dict(tie_embeddings=True, n_encoder_layers=2, n_decoder_layers=2),
    "prenorm_untied_2_layers_f32": dict(norm_first=True, n_encoder_layers=2, n_decoder_layers=2, dtype="float32"),
}
FAST_API = "prenorm_tied_gelu_learned_f64"
API_CASES = [pytest.param(name, id=name) for name in API_CONFIGS] + [
    pytest.param(name, id=name, marks=pytest.mark.slow) for name in SLOW_API_CONFIGS
]
METHOD_CASES = [pytest.param(FAST_API, False, id=f"{FAST_API}-eval", marks=pytest.mark.slow)] + [
    pytest.param(name, True, id=f"{name}-dropout", marks=pytest.mark.slow) for name in (*API_CONFIGS, *SLOW_API_CONFIGS)
]


def _api_cfg(name):
    fields = dict(n_encoder_layers=1, n_decoder_layers=1)
    fields.update({**API_CONFIGS, **SLOW_API_CONFIGS}[name])
    return _cfg(**fields)


def _rtol(dtype):
    return F64_RTOL if dtype == "float64" else F32_RTOL


@pytest.mark.parametrize("name,train", METHOD_CASES)
def test_grad_method_vjp_matches_autodiff(jax_backend, name, train):
    cfg = _api_cfg(name)
    params = ft.init(jax_backend.random.key(0), cfg)
    batch, key = _batch(), jax_backend.random.key(3)
    g_vjp, m_vjp = ft.grad_and_metrics(params, batch, cfg, train=train, key=key, method="vjp")
    g_auto, m_auto = ft.grad_and_metrics(params, batch, cfg, train=train, key=key, method="autodiff")
    assert tree_structure(g_vjp) == tree_structure(params) == tree_structure(g_auto)
    for leaf in tree_leaves(g_vjp):
        assert str(leaf.dtype) == cfg.dtype
    assert_trees_close(g_vjp, g_auto, _rtol(cfg.dtype), f"vjp vs autodiff ({cfg.dtype})")
    assert _rel_err(m_vjp["loss"], m_auto["loss"]) <= _rtol(cfg.dtype)
    assert _rel_err(m_vjp["accuracy"], m_auto["accuracy"]) == 0
    assert int(m_vjp["n_tokens"]) == int(m_auto["n_tokens"]) == sum(TGT_LENGTHS)


@pytest.mark.parametrize("name", ["linear", "layer_norm", "attention_cross"])
def test_layer_fwd_bwd_serve_as_jax_custom_vjp(jax_backend, name):
    """A layer's fwd and bwd are jax.custom_vjp's fwd and bwd as they stand: the residuals are a
    NamedTuple of arrays (a pytree), the static settings (attention's n_heads) are closed over. Under
    jit, jax.grad through the custom_vjp (which runs our bwd) equals jax.grad of the plain forward."""
    jax = jax_backend.jax
    fwd, bwd, primals = CASES[name](jax_backend)

    @jax.custom_vjp
    def layer(*args):
        return fwd(*args)[0]

    layer.defvjp(fwd, lambda saved, g: tuple(bwd(saved, g)))
    u = jax_backend.asarray(_normal(99, tuple(jax.eval_shape(layer, *primals).shape)))
    argnums = tuple(range(len(primals)))

    def objective(f):
        return jax.jit(jax.grad(lambda *args: jax_backend.xp.sum(f(*args) * u), argnums=argnums))

    ours = objective(layer)(*primals)
    expected = objective(lambda *args: fwd(*args)[0])(*primals)
    assert len(ours) == len(primals)
    assert_trees_close(ours, expected, JAX_RTOL, name)


# --- 3. NumPy against JAX ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", API_CASES)
def test_numpy_and_jax_agree(numpy_backend, jax_backend, name):
    """ft.init from the same seed and ft.loss_and_grad with dropout on and the same key, on each backend
    (each backend's default method: the hand-written VJP on NumPy, jax.grad on JAX)."""
    cfg = _api_cfg(name)
    rtol = _rtol(cfg.dtype)
    results = {}
    for be in (numpy_backend, jax_backend):
        params = ft.init(be.random.key(0), cfg)
        loss_value, grads = ft.loss_and_grad(params, _batch(), cfg, train=True, key=be.random.key(3))
        results[be.name] = (be.tree_to_numpy(params), float(loss_value), be.tree_to_numpy(grads))
    (p_np, l_np, g_np), (p_jax, l_jax, g_jax) = results["numpy"], results["jax"]
    assert_trees_close(p_jax, p_np, 1e-6 if cfg.dtype == "float32" else 1e-14, "params")
    assert abs(l_np - l_jax) <= rtol * abs(l_np)
    assert_trees_close(g_jax, g_np, rtol, f"grads numpy vs jax ({cfg.dtype})")


@pytest.mark.parametrize(
    "name",
    [
        "attention_self",
        *(
            pytest.param(n, marks=pytest.mark.slow)
            for n in (
                "decoder_block_prenorm_dropout",
                "model_prenorm_tied_eval",
                "model_postnorm_tied_dropout",
                "model_float32_prenorm_tied_dropout",
            )
        ),
    ],
)
def test_numpy_and_jax_agree_layer_by_layer(numpy_backend, jax_backend, name):
    """The same hand-written VJPs, eager, on both backends (dropout masks from the same key): the
    forward outputs and every cotangent agree (float64 1e-10, float32 1e-4)."""
    rtol = F32_RTOL if "float32" in name else F64_RTOL
    outs = []
    for be in (numpy_backend, jax_backend):
        fwd, bwd, primals = CASES[name](be)
        out, saved = fwd(*primals)
        g = be.asarray(_normal(99, tuple(out.shape)), dtype=out.dtype)
        outs.append((be.to_numpy(out), be.tree_to_numpy(_as_tree(bwd(saved, g)))))
    (y_np, d_np), (y_jax, d_jax) = outs
    assert _rel_err(y_jax, y_np) <= rtol, name
    assert_trees_close(d_jax, d_np, rtol, name)


# --- 4. the loss against NumPy references ----------------------------------------------------------


def _np_log_softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reference_cross_entropy(logits, targets, pad_id):
    """Plain cross-entropy: -mean of log softmax[target] over the non-pad tokens."""
    log_p = _np_log_softmax(logits)
    valid = targets != pad_id
    picked = np.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    return -picked[valid].mean()


def _reference_smoothed(logits, targets, pad_id, eps):
    """PyTorch CrossEntropyLoss(label_smoothing=eps, ignore_index=pad_id): the target distribution
    q = (1 - eps) one_hot + eps / V, loss = -sum_c q_c log p_c averaged over non-pad tokens;
    the gradient is (softmax - q) / n_tokens at those tokens."""
    vocab = logits.shape[-1]
    log_p = _np_log_softmax(logits)
    q = (1 - eps) * np.eye(vocab)[targets] + eps / vocab
    valid = targets != pad_id
    n = max(int(valid.sum()), 1)
    value = -(q * log_p).sum(axis=-1)[valid].sum() / n
    grad = (np.exp(log_p) - q) * valid[..., None] / n
    return value, grad


def _loss_inputs(scale=2.0):
    logits = _normal(21, (B, T, V_TGT), scale)
    targets = _batch()["tgt_out"].astype(np.int64)
    return logits, targets


def test_label_smoothing_zero_is_cross_entropy(backend):
    logits, targets = _loss_inputs()
    value, metrics, saved = loss.fwd(backend.asarray(logits), backend.asarray(targets), PAD, 0.0)
    assert abs(float(value) - _reference_cross_entropy(logits, targets, PAD)) <= 1e-12
    assert int(metrics["n_tokens"]) == sum(TGT_LENGTHS)
    _, grad = _reference_smoothed(logits, targets, PAD, 0.0)
    np.testing.assert_allclose(np.asarray(loss.bwd(saved, 1.0, 0.0)), grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_matches_pytorch_convention(backend, eps):
    logits, targets = _loss_inputs()
    value, _, saved = loss.fwd(backend.asarray(logits), backend.asarray(targets), PAD, eps)
    ref_value, ref_grad = _reference_smoothed(logits, targets, PAD, eps)
    assert abs(float(value) - ref_value) <= 1e-12 * abs(ref_value)
    np.testing.assert_allclose(np.asarray(loss.bwd(saved, 1.0, eps)), ref_grad, rtol=1e-10, atol=1e-14)
    # g scales the cotangent linearly
    np.testing.assert_allclose(np.asarray(loss.bwd(saved, 2.5, eps)), 2.5 * ref_grad, rtol=1e-10, atol=1e-14)


def _vjp_loss_and_grads(params, batch, cfg, train=False, key=None, label_smoothing=0.1):
    """What ft.grad_and_metrics(method="vjp") computes, run eagerly (no jit compile on JAX)."""
    backend = backends.backend_of(params)
    batch = _convert(backend, batch)
    fwd, bwd = _model_loss_fns(cfg, batch, key, train, params, label_smoothing)
    value, saved = fwd(params)
    return value, bwd(saved, 1.0)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(dict(), id="postnorm", marks=SLOW_ON_JAX),
        pytest.param(
            dict(norm_first=True, tie_embeddings=True, positional="learned", activation="gelu"),
            id="prenorm_tied_learned",
            marks=SLOW_ON_JAX,
        ),
    ],
)
def test_padding_changes_neither_loss_nor_grads(backend, overrides):
    """Appending pad positions to src, tgt_in and tgt_out (eval mode: dropout masks depend on shape)."""
    cfg = _cfg(n_encoder_layers=1, n_decoder_layers=1, **overrides)
    params = _convert(backend, _np_params(cfg))
    short = _batch()
    long = {name: np.pad(ids, ((0, 0), (0, 2)), constant_values=PAD) for name, ids in short.items()}
    assert long["tgt_in"].shape[1] <= cfg.max_len
    l_short, g_short = _vjp_loss_and_grads(params, short, cfg)
    l_long, g_long = _vjp_loss_and_grads(params, long, cfg)
    assert abs(float(l_short) - float(l_long)) <= 1e-12 * abs(float(l_short))
    assert_trees_close(g_long, g_short, 1e-10, "padded vs unpadded grads")


@pytest.mark.parametrize("all_padding", ["tgt_out", "everything"])
def test_all_padding_gives_zero_loss_and_grads(backend, all_padding):
    cfg = _api_cfg(FAST_API)
    params = _convert(backend, _np_params(cfg))
    batch = _batch()
    batch["tgt_out"] = np.full_like(batch["tgt_out"], PAD)
    if all_padding == "everything":  # every attention row fully masked too
        batch = {name: np.full_like(ids, PAD) for name, ids in batch.items()}
    grads, metrics = ft.grad_and_metrics(params, batch, cfg, label_smoothing=0.1, method="vjp")
    assert float(metrics["loss"]) == 0.0
    assert int(metrics["n_tokens"]) == 0
    assert float(metrics["accuracy"]) == 0.0
    assert tree_structure(grads) == tree_structure(params)
    for path, leaf in tree_items(grads):
        leaf = np.asarray(leaf)
        assert np.all(leaf == 0), f"{path} is not all zero"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_logits_do_not_overflow(backend, dtype):
    logits, targets = _loss_inputs(scale=1e4)
    logits[0, 0, :] = 1e4  # a tie at the top
    logits[1, 1, :] = -1e4
    logits = logits.astype(dtype)
    value, _, saved = loss.fwd(backend.asarray(logits), backend.asarray(targets), PAD, 0.1)
    grad = np.asarray(loss.bwd(saved, 1.0, 0.1))
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    ref_value, ref_grad = _reference_smoothed(logits.astype(np.float64), targets, PAD, 0.1)
    assert abs(float(value) - ref_value) <= (1e-6 if dtype == "float32" else 1e-12) * abs(ref_value)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6 if dtype == "float32" else 1e-14)


# --- 5. masked positions get zero gradient ----------------------------------------------------------


def test_softmax_bwd_is_exactly_zero_at_masked_entries(backend):
    fwd, bwd, (x,) = _case_softmax(backend)
    p, saved = fwd(x)
    d = np.asarray(bwd(saved, backend.asarray(_normal(8, tuple(x.shape)))))
    mask = _softmax_mask()
    assert np.all(d[~mask] == 0)
    assert np.all(np.asarray(p)[~mask] == 0)
    assert np.all(d[mask] != 0)  # and not zero elsewhere (generic inputs)


def test_padded_keys_get_exactly_zero_gradient(backend):
    """A key/value position that every query has masked out gets exactly zero dk, dv and dx_kv."""
    _, bwd, (q, k, v) = _case_dot_product_cross(backend)
    mask = backend.asarray(_src_key_mask())
    out, saved = attention.dot_product_fwd(q, k, v, mask)
    dq, dk, dv = (np.asarray(a) for a in bwd(saved, backend.asarray(_normal(8, tuple(out.shape)))))
    padded = ~_lengths_mask(SRC_LENGTHS, S)  # (B, S)
    assert padded.any()
    for d in (dk, dv):
        assert np.all(d.transpose(0, 2, 1, 3)[padded] == 0)
        assert np.all(np.abs(d.transpose(0, 2, 1, 3)[~padded]).sum(axis=-1) > 0)

    fwd, bwd, (params, x_q, x_kv) = _case_attention_cross(backend)
    y, saved = fwd(params, x_q, x_kv)
    _, _, dx_kv = bwd(saved, backend.asarray(_normal(8, tuple(y.shape))))
    dx_kv = np.asarray(dx_kv)
    assert np.all(dx_kv[padded] == 0)
    assert np.all(np.abs(dx_kv[~padded]).sum(axis=-1) > 0)


def test_key_bias_gets_no_gradient(backend):
    """q.b_k shifts all the key scores of a query alike and the softmax ignores such a shift, so the
    gradient of b_k is zero up to rounding (the reason assert_trees_close treats b_k apart)."""
    fwd, bwd, (params, x_q, x_kv) = _case_attention_cross(backend)
    y, saved = fwd(params, x_q, x_kv)
    dparams, _, _ = bwd(saved, backend.asarray(_normal(8, tuple(y.shape))))
    scale = max(float(np.max(np.abs(np.asarray(dparams[k])))) for k in ("b_q", "b_v", "w_k"))
    assert float(np.max(np.abs(np.asarray(dparams["b_k"])))) <= 1e-13 * scale


@pytest.mark.parametrize(
    "tie", [pytest.param(False, id="untied", marks=SLOW_ON_JAX), pytest.param(True, id="tied", marks=SLOW_ON_JAX)]
)
def test_pad_token_embedding_row_gets_zero_gradient(backend, tie):
    """pad_id appears only at padded positions (src tail; tgt_in tail, where tgt_out is pad too).
    Padded src positions are keys nobody attends to, so nothing from them reaches the loss: the
    src pad row gets exactly zero gradient. Padded tgt_in positions are masked keys and their own
    logits have a pad target, so the tgt pad row also gets exactly zero gradient from the embedding
    path; with tied embeddings the output projection (softmax over all classes) adds a nonzero
    gradient to that row. Learned positions padded in every sequence get zero gradient likewise."""
    cfg = _cfg(tie_embeddings=tie, positional="learned", norm_first=tie, n_encoder_layers=1, n_decoder_layers=1)
    params = _convert(backend, _np_params(cfg))
    batch = {name: np.pad(ids, ((0, 0), (0, 2)), constant_values=PAD) for name, ids in _batch().items()}
    _, grads = _vjp_loss_and_grads(params, batch, cfg, train=True, key=backend.random.key(2))
    src_tokens = np.asarray(grads["src_embed"]["tokens"])
    assert np.all(src_tokens[PAD] == 0)
    real_src_ids = np.unique(batch["src"][batch["src"] != PAD])
    assert np.all(np.abs(src_tokens[real_src_ids]).sum(axis=-1) > 0)
    # positions S.. are padding in every source sequence, T.. in every target sequence
    assert np.all(np.asarray(grads["src_embed"]["positions"])[S:] == 0)
    assert np.all(np.abs(np.asarray(grads["src_embed"]["positions"])[:S]).sum(axis=-1) > 0)
    assert np.all(np.asarray(grads["tgt_embed"]["positions"])[T:] == 0)
    tgt_pad_row = np.asarray(grads["tgt_embed"]["tokens"])[PAD]
    if tie:
        assert np.any(tgt_pad_row != 0)
    else:
        assert np.all(tgt_pad_row == 0)


# --- 6. the grads tree has the structure of params --------------------------------------------------


def _structure_case(nf, tie, pos, act):
    marks = () if (nf, tie) == (pos == "learned", act == "gelu") else (pytest.mark.slow,)
    if ON_JAX:  # test_api_grads_structure_equals_params covers JAX by default
        marks = (pytest.mark.slow,)
    return pytest.param(
        dict(norm_first=nf, tie_embeddings=tie, positional=pos, activation=act),
        id=f"{'prenorm' if nf else 'postnorm'}-{'tied' if tie else 'untied'}-{pos}-{act}",
        marks=marks,
    )


STRUCTURE_CONFIGS = [
    _structure_case(nf, tie, pos, act)
    for nf in (False, True)
    for tie in (False, True)
    for pos in ("sinusoidal", "learned")
    for act in ("relu", "gelu")
]


@pytest.mark.parametrize("overrides", STRUCTURE_CONFIGS)
def test_grads_structure_equals_params(backend, overrides):
    """model.bwd's grads mirror params (keys, shapes, dtypes) for every config; 4 of the 16 run by default."""
    cfg = _cfg(n_encoder_layers=1, n_decoder_layers=2, **overrides)
    params = ft.init(backend.random.key(0), cfg)
    batch = _batch()
    logits, saved = model.fwd(
        params, backend.asarray(batch["src"]), backend.asarray(batch["tgt_in"]), cfg, True, backend.random.key(1)
    )
    grads = model.bwd(params, saved, backend.asarray(_normal(3, tuple(logits.shape))), cfg)
    assert tree_structure(grads) == tree_structure(params)
    for (path, g), (_, p) in zip(tree_items(grads), tree_items(params), strict=True):
        assert g.dtype == p.dtype, path


@pytest.mark.parametrize("method", ["vjp", pytest.param("autodiff", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", API_CASES)
def test_api_grads_structure_equals_params(backend, method, name):
    if method == "autodiff" and backend.name != "jax":
        pytest.skip("autodiff needs the JAX backend")
    cfg = _api_cfg(name)
    params = ft.init(backend.random.key(0), cfg)
    value, grads = ft.loss_and_grad(params, _batch(), cfg, method=method)
    assert tree_structure(grads) == tree_structure(params)
    assert backends.backend_of(grads) is backend
    assert np.isfinite(float(value))


# --- 7. check_vjp catches a wrong VJP --------------------------------------------------------------


def _bwd_bias_forgotten(saved, g):
    dparams, dx = linear.bwd(saved, g)
    return {"w": dparams["w"], "b": 0 * dparams["b"]}, dx


def _bwd_dx_doubled(saved, g):
    dparams, dx = linear.bwd(saved, g)
    return dparams, 2 * dx


def _bwd_dw_slightly_off(saved, g):
    dparams, dx = linear.bwd(saved, g)
    return {"w": dparams["w"] * (1 + 1e-3), "b": dparams["b"]}, dx


def _bwd_dw_rows_reversed(saved, g):
    dparams, dx = linear.bwd(saved, g)
    return {"w": dparams["w"][::-1], "b": dparams["b"]}, dx


@pytest.mark.parametrize(
    "wrong_bwd", [_bwd_bias_forgotten, _bwd_dx_doubled, _bwd_dw_slightly_off, _bwd_dw_rows_reversed]
)
def test_check_vjp_catches_a_wrong_vjp(backend, wrong_bwd):
    _, right_bwd, primals = _case_linear(backend)
    key = backend.random.key(0)
    assert check_vjp(linear.fwd, right_bwd, primals, key=key) < 1e-8
    with pytest.raises(AssertionError, match="VJP disagrees"):
        check_vjp(linear.fwd, wrong_bwd, primals, key=key)
    assert vjp_error(linear.fwd, wrong_bwd, primals, key=key) > 1e-5


@slow_on_jax
def test_check_vjp_catches_a_wrong_model_gradient(backend):
    """A subtle slip deep inside the model (the tied-embedding contribution dropped) is caught too."""
    fwd, bwd, primals = _case_model(backend, norm_first=False, tie=True, train=False)

    def wrong_bwd(saved, g):
        grads = bwd(saved, g)
        grads["out_proj"] = {"b": grads["out_proj"]["b"] * 0.9}
        return grads

    with pytest.raises(AssertionError):
        check_vjp(fwd, wrong_bwd, primals, key=backend.random.key(0))


def test_check_vjp_refuses_float32(backend):
    fwd, bwd, primals = _case_linear(backend)
    primals = tree_map(lambda a: backend.xp.astype(a, backend.xp.float32), _as_tree(primals))
    with pytest.raises(TypeError, match="float64"):
        check_vjp(fwd, bwd, (primals["0"], primals["1"]), key=backend.random.key(0))
