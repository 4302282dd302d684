"""Learning-rate schedules: functions `count -> learning rate`.

`count` is the number of updates already made (0 for the first update, as in optax), an integer
array of any shape or a Python int. The result is a float64 array of the same shape in the count's
array namespace, with no Python control flow on its values, so a schedule runs under `jax.jit`;
`scale_by_learning_rate` casts it to each leaf's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from backends import array_namespace, with_x64_scope

Schedule = Callable[[Any], Any]

__all__ = ["Schedule", "constant", "transformer_schedule", "warmup_cosine"]


def _as_float64(count: Any) -> tuple[ModuleType, Any]:
    xp = np if isinstance(count, (int, float)) else array_namespace(count)
    return xp, xp.asarray(count, dtype=xp.float64)


def constant(value: float) -> Schedule:
    """The schedule that is `value` at every count."""
    value = float(value)

    @with_x64_scope
    def schedule(count):
        xp, count = _as_float64(count)
        return xp.full_like(count, value)

    return schedule


def transformer_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> Schedule:
    """The schedule of "Attention Is All You Need" (eq. 3), times `scale`:

        scale * d_model**-0.5 * min(step_num**-0.5, step_num * warmup_steps**-1.5)

    with step_num = count + 1, the paper's step counted from 1, so the first update is made at
    step_num 1 and the peak, scale * (d_model * warmup_steps)**-0.5, at step_num == warmup_steps.
    """
    if d_model <= 0 or warmup_steps <= 0:
        raise ValueError(
            f"transformer_schedule needs positive d_model and warmup_steps, got {d_model=}, {warmup_steps=}"
        )
    factor = float(scale) * float(d_model) ** -0.5
    warmup_factor = float(warmup_steps) ** -1.5

    @with_x64_scope
    def schedule(count):
        xp, count = _as_float64(count)
        step_num = count + 1.0
        return factor * xp.minimum(step_num**-0.5, step_num * warmup_factor)

    return schedule


def warmup_cosine(peak_value: float, warmup_steps: int, decay_steps: int, end_value: float = 0.0) -> Schedule:
    """Linear warmup from 0 to `peak_value` over `warmup_steps`, then cosine decay to `end_value`,
    reached at count == `decay_steps` and held after. As in
    `optax.warmup_cosine_decay_schedule(0.0, peak_value, warmup_steps, decay_steps, end_value)`,
    `decay_steps` counts the warmup too.
    """
    if not 0 <= warmup_steps < decay_steps:
        raise ValueError(f"warmup_cosine needs 0 <= warmup_steps < decay_steps, got {warmup_steps=}, {decay_steps=}")
    peak_value, end_value = float(peak_value), float(end_value)
    cosine_steps = float(decay_steps - warmup_steps)
    # With no warmup the linear branch is never selected, but both branches of `where` are
    # computed, so its denominator must not be 0.
    warmup_denominator = float(max(warmup_steps, 1))

    @with_x64_scope
    def schedule(count):
        xp, count = _as_float64(count)
        warming = peak_value * (xp.clip(count, 0.0, None) / warmup_denominator)
        progress = xp.clip(count - warmup_steps, 0.0, cosine_steps) / cosine_steps
        decaying = end_value + (peak_value - end_value) * 0.5 * (1.0 + xp.cos(math.pi * progress))
        return xp.where(count < warmup_steps, warming, decaying)

    return schedule
