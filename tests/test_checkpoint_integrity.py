"""Checksummed checkpoints: every kind of damage to a real model checkpoint is refused with a clear
CheckpointError, never loaded silently; files without checksums still load, with a warning; a save
that fails half-way leaves the previous checkpoint as it was.

The checkpoint is a tiny model's params, Adam state and step, written with `save_tree` on the
FT_BACKEND backend (so the suite run on each backend covers both)."""

import errno
import json
import os
import struct

import numpy as np
import pytest
from disk_faults import disk_full_after

from backends import tree_flatten
from functional_transformer import api, optim
from functional_transformer import checkpoint_format as cf
from functional_transformer.checkpoint_format import (
    CheckpointError,
    CheckpointWriteError,
    UncheckedCheckpointWarning,
    load_tree,
    save_tree,
)
from functional_transformer.config import TransformerConfig
from functional_transformer.data import CharTokenizer

DAMAGED = "the file is damaged or was edited"


@pytest.fixture(scope="module")
def model_trees():
    from functional_transformer.backend_choice import default_backend

    backend = default_backend()
    tokenizer = CharTokenizer.from_texts(["abcdefghij"])
    cfg = TransformerConfig(
        src_vocab_size=tokenizer.vocab_size,
        tgt_vocab_size=tokenizer.vocab_size,
        d_model=8,
        n_heads=2,
        d_ff=16,
        n_encoder_layers=1,
        n_decoder_layers=1,
        max_len=8,
    )
    params = api.init(backend.random.key(0), cfg)
    opt_state = optim.adam(1e-3).init(params)
    trees = {
        "params": backend.tree_to_numpy(params),
        "opt_state": backend.tree_to_numpy(opt_state),
        "train": {"step": np.array(7, dtype=np.int32), "key": np.array([1, 2], dtype=np.uint32)},
    }
    metadata = {"model_config": json.dumps(cfg.to_dict()), "vocabulary": tokenizer.to_json()}
    return trees, metadata


@pytest.fixture
def saved(tmp_path, model_trees):
    trees, metadata = model_trees
    path = tmp_path / "checkpoint.safetensors"
    save_tree(path, trees, metadata)
    return path, path.read_bytes()


def split(raw):
    """(header dict, data bytes) of a file's bytes."""
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def join(header, data):
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def tensor_entries(header):
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def flipped(raw, index, mask):
    return raw[:index] + bytes([raw[index] ^ mask]) + raw[index + 1 :]


def refused(path, contents):
    path.write_bytes(contents)
    with pytest.raises(CheckpointError) as info:
        load_tree(path)
    assert str(path) in str(info.value)
    return str(info.value)


def assert_same_trees(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        g, w = tree_flatten(got[name]), tree_flatten(want[name])
        assert sorted(g) == sorted(w), name
        for leaf in w:
            assert g[leaf].dtype == w[leaf].dtype and g[leaf].shape == w[leaf].shape, (name, leaf)
            np.testing.assert_array_equal(g[leaf], w[leaf], err_msg=f"{name}.{leaf}")


def test_the_checkpoint_loads_as_saved_without_a_warning(saved, model_trees, recwarn):
    path, _ = saved
    trees, metadata = load_tree(path)
    assert_same_trees(trees, model_trees[0])
    assert metadata == model_trees[1]  # the checksum entries are checked, then left out
    assert not [w for w in recwarn if issubclass(w.category, UncheckedCheckpointWarning)]


# --- one flipped byte anywhere --------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_a_flipped_byte_in_the_size_prefix_is_refused(saved, tmp_path, mask):
    _, raw = saved
    for index in range(8):
        message = refused(tmp_path / "bad.safetensors", flipped(raw, index, mask))
        assert any(word in message for word in ("truncated", "not valid JSON", "header size", "not a safetensors")), (
            index,
            message,
        )


def header_flips_all_refused(path, raw, indices, masks):
    bad = path.parent / "bad.safetensors"
    for index in indices:
        for mask in masks:
            bad.write_bytes(flipped(raw, index, mask))
            with pytest.raises(CheckpointError):
                load_tree(bad)


def test_a_flipped_byte_anywhere_in_a_small_header_is_refused(tmp_path):
    """Every byte of a whole JSON header, two ways: names, dtypes, shapes, offsets, metadata, the
    checksums themselves and the padding."""
    path = tmp_path / "small.safetensors"
    tokenizer = CharTokenizer.from_texts(["abc"])
    save_tree(
        path,
        {"params": {"w": np.ones((2, 3), np.float32), "b": np.zeros(3)}, "step": np.array(3)},
        {"vocabulary": tokenizer.to_json(), "model_config": json.dumps({"d_model": 8})},
    )
    raw = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    header_flips_all_refused(path, raw, range(8, header_end), [0x01, 0x20])


def test_a_flipped_byte_in_the_header_of_a_model_checkpoint_is_refused(saved):
    """The model checkpoint's header is some 30 kB: every 61st byte of it, and every byte of the
    names of the metadata and the checksum entries (a flip there must not make the file look like
    one without checksums)."""
    path, raw = saved
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    indices = set(range(8, header_end, 61))
    for name in ("__metadata__", cf.CHECKSUMS_KEY, cf.HEADER_CHECKSUM_KEY):
        key = f'"{name}"'.encode()
        start = raw.index(key)
        assert start < header_end
        indices |= set(range(start, start + len(key)))
    header_flips_all_refused(path, raw, sorted(indices), [0x01, 0x20])


def test_a_metadata_flip_is_caught_by_the_header_checksum(saved, tmp_path):
    _, raw = saved
    key = b'\\"chars\\": [\\"'  # the vocabulary, JSON inside a JSON string
    index = raw.index(key) + len(key)
    assert raw[index : index + 1] == b"a"
    message = refused(tmp_path / "bad.safetensors", flipped(raw, index, 0x02))  # 'a' -> 'c'
    assert "header" in message and "does not match its SHA-256 checksum" in message and DAMAGED in message


def test_a_flipped_byte_in_every_tensor_is_refused_naming_the_tensor(saved, tmp_path):
    _, raw = saved
    header, data = split(raw)
    data_start = len(raw) - len(data)
    entries = tensor_entries(header)
    assert len(entries) > 30  # params, both Adam moments, the count, the step and the key
    for name, entry in entries.items():
        begin, end = entry["data_offsets"]
        assert end > begin, name
        for index in sorted({begin, (begin + end) // 2, end - 1}):
            message = refused(tmp_path / "bad.safetensors", flipped(raw, data_start + index, 0x01))
            assert f"tensor {name!r} does not match its SHA-256 checksum" in message, message
            assert DAMAGED in message


def test_truncated_files_are_refused(saved, tmp_path):
    _, raw = saved
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    for cut in (
        0,
        5,
        8,
        9,
        header_end // 2,
        header_end - 1,
        header_end,
        header_end + 1,
        (header_end + len(raw)) // 2,
        len(raw) - 1,
    ):
        message = refused(tmp_path / "cut.safetensors", raw[:cut])
        assert "truncated" in message or "empty" in message or "bytes long" in message, (cut, message)


# --- headers that lie, tensors added or removed ----------------------------------------------------


def edited(raw, edit):
    header, data = split(raw)
    data = edit(header, data)
    return join(header, data)


def a_matrix(header, dtype="F32"):
    return next(
        name
        for name, e in tensor_entries(header).items()
        if e["dtype"] == dtype and len(e["shape"]) == 2 and e["shape"][0] != e["shape"][1]
    )


def test_a_header_that_lies_about_a_dtype_of_the_same_size_is_refused(saved, tmp_path):
    def edit(header, data):
        header[a_matrix(header)]["dtype"] = "I32"  # same bytes, read as integers
        return data

    message = refused(tmp_path / "bad.safetensors", edited(saved[1], edit))
    assert "header" in message and "does not match its SHA-256 checksum" in message and DAMAGED in message


def test_a_header_that_lies_about_a_shape_of_the_same_size_is_refused(saved, tmp_path):
    def edit(header, data):
        entry = header[a_matrix(header)]
        entry["shape"] = entry["shape"][::-1]  # (a, b) -> (b, a): the same bytes, transposed meaning
        return data

    message = refused(tmp_path / "bad.safetensors", edited(saved[1], edit))
    assert "does not match its SHA-256 checksum" in message and DAMAGED in message


def test_a_header_that_lies_about_a_size_is_refused(saved, tmp_path):
    def edit(header, data):
        entry = header[a_matrix(header)]
        entry["shape"] = [entry["shape"][0] + 1, entry["shape"][1]]
        return data

    assert "bytes but its data_offsets" in refused(tmp_path / "bad.safetensors", edited(saved[1], edit))


def test_a_header_that_lies_about_a_dtype_size_is_refused(saved, tmp_path):
    def edit(header, data):
        header[a_matrix(header)]["dtype"] = "F64"
        return data

    assert "bytes but its data_offsets" in refused(tmp_path / "bad.safetensors", edited(saved[1], edit))


def test_swapped_tensors_are_refused(saved, tmp_path):
    def edit(header, data):
        entries = tensor_entries(header)
        name = a_matrix(header)
        other = next(
            n
            for n, e in entries.items()
            if n != name and e["shape"] == entries[name]["shape"] and e["dtype"] == entries[name]["dtype"]
        )
        entries[name]["data_offsets"], entries[other]["data_offsets"] = (
            entries[other]["data_offsets"],
            entries[name]["data_offsets"],
        )
        return data

    assert "does not match its SHA-256 checksum" in refused(tmp_path / "bad.safetensors", edited(saved[1], edit))


def test_an_extra_tensor_is_refused(saved, tmp_path):
    def edit(header, data):
        header["params.extra"] = {"dtype": "F32", "shape": [2], "data_offsets": [len(data), len(data) + 8]}
        return data + np.ones(2, np.float32).tobytes()

    message = refused(tmp_path / "bad.safetensors", edited(saved[1], edit))
    assert "['params.extra'] have no checksum" in message and "a tensor was added" in message and DAMAGED in message


@pytest.mark.parametrize("which", ["first", "last"])
def test_a_missing_tensor_is_refused(saved, tmp_path, which):
    removed = []

    def edit(header, data):
        entries = tensor_entries(header)
        order = sorted(entries, key=lambda n: entries[n]["data_offsets"])
        name = order[0] if which == "first" else order[-1]
        begin, end = header.pop(name)["data_offsets"]
        for entry in tensor_entries(header).values():  # close the gap, as a rewriting tool would
            if entry["data_offsets"][0] >= end:
                entry["data_offsets"] = [o - (end - begin) for o in entry["data_offsets"]]
        removed.append(name)
        return data[:begin] + data[end:]

    message = refused(tmp_path / "bad.safetensors", edited(saved[1], edit))
    assert f"the checksums name tensors [{removed[0]!r}] that the file does not hold" in message
    assert "a tensor was removed" in message and DAMAGED in message


def test_a_checksum_for_a_tensor_that_is_not_there_is_refused(saved, tmp_path):
    def edit(header, data):
        metadata = header["__metadata__"]
        digests = json.loads(metadata[cf.CHECKSUMS_KEY])
        digests["params.ghost"] = "0" * 64
        metadata[cf.CHECKSUMS_KEY] = json.dumps(digests)
        return data

    assert "['params.ghost'] that the file does not hold" in refused(
        tmp_path / "bad.safetensors", edited(saved[1], edit)
    )


def test_a_tensor_without_a_checksum_is_refused(saved, tmp_path):
    dropped = []

    def edit(header, data):
        metadata = header["__metadata__"]
        digests = json.loads(metadata[cf.CHECKSUMS_KEY])
        dropped.append(sorted(digests)[3])
        del digests[dropped[0]]
        metadata[cf.CHECKSUMS_KEY] = json.dumps(digests)
        return data

    message = refused(tmp_path / "bad.safetensors", edited(saved[1], edit))
    assert f"[{dropped[0]!r}] have no checksum" in message


def test_changed_data_with_its_checksum_updated_is_caught_by_the_header_checksum(saved, tmp_path):
    """An edit that recomputes the tensor's checksum but not the header's is still refused."""
    import hashlib

    def edit(header, data):
        name = a_matrix(header)
        begin, end = header[name]["data_offsets"]
        data = data[:begin] + b"\0" * (end - begin) + data[end:]
        metadata = header["__metadata__"]
        digests = json.loads(metadata[cf.CHECKSUMS_KEY])
        digests[name] = hashlib.sha256(b"\0" * (end - begin)).hexdigest()
        metadata[cf.CHECKSUMS_KEY] = json.dumps(digests)
        return data

    message = refused(tmp_path / "bad.safetensors", edited(saved[1], edit))
    assert "header" in message and "does not match its SHA-256 checksum" in message


@pytest.mark.parametrize("kept", [cf.CHECKSUMS_KEY, cf.HEADER_CHECKSUM_KEY])
def test_one_checksum_entry_without_the_other_is_refused(saved, tmp_path, kept):
    def edit(header, data):
        (gone,) = {cf.CHECKSUMS_KEY, cf.HEADER_CHECKSUM_KEY} - {kept}
        del header["__metadata__"][gone]
        return data

    message = refused(tmp_path / "bad.safetensors", edited(saved[1], edit))
    assert f"has the checksum entry {kept!r} but not" in message and DAMAGED in message


@pytest.mark.parametrize("value", ["not json", "[]", '{"params.x": 3}', '{"params.x": "abc"}'])
def test_an_unreadable_checksum_entry_is_refused(saved, tmp_path, value):
    def edit(header, data):
        header["__metadata__"][cf.CHECKSUMS_KEY] = value
        return data

    assert "is not a JSON object of SHA-256 digests" in refused(tmp_path / "bad.safetensors", edited(saved[1], edit))


# --- files without checksums ------------------------------------------------------------------------


def test_a_file_without_checksums_loads_with_a_warning(saved, model_trees, tmp_path):
    def edit(header, data):
        del header["__metadata__"][cf.CHECKSUMS_KEY]
        del header["__metadata__"][cf.HEADER_CHECKSUM_KEY]
        return data

    old = tmp_path / "old.safetensors"
    old.write_bytes(edited(saved[1], edit))
    with pytest.warns(UncheckedCheckpointWarning, match=f"{old} carries no checksums") as record:
        trees, metadata = load_tree(old)
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert_same_trees(trees, model_trees[0])
    assert metadata == model_trees[1]


def test_the_reserved_keys_are_refused_in_metadata(tmp_path):
    for key in (cf.CHECKSUMS_KEY, cf.HEADER_CHECKSUM_KEY):
        with pytest.raises(CheckpointError, match="reserved"):
            save_tree(tmp_path / "x.safetensors", {"params": {"w": np.ones(2)}}, {key: "{}"})
    assert list(tmp_path.iterdir()) == []


# --- a save that fails half-way ---------------------------------------------------------------------


def assert_previous_checkpoint_intact(path, contents, model_trees):
    assert path.read_bytes() == contents
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temporary file was left behind"
    trees, metadata = load_tree(path)
    assert_same_trees(trees, model_trees[0])
    assert metadata == model_trees[1]


@pytest.mark.parametrize("limit", [0, 100, 5000, 20000])
def test_a_disk_full_mid_save_keeps_the_previous_checkpoint(saved, model_trees, monkeypatch, limit):
    path, contents = saved
    fdopen, written = disk_full_after(limit)
    monkeypatch.setattr(os, "fdopen", fdopen)
    newer = {**model_trees[0], "train": {"step": np.array(8, dtype=np.int32), "key": np.array([3, 4], np.uint32)}}
    with pytest.raises(CheckpointWriteError) as info:
        save_tree(path, newer, model_trees[1])
    assert written[0] == limit and limit < len(contents), "the failure should come part-way through the write"
    monkeypatch.undo()
    error = info.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert str(error) == (
        f"could not save {path}: No space left on device; the file at that path, if any, is unchanged"
    )
    assert isinstance(error.__cause__, OSError)
    assert_previous_checkpoint_intact(path, contents, model_trees)


@pytest.mark.parametrize("failing", ["fsync", "replace", "chmod"])
def test_a_failure_before_the_rename_keeps_the_previous_checkpoint(saved, model_trees, monkeypatch, failing):
    path, contents = saved

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(CheckpointWriteError, match=f"could not save {path}: Input/output error") as info:
        save_tree(path, model_trees[0], model_trees[1])
    monkeypatch.undo()
    assert info.value.errno == errno.EIO
    assert_previous_checkpoint_intact(path, contents, model_trees)


def test_saving_into_a_missing_folder_names_the_path(tmp_path):
    path = tmp_path / "absent" / "checkpoint.safetensors"
    with pytest.raises(CheckpointWriteError, match=f"could not save {path}: No such file or directory") as info:
        save_tree(path, {"params": {"w": np.ones(2)}})
    assert info.value.errno == errno.ENOENT
