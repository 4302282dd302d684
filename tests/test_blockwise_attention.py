"""Blockwise attention (layers/blockwise_attention.py) against the full kernel: values and every
gradient equal to rounding in float64, masks, causal, grouped-query heads and lengths that are not
multiples of the tile included; the parts and models that pick it by `attention_kernel`; its
backward against finite differences and jax.vjp; and its memory growing linearly, not quadratically."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tracemalloc

import numpy as np
import pytest

import backends
import functional_transformer as ft
from functional_transformer import models
from functional_transformer import parts as P
from functional_transformer.errors import ConfigError
from functional_transformer.layers import attention
from functional_transformer.layers import blockwise_attention as bw

HAS_JAX = importlib.util.find_spec("jax") is not None
ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
NP = backends.get_backend("numpy")

pytestmark = pytest.mark.usefixtures("x64")


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _padding(batch, n_keys, seed):
    """Key padding (B, 1, 1, S): a short first sequence, and with B > 1 a last one with every key masked."""
    keep = np.ones((batch, n_keys), bool)
    keep[0, n_keys // 2 :] = False
    if batch > 1:
        keep[-1, :] = False
    return keep.reshape(batch, 1, 1, n_keys)


def _full_reference(q, k, v, mask, causal, g):
    """The full kernel (attention.py) on the same inputs: out, dq, dk, dv."""
    xp = backends.array_namespace(q)
    if causal:
        causal_mask = P.causal_mask(q.shape[2], xp)
        mask = causal_mask if mask is None else causal_mask & mask
    n_rep = q.shape[1] // k.shape[1]
    out, saved = attention.dot_product_fwd(q, attention.repeat_kv(k, n_rep), attention.repeat_kv(v, n_rep), mask)
    dq, dk, dv = attention.dot_product_bwd(saved, g)
    return out, dq, attention.repeat_kv_bwd(dk, n_rep), attention.repeat_kv_bwd(dv, n_rep)


KERNEL_CASES = {
    # name: (B, H, Hkv, T, S, causal, mask kind, block_q, block_k)
    "plain_odd_lengths": (2, 4, 4, 13, 13, False, None, 4, 5),
    "causal_gqa": (2, 4, 2, 13, 13, True, None, 4, 5),
    "causal_padding_multi_query": (2, 4, 1, 13, 13, True, "padding", 5, 4),
    "cross_padding": (2, 4, 2, 11, 7, False, "padding", 3, 4),
    "causal_full_mask": (2, 4, 2, 9, 9, True, "full", 4, 3),
    "one_tile": (1, 2, 2, 8, 8, True, "padding", 16, 16),
}


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_blockwise_equals_full_attention_values_and_gradients(backend, name):
    """Guards the online softmax (rescaling by the running max), the recomputed probabilities of the
    backward, the causal tiles skipped and the diagonal ones masked, the padded last tile (JAX), the
    grouped heads' summed key/value gradients and fully masked queries (zeros, never NaN)."""
    batch, n_heads, n_kv, length, n_keys, causal, mask_kind, block_q, block_k = KERNEL_CASES[name]
    d_head = 4
    q, g = _normal(1, (batch, n_heads, length, d_head)), _normal(4, (batch, n_heads, length, d_head))
    k, v = _normal(2, (batch, n_kv, n_keys, d_head)), _normal(3, (batch, n_kv, n_keys, d_head))
    mask = None
    if mask_kind == "padding":
        mask = _padding(batch, n_keys, 5)
    elif mask_kind == "full":
        mask = np.random.default_rng(6).random((batch, n_heads, length, n_keys)) > 0.3
    q, k, v, g = (backend.asarray(a) for a in (q, k, v, g))
    mask = None if mask is None else backend.asarray(mask)
    expected = _full_reference(q, k, v, mask, causal, g)
    out, saved = bw.fwd(q, k, v, mask, causal=causal, block_q=block_q, block_k=block_k)
    got = (out, *bw.bwd(saved, g, causal=causal, block_q=block_q, block_k=block_k))
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        assert a.shape == b.shape, what
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12, err_msg=what)
    if mask_kind == "padding" and batch > 1:  # the last sequence sees no key: zero output, not NaN
        assert np.all(np.asarray(out)[-1] == 0)
    assert np.any(np.asarray(out) != 0)


def test_blockwise_rejects_shapes_that_do_not_fit(backend):
    q = backend.asarray(np.zeros((1, 3, 4, 2)))
    k = backend.asarray(np.zeros((1, 2, 4, 2)))
    with pytest.raises(ValueError, match="multiple of k's"):
        bw.fwd(q, k, k)
    with pytest.raises(ValueError, match="as many queries as keys"):
        bw.fwd(q[:, :2], k[:, :, :3], k[:, :, :3], causal=True)
    with pytest.raises(ValueError, match="must broadcast"):
        bw.fwd(q[:, :2], k, k, backend.asarray(np.ones((1, 1, 4, 3), bool)))


# --- the parts and the models ----------------------------------------------------------------


def _randomized(params, seed):
    rng = np.random.default_rng(seed)
    return backends.tree_map(lambda leaf: np.asarray(leaf) + 0.1 * rng.standard_normal(np.shape(leaf)), params)


PART_CASES = {
    "self_causal_padding": (
        P.SelfAttention(8, 2, causal=True, dtype="float64"),
        _normal(0, (2, 7, 8)),
        {"mask": np.array([[True] * 7, [True] * 4 + [False] * 3])},
    ),
    "self_grouped_rope_no_bias": (
        P.SelfAttention(8, 4, causal=True, dtype="float64", n_kv_heads=2, bias=False, rope_base=10000.0),
        _normal(0, (2, 7, 8)),
        {},
    ),
    "cross_memory_padding": (
        P.CrossAttention(8, 2, dtype="float64"),
        (_normal(0, (2, 5, 8)), _normal(1, (2, 6, 8))),
        {"memory_mask": np.array([[True] * 6, [True] * 2 + [False] * 4])},
    ),
}


def _leaves(tree) -> list:
    """The arrays of nested tuples and dicts, in order (dicts by key), Nones dropped."""
    if tree is None:
        return []
    if isinstance(tree, dict):
        return [leaf for name in sorted(tree) for leaf in _leaves(tree[name])]
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


def _on(backend, x):
    return tuple(backend.asarray(a) for a in x) if isinstance(x, tuple) else backend.asarray(x)


@pytest.mark.parametrize("name", PART_CASES)
def test_parts_blockwise_equal_full_outputs_and_gradients(backend, name):
    """The parts with attention_kernel="blockwise" against "full": output and the gradients of params
    and inputs (the hand-written backward of each), so the routing in parts/attention.py and
    multi_head_fwd/bwd (projections, rotary positions, grouped heads, biases) are guarded."""
    part, x, side = PART_CASES[name]
    full, blockwise = (dataclasses.replace(part, attention_kernel=kernel) for kernel in ("full", "blockwise"))
    params = backends.tree_map(backend.asarray, _randomized(full.init(NP.random.key(3)), 42))
    x, side = _on(backend, x), {k: backend.asarray(v) for k, v in side.items()}
    results = []
    for chosen in (full, blockwise):
        y, saved = chosen.fwd(params, x, **side)
        dy = backend.asarray(_normal(9, tuple(y.shape)))
        results.append((y, *chosen.bwd(params, saved, dy)))
    assert isinstance(saved, bw.HeadsSaved)  # the blockwise part did run blockwise
    leaves_full, leaves_blockwise = (_leaves(r) for r in results)
    assert len(leaves_full) == len(leaves_blockwise)
    for a, b in zip(leaves_full, leaves_blockwise, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-12)


# On JAX each case runs eagerly op by op around the compiled kernel: one case in the default run.
SLOW_ON_JAX = pytest.mark.slow if ON_JAX else ()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=SLOW_ON_JAX if n != "cross_memory_padding" else ()) for n in PART_CASES]
)
def test_blockwise_parts_backward_matches_finite_differences_and_jax(backend, name):
    """The VJP against finite differences and jax.vjp of the forward (which on JAX runs through the
    custom_vjp, so its backward is checked against the numbers too)."""
    part, x, side = PART_CASES[name]
    part = dataclasses.replace(part, attention_kernel="blockwise")
    params = backends.tree_map(backend.asarray, _randomized(part.init(NP.random.key(3)), 42))
    errors = P.check_part(part, params, _on(backend, x), rtol=1e-6, **{k: backend.asarray(v) for k, v in side.items()})
    assert errors["finite_differences"] < 1e-6
    if HAS_JAX:
        assert errors["jax"] < 1e-10


@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
def test_jax_grad_under_jit_runs_the_hand_written_backward(jax_backend):
    """jax.grad through the blockwise kernel's custom_vjp, jitted, equals jax.grad of the full kernel;
    and the custom_vjp's backward is the one in use (a planted wrong bwd would differ)."""
    import jax

    rng = np.random.default_rng(0)
    q, k, v = (jax_backend.asarray(rng.standard_normal((1, 4, 11, 4))) for _ in range(3))
    k, v = k[:, :2], v[:, :2]  # grouped: 2 key/value heads

    def loss(kernel):
        def value(q, k, v):
            if kernel == "blockwise":
                out = bw.apply(q, k, v, causal=True, block_q=4, block_k=3)
            else:
                out = _full_reference(q, k, v, None, True, q)[0]
            return jax.numpy.sum(jax.numpy.sin(out))

        return jax_backend.jit(jax.grad(value, argnums=(0, 1, 2)))

    got, expected = loss("blockwise")(q, k, v), loss("full")(q, k, v)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12)


def _tiny_encoder_decoder(kernel):
    return ft.TransformerConfig(
        src_vocab_size=11,
        tgt_vocab_size=13,
        d_model=8,
        n_heads=2,
        d_ff=16,
        n_encoder_layers=1,
        n_decoder_layers=1,
        max_len=16,
        dtype="float64",
        attention_kernel=kernel,
    )


def _count_blockwise(saved) -> int:
    """How many blockwise attention residuals a model's residuals hold."""
    if isinstance(saved, bw.HeadsSaved):
        return 1
    if isinstance(saved, dict):
        return sum(_count_blockwise(value) for value in saved.values())
    if isinstance(saved, (tuple, list)):
        return sum(_count_blockwise(value) for value in saved)
    return 0


@(pytest.mark.slow if ON_JAX else lambda test: test)
def test_encoder_decoder_blockwise_equals_full(backend):
    """The config's attention_kernel reaches every attention of the model (encoder self, decoder
    causal self, cross) and changes nothing but rounding: logits and all parameter gradients."""
    src = np.array([[3, 4, 5, 6, 7, 0, 0], [2, 3, 4, 5, 6, 7, 8]])
    tgt = np.array([[1, 2, 3, 0, 0], [1, 5, 4, 3, 2]])
    results = []
    for kernel in ("full", "blockwise"):
        model = models.encoder_decoder.for_config(_tiny_encoder_decoder(kernel))
        params = backends.tree_map(backend.asarray, _randomized(model.init(NP.random.key(1)), 7))
        logits, saved = model.fwd(params, (backend.asarray(src), backend.asarray(tgt)))
        grads, _ = model.bwd(params, saved, backend.asarray(_normal(2, tuple(logits.shape))))
        results.append((logits, grads))
    assert _count_blockwise(saved) == 3  # encoder self, decoder self and cross: all blockwise
    for a, b in zip(_leaves(results[0]), _leaves(results[1]), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-12)


def test_the_setting_is_checked_and_auto_follows_its_rule():
    with pytest.raises(ConfigError, match="attention_kernel must be one of"):
        _tiny_encoder_decoder("flash")
    with pytest.raises(ConfigError, match="attention_kernel must be one of"):
        P.SelfAttention(8, 2, attention_kernel="fast")
    with pytest.raises(ConfigError, match="attention_kernel must be one of"):
        models.DecoderConfig(vocab_size=10, attention_kernel="fast")
    side = int(np.sqrt(P.attention.AUTO_BLOCKWISE_AT))
    assert not P.attention.uses_blockwise("auto", side - 1, side)
    assert P.attention.uses_blockwise("auto", side, side)
    assert P.attention.uses_blockwise("blockwise", 1, 1)
    assert not P.attention.uses_blockwise("full", 10**6, 10**6)


# --- memory --------------------------------------------------------------------------------------


def _numpy_peak_bytes(length, kernel):
    """tracemalloc's peak over one forward and backward of causal attention at `length`, the inputs
    already allocated (NumPy reports its buffers to tracemalloc)."""
    rng = np.random.default_rng(0)
    q, k, v, g = (rng.standard_normal((1, 2, length, 8)) for _ in range(4))
    tracemalloc.start()
    try:
        if kernel == "blockwise":
            out, saved = bw.fwd(q, k, v, causal=True, block_q=64, block_k=64)
            bw.bwd(saved, g, causal=True, block_q=64, block_k=64)
        else:
            _full_reference(q, k, v, None, True, g)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_numpy_peak_memory_grows_linearly_with_length():
    """Doubling T doubles blockwise attention's peak memory (about 2x, far from the 4x of a (T, T)
    matrix), while the full kernel's quadruples: the property the kernel exists for."""
    short, long = _numpy_peak_bytes(512, "blockwise"), _numpy_peak_bytes(1024, "blockwise")
    assert long / short < 2.5, (short, long)
    full_short, full_long = _numpy_peak_bytes(512, "full"), _numpy_peak_bytes(1024, "full")
    assert full_long / full_short > 3.5, (full_short, full_long)  # the measure sees quadratic growth
    assert long < full_long / 4


@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
def test_jax_compiled_gradient_memory_grows_linearly_with_length(jax_backend):
    """XLA's temporary buffers for jax.grad of blockwise attention, jitted, at T and 2T: linear, where
    jax.grad of the full kernel saves the (T, T) probabilities."""
    import jax

    def temp_bytes(length, kernel):
        def value(q, k, v):
            if kernel == "blockwise":
                out = bw.apply(q, k, v, causal=True, block_q=64, block_k=64)
            else:
                out = _full_reference(q, k, v, None, True, q)[0]
            return jax.numpy.sum(out * out)

        spec = jax.ShapeDtypeStruct((1, 2, length, 8), jax.numpy.float32)
        compiled = jax.jit(jax.grad(value, argnums=(0, 1, 2))).lower(spec, spec, spec).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    short, long = temp_bytes(512, "blockwise"), temp_bytes(1024, "blockwise")
    assert long / short < 2.5, (short, long)
    full_short, full_long = temp_bytes(512, "full"), temp_bytes(1024, "full")
    assert full_long / full_short > 3.5, (full_short, full_long)
    assert long < full_long / 4


def test_a_mask_of_the_wrong_rank_or_dtype_is_a_clear_error(xp):
    q = xp.zeros((1, 2, 4, 8))
    with pytest.raises(ValueError, match="mask must be boolean"):
        bw.fwd(q, q, q, xp.ones((1, 4), dtype=bool), causal=False)
    with pytest.raises(ValueError, match="mask must be boolean"):
        bw.fwd(q, q, q, xp.ones((1, 1, 4, 4), dtype=xp.int32), causal=False)


def test_a_one_tile_forward_serves_a_backward_in_smaller_tiles(backend):
    """The forward's one-tile weights are reused only by a one-tile backward: with smaller backward
    tiles the gradients are still the full kernel's."""
    q, k, v, g = (backend.asarray(_normal(seed, (1, 2, 7, 4))) for seed in (1, 2, 3, 4))
    expected = _full_reference(q, k, v, None, True, g)
    _, saved = bw.fwd(q, k, v, causal=True)
    for what, a, b in zip(("dq", "dk", "dv"), bw.bwd(saved, g, causal=True, block_q=3, block_k=2), expected[1:]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12, err_msg=what)
