"""The public entry points: input checks, then the model under `jit` on JAX.

Each function runs on the backend of the params it is given (NumPy or JAX); token arrays are
converted to that backend. `cfg` is a static argument of the jitted functions (it is hashable),
so a new config or new shapes compile once and are cached.
"""

from __future__ import annotations

from backends import Backend, backend_of

from . import checks, loss, model
from .backend_choice import default_backend

GRAD_METHODS = ("vjp", "autodiff")


def _prepare(params, cfg, train, key, **tokens):
    backend = backend_of(params)
    checks.check_params_dtype(params, cfg)
    checks.check_dropout_key(cfg, train, key)
    arrays = {}
    for name, ids in tokens.items():
        ids = backend.asarray(ids)
        is_src = name == "src"
        vocab = cfg.src_vocab_size if is_src else cfg.tgt_vocab_size
        checks.check_token_ids(name, ids, vocab, cfg.max_len, backend)
        arrays[name] = ids
    names = list(arrays)
    for other in names[1:]:
        checks.check_same_batch(names[0], arrays[names[0]], other, arrays[other])
    return backend, arrays


def init(key, cfg) -> dict:
    """A parameter tree for `cfg` on the backend of `key` (see model.py for every key and shape).

    On JAX the numbers are drawn on the host with NumPy and the tree is then moved to the device.
    The generator is one text on both backends (backends/random.py), so the numbers are the same,
    and this skips compiling a Threefry program per weight: jitted, the default `ft train` model
    took 6.5 s to trace and compile, against 0.04 s to draw with NumPy (1.9 s for the base
    model's 63 M numbers). Under a JAX trace (`jax.eval_shape`, `jit`) it is traced as usual."""
    backend = backend_of(key)
    if backend.name == "jax" and backend.is_concrete(key):
        host_params = model.init(backend.to_numpy(key), cfg)
        return backend.tree_asarray(host_params)
    return model.init(backend.asarray(key), cfg)


def _apply(params, src, tgt_in, cfg, train, key):
    return model.fwd(params, src, tgt_in, cfg, key, train)[0]


def apply(params: dict, src, tgt_in, cfg, train: bool = False, key=None):
    """src (B, S), tgt_in (B, T) integer -> logits (B, T, V_tgt). Dropout only with train=True and a key."""
    backend, a = _prepare(params, cfg, train, key, src=src, tgt_in=tgt_in)
    return backend.jit(_apply, static_argnames=("cfg", "train"))(params, a["src"], a["tgt_in"], cfg, train, key)


def _encode(params, src, cfg, train, key):
    return model.encode_fwd(params, src, cfg, key, train)[0]


def encode(params: dict, src, cfg, train: bool = False, key=None):
    """src (B, S) -> memory (B, S, d_model): the encoder alone."""
    backend, a = _prepare(params, cfg, train, key, src=src)
    return backend.jit(_encode, static_argnames=("cfg", "train"))(params, a["src"], cfg, train, key)


def _decode(params, memory, src, tgt_in, cfg, train, key):
    return model.decode_fwd(params, memory, src, tgt_in, cfg, key, train)[0]


def decode(params: dict, memory, src, tgt_in, cfg, train: bool = False, key=None):
    """tgt_in (B, T) over memory (B, S, d_model) of src (B, S) -> logits (B, T, V_tgt)."""
    backend, a = _prepare(params, cfg, train, key, src=src, tgt_in=tgt_in)
    memory = backend.asarray(memory)
    if memory.shape != (*a["src"].shape, cfg.d_model):
        raise ValueError(f"memory has shape {tuple(memory.shape)}, expected (batch, src_len, d_model) = "
                         f"{(*a['src'].shape, cfg.d_model)}; make it with ft.encode(params, src, cfg)")
    return backend.jit(_decode, static_argnames=("cfg", "train"))(params, memory, a["src"], a["tgt_in"], cfg, train, key)


def _loss_and_metrics(params, batch, cfg, train, key, label_smoothing):
    logits, _ = model.fwd(params, batch["src"], batch["tgt_in"], cfg, key, train)
    _, metrics, _ = loss.fwd(logits, batch["tgt_out"], cfg.pad_id, label_smoothing)
    return metrics


def _grad_vjp(params, batch, cfg, train, key, label_smoothing):
    """The gradient from the hand-written VJPs: forward with residuals, then backward."""
    logits, res_model = model.fwd(params, batch["src"], batch["tgt_in"], cfg, key, train)
    _, metrics, res_loss = loss.fwd(logits, batch["tgt_out"], cfg.pad_id, label_smoothing)
    grads = model.bwd(res_model, loss.bwd(res_loss, 1.0), cfg)
    return grads, metrics


def _grad_autodiff(params, batch, cfg, train, key, label_smoothing):
    """The gradient from jax.grad of the same forward pass."""
    import jax

    def objective(p):
        metrics = _loss_and_metrics(p, batch, cfg, train, key, label_smoothing)
        return metrics["loss"], metrics

    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, metrics


def _prepare_batch(params, batch, cfg, train, key):
    missing = {"src", "tgt_in", "tgt_out"} - set(batch)
    if missing:
        raise ValueError(f"batch is missing {sorted(missing)}: it needs integer arrays 'src', 'tgt_in' and 'tgt_out'")
    backend, a = _prepare(params, cfg, train, key, src=batch["src"], tgt_in=batch["tgt_in"], tgt_out=batch["tgt_out"])
    if a["tgt_in"].shape != a["tgt_out"].shape:
        raise ValueError(f"tgt_in {tuple(a['tgt_in'].shape)} and tgt_out {tuple(a['tgt_out'].shape)} must have one shape")
    return backend, a


def default_grad_method(backend: Backend) -> str:
    return "autodiff" if backend.name == "jax" else "vjp"


def grad_and_metrics(params: dict, batch: dict, cfg, train: bool = False, key=None, label_smoothing: float = 0.1,
                     method: str | None = None):
    """-> (grads, metrics) with metrics {"loss", "n_tokens", "accuracy"}; what the training step uses.

    method: "vjp" (hand-written VJPs, the only one on NumPy; under jit on JAX) or "autodiff"
    (jax.grad, JAX only). None picks "vjp" on NumPy and "autodiff" on JAX.
    """
    backend, a = _prepare_batch(params, batch, cfg, train, key)
    method = method or default_grad_method(backend)
    if method not in GRAD_METHODS:
        raise ValueError(f"unknown gradient method {method!r}: choose one of {GRAD_METHODS}")
    if method == "autodiff" and backend.name != "jax":
        raise ValueError(f"method='autodiff' needs the JAX backend (params are on {backend.name}); use method='vjp'")
    fn = _grad_vjp if method == "vjp" else _grad_autodiff
    return backend.jit(fn, static_argnames=("cfg", "train", "label_smoothing"))(
        params, a, cfg, train, key, float(label_smoothing))


def loss_and_grad(params: dict, batch: dict, cfg, train: bool = False, key=None, label_smoothing: float = 0.1,
                  method: str | None = None):
    """-> (loss, grads); grads has exactly the structure of params. See grad_and_metrics for `method`."""
    grads, metrics = grad_and_metrics(params, batch, cfg, train, key, label_smoothing, method)
    return metrics["loss"], grads


def loss_and_metrics(params: dict, batch: dict, cfg, train: bool = False, key=None, label_smoothing: float = 0.1):
    """-> metrics {"loss", "n_tokens", "accuracy"} of one batch, without gradients."""
    backend, a = _prepare_batch(params, batch, cfg, train, key)
    return backend.jit(_loss_and_metrics, static_argnames=("cfg", "train", "label_smoothing"))(
        params, a, cfg, train, key, float(label_smoothing))


def loss_fn(params: dict, batch: dict, cfg, train: bool = False, key=None, label_smoothing: float = 0.1):
    """The scalar loss of one batch (label-smoothed cross-entropy over real target tokens)."""
    return loss_and_metrics(params, batch, cfg, train, key, label_smoothing)["loss"]


__all__ = ["init", "apply", "encode", "decode", "loss_fn", "loss_and_grad", "grad_and_metrics", "loss_and_metrics",
           "default_backend"]
