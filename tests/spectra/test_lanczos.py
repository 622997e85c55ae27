"""Lanczos eigenvalues and stochastic Lanczos quadrature against explicit Hessians.

References are ``numpy.linalg.eigvalsh`` of the Hessian formed by ``jax.hessian`` on tiny
models (float64), and closed-form spectra of quadratic losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import explicit_hessian, tiny_mlp_apply, tiny_mlp_problem
from jax.flatten_util import ravel_pytree

from jaxprune.spectra.lanczos import (
    EigenResult,
    SpectralDensity,
    density_moments,
    hessian_eigenvalues,
    hessian_spectral_density,
    lanczos_tridiagonal,
)

# Deviations of a mean from its expectation allowed, in standard deviations of the mean.
SIGMAS = 5.0


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


_RNG = np.random.default_rng(1)
MLP_PARAMS, MLP_X, MLP_Y = tiny_mlp_problem(_RNG)


def mlp_params():
    """The 38 float64 parameters of a 3-6-2 tanh MLP."""
    return {name: jnp.asarray(value) for name, value in MLP_PARAMS.items()}


def mlp_loss(params):
    return 0.5 * jnp.mean(jnp.sum((tiny_mlp_apply(params, MLP_X) - MLP_Y) ** 2, axis=-1))


def quadratic_loss(diagonal):
    """``½ Σ d_i w_i²`` on params ``{"a": (2, 3), "b": (rest,)}``: Hessian ``diag(d)``."""
    d = jnp.asarray(diagonal)

    def loss(params):
        return 0.5 * jnp.sum(d * ravel_pytree(params)[0] ** 2)

    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(d.size - 6)}
    return loss, params


def test_top_eigenvalues_match_eigvalsh():
    params = mlp_params()
    hessian = explicit_hessian(mlp_loss, params)
    want = np.linalg.eigvalsh(hessian)[::-1][:5]
    result = hessian_eigenvalues(mlp_loss, params, jax.random.key(0), k=5, num_iterations=38)
    assert isinstance(result, EigenResult)
    assert result.eigenvectors is None and result.residuals is None
    scale = np.abs(want).max()
    np.testing.assert_allclose(result.eigenvalues, want, rtol=1e-6, atol=1e-9 * scale)
    # Default Krylov dimension max(2k + 20, 40) is clipped to P = 38: the same exact result.
    default = hessian_eigenvalues(mlp_loss, params, jax.random.key(0), k=5)
    np.testing.assert_allclose(default.eigenvalues, want, rtol=1e-6, atol=1e-9 * scale)


def test_eigenvectors_satisfy_eigen_equation():
    params = mlp_params()
    hessian = explicit_hessian(mlp_loss, params)
    result = hessian_eigenvalues(
        mlp_loss, params, jax.random.key(1), k=3, num_iterations=38, return_eigenvectors=True
    )
    vectors = jax.vmap(lambda v: ravel_pytree(v)[0])(result.eigenvectors)
    assert vectors.shape == (3, 38)
    assert jax.tree_util.tree_structure(
        jax.tree_util.tree_map(lambda a: a[0], result.eigenvectors)
    ) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(3), atol=1e-10)
    residuals = np.linalg.norm(vectors @ hessian - result.eigenvalues[:, None] * vectors, axis=1)
    scale = np.abs(np.linalg.eigvalsh(hessian)).max()
    assert np.all(residuals <= 1e-7 * scale)
    np.testing.assert_allclose(result.residuals, residuals, atol=1e-10 * scale)


def test_partial_krylov_ritz_values_interlace():
    # Cauchy interlacing: the i-th largest Ritz value never exceeds the i-th largest eigenvalue.
    params = mlp_params()
    exact = np.linalg.eigvalsh(explicit_hessian(mlp_loss, params))[::-1]
    result = hessian_eigenvalues(mlp_loss, params, jax.random.key(2), k=4, num_iterations=12)
    assert np.all(np.diff(result.eigenvalues) <= 0)
    assert np.all(result.eigenvalues <= exact[:4] + 1e-10 * np.abs(exact).max())


def test_breakdown_on_few_distinct_eigenvalues_restarts():
    # 3 distinct eigenvalues: the Krylov space of any start vector is invariant after 3 steps.
    diagonal = np.array([3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0])
    loss, params = quadratic_loss(diagonal)
    result = hessian_eigenvalues(loss, params, jax.random.key(3), k=10, num_iterations=10)
    np.testing.assert_allclose(result.eigenvalues, np.sort(diagonal)[::-1], atol=1e-12)


def test_zero_and_one_dimensional_hessians_give_no_nan():
    loss, params = quadratic_loss(np.zeros(8))
    result = hessian_eigenvalues(loss, params, jax.random.key(4), k=3, return_eigenvectors=True)
    np.testing.assert_array_equal(result.eigenvalues, np.zeros(3))
    assert np.all(np.isfinite(ravel_pytree(result.eigenvectors)[0]))

    def scalar_loss(params):
        return 2.5 * params["w"] ** 2

    scalar = hessian_eigenvalues(scalar_loss, {"w": jnp.asarray(0.3)}, jax.random.key(5), k=1)
    np.testing.assert_allclose(scalar.eigenvalues, [5.0], rtol=1e-12)


def test_lanczos_tridiagonal_is_an_orthogonal_projection():
    a = _RNG.normal(size=(12, 12))
    matrix = a + a.T
    alphas, betas, basis = lanczos_tridiagonal(
        lambda v: matrix @ v, 12, jax.random.key(6), 7, jnp.float64
    )
    assert alphas.shape == (7,) and betas.shape == (6,) and basis.shape == (7, 12)
    tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    np.testing.assert_allclose(basis @ basis.T, np.eye(7), atol=1e-12)
    np.testing.assert_allclose(basis @ matrix @ basis.T, tridiagonal, atol=1e-10)


def test_hessian_eigenvalues_is_jittable():
    params = mlp_params()
    eager = hessian_eigenvalues(mlp_loss, params, jax.random.key(7), k=2)
    jitted = jax.jit(lambda p: hessian_eigenvalues(mlp_loss, p, jax.random.key(7), k=2))(params)
    np.testing.assert_allclose(jitted.eigenvalues, eager.eigenvalues, rtol=1e-10)


def test_spectral_density_quadrature():
    params = mlp_params()
    hessian = explicit_hessian(mlp_loss, params)
    eigenvalues = np.linalg.eigvalsh(hessian)
    dim, num_probes = 38, 400
    result = hessian_spectral_density(
        mlp_loss, params, jax.random.key(8), num_probes=num_probes, num_iterations=dim
    )
    assert isinstance(result, SpectralDensity)
    assert result.nodes.shape == result.weights.shape == (num_probes, dim)
    assert result.grid.shape == result.density.shape == (512,)
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, atol=1e-10)
    # With a full Krylov space every probe's Ritz values are the Hessian's eigenvalues.
    np.testing.assert_allclose(result.nodes[0], eigenvalues, atol=1e-9 * np.abs(eigenvalues).max())
    assert np.all(result.density >= 0)
    assert abs(np.trapezoid(result.density, result.grid) - 1.0) <= 1e-2
    # Per probe, sum_j w_j θ_j^r = uᵀ H^r u exactly, u uniform on the unit sphere:
    # E = Tr(A)/P and Var = 2 (Tr(A²) − Tr(A)²/P) / (P (P + 2)) for A = H^r.
    moments = density_moments(result, (0, 1, 2))
    np.testing.assert_allclose(moments[0], 1.0, atol=1e-10)
    for order, moment in zip((1, 2), moments[1:], strict=True):
        powers = eigenvalues**order
        mean = powers.sum() / dim
        variance = 2.0 * (np.sum(powers**2) - powers.sum() ** 2 / dim) / (dim * (dim + 2))
        assert abs(moment - mean) <= SIGMAS * np.sqrt(variance / num_probes)


def test_spectral_density_of_known_spectrum():
    # Spectrum {-1 (x4), 2 (x6)}: the density puts mass 0.4 near -1 and 0.6 near 2.
    loss, params = quadratic_loss(np.array([-1.0] * 4 + [2.0] * 6))
    result = hessian_spectral_density(loss, params, jax.random.key(9), num_probes=4000)
    near_minus_one = np.asarray(result.grid < 0.5)
    mass = np.trapezoid(np.where(near_minus_one, result.density, 0.0), result.grid)
    # Mass near -1 is the mean of ‖u_{1..4}‖² ~ Beta(2, 3): variance 0.04 per probe.
    # The 5-sigma grid padding and the trapezoid rule cost about 1e-6 of mass.
    assert abs(mass - 0.4) <= SIGMAS * np.sqrt(0.04 / 4000) + 1e-5


def test_bad_arguments_are_rejected():
    params = mlp_params()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="k must be <="):
        hessian_eigenvalues(mlp_loss, params, key, k=39)
    with pytest.raises(ValueError, match="k: expected a positive int, got 0"):
        hessian_eigenvalues(mlp_loss, params, key, k=0)
    with pytest.raises(TypeError, match="k: expected a positive int"):
        hessian_eigenvalues(mlp_loss, params, key, k=1.5)
    with pytest.raises(ValueError, match="num_iterations"):
        hessian_eigenvalues(mlp_loss, params, key, k=5, num_iterations=3)
    with pytest.raises(ValueError, match="num_iterations"):
        lanczos_tridiagonal(lambda v: v, 4, key, 5, jnp.float64)
    bad = dict(params, b1=params["b1"].at[0].set(jnp.inf))
    with pytest.raises(ValueError, match="non-finite"):
        hessian_eigenvalues(mlp_loss, bad, key, k=1)
    with pytest.raises(ValueError, match="non-finite"):
        hessian_spectral_density(mlp_loss, bad, key)
    with pytest.raises(ValueError, match="num_probes"):
        hessian_spectral_density(mlp_loss, params, key, num_probes=0)
    with pytest.raises(TypeError, match="num_probes"):
        hessian_spectral_density(mlp_loss, params, key, num_probes=2.5)
    with pytest.raises(ValueError, match="grid_size"):
        hessian_spectral_density(mlp_loss, params, key, grid_size=1)
    with pytest.raises(ValueError, match="sigma"):
        hessian_spectral_density(mlp_loss, params, key, sigma=-1.0)
