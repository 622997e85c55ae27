"""Hessian-vector products and Hutchinson estimators against explicit Hessians of tiny models.

Stochastic estimates use fixed keys and are compared with the exact value within 5 theoretical
standard deviations of the mean: for a probe with i.i.d. entries and ``S = (A + Aᵀ)/2``,
``Var(vᵀ A v) = 2 ‖S‖_F²`` (Gaussian) and ``2 (‖S‖_F² − Σ S_ii²)`` (Rademacher).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import explicit_hessian, tiny_mlp_apply, tiny_mlp_problem
from jax.flatten_util import ravel_pytree

from jaxprune.group_ids import leaf_group_ids
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.spectra.hessian import (
    TraceEstimate,
    gauss_newton_diagonal,
    group_hessian_traces,
    hessian_diagonal,
    hessian_quadratic_form,
    hessian_trace,
    hvp,
    output_hessian_trace,
    output_hvp,
    rademacher_signs,
)

# Deviations of a mean from its expectation allowed, in standard deviations of the mean.
SIGMAS = 5.0
# Relative accuracy required of a reported standard error (>= 2000 probes).  A sample standard
# deviation of n draws has relative spread about sqrt((kurtosis - 1) / (4 n)): under 5% for
# n = 2000 up to kurtosis 15 (a rank-one Gaussian quadratic form, chi-squared with 1 dof).
STDERR_RTOL = 0.25


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(jnp.tanh(nn.Dense(5)(x)))


_RNG = np.random.default_rng(0)
MLP_PARAMS, MLP_X, MLP_Y = tiny_mlp_problem(_RNG)


def mlp_params():
    """The 38 float64 parameters of a 3-6-2 tanh MLP."""
    return {name: jnp.asarray(value) for name, value in MLP_PARAMS.items()}


mlp_apply = tiny_mlp_apply


def mlp_loss(params):
    return 0.5 * jnp.mean(jnp.sum((mlp_apply(params, MLP_X) - MLP_Y) ** 2, axis=-1))


@functools.cache
def flax_model():
    """A 3-5-2 Flax tanh network (32 float64 parameters), its apply function and 4 inputs."""
    model = TinyNet()
    x = jnp.asarray(_RNG.normal(size=(4, 3)))
    params = model.init(jax.random.key(3), x)
    return model.apply, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params), x


def quadratic_form_variance(a, distribution):
    """Variance of ``vᵀ A v`` for one probe with i.i.d. Gaussian or Rademacher entries."""
    s = 0.5 * (a + a.T)
    frob = np.sum(s**2)
    return 2.0 * (frob if distribution == "gaussian" else frob - np.sum(np.diag(s) ** 2))


def random_tangent(params, key):
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(key, flat.shape, flat.dtype))


def test_hvp_matches_explicit_hessian():
    params = mlp_params()
    tangent = random_tangent(params, jax.random.key(4))
    got = ravel_pytree(hvp(mlp_loss, params, tangent))[0]
    want = explicit_hessian(mlp_loss, params) @ ravel_pytree(tangent)[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_quadratic_form_matches_explicit_hessian_and_its_gradient():
    params = mlp_params()
    tangent = random_tangent(params, jax.random.key(14))
    v = ravel_pytree(tangent)[0]
    got = hessian_quadratic_form(mlp_loss, params, tangent)
    np.testing.assert_allclose(got, v @ explicit_hessian(mlp_loss, params) @ v, rtol=1e-10)

    # Differentiated again (as the PL gating objective does): the gradient of vᵀ H(w) v in w
    # is the third derivative contracted twice; reference: jax.jacobian of the explicit form.
    flat, unravel = ravel_pytree(params)

    def explicit_form(w):
        return v @ jax.hessian(lambda u: mlp_loss(unravel(u)))(w) @ v

    grad = ravel_pytree(jax.grad(lambda p: hessian_quadratic_form(mlp_loss, p, tangent))(params))
    np.testing.assert_allclose(grad[0], jax.grad(explicit_form)(flat), rtol=1e-9, atol=1e-12)


def test_output_hvp_matches_hessian_of_summed_outputs():
    apply_fn, params, x = flax_model()
    tangent = random_tangent(params, jax.random.key(5))
    got = ravel_pytree(output_hvp(apply_fn, params, x, tangent))[0]
    hessian = explicit_hessian(lambda p: jnp.sum(apply_fn(p, x)), params)
    np.testing.assert_allclose(got, hessian @ ravel_pytree(tangent)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hessian_trace_matches_exact_trace(distribution):
    params = mlp_params()
    hessian = explicit_hessian(mlp_loss, params)
    exact = np.trace(hessian)
    num_probes = 40_000
    sd = np.sqrt(quadratic_form_variance(hessian, distribution) / num_probes)
    assert SIGMAS * sd < 0.05 * abs(exact)  # so the check below means "within 5%"
    result = hessian_trace(
        mlp_loss, params, jax.random.key(7), num_probes=num_probes, distribution=distribution
    )
    assert isinstance(result, TraceEstimate)
    assert result.num_probes == num_probes and result.samples.shape == (num_probes,)
    np.testing.assert_allclose(result.estimate, np.mean(result.samples), rtol=1e-12)
    assert abs(result.estimate - exact) <= 4.0 * result.stderr
    assert abs(result.estimate - exact) <= SIGMAS * sd
    np.testing.assert_allclose(result.stderr, sd, rtol=STDERR_RTOL)


def test_rademacher_signs_are_balanced_and_uncorrelated():
    # 70 entries span 3 words, so entries drawn from bits of one word are compared too.
    n = 8_000
    signs = jax.vmap(lambda k: rademacher_signs(k, (7, 10), jnp.float32))(
        jax.random.split(jax.random.key(11), n)
    )
    assert signs.shape == (n, 7, 10) and signs.dtype == jnp.float32
    assert set(np.unique(np.asarray(signs))) == {-1.0, 1.0}
    flat = np.asarray(signs, np.float64).reshape(n, -1)
    second_moments = flat.T @ flat / n
    # Each entry of the second-moment matrix is a mean of n signs (sd 1/sqrt(n)) off the diagonal.
    np.testing.assert_array_equal(np.diag(second_moments), 1.0)
    off_diagonal = second_moments[~np.eye(70, dtype=bool)]
    assert np.max(np.abs(off_diagonal)) <= SIGMAS / np.sqrt(n)
    assert np.max(np.abs(flat.mean(axis=0))) <= SIGMAS / np.sqrt(n)
    assert not np.array_equal(signs[0], signs[1])


def test_rademacher_signs_reject_bad_shape_and_dtype():
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="shape: expected a tuple of ints >= 0, got 5"):
        rademacher_signs(key, 5)
    with pytest.raises(ValueError, match="shape: expected an int >= 0, got -1"):
        rademacher_signs(key, (3, -1))
    with pytest.raises(TypeError, match="dtype: expected a floating dtype"):
        rademacher_signs(key, (3,), jnp.int32)
    assert rademacher_signs(key, (0, 4)).shape == (0, 4)


def test_hessian_trace_batching_does_not_change_samples():
    params = mlp_params()
    key = jax.random.key(8)
    unbatched = hessian_trace(mlp_loss, params, key, num_probes=10, batch_size=1)
    batched = hessian_trace(mlp_loss, params, key, num_probes=10, batch_size=4)
    np.testing.assert_allclose(batched.samples, unbatched.samples, rtol=1e-12)


def test_single_probe_has_infinite_stderr():
    result = hessian_trace(mlp_loss, mlp_params(), jax.random.key(9), num_probes=1)
    assert result.samples.shape == (1,)
    assert np.isinf(result.stderr) and np.isfinite(result.estimate)


def test_group_hessian_traces_match_exact_group_diagonals():
    apply_fn, params, x = flax_model()
    y = jax.random.normal(jax.random.key(10), (x.shape[0], 2), jnp.float64)

    def loss(p):
        return 0.5 * jnp.sum((apply_fn(p, x) - y) ** 2)

    # Neurons of the first layer only: the second layer's weights stay ungrouped (-1).
    group_ids = build_group_ids(params, neurons(r"Dense_0$"))[0]
    ids = np.concatenate([g.ravel() for g in leaf_group_ids(params, group_ids)])
    assert np.any(ids == -1)
    hessian = explicit_hessian(loss, params)
    num_probes = 2000
    result = group_hessian_traces(
        loss, params, group_ids, jax.random.key(11), num_probes=num_probes
    )
    p = ids.max() + 1
    assert result.estimate.shape == (p,) and result.samples.shape == (num_probes, p)
    for g in range(p):
        mask = ids == g
        exact = np.sum(np.diag(hessian)[mask])
        sd = np.sqrt(quadratic_form_variance(hessian * mask[:, None], "rademacher") / num_probes)
        assert abs(result.estimate[g] - exact) <= SIGMAS * sd
        np.testing.assert_allclose(result.stderr[g], sd, rtol=STDERR_RTOL)


def test_output_hessian_trace_matches_brute_force():
    apply_fn, params, x = flax_model()
    hessian = explicit_hessian(lambda p: jnp.sum(apply_fn(p, x)), params)
    num_probes = 2000
    sd = np.sqrt(quadratic_form_variance(hessian, "gaussian") / num_probes)
    result = output_hessian_trace(apply_fn, params, x, jax.random.key(12), num_probes=num_probes)
    assert abs(result.estimate - np.trace(hessian)) <= SIGMAS * sd
    assert abs(result.estimate - np.trace(hessian)) <= 4.0 * result.stderr


def test_output_hessian_trace_gradient_matches_finite_differences():
    # d/ds T(s · w) at s = 1 is <∇T(w), w>: the parameter gradient against a jitted central
    # difference along the ray (error O(step²) ≈ 1e-8 relative).
    apply_fn, params, x = flax_model()
    key = jax.random.key(13)

    def trace_of_params(p):
        return output_hessian_trace(apply_fn, p, x, key, num_probes=6).estimate

    @jax.jit
    def trace_at_scale(scale):
        return trace_of_params(jax.tree_util.tree_map(lambda a: scale * a, params))

    param_grad = jax.grad(trace_of_params)(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(param_grad))
    directional = ravel_pytree(param_grad)[0] @ ravel_pytree(params)[0]
    step = 1e-4
    finite_difference = (trace_at_scale(1.0 + step) - trace_at_scale(1.0 - step)) / (2 * step)
    np.testing.assert_allclose(directional, finite_difference, rtol=1e-6)


def test_hessian_diagonal_matches_exact_diagonal():
    params = mlp_params()
    hessian = explicit_hessian(mlp_loss, params)
    num_probes = 2000
    result = hessian_diagonal(mlp_loss, params, jax.random.key(14), num_probes=num_probes)
    assert jax.tree_util.tree_structure(result.estimate) == jax.tree_util.tree_structure(params)
    estimate = ravel_pytree(result.estimate)[0]
    stderr = ravel_pytree(result.stderr)[0]
    off_diagonal = hessian - np.diag(np.diag(hessian))
    sd = np.sqrt(np.sum(off_diagonal**2, axis=1) / num_probes)
    assert np.all(np.abs(estimate - np.diag(hessian)) <= SIGMAS * sd + 1e-12)
    np.testing.assert_allclose(stderr, sd, rtol=STDERR_RTOL)


@pytest.mark.parametrize("loss_hessian", [None, "shared", "per_example"])
def test_gauss_newton_diagonal_matches_explicit_jacobians(loss_hessian):
    params = mlp_params()
    x = MLP_X
    n, k = x.shape[0], 2
    flat, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jacrev(lambda f: mlp_apply(unravel(f), x))(flat)).reshape(n, k, -1)
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(n, k, k))
    per_example = factors @ np.swapaxes(factors, 1, 2)
    hess = {None: None, "shared": per_example[0], "per_example": per_example}[loss_hessian]
    out_hessians = np.broadcast_to(np.eye(k) if hess is None else hess, (n, k, k))
    want = np.einsum("nap,nab,nbp->p", jac, out_hessians, jac)
    got = gauss_newton_diagonal(mlp_apply, params, x, loss_hessian=hess)
    np.testing.assert_allclose(ravel_pytree(got)[0], want, rtol=1e-10, atol=1e-12)


def test_gauss_newton_diagonal_rejects_bad_loss_hessian_shape():
    with pytest.raises(ValueError, match="loss_hessian"):
        gauss_newton_diagonal(mlp_apply, mlp_params(), MLP_X, loss_hessian=np.eye(3))


def _estimators():
    apply_fn, params, x = flax_model()
    group_ids = build_group_ids(params, neurons(r"Dense_\d+$"))[0]

    def loss(p):
        return jnp.sum(apply_fn(p, x) ** 2)

    return params, {
        "hessian_trace": lambda p, **kw: hessian_trace(loss, p, jax.random.key(0), **kw),
        "output_hessian_trace": lambda p, **kw: output_hessian_trace(
            apply_fn, p, x, jax.random.key(0), **kw
        ),
        "group_hessian_traces": lambda p, **kw: group_hessian_traces(
            loss, p, group_ids, jax.random.key(0), **kw
        ),
        "hessian_diagonal": lambda p, **kw: hessian_diagonal(loss, p, jax.random.key(0), **kw),
    }


@pytest.mark.parametrize(
    "name", ["hessian_trace", "output_hessian_trace", "group_hessian_traces", "hessian_diagonal"]
)
def test_estimators_reject_bad_arguments(name):
    params, estimators = _estimators()
    estimate = estimators[name]
    with pytest.raises(ValueError, match="num_probes"):
        estimate(params, num_probes=0)
    with pytest.raises(TypeError, match="num_probes"):
        estimate(params, num_probes=2.5)
    with pytest.raises(TypeError, match="num_probes"):
        estimate(params, num_probes=True)
    with pytest.raises(ValueError, match="distribution"):
        estimate(params, num_probes=2, distribution="uniform")
    with pytest.raises(ValueError, match="batch_size"):
        estimate(params, num_probes=2, batch_size=0)
    bad = jax.tree_util.tree_map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params)
    with pytest.raises(ValueError, match="non-finite"):
        estimate(bad, num_probes=2)


def test_group_hessian_traces_rejects_bad_group_ids():
    params, _ = _estimators()
    group_ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, 1, np.int32), params)
    with pytest.raises(ValueError, match="contain no weight"):
        group_hessian_traces(
            lambda p: ravel_pytree(p)[0].sum(), params, group_ids, jax.random.key(0), num_probes=2
        )


def test_default_probe_batch_by_backend_and_memory():
    from jaxprune.spectra.hessian import _default_probe_batch

    assert _default_probe_batch(64, 4 * 10**6, "cpu") == 1
    # Accelerators: min(num_probes, 16, memory / 8 / (3 × parameter bytes)), at least 1.
    assert _default_probe_batch(64, 4 * 10**6, "gpu", 80 * 2**30) == 16
    assert _default_probe_batch(8, 4 * 10**6, "tpu", 80 * 2**30) == 8
    assert _default_probe_batch(64, 2**30, "gpu", 48 * 2**30) == 2
    assert _default_probe_batch(64, 2**34, "gpu", 48 * 2**30) == 1
    assert _default_probe_batch(64, 2**28, "gpu") == 2  # 16 GiB assumed when not reported
