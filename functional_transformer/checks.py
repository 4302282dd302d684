"""Input checks for the public entry points: a clear error instead of a silent wrong answer.

JAX clamps out-of-range gathers silently, so token ids are checked here, before any jit, while
their values can still be read (inside a jit trace only shapes and dtypes can be checked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import ModelConfig
    from .config import TransformerConfig

from backends import Backend, array_namespace, backend_of

from .errors import ConfigError


def check_token_ids(name: str, ids, vocab_size: int, max_len: int, backend: Backend):
    """ids must be an integer (batch, length) array with 1 <= length <= max_len and 0 <= id < vocab_size."""
    xp = array_namespace(ids)
    if ids.ndim != 2:
        raise ValueError(f"{name} must be a 2-D integer array of shape (batch, length), got shape {tuple(ids.shape)}")
    if not xp.isdtype(ids.dtype, "integral"):
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}; convert with .astype(int32)")
    batch, length = ids.shape
    if batch == 0 or length == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}): it needs at least one sequence of one token")
    if length > max_len:
        raise ValueError(
            f"{name} has length {length}, longer than max_len={max_len}; "
            "shorten the sequences or build the model with a larger max_len"
        )
    if not backend.is_concrete(ids):
        return
    values = backend.to_numpy(ids)
    bad = (values < 0) | (values >= vocab_size)
    if bad.any():
        row, col = (int(i[0]) for i in bad.nonzero())
        raise ValueError(
            f"{name} holds token id {int(values[row, col])} at [{row}, {col}], outside the vocabulary "
            f"[0, {vocab_size}); every id must be at least 0 and below the vocabulary size"
        )


def check_same_batch(a_name: str, a, b_name: str, b):
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a_name} has batch size {a.shape[0]} but {b_name} has {b.shape[0]}; they must match")


def check_dropout_key(cfg: ModelConfig, train: bool, key):
    if train and cfg.drop_rate > 0 and key is None:
        raise ValueError(
            f"train=True with drop_rate={cfg.drop_rate} needs a key for dropout: pass key=ft.random.key(seed) "
            "(or train=False for evaluation)"
        )


def check_compute_dtype(cfg: ModelConfig, backend: Backend, grad_method: str | None = None):
    """bfloat16 compute needs JAX (NumPy has no bfloat16 arithmetic) and jax.grad (the hand-written
    VJPs run in the params' dtype). Configs without a compute_dtype compute in their dtype."""
    compute_dtype = getattr(cfg, "compute_dtype", None)
    if compute_dtype in (None, cfg.dtype):
        return
    if backend.name != "jax":
        raise ConfigError(
            f"compute_dtype={compute_dtype!r} needs the JAX backend ({backend.name} cannot compute in "
            f"{compute_dtype}): run with FT_BACKEND=jax, or leave compute_dtype unset to compute in {cfg.dtype}"
        )
    if grad_method == "vjp":
        raise ConfigError(
            f"compute_dtype={compute_dtype!r} trains with jax.grad: use grad method 'autodiff' (the default "
            "on JAX), not 'vjp', whose hand-written backward passes run in the params' dtype"
        )


def check_params_dtype(params: dict, cfg: TransformerConfig):
    table = params["src_embed"]["tokens"]
    if table.dtype != getattr(array_namespace(table), cfg.dtype):
        raise TypeError(f"params are {table.dtype} but cfg.dtype is {cfg.dtype!r}; build them with ft.init(key, cfg)")


def prepare_inputs(params: dict, cfg: TransformerConfig, train: bool, key, **tokens):
    """Check params, the dropout key and the token arrays (named "src", "tgt_in", "tgt_out"), and move
    the tokens to the params' backend -> (backend, {name: ids})."""
    backend = backend_of(params)
    check_params_dtype(params, cfg)
    check_compute_dtype(cfg, backend)
    check_dropout_key(cfg, train, key)
    arrays = {}
    for name, ids in tokens.items():
        ids = backend.asarray(ids)
        vocab = cfg.src_vocab_size if name == "src" else cfg.tgt_vocab_size
        check_token_ids(name, ids, vocab, cfg.max_len, backend)
        arrays[name] = ids
    names = list(arrays)
    for other in names[1:]:
        check_same_batch(names[0], arrays[names[0]], other, arrays[other])
    return backend, arrays
