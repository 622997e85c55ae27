"""Tests of jaxprune.optim.masked against NumPy references of masked AdamW and momentum SGD."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cpu_devices import cpu_devices_env

from jaxprune.optim.masked import MaskedState, apply_mask, masked, set_mask

ROOT = Path(__file__).resolve().parents[2]
STEPS = 100
CHANGE = 50  # the second mask is installed before update CHANGE (0-based)
TOLERANCE = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


class Problem(NamedTuple):
    """Least squares ``0.5 mean_n |x_n w + b - y_n|^2``, float64 values exact in ``dtype``."""

    x: np.ndarray
    y: np.ndarray
    params: dict
    mask0: dict
    mask1: dict


def _problem(dtype) -> Problem:
    rng = np.random.default_rng(0)

    def exact(*shape):  # float64 numbers that the working dtype represents exactly
        return rng.normal(size=shape).astype(dtype).astype(np.float64)

    mask0 = {"b": np.array([1.0, 0.0, 1.0]), "w": (rng.random((4, 3)) > 0.3).astype(np.float64)}
    mask1 = {"b": np.array([1.0, 1.0, 0.0]), "w": (rng.random((4, 3)) > 0.5).astype(np.float64)}
    # The second mask prunes kept weights and revives pruned ones.
    assert np.any((mask0["w"] == 1) & (mask1["w"] == 0))
    assert np.any((mask0["w"] == 0) & (mask1["w"] == 1))
    return Problem(exact(8, 4), exact(8, 3), {"b": exact(3), "w": exact(4, 3)}, mask0, mask1)


def _exact(value: float, dtype) -> float:
    """A hyperparameter as the working dtype stores it (0.999 is not a float32 number: its
    rounding changes Adam's bias correction by 1e-5, relatively, far above round-off)."""
    return float(np.asarray(value, dtype))


def _loss(params, x, y):
    residual = x @ params["w"] + params["b"] - y
    return 0.5 * jnp.mean(jnp.sum(residual**2, axis=-1))


def _numpy_grad(params, x, y):
    residual = x @ params["w"] + params["b"] - y
    return {"b": residual.mean(0), "w": x.T @ residual / len(x)}


def _reference(problem: Problem, direction_fn, statistics: dict):
    """Masked training in NumPy float64: ``w <- m * (w + step)``, where
    ``direction_fn(t, g, w, key, statistics)`` returns the step of leaf ``key`` from the masked
    gradient ``g`` and parameters ``w``; statistics of pruned weights are zeroed when the mask
    changes."""
    mask = problem.mask0
    params = {k: v * mask[k] for k, v in problem.params.items()}
    for t in range(1, STEPS + 1):
        if t - 1 == CHANGE:
            mask = problem.mask1
            statistics = {
                name: {k: v * mask[k] for k, v in s.items()} for name, s in statistics.items()
            }
        grads = _numpy_grad(params, problem.x, problem.y)
        for k in params:
            step = direction_fn(t, grads[k] * mask[k], params[k] * mask[k], k, statistics)
            params[k] = mask[k] * (params[k] + step)
    return params, statistics


def _reference_adamw(problem, lr, b1, b2, eps, wd):
    def direction(t, g, w, k, s):
        s["mu"][k] = b1 * s["mu"][k] + (1 - b1) * g
        s["nu"][k] = b2 * s["nu"][k] + (1 - b2) * g**2
        mu_hat, nu_hat = s["mu"][k] / (1 - b1**t), s["nu"][k] / (1 - b2**t)
        return -lr * (mu_hat / (np.sqrt(nu_hat) + eps) + wd * w)

    zeros = {k: np.zeros_like(v) for k, v in problem.params.items()}
    return _reference(problem, direction, {"mu": dict(zeros), "nu": dict(zeros)})


def _reference_momentum(problem, lr, beta, wd):
    def direction(t, g, w, k, s):
        s["trace"][k] = g + wd * w + beta * s["trace"][k]
        return -lr * s["trace"][k]

    zeros = {k: np.zeros_like(v) for k, v in problem.params.items()}
    return _reference(problem, direction, {"trace": zeros})


def _train(tx, problem: Problem, dtype, *, jit: bool = True):
    """``STEPS`` updates, the second mask installed before update ``CHANGE``; checks that every
    pruned weight is exactly 0.0 after every update."""
    x, y = jnp.asarray(problem.x, dtype), jnp.asarray(problem.y, dtype)
    params = apply_mask(
        jax.tree.map(lambda a: jnp.asarray(a, dtype), problem.params), problem.mask0
    )

    def step(params, state):
        updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
        return optax.apply_updates(params, updates), state

    step_fn, set_fn = (jax.jit(step), jax.jit(set_mask)) if jit else (step, set_mask)
    state, mask = tx.init(params), problem.mask0
    for t in range(STEPS):
        if t == CHANGE:
            state, mask = set_fn(state, problem.mask1), problem.mask1
        params, state = step_fn(params, state)
        for k, leaf in params.items():
            assert np.all(np.asarray(leaf)[mask[k] == 0] == 0.0), (t, k)
    return params, state


def _assert_close(actual: dict, expected: dict, dtype):
    tol = TOLERANCE[np.dtype(dtype)]
    for k in expected:
        np.testing.assert_allclose(
            np.asarray(actual[k], np.float64), expected[k], rtol=tol, atol=tol
        )


def _adamw(dtype):
    hyper = dict(learning_rate=0.02, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)
    return {name: _exact(value, dtype) for name, value in hyper.items()}


def test_masked_adamw_matches_numpy_reference(dtype):
    problem, hyper = _problem(dtype), _adamw(dtype)
    params, state = _train(masked(optax.adamw(**hyper), initial_mask=problem.mask0), problem, dtype)
    expected, stats = _reference_adamw(
        problem,
        hyper["learning_rate"],
        hyper["b1"],
        hyper["b2"],
        hyper["eps"],
        hyper["weight_decay"],
    )
    _assert_close(params, expected, dtype)
    adam_state = state.inner_state[0]
    assert int(adam_state.count) == STEPS
    _assert_close(adam_state.mu, stats["mu"], dtype)
    _assert_close(adam_state.nu, stats["nu"], dtype)
    for k, m in problem.mask1.items():
        assert np.all(np.asarray(adam_state.mu[k])[m == 0] == 0.0)
        assert np.all(np.asarray(adam_state.nu[k])[m == 0] == 0.0)


def test_masked_momentum_sgd_matches_numpy_reference(dtype):
    problem = _problem(dtype)
    lr, beta, wd = (_exact(v, dtype) for v in (0.05, 0.9, 0.01))
    inner = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=beta))
    params, state = _train(masked(inner, initial_mask=problem.mask0), problem, dtype)
    expected, stats = _reference_momentum(problem, lr, beta, wd)
    _assert_close(params, expected, dtype)
    _assert_close(state.inner_state[1][0].trace, stats["trace"], dtype)


def test_eager_matches_reference():
    dtype = np.float32
    problem, hyper = _problem(dtype), _adamw(dtype)
    tx = masked(optax.adamw(**hyper), initial_mask=problem.mask0)
    params, _ = _train(tx, problem, dtype, jit=False)
    expected, _ = _reference_adamw(
        problem,
        hyper["learning_rate"],
        hyper["b1"],
        hyper["b2"],
        hyper["eps"],
        hyper["weight_decay"],
    )
    _assert_close(params, expected, dtype)


def _trained_state(tx, params, steps=3):
    """State after a few dense updates with random gradients (all statistics nonzero)."""
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree.map(
            lambda a, i=i: jax.random.normal(jax.random.PRNGKey(i), a.shape), params
        )
        _, state = tx.update(grads, state, params)
    return state


def _params():
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    return {
        "layer": {
            "kernel": jax.random.normal(keys[0], (4, 3)),
            "bias": jax.random.normal(keys[1], (3,)),
        }
    }


def _prune_half(params):
    return jax.tree.map(
        lambda a: (np.arange(a.size).reshape(a.shape) % 2).astype(np.float32), params
    )


@pytest.mark.parametrize(
    ("inner", "statistics"),
    [
        (optax.adamw(1e-2, weight_decay=0.1), lambda s: {"mu": s[0].mu, "nu": s[0].nu}),
        (optax.sgd(1e-2, momentum=0.9), lambda s: {"trace": s[0].trace}),
    ],
    ids=["adamw", "momentum"],
)
def test_set_mask_zeros_only_newly_pruned_statistics(inner, statistics):
    params = _params()
    state = _trained_state(masked(inner), params)
    new_mask = _prune_half(params)
    new_state = set_mask(state, new_mask)
    for name, before in statistics(state.inner_state).items():
        after = statistics(new_state.inner_state)[name]
        for b, a, m in zip(*(jax.tree.leaves(t) for t in (before, after, new_mask))):
            b, a = np.asarray(b), np.asarray(a)
            assert np.all(b[m == 0] != 0), name  # non-vacuous: there was something to zero
            assert np.all(a[m == 0] == 0.0), name
            np.testing.assert_array_equal(a[m == 1], b[m == 1])
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(new_state.mask), jax.tree.leaves(new_mask))
    )
    kept = set_mask(state, new_mask, reset=False)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(kept.inner_state), jax.tree.leaves(state.inner_state))
    )


@pytest.mark.parametrize(
    "inner",
    [
        optax.adamw(1e-2, weight_decay=0.1),
        optax.sgd(1e-2, momentum=0.9),
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
        optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2),
        optax.adafactor(1e-2, min_dim_size_to_factor=2),
        optax.lion(1e-3),
        optax.rmsprop(1e-3, momentum=0.9),
        optax.masked(optax.adam(1e-3), {"layer": {"kernel": True, "bias": False}}),
        optax.partition(
            {"adam": optax.adam(1e-3), "momentum": optax.sgd(1e-2, momentum=0.9)},
            {"layer": {"kernel": "adam", "bias": "momentum"}},
        ),
    ],
    ids=[
        "adamw",
        "momentum",
        "chain",
        "inject_hyperparams",
        "adafactor",
        "lion",
        "rmsprop",
        "optax_masked",
        "partition",
    ],
)
def test_reset_masks_the_statistics_optax_tree_map_params_finds(inner):
    """The statistics that set_mask resets are those optax.tree_map_params maps over (restricted
    to leaves of their parameter's shape), found here with the inner optimizer's init."""
    params, tx = _params(), masked(inner)
    state = _trained_state(tx, params)
    new_mask = _prune_half(params)

    def zero_pruned(stat, m):
        if isinstance(stat, optax.MaskedNode) or np.shape(stat) != np.shape(m):
            return stat
        return jnp.where(m != 0, stat, 0) if jnp.issubdtype(stat.dtype, jnp.inexact) else stat

    expected = optax.tree_map_params(
        inner,
        zero_pruned,
        state.inner_state,
        new_mask,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    actual = set_mask(state, new_mask).inner_state
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    changed = 0
    for a, e, s in zip(*(jax.tree.leaves(t) for t in (actual, expected, state.inner_state))):
        np.testing.assert_array_equal(a, e)
        changed += not np.array_equal(a, s)
    assert changed >= 1  # non-vacuous (Adafactor without momentum has one unfactored leaf)


def test_adafactor_factored_moments_are_kept():
    params = {"kernel": jnp.ones((4, 3))}
    tx = masked(optax.adafactor(1e-2, min_dim_size_to_factor=2))
    state = _trained_state(tx, params)
    new = set_mask(state, {"kernel": np.zeros((4, 3))})
    factored = state.inner_state[0]
    np.testing.assert_array_equal(new.inner_state[0].v_row["kernel"], factored.v_row["kernel"])
    np.testing.assert_array_equal(new.inner_state[0].v_col["kernel"], factored.v_col["kernel"])


def test_non_finite_values_at_pruned_entries_stay_out():
    """Adam with eps = 0 gives 0/0 at pruned entries, and a NaN gradient may sit there too:
    pruned weights still land on exactly 0.0 and the kept ones stay finite."""
    params = {"w": jnp.asarray([1.0, -2.0, 3.0, 0.5])}
    mask = {"w": np.array([1.0, 0.0, 1.0, 0.0])}
    tx = masked(optax.adam(1e-2, eps=0.0), initial_mask=mask)
    state = tx.init(params)
    for _ in range(5):
        grads = {"w": jnp.asarray([0.3, jnp.nan, -0.2, jnp.inf])}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        w = np.asarray(params["w"])
        assert np.all(w[[1, 3]] == 0.0) and np.all(np.isfinite(w))
        assert np.all(np.isfinite(np.asarray(state.inner_state[0].mu["w"])))


def test_initial_mask_function_broadcast_and_dtypes():
    params = {"kernel": jnp.ones((4, 3), jnp.bfloat16), "bias": jnp.ones(3)}
    column_mask = {"kernel": np.array([[True, False, True]]), "bias": np.array([1, 0, 1])}
    tx = masked(optax.sgd(0.5), initial_mask=lambda p: column_mask)
    state = tx.init(params)
    assert isinstance(state, MaskedState)
    assert state.mask["kernel"].shape == (4, 3) and state.mask["kernel"].dtype == jnp.bfloat16
    assert state.mask["bias"].dtype == jnp.float32
    np.testing.assert_array_equal(state.mask["kernel"], np.tile([[1, 0, 1]], (4, 1)))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    new = optax.apply_updates(params, updates)
    assert np.all(np.asarray(new["kernel"], np.float32)[:, 1] == 0.0)
    np.testing.assert_array_equal(np.asarray(new["kernel"], np.float32)[:, 0], 0.5)
    pruned = apply_mask(params, column_mask)
    assert pruned["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(pruned["bias"]), [1, 0, 1])


def test_dense_by_default():
    params = {"w": jnp.arange(3.0)}
    state = masked(optax.sgd(0.1)).init(params)
    np.testing.assert_array_equal(state.mask["w"], np.ones(3))


def test_update_requires_params():
    tx = masked(optax.adam(1e-3))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="update needs params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize(
    ("mask", "error", "match"),
    [
        ({"v": np.ones(3)}, ValueError, r"new_mask must have the pytree structure"),
        ({"w": np.ones(4)}, ValueError, r"new_mask\['w'\]: shape \(4,\) does not broadcast"),
        ({"w": np.ones((2, 3))}, ValueError, r"new_mask\['w'\]: shape \(2, 3\) does not broadcast"),
        ({"w": np.array([1.0, 0.5, 0.0])}, ValueError, r"new_mask\['w'\]: .* 0 or 1, got 0.5"),
        ({"w": np.array([1.0, np.nan, 0.0])}, ValueError, r"0 or 1, got nan"),
        ({"w": np.ones(3, np.complex64)}, TypeError, r"new_mask\['w'\]: expected a boolean"),
    ],
)
def test_set_mask_rejects_bad_masks(mask, error, match):
    params = {"w": jnp.ones(3)}
    state = masked(optax.sgd(0.1)).init(params)
    with pytest.raises(error, match=match):
        set_mask(state, mask)


def test_bad_state_and_initial_mask():
    params = {"w": jnp.ones(3)}
    with pytest.raises(TypeError, match="state must be a MaskedState"):
        set_mask(optax.sgd(0.1).init(params), {"w": np.ones(3)})
    with pytest.raises(ValueError, match=r"initial_mask\['w'\]: mask entries must be 0 or 1"):
        masked(optax.sgd(0.1), initial_mask={"w": np.full(3, 2.0)}).init(params)
    with pytest.raises(ValueError, match=r"mask must have the pytree structure"):
        apply_mask(params, [np.ones(3)])


_PARALLEL_SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, PartitionSpec as P
    from jaxprune.optim.masked import apply_mask, masked, set_mask

    devices = jax.local_devices()
    assert len(devices) == 4, devices
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 5)), rng.normal(size=(16, 2))
    mask0 = {"b": np.array([1.0, 0.0]), "w": (rng.random((5, 2)) > 0.3) * 1.0}
    mask1 = {"b": np.array([0.0, 1.0]), "w": (rng.random((5, 2)) > 0.5) * 1.0}
    params = apply_mask({"b": rng.normal(size=2), "w": rng.normal(size=(5, 2))}, mask0)
    tx = masked(optax.adamw(0.05, weight_decay=0.1), initial_mask=mask0)

    def loss(p, x, y):
        return 0.5 * jnp.mean(jnp.sum((x @ p["w"] + p["b"] - y) ** 2, axis=-1))

    def make_step(grad_fn):
        def step(p, s, x, y):
            u, s = tx.update(grad_fn(p, x, y), s, p)
            return optax.apply_updates(p, u), s
        return step

    def pmean_grad(p, x, y):  # pmap: average the per-device gradients
        return jax.lax.pmean(jax.grad(loss)(p, x, y), "d")

    def grad_of_pmean(p, x, y):
        # shard_map (check_vma): the gradient of a replicated input is summed over devices by
        # autodiff itself, so average the loss instead of the gradients.
        return jax.grad(lambda q: jax.lax.pmean(loss(q, x, y), "d"))(p)

    def train(step, set_fn, p, s, x, y, m1):
        for t in range(20):
            if t == 10:
                s = set_fn(s, m1)
            p, s = step(p, s, x, y)
        return p, s

    single = train(jax.jit(make_step(jax.grad(loss))), jax.jit(set_mask), params, tx.init(params), x, y, mask1)

    stack = lambda tree: jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * 4), tree)
    shard = lambda a: a.reshape(4, 4, *a.shape[1:])
    pmapped = train(
        jax.pmap(make_step(pmean_grad), axis_name="d"),
        jax.pmap(lambda s, m: set_mask(s, m)),
        stack(params), stack(tx.init(params)), shard(x), shard(y), stack(mask1),
    )

    mesh = Mesh(np.array(devices), ("d",))
    sharded = train(
        jax.jit(jax.shard_map(
            make_step(grad_of_pmean), mesh=mesh, in_specs=(P(), P(), P("d"), P("d")), out_specs=(P(), P())
        )),
        jax.jit(set_mask), params, tx.init(params), x, y, mask1,
    )

    for name, (p, s) in {"pmap": pmapped, "shard_map": sharded}.items():
        for k in ("b", "w"):
            replicas = np.asarray(p[k]).reshape(-1, *np.shape(single[0][k]))
            assert all(np.array_equal(r, replicas[0]) for r in replicas), (name, k)
            assert np.all(replicas[:, mask1[k] == 0] == 0.0), (name, k)
            np.testing.assert_allclose(replicas[0], single[0][k], rtol=1e-12, atol=1e-12)
            mu = np.asarray(s.inner_state[0].mu[k]).reshape(replicas.shape)[0]
            np.testing.assert_allclose(mu, single[1].inner_state[0].mu[k], rtol=1e-12, atol=1e-12)
    print("parallel ok")
    """
)


def test_data_parallel_pmap_and_shard_map_match_single_device():
    """Data parallelism over 4 CPU devices (gradients averaged with pmean) gives the
    single-device result, with pruned weights exactly 0.0 on every replica."""
    result = subprocess.run(
        [sys.executable, "-c", _PARALLEL_SCRIPT],
        cwd=ROOT,
        env=cpu_devices_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parallel ok" in result.stdout
