"""Hutch++, XTrace and Lanczos-deflated Hutchinson against exact traces (``jax.hessian``) of tiny models and quadratics.

Statistical checks run many keys at once (``jit(vmap)``) with fixed seeds; a mean over keys
must lie within 5 of its own standard errors of the exact trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_raises, explicit_hessian, table, tiny_mlp_apply, tiny_mlp_problem

from jaxprune.spectra import deflated_trace, hessian_trace, hutchpp_trace, xtrace

SIGMAS = 5.0
KEYS = 400
ESTIMATORS = {"hutchpp": hutchpp_trace, "xtrace": xtrace, "deflated": deflated_trace}


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


_MLP_PARAMS, _MLP_X, _MLP_Y = tiny_mlp_problem(np.random.default_rng(0))


def mlp_params():
    """The 38 float64 parameters (4 leaves) of a 3-6-2 tanh MLP."""
    return {name: jnp.asarray(value) for name, value in _MLP_PARAMS.items()}


def mlp_loss(params):
    return 0.5 * jnp.mean(jnp.sum((tiny_mlp_apply(params, _MLP_X) - _MLP_Y) ** 2, axis=-1))


def quadratic(eigenvalues, seed=0):
    """``loss(p) = ½ vᵀ A v`` on ``p = {"a": (4, 5), "b": (P - 20,)}`` (``v`` the flat ``p``),
    ``A = U diag(eigenvalues) Uᵀ`` with a random orthogonal ``U``; returns loss, params, A."""
    dim = len(eigenvalues)
    u = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))[0]
    a = jnp.asarray(u @ np.diag(eigenvalues) @ u.T)

    def loss(p):
        v = jnp.concatenate([jnp.ravel(p["a"]), p["b"]])
        return 0.5 * v @ a @ v

    params = {"a": jnp.ones((4, 5)), "b": jnp.zeros(dim - 20)}
    return loss, params, np.asarray(a)


def many(estimator, loss, params, num_probes, **kwargs):
    """Estimates and reported standard errors over ``KEYS`` keys, as NumPy arrays."""
    run = jax.jit(
        lambda keys: jax.lax.map(
            lambda k: estimator(loss, params, k, num_probes=num_probes, **kwargs)[:2], keys
        )
    )
    estimates, stderrs = run(jax.random.split(jax.random.key(7), KEYS))
    return np.asarray(estimates), np.asarray(stderrs)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_unbiased_on_a_tiny_mlp(name):
    exact = np.trace(explicit_hessian(mlp_loss, mlp_params()))
    estimates, _ = many(ESTIMATORS[name], mlp_loss, mlp_params(), 12)
    assert abs(estimates.mean() - exact) <= SIGMAS * estimates.std(ddof=1) / np.sqrt(KEYS)


@pytest.mark.parametrize(
    "name, num_probes, distribution",
    [
        ("hutchpp", 9, "rademacher"),
        ("hutchpp", 10, "gaussian"),
        ("xtrace", 8, "gaussian"),
        ("deflated", 12, "rademacher"),
    ],
)
def test_exact_when_the_rank_is_within_the_sketch(name, num_probes, distribution):
    # Rank 3 in P = 40: Hutch++ sketches num_probes // 3 = 3 vectors, XTrace 4; four Lanczos
    # steps span the start vector and the 3-dimensional range of H.
    loss, params, a = quadratic(np.r_[5.0, 2.0, 0.5, np.zeros(37)])
    result = ESTIMATORS[name](
        loss, params, jax.random.key(1), num_probes=num_probes, distribution=distribution
    )
    np.testing.assert_allclose(result.estimate, np.trace(a), rtol=1e-10)
    np.testing.assert_allclose(result.samples, np.trace(a), rtol=1e-10)
    assert result.stderr <= 1e-10 * np.trace(a)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_stderr_matches_the_spread_over_keys(name):
    # XTrace's leave-one-out error is an estimate from dependent samples: a factor of 2.
    estimates, stderrs = many(ESTIMATORS[name], mlp_loss, mlp_params(), 12)
    ratio = estimates.std(ddof=1) / np.sqrt(np.mean(stderrs**2))
    assert 0.5 <= ratio <= 2.0, ratio


@pytest.mark.parametrize("name", ESTIMATORS)
def test_variance_well_below_hutchinson_on_a_decaying_spectrum(name):
    loss, params, a = quadratic(10.0 * 0.6 ** np.arange(40))
    exact = np.trace(a)
    plain, _ = many(hessian_trace, loss, params, 24)
    reduced, _ = many(ESTIMATORS[name], loss, params, 24)
    assert abs(reduced.mean() - exact) <= SIGMAS * reduced.std(ddof=1) / np.sqrt(KEYS)
    assert reduced.var() <= 0.1 * plain.var(), (reduced.var(), plain.var())


@pytest.mark.parametrize("name", ESTIMATORS)
def test_jit_matches_eager(name):
    estimator = ESTIMATORS[name]
    key = jax.random.key(3)
    eager = estimator(mlp_loss, mlp_params(), key, num_probes=8)
    jitted = jax.jit(lambda p, k: estimator(mlp_loss, p, k, num_probes=8))(mlp_params(), key)
    np.testing.assert_allclose(jitted.samples, eager.samples, rtol=1e-9)
    assert jitted.num_probes == eager.num_probes == {"hutchpp": 4, "xtrace": 4, "deflated": 6}[name]


def test_batch_size_does_not_change_the_result():
    key = jax.random.key(5)
    for estimator in ESTIMATORS.values():
        one = estimator(mlp_loss, mlp_params(), key, num_probes=12, batch_size=1)
        block = estimator(mlp_loss, mlp_params(), key, num_probes=12, batch_size=4)
        np.testing.assert_allclose(block.samples, one.samples, rtol=1e-9)


def _nan_params():
    params = mlp_params()
    return {**params, "b1": params["b1"].at[0].set(jnp.nan)}


def _call(estimator, loss=mlp_loss, params=None, **kwargs):
    kwargs.setdefault("num_probes", 12)
    params = mlp_params() if params is None else params
    return lambda: estimator(loss, params, jax.random.key(0), **kwargs)


BAD_INPUT = [
    ("hutchpp-too-few", _call(hutchpp_trace, num_probes=2), ValueError, r"num_probes: .*>= 3"),
    ("hutchpp-float", _call(hutchpp_trace, num_probes=6.0), TypeError, "num_probes"),
    ("xtrace-odd", _call(xtrace, num_probes=7), ValueError, r"num_probes: expected an even"),
    ("xtrace-too-few", _call(xtrace, num_probes=2), ValueError, r"\[4, 76\].*got 2"),
    ("xtrace-too-many", _call(xtrace, num_probes=78), ValueError, r"\[4, 76\].*got 78"),
    ("deflated-too-few", _call(deflated_trace, num_probes=1), ValueError, r"num_probes: .*>= 2"),
    (
        "deflated-no-probe-left",
        _call(deflated_trace, num_lanczos_steps=12),
        ValueError,
        r"num_lanczos_steps: .*\[1, 11\].*got 12",
    ),
    ("deflated-zero-steps", _call(deflated_trace, num_lanczos_steps=0), ValueError, "num_lanczos"),
    ("distribution", _call(xtrace, distribution="uniform"), ValueError, "distribution"),
    ("batch-size", _call(hutchpp_trace, batch_size=0), ValueError, "batch_size"),
    ("nan-params", _call(xtrace, params=_nan_params()), ValueError, r"params\['b1'\]"),
    (
        "vector-loss",
        _call(xtrace, loss=lambda p: tiny_mlp_apply(p, _MLP_X)),
        ValueError,
        "scalar loss",
    ),
    (
        "hutchpp-nan-loss",
        _call(hutchpp_trace, loss=lambda p: mlp_loss(p) + jnp.nan),
        ValueError,
        "finite loss",
    ),
    (
        "deflated-nan-loss",
        _call(deflated_trace, loss=lambda p: mlp_loss(p) + jnp.nan),
        ValueError,
        "finite loss",
    ),
    (
        "xtrace-nan-loss",
        _call(xtrace, loss=lambda p: mlp_loss(p) * jnp.sqrt(-1.0)),
        ValueError,
        "finite Hessian products",
    ),
]


@table(BAD_INPUT)
def test_bad_input(call, error, match):
    assert_raises(call, error, match)
