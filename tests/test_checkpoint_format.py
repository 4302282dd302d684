"""The safetensors reader/writer: exact bytes, round trips, interop with the `safetensors` package,
refusal of truncated, corrupt and foreign files, and atomic saves."""

import hashlib
import json
import os
import pickle
import stat
import struct

import numpy as np
import pytest
from disk_faults import disk_full_after

from backends import tree_structure
from functional_transformer import checkpoint_format as cf
from functional_transformer.checkpoint_format import CheckpointError, load_file, load_tree, save_file, save_tree

F32_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def sample_tensors():
    rng = np.random.default_rng(0)
    return {
        "f32.matrix": rng.standard_normal((3, 4)).astype(np.float32),
        "f64.scalar": np.array(np.pi),
        "f16": np.array([1.5, -2.25, 65504.0], dtype=np.float16),
        "i64": np.array([-(2**62), 0, 2**62 + 7], dtype=np.int64),
        "i32.cube": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        "u32": np.array([0, 2**32 - 1], dtype=np.uint32),
        "u8": np.array([0, 7, 255], dtype=np.uint8),
        "i8": np.array([-128, 127], dtype=np.int8),
        "u64": np.array([2**64 - 1], dtype=np.uint64),
        "bool": np.array([[True, False], [False, True]]),
        "bool.scalar": np.array(True),
        "c64": np.array([1 + 2j, -3.5j], dtype=np.complex64),
        "empty": np.zeros((0, 5), dtype=np.float32),
        "empty.int": np.zeros((2, 0), dtype=np.int64),
        "zz.empty.last": np.zeros(0, dtype=np.uint8),  # sorts last: its offset is the end of the data
    }


def assert_same_tensors(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def header_file(header, data=b""):
    """Bytes of a safetensors file with a hand-written header (for corrupt-file tests)."""
    header_bytes = json.dumps(header).encode()
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def test_exact_bytes_of_a_small_file(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file(path, {"a": np.array([1, 2], dtype=np.uint8), "b": np.array([1.0], dtype=np.float32)}, {"k": "v"})
    raw = path.read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    assert header_size % 8 == 0
    header = json.loads(raw[8 : 8 + header_size])
    data = raw[8 + header_size :]
    assert data == struct.pack("<f", 1.0) + b"\x01\x02"
    # The checksums: SHA-256 of each tensor's bytes, and of the rest of the header as canonical JSON.
    digests = {"a": hashlib.sha256(b"\x01\x02").hexdigest(), "b": hashlib.sha256(data[:4]).hexdigest()}
    checksums = json.dumps(digests, sort_keys=True, separators=(",", ":"))
    tensors = {
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "a": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},
    }
    canonical = json.dumps(
        {"metadata": {"k": "v", cf.CHECKSUMS_KEY: checksums}, "tensors": tensors}, sort_keys=True, separators=(",", ":")
    )
    # Larger itemsize first, so "b" (4 bytes) comes before "a" (1 byte) and stays aligned.
    assert header == {
        "__metadata__": {
            "k": "v",
            "functional_transformer.sha256": checksums,
            "functional_transformer.header_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        },
        **tensors,
    }
    assert list(header) == ["__metadata__", "b", "a"]


def test_every_tensor_we_write_is_aligned_in_the_file(tmp_path):
    tensors = {"odd": np.ones(3, dtype=np.uint8), **sample_tensors(), "z16": np.ones(1, dtype=np.float16)}
    save_file(tmp_path / "x.safetensors", tensors, {"pad": "x" * 5})
    raw = (tmp_path / "x.safetensors").read_bytes()
    header_size = struct.unpack("<Q", raw[:8])[0]
    for name, entry in json.loads(raw[8 : 8 + header_size]).items():
        if name != "__metadata__":
            assert (8 + header_size + entry["data_offsets"][0]) % tensors[name].dtype.itemsize == 0, name


def test_round_trip_of_dtypes_and_shapes_with_metadata(tmp_path):
    tensors = sample_tensors()
    metadata = {"step": "1200", "config": json.dumps({"d_model": 64}), "unicode": "naïve ✓"}
    path = tmp_path / "ckpt.safetensors"
    save_file(path, tensors, metadata)
    got, got_metadata = load_file(path)
    assert_same_tensors(got, tensors)
    assert got_metadata == metadata
    assert got["f64.scalar"].shape == () and got["bool.scalar"].shape == ()
    # Loaded arrays are ordinary writable arrays.
    got["f32.matrix"][0, 0] = 5.0
    assert got["f32.matrix"][0, 0] == 5.0


def test_without_metadata_loads_empty_metadata(tmp_path):
    save_file(tmp_path / "x.safetensors", {"x": np.ones(2)})
    assert load_file(tmp_path / "x.safetensors")[1] == {}  # the checksum entries are not returned
    assert b"__metadata__" in (tmp_path / "x.safetensors").read_bytes()  # they are there, though


def test_non_contiguous_and_big_endian_arrays_are_written_as_their_values(tmp_path):
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    tensors = {
        "transposed": base.T,
        "strided": base[::2, 1::2],
        "big_endian": np.arange(5, dtype=">i4"),
        "big_endian_float": np.array([1.5, -2.0], dtype=">f8"),
    }
    save_file(tmp_path / "x.safetensors", tensors)
    got, _ = load_file(tmp_path / "x.safetensors")
    for name, array in tensors.items():
        assert got[name].dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got[name], array)


def test_bfloat16_round_trip_when_ml_dtypes_is_installed(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.array([1.0, -2.5, 3.140625], dtype=ml_dtypes.bfloat16)
    save_file(tmp_path / "x.safetensors", {"w": values})
    assert b'"BF16"' in (tmp_path / "x.safetensors").read_bytes()
    got, _ = load_file(tmp_path / "x.safetensors")
    assert got["w"].dtype == values.dtype
    np.testing.assert_array_equal(got["w"].astype(np.float32), values.astype(np.float32))


@pytest.mark.parametrize("value", [np.array(["text"]), np.array([object()], dtype=object), np.zeros(2, dtype="M8[s]")])
def test_unstorable_dtypes_are_refused(tmp_path, value):
    with pytest.raises(CheckpointError, match="cannot store"):
        save_file(tmp_path / "x.safetensors", {"bad": value})
    assert list(tmp_path.iterdir()) == []


def test_bad_names_and_metadata_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not allowed"):
        save_file(tmp_path / "x", {"__metadata__": np.ones(1)})
    with pytest.raises(CheckpointError, match="metadata"):
        save_file(tmp_path / "x", {"a": np.ones(1)}, {"step": 3})
    assert list(tmp_path.iterdir()) == []


# --- interop with the reference implementation ---------------------------------------------------


def test_files_we_write_load_with_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = sample_tensors()
    save_file(tmp_path / "ours.safetensors", tensors, {"step": "3"})
    assert_same_tensors(st.load_file(tmp_path / "ours.safetensors"), tensors)
    from safetensors import safe_open

    with safe_open(tmp_path / "ours.safetensors", framework="np") as f:
        metadata = f.metadata()
    assert sorted(metadata) == ["functional_transformer.header_sha256", "functional_transformer.sha256", "step"]
    assert metadata["step"] == "3"
    assert sorted(json.loads(metadata["functional_transformer.sha256"])) == sorted(tensors)


def test_files_safetensors_writes_load_here(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    tensors = sample_tensors()
    st.save_file(tensors, tmp_path / "theirs.safetensors", metadata={"format": "np", "step": "3"})
    with pytest.warns(cf.UncheckedCheckpointWarning, match="theirs.safetensors carries no checksums"):
        got, metadata = load_file(tmp_path / "theirs.safetensors")
    assert_same_tensors(got, tensors)
    assert metadata == {"format": "np", "step": "3"}


def test_save_tree_files_load_with_safetensors_under_dotted_names(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    save_tree(tmp_path / "t.safetensors", {"params": {"encoder": {"ln": {"scale": np.ones(3)}}}, "step": np.array(4)})
    got = st.load_file(tmp_path / "t.safetensors")
    assert sorted(got) == ["params.encoder.ln.scale", "step"]
    np.testing.assert_array_equal(got["params.encoder.ln.scale"], np.ones(3))


# --- refusal of bad files ------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "ckpt.safetensors"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_file(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        load_file(tmp_path)


def test_every_truncation_is_refused(tmp_path):
    path = tmp_path / "full.safetensors"
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array(2.0), "b": np.array([True])}
    save_file(path, tensors, {"m": "x"})
    raw = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    cut_path = tmp_path / "cut.safetensors"
    for cut in range(len(raw)):
        cut_path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError) as info:
            load_file(cut_path)
        message = str(info.value)
        if 8 <= cut < len(raw):
            assert "truncated" in message, (cut, message)
        if cut > header_end:
            assert "ends at data byte" in message, (cut, message)
    cut_path.write_bytes(raw)
    assert_same_tensors(load_file(cut_path)[0], load_file(path)[0])


def test_trailing_bytes_are_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(path, {"w": np.ones(3, dtype=np.float32)})
    path.write_bytes(path.read_bytes() + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="belong to no tensor"):
        load_file(path)


@pytest.mark.parametrize(
    "contents, message",
    [
        (b"", "is empty"),
        (b"\x01\x02\x03", "3 bytes long"),
        (np.random.default_rng(1).bytes(4096), "not a safetensors checkpoint"),
        (pickle.dumps({"w": np.ones(3)}), "not a safetensors checkpoint.*pickle"),
        (pickle.dumps({"w": [1.0, 2.0]}, protocol=2), "not a safetensors checkpoint.*pickle"),
        (json.dumps({"w": F32_ENTRY}).encode(), "not a safetensors checkpoint"),
        (b"hello, this is a plain text file\n", "not a safetensors checkpoint"),
        (struct.pack("<Q", 2) + b"[]", "not a safetensors checkpoint"),
    ],
    ids=["empty", "tiny", "random", "pickle", "pickle2", "json", "text", "header-not-object-start"],
)
def test_foreign_files_are_refused(tmp_path, contents, message):
    path = tmp_path / "foreign.bin"
    path.write_bytes(contents)
    with pytest.raises(CheckpointError, match=message):
        load_file(path)


def test_npy_and_npz_files_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    np.savez(tmp_path / "b.npz", w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*npy"):
        load_file(tmp_path / "a.npy")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*ZIP"):
        load_file(tmp_path / "b.npz")


def raw_header_file(header_bytes, data=b""):
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


def one_tensor(dtype, shape, offsets, data_size):
    """A file with one tensor "w" described as given, followed by `data_size` zero bytes."""
    return header_file({"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}, b"\0" * data_size)


U8_ENTRY = b'{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
TWICE_NAMED = b'{"w":' + U8_ENTRY + b',"w":' + U8_ENTRY + b"}"
CORRUPT_FILES = {
    "valid-control": (one_tensor("F32", [2], [0, 8], 8), None),
    "not-json": (raw_header_file(b"{nonsense}"), "not valid JSON"),
    "json-with-trailing-junk": (raw_header_file(b'{"__metadata__":{}}junk'), "not valid JSON"),
    "not-utf8": (raw_header_file(b"{\xff\xfe}"), "not valid UTF-8"),
    "duplicate-name": (raw_header_file(TWICE_NAMED, b"\0"), "more than once"),
    "unknown-dtype": (one_tensor("F33", [2], [0, 8], 8), "unknown dtype 'F33'"),
    "dtype-not-string": (one_tensor(4, [2], [0, 8], 8), "not a string"),
    "sub-byte-dtype": (one_tensor("F4", [2], [0, 1], 1), "does not support"),
    "size-mismatch": (one_tensor("F32", [3], [0, 8], 8), "needs 12 bytes"),
    "reversed-offsets": (one_tensor("F32", [2], [8, 0], 8), "ending before they begin"),
    "negative-dim": (one_tensor("F32", [-2], [0, 8], 8), "non-negative"),
    "float-dim": (one_tensor("F32", [2.0], [0, 8], 8), "non-negative"),
    "bool-dim": (one_tensor("BOOL", [True], [0, 1], 1), "non-negative"),
    "shape-not-list": (one_tensor("F32", 2, [0, 8], 8), "non-negative"),
    "negative-offset": (one_tensor("F32", [2], [-8, 0], 8), "data_offsets"),
    "one-offset": (one_tensor("F32", [2], [0], 8), "data_offsets"),
    "missing-offsets": (header_file({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "exactly dtype, shape and"),
    "extra-field": (header_file({"w": {**F32_ENTRY, "scale": 2}}, b"\0" * 8), "exactly dtype, shape and data_offsets"),
    "entry-not-object": (header_file({"w": [1, 2]}), "exactly dtype, shape and data_offsets"),
    "header-not-object": (raw_header_file(b"[]"), "not a safetensors checkpoint"),
    "overlap": (header_file({"w": F32_ENTRY, "v": {**F32_ENTRY, "data_offsets": [4, 12]}}, b"\0" * 12), "overlaps"),
    "gap": (header_file({"w": F32_ENTRY, "v": {**F32_ENTRY, "data_offsets": [12, 20]}}, b"\0" * 20), "belong to no"),
    "offsets-past-end": (one_tensor("F32", [2], [0, 8], 4), "truncated"),
    "metadata-int-value": (header_file({"__metadata__": {"step": 3}}), "must map strings to strings"),
    "metadata-list": (header_file({"__metadata__": ["x"]}), "must map strings to strings"),
    "huge-header-size": (struct.pack("<Q", 2**40) + b"{}", "header size of 1099511627776"),
}


@pytest.mark.parametrize("contents, message", CORRUPT_FILES.values(), ids=CORRUPT_FILES.keys())
def test_corrupt_headers_are_refused(tmp_path, contents, message):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(contents)
    if message is None:
        with pytest.warns(cf.UncheckedCheckpointWarning):
            np.testing.assert_array_equal(load_file(path)[0]["w"], np.zeros(2, np.float32))
        return
    with pytest.raises(CheckpointError, match=message):
        load_file(path)


def test_unaligned_tensors_from_other_writers_load_aligned(tmp_path):
    # A one-byte tensor first puts the float64 data at an odd offset, which the format allows.
    header = {
        "b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "w": {"dtype": "F64", "shape": [2], "data_offsets": [1, 17]},
    }
    (tmp_path / "u.safetensors").write_bytes(header_file(header, b"\x09" + np.array([1.25, -7.0]).tobytes()))
    with pytest.warns(cf.UncheckedCheckpointWarning):
        got = load_file(tmp_path / "u.safetensors")[0]
    np.testing.assert_array_equal(got["w"], [1.25, -7.0])
    assert got["w"].flags.aligned
    assert got["b"].tolist() == [9]


# --- atomic writes -------------------------------------------------------------------------------


@pytest.fixture
def previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_file(path, {"w": np.full(100, 3.0)}, {"step": "1"})
    return path, path.read_bytes()


def assert_previous_file_intact(path, contents):
    assert path.read_bytes() == contents
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temporary file was left behind"
    tensors, metadata = load_file(path)
    assert metadata == {"step": "1"}
    np.testing.assert_array_equal(tensors["w"], np.full(100, 3.0))


def test_failed_rename_keeps_the_previous_file(previous_checkpoint, monkeypatch):
    path, contents = previous_checkpoint

    def failing_replace(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_file(path, {"w": np.full(100, 4.0)}, {"step": "2"})
    assert_previous_file_intact(path, contents)


def test_disk_full_mid_write_keeps_the_previous_file(previous_checkpoint, monkeypatch):
    path, contents = previous_checkpoint
    fdopen, written = disk_full_after(1000)
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError, match="No space left"):
        save_file(path, {"w": np.full(100, 4.0), "v": np.ones(1000)}, {"step": "2"})
    assert written[0] == 1000, "the failure should come after part of the data was written"
    assert_previous_file_intact(path, contents)


def test_failed_fsync_keeps_the_previous_file(previous_checkpoint, monkeypatch):
    path, contents = previous_checkpoint

    def failing_fsync(fd):
        raise OSError("simulated I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated I/O error"):
        save_file(path, {"w": np.full(100, 4.0)}, {"step": "2"})
    assert_previous_file_intact(path, contents)


def test_refused_tensor_keeps_the_previous_file(previous_checkpoint):
    path, contents = previous_checkpoint
    with pytest.raises(CheckpointError):
        save_file(path, {"w": np.full(100, 4.0), "z": np.array(["text"])})
    assert_previous_file_intact(path, contents)


def test_save_syncs_before_renaming_and_replaces_the_file(previous_checkpoint, monkeypatch):
    path, _ = previous_checkpoint
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append("replace"), real_replace(src, dst))[1])
    save_file(path, {"w": np.full(100, 4.0)}, {"step": "2"})
    assert events[:2] == ["fsync", "replace"]
    assert load_file(path)[1] == {"step": "2"}
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_has_the_usual_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        save_file(tmp_path / "x.safetensors", {"w": np.ones(1)})
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.safetensors").stat().st_mode) == 0o640


# --- named trees ---------------------------------------------------------------------------------


def test_save_tree_round_trip_with_backend_arrays(tmp_path, backend):
    params = {
        "encoder": {"layer_0": {"ln1": {"scale": backend.asarray(np.arange(4.0, dtype=np.float32))}}},
        "embedding": backend.asarray(np.ones((3, 2), dtype=np.float64)),
    }
    opt_state = {
        "step": backend.asarray(np.array(7, dtype=np.int32)),
        "mu": {"encoder": {"layer_0": {"ln1": {"scale": backend.asarray(np.full(4, 0.5, dtype=np.float32))}}}},
    }
    rng_key = backend.asarray(np.array([1, 2], dtype=np.uint32))
    trees = {"params": params, "opt_state": opt_state, "no_state": {}, "rng_key": rng_key}
    save_tree(tmp_path / "t.safetensors", trees, {"step": "7"})
    got, metadata = load_tree(tmp_path / "t.safetensors")
    assert metadata == {"step": "7"}
    assert sorted(got) == ["no_state", "opt_state", "params", "rng_key"]
    assert got["no_state"] == {}
    want = backend.tree_to_numpy(trees)
    for name in ["params", "opt_state"]:
        assert tree_structure(got[name]) == tree_structure(want[name])
        assert_same_tensors(backend.tree_flatten(got[name]), backend.tree_flatten(want[name]))
    assert got["rng_key"].dtype == np.uint32
    np.testing.assert_array_equal(got["rng_key"], [1, 2])
    assert got["opt_state"]["step"].shape == ()
    assert sorted(load_file(tmp_path / "t.safetensors")[0]) == [
        "opt_state.mu.encoder.layer_0.ln1.scale",
        "opt_state.step",
        "params.embedding",
        "params.encoder.layer_0.ln1.scale",
        "rng_key",
    ]


def test_load_tree_of_a_plain_file_groups_by_first_name(tmp_path):
    save_file(tmp_path / "p.safetensors", {"params.a.b": np.ones(2), "params.c": np.zeros(1), "step": np.array(3)})
    trees, metadata = load_tree(tmp_path / "p.safetensors")
    assert metadata == {}
    assert sorted(trees) == ["params", "step"]
    assert sorted(trees["params"]) == ["a", "c"]
    np.testing.assert_array_equal(trees["params"]["a"]["b"], np.ones(2))


def test_load_tree_refuses_names_that_are_not_a_tree(tmp_path):
    save_file(tmp_path / "p.safetensors", {"params.a": np.ones(2), "params.a.b": np.zeros(1)})
    with pytest.raises(CheckpointError, match="do not form a tree"):
        load_tree(tmp_path / "p.safetensors")
    save_file(tmp_path / "q.safetensors", {"params": np.ones(2), "params.b": np.zeros(1)})
    with pytest.raises(CheckpointError, match="both a tensor and a tree"):
        load_tree(tmp_path / "q.safetensors")
    save_file(tmp_path / "r.safetensors", {"stray.x": np.ones(1)}, {cf.TREE_NAMES_KEY: '["params"]'})
    with pytest.raises(CheckpointError, match="none of the saved trees"):
        load_tree(tmp_path / "r.safetensors")


@pytest.mark.parametrize(
    "trees, metadata, message",
    [
        ({"a.b": {"w": np.ones(1)}}, None, "tree name"),
        ({"": {"w": np.ones(1)}}, None, "tree name"),
        ({"params": {"w.x": np.ones(1)}}, None, "without '.'"),
        ({"params": {1: np.ones(1)}}, None, "must be strings"),
        ({"params": {"layer": {}}}, None, "empty dict"),
        ({"params": {"w": np.ones(1)}}, {cf.TREE_NAMES_KEY: "x"}, "reserved"),
    ],
)
def test_save_tree_refuses_what_it_cannot_bring_back(tmp_path, trees, metadata, message):
    with pytest.raises(CheckpointError, match=message):
        save_tree(tmp_path / "t.safetensors", trees, metadata)
    assert list(tmp_path.iterdir()) == []
