"""Tests of functional_transformer.train and functional_transformer.checkpoint: the training loop and
what it writes, exact resumption, checkpoints across backends, damaged checkpoints, atomic saves,
divergence, Ctrl-C, and one training trajectory computed on both backends.

Every fit() on JAX compiles its train step afresh (make_train_step jits a new closure each call),
which takes 10-20 s on a small machine; the tests that call fit() more than once are marked slow
when FT_BACKEND=jax.
"""

import dataclasses
import importlib.util
import json
import math
import os
import shutil

import numpy as np
import pytest

import functional_transformer as ft
from backends import backend_of
from functional_transformer import checkpoint, checkpoint_format, train
from functional_transformer.checkpoint_format import CheckpointError
from functional_transformer.data import CharTokenizer, batch_iterator, encode_pairs, make_task_data, task_alphabet
from functional_transformer.inference import predict
from functional_transformer.metrics import sacrebleu_available

ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
slow_on_jax = pytest.mark.slow if ON_JAX else (lambda test: test)

TOKENIZER = CharTokenizer.from_texts([task_alphabet("reverse")])
TRAIN_PAIRS, VALID_PAIRS = make_task_data("reverse", 300, 20, 1, 5, seed=0)
DATA_SPEC = {"kind": "task", "task": "reverse", "n_train": 300, "n_valid": 20, "min_len": 1, "max_len": 5, "seed": 0}
TRAIN_FIELDS = {
    "step",
    "split",
    "loss",
    "accuracy",
    "grad_norm",
    "tokens_per_s",
    "pad_fraction",
    "time_s",
    "learning_rate",
}
VALID_FIELDS = {
    "step",
    "split",
    "loss",
    "token_accuracy",
    "exact_match",
    "char_accuracy",
    "n_examples",
    "n_with_unknown",
    "time_s",
} | ({"bleu", "bleu_signature", "chrf", "chrf_signature"} if sacrebleu_available() else set())


def make_cfg(d_model=32, n_heads=2, d_ff=64, drop_rate=0.1):
    return ft.TransformerConfig(
        src_vocab_size=TOKENIZER.vocab_size,
        tgt_vocab_size=TOKENIZER.vocab_size,
        d_model=d_model,
        n_heads=n_heads,
        d_ff=d_ff,
        n_encoder_layers=1,
        n_decoder_layers=1,
        max_len=8,
        drop_rate=drop_rate,
        pad_id=TOKENIZER.pad_id,
    )


def make_run(backend, out_dir, *, steps, cfg=None, valid=False, **tcfg_fields):
    """A Run on the reverse task (lengths 1..5); no evaluation, logging every step and no periodic
    checkpoint unless asked. Gradients from the hand-written VJPs unless asked (the default on NumPy;
    on JAX it compiles in about half the time of jax.grad, and the loop logic is the same)."""
    fields = (
        dict(
            steps=steps,
            batch_size=16,
            learning_rate=3e-3,
            warmup_steps=10,
            log_every=1,
            eval_every=10**6,
            save_every=10**6,
            grad_method="vjp",
        )
        | tcfg_fields
    )
    cfg = cfg or make_cfg(d_model=16, d_ff=32)
    return train.Run(
        cfg=cfg,
        tcfg=train.TrainConfig(**fields),
        tokenizer=TOKENIZER,
        train_examples=encode_pairs(TRAIN_PAIRS, TOKENIZER, cfg.max_len),
        valid_pairs=VALID_PAIRS if valid else [],
        out_dir=out_dir,
        data_spec=DATA_SPEC,
        backend=backend,
        progress=False,
    )


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def flat(backend, tree):
    """{dotted path: NumPy array} of a tree on any backend."""
    return {path: np.asarray(backend_of(leaf).to_numpy(leaf)) for path, leaf in backend.tree_items(tree)}


def assert_trees_equal(backend, a, b):
    fa, fb = flat(backend, a), flat(backend, b)
    assert fa.keys() == fb.keys()
    for path in fa:
        assert fa[path].dtype == fb[path].dtype, path
        assert np.array_equal(fa[path], fb[path]), f"{path} differs"


def assert_states_equal(backend, a, b):
    assert_trees_equal(backend, a["params"], b["params"])
    assert_trees_equal(backend, a["opt_state"], b["opt_state"])
    assert int(backend.to_numpy(a["step"])) == int(backend.to_numpy(b["step"]))


def step_of(backend, state):
    return int(backend.to_numpy(state["step"]))


def wrap_train_step(monkeypatch, wrapper):
    """Make run_loop() build its step with train.make_train_step and then pass it through `wrapper(step)`."""
    real = train.make_train_step
    monkeypatch.setattr(train, "make_train_step", lambda *args: wrapper(real(*args)))


def interrupt_at_call(n):
    """A step wrapper that raises KeyboardInterrupt on the n-th call, before that step runs."""

    def wrapper(step_fn):
        calls = [0]

        def step(state, batch, key):
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt
            return step_fn(state, batch, key)

        return step

    return wrapper


# ---------------------------------------------------------------------------------------------
# The loop end to end


@slow_on_jax
def test_fit_learns_reverse_and_writes_metrics_curves_and_checkpoint(backend, tmp_path):
    run = make_run(
        backend, tmp_path / "run", steps=60, cfg=make_cfg(), valid=True, batch_size=32, eval_every=30, grad_method=None
    )
    result = train.run_loop(run)
    summary = result["summary"]
    assert summary["stopped"] == "finished" and summary["step"] == 60
    assert step_of(backend, result["state"]) == 60

    records = read_metrics(run.out_dir)
    train_records = [r for r in records if r["split"] == "train"]
    valid_records = [r for r in records if r["split"] == "valid"]
    assert [r["step"] for r in train_records] == list(range(1, 61))
    assert [r["step"] for r in valid_records] == [30, 60]
    for r in train_records:
        assert set(r) == TRAIN_FIELDS
        assert math.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and r["grad_norm"] > 0 and r["tokens_per_s"] > 0
    for r in valid_records:
        assert set(r) == VALID_FIELDS
        assert r["n_examples"] == len(VALID_PAIRS)
        assert 0 <= r["exact_match"] <= 1 and 0 <= r["char_accuracy"] <= 1 and 0 <= r["token_accuracy"] <= 1
    assert summary["valid"] == {k: v for k, v in valid_records[-1].items() if k not in ("step", "split", "time_s")}

    # From about ln(30) = 3.4 at step 1 to about 2 after 60 steps (1.8-2.3 in trials).
    first = train_records[0]["loss"]
    last = np.mean([r["loss"] for r in train_records[-5:]])
    assert last < 0.7 * first, (first, last)

    png = run.out_dir / "curves.png"
    if importlib.util.find_spec("matplotlib") is None:  # the plot is optional: without matplotlib, no file
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = run.out_dir / checkpoint.CHECKPOINT_NAME
    assert summary["checkpoint"] == str(path) and path.exists()
    loaded = checkpoint.load(run.out_dir, backend)
    assert step_of(backend, loaded.state) == 60
    assert_states_equal(backend, loaded.state, result["state"])


@slow_on_jax
def test_periodic_checkpoints_and_a_fresh_run_restarts_the_log(backend, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 99, "split": "train", "loss": 1.0}\n')
    saved_steps = []
    real_save = checkpoint.save

    def spy(path, state, *args, **kwargs):
        saved_steps.append(int(np.asarray(backend_of(state["step"]).to_numpy(state["step"]))))
        return real_save(path, state, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", spy)
    train.run_loop(make_run(backend, out, steps=7, save_every=3, log_every=2))
    assert saved_steps == [3, 6, 7]  # every save_every steps, and at the end
    assert [r["step"] for r in read_metrics(out)] == [2, 4, 6, 7]  # the old log was dropped


# ---------------------------------------------------------------------------------------------
# Exact resumption


@slow_on_jax
def test_resume_from_a_checkpoint_equals_one_uninterrupted_run(backend, tmp_path):
    """N steps, save, load, continue to 2N == 2N steps at once; with dropout on, so the run's key and the
    per-step fold_in are exercised. The constant schedule makes the two runs' schedules equal (a cosine
    schedule's horizon is TrainConfig.steps, which differs between a run of N and one of 2N steps).

    Bit-for-bit on both backends: the resumed run executes the same operations on the same inputs (on JAX
    one compiled program, deterministic on CPU), so not even float32 rounding differs."""
    n = 5
    one = train.run_loop(make_run(backend, tmp_path / "one", steps=2 * n, schedule="constant", grad_method=None))
    train.run_loop(make_run(backend, tmp_path / "two", steps=n, schedule="constant", grad_method=None))
    half = tmp_path / "half.safetensors"
    shutil.copy(tmp_path / "two" / checkpoint.CHECKPOINT_NAME, half)
    loaded = checkpoint.load(half, backend)
    assert step_of(backend, loaded.state) == n
    resumed = train.run_loop(
        make_run(backend, tmp_path / "two", steps=2 * n, schedule="constant", grad_method=None),
        loaded.state,
        loaded.key,
    )
    assert step_of(backend, resumed["state"]) == 2 * n
    assert_states_equal(backend, resumed["state"], one["state"])
    # The files agree too, and the log continues where it stopped.
    assert_states_equal(
        backend,
        checkpoint.load(tmp_path / "two", backend).state,
        checkpoint.load(tmp_path / "one", backend).state,
    )
    assert [r["step"] for r in read_metrics(tmp_path / "two")] == list(range(1, 2 * n + 1))
    assert [r["loss"] for r in read_metrics(tmp_path / "two")] == [r["loss"] for r in read_metrics(tmp_path / "one")]

    # The key matters: the same step-n state resumed with another key (other dropout masks) ends elsewhere.
    # (Reloaded: on JAX run_loop() donates the state it is given.)
    other = train.run_loop(
        make_run(backend, tmp_path / "three", steps=2 * n, schedule="constant", grad_method=None),
        checkpoint.load(half, backend).state,
        backend.random.key(12345),
    )
    assert not np.array_equal(
        flat(backend, other["state"]["params"])["decoder.layer_0.ffn.w_1"],
        flat(backend, one["state"]["params"])["decoder.layer_0.ffn.w_1"],
    )


@slow_on_jax
def test_ctrl_c_saves_the_step_reached_and_resuming_finishes_the_same_run(backend, tmp_path, monkeypatch):
    """KeyboardInterrupt before step k + 1 saves a checkpoint at step k; resuming it with the same
    TrainConfig (cosine schedule, dropout on) gives exactly the uninterrupted run."""
    k, total = 4, 8
    uninterrupted = train.run_loop(make_run(backend, tmp_path / "full", steps=total, grad_method=None))

    with monkeypatch.context() as mp:
        wrap_train_step(mp, interrupt_at_call(k + 1))
        stopped = train.run_loop(make_run(backend, tmp_path / "cut", steps=total, grad_method=None))
    assert stopped["summary"]["stopped"] == "interrupted"
    assert stopped["summary"]["step"] == k
    assert step_of(backend, stopped["state"]) == k
    loaded = checkpoint.load(tmp_path / "cut", backend)
    assert step_of(backend, loaded.state) == k
    assert_states_equal(backend, loaded.state, stopped["state"])

    resumed = train.run_loop(
        make_run(backend, tmp_path / "cut", steps=total, grad_method=None), loaded.state, loaded.key
    )
    assert resumed["summary"]["stopped"] == "finished"
    assert_states_equal(backend, resumed["state"], uninterrupted["state"])


def test_ctrl_c_while_waiting_for_the_loss_still_saves(backend, tmp_path, monkeypatch):
    """On JAX the host waits for the device in float(metrics["loss"]), the likeliest moment for Ctrl-C."""

    class InterruptOnRead:
        def __float__(self):
            raise KeyboardInterrupt

    def wrapper(step_fn):
        calls = [0]

        def step(state, batch, key):
            calls[0] += 1
            new_state, metrics = step_fn(state, batch, key)
            return new_state, (dict(metrics, loss=InterruptOnRead()) if calls[0] == 3 else metrics)

        return step

    wrap_train_step(monkeypatch, wrapper)
    result = train.run_loop(make_run(backend, tmp_path, steps=6))
    assert result["summary"]["stopped"] == "interrupted"
    saved = step_of(backend, checkpoint.load(tmp_path, backend).state)
    assert saved in (2, 3) and saved == result["summary"]["step"] == step_of(backend, result["state"])


# ---------------------------------------------------------------------------------------------
# Divergence


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(backend, tmp_path, monkeypatch):
    """Step 6 leaves NaN params (so its save_every checkpoint must be skipped); step 7's real loss is
    NaN, which stops the run; the checkpoint of step 3 survives with finite params."""

    def wrapper(step_fn):
        calls = [0]

        def step(state, batch, key):
            calls[0] += 1
            new_state, metrics = step_fn(state, batch, key)
            if calls[0] == 6:
                params = backend.tree_map(lambda p: p * float("nan"), new_state["params"])
                new_state = dict(new_state, params=params)
            return new_state, metrics

        return step

    wrap_train_step(monkeypatch, wrapper)
    path = tmp_path / checkpoint.CHECKPOINT_NAME
    with pytest.raises(train.TrainingDiverged, match=r"the loss became nan at step 7") as info:
        train.run_loop(make_run(backend, tmp_path, steps=20, save_every=3))
    assert str(path) in str(info.value)
    loaded = checkpoint.load(tmp_path, backend)
    assert step_of(backend, loaded.state) == 3
    assert train.all_finite(loaded.state["params"], backend)
    assert train.all_finite(loaded.state["opt_state"], backend)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


@slow_on_jax
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings are the point here
def test_a_real_divergence_before_any_checkpoint_writes_none(backend, tmp_path):
    """SGD at an absurd learning rate without clipping blows the loss up for real; nothing was saved
    yet, so nothing is written (no checkpoint of the broken params)."""
    with pytest.raises(train.TrainingDiverged, match="none was saved yet"):
        train.run_loop(
            make_run(
                backend,
                tmp_path,
                steps=20,
                optimizer="sgd",
                learning_rate=1e30,
                clip_norm=0.0,
                schedule="constant",
                grad_method=None,
            )
        )
    assert not (tmp_path / checkpoint.CHECKPOINT_NAME).exists()


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_fresh(backend, path, *, seed=0, step=0):
    """A checkpoint of a fresh state (no training): -> (state, key, cfg, train_config)."""
    cfg = make_cfg(d_model=16, d_ff=32)
    tcfg = train.TrainConfig(steps=10)
    optimizer = train.make_optimizer(tcfg, cfg)
    init_key, key = backend.random.split(backend.random.key(seed), 2)
    state = train.init_state(init_key, cfg, optimizer)
    state["step"] = backend.xp.asarray(step, dtype=backend.xp.int32)
    checkpoint.save(
        path,
        state,
        backend,
        cfg=cfg,
        tokenizer=TOKENIZER,
        train_config=dataclasses.asdict(tcfg),
        data_spec=DATA_SPEC,
        key=key,
    )
    return state, key, cfg, dataclasses.asdict(tcfg)


def test_checkpoint_round_trips_everything(backend, tmp_path):
    state, key, cfg, tcfg = save_fresh(backend, tmp_path, step=17)
    loaded = checkpoint.load(tmp_path, backend)
    assert {field.name for field in dataclasses.fields(loaded)} == {
        "state",
        "key",
        "arch",
        "cfg",
        "tokenizer",
        "train_config",
        "data_spec",
        "written_on",
        "progress",
        "labels",
        "path",
    }
    assert loaded.step == 17
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.cfg = None
    assert loaded.arch == "encoder_decoder" and loaded.labels is None
    assert_states_equal(backend, loaded.state, state)
    assert step_of(backend, loaded.state) == 17
    assert np.array_equal(backend.to_numpy(loaded.key), backend.to_numpy(key))
    assert backend.to_numpy(loaded.key).dtype == np.uint32
    assert loaded.cfg == cfg
    assert loaded.tokenizer == TOKENIZER
    assert loaded.train_config == train.TrainConfig(**tcfg) == train.TrainConfig(steps=10)
    assert loaded.data_spec == DATA_SPEC
    assert loaded.written_on == backend.name
    assert backend_of(loaded.state["params"]) is backend
    # A run folder and the file itself name the same checkpoint.
    assert_states_equal(backend, checkpoint.load(tmp_path / checkpoint.CHECKPOINT_NAME, backend).state, state)


def test_numpy_checkpoint_loads_on_jax_and_predicts_the_same(numpy_backend, jax_backend, tmp_path):
    train.run_loop(make_run(numpy_backend, tmp_path, steps=20))
    on_numpy = checkpoint.load(tmp_path, numpy_backend)
    on_jax = checkpoint.load(tmp_path, jax_backend)
    assert on_jax.written_on == "numpy"  # the backend that wrote it
    assert backend_of(on_jax.state["params"]) is jax_backend
    assert on_jax.cfg == on_numpy.cfg and on_jax.tokenizer == on_numpy.tokenizer == TOKENIZER
    assert on_jax.train_config == on_numpy.train_config and on_jax.data_spec == DATA_SPEC
    assert step_of(jax_backend, on_jax.state) == 20
    assert np.array_equal(jax_backend.to_numpy(on_jax.key), numpy_backend.to_numpy(on_numpy.key))
    assert_trees_equal(numpy_backend, on_numpy.state["params"], jax_backend.tree_to_numpy(on_jax.state["params"]))
    assert_trees_equal(numpy_backend, on_numpy.state["opt_state"], jax_backend.tree_to_numpy(on_jax.state["opt_state"]))
    sources = [s for s, _ in VALID_PAIRS[:8]]
    expected = predict(on_numpy.state["params"], on_numpy.cfg, on_numpy.tokenizer, sources)
    got = predict(on_jax.state["params"], on_jax.cfg, on_jax.tokenizer, sources)
    assert got == expected
    assert len(expected) == 8 and all(isinstance(p, str) for p in expected)


@pytest.fixture
def good_checkpoint(numpy_backend, tmp_path):
    save_fresh(numpy_backend, tmp_path)
    return tmp_path / checkpoint.CHECKPOINT_NAME


def test_truncated_checkpoint_is_a_checkpoint_error(numpy_backend, good_checkpoint):
    data = good_checkpoint.read_bytes()
    good_checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        checkpoint.load(good_checkpoint, numpy_backend)
    assert str(good_checkpoint) in str(info.value)
    good_checkpoint.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="5 bytes long"):
        checkpoint.load(good_checkpoint, numpy_backend)
    good_checkpoint.write_bytes(data[:-1])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.load(good_checkpoint, numpy_backend)


def test_random_bytes_and_empty_files_are_checkpoint_errors(numpy_backend, good_checkpoint):
    good_checkpoint.write_bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        checkpoint.load(good_checkpoint, numpy_backend)
    good_checkpoint.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        checkpoint.load(good_checkpoint, numpy_backend)


def test_corrupt_header_is_a_checkpoint_error(numpy_backend, good_checkpoint):
    data = bytearray(good_checkpoint.read_bytes())
    data[9:14] = b"\xff\xfe!!?"  # inside the JSON header
    good_checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(good_checkpoint, numpy_backend)


def test_missing_checkpoint_is_a_checkpoint_error(numpy_backend, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere", numpy_backend)


def test_other_safetensors_file_is_not_a_functional_transformer_checkpoint(numpy_backend, good_checkpoint):
    checkpoint_format.save_file(good_checkpoint, {"weight": np.zeros((2, 3), np.float32)}, {"format": "pt"})
    with pytest.raises(CheckpointError, match="not a functional_transformer checkpoint"):
        checkpoint.load(good_checkpoint, numpy_backend)
    checkpoint_format.save_file(good_checkpoint, {"weight": np.zeros(3, np.float32)})  # no metadata at all
    with pytest.raises(CheckpointError, match="not a functional_transformer checkpoint"):
        checkpoint.load(good_checkpoint, numpy_backend)


def test_checkpoint_lacking_trees_or_with_damaged_metadata_is_refused(numpy_backend, good_checkpoint):
    trees, metadata = checkpoint_format.load_tree(good_checkpoint)
    checkpoint_format.save_tree(good_checkpoint, {"params": trees["params"]}, metadata)
    with pytest.raises(CheckpointError, match="lacks the trees"):
        checkpoint.load(good_checkpoint, numpy_backend)
    for field, value in (
        ("model_config", "{not json"),
        ("vocabulary", '{"kind": "bpe"}'),
        ("model_config", json.dumps({"src_vocab_size": 5, "colour": "red"})),
    ):
        checkpoint_format.save_tree(good_checkpoint, trees, metadata | {field: value})
        with pytest.raises(CheckpointError, match="unreadable metadata"):
            checkpoint.load(good_checkpoint, numpy_backend)
    broken = dict(metadata)
    del broken["train_config"]
    checkpoint_format.save_tree(good_checkpoint, trees, broken)
    with pytest.raises(CheckpointError, match="unreadable metadata"):
        checkpoint.load(good_checkpoint, numpy_backend)


# ---------------------------------------------------------------------------------------------
# Atomic saves


class FailingFile:
    """A file object that fails on its `fail_at`-th write, as a full disk would."""

    def __init__(self, file, fail_at):
        self._file, self._fail_at, self._writes = file, fail_at, 0

    def write(self, data):
        self._writes += 1
        if self._writes == self._fail_at:
            raise OSError(28, "No space left on device")
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint(backend, tmp_path, monkeypatch):
    old_state, old_key, _, _ = save_fresh(backend, tmp_path, seed=0, step=3)
    before = (tmp_path / checkpoint.CHECKPOINT_NAME).read_bytes()
    real_fdopen = os.fdopen
    with monkeypatch.context() as mp:
        mp.setattr(checkpoint_format.os, "fdopen", lambda *a, **k: FailingFile(real_fdopen(*a, **k), fail_at=3))
        with pytest.raises(OSError, match="No space left"):
            save_fresh(backend, tmp_path, seed=1, step=9)
    with monkeypatch.context() as mp:

        def no_rename(*args):
            raise OSError("rename failed")

        mp.setattr(checkpoint_format.os, "replace", no_rename)
        with pytest.raises(OSError, match="rename failed"):
            save_fresh(backend, tmp_path, seed=2, step=10)
    assert (tmp_path / checkpoint.CHECKPOINT_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CHECKPOINT_NAME]  # no temporary files left
    loaded = checkpoint.load(tmp_path, backend)
    assert_states_equal(backend, loaded.state, old_state)
    assert np.array_equal(backend.to_numpy(loaded.key), backend.to_numpy(old_key))


@slow_on_jax
def test_a_failed_save_during_fit_keeps_the_last_checkpoint(backend, tmp_path, monkeypatch):
    real_save_file = checkpoint_format.save_file
    calls = [0]

    def fail_second(path, tensors, metadata=None):
        calls[0] += 1
        if calls[0] == 2:
            real_fdopen = os.fdopen
            with monkeypatch.context() as mp:
                mp.setattr(checkpoint_format.os, "fdopen", lambda *a, **k: FailingFile(real_fdopen(*a, **k), 2))
                return real_save_file(path, tensors, metadata)
        return real_save_file(path, tensors, metadata)

    monkeypatch.setattr(checkpoint_format, "save_file", fail_second)
    with pytest.raises(OSError, match="No space left"):
        train.run_loop(make_run(backend, tmp_path, steps=9, save_every=3))
    assert step_of(backend, checkpoint.load(tmp_path, backend).state) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CHECKPOINT_NAME, "metrics.jsonl"]


# ---------------------------------------------------------------------------------------------
# One trajectory, two backends


def trajectory(backend, cfg, n_steps, grad_method=None):
    """Losses and final state of n_steps train steps from one init, one key and one batch stream (NumPy
    made, moved to `backend`)."""
    numpy_backend = backend_of(np.zeros(1))
    tcfg = train.TrainConfig(steps=50, batch_size=16, learning_rate=3e-3, warmup_steps=10, grad_method=grad_method)
    optimizer = train.make_optimizer(tcfg, cfg)
    init_key, key = numpy_backend.random.split(numpy_backend.random.key(0), 2)
    state = backend.tree_asarray(train.init_state(init_key, cfg, optimizer))
    step = train.make_train_step(cfg, tcfg, optimizer, backend)
    batches = batch_iterator(encode_pairs(TRAIN_PAIRS, TOKENIZER, cfg.max_len), 16, 0, pad_to_multiple=8)
    losses = []
    for _ in range(n_steps):
        state, metrics = step(state, backend.tree_asarray(next(batches)), backend.asarray(key))
        losses.append(float(metrics["loss"]))
    return np.asarray(losses), state


# Tolerances: both backends run the same float32 model from bit-identical params, batches and dropout
# masks (backends.prng is the same Threefry on both), but NumPy's BLAS and XLA round differently
# (different summation orders, fused operations): about 1e-7..1e-6 relative per operation. Adam
# divides by sqrt(v), so small differences in gradients grow slowly over the steps. Measured: at
# most 4e-7 relative over 50 steps; asserted: 1e-4 over the first 10 steps and 1e-3 up to step 50.


@pytest.mark.slow
def test_one_trajectory_on_numpy_and_jax(numpy_backend, jax_backend):
    cfg = make_cfg()  # d_model 32, 2 heads, d_ff 64, 1 + 1 layers, dropout 0.1
    on_numpy, numpy_state = trajectory(numpy_backend, cfg, 50)
    on_jax, jax_state = trajectory(jax_backend, cfg, 50)  # autodiff: jax.grad under jit
    assert on_numpy[-1] < 0.9 * on_numpy[0]  # it trains, so the comparison is of a moving trajectory
    np.testing.assert_allclose(on_jax[:10], on_numpy[:10], rtol=1e-4)
    np.testing.assert_allclose(on_jax, on_numpy, rtol=1e-3)
    assert step_of(jax_backend, jax_state) == step_of(numpy_backend, numpy_state) == 50


def test_vjp_trajectory_on_jax_matches_numpy(numpy_backend, jax_backend):
    cfg = make_cfg()
    on_numpy, numpy_state = trajectory(numpy_backend, cfg, 10)
    on_jax, jax_state = trajectory(jax_backend, cfg, 10, grad_method="vjp")  # the hand-written VJPs, jitted
    np.testing.assert_allclose(on_jax, on_numpy, rtol=1e-4)
    # After 10 Adam steps of at most about lr = 3e-3 each, the params agree to far better than one step,
    # except the attention key biases b_k: softmax ignores a constant added to every score, so their
    # exact gradient is 0 and what each backend computes is rounding noise (~1e-9), which Adam divides
    # by its own root-mean-square and turns into full-size, backend-dependent steps.
    jax_params = flat(jax_backend, jax_state["params"])
    compared = 0
    for path, value in flat(numpy_backend, numpy_state["params"]).items():
        if path.endswith(".b_k"):
            continue
        np.testing.assert_allclose(jax_params[path], value, rtol=1e-3, atol=1e-4, err_msg=path)
        compared += 1
    assert compared > 20
