"""The three model families end to end: a causal language model and a classifier train through
ft.fit and the CLI on both backends (the encoder-decoder's own tests are elsewhere), their data,
evaluation, checkpoints and errors."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

import functional_transformer as ft
from functional_transformer import cli, families
from functional_transformer.data import CharTokenizer

WORDS = "the cat dog sat ran on a mat park sun is hot we like to read books".split()
SMALL = {"d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 2}


def _documents(n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def _labelled(n, seed):
    """(text, label): "animal" where the text names a cat or a dog, else "other"."""
    return [(text, "animal" if {"cat", "dog"} & set(text.split()) else "other") for text in _documents(n, seed)]


def _tcfg(**overrides):
    return ft.TrainConfig(
        **{
            "steps": 60,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_steps": 5,
            "log_every": 10,
            "eval_every": 30,
            "save_every": 30,
            **overrides,
        }
    )


@pytest.fixture
def text_files(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(_documents(200, 0)) + "\n\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(_documents(20, 1)) + "\n", encoding="utf-8")
    return tmp_path / "train.txt", tmp_path / "valid.txt"


@pytest.fixture
def labelled_files(tmp_path):
    for name, n, seed in (("train.tsv", 300, 2), ("valid.tsv", 40, 3)):
        (tmp_path / name).write_text("".join(f"{t}\t{label}\n" for t, label in _labelled(n, seed)), encoding="utf-8")
    return tmp_path / "train.tsv", tmp_path / "valid.tsv"


def test_the_language_model_learns_below_the_unigram_baseline(backend, text_files, tmp_path):
    result = ft.fit(
        {**SMALL, "max_len": 32},
        _tcfg(steps=120),
        ft.text_data(*text_files),
        out_dir=tmp_path / "lm",
        backend=backend,
        progress=False,
        verbose=False,
    )
    train = [r["loss"] for r in result.history if r["split"] == "train"]
    assert train[-1] < 0.7 * train[0]
    data = next(r for r in result.history if r["split"] == "data")
    valid = [r for r in result.history if r["split"] == "valid"]
    assert result.train_config.best_by == "loss" and result.best_value == min(r["loss"] for r in valid)
    assert valid[-1]["perplexity"] < 0.8 * data["unigram_perplexity"]
    model = ft.load(tmp_path / "lm", backend=backend)
    assert model.arch == "decoder" and isinstance(model.cfg, ft.DecoderConfig)
    again = ft.evaluate(model, [d for _, d in ft.runs.load_pairs(ft.text_data(*text_files))[1]])
    assert math.isclose(again["perplexity"], math.exp(again["loss"]), rel_tol=1e-9)
    (continuation,) = ft.predict(model, ["the cat"], max_new_tokens=12)
    assert isinstance(continuation, str) and len(continuation) <= 12


def test_the_classifier_learns(backend, labelled_files, tmp_path):
    result = ft.fit(
        {**SMALL, "n_layers": 1},
        _tcfg(steps=90),
        ft.labelled_data(*labelled_files),
        out_dir=tmp_path / "c",
        backend=backend,
        progress=False,
        verbose=False,
    )
    valid = [r for r in result.history if r["split"] == "valid"]
    assert result.train_config.best_by == "accuracy" and valid[-1]["accuracy"] >= 0.85
    model = ft.load(tmp_path / "c", backend=backend)
    assert model.labels == ["animal", "other"]
    scores = ft.evaluate(model, _labelled(40, 3))
    assert np.sum(scores["confusion"]) == 40 and math.isclose(
        scores["accuracy"], np.trace(np.asarray(scores["confusion"])) / 40, rel_tol=1e-6
    )
    assert ft.predict(model, ["the cat sat on a mat", "we read books"]) == ["animal", "other"]


def test_in_memory_data_and_resume(backend, tmp_path):
    data = (_documents(100, 4), _documents(10, 5))
    first = ft.fit(
        {**SMALL, "max_len": 16},
        _tcfg(steps=30),
        data,
        out_dir=tmp_path / "run",
        backend=backend,
        progress=False,
        verbose=False,
    )
    assert first.cfg.max_len == 16 and first.arch == "decoder"
    resumed = ft.fit(
        train_config={"steps": 40},
        data=data,
        out_dir=tmp_path / "run",
        resume=True,
        extend=True,
        backend=backend,
        progress=False,
        verbose=False,
    )
    assert resumed.step == 40


def test_language_model_windows_cover_every_token():
    tokenizer = CharTokenizer.from_texts(["abcd"])
    windows = families.encode_documents(["abc", "d"], tokenizer, max_len=3)
    stream = [
        tokenizer.bos_id,
        *tokenizer.encode("abc"),
        tokenizer.eos_id,
        tokenizer.bos_id,
        *tokenizer.encode("d"),
        tokenizer.eos_id,
    ]
    assert [w.tgt for w in windows] == [tuple(stream[0:4]), tuple(stream[3:7]), tuple(stream[6:8])]
    predicted = [token for w in windows for token in w.tgt[1:]]
    assert predicted == stream[1:]  # each token after the first once


def test_a_vocabulary_without_pad_is_refused_by_evaluation_and_training():
    """Guards families.pad_id_of (evaluation and train.run_loop batch through it): a model whose
    vocabulary has no pad token (pad_id None, as a converted GPT-2's) gets a ConfigError naming
    that, never a batch padded with None."""
    cfg = ft.DecoderConfig(vocab_size=8, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=8, pad_id=None)
    assert families.pad_id_of(ft.DecoderConfig(vocab_size=8, d_model=8, n_heads=2, d_ff=16, n_layers=1)) == 0
    with pytest.raises(ft.ConfigError, match="no pad token"):
        families.pad_id_of(cfg)
    params = ft.init(ft.random.key(0), cfg)
    examples = families.encode_documents(["abc"], CharTokenizer.from_texts(["abc"]), max_len=cfg.max_len)
    with pytest.raises(ft.ConfigError, match="no pad token"):
        families.evaluate_examples(params, cfg, examples)


def test_unigram_baseline_is_the_perplexity_of_token_frequencies():
    tokenizer = CharTokenizer.from_texts(["ab"])
    train = families.encode_documents(["aab"], tokenizer, max_len=8)
    # predicted tokens: a, a, b, eos; add-one over the vocabulary
    counts = {tokenizer.encode("a")[0]: 2, tokenizer.encode("b")[0]: 1, tokenizer.eos_id: 1}
    total = 4 + tokenizer.vocab_size
    held_out = families.encode_documents(["b"], tokenizer, max_len=8)  # predicts b, eos
    expected = math.exp(
        -(math.log((counts[tokenizer.encode("b")[0]] + 1) / total) + math.log((counts[tokenizer.eos_id] + 1) / total))
        / 2
    )
    assert math.isclose(families.unigram_perplexity(train, held_out, tokenizer.vocab_size), expected)


def test_the_cli_trains_evaluates_and_predicts_each_family(text_files, labelled_files, tmp_path, capsys):
    common = [
        "--steps",
        "12",
        "--batch-size",
        "8",
        "--d-model",
        "16",
        "--n-heads",
        "2",
        "--d-ff",
        "32",
        "--layers",
        "1",
        "--eval-every",
        "6",
        "--log-every",
        "6",
        "--no-progress",
    ]
    train, valid = text_files
    assert (
        cli.main(
            [
                "train",
                "--arch",
                "decoder",
                "--data",
                str(train),
                "--valid",
                str(valid),
                "--max-len",
                "24",
                "--out",
                str(tmp_path / "lm"),
                *common,
            ]
        )
        == 0
    )
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "lm"), "--data", str(valid)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("perplexity: ")
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "lm"), "the"]) == 0
    train, valid = labelled_files
    assert cli.main(["train", "--arch", "encoder", "--data", str(train), "--out", str(tmp_path / "c"), *common]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "c"), "--data", str(valid)]) == 0
    out = capsys.readouterr().out
    assert "| true \\ predicted | animal | other |" in out and out.strip().splitlines()[-1].startswith("accuracy: ")
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "c"), "a cat", "we read"]) == 0
    assert set(capsys.readouterr().out.split()) <= {"animal", "other"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "decoder", "--task", "reverse"], "--arch decoder trains on your own --data file"),
        (
            ["--arch", "encoder", "--data", "{train}", "--compute-dtype", "bfloat16"],
            "--compute-dtype does not apply to --arch encoder",
        ),
        (
            ["--arch", "decoder", "--data", "{train}", "--best-by", "exact_match"],
            "not a held-out metric of the decoder",
        ),
    ],
)
def test_cli_errors_name_the_problem(text_files, tmp_path, capsys, args, message):
    args = [a.replace("{train}", str(text_files[0])) for a in args]
    assert cli.main(["train", *args, "--steps", "2", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_data_of_the_wrong_family_is_an_error(text_files):
    with pytest.raises(ValueError, match="the encoder model trains on text<TAB>label lines"):
        ft.fit(data=ft.text_data(*text_files), arch="encoder", progress=False, verbose=False)
    with pytest.raises(ValueError, match="arch='decoder' but the model is a TransformerConfig"):
        ft.fit(ft.TransformerConfig(src_vocab_size=10, tgt_vocab_size=10), data="reverse", arch="decoder")


def test_a_held_out_label_the_training_data_lacks_is_an_error(tmp_path):
    (tmp_path / "t.tsv").write_text("a cat\tanimal\nwe read\tother\n" * 5, encoding="utf-8")
    (tmp_path / "v.tsv").write_text("a dog\tpet\n", encoding="utf-8")
    with pytest.raises(ft.data.DataError, match="the label 'pet', which the training data does not have"):
        ft.fit(data=ft.labelled_data(tmp_path / "t.tsv", tmp_path / "v.tsv"), progress=False, verbose=False)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_preset_trains_through_fit_and_its_run_folder_reproduces_it(backend, text_files, tmp_path, name):
    """model={"preset": ...} builds the named architecture over the data's vocabulary; its config.toml
    holds every field, so `ft train --config` trains the same model again."""
    sizes = {"preset": name, "d_model": 16, "n_heads": 2, "n_layers": 1, "max_len": 24}
    result = ft.fit(
        sizes,
        _tcfg(steps=20, eval_every=20),
        ft.text_data(*text_files),
        out_dir=tmp_path / name,
        backend=backend,
        progress=False,
        verbose=False,
    )
    assert result.cfg == ft.models.presets.preset(
        name, result.cfg.vocab_size, **{k: v for k, v in sizes.items() if k != "preset"}, pad_id=0
    )
    train = [r["loss"] for r in result.history if r["split"] == "train"]
    assert train[-1] < train[0]
    assert (
        cli.main(
            [
                "train",
                "--config",
                str(tmp_path / name / "config.toml"),
                "--out",
                str(tmp_path / "again"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert ft.load(tmp_path / "again", backend=backend).cfg == result.cfg
