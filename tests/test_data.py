"""Tests of functional_transformer.data: tokenizer, character tasks, TSV files, batching."""

import itertools
import json
import string
from types import SimpleNamespace

import numpy as np
import pytest

from functional_transformer.data import (
    PAD_ID,
    TASKS,
    CharTokenizer,
    DataError,
    EncodedPair,
    TokenizerPair,
    batch_indices,
    batch_iterator,
    encode_pairs,
    iterate_batches,
    make_batch,
    make_task_data,
    process_batch,
    read_tsv,
    special_id,
    task_alphabet,
    tokenizer_from_json,
    write_tsv,
)
from functional_transformer.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_special_ids_and_sorted_characters():
    tok = CharTokenizer.from_texts(["cab", "b"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.chars == ("a", "b", "c")
    assert tok.vocab_size == 7
    assert tok.encode("abc") == [4, 5, 6]
    assert tok.encode("") == []


def test_tokenizer_round_trip():
    text = "the quick brown fox"
    tok = CharTokenizer.from_texts([text])
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(4 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.int32)) == text  # arrays from a model work too


def test_tokenizer_unknown_character_is_unk():
    tok = CharTokenizer.from_texts(["ab"])
    assert tok.encode("aXb") == [4, tok.unk_id, 5]
    assert tok.decode(tok.encode("aXb")) == "a\N{REPLACEMENT CHARACTER}b"


def test_tokenizer_unknown_symbols_are_what_encode_maps_to_unk():
    tok = CharTokenizer.from_texts(["abc"])
    texts = ["Apple!", "cab", "", "zz!"]
    assert tok.unknown_symbols(texts) == ["!", "A", "e", "l", "p", "z"]
    assert tok.unknown_symbols("cab") == [] and tok.unknown_symbols("dab") == ["d"]  # a lone string is one text
    assert tok.unknown_symbols(t for t in ("a", "bX")) == ["X"]  # any iterable of texts
    for text in texts:
        assert {c for c, i in zip(text, tok.encode(text)) if i == tok.unk_id} == set(tok.unknown_symbols([text]))


@pytest.mark.parametrize(
    "texts, want",
    [
        ([string.ascii_lowercase], "a-z"),
        (["0123456789+"], "+, 0-9"),
        (["abXYZ"], "X-Z, a, b"),
        (["a b,c-d'e\t"], "'\\t', ' ', \"'\", ',', '-', a-e"),
        ([""], "no characters"),
    ],
)
def test_tokenizer_describe(texts, want):
    assert CharTokenizer.from_texts(texts).describe() == want


def test_tokenizer_describe_shortens_a_long_vocabulary():
    tok = CharTokenizer.from_texts(["".join(chr(0x4E00 + 2 * i) for i in range(100))])
    assert tok.describe(limit=3) == "\u4e00, \u4e02, \u4e04, ... (100 characters in all)"


def test_tokenizer_decode_stops_at_eos_and_skips_pad_and_bos():
    tok = CharTokenizer.from_texts(["ab"])
    a, b = tok.encode("ab")
    assert tok.decode([tok.bos_id, a, tok.pad_id, b, tok.eos_id, a, a]) == "ab"
    assert tok.decode([tok.eos_id, a]) == ""
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_tokenizer_equality_ignores_text_order():
    first = CharTokenizer.from_texts(["hello", "world"])
    second = CharTokenizer.from_texts(["dlrow", "olleh"])
    assert first == second and hash(first) == hash(second)
    assert first != CharTokenizer.from_texts(["hello"])
    assert CharTokenizer.from_texts("cab") == CharTokenizer.from_texts(["cab"])  # a lone string is one text


def test_tokenizer_json_round_trip():
    tok = CharTokenizer.from_texts(["héllo wörld\t+", "0123"])
    restored = CharTokenizer.from_json(tok.to_json())
    assert restored == tok
    assert restored.encode("wörld") == tok.encode("wörld")
    assert CharTokenizer.from_json(CharTokenizer.from_texts(["xy"]).to_json()) != tok


BAD_TOKENIZER_JSON = [
    "not json",
    '{"kind": "bpe", "version": 1, "chars": []}',
    '{"kind": "char", "version": 2, "chars": []}',
    '{"kind": "char", "version": 1, "chars": ["b", "a"]}',
]


@pytest.mark.parametrize("bad", BAD_TOKENIZER_JSON)
def test_tokenizer_from_json_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        CharTokenizer.from_json(bad)


def test_tokenizer_pair_json_with_a_pair_as_a_side_is_refused():
    """Guards tokenizer_from_json's check that each side of a pair is one vocabulary: a pair nested
    in a pair has no encode, so it would fail later, far from the file that held it."""
    side = CharTokenizer.from_texts(["ab"])
    nested = TokenizerPair(side, side).to_json()
    text = json.dumps({"kind": "pair", "version": 1, "source": nested, "target": side.to_json()})
    with pytest.raises(ValueError, match="holds a pair as its source"):
        tokenizer_from_json(text)
    assert tokenizer_from_json(TokenizerPair(side, side).to_json()) == TokenizerPair(side, side)


def test_special_id_names_a_missing_special_token():
    """Guards special_id: the id where the tokenizer has it, a ConfigError naming it where it is None
    (a Hugging Face model's tokenizer may lack pad), never None passed on as an id."""
    tokenizer = CharTokenizer.from_texts(["ab"])
    assert [special_id(tokenizer, name) for name in ("pad_id", "bos_id", "eos_id")] == [PAD_ID, 1, 2]
    without_pad = SimpleNamespace(pad_id=None, bos_id=1, eos_id=2)
    with pytest.raises(ConfigError, match="no pad token"):
        special_id(without_pad, "pad_id")


# ---------------------------------------------------------------------------------------------
# Tasks


def _shift(c):
    return chr((ord(c) - ord("a") + 1) % 26 + ord("a"))


TARGET_CHECKS = {
    "identity": lambda s, t: t == s,
    "reverse": lambda s, t: t == "".join(s[i] for i in range(len(s) - 1, -1, -1)),
    "sort": lambda s, t: sorted(t) == sorted(s) and all(x <= y for x, y in zip(t, t[1:])),
    "copy-shift": lambda s, t: t == "".join(_shift(c) for c in s),
    "addition": lambda s, t: int(t) == sum(int(operand) for operand in s.split("+")),
}


def test_every_task_is_checked():
    assert set(TASKS) == set(TARGET_CHECKS)


def test_task_examples_from_the_docs():
    assert TASKS["identity"].target("apple") == "apple"
    assert TASKS["reverse"].target("apple") == "elppa"
    assert TASKS["sort"].target("apple") == "aelpp"
    assert TASKS["copy-shift"].target("apple") == "bqqmf"
    assert TASKS["copy-shift"].target("xyz") == "yza"
    assert TASKS["addition"].target("12+345") == "357"
    assert TASKS["addition"].target("99+1") == "100"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_pairs_are_correct_and_within_lengths(task):
    min_len, max_len = 2, 5
    train, valid = make_task_data(task, n_train=400, n_valid=50, min_len=min_len, max_len=max_len, seed=0)
    assert len(train) == 400 and len(valid) == 50
    allowed = set(task_alphabet(task))
    lengths = set()
    for source, target in train + valid:
        assert TARGET_CHECKS[task](source, target), (source, target)
        assert set(source) | set(target) <= allowed
        if task == "addition":
            operands = source.split("+")
            assert len(operands) == 2
            for operand in operands:
                assert operand.isdigit() and operand[0] != "0"  # min_len 2: no leading zero
                lengths.add(len(operand))
        else:
            assert set(source) <= set(string.ascii_lowercase)
            lengths.add(len(source))
    assert lengths == set(range(min_len, max_len + 1))  # every length in range occurs, none outside


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_data_is_deterministic_per_seed(task):
    args = dict(n_train=50, n_valid=20, min_len=1, max_len=6)
    first = make_task_data(task, seed=3, **args)
    assert make_task_data(task, seed=3, **args) == first
    assert make_task_data(task, seed=4, **args) != first


@pytest.mark.parametrize("task", sorted(TASKS))
def test_validation_sources_are_distinct_and_never_in_training(task):
    # Two-character (or one-digit) sources: few enough that collisions would surely happen.
    alphabet = None if task == "addition" else "abc"
    length = 1 if task == "addition" else 2
    train, valid = make_task_data(task, 500, 4, length, length, seed=0, alphabet=alphabet)
    valid_sources = [s for s, _ in valid]
    assert len(set(valid_sources)) == len(valid_sources) == 4
    assert not set(valid_sources) & {s for s, _ in train}
    assert len(train) == 500


def test_custom_alphabet_and_task_alphabet():
    train, valid = make_task_data("copy-shift", 100, 10, 1, 4, seed=0, alphabet="xyz")
    assert {c for s, _ in train + valid for c in s} == set("xyz")
    assert set(task_alphabet("copy-shift", "xyz")) == set("xyza")  # z shifts to a
    assert task_alphabet("addition") == "+0123456789"
    assert task_alphabet("reverse") == string.ascii_lowercase


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError) as info:
        make_task_data("palindrome", 1, 1, 1, 2, seed=0)
    for name in TASKS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="reverse"):
        task_alphabet("palindrome")


def test_too_few_sources_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="distinct sources"):
        make_task_data("reverse", 10, 3, 1, 1, seed=0, alphabet="abc")  # 3 sources, all held out
    with pytest.raises(ValueError, match="min_len"):
        make_task_data("reverse", 10, 3, 4, 2, seed=0)


# ---------------------------------------------------------------------------------------------
# TSV files


def test_read_tsv_good_file(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_bytes("abc\tcba\n\n  \nhello world\t dlrow\r\nü\t1+1\n".encode())
    assert read_tsv(path) == [("abc", "cba"), ("hello world", " dlrow"), ("ü", "1+1")]


def test_read_tsv_reports_every_bad_line(tmp_path):
    path = tmp_path / "bad.tsv"
    lines = ["good\tline", "no tab here", "", "a\tb\tc", "ok\tfine", "\tmissing source", "missing target\t"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_tsv(path)
    message = str(info.value)
    assert "bad.tsv" in message
    assert "line 2: no tab" in message
    assert "line 4: 2 tabs" in message
    assert "line 6: empty source" in message
    assert "line 7: empty target" in message
    assert "line 1:" not in message and "line 5:" not in message
    assert isinstance(info.value, ValueError)


def test_read_tsv_caps_the_report(tmp_path):
    path = tmp_path / "many.tsv"
    path.write_text("".join(f"bad{i}\n" for i in range(25)), encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_tsv(path)
    message = str(info.value)
    assert "line 10:" in message and "line 11:" not in message
    assert "15 more" in message


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_read_tsv_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="empty.tsv"):
        read_tsv(path)


def test_read_tsv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.tsv"):
        read_tsv(tmp_path / "nowhere.tsv")


def test_read_tsv_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"a\tb\nc\xe9\td\n")
    with pytest.raises(DataError, match="line 2"):
        read_tsv(path)


def test_write_tsv_round_trip(tmp_path):
    pairs = make_task_data("addition", 30, 0, 1, 3, seed=1)[0] + [(" spaced ", "x")]
    path = tmp_path / "out.tsv"
    write_tsv(path, pairs)
    assert read_tsv(path) == pairs
    with pytest.raises(DataError):
        write_tsv(path, [("a\tb", "c")])


# ---------------------------------------------------------------------------------------------
# Encoding and batches


@pytest.fixture
def tokenizer():
    return CharTokenizer.from_texts([string.ascii_lowercase])


def test_encode_pairs_adds_bos_and_eos_to_targets_only(tokenizer):
    [example] = encode_pairs([("abc", "xy")], tokenizer, max_len=10)
    assert example.src == tuple(tokenizer.encode("abc"))
    assert example.tgt == (tokenizer.bos_id, *tokenizer.encode("xy"), tokenizer.eos_id)


def test_encode_pairs_length_limit(tokenizer):
    # At the limit: a 4-token source and a 3-token target (decoder sequence of 4) are fine.
    assert len(encode_pairs([("abcd", "abc")], tokenizer, max_len=4)) == 1
    with pytest.raises(ValueError, match=r"example 1 \(source 'abcde'.*source has 5 tokens"):
        encode_pairs([("ab", "ab"), ("abcde", "a")], tokenizer, max_len=4)
    with pytest.raises(ValueError, match=r"example 0 .*target has 4 tokens"):
        encode_pairs([("ab", "abcd")], tokenizer, max_len=4)
    with pytest.raises(ValueError, match="empty source"):
        encode_pairs([("", "a")], tokenizer, max_len=4)


def test_make_batch_shapes_padding_and_shift(tokenizer):
    pairs = [("abc", "x"), ("a", "wxyz"), ("abcdef", "")]
    examples = encode_pairs(pairs, tokenizer, max_len=8)
    batch = make_batch(examples, tokenizer.pad_id)
    assert set(batch) == {"src", "tgt_in", "tgt_out"}
    assert batch["src"].shape == (3, 6)
    assert batch["tgt_in"].shape == batch["tgt_out"].shape == (3, 5)
    assert all(a.dtype == np.int32 for a in batch.values())
    for row, (source, target) in enumerate(pairs):
        ids = tokenizer.encode(target)
        n = len(ids) + 1
        assert batch["src"][row].tolist() == tokenizer.encode(source) + [0] * (6 - len(source))
        assert batch["tgt_in"][row].tolist() == [tokenizer.bos_id] + ids + [0] * (5 - n)
        assert batch["tgt_out"][row].tolist() == ids + [tokenizer.eos_id] + [0] * (5 - n)
        assert tokenizer.decode(batch["tgt_out"][row]) == target
    # Teacher forcing: the decoder's next input is the token it was just trained to predict.
    tokens = batch["tgt_in"][:, 1:] != tokenizer.pad_id
    np.testing.assert_array_equal(batch["tgt_in"][:, 1:][tokens], batch["tgt_out"][:, :-1][tokens])
    assert ((batch["tgt_in"] != 0) == (batch["tgt_out"] != 0)).all()  # same number of tokens per row


def test_make_batch_pad_to_multiple(tokenizer):
    examples = encode_pairs([("abc", "x"), ("abcdefghij", "xyz")], tokenizer, max_len=16)
    plain = make_batch(examples, 0)
    padded = make_batch(examples, 0, pad_to_multiple=8)
    assert padded["src"].shape == (2, 16) and padded["tgt_in"].shape == (2, 8)
    for name, array in plain.items():
        np.testing.assert_array_equal(padded[name][:, : array.shape[1]], array)
        assert (padded[name][:, array.shape[1] :] == 0).all()
    assert make_batch(examples, 0, pad_to_multiple=4)["src"].shape == (2, 12)


def _indexed_examples(n):
    # Example i's source is the single id i + 4, so a batch tells which examples it holds.
    return [EncodedPair((i + 4,), (1, 2)) for i in range(n)]


def _example_ids(batch):
    return (batch["src"][:, 0] - 4).tolist()


def test_batch_iterator_is_deterministic_and_seed_dependent():
    examples = _indexed_examples(10)
    first = [_example_ids(b) for b in itertools.islice(batch_iterator(examples, 4, seed=0), 8)]
    again = [_example_ids(b) for b in itertools.islice(batch_iterator(examples, 4, seed=0), 8)]
    other = [_example_ids(b) for b in itertools.islice(batch_iterator(examples, 4, seed=1), 8)]
    assert first == again
    assert first != other
    assert all(len(ids) == 4 for ids in first)


def test_batch_iterator_covers_each_epoch_once_and_reshuffles():
    examples = _indexed_examples(10)
    stream = [i for b in itertools.islice(batch_iterator(examples, 4, seed=0), 10) for i in _example_ids(b)]
    epochs = [stream[k : k + 10] for k in range(0, 40, 10)]  # batches of 4 straddle epochs of 10
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert len({tuple(e) for e in epochs}) > 1


def test_batch_iterator_resumes_at_any_step():
    examples = _indexed_examples(7)
    fresh = list(itertools.islice(batch_iterator(examples, 3, seed=5), 12))
    for k in (0, 1, 2, 5, 11):
        resumed = next(batch_iterator(examples, 3, seed=5, start_step=k))
        for name in fresh[k]:
            np.testing.assert_array_equal(resumed[name], fresh[k][name])
        assert _example_ids(fresh[k]) == batch_indices(7, 3, 5, k).tolist()


def test_batch_iterator_batch_larger_than_dataset():
    examples = _indexed_examples(3)
    ids = [_example_ids(b) for b in itertools.islice(batch_iterator(examples, 7, seed=0), 3)]
    stream = [i for batch in ids for i in batch]
    for start in range(0, 21, 3):
        assert sorted(stream[start : start + 3]) == [0, 1, 2]


def test_batch_iterator_skips_ahead_without_building_skipped_batches():
    examples = _indexed_examples(5)
    far = 10**12  # building that many batches would never finish
    batch = next(batch_iterator(examples, 2, seed=0, start_step=far))
    assert _example_ids(batch) == batch_indices(5, 2, 0, far).tolist()


@pytest.mark.parametrize("pad_to_multiple", [1, 8])
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(process_count, pad_to_multiple):
    # Examples of varied lengths, so that a slice's own longest row is often shorter than the global one.
    rng = np.random.default_rng(0)
    examples = [
        EncodedPair(tuple(range(4, 5 + int(rng.integers(0, 9)))), (1, *[5] * int(rng.integers(0, 11)), 2))
        for _ in range(13)
    ]
    for step in (0, 1, 3, 7):
        whole = next(batch_iterator(examples, 8, seed=3, start_step=step, pad_to_multiple=pad_to_multiple))
        slices = [
            process_batch(examples, 8, 3, step, rank, process_count, pad_to_multiple=pad_to_multiple)
            for rank in range(process_count)
        ]
        for name in whole:
            assert {s[name].shape for s in slices} == {(8 // process_count, whole[name].shape[1])}
            np.testing.assert_array_equal(np.concatenate([s[name] for s in slices]), whole[name])
        # The iterator gives the same slices, and one process gets the whole batch.
        for rank in range(process_count):
            mine = next(
                batch_iterator(
                    examples,
                    8,
                    seed=3,
                    start_step=step,
                    pad_to_multiple=pad_to_multiple,
                    process_index=rank,
                    process_count=process_count,
                )
            )
            for name in whole:
                np.testing.assert_array_equal(mine[name], slices[rank][name])
        for name in whole:
            np.testing.assert_array_equal(
                process_batch(examples, 8, 3, step, pad_to_multiple=pad_to_multiple)[name], whole[name]
            )


def test_process_batch_rejects_uneven_splits_and_bad_ranks():
    examples = _indexed_examples(5)
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        process_batch(examples, 4, 0, 0, 0, 3)
    with pytest.raises(ValueError, match="process_index"):
        process_batch(examples, 4, 0, 0, 2, 2)


def test_iterate_batches_is_one_ordered_pass():
    examples = _indexed_examples(10)
    batches = list(iterate_batches(examples, 4))
    assert [_example_ids(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_iterate_batches_fill_last_adds_rows_without_targets():
    examples = _indexed_examples(10)
    batches = list(iterate_batches(examples, 4, fill_last=True))
    assert [_example_ids(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 8, 8]]
    last = batches[-1]
    assert (last["tgt_out"][2:] == PAD_ID).all()  # the fill rows: nothing to score
    assert (last["tgt_out"][:2] == 2).any() and (last["tgt_in"][2:] == last["tgt_in"][0]).all()
    assert (batches[0]["tgt_out"] != PAD_ID).any(axis=1).all()
    # One batch in all: nothing to fill, so a short list is not padded up to batch_size.
    assert [_example_ids(b) for b in iterate_batches(examples[:3], 4, fill_last=True)] == [[0, 1, 2]]
