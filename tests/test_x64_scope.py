"""Every public entry point that carries JAX's x64 scope (`with_x64_scope`, `in_x64_scope`), called on
JAX with float64 params and inputs from outside any x64 scope, as a user who never turns x64 on
calls it; and the functions that make float64 intermediates for float32 results (random draws,
schedules, the sinusoidal table), called outside any scope in float32.

Where the scope sits (backends.JaxBackend): the public entry points, the jitted calls, and those
float64-intermediate functions. The layers, parts and models have none of their own: they run in
their caller's scope (float64 ones called directly on JAX need `backend.x64_scope()`, as the x64
fixture gives tests/test_layers.py).

What each case guards: its entry point's own scope. Without it, a float64 array made or moved in
the entry point's eager code (outside the jitted functions, which carry their own scope) would be
truncated to float32 with JAX's "Explicitly requested dtype" warning, which pyproject.toml's
filterwarnings turns into an error, or come back float32, which the dtype assertions catch.
scripts/mutations.toml removes each decorator in turn and checks that its case fails. For some
entry points (ft.apply, ft.encode, ft.decode, grad_and_metrics, loss_and_metrics, predict,
evaluate, fit, attention_maps) the removal is an equivalent mutation, listed there with
`expect = "survived"` and the reason: everything their own code does on JAX already runs in a scope
(a jitted function, `backend.asarray`, a scoped callee). Their cases still check the float64
results that the scopes together must give.

JAX only: the NumPy backend has no x64 flag, so there these tests skip.
"""

from dataclasses import replace

import numpy as np
import pytest

import backends
import functional_transformer as ft
from functional_transformer import generate, gradcheck, inference, optim, train
from functional_transformer.data import CharTokenizer
from functional_transformer.layers import attention, embedding, feed_forward, linear, positional
from functional_transformer.models import encoder_decoder

CFG64 = ft.TransformerConfig(
    src_vocab_size=12,
    tgt_vocab_size=12,
    d_model=8,
    n_heads=2,
    d_ff=16,
    n_encoder_layers=1,
    n_decoder_layers=1,
    max_len=8,
    drop_rate=0.0,
    dtype="float64",
)
TOKENIZER = CharTokenizer(tuple("abcdefgh"))  # 4 special ids + 8 characters = CFG64's vocabularies
SRC = np.asarray([[4, 5, 6, 7], [8, 9, 0, 0]], dtype=np.int32)
TGT = np.asarray([[1, 10, 11, 2], [1, 4, 2, 0]], dtype=np.int32)
BATCH = {"src": SRC, "tgt_in": TGT[:, :-1], "tgt_out": TGT[:, 1:]}
TCFG = ft.TrainConfig(steps=1, batch_size=2, warmup_steps=1, log_every=1, eval_every=1)


@pytest.fixture
def jax_outside_x64(backend):
    """The JAX backend, with x64 off (as JAX starts); skips on NumPy."""
    if backend.name != "jax":
        pytest.skip("x64 scopes exist on JAX only; run with FT_BACKEND=jax")
    assert str(backend.xp.zeros(1).dtype) == "float32", "x64 is on around the test: it would hide a missing scope"
    return backend


@pytest.fixture
def params64(jax_outside_x64):
    return ft.init(jax_outside_x64.random.key(0), CFG64)


def float_dtypes(tree) -> set[str]:
    """The dtypes of the floating leaves of `tree` (arrays, or jax.ShapeDtypeStructs)."""
    return {str(leaf.dtype) for leaf in backends.tree_leaves(tree) if "float" in str(leaf.dtype)}


def assert_float64(tree):
    assert float_dtypes(tree) == {"float64"}, float_dtypes(tree)


def generate_kwargs(**options):
    return dict(bos_id=TOKENIZER.bos_id, eos_id=TOKENIZER.eos_id, max_steps=CFG64.max_len) | options


# Each case: (backend, params64) -> None, asserting that what comes back is float64, or (logits, beam
# search's tokens) what the same call on NumPy in float64 gives.


def case_init(backend, params):
    assert_float64(params)
    # Traced under the user's own transformation (the docstring's jax.eval_shape), outside any scope.
    assert_float64(backend.jax.eval_shape(lambda key: ft.init(key, CFG64), backend.random.key(0)))


def case_apply(backend, params):
    logits = ft.apply(params, SRC, TGT, CFG64)
    reference = ft.apply(backend.tree_to_numpy(params), SRC, TGT, CFG64)
    assert str(logits.dtype) == "float64"
    np.testing.assert_allclose(backend.to_numpy(logits), reference, rtol=1e-12, atol=1e-12)


def case_encode_decode(backend, params):
    memory = ft.encode(params, SRC, CFG64)
    assert str(memory.dtype) == "float64"
    logits = ft.decode(params, memory, SRC, TGT, CFG64)
    assert str(logits.dtype) == "float64"
    # A float64 NumPy memory, moved to JAX by decode itself.
    assert str(ft.decode(params, backend.to_numpy(memory), SRC, TGT, CFG64).dtype) == "float64"


def case_grad_and_metrics(backend, params):
    for method in ("autodiff", "vjp"):
        grads, metrics = ft.grad_and_metrics(params, BATCH, CFG64, method=method)
        assert_float64(grads)
        assert str(metrics["loss"].dtype) == "float64"
    loss, grads = ft.loss_and_grad(params, BATCH, CFG64)
    assert_float64(grads)
    assert str(loss.dtype) == "float64"


def case_loss_and_metrics(backend, params):
    metrics = ft.loss_and_metrics(params, BATCH, CFG64)
    assert str(metrics["loss"].dtype) == "float64"
    assert str(ft.loss_fn(params, BATCH, CFG64).dtype) == "float64"


def case_greedy(backend, params):
    cached = generate.greedy(params, SRC, CFG64, **generate_kwargs())
    uncached = generate.greedy(params, SRC, CFG64, **generate_kwargs(), use_cache=False)
    np.testing.assert_array_equal(backend.to_numpy(cached), backend.to_numpy(uncached))


def case_beam_search(backend, params):
    tokens = generate.beam_search(params, SRC, CFG64, **generate_kwargs(), beam_size=3)
    reference = generate.beam_search(backend.tree_to_numpy(params), SRC, CFG64, **generate_kwargs(), beam_size=3)
    np.testing.assert_array_equal(backend.to_numpy(tokens), reference)


def case_predict_evaluate(backend, params):
    model = ft.TrainedModel(params, CFG64, TOKENIZER)
    assert len(ft.predict(model, ["abc", "hg"], beam_size=2)) == 2
    assert len(inference.predict(params, CFG64, TOKENIZER, ["abc"])) == 1
    metrics = ft.evaluate(model, [("abc", "cba"), ("hg", "gh")], beam_size=2)
    assert np.isfinite(metrics["loss"])
    assert np.isfinite(inference.evaluate(params, CFG64, TOKENIZER, [("abc", "cba")])["loss"])


def case_fit(backend, params):
    pairs = [("abc", "cba"), ("hgf", "fgh"), ("de", "ed")]
    model = {
        name: getattr(CFG64, name)
        for name in ("d_model", "n_heads", "d_ff", "n_encoder_layers", "n_decoder_layers", "drop_rate", "dtype")
    }
    result = ft.fit(
        model=model,
        train_config=TCFG,
        data=(pairs, pairs[:1]),
        backend=backend,
        progress=False,
        verbose=False,
        eval_examples=1,
    )
    assert_float64(result.params)


def case_attention_maps(backend, params):
    maps = ft.attention_maps(params, CFG64, TOKENIZER, "abc")
    assert maps["target_from"] == "greedy"
    assert str(maps["cross"].dtype) == "float64"


def case_check_vjp(backend, params):
    x = ft.random.normal(backend.random.key(1), (2, 3, CFG64.d_model), backend.xp.float64)
    assert str(x.dtype) == "float64"
    lin = {"w": params["out_proj"]["w"][:, :4], "b": params["out_proj"]["b"][:4]}
    gradcheck.check_vjp(linear.fwd, linear.bwd, (lin, x), key=backend.random.key(2), rtol=1e-6)


def case_train_step(backend, params):
    optimizer = train.make_optimizer(TCFG, CFG64)
    state = train.init_state(backend.random.key(0), CFG64, optimizer)
    assert_float64(state["params"])
    step = train.make_train_step(CFG64, TCFG, optimizer, backend)
    state, metrics = step(state, {name: backend.asarray(ids) for name, ids in BATCH.items()}, backend.random.key(1))
    assert_float64(state["params"])
    assert str(metrics["loss"].dtype) == "float64"


def case_adam(backend, params):
    optimizer = optim.scale_by_adam()
    grads = ft.grad_and_metrics(params, BATCH, CFG64)[0]
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert_float64(updates)


@pytest.mark.parametrize(
    "schedule",
    [optim.constant(1e-3), optim.transformer_schedule(CFG64.d_model, 4), optim.warmup_cosine(1e-3, 2, 10)],
    ids=["constant", "transformer", "warmup_cosine"],
)
def test_schedules_run_outside_an_x64_scope(jax_outside_x64, schedule):
    """Guards each schedule's own scope: it computes in float64 from an integer JAX count, float32 outside x64."""
    value = schedule(jax_outside_x64.xp.asarray(3, dtype=jax_outside_x64.xp.int32))
    assert str(value.dtype) == "float64"


def _float32_layer_inits():
    dtype = np.float32
    return {
        "linear.init": lambda key: linear.init(key, 3, 4, dtype),
        "attention.init": lambda key: attention.init(key, CFG64.d_model, dtype),
        "feed_forward.init": lambda key: feed_forward.init(key, CFG64.d_model, CFG64.d_ff, dtype),
        "embedding.init": lambda key: embedding.init(key, 12, CFG64.d_model, 8, dtype, learned_positions=True),
        "decoder stack part": lambda key: encoder_decoder.stack(
            replace(CFG64, dtype="float32"), encoder_decoder.decoder_block(replace(CFG64, dtype="float32")), 2
        ).init(key),
    }


@pytest.mark.parametrize("name", list(_float32_layer_inits()))
def test_float32_layer_inits_run_outside_an_x64_scope(jax_outside_x64, name):
    """Guards the scopes of the random draws (backends.prng, the public `ft.random`): the layers carry
    no scope of their own, so a float32 init called outside any scope relies on the draws' float64
    intermediates staying float64, and gives NumPy's weights. (Float64 layers on JAX are called inside
    `backend.x64_scope()`, as tests/test_layers.py does with the x64 fixture.)"""
    init = _float32_layer_inits()[name]
    params = init(jax_outside_x64.random.key(0))
    assert float_dtypes(params) == {"float32"}
    reference = init(backends.get_backend("numpy").random.key(0))
    for ours, theirs in zip(backends.tree_leaves(params), backends.tree_leaves(reference), strict=True):
        np.testing.assert_array_equal(jax_outside_x64.to_numpy(ours), theirs)


def test_sinusoidal_table_runs_outside_an_x64_scope(jax_outside_x64):
    """Guards positional.sinusoidal's scope: the table is computed in float64 whatever dtype it returns."""
    xp = jax_outside_x64.xp
    table = positional.sinusoidal(5, 8, xp.float32, xp)
    np.testing.assert_array_equal(jax_outside_x64.to_numpy(table), positional.sinusoidal(5, 8, np.float32, np))


CASES = {name.removeprefix("case_"): fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", list(CASES))
def test_entry_point_runs_outside_an_x64_scope(jax_outside_x64, params64, case):
    """Guards the x64 scope of the entry point `case` names (see the module docstring)."""
    CASES[case](jax_outside_x64, params64)
    assert str(jax_outside_x64.xp.zeros(1).dtype) == "float32", "the entry point left x64 on"
