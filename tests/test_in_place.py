"""The in-place idiom never reaches the caller's arrays.

Some functions update arrays with augmented assignments (`y += b`, `x0 += x1`) or index
assignments (`out[i] = v`): in place on NumPy, a rebinding on JAX. That is safe only on arrays the
function has just made itself. Each test here hands one such function NumPy arrays, keeps copies,
and checks that every input (params, activations, cotangents, residuals, state) is unchanged after.
JAX arrays are immutable, so these run on NumPy whatever FT_BACKEND is.
"""

from __future__ import annotations

import numpy as np
import pytest

import backends
from backends import prng as ftrandom
from functional_transformer import optim
from functional_transformer.layers import dropout, layer_norm, linear, softmax

NP = backends.get_backend("numpy")


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def _arrays(obj) -> list:
    """The arrays in nested dicts, tuples (residuals are NamedTuples) and lists."""
    if isinstance(obj, dict):
        return [a for k in sorted(obj) for a in _arrays(obj[k])]
    if isinstance(obj, (tuple, list)):
        return [a for item in obj for a in _arrays(item)]
    return [obj]


def _call_and_check(fn, *inputs):
    """fn(*inputs), asserting afterwards that every input array still equals its copy, bit for bit;
    returns fn's result."""
    copies = [np.array(a, copy=True) for a in _arrays(inputs)]
    result = fn(*inputs)
    arrays = _arrays(inputs)
    assert len(arrays) == len(copies)
    for array, copy in zip(arrays, copies):
        np.testing.assert_array_equal(array, copy, strict=True)
    return result


def test_linear_fwd_leaves_params_and_x_alone():
    params = {"w": _normal(1, (6, 4)), "b": _normal(2, (4,))}
    _call_and_check(linear.fwd, params, _normal(3, (2, 3, 6)))


def test_layer_norm_fwd_leaves_params_and_x_alone():
    params = {"scale": _normal(1, (6,)), "bias": _normal(2, (6,))}
    _call_and_check(layer_norm.fwd, params, _normal(3, (2, 3, 6)))


def test_layer_norm_bwd_leaves_saved_and_g_alone():
    _, saved = layer_norm.fwd({"scale": _normal(1, (6,)), "bias": _normal(2, (6,))}, _normal(3, (2, 3, 6)))
    _call_and_check(layer_norm.bwd, saved, _normal(4, (2, 3, 6)))


def test_softmax_fwd_leaves_x_and_mask_alone():
    mask = np.random.default_rng(5).random((2, 3, 5)) < 0.7
    _call_and_check(softmax.fwd, _normal(1, (2, 3, 5)), mask)


def test_softmax_bwd_leaves_p_and_g_alone():
    p, _ = softmax.fwd(_normal(1, (2, 3, 5)))
    _call_and_check(softmax.bwd, p, _normal(2, (2, 3, 5)))


def test_dropout_fwd_leaves_x_and_key_alone():
    _call_and_check(lambda x, key: dropout.fwd(x, 0.3, True, key), _normal(1, (4, 8)), NP.random.key(3))


def test_threefry_leaves_key_and_counters_alone():
    key = NP.random.key(7)
    counters = np.arange(8, dtype=np.uint32)
    _call_and_check(ftrandom.threefry2x32, key, counters[:4], counters[4:])


def test_numpy_scatter_add_leaves_target_indices_and_updates_alone():
    indices = np.asarray([2, 0, 2, -1], dtype=np.int64)
    _call_and_check(NP.scatter_add, _normal(1, (5, 3)), indices, _normal(2, (4, 3)))


def test_numpy_set_at_leaves_x_and_value_alone():
    _call_and_check(lambda x, value: NP.set_at(x, (slice(None), 1), value), _normal(1, (3, 4)), _normal(2, (3,)))


@pytest.mark.parametrize("steps", [1, 2])
def test_adam_update_leaves_grads_state_and_params_alone(steps):
    params = {"w": _normal(1, (3, 4)), "b": _normal(2, (4,))}
    transform = optim.scale_by_adam()
    state = transform.init(params)
    for step in range(steps):  # the second step starts from non-zero moments
        grads = {"w": _normal(10 + step, (3, 4)), "b": _normal(20 + step, (4,))}
        _, state = _call_and_check(transform.update, grads, state, params)
