"""Training: the optimizer from a TrainConfig, a pure train step, and the loop around it; the loop
writes the run's files (metrics, checkpoints, curves) through run_writer.RunWriter.

The train step is a pure function `(state, batch, key) -> (state, metrics)`, where state is
{"params", "opt_state", "step"} and key is the run's dropout key (the step folds in its own step
count, so step k always draws the same masks). On JAX the whole step (forward, backward,
optimizer) is one jitted function whose old state is donated.

The loop (`run_loop`) adds what a person training wants: a progress line (loss, token accuracy,
tokens/s, ETA), evaluation on the held-out set, metrics as JSON lines, a PNG of the curves, the last
checkpoint every `save_every` steps, at the end and on Ctrl-C, and the best one (by the held-out
metric `best_by`, exact match unless told otherwise) at each evaluation that improves it; a NaN or
inf loss stops the run and keeps the last good checkpoint. Callbacks see every logged record and may stop the run; `patience` stops it after that
many evaluations without improvement. Batch k is a pure function of (seed, k), so resuming is exact;
that holds for both batchings: `batch_size` examples padded to the longest, or (`max_tokens`)
batches of about max_tokens padded tokens from examples of similar length (data.token_batch_plans).
Each training record carries `pad_fraction`, the share of the batches' token slots that is padding.

The public entry point, with run folders, resume rules and data loading, is `runs.fit` (`ft.fit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backends import Backend, JaxBackend, backend_of
from backends import prng as ftrandom
from backends.tree import tree_map as backend_tree_map

from . import api, checks, families, gradients, inference, optim, parallel
from .checkpoint import ModelConfig
from .config import (  # noqa: F401  (re-exported: train.TrainConfig and its constants keep working)
    BEST_BY,
    OPTIMIZERS,
    USER_OPTIMIZER,
    TrainConfig,
    user_optimizer,
)
from .data import (
    BatchPlan,
    EncodedPair,
    Tokenizer,
    fixed_batch_plans,
    plan_batch,
    plan_counts,
    token_batch_plans,
    token_buckets,
)
from .errors import ConfigError
from .metrics import MISSING_NOTE, TEXT_METRICS, require_sacrebleu, sacrebleu_available
from .run_writer import RunWriter, SaveFailed  # noqa: F401  (re-exported: train.SaveFailed)

# A run whose training loss stays above DIVERGED_FACTOR x its starting value (the larger of its first
# step's loss and ln(target vocabulary), the loss of a uniform guess) for DIVERGED_STEPS steps in a
# row is diverging, though the loss is finite: it stops (TrainingDiverged) and is never saved as best.
DIVERGED_FACTOR = 4.0
DIVERGED_STEPS = 10


def make_schedule(tcfg: TrainConfig, cfg: ModelConfig) -> optim.Schedule:
    """The learning rate at each update count. The cosine schedule runs from `schedule_start` to
    `steps`: a run that was extended restarts it there (warmup, then decay to 0 at the new end);
    the other two schedules have no horizon, so an extended run simply continues them. (Steps
    before `schedule_start` were taken under the earlier schedule, which is done with.)"""
    if tcfg.schedule == "transformer":
        return optim.transformer_schedule(cfg.d_model, tcfg.warmup_steps, scale=tcfg.learning_rate)
    if tcfg.schedule == "constant":
        return optim.constant(tcfg.learning_rate)
    horizon = tcfg.steps - tcfg.schedule_start
    cosine = optim.warmup_cosine(tcfg.learning_rate, tcfg.warmup_steps, max(horizon, tcfg.warmup_steps + 1))
    start = tcfg.schedule_start
    return cosine if start == 0 else (lambda count: cosine(count - start))


def check_optimizer(tcfg: TrainConfig, backend: Backend) -> None:
    """A ConfigError unless tcfg's optimizer can train on `backend`."""
    if tcfg.optimizer == USER_OPTIMIZER:
        raise ConfigError(
            f"optimizer={USER_OPTIMIZER!r} is what a checkpoint records of an optax optimizer, which it "
            "cannot hold: pass the GradientTransformation itself (to resume: the run's own, again)"
        )
    if user_optimizer(tcfg) and backend.name != "jax":
        raise ConfigError(
            f"an optax optimizer needs the JAX backend (FT_BACKEND=jax); on {backend.name}, choose one of {OPTIMIZERS}"
        )


def make_optimizer(tcfg: TrainConfig, cfg: ModelConfig) -> optim.GradientTransformation:
    """The optimizer of `tcfg`, with its schedule and clipping (a user's optax optimizer as it is)."""
    if user_optimizer(tcfg):
        return tcfg.optimizer
    schedule = make_schedule(tcfg, cfg)
    if tcfg.optimizer == "adam":
        base = optim.adam(schedule)
    elif tcfg.optimizer == "adamw":
        base = optim.adamw(schedule, weight_decay=tcfg.weight_decay)
    else:
        base = optim.sgd(schedule, momentum=0.9)
    if tcfg.clip_norm > 0:
        return optim.chain(optim.clip_by_global_norm(tcfg.clip_norm), base)
    return base


def restore_opt_state(optimizer, params, stored, backend: Backend):
    """The optax state of `optimizer` from its stored leaves (storable_opt_state); a ConfigError when
    they do not fit that optimizer's state (another optimizer than the run's)."""
    if not isinstance(backend, JaxBackend):
        raise ConfigError(f"an optax optimizer's state needs the JAX backend (FT_BACKEND=jax), not {backend.name}")
    jax = backend.jax
    fresh = optimizer.init(params)
    fresh_leaves, treedef = jax.tree_util.tree_flatten(fresh)
    if "optax_leaf_count" not in stored:
        raise ConfigError(
            "this run was trained with a built-in optimizer, not an optax one; resume it without "
            "optimizer=, or start a new run (--overwrite)"
        )
    count = int(np.asarray(stored["optax_leaf_count"]))
    leaves = [stored.get("optax_leaves", {})[f"{i:05d}"] for i in range(count)]
    shapes = [(tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves]
    expected = [(tuple(np.shape(leaf)), str(jax.numpy.asarray(leaf).dtype)) for leaf in fresh_leaves]
    if shapes != expected:
        raise ConfigError(
            f"the optimizer given does not fit the run's saved optimizer state ({count} arrays saved, "
            f"{len(fresh_leaves)} in this optimizer's state, or their shapes differ): resume with the "
            "optimizer the run was trained with"
        )
    return jax.tree_util.tree_unflatten(treedef, [backend.asarray(leaf) for leaf in leaves])


def current_learning_rate(tcfg: TrainConfig, cfg: ModelConfig, opt_state, step: int) -> float | None:
    """The learning rate of the update that made `step`: the built-in schedule's, or an optax state's
    injected "learning_rate" (optax.inject_hyperparams); None where an optax optimizer does not say."""
    if not user_optimizer(tcfg):
        return float(make_schedule(tcfg, cfg)(np.asarray(step - 1, dtype=np.int32)))
    pending = [opt_state]
    while pending:  # optax states nest as tuples and named tuples
        node = pending.pop(0)
        hyperparams = getattr(node, "hyperparams", None)
        if isinstance(hyperparams, dict) and "learning_rate" in hyperparams:
            return float(np.asarray(hyperparams["learning_rate"]))
        if isinstance(node, (tuple, list)):
            pending.extend(node)
    return None


def check_best_by(tcfg: TrainConfig, cfg: ModelConfig | None = None) -> None:
    """A best_by that the model's family does not measure, or that needs sacreBLEU where it is not
    installed, is an error saying what to choose or how to install it."""
    if cfg is not None and tcfg.best_by is not None:  # None: the family's default, which it measures
        families.check_best_by(tcfg.best_by, cfg)
    if tcfg.best_by in TEXT_METRICS:
        require_sacrebleu(f"best_by={tcfg.best_by!r} (--best-by {tcfg.best_by})")


def with_best_by(tcfg: TrainConfig, cfg: ModelConfig) -> TrainConfig:
    """tcfg with its best_by chosen: the model family's default where it is None."""
    return tcfg if tcfg.best_by is not None else dataclasses.replace(tcfg, best_by=families.default_best_by(cfg))


def is_better(value: float, best: float | None, best_by: str) -> bool:
    """Whether held-out `value` of the metric `best_by` beats the best so far (None: nothing yet)."""
    return best is None or (value < best if BEST_BY[best_by] == "min" else value > best)


def init_state(key, cfg: ModelConfig, optimizer) -> dict:
    """{"params", "opt_state", "step"} for a fresh run; params drawn from `key`. No x64 scope of its own:
    api.init and the optimizer's init carry theirs, and the step counter is an int32."""
    params = api.init(key, cfg)
    xp = backend_of(params).xp
    return {"params": params, "opt_state": optimizer.init(params), "step": xp.asarray(0, dtype=xp.int32)}


def make_train_step(
    cfg: ModelConfig,
    tcfg: TrainConfig,
    optimizer,
    backend: Backend,
    *,
    mesh=None,
    state=None,
    shard_params: bool = False,
) -> Callable:
    """The pure step `(state, batch, key) -> (state, metrics)`, jitted (state donated) on JAX.

    With a device mesh (parallel.make_mesh) the same step is jitted with the shardings of
    parallel.jit_step: batch rows split over the devices, the state (shaped like `state`)
    replicated, or its matrices split with shard_params; XLA adds the collectives."""
    method = tcfg.grad_method or gradients.default_grad_method(backend)
    checks.check_compute_dtype(cfg, backend, method)
    grad_fn = gradients.grad_vjp if method == "vjp" else gradients.grad_autodiff
    train = cfg.drop_rate > 0

    def train_step(state, batch, key):
        dropout_key = ftrandom.fold_in(key, state["step"]) if train else None
        grads, metrics = grad_fn(state["params"], batch, cfg, train, dropout_key, tcfg.label_smoothing)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        metrics = dict(metrics, grad_norm=optim.global_norm(grads))
        new_state = {
            "params": optim.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }
        return new_state, metrics

    if mesh is not None:
        return backend.in_x64_scope(parallel.jit_step(train_step, mesh, state, shard_params))
    if isinstance(backend, JaxBackend):
        return backend.in_x64_scope(backend.jax.jit(train_step, donate_argnames=("state",)))
    return train_step


def make_accumulating_step(cfg: ModelConfig, tcfg: TrainConfig, optimizer, backend: Backend) -> Callable:
    """The step `(state, micro_batches, key) -> (state, metrics)` of tcfg.accumulate_steps micro-batches:
    each one's gradient, weighted by its real target tokens, summed, then one update, which is the
    update of the micro-batches as one batch (the loss is a mean over target tokens). On JAX the
    micro-batch gradient and the update are each one jitted function; micro-batch i of step k draws
    its dropout masks from fold_in(fold_in(key, k), i)."""
    method = tcfg.grad_method or gradients.default_grad_method(backend)
    checks.check_compute_dtype(cfg, backend, method)
    grad_fn = gradients.grad_vjp if method == "vjp" else gradients.grad_autodiff
    train = cfg.drop_rate > 0
    tree_map = backend.jax.tree_util.tree_map if isinstance(backend, JaxBackend) else backend_tree_map

    def add_micro_batch(params, sums, batch, key, step, index):
        dropout_key = ftrandom.fold_in(ftrandom.fold_in(key, step), index) if train else None
        grads, metrics = grad_fn(params, batch, cfg, train, dropout_key, tcfg.label_smoothing)
        n_tokens = metrics["n_tokens"]  # an int32 array on either backend
        return {
            "grads": tree_map(lambda total, grad: total + grad * n_tokens.astype(grad.dtype), sums["grads"], grads),
            "loss": sums["loss"] + metrics["loss"] * n_tokens,
            "correct": sums["correct"] + metrics["accuracy"] * n_tokens,
            "n_tokens": sums["n_tokens"] + n_tokens,
        }

    def update(state, sums):
        n_tokens = sums["n_tokens"]
        denominator = backend.xp.maximum(n_tokens, backend.xp.asarray(1, dtype=n_tokens.dtype))  # as loss.fwd's
        grads = tree_map(lambda grad: grad / denominator.astype(grad.dtype), sums["grads"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        metrics = {
            "loss": sums["loss"] / denominator,
            "accuracy": sums["correct"] / denominator,
            "n_tokens": n_tokens,
            "grad_norm": optim.global_norm(grads),
        }
        return {
            "params": optim.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "step": state["step"] + 1,
        }, metrics

    def zero_sums(params):
        xp = backend.xp
        return {
            "grads": tree_map(xp.zeros_like, params),
            "loss": xp.asarray(0.0, dtype=xp.float64),
            "correct": xp.asarray(0.0, dtype=xp.float64),
            "n_tokens": xp.asarray(0, dtype=xp.int32),
        }

    if isinstance(backend, JaxBackend):  # (zero_sums too: eager, each leaf shape would compile a program of its own)
        zero_sums = backend.in_x64_scope(backend.jax.jit(zero_sums))
        add_micro_batch = backend.in_x64_scope(backend.jax.jit(add_micro_batch, donate_argnames=("sums",)))
        update = backend.in_x64_scope(backend.jax.jit(update, donate_argnames=("state",)))

    def accumulating_step(state, micro_batches, key):
        xp = backend.xp
        sums = zero_sums(state["params"])
        for index, batch in enumerate(micro_batches):
            sums = add_micro_batch(state["params"], sums, batch, key, state["step"], xp.asarray(index, dtype=xp.int32))
        return update(state, sums)

    return backend.in_x64_scope(accumulating_step) if backend.name == "jax" else accumulating_step


def all_finite(tree, backend: Backend) -> bool:
    # Checked on the host, where the checkpoint that follows copies the tree anyway: on JAX an
    # eager isfinite per leaf shape compiles a small program each (timed in
    # docs/benchmarks.md, "Timings behind design choices").
    return all(np.isfinite(leaf).all() for leaf in backend.tree_leaves(backend.tree_to_numpy(tree)))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


Callback = Callable[[int, dict], object]
"""`callback(step, record)` after each logged training record and each held-out evaluation; record
is the metrics dict ("split" is "train" or "valid"). A truthy return stops the run after that step
(saved as at the end: last checkpoint, curves); the summary's "stopped" is then "callback"."""


@dataclasses.dataclass
class Run:
    """Everything the loop needs besides the state: data, vocabulary, where to write (None: nowhere)."""

    cfg: ModelConfig
    tcfg: TrainConfig
    tokenizer: Tokenizer
    train_examples: list[EncodedPair]
    valid_pairs: list[tuple[str, str]]
    out_dir: Path | None
    data_spec: dict
    backend: Backend
    eval_examples: int = 500
    progress: bool = True
    callbacks: Sequence[Callback] = ()
    # A device mesh (parallel.make_mesh; None: one device) and whether to shard the state over it.
    mesh: object = None
    shard_params: bool = False
    # What fitting the data to the model's max_len did (run_data.fit_data): logged once as the "data" record.
    data_report: dict | None = None
    # A classifier's class names (class id i is labels[i]); None for the other families.
    labels: list[str] | None = None


def batch_plans(run: Run, start_step: int) -> Iterator[BatchPlan]:
    """The run's global batches from start_step: batch_size examples padded to the longest (rounded
    up to 8), or with max_tokens, token-budget batches from length buckets."""
    tcfg = run.tcfg
    if tcfg.max_tokens:
        return token_batch_plans(run.train_examples, tcfg.max_tokens, tcfg.seed, start_step, max_len=run.cfg.max_len)
    return fixed_batch_plans(
        run.train_examples, tcfg.batch_size, tcfg.seed, start_step, pad_to_multiple=8, max_len=run.cfg.max_len
    )


def check_batches_split(run: Run, mesh) -> None:
    """An error naming the fix unless every global batch's rows split evenly over the mesh's devices."""
    if run.tcfg.max_tokens:
        token_buckets(run.train_examples, run.tcfg.max_tokens, run.cfg.max_len).check_split(parallel.device_count(mesh))
    else:
        parallel.check_batch_size(run.tcfg.batch_size, mesh)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _progress_line(step, total, loss, accuracy, tokens_per_s, elapsed, start_step=0) -> str:
    done = step / total
    bar = "#" * int(20 * done) + "-" * (20 - int(20 * done))
    # This session's pace: a resumed run has done only step - start_step steps in `elapsed`.
    eta = elapsed * (total - step) / max(step - start_step, 1)
    return f"[{bar}] {step}/{total} loss {loss:.4f} acc {accuracy:.3f} {tokens_per_s:,.0f} tok/s eta {_format_eta(eta)}"


def fresh_progress() -> dict:
    """The loop's own state beside the model's: the best held-out value of the metric `best_by` so
    far ("best_value"), the step it was reached at, the exact match there ("best_exact_match": the
    best exact match when best_by is exact_match), and evaluations since then (for patience). Saved
    in every checkpoint, so a resumed run keeps its best checkpoint and its patience count."""
    return {"best_value": None, "best_exact_match": None, "best_step": None, "evals_since_best": 0}


@contextlib.contextmanager
def _recorded_numpy_warnings(backend: Backend) -> Iterator[list]:
    """The warnings raised inside, recorded instead of shown (every RuntimeWarning, not once per
    place), on NumPy; on JAX, which does not warn about overflow, nothing is caught."""
    if backend.name != "numpy":
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        yield caught


class DivergenceWatch:
    """Whether a finite training loss is diverging: above DIVERGED_FACTOR x its reference (the larger
    of the first loss seen and ln(target vocabulary), the loss of a uniform guess) for DIVERGED_STEPS
    steps in a row. A freshly initialised model starts near ln(vocabulary) and a healthy run only
    goes down from there, so a loss several times that for many steps is a run that blew up."""

    def __init__(self, vocab_size: int):
        self.uniform_loss = math.log(max(vocab_size, 2))
        self.reference: float | None = None
        self.steps_above = 0

    def update(self, loss: float) -> bool:
        """Take one step's loss -> whether it is above the bound (so the state is not a good one)."""
        if self.reference is None:
            self.reference = max(loss, self.uniform_loss)
        above = loss > DIVERGED_FACTOR * self.reference
        self.steps_above = self.steps_above + 1 if above else 0
        return above

    @property
    def diverged(self) -> bool:
        return self.steps_above >= DIVERGED_STEPS


def _start(
    run: Run, tcfg: TrainConfig, state: dict | None, key
) -> tuple[dict, object, Callable[..., tuple[dict, dict]]]:
    """(state, key, step function) of a run about to train: a fresh state where none is given, an optax
    state put back from its stored leaves, and the state placed on the mesh where the run has one."""
    cfg, backend, mesh = run.cfg, run.backend, run.mesh
    check_best_by(tcfg, cfg)
    check_optimizer(tcfg, backend)
    optimizer = make_optimizer(tcfg, cfg)
    if state is None:
        init_key, key = ftrandom.split(backend.random.key(tcfg.seed), 2)
        state = init_state(init_key, cfg, optimizer)
    elif user_optimizer(tcfg):  # a checkpoint holds an optax state as its leaves
        state = dict(state, opt_state=restore_opt_state(optimizer, state["params"], state["opt_state"], backend))
    if mesh is not None and tcfg.accumulate_steps > 1:
        raise ConfigError(
            "accumulate_steps (--accumulate) does not combine with several devices yet: split a larger "
            "--batch-size over the devices instead"
        )
    if mesh is not None:
        check_batches_split(run, mesh)
        state = parallel.place_state(state, mesh, run.shard_params)
        key = parallel.place_replicated(key, mesh)
    if tcfg.accumulate_steps > 1:
        return state, key, make_accumulating_step(cfg, tcfg, optimizer, backend)
    sharded = {} if mesh is None else {"mesh": mesh, "state": state, "shard_params": run.shard_params}
    return state, key, make_train_step(cfg, tcfg, optimizer, backend, **sharded)


def _batches(run: Run, start_step: int, pad_id: int) -> Iterator[tuple[list[BatchPlan], object]]:
    """Each step's plans and its batch on the backend (a list of accumulate_steps micro-batches when
    accumulating). With many processes each builds only its own rows of every global batch; with
    accumulation, step k takes micro-batches k * n_micro ... k * n_micro + n_micro - 1. The plans are
    made (and a setting that cannot batch the data refused) now, before the loop writes anything."""
    cfg, backend, mesh, n_micro = run.cfg, run.backend, run.mesh, run.tcfg.accumulate_steps
    plans, rank, n_processes = (
        batch_plans(run, start_step * n_micro),
        parallel.process_index(),
        parallel.process_count(),
    )

    def steps() -> Iterator[tuple[list[BatchPlan], object]]:
        while True:
            step_plans = [next(plans) for _ in range(n_micro)]
            batches = []
            for plan in step_plans:
                host_batch = plan_batch(run.train_examples, plan, pad_id, rank, n_processes)
                families.check_batch(host_batch, cfg, backend)
                batches.append(
                    parallel.put_batch(host_batch, mesh) if mesh is not None else backend.tree_asarray(host_batch)
                )
            yield step_plans, (batches if n_micro > 1 else batches[0])

    return steps()


def _check_loss(loss: float, step: int, numeric_warnings: list, divergence: DivergenceWatch, last_saved) -> bool:
    """TrainingDiverged where the loss is not finite or has diverged -> whether it is above the
    divergence bound (a state not to save). NumPy's overflow warnings of a step that blows up are
    folded into the error; a step whose loss stays finite shows them as usual. (JAX does not warn.)"""
    kept = f"The last good checkpoint ({last_saved or 'none was saved yet'}) is kept"
    if not math.isfinite(loss):
        folded = (
            f" (NumPy warned on the way: {numeric_warnings[0].message}"
            f"{f', and {len(numeric_warnings) - 1} more' if len(numeric_warnings) > 1 else ''})"
            if numeric_warnings
            else ""
        )
        raise TrainingDiverged(
            f"the loss became {loss} at step {step}{folded}; training stopped. {kept}. "
            "Try a lower --learning-rate or --clip-norm."
        )
    for caught in numeric_warnings:
        warnings.warn(caught.message, stacklevel=3)
    diverging = divergence.update(loss)
    if divergence.diverged:
        raise TrainingDiverged(
            f"the training loss stayed above {DIVERGED_FACTOR:g} x its starting value "
            f"({divergence.reference:.4g}) for {DIVERGED_STEPS} steps in a row (now {loss:.4g} at step {step}): "
            f"the run diverged; training stopped. {kept}, and best.safetensors is never a diverging state. "
            "Try a lower --learning-rate."
        )
    return diverging


class _Window:
    """Target tokens, filled token slots (source + decoder) and all token slots of the global
    batches since the last training record, from the examples' lengths (a process may hold only its rows)."""

    def __init__(self):
        self.tokens, self.filled, self.slots, self.t0 = 0, 0, 0, time.perf_counter()

    def add(self, run: Run, step_plans: list[BatchPlan]) -> None:
        for plan in step_plans:
            tokens, filled, slots = plan_counts(run.train_examples, plan)
            self.tokens, self.filled, self.slots = self.tokens + tokens, self.filled + filled, self.slots + slots


def _train_record(run: Run, tcfg: TrainConfig, state: dict, metrics: dict, step: int, window: _Window, t_start) -> dict:
    """The logged training record of `step` (tokens/s and pad_fraction over the window since the last)."""
    now = time.perf_counter()
    record = {
        "step": step,
        "split": "train",
        "loss": float(metrics["loss"]),
        "accuracy": float(metrics["accuracy"]),
        "grad_norm": float(metrics["grad_norm"]),
        "tokens_per_s": window.tokens / max(now - window.t0, 1e-9),
        "pad_fraction": 1 - window.filled / window.slots,
        "time_s": now - t_start,
    }
    learning_rate = current_learning_rate(tcfg, run.cfg, state["opt_state"], step)
    if learning_rate is not None:
        record["learning_rate"] = learning_rate
    return record


def _evaluate(
    run: Run, tcfg: TrainConfig, state: dict, key, step: int, progress: dict, ctx: dict
) -> tuple[dict, str | None]:
    """Evaluate on the held-out examples, save best.safetensors where `best_by` improved (and the state is
    finite and not diverging), log the result -> (progress, "callback" / "patience" / None)."""
    backend, host, writer = run.backend, ctx["host"], ctx["writer"]
    # Sharded params are gathered to one device: each process evaluates the same whole model.
    eval_params = backend.tree_asarray(host(state["params"])) if run.mesh is not None else state["params"]
    at_step = f"eval @ {step}" if run.progress else False
    result = inference.held_out_metrics(
        eval_params, run.cfg, run.tokenizer, ctx["valid"], labels=run.labels, progress=at_step
    )
    if run.progress:
        print(f"eval @ {step}: {families.describe_result(result)}", file=sys.stderr, flush=True)
    ctx["summary"]["valid"] = result
    best_by = tcfg.best_by or families.default_best_by(run.cfg)  # run_loop's tcfg has it chosen already
    value = result[best_by]
    if (
        is_better(value, progress["best_value"], best_by)
        and not ctx["diverging"]
        and all_finite(host(state["params"]), backend)
    ):
        # Recorded only once best.safetensors holds it, so the two never disagree.
        improved = dict(
            progress, best_value=value, best_exact_match=result.get("exact_match"), best_step=step, evals_since_best=0
        )
        writer.save(state, key, improved, "best")
        progress = improved
    else:
        progress = dict(progress, evals_since_best=progress["evals_since_best"] + 1)
    logged = {name: value for name, value in result.items() if name != "confusion"}
    stop = "callback" if writer.log({"step": step, "split": "valid", **logged, "time_s": ctx["elapsed"]()}) else None
    if tcfg.patience and progress["evals_since_best"] >= tcfg.patience and step < tcfg.steps:
        if run.progress:
            print(
                f"no better {best_by} in {tcfg.patience} evaluations (best "
                f"{progress['best_value']:.4f} at step {progress['best_step']}): stopping",
                file=sys.stderr,
                flush=True,
            )
        stop = stop or "patience"
    return progress, stop


def run_loop(run: Run, state: dict | None = None, key=None, progress: dict | None = None) -> dict:
    """Train from `state` (a fresh one when None) to run.tcfg.steps.

    -> {"state", "key", "progress", "history" (this call's records), "summary"}; summary["stopped"]
    is "finished", "interrupted" (Ctrl-C), "callback" or "patience"."""
    cfg, tcfg, backend, mesh = run.cfg, with_best_by(run.tcfg, run.cfg), run.backend, run.mesh
    state, key, step_fn = _start(run, tcfg, state, key)
    progress = dict(progress or fresh_progress())
    # A progress record without best_value holds only best_exact_match, which is what chose its best.
    progress.setdefault("best_value", progress["best_exact_match"])
    start_step = step = int(backend.to_numpy(state["step"]))

    def host(tree):
        # Sharded arrays gathered to NumPy (a collective with many processes: every one calls it).
        return parallel.to_host(tree) if mesh is not None else tree

    # Before the writer touches the run folder: no pad id, or data that cannot be batched, is no run.
    batches = _batches(run, start_step, families.pad_id_of(cfg))
    writer = RunWriter(run, tcfg, start_step, host)
    valid = run.valid_pairs[: run.eval_examples]
    if valid and run.progress and families.arch_of(cfg) == "encoder_decoder" and not sacrebleu_available():
        print(f"held-out evaluations: {MISSING_NOTE}", file=sys.stderr, flush=True)
    t_start = time.perf_counter()
    window = _Window()
    summary: dict[str, Any] = {"stopped": "finished"}
    ctx = {"host": host, "writer": writer, "valid": valid, "summary": summary}
    ctx["elapsed"] = lambda: time.perf_counter() - t_start
    divergence = DivergenceWatch(families.n_outputs(cfg))
    try:
        while step < tcfg.steps:
            step_plans, batch = next(batches)
            # Rebind at once: on JAX the old state's buffers are donated to the step, so a Ctrl-C
            # while waiting for the loss below must find (and save) the new state, not the old.
            with _recorded_numpy_warnings(backend) as numeric_warnings:
                state, metrics = step_fn(state, batch, key)
                if mesh is not None:  # replicated scalars: this process's own copy, no collective
                    metrics = {name: np.asarray(value.addressable_data(0)) for name, value in metrics.items()}
                loss = float(metrics["loss"])
            step += 1
            ctx["diverging"] = _check_loss(loss, step, numeric_warnings, divergence, writer.last_saved)
            window.add(run, step_plans)
            stop = None
            if step % tcfg.log_every == 0 or step == tcfg.steps:
                record = _train_record(run, tcfg, state, metrics, step, window, t_start)
                stop = "callback" if writer.log(record) else None
                if run.progress:
                    line = _progress_line(
                        step, tcfg.steps, loss, record["accuracy"], record["tokens_per_s"], record["time_s"], start_step
                    )
                    print(line, file=sys.stderr, flush=True)
                window = _Window()
            if (step % tcfg.eval_every == 0 or step == tcfg.steps) and valid:
                progress, eval_stop = _evaluate(run, tcfg, state, key, step, progress, ctx)
                stop = stop or eval_stop
            if step % tcfg.save_every == 0 and not ctx["diverging"] and all_finite(host(state["params"]), backend):
                writer.save(state, key, progress)
            if stop:
                summary["stopped"] = stop
                break
    except KeyboardInterrupt:
        summary["stopped"] = "interrupted"
        print(f"\ninterrupted at step {step}: saving a checkpoint", file=sys.stderr)
    except TrainingDiverged:
        with contextlib.suppress(Exception):  # the curves show the blow-up; the error is what matters
            writer.plot()
        raise
    except SaveFailed:
        raise
    except Exception:
        _save_what_was_done(run, writer, state, key, progress)
        raise
    _finish(run, writer, state, key, progress, summary)
    summary.update(
        step=int(np.asarray(host(state["step"]))),
        checkpoint=str(writer.last_saved) if writer.last_saved else None,
        seconds=time.perf_counter() - t_start,
        **progress,
    )
    return {"state": state, "key": key, "progress": progress, "history": writer.history, "summary": summary}


def _save_what_was_done(run: Run, writer: RunWriter, state: dict, key, progress: dict) -> None:
    # A callback, an evaluation or the metrics file failed: keep the steps done so far, then the
    # caller reports the error. (Best effort: on JAX a step that failed may have consumed the state;
    # with many processes gathering the state is a collective the others would not join.)
    try:
        if parallel.process_count() == 1 and all_finite(writer.host(state["params"]), run.backend):
            writer.save(state, key, progress)
    except Exception:
        pass


def _finish(run: Run, writer: RunWriter, state: dict, key, progress: dict, summary: dict) -> None:
    """The last checkpoint and the curves at the end of a run. A Ctrl-C while they are written:
    finish them (once more); a second Ctrl-C there gives up."""
    for attempt in range(2):
        try:
            if all_finite(writer.host(state["params"]), run.backend):
                writer.save(state, key, progress)
            writer.plot()
            break
        except KeyboardInterrupt:
            summary["stopped"] = "interrupted"
            if attempt:
                raise
            print("\ninterrupted while writing the checkpoint and curves: finishing them", file=sys.stderr)
