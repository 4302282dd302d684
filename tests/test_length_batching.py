"""Length limits and token-budget batching (issue #15): `--max-len` fits TSV training pairs to the
model (drop or truncate, counted), over-long held-out lines are errors naming file and line, and
`--max-tokens` batches come from length buckets: each example once per epoch, within the budget,
reproducible from the seed and step (so resume is exact), in few shapes.

The data-level tests are plain NumPy; the training runs use the FT_BACKEND backend. Every fit() on
JAX compiles its step afresh (once per shape), so tests with several fits are slow on JAX."""

import itertools
import json
import os
import random
import shutil

import numpy as np
import pytest

import functional_transformer as ft
from functional_transformer import checkpoint, cli, runs, train
from functional_transformer.data import (
    DataError,
    EncodedPair,
    bucket_lengths,
    fit_to_length,
    fixed_batch_plans,
    plan_batch,
    plan_counts,
    read_tsv,
    token_batch_iterator,
    token_batch_plans,
    token_buckets,
    token_rows,
    tsv_line_numbers,
    write_tsv,
)

ON_JAX = os.environ.get("FT_BACKEND", "numpy") == "jax"
slow_on_jax = pytest.mark.slow if ON_JAX else (lambda test: test)
TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1}
TINY_FLAGS = ["--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--layers", "1", "--no-progress"]


def varied_examples(n, low, high, seed=0):
    """n examples with source lengths in [low, high] and targets of about the same length; example
    i's first source id is i + 4, so a batch row tells which example it is."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        length = int(rng.integers(low, high + 1))
        tgt_len = max(1, length + int(rng.integers(-3, 2)))
        examples.append(EncodedPair((i + 4, *[5] * (length - 1)), (1, *[6] * (tgt_len - 1), 2)))
    return examples


def epoch_plans(examples, max_tokens, max_len, seed, epoch):
    buckets = token_buckets(examples, max_tokens, max_len)
    plans = list(
        itertools.islice(
            token_batch_plans(examples, max_tokens, seed, max_len=max_len), buckets.batches_per_epoch * (epoch + 1)
        )
    )
    return plans[buckets.batches_per_epoch * epoch :]


def reverse_lines(n, low, high, seed):
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdef") for _ in range(rng.randint(low, high))) for _ in range(n)]
    return [(w, w[::-1]) for w in words]


# ---------------------------------------------------------------------------------------------
# Buckets and plans


def test_bucket_lengths_are_few_and_end_at_max_len():
    assert bucket_lengths(128) == (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128)
    assert bucket_lengths(100) == (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 100)
    assert bucket_lengths(5) == (5,)
    assert len(bucket_lengths(512)) == 20  # four more per doubling past 64
    assert [token_rows(1024, n) for n in (8, 100, 128, 200, 300, 1024, 1025)] == [128, 8, 8, 4, 2, 1, 0]


@pytest.mark.parametrize("max_tokens", [256, 1000])
def test_every_example_once_per_epoch_within_the_budget(max_tokens):
    examples = varied_examples(300, 1, 60)
    for epoch in range(3):
        plans = epoch_plans(examples, max_tokens, 64, seed=0, epoch=epoch)
        real = np.concatenate([p.indices[p.indices >= 0] for p in plans])
        assert sorted(real.tolist()) == list(range(len(examples)))
        for plan in plans:
            assert len(plan.indices) * plan.src_len <= max_tokens and plan.src_len == plan.tgt_len
            assert (plan.indices[plan.indices < 0] == -1).all() and plan.indices[0] >= 0
            sizes = [max(len(examples[i].src), len(examples[i].tgt) - 1) for i in plan.indices if i >= 0]
            assert max(sizes) <= plan.src_len
            batch = plan_batch(examples, plan, 0)
            assert batch["src"].shape == batch["tgt_out"].shape == (len(plan.indices), plan.src_len)
            # Filler rows teach nothing: their targets are all padding.
            assert not batch["tgt_out"][plan.indices < 0].any()
            assert (batch["src"][plan.indices >= 0, 0] - 4).tolist() == plan.indices[plan.indices >= 0].tolist()


def test_batches_are_reshuffled_between_epochs_and_depend_on_the_seed():
    examples = varied_examples(200, 1, 40)

    def ids(seed, epoch):
        return [p.indices.tolist() for p in epoch_plans(examples, 256, 48, seed, epoch)]

    assert ids(0, 0) == ids(0, 0)
    assert ids(0, 0) != ids(1, 0)
    assert ids(0, 0) != ids(0, 1)


def test_a_resumed_plan_stream_equals_the_uninterrupted_one():
    examples = varied_examples(120, 1, 40)
    n_epoch = token_buckets(examples, 200, 40).batches_per_epoch
    fresh = list(itertools.islice(token_batch_plans(examples, 200, 3, max_len=40), 3 * n_epoch))
    for k in (0, 1, n_epoch - 1, n_epoch, n_epoch + 2, 3 * n_epoch - 1):
        resumed = next(token_batch_plans(examples, 200, 3, k, max_len=40))
        np.testing.assert_array_equal(resumed.indices, fresh[k].indices)
        assert (resumed.src_len, resumed.tgt_len) == (fresh[k].src_len, fresh[k].tgt_len)


def test_few_shapes_and_less_padding_than_fixed_batches():
    """Lengths spread 10-120, max_len 128: one shape per bucket used (here 11 of 12), and far less
    padding than batches of random examples padded to the longest (nearly always about 120)."""
    examples = varied_examples(2000, 10, 120)
    plans = list(itertools.islice(token_batch_plans(examples, 2048, 0, max_len=128), 300))
    shapes = {(len(p.indices), p.src_len, p.tgt_len) for p in plans}
    assert len(shapes) <= len(bucket_lengths(128)) - 1  # nothing is shorter than 10: bucket 8 is unused
    fixed = list(itertools.islice(fixed_batch_plans(examples, 32, 0, pad_to_multiple=8), 300))

    def pad_fraction(some):
        counts = np.sum([plan_counts(examples, p) for p in some], axis=0)
        return 1 - counts[1] / counts[2]

    assert pad_fraction(plans) < 0.15 < 0.3 < pad_fraction(fixed)


def test_process_slices_of_a_token_batch_concatenate_to_it():
    examples = varied_examples(50, 1, 30)
    for step in range(6):
        whole = next(token_batch_iterator(examples, 128, 2, step, max_len=32))
        slices = [
            next(token_batch_iterator(examples, 128, 2, step, max_len=32, process_index=rank, process_count=2))
            for rank in range(2)
        ]
        for name in whole:
            np.testing.assert_array_equal(np.concatenate([s[name] for s in slices]), whole[name])


def test_a_budget_too_small_or_uneven_over_devices_is_a_clear_error():
    examples = varied_examples(20, 30, 40)
    with pytest.raises(
        ValueError, match="less than one row of the longest examples, padded to 40 tokens; raise it to at least 40"
    ):
        token_buckets(examples, 39, 40)
    buckets = token_buckets(examples, 100, 40)  # 2 rows of 40
    buckets.check_split(2)
    with pytest.raises(
        ValueError,
        match="have 2 rows within --max-tokens, which do not split evenly over 4 devices; "
        "raise --max-tokens to at least 160",
    ):
        buckets.check_split(4)
    with pytest.raises(ValueError, match="split evenly over 4 devices"):
        train.check_batches_split(
            train.Run(
                cfg=ft.TransformerConfig(10, 10, max_len=40),
                tokenizer=None,
                tcfg=train.TrainConfig(max_tokens=100),
                train_examples=examples,
                valid_pairs=[],
                out_dir=None,
                data_spec={},
                backend=None,
            ),
            type("Mesh", (), {"devices": np.zeros(4)})(),
        )
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        train.TrainConfig(max_tokens=0)


# ---------------------------------------------------------------------------------------------
# --max-len


def test_fit_to_length_drops_or_truncates_and_counts():
    examples = [EncodedPair((4,) * 3, (1, 5, 2)), EncodedPair((4,) * 6, (1, 5, 2)), EncodedPair((4,), (1, *[5] * 6, 2))]
    kept, n_long = fit_to_length(examples, 4)
    assert (kept, n_long) == ([examples[0]], 2)
    cut, n_long = fit_to_length(examples, 4, truncate=True)
    assert n_long == 2
    assert cut == [examples[0], EncodedPair((4,) * 4, (1, 5, 2)), EncodedPair((4,), (1, 5, 5, 5, 2))]


def test_tsv_line_numbers_skip_blank_lines(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("a\tb\n\nc\td\n  \ne\tf\n")
    assert tsv_line_numbers(path) == [1, 3, 5]


@pytest.fixture
def tsv_files(tmp_path):
    """train.tsv with 80 pairs of 1-12 characters and 20 of 20-30; valid.tsv whose line 3 is 25 long."""
    train_pairs = reverse_lines(80, 1, 12, 0) + reverse_lines(20, 20, 30, 1)
    random.Random(2).shuffle(train_pairs)
    write_tsv(tmp_path / "train.tsv", train_pairs)
    valid = reverse_lines(4, 2, 10, 3)
    valid.insert(2, ("a" * 25, "b" * 25))
    write_tsv(tmp_path / "valid.tsv", valid)
    write_tsv(tmp_path / "valid_ok.tsv", reverse_lines(6, 2, 10, 4))
    return tmp_path


@slow_on_jax
def test_max_len_drops_or_truncates_training_pairs_and_counts_them(tsv_files):
    tcfg = {"steps": 2, "batch_size": 8, "eval_every": 2, "log_every": 1}
    n_long = sum(len(s) > 16 or len(t) + 1 > 16 for s, t in read_tsv(tsv_files / "train.tsv"))
    assert n_long == 20
    dropped = ft.fit(
        TINY,
        tcfg,
        runs.tsv_data(tsv_files / "train.tsv", tsv_files / "valid_ok.tsv", max_len=16),
        progress=False,
        verbose=False,
        out_dir=tsv_files / "drop",
    )
    assert dropped.cfg.max_len == 16
    record = dropped.history[0]
    assert record == {"step": 0, "split": "data", "max_len": 16, "n_train": 80, "dropped": 20, "held_out_dropped": 0}
    on_disk = json.loads((tsv_files / "drop" / "metrics.jsonl").read_text().splitlines()[0])
    assert on_disk == record
    cut = ft.fit(
        TINY,
        tcfg,
        runs.tsv_data(tsv_files / "train.tsv", tsv_files / "valid_ok.tsv", max_len=16, truncate_long=True),
        progress=False,
        verbose=False,
    )
    assert cut.history[0] == {
        "step": 0,
        "split": "data",
        "max_len": 16,
        "n_train": 100,
        "truncated": 20,
        "held_out_dropped": 0,
    }
    # Pairs held out of the training file (no valid file) that are too long are dropped from evaluation.
    held = ft.fit(TINY, tcfg, runs.tsv_data(tsv_files / "train.tsv", max_len=16), progress=False, verbose=False)
    report = held.history[0]
    assert report["dropped"] + report["n_train"] + report["held_out_dropped"] + held.history[-1]["n_examples"] <= 100
    assert held.history[-1]["split"] == "valid"


def test_an_over_long_held_out_line_is_an_error_naming_file_and_line(tsv_files, capsys):
    with pytest.raises(
        DataError,
        match=r"valid.tsv: 1 line\(s\) longer than this model reads \(max_len=16 "
        r"tokens\): line 3: source has 25 tokens",
    ):
        ft.fit(
            TINY,
            {"steps": 1},
            runs.tsv_data(tsv_files / "train.tsv", tsv_files / "valid.tsv", max_len=16),
            progress=False,
            verbose=False,
            out_dir=tsv_files / "never",
        )
    assert not (tsv_files / "never" / "checkpoint.safetensors").exists()
    code = cli.main(
        [
            "train",
            "--data",
            str(tsv_files / "train.tsv"),
            "--valid",
            str(tsv_files / "valid.tsv"),
            "--max-len",
            "16",
            "--steps",
            "1",
            "--out",
            str(tsv_files / "cli"),
            *TINY_FLAGS,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("ft train: error:") and "valid.tsv: 1 line(s)" in err
    assert "line 3: source has 25 tokens" in err and len(err.splitlines()) == 1


@slow_on_jax
def test_eval_of_an_over_long_line_names_it_and_eval_uses_the_fitted_held_out_set(tsv_files, capsys):
    out = tsv_files / "run"
    assert (
        cli.main(
            [
                "train",
                "--data",
                str(tsv_files / "train.tsv"),
                "--max-len",
                "16",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--eval-every",
                "2",
                "--out",
                str(out),
                *TINY_FLAGS,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out), "--data", str(tsv_files / "valid.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ft eval: error:") and "valid.tsv: 1 line(s)" in err and "line 3:" in err
    # --n 2 stops before line 3; the run's own held-out set is fitted as in training.
    assert cli.main(["eval", "--checkpoint", str(out), "--data", str(tsv_files / "valid.tsv"), "--n", "2"]) == 0
    assert cli.main(["eval", "--checkpoint", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("exact_match: ")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "reverse", "--truncate-long"], "--truncate-long cuts pairs of --data files"),
        (["--data", "TRAIN", "--truncate-long"], "give max_len (--max-len) too"),
        (["--data", "TRAIN", "--max-len", "1"], "max_len must be an integer of at least 2"),
        (["--task", "reverse", "--max-tokens", "64", "--batch-size", "8"], "give one of them"),
    ],
)
def test_length_and_batching_flag_errors_are_one_line(tsv_files, capsys, argv, message):
    argv = [str(tsv_files / "train.tsv") if a == "TRAIN" else a for a in argv]
    assert cli.main(["train", *argv, "--steps", "1", "--out", str(tsv_files / "x"), *TINY_FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ft train: error:") and message in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Training with --max-tokens


def token_run(backend, tsv_files, out_dir, steps, **fields):
    spec = runs.tsv_data(tsv_files / "train.tsv", tsv_files / "valid_ok.tsv", max_len=32)
    train_pairs, valid_pairs = runs.load_pairs(spec)
    tokenizer = runs.tokenizer_for(spec, train_pairs, valid_pairs)
    cfg = runs.model_config(tokenizer, train_pairs + valid_pairs, TINY, 32)
    examples, valid, report = runs.fit_data(spec, tokenizer, cfg.max_len, train_pairs, valid_pairs)
    tcfg = train.TrainConfig(
        **(
            {
                "steps": steps,
                "learning_rate": 3e-3,
                "warmup_steps": 10,
                "log_every": 1,
                "eval_every": 10**6,
                "save_every": 10**6,
                "schedule": "constant",
            }
            | fields
        )
    )
    return train.Run(
        cfg=cfg,
        tcfg=tcfg,
        tokenizer=tokenizer,
        train_examples=examples,
        valid_pairs=[],
        out_dir=out_dir,
        data_spec=spec,
        backend=backend,
        progress=False,
        data_report=report,
    )


@slow_on_jax
def test_resume_mid_epoch_with_max_tokens_equals_one_uninterrupted_run(backend, tsv_files):
    from test_training import assert_states_equal, read_metrics

    n = 4  # 100 examples in batches of up to 128 tokens: about 12 batches per epoch, so mid-epoch
    one = train.run_loop(token_run(backend, tsv_files, tsv_files / "one", 2 * n, max_tokens=128))
    train.run_loop(token_run(backend, tsv_files, tsv_files / "two", n, max_tokens=128))
    half = tsv_files / "half.safetensors"
    shutil.copy(tsv_files / "two" / checkpoint.CHECKPOINT_NAME, half)
    loaded = checkpoint.load(half, backend)
    resumed = train.run_loop(
        token_run(backend, tsv_files, tsv_files / "two", 2 * n, max_tokens=128), loaded.state, loaded.key
    )
    assert_states_equal(backend, resumed["state"], one["state"])
    records, uninterrupted = read_metrics(tsv_files / "two"), read_metrics(tsv_files / "one")
    assert [r["split"] for r in records] == ["data"] + ["train"] * 2 * n
    assert records[0] == uninterrupted[0]
    for name in ("step", "loss", "pad_fraction"):
        assert [r[name] for r in records[1:]] == [r[name] for r in uninterrupted[1:]]
    assert all(0 <= r["pad_fraction"] < 1 for r in records[1:])


@slow_on_jax
def test_max_tokens_learns_as_well_as_fixed_batches(backend, tsv_files):
    """Same data, model and steps; batches of 16 examples, or of at most 256 padded tokens (about
    the same number of target tokens per step). Both must learn, and the bucketed run about as well."""
    steps = 80
    fixed = train.run_loop(token_run(backend, tsv_files, None, steps, batch_size=16))
    bucketed = train.run_loop(token_run(backend, tsv_files, None, steps, max_tokens=256))
    losses = {}
    for name, result in (("fixed", fixed), ("bucketed", bucketed)):
        train_records = [r for r in result["history"] if r["split"] == "train"]
        first, last = train_records[0]["loss"], np.mean([r["loss"] for r in train_records[-10:]])
        assert last < 0.75 * first, (name, first, last)
        losses[name] = last
        pad = np.mean([r["pad_fraction"] for r in train_records])
        losses[name + "_pad"] = pad
    assert losses["bucketed"] < 1.1 * losses["fixed"], losses
    assert losses["bucketed_pad"] < losses["fixed_pad"], losses


def test_fixed_batches_never_pad_past_a_max_len_that_is_not_a_multiple_of_8():
    """--max-len 50: a batch whose longest example has 49 tokens pads to 50, not to 56 (which the
    model would refuse mid-run)."""
    examples = [EncodedPair((4,) * 49, (1, *[5] * 48, 2)), EncodedPair((4,) * 3, (1, 5, 2))]
    plan = next(fixed_batch_plans(examples, 2, seed=0, pad_to_multiple=8, max_len=50))
    assert (plan.src_len, plan.tgt_len) == (50, 50)
    short = next(fixed_batch_plans(examples[1:], 1, seed=0, pad_to_multiple=8, max_len=50))
    assert (short.src_len, short.tgt_len) == (8, 8)  # rounding up as before where it fits


def test_model_config_takes_a_whole_config_with_room_to_spare_or_the_given_max_len():
    pairs = [("abc", "cba"), ("ab", "ba")]
    tokenizer = runs.tokenizer_for({"kind": "tsv"}, pairs, [])
    base = runs.model_config(tokenizer, pairs)
    roomy = ft.TransformerConfig.from_dict({**base.to_dict(), "max_len": 64})
    assert runs.model_config(tokenizer, pairs, roomy) is roomy  # longer than the data needs: fine
    assert runs.model_config(tokenizer, pairs, roomy, max_len=64) is roomy
    with pytest.raises(ValueError, match="differs from the data's max_len"):
        runs.model_config(tokenizer, pairs, roomy, max_len=32)
    tight = ft.TransformerConfig.from_dict({**base.to_dict(), "max_len": 2})
    with pytest.raises(ValueError, match="shorter than the data's longest"):
        runs.model_config(tokenizer, pairs, tight)
