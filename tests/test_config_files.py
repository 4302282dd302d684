"""Settings files (functional_transformer.config_file): the TOML writer round-trips every field,
`ft train --config` reads a file and lets flags override it, bad files are one-line errors naming
the key and the file, a run folder's config.toml trains the same run again, `ft info`, and the
separate layer-count flags."""

import dataclasses
import json
import math
import tomllib

import pytest

from functional_transformer import checkpoint, cli, config_file, runs
from functional_transformer.backend_choice import default_backend
from functional_transformer.config import TransformerConfig
from functional_transformer.train import TrainConfig

TINY = ["--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--layers", "1", "--no-progress"]
TASK = ["--task", "reverse", "--n-train", "200", "--n-valid", "20", "--max-len", "4"]


def comparable(records):
    """The records of a metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time_s", "tokens_per_s")} for r in records]


# ---------------------------------------------------------------------------------------------
# The writer


def test_writing_then_reading_round_trips_every_field():
    cfg = TransformerConfig(
        src_vocab_size=40,
        tgt_vocab_size=41,
        d_model=48,
        n_heads=3,
        d_ff=100,
        n_encoder_layers=2,
        n_decoder_layers=1,
        max_len=24,
        drop_rate=0.1,
        norm_first=True,
        tie_embeddings=True,
        dtype="float64",
        activation="gelu",
        positional="learned",
        compute_dtype="float64",
    )
    tcfg = TrainConfig(
        steps=7,
        batch_size=3,
        max_tokens=123,
        learning_rate=3e-3,
        warmup_steps=2,
        schedule="constant",
        optimizer="adamw",
        weight_decay=1e-300,
        clip_norm=0.0,
        label_smoothing=0.1 + 0.2,
        seed=2**40,
        log_every=2,
        eval_every=3,
        save_every=4,
        grad_method="vjp",
        patience=5,
        best_by="chrf",
    )
    spec = runs.tsv_data('we"ird\\ päth\t.tsv', None, seed=3, max_len=9, truncate_long=True)
    tables = config_file.settings_tables(cfg, tcfg, spec, eval_examples=17)
    text = config_file.to_toml(tables, "a header\nof two lines")
    read = tomllib.loads(text)
    assert read == {name: {k: v for k, v in table.items() if v is not None} for name, table in tables.items()}
    # Every field of both configs, less those the data decide and the internal schedule_start.
    assert set(read["model"]) == {f.name for f in dataclasses.fields(TransformerConfig)} - set(runs.DATA_FIELDS)
    assert set(read["train"]) == {f.name for f in dataclasses.fields(TrainConfig)} - {"schedule_start"}
    assert TrainConfig(**read["train"]) == tcfg
    assert TransformerConfig(**read["model"], src_vocab_size=40, tgt_vocab_size=41, max_len=24) == cfg
    assert read["data"]["train"].endswith('we"ird\\ päth\t.tsv') and read["data"]["eval_examples"] == 17
    assert text.startswith("# a header\n# of two lines\n")


@pytest.mark.parametrize(
    "value",
    [
        "",
        'quote " backslash \\ newline \n tab \t bell \x07 del \x7f',
        "ünïcödé ✓",
        0,
        -5,
        2**62,
        0.1,
        1e-300,
        -2.5e300,
        math.inf,
        -math.inf,
        True,
        False,
    ],
)
def test_every_scalar_round_trips(value):
    read = tomllib.loads(config_file.to_toml({"t": {"key": value, "a key with spaces": value}}))
    assert read["t"]["key"] == value and type(read["t"]["key"]) is type(value)
    assert read["t"]["a key with spaces"] == value


def test_none_is_left_out_and_nan_round_trips():
    read = tomllib.loads(config_file.to_toml({"t": {"gone": None, "nan": math.nan}}))
    assert "gone" not in read["t"] and math.isnan(read["t"]["nan"])


# ---------------------------------------------------------------------------------------------
# Reading: errors


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model]\nd_modle = 16\n", "[model] d_modle"),
        ('[train]\nlearning_rate = "fast"\n', "[train] learning_rate must be a number, got 'fast'"),
        ("[train]\nsteps = 1.5\n", "[train] steps must be an integer, got 1.5"),
        ("[model]\nnorm_first = 1\n", "[model] norm_first must be a boolean (true or false), got 1"),
        ("[model]\nmax_len = 64\n", "['max_len'] follow from the data"),
        ('[data]\ntsk = "sort"\n', "[data] tsk"),
        ('[optimizer]\nname = "adam"\n', "unknown table or key optimizer"),
        ("steps = 5\n", "unknown table or key steps"),
        ("[train\n", "is not valid TOML"),
    ],
)
def test_a_bad_settings_file_is_one_line_naming_the_key_and_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ft train: error: ")
    assert str(path) in err and message in err
    assert not (tmp_path / "out").exists()


def test_a_missing_settings_file_and_pairs_data_are_clear_errors(tmp_path, capsys):
    assert cli.main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "the settings file" in capsys.readouterr().err
    path = tmp_path / "pairs.toml"
    path.write_text('[data]\nkind = "pairs"\nn_train = 8\nn_valid = 2\n')
    assert cli.main(["train", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "data were given in memory" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(path), "--resume", "--out", str(tmp_path / "out")]) == 2
    assert "leave out --config" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# ft train --config


def test_flags_override_the_file(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text(
        "[model]\nd_model = 16\nn_heads = 4\nd_ff = 32\nn_encoder_layers = 1\nn_decoder_layers = 1\n"
        "norm_first = true\n"
        "[train]\nsteps = 3\nlearning_rate = 1\nmax_tokens = 200\n"
        '[data]\ntask = "sort"\nn_train = 50\nn_valid = 5\nmax_len = 3\nseed = 4\neval_examples = 3\n'
    )
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(path),
                "--out",
                str(out),
                "--n-heads",
                "2",
                "--steps",
                "4",
                "--batch-size",
                "8",
                "--task",
                "reverse",
                "--no-norm-first",
                "--no-progress",
            ]
        )
        == 0
    )
    loaded = checkpoint.load(out, default_backend())
    assert (loaded.cfg.d_model, loaded.cfg.n_heads, loaded.cfg.norm_first) == (16, 2, False)
    tcfg = loaded.train_config
    assert (tcfg.steps, tcfg.learning_rate, tcfg.batch_size, tcfg.max_tokens) == (4, 1.0, 8, None)
    # --task replaces the file's task, which keeps its sizes and seed.
    assert loaded.data_spec == {
        "kind": "task",
        "task": "reverse",
        "n_train": 50,
        "n_valid": 5,
        "min_len": 1,
        "max_len": 3,
        "seed": 4,
    }
    assert config_file.read_settings(out / "config.toml").data["eval_examples"] == 3
    capsys.readouterr()


def test_relative_paths_in_a_file_are_read_from_its_folder(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "train.tsv").write_text("".join(f"{w}\t{w[::-1]}\n" for w in ["ab", "ba", "abc", "cab", "bca", "a"]))
    (folder / "run.toml").write_text('[data]\ntrain = "train.tsv"\n[train]\nsteps = 2\n')
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--config", "project/run.toml", "--out", "out", *TINY]) == 0
    assert checkpoint.load(tmp_path / "out", default_backend()).data_spec["train"] == "project/train.tsv"
    capsys.readouterr()


def test_a_run_folders_config_toml_trains_the_same_run_again(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        cli.main(
            [
                "train",
                *TASK,
                "--steps",
                "6",
                "--eval-every",
                "3",
                "--log-every",
                "3",
                "--seed",
                "5",
                "--eval-examples",
                "7",
                "--learning-rate",
                "0.01",
                "--encoder-layers",
                "2",
                *TINY,
                "--out",
                str(first),
            ]
        )
        == 0
    )
    assert cli.main(["train", "--config", str(first / "config.toml"), "--out", str(second), "--no-progress"]) == 0
    capsys.readouterr()
    a, b = runs.read_history(first), runs.read_history(second)
    assert [r["split"] for r in a] == ["train", "valid", "train", "valid"]
    assert comparable(a) == comparable(b)
    assert checkpoint.load(second, default_backend()).cfg == checkpoint.load(first, default_backend()).cfg
    assert len(a[1:2]) and a[1]["n_examples"] == 7  # eval_examples kept


def test_python_fit_writes_config_toml_and_resume_keeps_eval_examples(tmp_path):
    out = tmp_path / "run"
    model = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1}
    data = runs.task_data("reverse", n_train=100, n_valid=20, max_len=3)
    runs.fit(model, {"steps": 2, "eval_every": 2}, data, out_dir=out, progress=False, verbose=False, eval_examples=5)
    settings = config_file.read_settings(out / "config.toml")
    assert settings.model["d_model"] == 16 and settings.train["steps"] == 2 and settings.data["eval_examples"] == 5
    result = runs.fit(train_config={"steps": 4}, out_dir=out, resume=True, extend=True, progress=False, verbose=False)
    assert [r["n_examples"] for r in result.history if r["split"] == "valid"] == [5, 5]
    text = (out / "config.toml").read_text()
    assert "extended at step 2" in text and config_file.read_settings(out / "config.toml").train["steps"] == 4


# ---------------------------------------------------------------------------------------------
# Layer flags, ft info


def test_encoder_and_decoder_layer_flags(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                *TASK,
                "--steps",
                "1",
                "--d-model",
                "16",
                "--n-heads",
                "2",
                "--d-ff",
                "32",
                "--layers",
                "3",
                "--decoder-layers",
                "1",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cfg = checkpoint.load(out, default_backend()).cfg
    assert (cfg.n_encoder_layers, cfg.n_decoder_layers) == (3, 1)
    assert cli._model_flags(cli.build_parser().parse_args(["train", "--encoder-layers", "2"])) == {
        "n_encoder_layers": 2
    }
    capsys.readouterr()


def test_ft_info_shows_a_run_and_refuses_missing_or_damaged_paths(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                *TASK,
                "--steps",
                "2",
                "--eval-every",
                "2",
                "--best-by",
                "loss",
                "--layers",
                "1",
                "--d-model",
                "16",
                "--n-heads",
                "2",
                "--d-ff",
                "32",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    loaded = checkpoint.load(out, default_backend())
    n_params = sum(leaf.size for leaf in default_backend().tree_leaves(loaded.state["params"]))
    for text in (
        "checkpoint.safetensors: step 2 of 2; checksums verified",
        "best.safetensors: step 2 of 2; checksums verified",
        f"best held-out loss: {loaded.progress['best_value']:.4f} at step 2 (best_by loss",
        f"parameters: {n_params:,} ",
        f"tokenizer: char, one vocabulary of {loaded.cfg.src_vocab_size} ids",
        "model: src_vocab_size=",
        " d_model=16 ",
        "training: steps=2 ",
        "data: kind=task task=reverse",
    ):
        assert text in printed, text
    assert cli.main(["info", str(out / "best.safetensors")]) == 0
    assert capsys.readouterr().out.startswith("checkpoint file: ")
    damaged = tmp_path / "damaged.safetensors"
    raw = bytearray((out / "checkpoint.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    for path, message in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "holds no checkpoint"),
        (damaged, "does not match its SHA-256 checksum"),
    ):
        assert cli.main(["info", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ft info: error: ") and message in err, err


def test_the_run_config_json_matches_the_checkpoint(tmp_path, capsys):
    """config.toml holds what the checkpoint holds: the model's non-data fields and the TrainConfig."""
    out = tmp_path / "run"
    assert cli.main(["train", *TASK, "--steps", "1", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    loaded = checkpoint.load(out, default_backend())
    settings = config_file.read_settings(out / "config.toml")
    assert settings.model == {
        k: v for k, v in loaded.cfg.to_dict().items() if k not in runs.DATA_FIELDS and v is not None
    }
    assert {**settings.train, "schedule_start": 0} == {
        k: v for k, v in dataclasses.asdict(loaded.train_config).items() if v is not None
    }
    assert json.dumps(settings.data, sort_keys=True)  # plain values
