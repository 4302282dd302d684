"""The optimisers of functional_transformer.optim: against optax trajectories, against closed forms
on quadratics, schedules against their formulas, clipping, structure errors, jit and dtypes.

Steps run through `backend.jit`: the identity on NumPy, and on JAX one compilation per test instead
of eager JAX compiling every primitive for every new shape, which would make this file slow.
Tracing under `jit` is also the stricter check: a Python float or `if` on an array value fails there.
"""

import warnings

import numpy as np
import pytest

import backends
from functional_transformer import optim

STEPS = 100


# --- a small least-squares problem with a nested params tree -------------------------------------


def _problem():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(16, 3))
    targets = inputs @ rng.normal(size=(3, 2)) + 0.3 + 0.1 * rng.normal(size=(16, 2))
    params = {
        "dense": {"kernel": rng.normal(size=(3, 2)), "bias": rng.normal(size=(2,))},
        "offset": np.asarray(0.5),  # a 0-d leaf
    }
    return params, inputs, targets


def _least_squares_grads(params, inputs, targets):
    """Gradient of 0.5 * mean over rows of |inputs @ kernel + bias + offset - targets|^2."""
    xp = backends.array_namespace(inputs)
    residual = inputs @ params["dense"]["kernel"] + params["dense"]["bias"] + params["offset"] - targets
    n = inputs.shape[0]
    return {
        "dense": {"kernel": inputs.T @ residual / n, "bias": xp.sum(residual, axis=0) / n},
        "offset": xp.sum(residual) / n,
    }


def _trajectory(optimizer, to_backend, to_numpy, apply_updates, jit, steps=STEPS):
    """Params after each step, as flat dicts of NumPy arrays."""
    params, inputs, targets = _problem()
    params = backends.tree_map(to_backend, params)
    inputs, targets = to_backend(inputs), to_backend(targets)

    @jit
    def step(params, state):
        grads = _least_squares_grads(params, inputs, targets)
        updates, state = optimizer.update(grads, state, params)
        return apply_updates(params, updates), state

    state = optimizer.init(params)
    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(backends.tree_flatten(backends.tree_map(to_numpy, params)))
    return out


@pytest.fixture(scope="module")
def optax():
    return pytest.importorskip("optax")


@pytest.fixture
def optax_x64(optax):
    """optax with JAX's 64-bit types on for the test, so that it runs in float64 like our side
    (the library turns them on only inside its own calls)."""
    with backends.get_backend("jax").x64_scope():
        yield optax


def _paper_transformer_schedule_jnp(d_model, warmup_steps):
    import jax.numpy as jnp

    def schedule(count):
        step_num = jnp.asarray(count, dtype=jnp.float64) + 1.0
        return d_model**-0.5 * jnp.minimum(step_num**-0.5, step_num * warmup_steps**-1.5)

    return schedule


OPTAX_CASES = {
    "sgd": (lambda: optim.sgd(0.1), lambda ox: ox.sgd(0.1)),
    "sgd_momentum": (lambda: optim.sgd(0.05, momentum=0.9), lambda ox: ox.sgd(0.05, momentum=0.9)),
    "sgd_nesterov": (
        lambda: optim.sgd(0.05, momentum=0.9, nesterov=True),
        lambda ox: ox.sgd(0.05, momentum=0.9, nesterov=True),
    ),
    "adam": (
        lambda: optim.adam(0.02, b1=0.8, b2=0.99, eps=1e-6),
        lambda ox: ox.adam(0.02, b1=0.8, b2=0.99, eps=1e-6),
    ),
    # Our defaults are the paper's (b2=0.98, eps=1e-9); optax's are not, so optax is given them.
    "adam_defaults_transformer_schedule": (
        lambda: optim.adam(optim.transformer_schedule(16, 20, scale=10.0)),
        lambda ox: ox.adam(
            lambda count: 10.0 * _paper_transformer_schedule_jnp(16, 20)(count), b1=0.9, b2=0.98, eps=1e-9
        ),
    ),
    # optax's own warmup_cosine_decay_schedule computes in float32 even with x64 on, so both sides
    # get ours here (matched to optax's at float32 precision in test_warmup_cosine_matches_optax).
    "adamw_defaults_warmup_cosine": (
        lambda: optim.adamw(optim.warmup_cosine(0.05, 10, 80, end_value=0.001), weight_decay=0.1),
        lambda ox: ox.adamw(
            optim.warmup_cosine(0.05, 10, 80, end_value=0.001), b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.1
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_matches_optax_trajectory(backend, optax_x64, case):
    optax = optax_x64
    ours, theirs = OPTAX_CASES[case]
    import jax
    import jax.numpy as jnp

    got = _trajectory(ours(), backend.asarray, backend.to_numpy, optim.apply_updates, backend.jit)
    want = _trajectory(theirs(optax), jnp.asarray, np.asarray, optax.apply_updates, jax.jit)
    assert got[-1]["dense.kernel"].dtype == np.float64
    for step, (g, w) in enumerate(zip(got, want)):
        for path in w:
            np.testing.assert_allclose(g[path], w[path], rtol=1e-10, atol=1e-13, err_msg=f"{case} step {step} {path}")
    # The problem is not trivial: the params moved well away from where they started.
    start = _problem()[0]["dense"]["kernel"]
    assert np.max(np.abs(got[-1]["dense.kernel"] - start)) > 0.1


# --- closed forms on quadratics ------------------------------------------------------------------


def _run(backend, optimizer, grad_fn, params, steps):
    """`steps` steps from `params` with grads grad_fn(params): the (params, updates) after each, as
    NumPy, and the final state."""

    @backend.jit
    def step(params, state):
        updates, state = optimizer.update(grad_fn(params), state, params)
        return optim.apply_updates(params, updates), state, updates

    state = optimizer.init(params)
    history = []
    for _ in range(steps):
        params, state, updates = step(params, state)
        history.append((backend.tree_to_numpy(params), backend.tree_to_numpy(updates)))
    return history, state


def _run_quadratic(backend, optimizer, curvature, x0, steps):
    """Minimise 0.5 * sum(curvature * x**2) from x0; return x after each step (NumPy)."""
    a = backend.asarray(curvature)
    history, _ = _run(backend, optimizer, lambda p: {"x": a * p["x"]}, {"x": backend.asarray(x0)}, steps)
    return np.stack([params["x"] for params, _ in history])


def test_sgd_closed_form(backend):
    curvature, x0, learning_rate = np.array([0.5, 1.0, 3.0]), np.array([1.0, -2.0, 0.7]), 0.1
    xs = _run_quadratic(backend, optim.sgd(learning_rate), curvature, x0, 20)
    t = np.arange(1, 21)[:, None]
    np.testing.assert_allclose(xs, x0 * (1 - learning_rate * curvature) ** t, rtol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_closed_form(backend, nesterov):
    """Heavy ball / Nesterov on a scalar quadratic is linear in (x_t, trace_{t-1}): x_T from a matrix power."""
    a, x0, learning_rate, mu, steps = 2.0, 1.5, 0.1, 0.9, 15
    optimizer = optim.sgd(learning_rate, momentum=mu, nesterov=nesterov)
    xs = _run_quadratic(backend, optimizer, np.array([a]), np.array([x0]), steps)
    if nesterov:  # update = (1 + mu) * a * x + mu**2 * trace
        step = np.array([[1 - learning_rate * (1 + mu) * a, -learning_rate * mu**2], [a, mu]])
    else:  # update = trace_t = a * x + mu * trace_{t-1}
        step = np.array([[1 - learning_rate * a, -learning_rate * mu], [a, mu]])
    want = [(np.linalg.matrix_power(step, t) @ np.array([x0, 0.0]))[0] for t in range(1, steps + 1)]
    np.testing.assert_allclose(xs[:, 0], want, rtol=1e-12)


def test_adam_steps_are_learning_rate_times_sign_for_constant_grads(backend):
    """With a constant gradient, bias correction makes m_hat = g and v_hat = g**2 at every step, so
    each update is -lr * g / (|g| + eps): -lr * sign(g) for |g| >> eps, and -lr / 2 for |g| == eps
    (eps outside the square root)."""
    learning_rate, eps = 0.01, 1e-9
    g = np.array([1.0, -0.25, 3e-3, -7.0, eps])
    grads = {"w": backend.asarray(g)}
    params = {"w": backend.asarray(np.zeros(5))}
    history, _ = _run(backend, optim.adam(learning_rate, eps=eps), lambda p: grads, params, 5)
    for _, updates in history:
        got = updates["w"]
        np.testing.assert_allclose(got, -learning_rate * g / (np.abs(g) + eps), rtol=1e-12)
        np.testing.assert_allclose(got[:4], -learning_rate * np.sign(g[:4]), rtol=1e-6)
        np.testing.assert_allclose(got[4], -learning_rate / 2, rtol=1e-9)


def test_adamw_with_zero_grads_decays_geometrically(backend):
    learning_rate, weight_decay = 0.1, 0.5
    p0 = np.array([[1.0, -2.0], [0.5, 4.0]])
    optimizer = optim.adamw(learning_rate, weight_decay=weight_decay)
    zeros = {"w": backend.asarray(np.zeros_like(p0))}
    history, _ = _run(backend, optimizer, lambda p: zeros, {"w": backend.asarray(p0)}, 10)
    for t, (params, _) in enumerate(history, start=1):
        np.testing.assert_allclose(params["w"], p0 * (1 - learning_rate * weight_decay) ** t, rtol=1e-12)


def test_scale_by_learning_rate_calls_the_schedule_with_the_update_count(backend):
    optimizer = optim.scale_by_learning_rate(lambda count: 0.5 * (count + 1.0))
    grads = {"w": backend.asarray(np.ones(3))}
    update = backend.jit(optimizer.update)
    state = optimizer.init(grads)
    for k in range(4):
        updates, state = update(grads, state)
        np.testing.assert_allclose(backend.to_numpy(updates["w"]), -0.5 * (k + 1))
    assert int(backend.to_numpy(state["count"])) == 4


# --- schedules -----------------------------------------------------------------------------------


def test_transformer_schedule_matches_the_paper(backend, xp):
    d_model, warmup = 512, 40
    counts = xp.arange(0, 5 * warmup, dtype=xp.int32)
    got = backend.to_numpy(backend.jit(optim.transformer_schedule(d_model, warmup))(counts))
    want = [d_model**-0.5 * min(s**-0.5, s * warmup**-1.5) for s in range(1, 5 * warmup + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert int(np.argmax(got)) + 1 == warmup  # the peak is at step_num == warmup_steps
    np.testing.assert_allclose(got.max(), d_model**-0.5 * warmup**-0.5, rtol=1e-12)
    np.testing.assert_allclose(got[0], d_model**-0.5 * warmup**-1.5, rtol=1e-12)  # first update: step_num 1
    # The paper's setting: d_model 512, 4000 warmup steps, peak ~7.0e-4; `scale` multiplies.
    paper = optim.transformer_schedule(512, 4000, scale=2.0)
    np.testing.assert_allclose(float(paper(3999)), 2 * 512**-0.5 / 4000**0.5)


def test_warmup_cosine_formula(backend, xp):
    peak, end, warmup, decay = 1e-3, 1e-5, 10, 50
    schedule = optim.warmup_cosine(peak, warmup, decay, end_value=end)
    got = backend.to_numpy(backend.jit(schedule)(xp.arange(0, decay + 10, dtype=xp.int32)))
    np.testing.assert_allclose(got[: warmup + 1], peak * np.arange(warmup + 1) / warmup, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(got[(warmup + decay) // 2], (peak + end) / 2, rtol=1e-12)  # cosine half-way
    np.testing.assert_allclose(got[decay:], end, rtol=1e-12)
    assert np.all(np.diff(got[warmup:decay]) < 0)
    no_warmup = backend.to_numpy(backend.jit(optim.warmup_cosine(peak, 0, decay))(xp.arange(0, 3, dtype=xp.int32)))
    assert np.all(np.isfinite(no_warmup)) and no_warmup[0] == peak


def test_warmup_cosine_matches_optax(backend, xp, optax_x64):
    optax = optax_x64
    import jax
    import jax.numpy as jnp

    args = (2e-3, 7, 33)
    counts = np.arange(0, 45)
    ours = backend.jit(optim.warmup_cosine(*args, end_value=1e-4))
    got = backend.to_numpy(ours(xp.asarray(counts, dtype=xp.int32)))
    theirs = jax.jit(optax.warmup_cosine_decay_schedule(0.0, *args, end_value=1e-4))
    want = np.asarray(theirs(jnp.asarray(counts, dtype=jnp.int32)))
    # optax evaluates this schedule in float32 (even with x64 on); ours is float64.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_constant_schedule_and_bad_arguments(backend, xp):
    np.testing.assert_array_equal(backend.to_numpy(optim.constant(0.3)(xp.arange(0, 4, dtype=xp.int32))), [0.3] * 4)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.warmup_cosine(1.0, 10, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.transformer_schedule(512, 0)
    with pytest.raises(ValueError, match="nesterov"):
        optim.sgd(0.1, nesterov=True)
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_by_global_norm(0.0)


# --- clipping ------------------------------------------------------------------------------------


def _tree_3_4(backend):
    return {"a": backend.asarray(np.array([3.0])), "b": {"c": backend.asarray(np.array([[0.0, 4.0]]))}}


def test_clip_by_global_norm_rescales_above_max_norm(backend):
    grads = _tree_3_4(backend)
    norm = backend.jit(optim.global_norm)
    np.testing.assert_allclose(float(norm(grads)), 5.0, rtol=1e-15)
    clipped, _ = backend.jit(optim.clip_by_global_norm(2.0).update)(grads, {})
    np.testing.assert_allclose(float(norm(clipped)), 2.0, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(clipped["a"]), [3.0 * 2 / 5], rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(clipped["b"]["c"]), [[0.0, 4.0 * 2 / 5]], rtol=1e-12)


def test_clip_by_global_norm_leaves_small_and_zero_updates_unchanged(backend):
    grads = _tree_3_4(backend)
    kept, _ = backend.jit(optim.clip_by_global_norm(10.0).update)(grads, {})
    kept_leaves = dict(backends.tree_items(kept))
    for path, leaf in backends.tree_items(grads):
        np.testing.assert_array_equal(backend.to_numpy(kept_leaves[path]), backend.to_numpy(leaf))
    zeros = backend.tree_asarray({"a": np.zeros(1), "b": {"c": np.zeros((1, 2))}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 on the branch that is not taken
        kept, _ = backend.jit(optim.clip_by_global_norm(1.0).update)(zeros, {})
    assert all(np.all(backend.to_numpy(leaf) == 0.0) for leaf in backends.tree_leaves(kept))


# --- structure errors, purity, state format ------------------------------------------------------


def _params(backend, dtype="float64"):
    params, _, _ = _problem()
    return backends.tree_map(lambda a: backend.asarray(a.astype(dtype)), params)


def test_mismatched_grads_raise_a_clear_value_error(backend):
    # Under `jit` the error comes while tracing, before anything is compiled.
    params = _params(backend)
    adam, sgd, adamw = optim.adam(0.1), optim.sgd(0.1), optim.adamw(0.1)
    missing = {"dense": {"kernel": params["dense"]["kernel"]}, "offset": params["offset"]}
    with pytest.raises(ValueError, match=r"at 'dense'.*lack keys \['bias'\]"):
        backend.jit(adam.update)(missing, backend.jit(adam.init)(params), params)
    transposed = {**params, "dense": {**params["dense"], "kernel": backend.asarray(np.ones((2, 3)))}}
    with pytest.raises(ValueError, match=r"at 'dense.kernel'.*shape \(2, 3\).*shape \(3, 2\)"):
        backend.jit(adam.update)(transposed, backend.jit(adam.init)(params), params)
    # Plain SGD keeps no state to compare with: apply_updates catches it.
    updates, _ = backend.jit(sgd.update)(missing, sgd.init(params), params)
    with pytest.raises(ValueError, match=r"updates do not match params.*lack keys \['bias'\]"):
        optim.apply_updates(params, updates)
    nested = {**params, "offset": {"x": params["offset"]}}
    with pytest.raises(ValueError, match="dict with keys"):
        backend.jit(adamw.update)(nested, backend.jit(adamw.init)(params), params)
    with pytest.raises(ValueError, match="needs the params"):
        backend.jit(adamw.update)(params, backend.jit(adamw.init)(params))


def test_update_is_pure_and_state_is_a_checkpointable_tree(backend):
    params = _params(backend)
    optimizer = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(optim.warmup_cosine(1e-2, 2, 10)))
    update = backend.jit(optimizer.update)
    state = optimizer.init(params)
    for _ in range(2):
        updates, state = update(params, state, params)
    before = backends.tree_flatten(backend.tree_to_numpy(state))
    expected_updates, _ = update(params, state, params)
    after = backends.tree_flatten(backend.tree_to_numpy(state))
    assert before.keys() == after.keys()
    for path in before:
        np.testing.assert_array_equal(before[path], after[path])
    # Stateless parts leave no empty dicts behind, so flattening and unflattening gives the state back.
    restored = backends.tree_unflatten(before)
    assert backends.tree_structure(restored) == backends.tree_structure(state)
    updates, _ = update(params, backend.tree_asarray(restored), params)
    np.testing.assert_array_equal(backend.to_numpy(updates["offset"]), backend.to_numpy(expected_updates["offset"]))


def test_float32_params_stay_float32(backend):
    params = _params(backend, dtype="float32")
    _, inputs, targets = _problem()
    inputs, targets = backend.asarray(inputs.astype(np.float32)), backend.asarray(targets.astype(np.float32))
    optimizers = [
        # NumPy float64 hyperparameters must not promote float32 leaves (NumPy 2 would).
        optim.sgd(np.float64(0.1), momentum=np.float64(0.9), nesterov=True),
        optim.chain(
            optim.clip_by_global_norm(np.float64(0.5)),
            optim.adamw(optim.transformer_schedule(64, 4), b1=np.float64(0.9), weight_decay=np.float64(0.01)),
        ),
    ]
    for optimizer in optimizers:
        history, state = _run(
            backend,
            optimizer,
            lambda p, inputs=inputs, targets=targets: _least_squares_grads(p, inputs, targets),
            params,
            3,
        )
        for tree in history[-1]:
            assert {str(leaf.dtype) for leaf in backends.tree_leaves(tree)} == {"float32"}
        for path, leaf in backends.tree_items(state):
            assert str(leaf.dtype) == ("int32" if path.endswith("count") else "float32"), path
        assert np.all(np.isfinite(history[-1][0]["dense"]["kernel"]))


def test_jitted_jax_update_matches_eager_numpy(backend, numpy_backend):
    if backend.name != "jax":
        pytest.skip("needs the JAX backend")
    optimizer = optim.chain(
        optim.clip_by_global_norm(0.5),
        optim.adamw(optim.transformer_schedule(16, 3, scale=5.0), weight_decay=0.1),
    )
    results = {}
    for b in (backend, numpy_backend):  # jitted on JAX, eager on NumPy
        _, inputs, targets = _problem()
        inputs, targets = b.asarray(inputs), b.asarray(targets)
        results[b.name] = _run(
            b,
            optimizer,
            lambda p, inputs=inputs, targets=targets: _least_squares_grads(p, inputs, targets),
            _params(b),
            5,
        )
    (jax_history, jax_state), (numpy_history, _) = results["jax"], results["numpy"]
    assert isinstance(jax_state["1"]["2"]["count"], backend.jax.Array) and int(jax_state["1"]["2"]["count"]) == 5
    for (jax_params, _), (numpy_params, _) in zip(jax_history, numpy_history):
        for path, leaf in backends.tree_items(numpy_params):
            np.testing.assert_allclose(dict(backends.tree_items(jax_params))[path], leaf, rtol=1e-12)


# --- NumPy's fused paths against the plain formulas, bit for bit ---------------------------------


def _float32_tree(seed):
    """Float32 leaves: a 0-d one, a small one, one over two of NumPy Adam's blocks and a transposed
    (strided) one."""
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(5, 7)).astype(np.float32),
        "b": {"c": rng.normal(size=(3,)).astype(np.float32), "s": np.asarray(rng.normal(), dtype=np.float32)},
        "big": rng.normal(size=(2 * optim.transforms.ADAM_CHUNK + 5,)).astype(np.float32),
        "t": rng.normal(size=(40, 30)).astype(np.float32).T,
    }


def test_numpy_fused_adam_equals_the_plain_formula_bit_for_bit():
    """Guards the in-place (out=) Adam update of NumPy float32 trees: each operation rounds as in
    (1 - b1) g + b1 m, g g (1 - b2) + b2 v and (m / c1) / (sqrt(v / c2) + eps), over two steps."""
    b1, b2, eps = 0.9, 0.98, 1e-9
    transform = optim.scale_by_adam(b1, b2, eps)
    params = _float32_tree(0)
    state = transform.init(params)
    mu, nu = backends.tree_map(np.zeros_like, params), backends.tree_map(np.zeros_like, params)
    for count in (1, 2):
        grads = _float32_tree(count)
        updates, state = transform.update(grads, state, params)
        c1, c2 = np.float32(1 - b1**count), np.float32(1 - b2**count)
        mu = backends.tree_map(lambda g, m: (1 - b1) * g + b1 * m, grads, mu)
        nu = backends.tree_map(lambda g, v: g * g * (1 - b2) + b2 * v, grads, nu)
        expected = backends.tree_map(lambda m, v, c1=c1, c2=c2: (m / c1) / (np.sqrt(v / c2) + eps), mu, nu)
        for got, want in ((updates, expected), (state["mu"], mu), (state["nu"], nu)):
            for path, leaf in backends.tree_items(want):
                np.testing.assert_array_equal(dict(backends.tree_items(got))[path], leaf, strict=True, err_msg=path)


def test_numpy_global_norm_equals_the_plain_formula_bit_for_bit():
    """Guards global_norm's reused squares buffer: the sum of each leaf's sum of squares, as before."""
    tree = _float32_tree(3)
    expected = np.sqrt(sum(np.sum(leaf * leaf) for leaf in backends.tree_leaves(tree)))
    np.testing.assert_array_equal(optim.global_norm(tree), expected, strict=True)


@pytest.mark.parametrize("weight_decay", [None, 0.01])
@pytest.mark.parametrize("schedule", [False, True])
def test_numpy_fused_adam_and_adamw_equal_their_chains_bit_for_bit(weight_decay, schedule):
    """Guards adam/adamw's one-pass NumPy update (decay and learning rate in Adam's blocks): the
    updates and the state equal those of the chain of the separate transforms, over three steps."""
    learning_rate = optim.transformer_schedule(64, 2) if schedule else 0.1
    if weight_decay is None:
        fused = optim.adam(learning_rate)
        parts = [optim.scale_by_adam()]
    else:
        fused = optim.adamw(learning_rate, weight_decay=weight_decay)
        parts = [optim.scale_by_adam(), optim.add_decayed_weights(weight_decay)]
    chained = optim.chain(*parts, optim.scale_by_learning_rate(learning_rate))
    params = _float32_tree(0)
    fused_state, chained_state = fused.init(params), chained.init(params)
    for step in range(3):
        grads = _float32_tree(10 + step)
        fused_updates, fused_state = fused.update(grads, fused_state, params)
        chained_updates, chained_state = chained.update(grads, chained_state, params)
        for got, want in ((fused_updates, chained_updates), (fused_state, chained_state)):
            assert backends.tree_structure(got) == backends.tree_structure(want)
            for path, leaf in backends.tree_items(want):
                np.testing.assert_array_equal(dict(backends.tree_items(got))[path], leaf, strict=True, err_msg=path)
        params = optim.apply_updates(params, fused_updates)


def test_numpy_adamw_with_float64_params_and_float32_grads_equals_its_chain():
    """Guards the fused path's dtype rule: float64 params promote the decay term on the chain, so
    a tree of mixed dtypes must take the chain's path and give its numbers and dtypes."""
    params = backends.tree_map(lambda leaf: leaf.astype(np.float64), _float32_tree(0))
    fused = optim.adamw(0.1, weight_decay=0.5)
    chained = optim.chain(optim.scale_by_adam(), optim.add_decayed_weights(0.5), optim.scale_by_learning_rate(0.1))
    grads = _float32_tree(1)
    got, _ = fused.update(grads, fused.init(grads), params)
    want, _ = chained.update(grads, chained.init(grads), params)
    for path, leaf in backends.tree_items(want):
        np.testing.assert_array_equal(dict(backends.tree_items(got))[path], leaf, strict=True, err_msg=path)
