"""The public entry points: input checks, then the model under `jit` on JAX.

Each function runs on the backend of the params it is given (NumPy or JAX); token arrays are
converted to that backend. `cfg` is a static argument of the jitted functions (it is hashable),
so a new config or new shapes compile once and are cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import ModelConfig
    from .config import TransformerConfig

from backends import backend_of, with_x64_scope

from . import checks, families, gradients
from .gradients import default_grad_method


def _apply(params, src, tgt_in, cfg: TransformerConfig, train, key):
    return families.model_of(cfg).apply(params, (src, tgt_in), train=train, key=key)


def _encode(params, src, cfg: TransformerConfig, train, key):
    return families.model_of(cfg).encode_fwd(params, src, train=train, key=key)[0]


def _decode(params, memory, src, tgt_in, cfg: TransformerConfig, train, key):
    return families.model_of(cfg).decode_fwd(params, memory, src, tgt_in, train=train, key=key)[0]


@with_x64_scope
def init(key, cfg: ModelConfig) -> dict:
    """A parameter tree for `cfg` (a model config of any family: TransformerConfig, DecoderConfig or
    EncoderConfig) on the backend of `key` (see models/ for every key and shape).

    On JAX the numbers are drawn on the host with NumPy and the tree is then moved to the device.
    The generator is one text on both backends (backends/prng.py), so the numbers are the same,
    and this skips compiling a Threefry program per weight, which takes far longer than drawing
    the numbers (docs/benchmarks.md, "Timings behind design choices"). Under a JAX trace
    (`jax.eval_shape`, `jit`) it is traced as usual."""
    backend = backend_of(key)
    checks.check_compute_dtype(cfg, backend)
    if backend.name == "jax" and backend.is_concrete(key):
        host_params = families.model_of(cfg).init(backend.to_numpy(key))
        return backend.tree_asarray(host_params)
    return families.model_of(cfg).init(backend.asarray(key))


@with_x64_scope
def apply(params: dict, src, tgt_in, cfg: TransformerConfig, train: bool = False, key=None):
    """src (B, S), tgt_in (B, T) integer -> logits (B, T, V_tgt). Dropout only with train=True and a key."""
    backend, a = checks.prepare_inputs(params, cfg, train, key, src=src, tgt_in=tgt_in)
    return backend.jit(_apply, static_argnames=("cfg", "train"))(params, a["src"], a["tgt_in"], cfg, train, key)


@with_x64_scope
def encode(params: dict, src, cfg: TransformerConfig, train: bool = False, key=None):
    """src (B, S) -> memory (B, S, d_model): the encoder alone."""
    backend, a = checks.prepare_inputs(params, cfg, train, key, src=src)
    return backend.jit(_encode, static_argnames=("cfg", "train"))(params, a["src"], cfg, train, key)


@with_x64_scope
def decode(params: dict, memory, src, tgt_in, cfg: TransformerConfig, train: bool = False, key=None):
    """tgt_in (B, T) over memory (B, S, d_model) of src (B, S) -> logits (B, T, V_tgt): the decoder
    alone, teacher-forced (generation is in generate.py)."""
    backend, a = checks.prepare_inputs(params, cfg, train, key, src=src, tgt_in=tgt_in)
    memory = backend.asarray(memory)
    if memory.shape != (*a["src"].shape, cfg.d_model):
        raise ValueError(
            f"memory has shape {tuple(memory.shape)}, expected (batch, src_len, d_model) = "
            f"{(*a['src'].shape, cfg.d_model)}; make it with ft.encode(params, src, cfg)"
        )
    return backend.jit(_decode, static_argnames=("cfg", "train"))(
        params, memory, a["src"], a["tgt_in"], cfg, train, key
    )


def _prepare_batch(params, batch, cfg: TransformerConfig, train, key):
    missing = {"src", "tgt_in", "tgt_out"} - set(batch)
    if missing:
        raise ValueError(f"batch is missing {sorted(missing)}: it needs integer arrays 'src', 'tgt_in' and 'tgt_out'")
    backend, a = checks.prepare_inputs(
        params, cfg, train, key, src=batch["src"], tgt_in=batch["tgt_in"], tgt_out=batch["tgt_out"]
    )
    if a["tgt_in"].shape != a["tgt_out"].shape:
        raise ValueError(
            f"tgt_in {tuple(a['tgt_in'].shape)} and tgt_out {tuple(a['tgt_out'].shape)} must have one shape"
        )
    return backend, a


@with_x64_scope
def grad_and_metrics(
    params: dict,
    batch: dict,
    cfg: TransformerConfig,
    train: bool = False,
    key=None,
    label_smoothing: float = 0.1,
    method: str | None = None,
):
    """-> (grads, metrics) with metrics {"loss", "n_tokens", "accuracy"}; what the training step uses.

    method: "vjp" (hand-written VJPs, the only one on NumPy; under jit on JAX) or "autodiff"
    (jax.grad, JAX only). None picks "vjp" on NumPy and "autodiff" on JAX.
    """
    backend, a = _prepare_batch(params, batch, cfg, train, key)
    method = method or default_grad_method(backend)
    fn = gradients.grad_function(method)
    checks.check_compute_dtype(cfg, backend, method)
    if method == "autodiff" and backend.name != "jax":
        raise ValueError(f"method='autodiff' needs the JAX backend (params are on {backend.name}); use method='vjp'")
    return backend.jit(fn, static_argnames=("cfg", "train", "label_smoothing"))(
        params, a, cfg, train, key, float(label_smoothing)
    )


def loss_and_grad(
    params: dict,
    batch: dict,
    cfg: TransformerConfig,
    train: bool = False,
    key=None,
    label_smoothing: float = 0.1,
    method: str | None = None,
):
    """-> (loss, grads); grads has exactly the structure of params. See grad_and_metrics for `method`."""
    grads, metrics = grad_and_metrics(params, batch, cfg, train, key, label_smoothing, method)
    return metrics["loss"], grads


@with_x64_scope
def loss_and_metrics(
    params: dict, batch: dict, cfg: TransformerConfig, train: bool = False, key=None, label_smoothing: float = 0.1
):
    """-> metrics {"loss", "n_tokens", "accuracy"} of one batch, without gradients."""
    backend, a = _prepare_batch(params, batch, cfg, train, key)
    return backend.jit(gradients.batch_metrics, static_argnames=("cfg", "train", "label_smoothing"))(
        params, a, cfg, train, key, float(label_smoothing)
    )


def loss_fn(
    params: dict, batch: dict, cfg: TransformerConfig, train: bool = False, key=None, label_smoothing: float = 0.1
):
    """The scalar loss of one batch (label-smoothed cross-entropy over real target tokens)."""
    return loss_and_metrics(params, batch, cfg, train, key, label_smoothing)["loss"]


__all__ = [
    "init",
    "apply",
    "encode",
    "decode",
    "loss_fn",
    "loss_and_grad",
    "grad_and_metrics",
    "loss_and_metrics",
    "default_grad_method",
]
