"""Optimisers as pure functions, in the style of optax, on any backend (NumPy or JAX).

The contract:
- An optimiser is a `GradientTransformation(init, update)`:
      state = init(params)
      updates, state = update(grads, state, params)
      params = apply_updates(params, updates)
  `params`, `grads` and `updates` are trees (nested dicts of arrays) of one structure and shape.
  `update` returns the step to *add* to the params: the minus sign of descent is already in it.
- States are nested dicts of arrays, nothing else (no tuples, no Python numbers), so they pass
  through `jax.jit`, `backend.tree_asarray` and the checkpoint files (`checkpoint_format.save_tree`)
  like params do. Step counts are int32 arrays; a chain leaves out the states of its stateless
  parts, so that a state survives a checkpoint round trip unchanged.
- Everything is pure: nothing is mutated, and `update` never reads array values into Python, so it
  runs unchanged under `jax.jit`. The array namespace is taken from the arrays handed in.
- Dtypes are kept: float32 params give float32 updates and float32 state. Hyperparameters are Python
  numbers; learning rates and schedule values are cast to each leaf's dtype where applied.
- Grads whose structure or shapes differ from the params (or from the params the state was made
  from) raise a ValueError that names the first place they differ.
- `sgd`, `adam` and `adamw` compute what `optax.sgd`, `optax.adam` and `optax.adamw` compute with the
  same hyperparameters (`adam`/`adamw` default to the paper's b1=0.9, b2=0.98, eps=1e-9).
- A schedule is a function `count -> learning rate` of the number of updates already made (0 for
  the first update, as in optax), evaluated on the int32 count array; see `schedules`.
"""

from .schedules import Schedule, constant, transformer_schedule, warmup_cosine
from .transforms import (
    GradientTransformation,
    adam,
    adamw,
    add_decayed_weights,
    apply_updates,
    chain,
    clip_by_global_norm,
    global_norm,
    identity,
    scale_by_adam,
    scale_by_learning_rate,
    sgd,
    trace,
)

__all__ = [
    "GradientTransformation",
    "Schedule",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "chain",
    "clip_by_global_norm",
    "constant",
    "global_norm",
    "identity",
    "scale_by_adam",
    "scale_by_learning_rate",
    "sgd",
    "trace",
    "transformer_schedule",
    "warmup_cosine",
]
