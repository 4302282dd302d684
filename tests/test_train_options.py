"""Tests of the training options beside the model: gradient accumulation, optax optimizers, the
learning rate in the records, TensorBoard events, and a diverging run (finite or NaN)."""

import importlib.util
import json
import os
import struct
import warnings

import numpy as np
import pytest

import functional_transformer as ft
from functional_transformer import train
from functional_transformer.data import CharTokenizer, encode_pairs, make_batch, make_task_data, task_alphabet
from functional_transformer.errors import ConfigError

ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
HAS_OPTAX = importlib.util.find_spec("optax") is not None
HAS_TENSORBOARDX = importlib.util.find_spec("tensorboardX") is not None
TOKENIZER = CharTokenizer.from_texts([task_alphabet("reverse")])
TRAIN_PAIRS, VALID_PAIRS = make_task_data("reverse", 300, 20, 1, 5, seed=0)
TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1}
DATA = ft.task_data("reverse", n_train=300, n_valid=20, max_len=5)


def make_cfg(dtype="float32", drop_rate=0.0):
    return ft.TransformerConfig(
        src_vocab_size=TOKENIZER.vocab_size,
        tgt_vocab_size=TOKENIZER.vocab_size,
        max_len=8,
        drop_rate=drop_rate,
        pad_id=TOKENIZER.pad_id,
        dtype=dtype,
        **TINY,
    )


# ---------------------------------------------------------------------------------------------
# Gradient accumulation


def test_accumulated_micro_batches_give_the_update_of_their_concatenation(backend, x64):
    """Three micro-batches of different lengths and target token counts, one update: the same
    params, optimizer state and metrics as one step on the three as one batch (float64). SGD with
    momentum: Adam would blow the rounding noise of gradients that are exactly zero in exact
    arithmetic (the attention keys' bias) up to whole steps of the learning rate."""
    cfg = make_cfg("float64")
    tcfg = ft.TrainConfig(
        steps=10,
        learning_rate=0.5,
        warmup_steps=2,
        accumulate_steps=3,
        optimizer="sgd",
        clip_norm=0.5,
        grad_method=None,
    )
    examples = encode_pairs(TRAIN_PAIRS[:7], TOKENIZER, cfg.max_len)
    parts = [examples[:1], examples[1:3], examples[3:]]
    assert len({sum(len(e.tgt) for e in part) for part in parts}) == 3  # unequal token counts: weights matter
    micro_batches = [backend.tree_asarray(make_batch(part, TOKENIZER.pad_id)) for part in parts]
    whole = backend.tree_asarray(make_batch(examples, TOKENIZER.pad_id))
    optimizer = train.make_optimizer(tcfg, cfg)
    key = backend.random.key(1)

    def fresh():
        return train.init_state(backend.random.key(0), cfg, optimizer)

    # Two updates each, so the second one starts from an optimizer state the first one wrote.
    state_a, state_b = fresh(), fresh()
    accumulating = train.make_accumulating_step(cfg, tcfg, optimizer, backend)
    one_step = train.make_train_step(cfg, tcfg, optimizer, backend)
    for _ in range(2):
        state_a, metrics_a = accumulating(state_a, micro_batches, key)
        state_b, metrics_b = one_step(state_b, whole, key)
    leaves_a = backend.tree_leaves(backend.tree_to_numpy({"p": state_a["params"], "o": state_a["opt_state"]}))
    leaves_b = backend.tree_leaves(backend.tree_to_numpy({"p": state_b["params"], "o": state_b["opt_state"]}))
    assert {leaf.dtype for leaf in backend.tree_leaves(backend.tree_to_numpy(state_a["params"]))} == {
        np.dtype("float64")
    }
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    for name in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(float(metrics_a[name]), float(metrics_b[name]), rtol=1e-12)
    assert int(metrics_a["n_tokens"]) == int(metrics_b["n_tokens"])


def test_fit_with_accumulate_takes_n_micro_batches_per_step_and_records_it(tmp_path):
    result = ft.fit(
        TINY,
        {"steps": 4, "batch_size": 8, "accumulate_steps": 2, "log_every": 1, "eval_every": 4, "grad_method": "vjp"},
        DATA,
        out_dir=tmp_path / "run",
        progress=False,
        verbose=False,
    )
    assert result.step == 4 and result.train_config.accumulate_steps == 2
    assert ft.load(tmp_path / "run", "last").train_config.accumulate_steps == 2
    with pytest.raises(ft.RunFolderError, match="accumulate_steps=1 conflicts"):
        ft.fit(train_config={"accumulate_steps": 1}, out_dir=tmp_path / "run", resume=True, verbose=False)


def test_accumulate_must_be_positive():
    with pytest.raises(ConfigError, match="accumulate_steps must be at least 1"):
        ft.TrainConfig(accumulate_steps=0)


# ---------------------------------------------------------------------------------------------
# The learning rate in every record


def test_every_training_record_has_the_learning_rate_of_its_update(tmp_path):
    settings = ft.TrainConfig(
        steps=6, batch_size=8, learning_rate=1e-2, warmup_steps=3, log_every=2, eval_every=6, grad_method="vjp"
    )
    result = ft.fit(TINY, settings, DATA, out_dir=tmp_path / "run", progress=False, verbose=False)
    records = [r for r in result.history if r["split"] == "train"]
    schedule = train.make_schedule(settings, result.cfg)
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert r["learning_rate"] == pytest.approx(float(schedule(np.int32(r["step"] - 1))), rel=1e-12)
    assert records[0]["learning_rate"] == pytest.approx(1e-2 / 3)  # in warmup: the second of three steps


# ---------------------------------------------------------------------------------------------
# optax optimizers


def test_an_optax_optimizer_on_numpy_is_a_clear_error(tmp_path, numpy_backend):
    if not HAS_OPTAX:
        pytest.skip("optax is not installed")
    import optax

    with pytest.raises(ConfigError, match="optax optimizer needs the JAX backend"):
        ft.fit(
            TINY,
            {"steps": 2, "batch_size": 8, "optimizer": optax.sgd(0.1)},
            DATA,
            backend=numpy_backend,
            progress=False,
            verbose=False,
        )
    assert not (tmp_path / "run").exists()


def test_a_train_config_optimizer_must_be_a_name_or_a_gradient_transformation():
    with pytest.raises(ConfigError, match="or an optax GradientTransformation"):
        ft.TrainConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="got dict"):
        ft.TrainConfig(optimizer={"name": "adam"})


@pytest.mark.skipif(not ON_JAX, reason="trains on JAX: runs once, in the JAX suite")
@pytest.mark.skipif(not HAS_OPTAX, reason="optax is not installed")
def test_an_optax_optimizer_trains_through_fit_and_resumes_only_with_itself(tmp_path, backend):
    import optax

    optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2, weight_decay=1e-4)
    settings = {
        "steps": 40,
        "batch_size": 16,
        "log_every": 4,
        "eval_every": 20,
        "save_every": 20,
        "optimizer": optimizer,
    }
    result = ft.fit(TINY, settings, DATA, out_dir=tmp_path / "run", progress=False, verbose=False)
    losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert losses[-1] < 0.9 * losses[0]  # 3.28 -> 2.77 when measured; an optimizer that does nothing stays at 3.3
    assert all(r["learning_rate"] == pytest.approx(1e-2) for r in result.history if r["split"] == "train")
    assert ft.load(tmp_path / "run", "last").train_config.optimizer == "optax"  # what the checkpoint can say

    with pytest.raises(ft.RunFolderError, match="trained with an optax optimizer given in Python"):
        ft.fit(train_config={"steps": 60}, out_dir=tmp_path / "run", resume=True, extend=True, verbose=False)
    with pytest.raises(ConfigError, match="does not fit the run's saved optimizer state"):
        ft.fit(
            train_config={"steps": 60, "optimizer": optax.sgd(0.1)},
            out_dir=tmp_path / "run",
            resume=True,
            extend=True,
            verbose=False,
            progress=False,
        )
    resumed = ft.fit(
        train_config={"steps": 60, "optimizer": optimizer},
        out_dir=tmp_path / "run",
        resume=True,
        extend=True,
        verbose=False,
        progress=False,
    )
    assert resumed.step == 60
    counts = [
        leaf
        for leaf in backend.jax.tree_util.tree_leaves(resumed.state["opt_state"])
        if np.asarray(leaf).dtype == np.int32
    ]
    assert counts and all(int(count) == 60 for count in counts)  # the restored state counted on from 40


# ---------------------------------------------------------------------------------------------
# TensorBoard


def read_event_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the TensorBoard event files under log_dir (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.skipif(not HAS_TENSORBOARDX, reason="tensorboardX is not installed (the [tensorboard] extra)")
def test_the_tensorboard_writer_writes_every_record_as_scalars(tmp_path):
    with ft.TensorBoardWriter(tmp_path / "tb") as writer:
        result = ft.fit(
            TINY,
            {"steps": 4, "batch_size": 8, "log_every": 2, "eval_every": 4, "grad_method": "vjp"},
            DATA,
            out_dir=tmp_path / "run",
            callbacks=[writer],
            progress=False,
            verbose=False,
        )
    scalars = read_event_scalars(tmp_path / "tb")
    train_records = [r for r in result.history if r["split"] == "train"]
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["loss"] for r in train_records], rtol=1e-6)
    np.testing.assert_allclose(
        [v for _, v in scalars["train/learning_rate"]], [r["learning_rate"] for r in train_records], rtol=1e-6
    )
    assert scalars["valid/exact_match"][0][0] == 4 and "valid/char_accuracy" in scalars


def test_the_tensorboard_writer_without_tensorboardx_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX", None)
    with pytest.raises(
        ft.UserInputError, match=r"tensorboardX, an optional extra: pip install 'functional-transformer\[tensorboard\]'"
    ):
        ft.TensorBoardWriter(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


# ---------------------------------------------------------------------------------------------
# Divergence


def test_a_finite_diverging_loss_stops_the_run_and_never_becomes_best(tmp_path):
    with pytest.raises(train.TrainingDiverged, match=r"stayed above 4 x its starting value .* for 10 steps in a row"):
        ft.fit(
            TINY,
            {
                "steps": 60,
                "batch_size": 8,
                "learning_rate": 1e4,
                "log_every": 5,
                "eval_every": 5,
                "save_every": 5,
                "grad_method": "vjp",
            },
            DATA,
            out_dir=tmp_path / "run",
            progress=False,
            verbose=False,
        )
    assert not (tmp_path / "run" / "best.safetensors").exists()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] > 1000  # it was logged, then stopped


def test_the_divergence_watch_needs_a_run_of_steps_far_above_the_start():
    watch = train.DivergenceWatch(vocab_size=30)  # ln 30 = 3.40
    assert not watch.update(3.5) and watch.reference == 3.5
    for _ in range(train.DIVERGED_STEPS - 1):
        assert watch.update(100.0)
    assert not watch.diverged
    assert not watch.update(5.0)  # a spike that comes back down starts the count again
    for _ in range(train.DIVERGED_STEPS):
        watch.update(15.0)
    assert watch.diverged
    resumed = train.DivergenceWatch(vocab_size=30)
    resumed.update(0.2)  # a trained model's loss: the bound is still 4 x ln(vocabulary)
    assert resumed.reference == pytest.approx(np.log(30)) and not resumed.update(10.0)


def test_a_nan_loss_folds_numpys_overflow_warnings_into_its_one_line(tmp_path, numpy_backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning shown on its own would fail here
        with pytest.raises(
            train.TrainingDiverged,
            match=r"the loss became nan at step \d+ \(NumPy warned on the way: "
            r"overflow encountered",
        ):
            ft.fit(
                TINY,
                {"steps": 20, "batch_size": 8, "learning_rate": 1e30, "grad_method": "vjp"},
                DATA,
                backend=numpy_backend,
                progress=False,
                verbose=False,
            )
