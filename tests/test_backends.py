"""The backends package: choosing a backend (and the errors when that fails), the Threefry
generator against published test vectors and against JAX, the distributions it draws, the tree
helpers and `backend_of`."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_jax

import backends
from backends import prng as R

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_python(code: str, timeout: float = 120, **env_overrides) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


# Draws go through `backend.jit` (jax.jit on JAX, the identity on NumPy): on JAX each eager op
# would otherwise compile once per shape, which makes the statistical tests slow.
def _uniform(backend, key, shape, dtype, minval=0.0, maxval=1.0):
    fn = backend.jit(R.uniform, static_argnames=("shape", "dtype", "minval", "maxval"))
    return fn(key, shape, dtype, minval, maxval)


def _normal(backend, key, shape, dtype):
    return backend.jit(R.normal, static_argnames=("shape", "dtype"))(key, shape, dtype)


def _bernoulli(backend, key, p, shape):
    return backend.jit(R.bernoulli, static_argnames=("p", "shape"))(key, p, shape)


def _bits(backend, key, shape):
    return backend.jit(R.bits, static_argnames=("shape",))(key, shape)


def _split(backend, key, num):
    return backend.jit(R.split, static_argnames=("num",))(key, num)


# --- choosing a backend ---------------------------------------------------------------------------


def test_get_backend_numpy():
    b = backends.get_backend("numpy")
    assert b.name == "numpy"
    assert b.xp is np
    assert backends.get_backend("numpy") is b  # one instance per name
    x = b.asarray([1.0, 2.0], dtype=np.float32)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32


def test_get_backend_jax(jax_backend):
    import jax.numpy as jnp

    b = backends.get_backend("jax")
    assert b is jax_backend
    assert b.name == "jax"
    assert b.xp is jnp
    x = b.asarray([1.0, 2.0], dtype=jnp.float64)
    assert x.dtype == jnp.float64  # asarray runs in the backend's x64 scope, so float64 is really float64
    np.testing.assert_array_equal(b.to_numpy(x), [1.0, 2.0])


# A user's program: their JAX defaults before the library is imported, the library used in float32
# (no x64 needed) and float64 (x64 inside the library's calls only), the defaults checked again.
_USER_DEFAULTS_PROGRAM = """
import warnings
warnings.simplefilter("error")  # JAX's warning when float64 is truncated outside an x64 scope
import jax, jax.numpy as jnp, numpy as np
zeros, arange, flag = jnp.zeros(2).dtype, jnp.arange(3).dtype, jax.config.jax_enable_x64
import functional_transformer as ft
from functional_transformer import generate, train
src, tgt = np.array([[3, 4, 5, 0], [6, 7, 0, 0]]), np.array([[1, 3, 4, 5], [1, 6, 7, 0]])
batch = {"src": src, "tgt_in": tgt, "tgt_out": np.roll(tgt, -1, axis=1)}
for dtype in ("float32", "float64"):
    cfg = ft.TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=8, n_heads=2, d_ff=16,
                               n_encoder_layers=1, n_decoder_layers=1, max_len=8, dtype=dtype)
    tcfg = ft.TrainConfig(steps=2)
    optimizer = train.make_optimizer(tcfg, cfg)
    state = train.init_state(ft.random.key(0), cfg, optimizer)
    logits = ft.apply(state["params"], src, tgt, cfg)
    step = train.make_train_step(cfg, tcfg, optimizer, ft.backend)
    state, metrics = step(state, {k: jnp.asarray(v, dtype=jnp.int32) for k, v in batch.items()}, ft.random.key(1))
    tokens = generate.greedy(state["params"], src, cfg, bos_id=1, eos_id=2, max_steps=3)
    assert logits.dtype == dtype and state["params"]["out_proj"]["w"].dtype == dtype, (logits.dtype, dtype)
    assert metrics["loss"].dtype == dtype and np.isfinite(float(metrics["loss"])) and tokens.shape == (2, 3)
assert (jnp.zeros(2).dtype, jnp.arange(3).dtype) == (zeros, arange), (jnp.zeros(2).dtype, jnp.arange(3).dtype)
assert jax.config.jax_enable_x64 == flag
print("defaults", zeros, arange, flag)
"""


@requires_jax
def test_using_the_library_leaves_the_users_jax_defaults_alone():
    """float64 is local to the library's calls: after init, a forward, a train step and decoding,
    in float32 and float64, a user's `jnp.zeros` is float32 and `jnp.arange` int32 as before."""
    # Compiling a forward, a train step and a decoding step in two dtypes: minutes on a loaded machine.
    done = _run_python(_USER_DEFAULTS_PROGRAM, timeout=900, FT_BACKEND="jax", JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "defaults float32 int32 False" in done.stdout


def test_backend_fixture_matches_env(backend):
    assert backend.name == os.environ.get("FT_BACKEND", "numpy")


@pytest.mark.parametrize("name", ["bogus", "torch", "NumPy", ""])
def test_get_backend_unknown_name(name):
    with pytest.raises(ValueError) as info:
        backends.get_backend(name)
    message = str(info.value)
    assert repr(name) in message
    assert "numpy" in message and "jax" in message


def test_bogus_ft_backend_fails_clearly_on_first_use_not_on_import():
    # The import succeeds (so that `ft` can turn the error into one line); ft.backend raises.
    proc = _run_python(
        "import functional_transformer as ft; print('imported', flush=True); ft.backend", FT_BACKEND="bogus"
    )
    assert proc.returncode != 0
    assert proc.stdout == "imported\n"
    assert "bogus" in proc.stderr
    assert "numpy" in proc.stderr and "jax" in proc.stderr
    assert "ValueError" in proc.stderr


def test_import_with_default_backend_succeeds():
    proc = _run_python("import functional_transformer as ft; print(ft.backend.name)", FT_BACKEND="numpy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "numpy"


def test_jax_missing_gives_install_hint():
    code = (
        "import sys\n"
        "sys.modules['jax'] = None\n"
        "import backends\n"
        "assert backends.get_backend('numpy').name == 'numpy'\n"  # NumPy still works without JAX
        "backends.get_backend('jax')\n"
    )
    proc = _run_python(code)
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr
    assert "pip install" in proc.stderr
    assert "jax" in proc.stderr.lower()
    assert "FT_BACKEND=numpy" in proc.stderr  # the way out without installing anything


# --- Threefry-2x32-20 ---------------------------------------------------------------------------

# Random123's known-answer vectors (also in JAX's random_test.py): (key, counter) -> output.
THREEFRY_VECTORS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key_words, counter, expected", THREEFRY_VECTORS)
def test_threefry_known_answers(backend, key_words, counter, expected):
    xp = backend.xp
    key = xp.asarray(key_words, dtype=xp.uint32)
    x0 = xp.asarray([counter[0]], dtype=xp.uint32)
    x1 = xp.asarray([counter[1]], dtype=xp.uint32)
    y0, y1 = R.threefry2x32(key, x0, x1)
    assert y0.dtype == xp.uint32 and y1.dtype == xp.uint32
    assert (int(y0[0]), int(y1[0])) == expected


def test_threefry_is_elementwise_over_counters(backend):
    """A batch of counters gives what each counter gives alone."""
    xp = backend.xp
    (k, c, out) = THREEFRY_VECTORS[2]
    key = xp.asarray(k, dtype=xp.uint32)
    x0 = xp.asarray([0, c[0], 7], dtype=xp.uint32)
    x1 = xp.asarray([0, c[1], 9], dtype=xp.uint32)
    y0, y1 = R.threefry2x32(key, x0, x1)
    assert (int(y0[1]), int(y1[1])) == out
    for i in (0, 2):
        z0, z1 = R.threefry2x32(key, x0[i : i + 1], x1[i : i + 1])
        assert (int(z0[0]), int(z1[0])) == (int(y0[i]), int(y1[i]))


def test_numpy_threefry_in_blocks_equals_the_rounds_over_the_whole_array():
    """Guards NumPy's blocked, in-place Threefry (1-D counters, over two blocks and a remainder)
    against the plain text of the rounds, which NumPy runs on counters of any other shape."""
    key = np.asarray([0x13198A2E, 0x03707344], dtype=np.uint32)
    n = 2 * R.THREEFRY_BLOCK + 3
    x0 = np.arange(n, dtype=np.uint32) * np.uint32(7)
    x1 = np.arange(n, dtype=np.uint32)[::-1].copy()
    blocked = R.threefry2x32(key, x0, x1)
    whole = R.threefry2x32(key, x0[None], x1[None])
    for got, expected in zip(blocked, whole):
        np.testing.assert_array_equal(got, expected[0], strict=True)


def test_key_from_seed(backend):
    xp = backend.xp
    k = backend.random.key(42)
    assert k.shape == (2,) and k.dtype == xp.uint32
    assert [int(v) for v in k] == [0, 42]
    big = backend.random.key(2**40 + 5)
    assert [int(v) for v in big] == [2**8, 5]
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            backend.random.key(bad)


@pytest.mark.parametrize("seed", [42, 2**33 + 17])
def test_agrees_with_jax_random(jax_backend, seed):
    import jax

    ours = jax_backend.random
    # x64 on: jax.random.PRNGKey keeps a seed's high 32 bits only with 64-bit integers.
    with jax.threefry_partitionable(True), jax_backend.x64_scope():  # per-element counters: a shard draws its slice
        jax_key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(
            np.asarray(jax.random.fold_in(jax_key, 7)), np.asarray(ours.fold_in(ours.key(seed), 7))
        )
        np.testing.assert_array_equal(np.asarray(jax_key), np.asarray(ours.key(seed)))
        np.testing.assert_array_equal(
            np.asarray(jax.random.split(jax_key, 3)), np.asarray(ours.split(ours.key(seed), 3))
        )
        np.testing.assert_array_equal(np.asarray(jax.random.split(jax_key)), np.asarray(ours.split(ours.key(seed))))
        for shape in [(5, 3), (7,), (2 * R.THREEFRY_BLOCK + 3,)]:  # odd, even, and over NumPy's blocks
            expected = np.asarray(jax.random.bits(jax_key, shape, dtype="uint32"))
            got = np.asarray(_bits(jax_backend, ours.key(seed), shape))
            assert got.dtype == np.uint32
            np.testing.assert_array_equal(got, expected)
            # And the NumPy implementation gives the same words as JAX.
            np.testing.assert_array_equal(R.bits(R.key(seed, np), shape), expected)


def test_split_keys_are_distinct(backend):
    keys = backend.to_numpy(_split(backend, backend.random.key(0), 8))
    assert keys.shape == (8, 2) and keys.dtype == np.uint32
    assert len({tuple(k) for k in keys}) == 8


# --- distributions --------------------------------------------------------------------------------

BIG = (100_000,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_key_same_numbers_on_numpy_and_jax(numpy_backend, jax_backend, dtype):
    shape = (37, 11)  # an odd count
    n_key, j_key = numpy_backend.random.key(123), jax_backend.random.key(123)
    np_dtype, j_dtype = getattr(np, dtype), getattr(jax_backend.xp, dtype)

    u_np = R.uniform(n_key, shape, np_dtype)
    u_j = jax_backend.to_numpy(_uniform(jax_backend, j_key, shape, j_dtype))
    assert u_np.dtype == u_j.dtype == np_dtype
    np.testing.assert_array_equal(u_np, u_j)  # bit-identical

    # With a range other than [0, 1) (what linear.init draws), eagerly: see the xfail test below for jit.
    u_np = R.uniform(n_key, shape, np_dtype, minval=-2.0, maxval=3.0)
    u_j = jax_backend.to_numpy(R.uniform(j_key, shape, j_dtype, minval=-2.0, maxval=3.0))
    np.testing.assert_array_equal(u_np, u_j)

    z_np = R.normal(n_key, shape, np_dtype)
    z_j = jax_backend.to_numpy(_normal(jax_backend, j_key, shape, j_dtype))
    assert z_np.dtype == z_j.dtype == np_dtype
    if dtype == "float32":
        ulp = np.spacing(np.abs(z_np).astype(np.float32))
        assert np.all(np.abs(z_np - z_j) <= ulp)
    else:
        np.testing.assert_allclose(z_j, z_np, rtol=1e-12, atol=1e-300)

    for p in (0.1, 0.9):
        b_np = R.bernoulli(n_key, p, shape)
        b_j = jax_backend.to_numpy(_bernoulli(jax_backend, j_key, p, shape))
        assert b_np.dtype == b_j.dtype == np.bool_
        np.testing.assert_array_equal(b_np, b_j)


@pytest.mark.parametrize(
    "dtype",
    [
        "float32",
        # float64 draws keep the one-rounding gap: XLA fuses minval + range * u into one multiply-add.
        pytest.param("float64", marks=pytest.mark.xfail(strict=True, reason="XLA's fused multiply-add under jit")),
    ],
)
def test_uniform_with_range_bit_identical_under_jit(numpy_backend, jax_backend, dtype):
    shape = (37, 11)
    u_np = R.uniform(numpy_backend.random.key(123), shape, getattr(np, dtype), minval=-2.0, maxval=3.0)
    u_j = _uniform(jax_backend, jax_backend.random.key(123), shape, getattr(jax_backend.xp, dtype), -2.0, 3.0)
    np.testing.assert_array_equal(u_np, jax_backend.to_numpy(u_j))


def test_eager_draws_match_jitted(backend):
    """The library also draws outside jit (dropout in a layer called directly): the same numbers."""
    xp = backend.xp
    k = backend.random.key(8)
    np.testing.assert_array_equal(
        backend.to_numpy(R.uniform(k, (6,), xp.float32)), backend.to_numpy(_uniform(backend, k, (6,), xp.float32))
    )
    np.testing.assert_array_equal(
        backend.to_numpy(R.bernoulli(k, 0.5, (6,))), backend.to_numpy(_bernoulli(backend, k, 0.5, (6,)))
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniform_range_and_moments(backend, dtype):
    xp = backend.xp
    u = _uniform(backend, backend.random.key(1), BIG, getattr(xp, dtype))
    assert u.dtype == getattr(xp, dtype) and u.shape == BIG
    u = backend.to_numpy(u)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(u.var() - 1 / 12) < 0.002
    # Roughly flat: every tenth of [0, 1) gets about a tenth of the draws.
    counts = np.histogram(u, bins=10, range=(0, 1))[0] / u.size
    assert np.all(np.abs(counts - 0.1) < 0.006)
    # Resolution: float32 uniforms are multiples of 2**-24 (24 random bits), float64 ones of 2**-53
    # and not all multiples of 2**-24 (really more bits).
    u = u.astype(np.float64)
    bits = 24 if dtype == "float32" else 53
    assert np.all(u * 2.0**bits == np.floor(u * 2.0**bits))
    if dtype == "float64":
        assert not np.all(u * 2.0**24 == np.floor(u * 2.0**24))


def test_uniform_minval_maxval(backend):
    u = backend.to_numpy(_uniform(backend, backend.random.key(2), BIG, backend.xp.float32, -3.0, -1.0))
    assert u.min() >= -3.0 and u.max() < -1.0
    assert abs(u.mean() + 2.0) < 0.02


def test_uniform_rejects_integer_dtype(backend):
    with pytest.raises(ValueError):
        R.uniform(backend.random.key(0), (3,), backend.xp.int32)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_moments(backend, dtype):
    xp = backend.xp
    z = _normal(backend, backend.random.key(3), BIG, getattr(xp, dtype))
    assert z.dtype == getattr(xp, dtype)
    z = backend.to_numpy(z).astype(np.float64)
    assert np.all(np.isfinite(z))
    assert abs(z.mean()) < 0.015
    assert abs(z.std() - 1.0) < 0.015
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.01  # the 68% rule: a Gaussian, not just unit variance
    assert abs(np.mean(z**3)) < 0.06 and abs(np.mean(z**4) - 3.0) < 0.15


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_bernoulli_frequency(backend, p):
    b = _bernoulli(backend, backend.random.key(4), p, BIG)
    assert b.dtype == backend.xp.bool and b.shape == BIG
    freq = backend.to_numpy(b).mean()
    if p in (0.0, 1.0):
        assert freq == p
    else:
        assert abs(freq - p) < 0.01


def test_realised_probability():
    assert R.realised_probability(0.5) == 0.5
    assert abs(R.realised_probability(0.1) - 0.1) <= 2**-17
    assert R.realised_probability(0.1) * 2**16 == round(R.realised_probability(0.1) * 2**16)
    with pytest.raises(ValueError):
        R.realised_probability(1.5)


def test_different_keys_differ(backend):
    xp = backend.xp
    k1, k2 = backend.random.key(0), backend.random.key(1)
    sub = _split(backend, k1, 2)
    draws = [
        (lambda k: _uniform(backend, k, (64,), xp.float32)),
        (lambda k: _normal(backend, k, (64,), xp.float64)),
        (lambda k: _bernoulli(backend, k, 0.5, (64,))),
        (lambda k: _bits(backend, k, (64,))),
    ]
    for draw in draws:
        a, b, c, d = (backend.to_numpy(draw(k)) for k in (k1, k2, sub[0], sub[1]))
        assert not np.array_equal(a, b)
        assert not np.array_equal(c, d)
        assert not np.array_equal(a, c)
        np.testing.assert_array_equal(a, backend.to_numpy(draw(backend.random.key(0))))  # same key, same numbers


def test_shape_is_respected(backend):
    xp = backend.xp
    k = backend.random.key(5)
    assert _uniform(backend, k, (2, 3, 4), xp.float32).shape == (2, 3, 4)
    assert _normal(backend, k, (2, 3, 4), xp.float64).shape == (2, 3, 4)
    assert _bernoulli(backend, k, 0.3, (2, 3, 4)).shape == (2, 3, 4)
    assert _bits(backend, k, (2, 3, 4)).shape == (2, 3, 4)
    # Row-major order: the flat draw reshaped equals the shaped draw.
    flat = backend.to_numpy(_bits(backend, k, (24,)))
    np.testing.assert_array_equal(backend.to_numpy(_bits(backend, k, (2, 3, 4))), flat.reshape(2, 3, 4))


@pytest.mark.parametrize(
    "make_key",
    [
        lambda xp: xp.asarray([1, 2, 3], dtype=xp.uint32),
        lambda xp: xp.asarray([[1, 2]], dtype=xp.uint32),
        lambda xp: xp.asarray([[1, 2], [3, 4]], dtype=xp.uint32),
        lambda xp: xp.asarray([1, 2], dtype=xp.int32),
        lambda xp: xp.asarray([1.0, 2.0], dtype=xp.float32),
    ],
    ids=["len3", "1x2", "2x2", "int32", "float32"],
)
@pytest.mark.parametrize("fn", ["split", "bits", "uniform", "normal", "bernoulli"])
def test_bad_key_is_value_error(backend, make_key, fn):
    bad = make_key(backend.xp)
    calls = {
        "split": lambda: R.split(bad, 2),
        "bits": lambda: R.bits(bad, (3,)),
        "uniform": lambda: R.uniform(bad, (3,)),
        "normal": lambda: R.normal(bad, (3,)),
        "bernoulli": lambda: R.bernoulli(bad, 0.5, (3,)),
    }
    with pytest.raises(ValueError, match="uint32 array of shape \\(2,\\)"):
        calls[fn]()


# --- tree helpers ---------------------------------------------------------------------------------


def _tree(xp):
    return {
        "b": {"w": xp.ones((2, 3)), "bias": xp.zeros((3,))},
        "a": xp.arange(4.0),
        "c": {"deep": {"x": xp.asarray(1.5)}},
    }


def test_tree_map_applies_leafwise(backend):
    xp = backend.xp
    t = _tree(xp)
    doubled = backends.tree_map(lambda x, y: x + y, t, t)
    np.testing.assert_array_equal(backend.to_numpy(doubled["b"]["w"]), np.full((2, 3), 2.0))
    np.testing.assert_array_equal(backend.to_numpy(doubled["a"]), 2 * np.arange(4.0))
    assert float(doubled["c"]["deep"]["x"]) == 3.0
    assert backends.tree_structure(t) == {"a": (4,), "b": {"bias": (3,), "w": (2, 3)}, "c": {"deep": {"x": ()}}}


def test_tree_map_mismatch_is_value_error(backend):
    xp = backend.xp
    t = _tree(xp)
    missing = {"a": t["a"], "b": t["b"]}
    with pytest.raises(ValueError, match="mismatch"):
        backends.tree_map(lambda x, y: x, t, missing)
    extra = dict(t, d=xp.ones(1))
    with pytest.raises(ValueError, match="mismatch"):
        backends.tree_map(lambda x, y: x, t, extra)
    leaf_for_dict = dict(t, b=xp.ones(3))
    with pytest.raises(ValueError, match="mismatch"):
        backends.tree_map(lambda x, y: x, t, leaf_for_dict)
    with pytest.raises(ValueError, match="mismatch"):
        backends.tree_map(lambda x, y: x, leaf_for_dict, t)
    renamed = {"a": t["a"], "b": {"w": t["b"]["w"], "BIAS": t["b"]["bias"]}, "c": t["c"]}
    with pytest.raises(ValueError, match="mismatch"):
        backends.tree_map(lambda x, y: x, t, renamed)


def test_flatten_unflatten_round_trip(backend):
    t = _tree(backend.xp)
    flat = backends.tree_flatten(t)
    assert list(flat) == ["a", "b.bias", "b.w", "c.deep.x"]  # sorted, dotted paths
    assert flat["b.w"] is t["b"]["w"]
    back = backends.tree_unflatten(flat)
    assert backends.tree_structure(back) == backends.tree_structure(t)
    for (p1, l1), (p2, l2) in zip(backends.tree_items(t), backends.tree_items(back)):
        assert p1 == p2 and l1 is l2
    assert [id(x) for x in backends.tree_leaves(t)] == [id(x) for x in flat.values()]
    # A bare leaf round-trips too.
    leaf = backend.xp.ones(2)
    assert backends.tree_unflatten(backends.tree_flatten(leaf)) is leaf


def test_tree_errors(backend):
    xp = backend.xp
    with pytest.raises(ValueError, match="reserved"):
        backends.tree_flatten({"a.b": xp.ones(1)})
    with pytest.raises(ValueError, match="runs through a leaf"):
        backends.tree_unflatten({"a": xp.ones(1), "a.b": xp.ones(1)})


# --- backend_of -----------------------------------------------------------------------------------


def test_backend_of_numpy():
    nb = backends.get_backend("numpy")
    assert backends.backend_of(np.ones(3)) is nb
    assert backends.backend_of({"a": np.ones(3), "b": {"c": np.zeros(2)}}) is nb
    assert backends.backend_of(None, np.float32(1.0)) is nb


def test_backend_of_jax(jax_backend):
    import jax.numpy as jnp

    assert backends.backend_of(jnp.ones(3)) is jax_backend
    assert backends.backend_of({"a": jnp.ones(3)}, None) is jax_backend


def test_backend_of_fixture_arrays(backend):
    assert backends.backend_of(backend.xp.ones(3)) is backend
    assert backends.backend_of(backend.random.key(0)) is backend


def test_backend_of_mixed_is_type_error(jax_backend):
    import jax.numpy as jnp

    with pytest.raises(TypeError, match="numpy") as info:
        backends.backend_of(np.ones(3), jnp.ones(3))
    assert "jax" in str(info.value)
    with pytest.raises(TypeError):
        backends.backend_of({"a": jnp.ones(3), "b": np.ones(3)})


def test_backend_of_nothing_is_type_error():
    with pytest.raises(TypeError):
        backends.backend_of(None)
    with pytest.raises(TypeError):
        backends.backend_of([1.0, 2.0])


def test_backend_of_array_api_strict():
    aas = pytest.importorskip("array_api_strict")
    b = backends.backend_of(aas.asarray([1.0, 2.0]))
    assert b.xp is aas
    with pytest.raises(TypeError):
        backends.backend_of(aas.asarray([1.0]), np.ones(1))


def test_scatter_add_and_set_at(backend, x64):
    xp = backend.xp
    target = xp.zeros((4, 2), dtype=xp.float64)
    out = backend.scatter_add(target, xp.asarray([1, 3, 1]), xp.asarray([[1.0, 2.0], [3.0, 4.0], [10.0, 20.0]]))
    np.testing.assert_array_equal(backend.to_numpy(out), [[0, 0], [11, 22], [0, 0], [3, 4]])
    np.testing.assert_array_equal(backend.to_numpy(target), np.zeros((4, 2)))  # functional: input untouched
    x = xp.arange(5.0)
    y = backend.set_at(x, 2, 7.0)
    np.testing.assert_array_equal(backend.to_numpy(y), [0, 1, 7, 3, 4])
    np.testing.assert_array_equal(backend.to_numpy(x), np.arange(5.0))


def test_while_loop_runs_body_until_cond_fails(backend):
    """Collatz from 6 (6 3 10 5 16 8 4 2 1): 8 passes; under jit on JAX too; a false cond runs no pass."""
    xp = backend.xp

    def collatz(n0):
        def body(s):
            n = s["n"]
            return {"n": xp.where(n % 2 == 0, n // 2, 3 * n + 1), "passes": s["passes"] + 1}

        return backend.while_loop(lambda s: s["n"] != 1, body, {"n": n0, "passes": xp.asarray(0)})

    for run in (collatz, backend.jit(collatz)):
        out = run(xp.asarray(6))
        assert (int(out["n"]), int(out["passes"])) == (1, 8)
        out = run(xp.asarray(1))
        assert (int(out["n"]), int(out["passes"])) == (1, 0)


def test_each_element_depends_on_its_own_counter_alone(numpy_backend):
    """The per-element layout that lets a device draw just its slice of a sharded array: element i
    hashes counter i (bits, uniform, normal) or counter i // 2 (bernoulli), so a slice of a draw is
    computable from its own counters, and a longer draw starts with a shorter one."""
    key = R.key(7, np)
    words = R.bits(key, (40,))
    y0, y1 = R.threefry2x32(key, np.zeros(8, np.uint32), np.arange(24, 32, dtype=np.uint32))
    np.testing.assert_array_equal(words[24:32], y0 ^ y1)
    for draw in (
        lambda n: R.bits(key, (n,)),
        lambda n: R.uniform(key, (n,)),
        lambda n: R.normal(key, (n,)),
        lambda n: R.uniform(key, (n,), np.float64),
        lambda n: R.bernoulli(key, 0.3, (n,)),
    ):
        np.testing.assert_array_equal(draw(64)[:24], draw(24))
    # A (B, T, D) dropout mask split over the batch: each shard's rows are the global mask's rows.
    mask = R.bernoulli(key, 0.9, (8, 4, 6))
    flat = R.bernoulli(key, 0.9, (8 * 4 * 6,))
    np.testing.assert_array_equal(mask.reshape(-1), flat)


def test_bernoulli_with_high_probability_under_jit(numpy_backend, jax_backend):
    """p above 1/2 compares words with a threshold above 2**31 (once an overflow of JAX's int32)."""
    import jax

    got = jax.jit(lambda k: R.bernoulli(k, 0.9, (4, 8, 6)))(jax_backend.random.key(0))
    np.testing.assert_array_equal(np.asarray(got), R.bernoulli(R.key(0, np), 0.9, (4, 8, 6)))


def test_relu_and_stop_gradient_values(backend):
    x = backend.xp.asarray([-2.0, -0.0, 0.0, 3.0], dtype=backend.xp.float32)
    y = backend.relu(x)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(backend.to_numpy(y), [0.0, 0.0, 0.0, 3.0])
    np.testing.assert_array_equal(backend.to_numpy(backend.stop_gradient(x)), backend.to_numpy(x))


def test_relu_and_stop_gradient_derivatives_match_the_hand_written_backward(jax_backend):
    """jax.grad of relu is the hand-written relu_bwd's 0/1 mask, 0 at x = 0 as well (jnp.maximum
    would give 0.5 there); stop_gradient passes no gradient."""
    import jax

    from functional_transformer.layers import activations

    x = jax_backend.xp.asarray([-2.0, 0.0, 3.0])
    g_relu = jax.grad(lambda v: jax_backend.xp.sum(jax_backend.relu(v)))(x)
    y, saved = activations.relu_fwd(x)
    np.testing.assert_array_equal(np.asarray(g_relu), np.asarray(activations.relu_bwd(saved, jax_backend.xp.ones(3))))
    np.testing.assert_array_equal(np.asarray(g_relu), [0.0, 0.0, 1.0])
    g_stopped = jax.grad(lambda v: jax_backend.xp.sum(v * jax_backend.stop_gradient(v)))(x)
    np.testing.assert_array_equal(np.asarray(g_stopped), np.asarray(x))  # d/dv of v * const(v) is v
