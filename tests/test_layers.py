"""The layers one by one on the FT_BACKEND backend, each against its formula written out in NumPy
(float64, tight tolerances) and, for attention, against a naive loop over batch rows and heads."""

import math

import numpy as np
import pytest

chex = pytest.importorskip("chex")

from backends import prng as R  # noqa: E402
from functional_transformer import parts  # noqa: E402
from functional_transformer.layers import (  # noqa: E402
    activations,
    attention,
    dropout,
    embedding,
    feed_forward,
    layer_norm,
    linear,
    positional,
    softmax,
)

# These layer tests build float64 arrays on JAX themselves (and call layers outside the library's
# entry points), so they run with JAX's 64-bit types on, as a float64 user of JAX does.
pytestmark = pytest.mark.usefixtures("x64")

RTOL64 = 1e-12
RTOL32 = 2e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _to(backend, tree, dtype="float64"):
    """A NumPy array (or dict of them) on the backend, cast to `dtype`."""
    if isinstance(tree, dict):
        return {k: _to(backend, v, dtype) for k, v in tree.items()}
    return backend.asarray(np.asarray(tree, dtype=dtype))


def _np(backend, x):
    return backend.to_numpy(x)


def _close(actual, expected, dtype):
    tol = RTOL64 if dtype == "float64" else RTOL32
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


DTYPES = ["float64", "float32"]


def _jit(backend, fn, *static):
    """fn under `backend.jit` (jax.jit on JAX, itself on NumPy): eager JAX compiles every op for every
    new shape, which is what makes an op-by-op test slow; under jit a test compiles once."""
    return backend.jit(fn, static_argnames=static)


def _linear(backend, p, x):
    return _jit(backend, linear.apply)(p, x)


def _layer_norm(backend, p, x):
    return _jit(backend, layer_norm.apply)(p, x)


def _softmax(backend, x, mask=None):
    return _jit(backend, softmax.apply)(x, mask)


def _embedding(backend, p, ids):
    return _jit(backend, embedding.apply)(p, ids)


def _dropout(backend, x, drop_rate, key, train):
    return _jit(backend, dropout.apply, "drop_rate", "train")(x, drop_rate, train, key)


def _feed_forward(backend, p, x, activation):
    return _jit(backend, feed_forward.apply, "activation")(p, x, activation)


def _attention(backend, p, x_q, x_kv, mask, n_heads):
    return _jit(backend, attention.apply, "n_heads")(p, x_q, x_kv, mask, n_heads)


def _dropout_grad_of_ones(x, drop_rate, key):
    _, scaled_mask = dropout.fwd(x, drop_rate, True, key)
    return dropout.bwd(scaled_mask, x * 0 + 1)


def _softmax_fwd_bwd(x, mask, g):
    p, saved = softmax.fwd(x, mask)
    return p, softmax.bwd(saved, g)


# --- linear ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_matmul(backend, dtype):
    rng = _rng(1)
    x = rng.normal(size=(2, 3, 5))
    p = {"w": rng.normal(size=(5, 4)), "b": rng.normal(size=(4,))}
    y = _linear(backend, _to(backend, p, dtype), _to(backend, x, dtype))
    chex.assert_shape(y, (2, 3, 4))
    assert str(y.dtype) == dtype
    _close(_np(backend, y), x @ p["w"] + p["b"], dtype)
    # Without a bias, and on a 2-D input.
    y2 = _linear(backend, _to(backend, {"w": p["w"]}, dtype), _to(backend, x[0], dtype))
    chex.assert_shape(y2, (3, 4))
    _close(_np(backend, y2), x[0] @ p["w"], dtype)


def test_linear_init(backend):
    xp = backend.xp
    init = _jit(backend, linear.init, "d_in", "d_out", "dtype", "bias")
    p = init(backend.random.key(0), 30, 50, xp.float32, True)
    chex.assert_shape(p["w"], (30, 50))
    chex.assert_shape(p["b"], (50,))
    w = _np(backend, p["w"])
    limit = math.sqrt(6 / 80)
    assert np.all(np.abs(w) <= limit) and np.abs(w).max() > 0.9 * limit  # Glorot uniform over the whole range
    assert abs(w.std() - limit / math.sqrt(3)) < 0.02
    np.testing.assert_array_equal(_np(backend, p["b"]), np.zeros(50))
    assert set(init(backend.random.key(0), 30, 50, xp.float32, False)) == {"w"}


# --- layer norm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_formula(backend, dtype):
    rng = _rng(2)
    x = rng.normal(loc=3.0, scale=2.0, size=(2, 4, 8))
    p = {"scale": rng.normal(size=(8,)), "bias": rng.normal(size=(8,))}
    y = _layer_norm(backend, _to(backend, p, dtype), _to(backend, x, dtype))
    chex.assert_shape(y, x.shape)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]
    _close(_np(backend, y), expected, dtype)


def test_layer_norm_init_is_identity_normalisation(backend):
    xp = backend.xp
    p = layer_norm.init(backend.random.key(0), 6, xp.float64)
    x = _rng(3).normal(size=(3, 6)) * 5 + 2
    y = _np(backend, _layer_norm(backend, p, _to(backend, x)))
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1.0 / (1.0 + 1e-5 / x.var(-1)), rtol=1e-10)


# --- softmax --------------------------------------------------------------------------------------


def _softmax_ref(x, mask=None):
    x = np.where(mask, x, -np.inf) if mask is not None else x
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = e.sum(-1, keepdims=True)
    return e / np.where(s == 0, 1.0, s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_formula(backend, dtype):
    x = _rng(4).normal(size=(3, 5, 7)) * 3
    p = _softmax(backend, _to(backend, x, dtype))
    chex.assert_shape(p, x.shape)
    expected = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    _close(_np(backend, p), expected, dtype)
    np.testing.assert_allclose(_np(backend, p).sum(-1), 1.0, rtol=1e-6)


def test_softmax_large_logits_do_not_overflow(backend):
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1001.0, -999.0]])
    p = _np(backend, _softmax(backend, _to(backend, x, "float32")))
    assert np.all(np.isfinite(p))
    e = np.exp([0.0, 1.0, -1.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(p[1], e[[0, 2, 1]] / e.sum(), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_mask(backend, dtype):
    xp = backend.xp
    rng = _rng(5)
    x = rng.normal(size=(4, 6))
    mask = rng.random((4, 6)) < 0.6
    mask[0] = False  # a fully masked row
    mask[1] = True
    mask[2, :] = False
    mask[2, 3] = True  # a single key
    p = _softmax(backend, _to(backend, x, dtype), xp.asarray(mask))
    p_np = _np(backend, p)
    assert not np.any(np.isnan(p_np))
    np.testing.assert_array_equal(p_np[0], np.zeros(6))  # nothing to attend to: zeros, no NaN
    assert np.all(p_np[~mask] == 0.0)  # masked entries get probability exactly 0
    np.testing.assert_allclose(p_np[1:].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p_np[2], np.eye(6)[3])
    _close(p_np, _softmax_ref(x, mask), dtype)
    # The masked softmax of the kept entries is the plain softmax of those entries alone.
    row = 3
    kept = mask[row]
    _close(p_np[row, kept], np.exp(x[row, kept]) / np.exp(x[row, kept]).sum(), dtype)


def test_softmax_mask_broadcasts(backend):
    xp = backend.xp
    x = _rng(6).normal(size=(2, 3, 4, 4))
    causal = np.tril(np.ones((4, 4), dtype=bool))[None, None]  # (1, 1, 4, 4)
    p = _np(backend, _softmax(backend, _to(backend, x), xp.asarray(causal)))
    np.testing.assert_allclose(p, _softmax_ref(x, np.broadcast_to(causal, x.shape)), rtol=1e-12, atol=1e-15)
    assert np.all(p[..., np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0)


def test_softmax_gradient_zero_where_masked(backend):
    xp = backend.xp
    rng = _rng(7)
    x = rng.normal(size=(3, 5))
    mask = np.array([[False] * 5, [True, False, True, True, False], [True] * 5])
    g = rng.normal(size=(3, 5))
    p, dx = _jit(backend, _softmax_fwd_bwd)(_to(backend, x), xp.asarray(mask), _to(backend, g))
    dx = _np(backend, dx)
    assert np.all(np.isfinite(dx))
    np.testing.assert_array_equal(dx[0], np.zeros(5))  # fully masked row
    assert np.all(dx[~mask] == 0.0)
    # Against the Jacobian of the softmax over the kept entries: diag(p) - p p^T.
    p_np = _np(backend, p)
    for row in (1, 2):
        pr = p_np[row]
        jac = np.diag(pr) - np.outer(pr, pr)
        np.testing.assert_allclose(dx[row], jac.T @ g[row], rtol=1e-10, atol=1e-14)


# --- positional encoding --------------------------------------------------------------------------


def _sinusoid_ref(n, d):
    pe = np.zeros((n, d))
    for pos in range(n):
        for j in range(d):
            i = j // 2
            angle = pos / 10000 ** (2 * i / d)
            pe[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return pe


@pytest.mark.parametrize("d_model", [16, 7, 1, 2])
def test_sinusoidal_table(backend, d_model):
    xp = backend.xp
    n = 30
    table = positional.sinusoidal(n, d_model, xp.float64, xp)
    chex.assert_shape(table, (n, d_model))
    np.testing.assert_allclose(_np(backend, table), _sinusoid_ref(n, d_model), rtol=1e-12, atol=1e-12)
    table32 = positional.sinusoidal(n, d_model, xp.float32, xp)
    assert table32.dtype == xp.float32
    np.testing.assert_array_equal(_np(backend, table32), _sinusoid_ref(n, d_model).astype(np.float32))


def test_sinusoidal_table_is_prefix_consistent(backend):
    xp = backend.xp
    long = _np(backend, positional.sinusoidal(20, 8, xp.float64, xp))
    short = _np(backend, positional.sinusoidal(5, 8, xp.float64, xp))
    np.testing.assert_array_equal(short, long[:5])


# --- embedding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_sinusoidal(backend, dtype):
    xp = backend.xp
    rng = _rng(8)
    vocab, d = 11, 6
    tokens = rng.normal(size=(vocab, d))
    ids = np.array([[1, 4, 0, 10], [3, 3, 7, 2]])
    x = _embedding(backend, _to(backend, {"tokens": tokens}, dtype), xp.asarray(ids))
    chex.assert_shape(x, (2, 4, d))
    assert str(x.dtype) == dtype
    expected = tokens[ids] * math.sqrt(d) + _sinusoid_ref(4, d)
    _close(_np(backend, x), expected, dtype)


def test_embedding_learned_positions(backend):
    xp = backend.xp
    rng = _rng(9)
    vocab, d, max_len = 5, 4, 9
    params = {"tokens": rng.normal(size=(vocab, d)), "positions": rng.normal(size=(max_len, d))}
    ids = np.array([[1, 2, 3], [4, 0, 1]])
    x = _embedding(backend, _to(backend, params), xp.asarray(ids))
    expected = params["tokens"][ids] * 2.0 + params["positions"][:3]
    np.testing.assert_allclose(_np(backend, x), expected, rtol=1e-12)


def test_embedding_init(backend):
    xp = backend.xp
    _init = _jit(backend, embedding.init, "vocab_size", "d_model", "max_len", "dtype", "learned_positions")
    p = _init(backend.random.key(3), 50, 64, 12, xp.float32, False)
    assert set(p) == {"tokens"}
    chex.assert_shape(p["tokens"], (50, 64))
    t = _np(backend, p["tokens"])
    assert abs(t.std() * 8.0 - 1.0) < 0.05  # N(0, 1/d_model): the scaled embedding has unit variance
    learned = _init(backend.random.key(3), 50, 64, 12, xp.float32, True)
    chex.assert_shape(learned["positions"], (12, 64))
    np.testing.assert_array_equal(_np(backend, learned["tokens"]), t)


# --- dropout --------------------------------------------------------------------------------------


def test_dropout_eval_is_identity(backend):
    xp = backend.xp
    x = _to(backend, _rng(10).normal(size=(4, 5)), "float32")
    for key in (None, backend.random.key(0)):
        y = _dropout(backend, x, 0.5, key, train=False)
        np.testing.assert_array_equal(_np(backend, y), _np(backend, x))
    # drop_rate 0 in training is the identity too, with or without a key.
    np.testing.assert_array_equal(_np(backend, _dropout(backend, x, 0.0, None, train=True)), _np(backend, x))
    y, scaled_mask = dropout.fwd(x, 0.5, train=False)
    g = xp.ones_like(x)
    np.testing.assert_array_equal(_np(backend, dropout.bwd(scaled_mask, g)), np.ones((4, 5)))


@pytest.mark.parametrize("drop_rate", [0.1, 0.3, 0.5])
def test_dropout_train_statistics(backend, drop_rate):
    xp = backend.xp
    shape = (64, 256)
    x = xp.ones(shape, dtype=xp.float32)
    y = _np(backend, _dropout(backend, x, drop_rate, backend.random.key(1), train=True))
    chex.assert_shape(y, shape)
    assert y.dtype == np.float32
    zero = y == 0
    assert abs(zero.mean() - drop_rate) < 0.02
    keep = R.realised_probability(1.0 - drop_rate)
    np.testing.assert_allclose(y[~zero], 1.0 / keep, rtol=1e-6)  # survivors scaled by 1/keep
    assert abs(y.mean() - 1.0) < 0.03  # mean preserved


def test_dropout_mean_preserved_per_entry(backend):
    """E[dropout(x)] == x: each entry of x, repeated 400 times, averages back to itself."""
    x_np = _rng(11).normal(size=(8, 16))
    x = _to(backend, np.broadcast_to(x_np, (400, 8, 16)))
    ys = _np(backend, _dropout(backend, x, 0.5, backend.random.key(2), train=True))
    np.testing.assert_array_equal(np.unique(np.round(ys / x_np, 12)), [0.0, 2.0])  # each draw is 0 or x / keep
    # Each entry: mean over 400 draws of x * Bernoulli(0.5) / 0.5, standard deviation |x| / 20.
    assert np.all(np.abs(ys.mean(0) - x_np) < 4.5 * np.abs(x_np) / 20)
    assert abs(ys.mean() - x_np.mean()) < 0.05


def test_dropout_same_key_same_mask(backend):
    x = _to(backend, _rng(12).normal(size=(10, 20)) + 5.0)  # no exact zeros in the input
    k = backend.random.key(7)
    a = _np(backend, _dropout(backend, x, 0.4, k, train=True))
    b = _np(backend, _dropout(backend, x, 0.4, backend.random.key(7), train=True))
    np.testing.assert_array_equal(a, b)
    c = _np(backend, _dropout(backend, x, 0.4, backend.random.key(8), train=True))
    assert not np.array_equal(a == 0, c == 0)  # a different key, a different mask
    # The mask does not depend on the values: another input gets the same zeros under the same key.
    d = _np(backend, _dropout(backend, x * 2.0, 0.4, k, train=True))
    np.testing.assert_array_equal(a == 0, d == 0)
    # The backward uses the forward's mask.
    g = _np(backend, _jit(backend, _dropout_grad_of_ones, "drop_rate")(x, 0.4, k))
    np.testing.assert_array_equal(g == 0, a == 0)
    np.testing.assert_allclose(g[a != 0], 1.0 / R.realised_probability(0.6), rtol=1e-12)


def test_dropout_train_without_key_is_value_error(backend):
    x = backend.xp.ones((2, 3))
    with pytest.raises(ValueError, match="key"):
        _dropout(backend, x, 0.1, None, train=True)


def test_dropout_split_keys(backend):
    assert dropout.split_keys(None, 3) == [None, None, None]
    keys = dropout.split_keys(backend.random.key(0), 3)
    assert len(keys) == 3
    words = {tuple(int(v) for v in _np(backend, k)) for k in keys}
    assert len(words) == 3


# --- feed-forward and activations -----------------------------------------------------------------


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_feed_forward_formula(backend, activation, dtype):
    rng = _rng(13)
    d, f = 6, 10
    p = {
        "w_1": rng.normal(size=(d, f)),
        "b_1": rng.normal(size=(f,)),
        "w_2": rng.normal(size=(f, d)),
        "b_2": rng.normal(size=(d,)),
    }
    x = rng.normal(size=(2, 3, d))
    y = _feed_forward(backend, _to(backend, p, dtype), _to(backend, x, dtype), activation)
    chex.assert_shape(y, (2, 3, d))
    h = x @ p["w_1"] + p["b_1"]
    a = np.maximum(h, 0.0) if activation == "relu" else _gelu_tanh(h)
    _close(_np(backend, y), a @ p["w_2"] + p["b_2"], dtype)


def test_activations(backend):
    x = np.linspace(-6, 6, 101)
    xb = _to(backend, x)
    relu, _ = activations.relu_fwd(xb)
    np.testing.assert_array_equal(_np(backend, relu), np.maximum(x, 0))
    gelu, _ = activations.gelu_fwd(xb)
    gelu = _np(backend, gelu)
    np.testing.assert_allclose(gelu, _gelu_tanh(x), rtol=1e-12, atol=1e-15)
    # The tanh form is within 1e-3 of the exact GELU x * Phi(x).
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(gelu, exact, atol=1e-3)


def test_feed_forward_init(backend):
    p = _jit(backend, feed_forward.init, "d_model", "d_ff", "dtype")(backend.random.key(0), 8, 20, backend.xp.float32)
    assert set(p) == {"w_1", "b_1", "w_2", "b_2"}
    chex.assert_shape([p["w_1"], p["b_1"], p["w_2"], p["b_2"]], [(8, 20), (20,), (20, 8), (8,)])
    assert not np.array_equal(_np(backend, p["w_1"])[:, :8], _np(backend, p["w_2"])[:8, :])


# --- multi-head attention -------------------------------------------------------------------------


def _attention_ref(p, x_q, x_kv, mask, n_heads):
    """Naive multi-head attention: a Python loop over batch rows and heads."""
    batch, t_len, d = x_q.shape
    s_len = x_kv.shape[1]
    dh = d // n_heads
    mask = np.broadcast_to(mask, (batch, n_heads, t_len, s_len))
    out = np.zeros((batch, t_len, d))
    for b in range(batch):
        q = x_q[b] @ p["w_q"] + p["b_q"]
        k = x_kv[b] @ p["w_k"] + p["b_k"]
        v = x_kv[b] @ p["w_v"] + p["b_v"]
        heads = []
        for h in range(n_heads):
            cols = slice(h * dh, (h + 1) * dh)
            head = np.zeros((t_len, dh))
            for i in range(t_len):
                scores = [q[i, cols] @ k[j, cols] / math.sqrt(dh) for j in range(s_len)]
                allowed = [j for j in range(s_len) if mask[b, h, i, j]]
                if not allowed:
                    continue  # nothing to attend to: a zero head output
                top = max(scores[j] for j in allowed)
                weights = {j: math.exp(scores[j] - top) for j in allowed}
                total = sum(weights.values())
                for j in allowed:
                    head[i] += weights[j] / total * v[j, cols]
            heads.append(head)
        out[b] = np.concatenate(heads, axis=-1) @ p["w_o"] + p["b_o"]
    return out


def _attention_params(rng, d):
    p = {}
    for name in "qkvo":
        p[f"w_{name}"] = rng.normal(size=(d, d)) / math.sqrt(d)
        p[f"b_{name}"] = rng.normal(size=(d,)) * 0.1
    return p


@pytest.mark.parametrize("dtype", DTYPES)
def test_self_attention_with_padding_mask(backend, dtype):
    xp = backend.xp
    rng = _rng(14)
    d, n_heads = 8, 4
    p = _attention_params(rng, d)
    ids = np.array([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]])
    x = rng.normal(size=(2, 5, d))
    mask = (ids != 0)[:, None, None, :]
    np.testing.assert_array_equal(_np(backend, parts.padding_mask(xp.asarray(ids), 0)), mask[:, 0, 0, :])
    y = _attention(
        backend, _to(backend, p, dtype), _to(backend, x, dtype), _to(backend, x, dtype), xp.asarray(mask), n_heads
    )
    chex.assert_shape(y, (2, 5, d))
    _close(_np(backend, y), _attention_ref(p, x, x, mask, n_heads), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_self_attention_with_causal_and_padding_mask(backend, dtype):
    xp = backend.xp
    rng = _rng(15)
    d, n_heads, t = 12, 3, 6
    p = _attention_params(rng, d)
    ids = np.array([[4, 4, 2, 9, 0, 0], [1, 2, 3, 4, 5, 6], [7, 0, 0, 0, 0, 0]])
    x = rng.normal(size=(3, t, d))
    causal = np.tril(np.ones((t, t), dtype=bool))[None, None]
    np.testing.assert_array_equal(_np(backend, parts.causal_mask(t, xp)), causal)
    mask = causal & (ids != 0)[:, None, None, :]  # what the decoder uses, (B, 1, T, T)
    y = _attention(
        backend, _to(backend, p, dtype), _to(backend, x, dtype), _to(backend, x, dtype), xp.asarray(mask), n_heads
    )
    expected = _attention_ref(p, x, x, mask, n_heads)
    _close(_np(backend, y), expected, dtype)
    # Causality: changing the inputs after position 2 leaves outputs at positions <= 2 unchanged.
    x2 = x.copy()
    x2[:, 3:] = rng.normal(size=(3, t - 3, d))
    y2 = _attention(
        backend, _to(backend, p, dtype), _to(backend, x2, dtype), _to(backend, x2, dtype), xp.asarray(mask), n_heads
    )
    _close(_np(backend, y2)[:, :3], _np(backend, y)[:, :3], dtype)
    assert not np.allclose(_np(backend, y2)[:, 3:4], _np(backend, y)[:, 3:4])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_attention(backend, dtype):
    xp = backend.xp
    rng = _rng(16)
    d, n_heads = 8, 2
    p = _attention_params(rng, d)
    x_q = rng.normal(size=(2, 3, d))
    x_kv = rng.normal(size=(2, 5, d))
    src = np.array([[1, 2, 0, 0, 0], [0, 0, 0, 0, 0]])  # the second row is all padding
    mask = (src != 0)[:, None, None, :]
    y = _attention(
        backend, _to(backend, p, dtype), _to(backend, x_q, dtype), _to(backend, x_kv, dtype), xp.asarray(mask), n_heads
    )
    chex.assert_shape(y, (2, 3, d))
    y_np = _np(backend, y)
    assert np.all(np.isfinite(y_np))
    expected = _attention_ref(p, x_q, x_kv, mask, n_heads)
    _close(y_np, expected, dtype)
    _close(y_np[1], np.broadcast_to(p["b_o"], (3, d)), dtype)  # nothing to attend to: just the output bias


def _cached_self_attention(p, x_t, cache, mask, n_heads, position):
    return attention.fwd(p, x_t, x_t, mask, n_heads, cache, position)


def _cached_cross_attention(p, x_q, memory, mask, n_heads):
    return attention.fwd(p, x_q, None, mask, n_heads, attention.project_kv(p, memory, n_heads))[0]


def test_attention_with_a_key_value_cache_equals_attention_over_the_whole_sequence(backend):
    """Self-attention one position at a time, each writing its keys/values into the cache, gives
    the causal attention over the whole sequence; cross-attention over project_kv's cache gives
    cross-attention over the memory."""
    xp = backend.xp
    rng = _rng(19)
    batch, t, s, d, n_heads = 2, 5, 4, 8, 2
    p = _to(backend, _attention_params(rng, d))
    x, memory = _to(backend, rng.normal(size=(batch, t, d))), _to(backend, rng.normal(size=(batch, s, d)))
    full = _np(backend, _attention(backend, p, x, x, parts.causal_mask(t, xp), n_heads))
    empty = xp.zeros((batch, n_heads, t, d // n_heads), dtype=xp.float64)
    cache = attention.KVCache(empty, empty)
    step = _jit(backend, _cached_self_attention, "n_heads")  # the position is traced on JAX
    for i in range(t):
        mask = xp.reshape(xp.arange(t) <= i, (1, 1, 1, t))  # the positions written so far
        y, cache = step(p, x[:, i : i + 1], cache, mask, n_heads, xp.asarray(i))
        _close(_np(backend, y)[:, 0], full[:, i], "float64")
    k_full = attention.split_heads(linear.apply(attention.projection(p, "k"), x), n_heads)
    _close(_np(backend, cache.k), _np(backend, k_full), "float64")

    cross_mask = xp.asarray(np.array([[True, True, False, False], [True] * 4])[:, None, None, :])
    cached = _jit(backend, _cached_cross_attention, "n_heads")(p, x, memory, cross_mask, n_heads)
    _close(_np(backend, cached), _np(backend, _attention(backend, p, x, memory, cross_mask, n_heads)), "float64")


def test_attention_without_mask(backend):
    rng = _rng(17)
    d, n_heads = 8, 8  # one dimension per head
    p = _attention_params(rng, d)
    x = rng.normal(size=(1, 4, d))
    y = _attention(backend, _to(backend, p), _to(backend, x), _to(backend, x), None, n_heads)
    np.testing.assert_allclose(
        _np(backend, y), _attention_ref(p, x, x, np.ones((1, 1, 1, 4), bool), n_heads), rtol=1e-12
    )


def test_attention_heads_are_not_one_big_head(backend):
    """A reference with a single head gives a different answer: the head split matters."""
    rng = _rng(18)
    d = 8
    p = _attention_params(rng, d)
    x = rng.normal(size=(1, 4, d))
    mask = np.ones((1, 1, 1, 4), bool)
    y4 = _np(backend, _attention(backend, _to(backend, p), _to(backend, x), _to(backend, x), None, 4))
    np.testing.assert_allclose(y4, _attention_ref(p, x, x, mask, 4), rtol=1e-12)
    assert not np.allclose(y4, _attention_ref(p, x, x, mask, 1), atol=1e-6)


def test_split_merge_heads_round_trip(backend):
    x = _to(backend, _rng(19).normal(size=(2, 5, 12)))
    heads = attention.split_heads(x, 3)
    chex.assert_shape(heads, (2, 3, 5, 4))
    np.testing.assert_array_equal(_np(backend, heads)[:, 1], _np(backend, x)[:, :, 4:8])
    np.testing.assert_array_equal(_np(backend, attention.merge_heads(heads)), _np(backend, x))


def test_attention_init(backend):
    p = _jit(backend, attention.init, "d_model", "dtype")(backend.random.key(0), 8, backend.xp.float32)
    assert set(p) == {"w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o"}
    chex.assert_shape([p[f"w_{n}"] for n in "qkvo"], (8, 8))
    chex.assert_shape([p[f"b_{n}"] for n in "qkvo"], (8,))
    ws = [_np(backend, p[f"w_{n}"]) for n in "qkvo"]
    assert all(not np.array_equal(ws[i], ws[j]) for i in range(4) for j in range(i + 1, 4))
    chex.assert_trees_all_close(
        {n: _np(backend, p[f"b_{n}"]) for n in "qkvo"}, {n: np.zeros(8, np.float32) for n in "qkvo"}
    )


# --- NumPy's in-place paths against the plain operations, bit for bit (float32) ------------------


def _float32(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_numpy_layer_norm_bwd_equals_the_plain_operations_bit_for_bit():
    """Guards layer_norm's NumPy backward (its products with x_hat in one scratch array)."""
    params = {"scale": _float32(1, (6,)), "bias": _float32(2, (6,))}
    _, saved = layer_norm.fwd(params, _float32(3, (2, 3, 6)))
    g = _float32(4, (2, 3, 6))
    dparams, dx = layer_norm.bwd(saved, g)
    x_hat, inv_std, scale = saved
    want = g * scale
    projection = np.mean(want * x_hat, axis=-1, keepdims=True)
    want = (want - np.mean(want, axis=-1, keepdims=True) - x_hat * projection) * inv_std
    np.testing.assert_array_equal(dx, want, strict=True)
    np.testing.assert_array_equal(dparams["scale"], np.sum(g * x_hat, axis=(0, 1)), strict=True)
    np.testing.assert_array_equal(dparams["bias"], np.sum(g, axis=(0, 1)), strict=True)


def test_numpy_softmax_fwd_equals_the_plain_operations_bit_for_bit():
    """Guards softmax's NumPy forward (the shift and exp in one array), masked rows included."""
    x = _float32(1, (2, 3, 5))
    mask = np.random.default_rng(2).random((2, 3, 5)) < 0.6
    mask[0, 0] = False  # a row with nothing to attend to
    p, _ = softmax.fwd(x, mask)
    shifted = np.where(mask, x, np.float32(-np.inf))
    row_max = np.max(shifted, axis=-1, keepdims=True)
    e = np.exp(shifted - np.where(row_max == -np.inf, np.float32(0), row_max))
    total = np.sum(e, axis=-1, keepdims=True)
    np.testing.assert_array_equal(p, e / np.where(total == 0, np.float32(1), total), strict=True)


def test_numpy_attention_input_projection_bwd_equals_the_stacked_gradient_bit_for_bit():
    """Guards the NumPy backward of the fused q, k, v projection (one copy into (B, T, 3, H, Dh))."""
    batch, length, n_heads, d_model = 2, 3, 2, 8
    x = _float32(1, (batch, length, d_model))
    params = {
        f"{kind}_{name}": _float32(i, (d_model, d_model) if kind == "w" else (d_model,))
        for i, (kind, name) in enumerate((k, n) for n in "qkv" for k in "wb")
    }
    _, saved = attention._project_heads(params, x, ("q", "k", "v"), n_heads)
    d_heads = tuple(_float32(10 + i, (batch, n_heads, length, d_model // n_heads)) for i in range(3))
    dparams, dxs = attention._project_heads_bwd(saved, d_heads, (1, 2))
    g = np.stack(d_heads).transpose(1, 3, 0, 2, 4).reshape(batch * length, 3 * d_model)
    d_w = saved.x2.T @ g
    for i in range(3):
        np.testing.assert_array_equal(dparams[i]["w"], d_w[:, i * d_model : (i + 1) * d_model], strict=True)
        np.testing.assert_array_equal(dparams[i]["b"], np.sum(g, axis=0)[i * d_model : (i + 1) * d_model])
    np.testing.assert_array_equal(dxs[0], (g[:, :d_model] @ saved.w[:, :d_model].T).reshape(x.shape), strict=True)
    np.testing.assert_array_equal(dxs[1], (g[:, d_model:] @ saved.w[:, d_model:].T).reshape(x.shape), strict=True)
