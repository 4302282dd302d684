"""The gpt2 and llama presets: DecoderOnly models of the same parts, whose backward is checked whole,
which train (the loss falls) and sample the same tokens on both backends for one key."""

import numpy as np
import pytest
from conftest import requires_jax

import backends
from functional_transformer import loss, optim, sampling
from functional_transformer.models import DecoderOnly, preset
from functional_transformer.parts import check_part

pytestmark = pytest.mark.usefixtures("x64")

SIZES = dict(d_model=16, n_heads=4, n_layers=2, max_len=12)


def _ids(rows=2, length=8, vocab=20, seed=0):
    return np.random.default_rng(seed).integers(1, vocab, size=(rows, length)).astype(np.int32)


def test_presets_are_what_they_say():
    gpt2, llama = preset("gpt2", 20, **SIZES), preset("llama", 20, **SIZES)
    assert (gpt2.norm, gpt2.positional, gpt2.activation, gpt2.tie_embeddings, gpt2.scale_embeddings) == (
        "layer",
        "learned",
        "gelu",
        True,
        False,
    )
    assert (llama.norm, llama.positional, llama.activation, llama.gated_ffn, llama.bias, llama.tie_embeddings) == (
        "rms",
        "rope",
        "silu",
        True,
        False,
        False,
    )
    assert llama.n_kv_heads == 2 and preset("llama", 20, **SIZES, n_kv_heads=1).n_kv_heads == 1
    params = DecoderOnly(llama).init(backends.get_backend("numpy").random.key(0))
    assert "head" in params and "b" not in params["head"] and "b_q" not in params["blocks"]["layer_0"]["self_attn"]
    assert "head" not in DecoderOnly(gpt2).init(backends.get_backend("numpy").random.key(0))  # tied, no bias
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt5", 20)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_preset_backward(backend, name):
    cfg = preset(name, 20, **SIZES, dtype="float64", drop_rate=0.0)
    model = DecoderOnly(cfg)
    params = model.init(backend.random.key(0))
    ids = _ids()
    ids[1, 6:] = 0  # padding: masked keys
    check_part(model, params, backend.asarray(ids), n_directions=2)


def _train(backend, cfg, steps=8):
    model = DecoderOnly(cfg)
    params = model.init(backend.random.key(0))
    optimiser = optim.adam(3e-3)
    state = optimiser.init(params)
    ids = backend.asarray(_ids(rows=4, length=10))
    inputs, targets = ids[:, :-1], ids[:, 1:]

    def step(params, state, key):
        logits, saved = model.fwd(params, inputs, train=True, key=key)
        value, _, saved_loss = loss.fwd(logits, targets, cfg.pad_id)
        grads, _ = model.bwd(params, saved, loss.bwd(saved_loss, backend.xp.asarray(1.0, dtype=logits.dtype), 0.0))
        updates, state = optimiser.update(grads, state, params)
        return optim.apply_updates(params, updates), state, value

    step = backend.jit(step)
    losses = []
    for i in range(steps):
        params, state, value = step(params, state, backend.random.key(i))
        losses.append(float(value))
    return losses, params


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_preset_trains(backend, name):
    losses, _ = _train(backend, preset(name, 20, **SIZES))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.3, losses


@requires_jax
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_preset_samples_the_same_tokens_on_both_backends(name):
    cfg = preset(name, 20, **SIZES, dtype="float64")
    tokens = {}
    for backend_name in ("numpy", "jax"):
        backend = backends.get_backend(backend_name)
        params = DecoderOnly(cfg).init(backend.random.key(0))
        prompts = backend.asarray(np.array([[1, 5, 6], [1, 7, 0]], dtype=np.int32))
        out = sampling.generate(
            params, cfg, prompts, max_new_tokens=6, key=backend.random.key(3), eos_id=2, temperature=1.0, top_k=10
        )
        tokens[backend_name] = backend.to_numpy(out)
    np.testing.assert_array_equal(tokens["numpy"], tokens["jax"])
    assert tokens["numpy"].shape == (2, 9)
