"""TransformerConfig.compute_dtype: bfloat16 matmuls and activations over float32 params (JAX only),
and the clear errors where it cannot run."""

import dataclasses
import json

import numpy as np
import pytest

import backends
import functional_transformer as ft
from functional_transformer import checkpoint, optim, train
from functional_transformer.data import CharTokenizer

CFG32 = ft.TransformerConfig(
    src_vocab_size=13,
    tgt_vocab_size=13,
    d_model=32,
    n_heads=4,
    d_ff=64,
    n_encoder_layers=2,
    n_decoder_layers=2,
    max_len=16,
    drop_rate=0.0,
)
CFG16 = dataclasses.replace(CFG32, compute_dtype="bfloat16")
RNG = np.random.default_rng(0)
SRC = RNG.integers(1, 13, (4, 9)).astype(np.int32)
TGT = RNG.integers(1, 13, (4, 8)).astype(np.int32)
BATCH = {"src": SRC, "tgt_in": TGT[:, :-1], "tgt_out": TGT[:, 1:]}


@pytest.fixture
def jax_only(backend):
    if backend.name != "jax":
        pytest.skip(
            "bfloat16 compute needs the JAX backend (NumPy has no bfloat16 arithmetic); run with FT_BACKEND=jax"
        )
    return backend


def _train(backend, cfg, steps, tcfg=None):
    tcfg = tcfg or ft.TrainConfig(steps=steps, learning_rate=1e-2, warmup_steps=1, schedule="constant")
    optimizer = train.make_optimizer(tcfg, cfg)
    state = train.init_state(backend.random.key(0), cfg, optimizer)
    step = train.make_train_step(cfg, tcfg, optimizer, backend)
    batch = {name: backend.asarray(ids) for name, ids in BATCH.items()}
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch, backend.random.key(1))
        losses.append(metrics["loss"])
    return state, losses


def test_bfloat16_forward_agrees_with_float32_within_bfloat16_rounding(jax_only):
    params = ft.init(jax_only.random.key(0), CFG16)
    logits32 = ft.apply(params, SRC, TGT, CFG32)
    logits16 = ft.apply(params, SRC, TGT, CFG16)
    assert str(logits16.dtype) == "float32"  # the logits come back in the params' dtype
    error = float(np.max(np.abs(np.asarray(logits16) - np.asarray(logits32))))
    scale = float(np.max(np.abs(np.asarray(logits32))))
    # bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 per operation) through 2 + 2 layers.
    assert 0 < error < 0.05 * scale, (error, scale)
    memory = ft.encode(params, SRC, CFG16)
    assert str(memory.dtype) == "bfloat16"  # activations are bfloat16


def test_bfloat16_training_keeps_float32_params_and_optimizer_state_and_loss(jax_only):
    state, losses = _train(jax_only, CFG16, 1)
    assert {str(leaf.dtype) for leaf in backends.tree_leaves(state["params"])} == {"float32"}
    opt_floats = {str(leaf.dtype) for leaf in backends.tree_leaves(state["opt_state"]) if "int" not in str(leaf.dtype)}
    assert opt_floats == {"float32"}
    assert str(losses[0].dtype) == "float32"


def test_bfloat16_training_reduces_the_loss(jax_only):
    _, losses = _train(jax_only, CFG16, 8)
    losses = [float(loss) for loss in losses]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def test_bfloat16_gradients_follow_the_float32_ones(jax_only):
    params = ft.init(jax_only.random.key(0), CFG16)
    _, grads16 = ft.loss_and_grad(params, BATCH, CFG16)
    _, grads32 = ft.loss_and_grad(params, BATCH, CFG32)
    flat16, flat32 = (np.concatenate([np.ravel(leaf) for leaf in backends.tree_leaves(g)]) for g in (grads16, grads32))
    assert flat16.dtype == np.float32
    cosine = float(flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32)))
    assert cosine > 0.99, cosine


def test_bfloat16_decoding_runs(jax_only):
    from functional_transformer import generate

    params = ft.init(jax_only.random.key(0), CFG16)
    greedy = generate.greedy(params, SRC, CFG16, bos_id=1, eos_id=2, max_steps=5)
    beams = generate.beam_search(params, SRC, CFG16, bos_id=1, eos_id=2, max_steps=5, beam_size=2)
    assert greedy.shape == beams.shape == (4, 5)


def test_bfloat16_on_numpy_is_a_clear_error():
    numpy = backends.get_backend("numpy")
    with pytest.raises(ValueError, match="compute_dtype='bfloat16' needs the JAX backend.*FT_BACKEND=jax"):
        ft.init(numpy.random.key(0), CFG16)
    params = ft.init(numpy.random.key(0), CFG32)
    with pytest.raises(ValueError, match="needs the JAX backend"):
        ft.apply(params, SRC, TGT, CFG16)
    with pytest.raises(ValueError, match="needs the JAX backend"):
        train.make_train_step(CFG16, ft.TrainConfig(), optim.adam(1e-3), numpy)


def test_bfloat16_with_the_hand_written_vjps_is_a_clear_error(jax_only):
    params = ft.init(jax_only.random.key(0), CFG16)
    with pytest.raises(ValueError, match="autodiff"):
        ft.grad_and_metrics(params, BATCH, CFG16, method="vjp")
    with pytest.raises(ValueError, match="autodiff"):
        train.make_train_step(CFG16, ft.TrainConfig(grad_method="vjp"), optim.adam(1e-3), jax_only)


@pytest.mark.parametrize("bad", ["float16", "bf16", "float64"])
def test_unknown_compute_dtype_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="compute_dtype must be None"):
        dataclasses.replace(CFG32, compute_dtype=bad)


def test_checkpoints_keep_the_setting_and_old_ones_load(backend, tmp_path):
    cfg = CFG16 if backend.name == "jax" else CFG32
    tokenizer = CharTokenizer.from_texts(["abc"])
    optimizer = optim.adam(1e-3)
    state = train.init_state(backend.random.key(0), cfg, optimizer)
    path = checkpoint.save(
        tmp_path / "run",
        state,
        backend,
        cfg=cfg,
        tokenizer=tokenizer,
        train_config={},
        data_spec={},
        key=backend.random.key(1),
    )
    loaded = checkpoint.load(path, backend)
    assert loaded.cfg == cfg
    assert {str(leaf.dtype) for leaf in backends.tree_leaves(loaded.state["params"])} == {"float32"}
    # A config written before compute_dtype existed has no such field: it computes in its dtype.
    old = {k: v for k, v in CFG32.to_dict().items() if k != "compute_dtype"}
    assert ft.TransformerConfig.from_dict(json.loads(json.dumps(old))) == CFG32
    assert CFG32.activations_dtype == "float32" and CFG16.activations_dtype == "bfloat16"
