"""Checkpoint files in the safetensors format, read and written with NumPy alone.

The format (https://github.com/huggingface/safetensors), byte by byte:

    [8 bytes]  N, the header size: an unsigned 64-bit little-endian integer
    [N bytes]  the header: a UTF-8 JSON object that starts with "{" (it may end in spaces), holding
               "__metadata__": {str: str}                       (optional)
               "<tensor name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
    [the rest] the data: each tensor's raw bytes, little-endian, C order, at [begin, end) counted
               from the first byte after the header

A tensor of dtype d and shape s takes exactly prod(s) * itemsize(d) bytes (a 0-d tensor has shape
[] and one element), and the tensors' byte ranges, sorted, tile the data exactly: no gaps, no
overlaps, nothing after the last one. These are the rules of the reference implementation, so files
written here load with the `safetensors` package and the other way round.

The contract:
- `save_file` writes atomically: it writes a temporary file in the same directory, flushes and
  fsyncs it, then renames it onto the path with `os.replace`. A crash or an error mid-save leaves
  the previous file at the path as it was (or no file), never half of a new one, and the temporary
  file is removed on error. A failed write (a full disk, a permission) raises
  `CheckpointWriteError` (an OSError, with the errno of the cause) naming the path.
- `save_file` stores checksums in the metadata, as two string entries:
  "functional_transformer.sha256", a JSON object mapping each tensor name to the SHA-256 (hex) of
  its bytes as stored, and "functional_transformer.header_sha256", the SHA-256 of the rest of the
  header (every other metadata entry and every tensor's dtype, shape and offsets, as canonical
  JSON: `_header_digest`). These keys are reserved: `save_file` refuses them in the caller's
  metadata and `load_file` does not return them. SHA-256 is cryptographic, so a deliberate edit is
  caught as surely as a flipped bit, unless the editor recomputes the checksums too.
- `load_file` checks everything (header size, JSON, dtypes, shapes, offsets, file length, then the
  checksums) before it returns, and raises `CheckpointError` (a ValueError) naming the file and the
  problem for anything missing, truncated, corrupt, edited or not a safetensors file: a tensor
  whose bytes do not match its checksum (the error names the tensor), a header that does not match
  its checksum, a checksum for a tensor the file does not hold, a tensor without a checksum, or one
  of the two checksum entries without the other. It never guesses and never unpickles. A file with
  neither checksum entry (written by an earlier version or by another tool) still
  loads, with an `UncheckedCheckpointWarning` saying that it could not be verified.
- Arrays come back as writable NumPy arrays in native byte order; convert them for a backend with
  `backend.asarray` / `backend.tree_asarray`.
- `save_tree` / `load_tree` store several named trees (nested dicts of arrays, the only pytree this
  project uses: no lists or tuples) in one file, under prefixed dotted names such as
  "params.encoder.layer_0.ln1.scale".

Dtypes: BOOL, U8, I8, U16, I16, F16, U32, I32, F32, U64, I64, F64 and C64 always; BF16, F8_E4M3 and
F8_E5M2 where the `ml_dtypes` package (which JAX installs) is present. Other safetensors dtypes
(the sub-byte F4/F6 types, F8_E8M0) are refused with a clear error rather than misread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import warnings
from typing import Any

import numpy as np

from backends.tree import tree_flatten, tree_unflatten

from .errors import UserInputError

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "UncheckedCheckpointWarning",
    "load_file",
    "load_tree",
    "save_file",
    "save_tree",
]

# The reference implementation refuses headers over 100 MB; so do we, which also stops a random
# 8-byte prefix from making us try to read gigabytes of "header".
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"
# `save_tree` records the tree names here so that an empty tree (say, the state of a stateless
# optimiser) survives the round trip: it has no tensors to carry its name.
TREE_NAMES_KEY = "functional_transformer.tree_names"
# `save_file` records checksums here (see the module docstring); both keys are reserved.
CHECKSUMS_KEY = "functional_transformer.sha256"
HEADER_CHECKSUM_KEY = "functional_transformer.header_sha256"
_RESERVED_KEYS = (CHECKSUMS_KEY, HEADER_CHECKSUM_KEY)
_HEX_DIGITS = frozenset("0123456789abcdef")

# safetensors dtype name -> little-endian NumPy dtype.
_CORE_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}
# safetensors dtype name -> ml_dtypes attribute, for the types NumPy itself lacks.
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_UNSUPPORTED_DTYPES = {"F4", "F6_E2M3", "F6_E3M2", "F8_E8M0"}


class CheckpointError(UserInputError):
    """A checkpoint file is missing, truncated, corrupt or not a safetensors file, or a value cannot
    be stored faithfully."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (the disk is full, say); the file at the path is as it was.
    `errno` is the cause's; the message names the path."""


class UncheckedCheckpointWarning(UserWarning):
    """A checkpoint loaded but carries no checksums, so damage to it could not be detected."""


def _file_dtype(name: str, tensor_name: str, path: Any) -> np.dtype:
    if name in _CORE_DTYPES:
        return _CORE_DTYPES[name]
    if name in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            raise CheckpointError(
                f"{path}: tensor {tensor_name!r} has dtype {name}, which NumPy reads only with the "
                "ml_dtypes package (pip install ml_dtypes)"
            ) from None
        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[name]))
    if name in _UNSUPPORTED_DTYPES:
        raise CheckpointError(f"{path}: tensor {tensor_name!r} has dtype {name}, which this reader does not support")
    raise CheckpointError(f"{path}: tensor {tensor_name!r} has unknown dtype {name!r}")


def _dtype_name(dtype: np.dtype, tensor_name: str) -> str:
    native = dtype.newbyteorder("<")
    for name, candidate in _CORE_DTYPES.items():
        if native == candidate:
            return name
    for name, attr in _ML_DTYPES.items():
        if dtype.name == attr:
            return name
    raise CheckpointError(f"tensor {tensor_name!r} has dtype {dtype}, which a safetensors checkpoint cannot store")


def _little_endian_bytes(array: np.ndarray) -> np.ndarray:
    """The array's data as a flat uint8 array, little-endian and in C order."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    # reshape(-1) gives C order (copying only when needed) and a 1-d array, which `view` requires.
    return np.ascontiguousarray(array.reshape(-1)).view(np.uint8)


def _encode(tensors: dict[str, Any], metadata: dict[str, str] | None) -> tuple[bytes, list[np.ndarray]]:
    """The padded header (with its size prefix) and the data chunks, in file order."""
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise CheckpointError(f"metadata must be a dict of str to str, got {metadata!r}")
    reserved = sorted(set(metadata or ()) & set(_RESERVED_KEYS))
    if reserved:
        raise CheckpointError(f"metadata keys {reserved} are reserved for the checksums that save_file writes")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or name == METADATA_KEY:
            raise CheckpointError(f"tensor name {name!r} is not allowed: names are strings other than {METADATA_KEY!r}")
        arrays[name] = np.asarray(value)
    dtype_names = {name: _dtype_name(array.dtype, name) for name, array in arrays.items()}
    # Largest itemsize first, as the reference writer does: the data starts 8-byte aligned (the
    # header is padded), so every tensor then starts at a multiple of its itemsize.
    order = sorted(arrays, key=lambda name: (-arrays[name].dtype.itemsize, name))
    entries, digests, chunks, offset = {}, {}, [], 0
    for name in order:
        chunk = _little_endian_bytes(arrays[name])
        entries[name] = {
            "dtype": dtype_names[name],
            "shape": list(arrays[name].shape),
            "data_offsets": [offset, offset + chunk.size],
        }
        digests[name] = hashlib.sha256(chunk.data).hexdigest()  # .data: the bytes as a memoryview, no copy
        chunks.append(chunk)
        offset += chunk.size
    metadata = {**(metadata or {}), CHECKSUMS_KEY: json.dumps(digests, sort_keys=True, separators=(",", ":"))}
    metadata[HEADER_CHECKSUM_KEY] = _header_digest(metadata, entries)
    header = {METADATA_KEY: metadata, **entries}
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    return len(header_bytes).to_bytes(8, "little") + header_bytes, chunks


def _header_digest(metadata: dict[str, str], entries: dict[str, dict]) -> str:
    """SHA-256 (hex) of the header less its own checksum entry: the metadata and each tensor's
    dtype, shape and data_offsets, as canonical JSON (sorted keys, ASCII, no spaces)."""
    canonical = {
        "metadata": {k: v for k, v in metadata.items() if k != HEADER_CHECKSUM_KEY},
        "tensors": {
            name: {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": e["data_offsets"]}
            for name, e in entries.items()
        },
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _current_umask() -> int:
    # Python can read the umask only by setting it; it is changed for an instant and restored.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def save_file(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` (name -> array; anything `numpy.asarray` takes) and `metadata` to `path`
    as a safetensors file with checksums, atomically: the previous file at `path` survives any
    failure. A failed write raises `CheckpointWriteError` naming `path`."""
    path = os.fspath(path)
    # Everything that can be refused is refused here, before a byte is written.
    header, chunks = _encode(tensors, metadata)
    directory, basename = os.path.split(os.path.abspath(path))
    try:
        fd, temp_path = tempfile.mkstemp(prefix=f".{basename}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(header)
            for chunk in chunks:
                file.write(chunk.data)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would have.
        os.chmod(temp_path, 0o666 & ~_current_umask())
        os.replace(temp_path, path)
    except BaseException as err:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise _write_error(path, err) from err
        raise
    _fsync_directory(directory)


def _write_error(path: str, err: OSError) -> CheckpointWriteError:
    reason = err.strerror or str(err) or type(err).__name__
    error = CheckpointWriteError(f"could not save {path}: {reason}; the file at that path, if any, is unchanged")
    error.errno = err.errno
    return error


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened this way on Windows.
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Magic numbers of files people may hand us by mistake, for a more helpful error message.
_FOREIGN_MAGIC = {
    b"\x80": "a Python pickle (e.g. a torch.save or pickle checkpoint)",
    b"PK\x03\x04": "a ZIP archive (e.g. a .npz or PyTorch .pt file)",
    b"\x93NUMPY": "a NumPy .npy file",
    b"\x89HDF": "an HDF5 file",
}


def _not_safetensors(path: Any, why: str, prefix: bytes) -> CheckpointError:
    guess = next((f"; it looks like {kind}" for magic, kind in _FOREIGN_MAGIC.items() if prefix.startswith(magic)), "")
    return CheckpointError(f"{path} is not a safetensors checkpoint: {why}{guess}")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        raise CheckpointError(f"header names {duplicates} more than once")
    return dict(pairs)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(path: Any, header_bytes: bytes) -> tuple[dict[str, dict], dict[str, str]]:
    """The tensor entries and metadata of a header, each entry checked on its own."""
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: the header is not valid UTF-8 ({err}); the file is corrupt") from None
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the header is not valid JSON ({err}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is JSON but not an object")
    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: {METADATA_KEY} must map strings to strings, got {metadata!r}")
    for name, entry in header.items():
        if not isinstance(entry, dict) or sorted(entry) != ["data_offsets", "dtype", "shape"]:
            raise CheckpointError(
                f"{path}: tensor {name!r} must be described by exactly dtype, shape and data_offsets, got {entry!r}"
            )
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(entry["dtype"], str):
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {entry['dtype']!r}, not a string")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets!r}, not [begin, end] in bytes")
        begin, end = offsets
        if end < begin:
            raise CheckpointError(
                f"{path}: tensor {name!r} has data_offsets [{begin}, {end}], ending before they begin"
            )
        dtype = _file_dtype(entry["dtype"], name, path)
        # Python integers, so a hostile shape cannot overflow this product.
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({entry['dtype']}, shape {shape}) needs {expected} bytes but its "
                f"data_offsets [{begin}, {end}] span {end - begin}"
            )
        entry["numpy_dtype"] = dtype
    return header, metadata


def _check_layout(path: Any, entries: dict[str, dict], data_size: int) -> None:
    """The byte ranges must lie in the data and tile it exactly, as the reference reader demands."""
    for name, entry in entries.items():
        begin, end = entry["data_offsets"]
        if end > data_size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at data byte {end} but the file holds only "
                f"{data_size} bytes of data"
            )
    covered = 0
    for name in sorted(entries, key=lambda name: tuple(entries[name]["data_offsets"])):
        begin, end = entries[name]["data_offsets"]
        if begin < covered:
            raise CheckpointError(f"{path}: tensor {name!r} at data bytes [{begin}, {end}) overlaps the one before it")
        if begin > covered:
            raise CheckpointError(f"{path}: data bytes [{covered}, {begin}) belong to no tensor; the file is corrupt")
        covered = end
    if covered != data_size:
        raise CheckpointError(
            f"{path}: {data_size - covered} bytes after the last tensor belong to no tensor; the file is corrupt"
        )


def load_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors (name -> NumPy array) and metadata of the safetensors file at `path`, after
    checking all of it; `CheckpointError` if anything is wrong."""
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {os.fspath(path)} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint file {os.fspath(path)}: {err}") from err
    with file:
        file_size = os.fstat(file.fileno()).st_size
        prefix = file.read(16)
        if file_size == 0:
            raise CheckpointError(f"{path} is empty, not a safetensors checkpoint")
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is {len(prefix)} bytes long: truncated, or not a safetensors checkpoint")
        header_size = int.from_bytes(prefix[:8], "little")
        if header_size > MAX_HEADER_BYTES:
            raise _not_safetensors(path, f"its first 8 bytes give a header size of {header_size} bytes", prefix)
        if len(prefix) > 8 and prefix[8:9] != b"{":
            raise _not_safetensors(path, "its header does not start with '{'", prefix)
        if 8 + header_size > file_size:
            raise CheckpointError(
                f"{path} is truncated: its header should be {header_size} bytes but only {file_size - 8} bytes "
                "follow the size"
            )
        file.seek(8)
        entries, metadata = _parse_header(path, file.read(header_size))
        data_size = file_size - 8 - header_size
        _check_layout(path, entries, data_size)
        # A bytearray, so that the arrays viewing it are writable.
        data = bytearray(data_size)
        if file.readinto(data) != data_size:
            raise CheckpointError(f"{path} got shorter while it was being read")
    _verify_checksums(path, entries, metadata, data)
    tensors = {}
    for name, entry in entries.items():
        begin, end = entry["data_offsets"]
        dtype = entry["numpy_dtype"]
        array = np.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        array = array.reshape(entry["shape"])
        if not array.flags.aligned:  # files from other writers need not align their tensors
            array = array.copy()
        tensors[name] = array.astype(dtype.newbyteorder("="), copy=False)
    return tensors, metadata


def _verify_checksums(path: Any, entries: dict[str, dict], metadata: dict[str, str], data: bytearray) -> None:
    """Check the tensors and the header against the checksums `save_file` stored, and take those
    out of `metadata`; warn (UncheckedCheckpointWarning) where the file has none."""
    present = [key for key in _RESERVED_KEYS if key in metadata]
    if not present:
        warnings.warn(
            UncheckedCheckpointWarning(
                f"{path} carries no checksums (it was written by an earlier version, or by another "
                "tool), so damage to it cannot be detected"
            ),
            stacklevel=3,
        )
        return
    damaged = "the file is damaged or was edited"
    if len(present) == 1:
        (missing,) = set(_RESERVED_KEYS) - set(present)
        raise CheckpointError(
            f"{path}: its header has the checksum entry {present[0]!r} but not {missing!r}; {damaged}"
        )
    try:
        digests = json.loads(metadata[CHECKSUMS_KEY])
    except json.JSONDecodeError:
        digests = None
    if not (
        isinstance(digests, dict)
        and all(isinstance(d, str) and len(d) == 64 and set(d) <= _HEX_DIGITS for d in digests.values())
    ):
        raise CheckpointError(
            f"{path}: its checksum entry {CHECKSUMS_KEY!r} is not a JSON object of SHA-256 digests; {damaged}"
        )
    strays = sorted(set(digests) - set(entries))
    if strays:
        raise CheckpointError(
            f"{path}: the checksums name tensors {strays} that the file does not hold; a tensor was removed, "
            f"or {damaged}"
        )
    unchecked = sorted(set(entries) - set(digests))
    if unchecked:
        raise CheckpointError(
            f"{path}: tensors {unchecked} have no checksum though the file carries checksums; a tensor was added, "
            f"or {damaged}"
        )
    with memoryview(data) as view:
        for name in sorted(entries, key=lambda name: tuple(entries[name]["data_offsets"])):
            begin, end = entries[name]["data_offsets"]
            if hashlib.sha256(view[begin:end]).hexdigest() != digests[name]:
                raise CheckpointError(f"{path}: tensor {name!r} does not match its SHA-256 checksum; {damaged}")
    if _header_digest(metadata, entries) != metadata[HEADER_CHECKSUM_KEY]:
        raise CheckpointError(
            f"{path}: the header (metadata, tensor dtypes, shapes or offsets) does not match its SHA-256 "
            f"checksum; {damaged}"
        )
    for key in _RESERVED_KEYS:
        del metadata[key]


def _check_keys(tree: Any, where: str) -> None:
    """Refuse what the dotted names cannot bring back as it was."""
    if not isinstance(tree, dict):
        return
    if not tree and "." in where:
        raise CheckpointError(f"{where} is an empty dict, which a checkpoint cannot record (whole trees may be empty)")
    for key, subtree in tree.items():
        if not isinstance(key, str) or "." in key:
            raise CheckpointError(f"{where} has key {key!r}: tree keys must be strings without '.'")
        _check_keys(subtree, f"{where}.{key}")


def save_tree(path: str | os.PathLike, trees: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Save several named trees (nested dicts of NumPy or backend arrays) to one file, atomically,
    as "<tree name>.<dotted path>" tensors."""
    metadata = dict(metadata or {})
    if TREE_NAMES_KEY in metadata:
        raise CheckpointError(f"metadata key {TREE_NAMES_KEY!r} is reserved for save_tree")
    tensors = {}
    for tree_name, tree in trees.items():
        if not isinstance(tree_name, str) or not tree_name or "." in tree_name or tree_name == METADATA_KEY:
            raise CheckpointError(f"tree name {tree_name!r} must be a non-empty string without '.'")
        _check_keys(tree, tree_name)
        for leaf_path, leaf in tree_flatten(tree).items():
            tensors[f"{tree_name}.{leaf_path}" if leaf_path else tree_name] = np.asarray(leaf)
    metadata[TREE_NAMES_KEY] = json.dumps(sorted(trees))
    save_file(path, tensors, metadata)


def load_tree(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """The named trees (of NumPy arrays) and metadata saved by `save_tree`. A file from elsewhere
    gives one tree per first component of the tensor names."""
    tensors, metadata = load_file(path)
    tree_names = None
    if TREE_NAMES_KEY in metadata:
        try:
            tree_names = json.loads(metadata.pop(TREE_NAMES_KEY))
        except json.JSONDecodeError:
            pass
        if not isinstance(tree_names, list) or not all(isinstance(name, str) for name in tree_names):
            raise CheckpointError(f"{path}: metadata {TREE_NAMES_KEY!r} is not a JSON list of names")
    flat_by_tree: dict[str, dict[str, np.ndarray]] = {name: {} for name in tree_names or ()}
    for name, array in tensors.items():
        tree_name, _, leaf_path = name.partition(".")
        if tree_names is not None and tree_name not in flat_by_tree:
            raise CheckpointError(f"{path}: tensor {name!r} belongs to none of the saved trees {tree_names}")
        flat_by_tree.setdefault(tree_name, {})[leaf_path] = array
    trees = {}
    for tree_name, flat in flat_by_tree.items():
        if "" in flat and len(flat) > 1:
            raise CheckpointError(f"{path}: {tree_name!r} is both a tensor and a tree of tensors")
        try:
            trees[tree_name] = tree_unflatten(flat) if flat else {}
        except ValueError as err:
            raise CheckpointError(f"{path}: the tensors of tree {tree_name!r} do not form a tree: {err}") from None
    return trees, metadata
