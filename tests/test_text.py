"""Real text: BPE tokenizers (the [text] extra's Hugging Face tokenizers), sacreBLEU metrics,
--best-by, and files in and out of `ft predict` / `ft eval`.

Tests that need the extra skip with the reason where it is not installed; the behaviour without
it (clear errors, metrics left out) is tested by hiding the libraries from import.
"""

import importlib.util
import io
import json
import os
import sys

import numpy as np
import pytest

import backends
import functional_transformer as ft
from functional_transformer import checkpoint, cli, inference
from functional_transformer.data import CharTokenizer, DataError, TokenizerPair, tokenizer_from_json, write_tsv
from functional_transformer.metrics import corpus_scores

HAS_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None
HAS_SACREBLEU = importlib.util.find_spec("sacrebleu") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_tokenizers = pytest.mark.skipif(not HAS_TOKENIZERS, reason="tokenizers is the [text] extra, not installed here")
needs_sacrebleu = pytest.mark.skipif(not HAS_SACREBLEU, reason="sacrebleu is the [text] extra, not installed here")
BACKEND_NAME = os.environ.get("FT_BACKEND", "numpy")
# The training loop's bookkeeping is the same on both backends: tested on NumPy, slow (compiles) on JAX.
slow_on_jax = pytest.mark.slow if BACKEND_NAME == "jax" else (lambda test: test)

TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_encoder_layers": 1, "n_decoder_layers": 1}
TINY_FLAGS = ["--d-model", "16", "--n-heads", "2", "--d-ff", "32", "--layers", "1", "--no-progress"]
WORDS = ["un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf", "dix", "été", "à", "Zürich"]


def sentence_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Word sequences and their reversal in capitals: multi-word, with non-ASCII characters."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        source = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
        pairs.append((source, source[::-1].upper()))
    return pairs


@pytest.fixture
def hide(monkeypatch):
    """hide(name): importing the module `name` fails from now on in this test, as where it is not installed."""

    def hide_module(name):
        monkeypatch.setitem(sys.modules, name, None)

    return hide_module


# ---------------------------------------------------------------------------------------------
# The BPE tokenizer


TEXTS = [
    "hello world, hello there",
    "the  two spaces",
    " a leading space",
    "trailing space ",
    "vingt-et-un à Zürich",
    "mille neuf cent quatre-vingt-dix-neuvième",
    "日本語のテキスト",
    "emoji 🙂 too",
]


@needs_tokenizers
@pytest.mark.parametrize("texts", [TEXTS[:4], TEXTS[4:]], ids=["ascii", "non-ascii"])
def test_bpe_round_trips_its_texts_exactly(texts):
    from functional_transformer.data.bpe import BpeTokenizer

    tokenizer = BpeTokenizer.train(texts * 3, vocab_size=80)
    merged = False
    for text in texts:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert "".join(tokenizer.pieces(text)) == text and len(tokenizer.pieces(text)) == len(ids)
        assert min(ids) >= 4 and max(ids) < tokenizer.vocab_size  # no special token inside a text
        merged |= len(ids) < len(text)
    assert merged, "BPE learned no merge: the test would pass for a character tokenizer too"
    # Special ids mean what they mean for characters: decoding stops at eos and skips pad and bos.
    ids = tokenizer.encode(texts[0])
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, *ids, tokenizer.pad_id]) == texts[0]
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)


@needs_tokenizers
def test_bpe_unknown_characters_and_spelled_special_tokens():
    from functional_transformer.data.bpe import BpeTokenizer

    tokenizer = BpeTokenizer.train(["abc abc", "<eos> b"], vocab_size=30)
    assert tokenizer.unknown_symbols(["abz", "yx"]) == ["x", "y", "z"]
    assert tokenizer.decode(tokenizer.encode("abz")) == "ab\N{REPLACEMENT CHARACTER}"
    assert tokenizer.pieces("abz")[-1] == "z"
    # A text that spells a special token is read as its characters.
    assert tokenizer.eos_id not in tokenizer.encode("<eos>") and tokenizer.decode(tokenizer.encode("<eos>")) == "<eos>"


@needs_tokenizers
def test_bpe_alphabet_covers_held_out_characters_and_training_is_deterministic():
    from functional_transformer.data.bpe import BpeTokenizer

    first = BpeTokenizer.train(TEXTS, 120, alphabet=["ßk"])
    assert first == BpeTokenizer.train(TEXTS, 120, alphabet=["ßk"])
    assert first.unknown_symbols(["ßk"]) == []
    assert BpeTokenizer.train(TEXTS, 120).unknown_symbols(["ßk"]) == ["k", "ß"]


@needs_tokenizers
def test_tokenizers_round_trip_through_json():
    from functional_transformer.data.bpe import BpeTokenizer

    bpe = BpeTokenizer.train(TEXTS, 100)
    pair = TokenizerPair(BpeTokenizer.train(TEXTS[:4], 60), CharTokenizer.from_texts(TEXTS))
    for tokenizer in (bpe, pair, CharTokenizer.from_texts(TEXTS)):
        back = tokenizer_from_json(tokenizer.to_json())
        assert back == tokenizer and type(back) is type(tokenizer)
        assert back.source.encode(TEXTS[4]) == tokenizer.source.encode(TEXTS[4])
    # A checkpoint written before tokenizers had kinds holds exactly a CharTokenizer's JSON.
    old = json.dumps({"kind": "char", "version": 1, "chars": ["a", "b"]})
    assert tokenizer_from_json(old) == CharTokenizer(("a", "b"))


@needs_tokenizers
@pytest.mark.parametrize("kind", ["bpe", "bpe-source-char-target", "char-source-bpe-target", "char"])
def test_training_targets_end_with_eos_for_every_tokenizer(kind):
    """Guards the eos at the end of every training target whatever the tokenizer (a model trained without
    it never learns to stop): encode_pairs puts the target between bos and eos and the source bare, and
    the batch's tgt_out ends each row with eos. The character-only test in test_data.py would pass if
    BPE targets (a BPE tokenizer, or a pair with a BPE side) lost their eos."""
    from functional_transformer.data import encode_pairs, make_batch
    from functional_transformer.data.bpe import BpeTokenizer

    pairs = sentence_pairs(6, 0)
    texts = [text for pair in pairs for text in pair]
    bpe, char = BpeTokenizer.train(texts * 3, vocab_size=80), CharTokenizer.from_texts(texts)
    tokenizer = {
        "bpe": bpe,
        "char": char,
        "bpe-source-char-target": TokenizerPair(bpe, char),
        "char-source-bpe-target": TokenizerPair(char, bpe),
    }[kind]
    examples = encode_pairs(pairs, tokenizer, max_len=64)
    for (source, target), example in zip(pairs, examples):
        assert example.src == tuple(tokenizer.source.encode(source))
        assert example.tgt == (tokenizer.bos_id, *tokenizer.target.encode(target), tokenizer.eos_id)
    batch = make_batch(examples, tokenizer.pad_id)
    for row, (_, target) in enumerate(pairs):
        ids = tokenizer.target.encode(target)
        assert batch["tgt_out"][row, : len(ids) + 1].tolist() == [*ids, tokenizer.eos_id]
        assert batch["tgt_in"][row, : len(ids) + 1].tolist() == [tokenizer.bos_id, *ids]


@needs_tokenizers
def test_a_vocab_size_too_small_for_the_characters_is_a_clear_error(tmp_path, capsys):
    from functional_transformer.data.bpe import BpeTokenizer

    with pytest.raises(DataError, match=r"--vocab-size 10 is too small for the 8 distinct characters .* at least 12"):
        BpeTokenizer.train(["abc defg"], 10)
    write_tsv(tmp_path / "train.tsv", sentence_pairs(40, 0))
    code = cli.main(
        [
            "train",
            "--data",
            str(tmp_path / "train.tsv"),
            "--tokenizer",
            "bpe",
            "--vocab-size",
            "12",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "1",
            *TINY_FLAGS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "is too small" in err and "raise --vocab-size" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / checkpoint.CHECKPOINT_NAME).exists()


def test_an_unknown_tokenizer_is_a_clear_error(tmp_path, capsys):
    code = cli.main(
        ["train", "--task", "reverse", "--tokenizer", "wordpiece", "--out", str(tmp_path / "run"), *TINY_FLAGS]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "ft train: error: unknown tokenizer 'wordpiece': choose one of char, bpe"
    with pytest.raises(ValueError, match="--vocab-size is for --tokenizer bpe"):
        ft.tokenizer_spec("char", vocab_size=100)


def test_bpe_without_the_extra_says_how_to_install_it(tmp_path, capsys, hide):
    hide("tokenizers")
    code = cli.main(
        [
            "train",
            "--task",
            "reverse",
            "--tokenizer",
            "bpe",
            "--vocab-size",
            "50",
            "--out",
            str(tmp_path / "run"),
            *TINY_FLAGS,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'functional-transformer[text]'" in err and "uv sync --extra text" in err


# ---------------------------------------------------------------------------------------------
# A BPE checkpoint on both backends


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A run on sentence pairs with separate BPE vocabularies, trained on the numpy backend."""
    if not HAS_TOKENIZERS:
        pytest.skip("tokenizers is the [text] extra, not installed here")
    folder = tmp_path_factory.mktemp("bpe")
    write_tsv(folder / "train.tsv", sentence_pairs(200, 0))
    write_tsv(folder / "valid.tsv", sentence_pairs(12, 1))
    data = ft.tsv_data(folder / "train.tsv", folder / "valid.tsv", tokenizer=ft.tokenizer_spec("bpe", 60))
    result = ft.fit(
        TINY,
        ft.TrainConfig(steps=30, batch_size=16, eval_every=30, log_every=30),
        data,
        out_dir=folder / "run",
        backend=backends.get_backend("numpy"),
        progress=False,
        verbose=False,
    )
    return folder, result


@needs_tokenizers
def test_a_bpe_run_stores_its_tokenizer_and_sizes_the_model_by_it(bpe_run):
    folder, result = bpe_run
    assert isinstance(result.tokenizer, TokenizerPair)
    assert result.cfg.src_vocab_size == result.tokenizer.source.vocab_size <= 60
    assert result.cfg.tgt_vocab_size == result.tokenizer.target.vocab_size <= 60
    assert result.tokenizer.source != result.tokenizer.target  # lower-case words, upper-case reversals
    loaded = checkpoint.load(folder / "run", backends.get_backend("numpy"))
    assert loaded.tokenizer == result.tokenizer
    assert loaded.data_spec["tokenizer"] == {"kind": "bpe", "vocab_size": 60, "joint": False}


@needs_tokenizers
@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
def test_a_bpe_checkpoint_predicts_the_same_on_both_backends(bpe_run):
    folder, _ = bpe_run
    sources = [s for s, _ in sentence_pairs(6, 2)]
    outputs = {
        name: ft.predict(ft.load(folder / "run", "last", backends.get_backend(name)), sources)
        for name in ("numpy", "jax")
    }
    assert outputs["numpy"] == outputs["jax"]
    assert all(isinstance(o, str) for o in outputs["numpy"])


@needs_tokenizers
@pytest.mark.skipif(not HAS_JAX, reason="JAX is not installed")
@pytest.mark.skipif(BACKEND_NAME != "jax", reason="trains on JAX: runs once, in the JAX suite")
def test_a_bpe_run_trained_on_jax_loads_and_predicts_on_numpy(bpe_run, tmp_path):
    folder, _ = bpe_run
    data = ft.tsv_data(folder / "train.tsv", folder / "valid.tsv", tokenizer=ft.tokenizer_spec("bpe", 80, joint=True))
    result = ft.fit(
        TINY,
        ft.TrainConfig(steps=10, batch_size=16, eval_every=10),
        data,
        out_dir=tmp_path / "run",
        backend=backends.get_backend("jax"),
        progress=False,
        verbose=False,
    )
    assert result.cfg.src_vocab_size == result.cfg.tgt_vocab_size == result.tokenizer.vocab_size
    sources = [s for s, _ in sentence_pairs(4, 3)]
    on_numpy = ft.predict(ft.load(tmp_path / "run", "last", backends.get_backend("numpy")), sources)
    assert on_numpy == ft.predict(result, sources)


@needs_tokenizers
def test_ft_eval_and_predict_read_a_bpe_checkpoint_alone(bpe_run, capsys):
    folder, result = bpe_run
    assert cli.main(["eval", "--checkpoint", str(folder / "run"), "--data", str(folder / "valid.tsv")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("exact_match: ")
    sources = [s for s, _ in sentence_pairs(3, 4)]
    assert cli.main(["predict", "--checkpoint", str(folder / "run"), *sources]) == 0
    assert capsys.readouterr().out.splitlines() == ft.predict(ft.load(folder / "run"), sources)


@needs_tokenizers
def test_a_bpe_checkpoint_without_the_extra_says_how_to_install_it(bpe_run, capsys, hide):
    folder, _ = bpe_run
    hide("tokenizers")
    assert cli.main(["predict", "--checkpoint", str(folder / "run"), "un deux"]) == 2
    err = capsys.readouterr().err
    assert "holds a BPE tokenizer" in err and "functional-transformer[text]" in err


# ---------------------------------------------------------------------------------------------
# Metrics


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A tiny character run on sentence pairs (no extra needed), its folder and test file."""
    folder = tmp_path_factory.mktemp("char")
    write_tsv(folder / "train.tsv", sentence_pairs(200, 0))
    write_tsv(folder / "test.tsv", sentence_pairs(20, 5))
    code = cli.main(
        [
            "train",
            "--data",
            str(folder / "train.tsv"),
            "--out",
            str(folder / "run"),
            "--steps",
            "40",
            "--eval-every",
            "10",
            "--batch-size",
            "16",
            *TINY_FLAGS,
        ]
    )
    assert code == 0
    return folder


@needs_sacrebleu
def test_ft_eval_reports_sacrebleus_own_numbers_for_its_hypotheses(char_run, capsys):
    import sacrebleu

    hyps = char_run / "hyps.txt"
    assert (
        cli.main(
            ["eval", "--checkpoint", str(char_run / "run"), "--data", str(char_run / "test.tsv"), "--output", str(hyps)]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    report = dict(line.split(": ", 1) for line in lines)
    assert lines[-1].startswith("exact_match: ")
    hypotheses = hyps.read_text(encoding="utf-8").split("\n")[:-1]
    references = [t for _, t in ft.data.read_tsv(char_run / "test.tsv")]
    assert len(hypotheses) == len(references) == int(report["n_examples"])
    assert float(report["bleu"]) == sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert float(report["chrf"]) == sacrebleu.corpus_chrf(hypotheses, [references]).score
    assert report["bleu_signature"].startswith("nrefs:1|") and "tok:13a" in report["bleu_signature"]
    assert float(report["exact_match"]) == np.mean([h == r for h, r in zip(hypotheses, references)])
    # A perfect output scores 100 on both.
    perfect = corpus_scores(TEXTS, TEXTS)
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0)


def test_without_sacrebleu_eval_leaves_bleu_out_and_says_so(char_run, capsys, hide):
    hide("sacrebleu")
    assert cli.main(["eval", "--checkpoint", str(char_run / "run"), "--data", str(char_run / "test.tsv")]) == 0
    captured = capsys.readouterr()
    assert "bleu" not in captured.out and captured.out.splitlines()[-1].startswith("exact_match: ")
    assert captured.err.count("sacrebleu is not installed") == 1
    # --best-by bleu then fails before anything is written.
    code = cli.main(
        ["train", "--task", "reverse", "--best-by", "bleu", "--out", str(char_run / "bleu-run"), *TINY_FLAGS]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--best-by bleu" in err and "functional-transformer[text]" in err
    assert not (char_run / "bleu-run" / checkpoint.CHECKPOINT_NAME).exists()


@slow_on_jax
@pytest.mark.parametrize("best_by", ["loss", "char_accuracy", pytest.param("chrf", marks=needs_sacrebleu)])
def test_best_by_keeps_the_step_with_the_best_value_of_that_metric(best_by, tmp_path):
    pairs = sentence_pairs(120, 0), sentence_pairs(10, 1)
    result = ft.fit(
        TINY,
        ft.TrainConfig(steps=40, batch_size=16, eval_every=5, best_by=best_by, learning_rate=1e-2),
        pairs,
        out_dir=tmp_path / "run",
        progress=False,
        verbose=False,
    )
    valid = [r for r in result.history if r["split"] == "valid"]
    values = [r[best_by] for r in valid]
    best = int(np.argmin(values) if best_by == "loss" else np.argmax(values))  # the first of equal bests
    assert result.best_step == valid[best]["step"] and result.best_value == values[best]
    assert result.best_exact_match == valid[best]["exact_match"]
    assert ft.load(tmp_path / "run", "best").step == valid[best]["step"]
    assert len(set(values)) > 1, "every evaluation scored the same: the test could not tell steps apart"


@slow_on_jax
def test_patience_counts_evaluations_without_a_better_best_by(tmp_path):
    pairs = sentence_pairs(120, 0), sentence_pairs(10, 1)
    # The loss falls at every early evaluation while exact match stays at 0: patience 2 by exact match
    # stops after the third evaluation, by loss it does not.
    common = dict(steps=30, batch_size=16, eval_every=5, patience=2, learning_rate=3e-3)
    by_exact = ft.fit(TINY, ft.TrainConfig(**common), pairs, progress=False, verbose=False)
    by_loss = ft.fit(TINY, ft.TrainConfig(**common, best_by="loss"), pairs, progress=False, verbose=False)
    assert by_exact.stopped == "patience" and by_exact.step == 15
    assert by_loss.step > 15


def test_an_unknown_best_by_is_a_clear_error():
    with pytest.raises(ValueError, match="best_by must be one of"):
        ft.TrainConfig(best_by="acuracy")
    # a classifier's metric, which the encoder-decoder does not measure
    with pytest.raises(ValueError, match="best_by='accuracy' is not a held-out metric of the encoder_decoder model"):
        ft.fit(TINY, ft.TrainConfig(steps=2, best_by="accuracy"), "reverse", progress=False, verbose=False)


# ---------------------------------------------------------------------------------------------
# Files in and out


def test_predict_reads_a_file_or_stdin_and_writes_lines_in_order(char_run, tmp_path, capsys, monkeypatch):
    sources = [s for s, _ in sentence_pairs(9, 6)]  # lengths vary: predict decodes them sorted by length
    run = str(char_run / "run")
    assert cli.main(["predict", "--checkpoint", run, *sources]) == 0
    expected = capsys.readouterr().out.splitlines()
    assert expected == [ft.predict(ft.load(run), [s])[0] for s in sources]  # one at a time: the same outputs

    (tmp_path / "in.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    assert cli.main(["predict", "--checkpoint", run, "--input", str(tmp_path / "in.txt"), "--batch-size", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == expected

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\r\n".join(sources).encode("utf-8"))))
    assert cli.main(["predict", "--checkpoint", run, "--input", "-", "--output", str(tmp_path / "out.txt")]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "".join(line + "\n" for line in expected)


def test_eval_output_holds_the_hypotheses_it_graded(char_run, tmp_path, capsys):
    run = str(char_run / "run")
    assert (
        cli.main(
            ["eval", "--checkpoint", run, "--data", str(char_run / "test.tsv"), "--output", str(tmp_path / "hyps.txt")]
        )
        == 0
    )
    exact_match = float(capsys.readouterr().out.splitlines()[-1].split(": ")[1])
    pairs = ft.data.read_tsv(char_run / "test.tsv")
    # Evaluation decodes at most len(bos + longest target + eos) steps (inference.evaluate).
    expected = ft.predict(ft.load(run), [s for s, _ in pairs], max_steps=max(len(t) for _, t in pairs) + 2)
    hypotheses = (tmp_path / "hyps.txt").read_text(encoding="utf-8").split("\n")
    assert hypotheses == [*expected, ""]
    assert exact_match == np.mean([h == t for h, (_, t) in zip(expected, pairs)])


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "un deux\n" + "un deux trois " * 10 + "\nsix\n",
            r"in\.txt: line 2 has \d+ tokens, more than this model's max_len=\d+ "
            r"\(inputs are never cut",
        ),
        ("", r"in\.txt is empty: give one source per line"),
        ("un\n\ndeux\n", r"in\.txt: line 2 is empty"),
    ],
    ids=["over-long line", "empty file", "blank line"],
)
def test_bad_input_files_are_one_line_errors_naming_the_line(char_run, tmp_path, capsys, content, message):
    (tmp_path / "in.txt").write_text(content, encoding="utf-8")
    code = cli.main(["predict", "--checkpoint", str(char_run / "run"), "--input", str(tmp_path / "in.txt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("ft predict: error: ") and __import__("re").search(message, err), err


def test_predict_needs_sources_from_one_place(char_run, tmp_path, capsys):
    for argv in (
        ["predict", "--checkpoint", str(char_run / "run")],
        ["predict", "--checkpoint", str(char_run / "run"), "un", "--input", "-"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "--input FILE" in capsys.readouterr().err


def test_check_sources_lists_each_bad_source_by_number():
    tokenizer = CharTokenizer.from_texts(["abc"])
    with pytest.raises(
        DataError, match=r"^source 2 is empty .*; source 3 has 5 tokens, more than this model's max_len=4"
    ):
        inference.check_sources(["ab", "", "abcab"], tokenizer, 4)
    inference.check_sources(["abca"], tokenizer, 4)
