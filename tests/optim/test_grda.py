"""Tests of jaxprune.optim.grda against a NumPy float64 implementation of Algorithm 2."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune.optim.grda import GrdaState, grda, grda_threshold, soft_threshold
from jaxprune.optim.masked import apply_mask, masked, set_mask

STEPS = 60
C, MU = 0.4, 0.6
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def _problem(dtype):
    """Least squares ``0.5 mean_n |x_n w + b - y_n|^2`` with float64 data exact in ``dtype``."""
    rng = np.random.default_rng(0)

    def exact(*shape):
        return rng.normal(size=shape).astype(dtype).astype(np.float64)

    return exact(10, 4), exact(10, 3), {"b": exact(3), "w": exact(4, 3)}


def _loss(params, x, y):
    residual = x @ params["w"] + params["b"] - y
    return 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))


def _numpy_grad(params, x, y):
    residual = x @ params["w"] + params["b"] - y
    return {"b": residual.mean(0), "w": x.T @ residual / len(x)}


def _reference(params, x, y, rates, c, mu, thresholded=("b", "w")):
    """Algorithm 2 in NumPy float64; returns the parameters after each step and thresholds."""
    v = {k: a.copy() for k, a in params.items()}
    w = {k: a.copy() for k, a in params.items()}
    threshold, trajectory, thresholds = 0.0, [], []
    for n in range(1, len(rates) + 1):
        gamma = rates[n - 1]
        grads = _numpy_grad(w, x, y)
        threshold += c * gamma ** (0.5 + mu) * (n**mu - (n - 1) ** mu)
        for k in v:
            v[k] = v[k] - gamma * grads[k]
            shrunk = np.sign(v[k]) * np.maximum(np.abs(v[k]) - threshold, 0.0)
            w[k] = shrunk if k in thresholded else v[k].copy()
        trajectory.append({k: a.copy() for k, a in w.items()})
        thresholds.append(threshold)
    return trajectory, thresholds


def _trajectory(tx, params, x, y, steps, *, jit=True):
    def step(params, state):
        updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    state = tx.init(params)
    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(params)
    return out, state


def _cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def _schedules():
    return {
        "constant": 0.1,
        # staircase: exact powers of 0.5 (a smooth decay is computed in float32 by optax, and
        # differently inside and outside jit).
        "exponential": optax.exponential_decay(
            0.2, transition_steps=10, decay_rate=0.5, staircase=True
        ),
        "piecewise": optax.piecewise_constant_schedule(0.15, {20: 0.5, 40: 0.2}),
    }


@pytest.mark.parametrize("schedule", ["constant", "exponential", "piecewise"])
def test_trajectory_matches_numpy_reference(dtype, schedule):
    x, y, params = _problem(dtype)
    lr = _schedules()[schedule]
    # The rates the optimizer sees: the schedule at an int32 count (optax computes in float32).
    rates = [float(lr(jnp.int32(i))) if callable(lr) else lr for i in range(STEPS)]
    expected, thresholds = _reference(params, x, y, rates, C, MU)
    got, state = _trajectory(grda(lr, C, MU), _cast(params, dtype), x, y, STEPS)
    tol = TOLERANCE[np.dtype(dtype)]
    for t, (a, b) in enumerate(zip(got, expected)):
        for k in b:
            np.testing.assert_allclose(np.asarray(a[k], np.float64), b[k], rtol=tol, atol=tol)
            # Entries the reference zeroes are exactly zero.
            assert np.all(np.asarray(a[k])[b[k] == 0] == 0), (t, k)
    assert int(state.count) == STEPS
    np.testing.assert_allclose(float(state.threshold), thresholds[-1], rtol=tol)
    # The problem is not trivial: gRDA has pruned weights and kept others.
    final = np.concatenate([np.ravel(a) for a in expected[-1].values()])
    assert 0 < np.mean(final == 0) < 1


def test_eager_matches_jit():
    x, y, params = _problem(np.float32)
    params = _cast(params, jnp.float32)
    tx = grda(_schedules()["exponential"], C, MU)
    eager, _ = _trajectory(tx, params, x, y, 10, jit=False)
    jitted, _ = _trajectory(tx, params, x, y, 10, jit=True)
    for a, b in zip(eager, jitted):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("schedule", ["constant", "piecewise"])
@pytest.mark.parametrize("jit", [True, False])
def test_c_zero_is_sgd_bit_for_bit(schedule, jit):
    x, y, params = _problem(np.float32)
    params = _cast(params, jnp.float32)
    lr = _schedules()[schedule]
    ours, state = _trajectory(grda(lr, 0.0, MU), params, x, y, 30, jit=jit)
    sgd, _ = _trajectory(optax.sgd(lr), params, x, y, 30, jit=jit)
    for a, b in zip(ours, sgd):
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    # The accumulator tracks the parameters exactly.
    for k in params:
        np.testing.assert_array_equal(np.asarray(state.accumulator[k]), np.asarray(ours[-1][k]))
    assert float(state.threshold) == 0.0


def test_threshold_closed_form_at_constant_rate():
    params = {"w": jnp.ones(3)}
    gamma, c, mu = 0.05, 0.7, 0.55
    tx = grda(gamma, c, mu)
    zero = {"w": jnp.zeros(3)}

    @jax.jit
    def run(state, steps):
        def body(_, state):
            return tx.update(zero, state, params)[1]

        return jax.lax.fori_loop(0, steps, body, state)

    state = tx.init(params)
    # The first update already thresholds by c·γ^{1/2+μ} (reading DP-2, docs/readings.md).
    first = run(state, 1)
    np.testing.assert_allclose(float(first.threshold), c * gamma ** (0.5 + mu), rtol=1e-6)
    for n in (2, 7, 100, 20_000):
        expected = c * gamma**0.5 * (n * gamma) ** mu
        assert grda_threshold(c, mu, gamma, n) == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(float(run(state, n).threshold), expected, rtol=2e-6)


def test_zeroed_weight_comes_back():
    """A weight whose dual average sits still is zeroed once the threshold passes it; a steady
    gradient then pushes |v| past the (sublinearly growing) threshold and it returns."""
    gamma, c, mu = 0.1, 1.0, 0.6
    tx = grda(gamma, c, mu)
    params = {"w": jnp.array([0.2, -3.0])}
    state = tx.init(params)
    v, history = np.array([0.2, -3.0]), []
    for n in range(1, 41):
        g = np.array([0.0, 0.0]) if n <= 10 else np.array([-1.0, 0.0])
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
        v = v - gamma * g
        threshold = grda_threshold(c, mu, gamma, n)
        expected = np.sign(v) * np.maximum(np.abs(v) - threshold, 0)
        np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-5, atol=1e-6)
        history.append(float(params["w"][0]))
    assert history[0] > 0  # alive at first (|v| = 0.2 > c·γ^{1/2+μ})
    dead = [i for i, w in enumerate(history) if w == 0.0]
    assert dead and dead[0] < 10  # zeroed while its gradient is 0
    assert history[-1] > 0  # and back later
    assert all(w > 0 for w in history[dead[-1] + 1 :])


def test_soft_threshold():
    v = {"a": jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])}
    np.testing.assert_array_equal(
        np.asarray(soft_threshold(v, 1.0)["a"]), np.array([-1.0, 0.0, 0.0, 0.0, 2.0])
    )


@pytest.mark.parametrize(
    "mask",
    [
        {"b": False, "w": True},
        lambda p: jax.tree.map(lambda a: a.ndim > 1, p),
    ],
    ids=["pytree", "callable"],
)
def test_mask_leaves_get_plain_sgd(mask):
    x, y, params = _problem(np.float64)
    rates = [0.1] * 40
    expected, _ = _reference(params, x, y, rates, C, MU, thresholded=("w",))
    got, state = _trajectory(grda(0.1, C, MU, mask=mask), _cast(params, jnp.float32), x, y, 40)
    for a, b in zip(got, expected):
        for k in b:
            np.testing.assert_allclose(np.asarray(a[k], np.float64), b[k], rtol=2e-5, atol=2e-5)
    # The unthresholded leaf moves exactly with its accumulator (SGD updates), the other not.
    np.testing.assert_array_equal(np.asarray(state.accumulator["b"]), np.asarray(got[-1]["b"]))
    assert np.any(np.asarray(got[-1]["w"]) == 0)
    assert not np.any(np.asarray(got[-1]["b"]) == 0)


def test_mask_prefix():
    params = {
        "layer": {"kernel": jnp.full((2, 2), 0.01), "bias": jnp.full(2, 0.01)},
        "h": jnp.ones(2),
    }
    tx = grda(0.1, 1.0, MU, mask={"layer": True, "h": False})
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["layer"]["kernel"]) == 0)
    assert np.all(np.asarray(new["layer"]["bias"]) == 0)
    np.testing.assert_array_equal(np.asarray(new["h"]), np.ones(2))


def test_inside_masked_wrapper():
    """masked(grda): pruned entries stay exactly zero; kept ones follow gRDA on the masked
    problem; set_mask zeroes the accumulator of newly pruned entries."""
    x, y, params = _problem(np.float64)
    mask = {"b": np.array([1.0, 0.0, 1.0]), "w": (np.arange(12).reshape(4, 3) % 3 != 0) * 1.0}
    tx = masked(grda(0.1, C, MU), initial_mask=mask)

    # NumPy reference: gRDA with masked init and masked gradients.
    v = {k: params[k] * mask[k] for k in params}
    w = {k: a.copy() for k, a in v.items()}
    threshold = 0.0
    for n in range(1, 31):
        grads = _numpy_grad(w, x, y)
        threshold += C * 0.1 ** (0.5 + MU) * (n**MU - (n - 1) ** MU)
        for k in v:
            v[k] = v[k] - 0.1 * grads[k] * mask[k]
            w[k] = np.sign(v[k]) * np.maximum(np.abs(v[k]) - threshold, 0)
    start = apply_mask(_cast(params, jnp.float32), mask)
    got, state = _trajectory(tx, start, x, y, 30)
    for k in w:
        np.testing.assert_allclose(np.asarray(got[-1][k], np.float64), w[k], rtol=2e-5, atol=2e-5)
        assert np.all(np.asarray(got[-1][k])[mask[k] == 0] == 0)
    new_mask = {"b": np.array([0.0, 0.0, 1.0]), "w": np.ones((4, 3))}
    state = set_mask(state, new_mask)
    inner = state.inner_state
    assert isinstance(inner, GrdaState)
    assert float(inner.accumulator["b"][0]) == 0.0
    assert int(inner.count) == 30 and float(inner.threshold) > 0


def test_vmap_and_pmap():
    x, y, params = _problem(np.float32)
    params = _cast(params, jnp.float32)
    tx = grda(0.1, C, MU)

    def step(params, state, x, y):
        updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    # vmap over three independent problems (different targets) == three separate runs.
    ys = jnp.stack([y, 2 * y, -y])
    batched = jax.tree.map(lambda a: jnp.stack([a] * 3), params)
    state = jax.vmap(tx.init)(batched)
    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, None, 0)))
    for _ in range(5):
        batched, state = vstep(batched, state, x, ys)
    for i in range(3):
        single, _ = _trajectory(tx, params, x, ys[i], 5)
        for k in params:
            np.testing.assert_allclose(batched[k][i], single[-1][k], rtol=1e-5, atol=1e-6)

    # pmap over the available devices with gradients averaged across them.
    ndev = jax.local_device_count()

    def pstep(params, state, x, y):
        grads = jax.lax.pmean(jax.grad(_loss)(params, x, y), "devices")
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    replicated = jax.tree.map(lambda a: jnp.stack([a] * ndev), params)
    pstate = jax.pmap(tx.init)(replicated)
    mapped = jax.pmap(pstep, axis_name="devices", in_axes=(0, 0, None, None))
    for _ in range(5):
        replicated, pstate = mapped(replicated, pstate, x, y)
    single, _ = _trajectory(tx, params, x, y, 5)
    for k in params:
        np.testing.assert_allclose(replicated[k][0], single[-1][k], rtol=1e-5, atol=1e-6)


def test_state_round_trips_through_numpy():
    """The state is plain arrays: a NumPy copy (what a checkpoint stores) resumes identically."""
    x, y, params = _problem(np.float32)
    params = _cast(params, jnp.float32)
    tx = grda(_schedules()["exponential"], C, MU)
    step = jax.jit(
        lambda p, s: (lambda u_s: (optax.apply_updates(p, u_s[0]), u_s[1]))(
            tx.update(jax.grad(_loss)(p, x, y), s, p)
        )
    )
    state = tx.init(params)
    for _ in range(5):
        params, state = step(params, state)
    restored = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state)
    assert isinstance(restored, GrdaState)
    a, b = (params, state), (params, restored)
    for _ in range(5):
        a, b = step(*a), step(*b)
    for k in params:
        np.testing.assert_array_equal(np.asarray(a[0][k]), np.asarray(b[0][k]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"learning_rate": 0.1, "c": -1.0, "mu": 0.6},
            ValueError,
            r"c: expected a number in \[0, inf\], got -1",
        ),
        (
            {"learning_rate": 0.1, "c": 0.1, "mu": 0.0},
            ValueError,
            r"mu: expected a number in \(0, inf\), got 0",
        ),
        (
            {"learning_rate": 0.1, "c": 0.1, "mu": -0.5},
            ValueError,
            r"mu: expected a number in \(0, inf\)",
        ),
        (
            {"learning_rate": 0.0, "c": 0.1, "mu": 0.6},
            ValueError,
            r"learning_rate: expected a number in \(0, inf\)",
        ),
        (
            {"learning_rate": -0.1, "c": 0.1, "mu": 0.6},
            ValueError,
            r"learning_rate: expected a number in \(0, inf\)",
        ),
        ({"learning_rate": float("nan"), "c": 0.1, "mu": 0.6}, ValueError, "learning_rate"),
        ({"learning_rate": 0.1, "c": "big", "mu": 0.6}, TypeError, "c: expected a real number"),
        ({"learning_rate": 0.1, "c": 0.1, "mu": 0.6, "mask": {"w": 1.5}}, TypeError, "mask"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        grda(**kwargs)


def test_update_requires_params_and_matching_mask():
    params = {"w": jnp.ones(2)}
    tx = grda(0.1, 0.1, 0.6)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="structure"):
        grda(0.1, 0.1, 0.6, mask={"v": True}).init(params)
    with pytest.raises(TypeError, match="schedule"):
        grda_threshold(0.1, 0.6, optax.constant_schedule(0.1), 3)


def test_state_does_not_alias_the_parameters():
    # Trainers donate params and optimizer state to the jitted step; an accumulator sharing
    # the parameters' buffers would be donated twice.
    params = {"w": jnp.arange(4.0)}
    tx = grda(0.1, 0.01, 0.6)
    state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state):
        updates, state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state)
    np.testing.assert_allclose(state.accumulator["w"], jnp.arange(4.0) - 0.1)
