"""Today's parts (RMSNorm, rotary positions, SwiGLU/GeGLU, grouped-query attention without biases,
unscaled embeddings): each hand-written backward against finite differences and jax.vjp
(check_part, float64, on the FT_BACKEND backend), each forward against its formula in NumPy."""

import numpy as np
import pytest

from functional_transformer import parts as P
from functional_transformer.layers import activations, attention, glu, rms_norm, rotary

pytestmark = pytest.mark.usefixtures("x64")


def _x(backend, shape, seed=0):
    return backend.asarray(np.random.default_rng(seed).normal(size=shape))


def _params(backend, part, seed=0):
    """The part's params in float64 with random values (biases and scales away from 0 and 1)."""
    params = part.init(backend.random.key(seed))
    rng = np.random.default_rng(seed + 1)

    def fill(tree):
        return {
            k: fill(v) if isinstance(v, dict) else backend.asarray(rng.normal(size=tuple(v.shape)) * 0.5)
            for k, v in tree.items()
        }

    return fill(params)


PARTS = {
    "rms_norm": lambda: P.RMSNorm(8, "float64", eps=1e-5),
    "layer_norm_eps": lambda: P.LayerNorm(8, "float64", eps=1e-3),
    "swiglu": lambda: P.GatedFeedForward(8, 12, "silu", dtype="float64"),
    "geglu_bias": lambda: P.GatedFeedForward(8, 12, "gelu", bias=True, dtype="float64"),
    "silu": lambda: P.Activation("silu"),
    "gqa_rope": lambda: P.SelfAttention(8, 4, causal=True, dtype="float64", n_kv_heads=2, bias=False, rope_base=100.0),
    "mqa": lambda: P.SelfAttention(8, 4, causal=True, dtype="float64", n_kv_heads=1),
    "rope_only": lambda: P.SelfAttention(8, 2, dtype="float64", rope_base=10000.0),
    "no_bias": lambda: P.SelfAttention(8, 2, causal=True, dtype="float64", bias=False),
    "rms_residual": lambda: P.Residual(
        P.GatedFeedForward(8, 12, dtype="float64"), 8, norm_first=True, norm="rms", norm_eps=1e-6, dtype="float64"
    ),
}


@pytest.mark.parametrize("name", sorted(PARTS))
def test_part_backward(backend, name):
    part = PARTS[name]()
    params = _params(backend, part)
    errors = P.check_part(part, params, _x(backend, (2, 5, 8)))
    assert errors["finite_differences"] < 1e-6


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("positional", ["learned", "none"])
def test_embedding_backward(backend, scale, positional):
    part = P.Embedding(11, 8, 6, positional, "float64", scale=scale)
    ids = backend.asarray(np.array([[1, 2, 3, 4], [5, 6, 7, 10]], dtype=np.int32))
    P.check_part(part, _params(backend, part), ids)


def test_embedding_unscaled_and_without_positions(backend):
    part = P.Embedding(11, 8, 6, "none", "float64", scale=False)
    params = _params(backend, part)
    ids = np.array([[1, 2, 3]], dtype=np.int32)
    y = backend.to_numpy(part.apply(params, backend.asarray(ids)))
    np.testing.assert_array_equal(y, backend.to_numpy(params["tokens"])[ids])


def test_rms_norm_formula(backend):
    x = np.random.default_rng(1).normal(size=(3, 8))
    scale = np.linspace(0.5, 2.0, 8)
    y = backend.to_numpy(rms_norm.apply({"scale": backend.asarray(scale)}, backend.asarray(x), 1e-5))
    np.testing.assert_allclose(y, x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-5) * scale, rtol=1e-13)


def test_rotary_is_a_rotation_by_relative_position(backend, xp):
    """rotate_half layout: dims i and i + Dh/2 turn by position * base^(-2i/Dh); q.k depends on m - n only."""
    d_head, base = 6, 100.0
    q, k = np.random.default_rng(2).normal(size=(2, d_head))
    table = rotary.table(8, d_head, xp.float64, xp, base=base)
    rotated_q = backend.to_numpy(rotary.apply(backend.asarray(np.tile(q, (8, 1))), table))
    rotated_k = backend.to_numpy(rotary.apply(backend.asarray(np.tile(k, (8, 1))), table))
    half = d_head // 2
    angle = 3 * base ** (-2 * np.arange(half) / d_head)
    expected = np.concatenate(
        [q[:half] * np.cos(angle) - q[half:] * np.sin(angle), q[half:] * np.cos(angle) + q[:half] * np.sin(angle)]
    )
    np.testing.assert_allclose(rotated_q[3], expected, rtol=1e-13)
    np.testing.assert_allclose(rotated_q[5] @ rotated_k[2], rotated_q[4] @ rotated_k[1], rtol=1e-12)
    np.testing.assert_allclose(rotated_q[0], q, rtol=0)


def test_silu_and_swiglu_formula(backend):
    x = np.random.default_rng(3).normal(size=(2, 3, 4)) * 4
    silu = backend.to_numpy(activations.silu_fwd(backend.asarray(x))[0])
    np.testing.assert_allclose(silu, x / (1 + np.exp(-x)), rtol=1e-13)
    rng = np.random.default_rng(4)
    params = {"w_gate": rng.normal(size=(4, 5)), "w_up": rng.normal(size=(4, 5)), "w_down": rng.normal(size=(5, 4))}
    y = backend.to_numpy(glu.apply({k: backend.asarray(v) for k, v in params.items()}, backend.asarray(x)))
    gate = x @ params["w_gate"]
    np.testing.assert_allclose(y, (gate / (1 + np.exp(-gate)) * (x @ params["w_up"])) @ params["w_down"], rtol=1e-12)


def test_grouped_attention_equals_repeated_heads(backend):
    """n_kv_heads < n_heads is the paper's attention with each key/value head copied to its query heads."""
    part = P.SelfAttention(8, 4, causal=True, dtype="float64", n_kv_heads=2)
    params = _params(backend, part)
    x = _x(backend, (2, 5, 8))
    full = P.SelfAttention(8, 4, causal=True, dtype="float64")
    np_params = {k: backend.to_numpy(v) for k, v in params.items()}
    for name in ("k", "v"):  # kv head j serves query heads 2j and 2j + 1
        w, b = np_params[f"w_{name}"].reshape(8, 2, 1, 2), np_params[f"b_{name}"].reshape(2, 1, 2)
        np_params[f"w_{name}"] = np.repeat(w, 2, axis=2).reshape(8, 8)
        np_params[f"b_{name}"] = np.repeat(b, 2, axis=1).reshape(8)
    expected = full.apply({k: backend.asarray(v) for k, v in np_params.items()}, x)
    np.testing.assert_allclose(backend.to_numpy(part.apply(params, x)), backend.to_numpy(expected), rtol=1e-12)


@pytest.mark.parametrize("settings", [dict(n_kv_heads=2, bias=False, rope_base=10000.0), dict(n_kv_heads=1)])
def test_grouped_attention_cached_steps_equal_full_pass(backend, settings):
    part = P.SelfAttention(8, 4, causal=True, dtype="float64", **settings)
    params = _params(backend, part)
    x = _x(backend, (2, 5, 8))
    full = backend.to_numpy(part.apply(params, x))
    cache = part.init_cache(params, x[:, :1], 5)
    assert tuple(cache["k"].shape) == (2, part.kv_heads, 5, 2)
    for position in range(5):
        y, cache = part.step(params, x[:, position : position + 1], cache, position)
        np.testing.assert_allclose(backend.to_numpy(y)[:, 0], full[:, position], rtol=1e-12, atol=1e-13)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        P.SelfAttention(8, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="must be even"):
        P.SelfAttention(6, 2, rope_base=10000.0)
    with pytest.raises(ValueError, match="unknown norm"):
        P.Residual(P.Activation("relu"), 8, norm="batch")
    with pytest.raises(ValueError, match="eps must be a positive"):
        P.RMSNorm(8, eps=0.0)


def test_paper_attention_unchanged_by_the_new_settings(backend):
    """The defaults take the paper's kernels: same params, same numbers as attention.fwd."""
    part = P.SelfAttention(8, 2, dtype="float64")
    assert not part.grouped
    params = part.init(backend.random.key(0))
    assert sorted(params) == sorted(attention.init(backend.random.key(0), 8, backend.xp.float64))
