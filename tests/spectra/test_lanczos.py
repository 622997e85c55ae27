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


@pytest.mark.parametrize("steps", [7, 8, 19])  # one block of rows, a full one, three
def test_lanczos_tridiagonal_is_an_orthogonal_projection(steps):
    a = _RNG.normal(size=(24, 24))
    matrix = a + a.T
    tri = lanczos_tridiagonal(
        lambda v: matrix @ v, 24, jax.random.key(6), steps, jnp.float64, reorthogonalization="full"
    )
    alphas, betas, basis = tri.alphas, tri.betas[: steps - 1], tri.basis
    assert tri.alphas.shape == tri.betas.shape == (steps,) and basis.shape == (steps, 24)
    assert int(tri.num_steps) == steps and int(tri.num_reorthogonalizations) == steps
    tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    np.testing.assert_allclose(basis @ basis.T, np.eye(steps), atol=1e-12)
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


def _decaying_matrix(dim: int, dtype) -> np.ndarray:
    """A symmetric ``dim × dim`` matrix with a few large, well separated eigenvalues on top of
    a bulk near zero (the shape of a trained network's Hessian spectrum)."""
    rng = np.random.default_rng(11)
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    spectrum = np.concatenate([[50.0, 30.0, 20.0, 12.0], rng.normal(0.0, 0.5, dim - 4)])
    return ((basis * spectrum) @ basis.T).astype(dtype)


def test_partial_reorthogonalization_keeps_the_basis_semi_orthogonal():
    dtype, dim, steps = jnp.float32, 200, 60
    matrix = jnp.asarray(_decaying_matrix(dim, dtype))
    eps = float(jnp.finfo(dtype).eps)

    def loss_of_orthogonality(rule):
        tri = lanczos_tridiagonal(
            lambda v: matrix @ v, dim, jax.random.key(12), steps, dtype, reorthogonalization=rule
        )
        basis = np.asarray(tri.basis, np.float64)
        return np.abs(basis @ basis.T - np.eye(steps)).max(), tri

    partial, tri = loss_of_orthogonality("partial")
    plain, _ = loss_of_orthogonality("none")
    full, _ = loss_of_orthogonality("full")
    # Without reorthogonalization orthogonality is lost once the top Ritz values converge; the
    # partial rule holds it at sqrt(eps) while orthogonalizing on only some of the steps.
    assert plain > 0.1
    assert partial <= 10 * np.sqrt(eps)
    assert full <= 100 * eps
    assert 0 < int(tri.num_reorthogonalizations) < steps
    # Semi-orthogonality keeps T the projection of H to working precision: the top Ritz values
    # agree with full reorthogonalization's and with the exact eigenvalues.
    exact = np.linalg.eigvalsh(np.asarray(matrix, np.float64))[::-1][:4]
    values = np.linalg.eigvalsh(
        np.diag(tri.alphas) + np.diag(tri.betas[:-1], 1) + np.diag(tri.betas[:-1], -1)
    )
    np.testing.assert_allclose(values[::-1][:4], exact, rtol=50 * eps)


def test_early_stop_meets_the_residual_tolerance():
    params = mlp_params()
    hessian = explicit_hessian(mlp_loss, params)
    exact = np.linalg.eigvalsh(hessian)[::-1]
    scale = np.abs(exact).max()
    tol = 1e-6
    result = hessian_eigenvalues(
        mlp_loss,
        params,
        jax.random.key(13),
        k=2,
        num_iterations=38,
        tol=tol,
        return_eigenvectors=True,
    )
    # Stopped before the full Krylov space (38 steps), plus 2 HVPs of the Rayleigh-Ritz pass.
    assert int(result.num_matvecs) < 38 + 2
    vectors = jax.vmap(lambda v: ravel_pytree(v)[0])(result.eigenvectors)
    residuals = np.linalg.norm(vectors @ hessian - result.eigenvalues[:, None] * vectors, axis=1)
    assert np.all(residuals <= tol * scale)
    # |θ − λ| <= ‖r‖ for the nearest eigenvalue (Bauer-Fike for symmetric matrices).
    assert np.all(np.abs(result.eigenvalues - exact[:2]) <= tol * scale)


@pytest.mark.parametrize("method", ["power", "lobpcg"])
def test_other_methods_match_eigvalsh(method):
    params = mlp_params()
    hessian = explicit_hessian(mlp_loss, params)
    exact = np.linalg.eigvalsh(hessian)
    k = 2
    if method == "power":
        want = exact[np.argsort(-np.abs(exact))][:k]  # largest in magnitude
    else:
        want = exact[::-1][:k]
    scale = np.abs(exact).max()
    tol = 1e-8
    result = hessian_eigenvalues(
        mlp_loss,
        params,
        jax.random.key(14),
        k=k,
        method=method,
        tol=tol,
        num_iterations=2000,
        return_eigenvectors=True,
    )
    # The eigenvalue error of a pair with residual r is at most r²/gap: well below tol · scale.
    np.testing.assert_allclose(result.eigenvalues, want, atol=10 * tol * scale)
    vectors = jax.vmap(lambda v: ravel_pytree(v)[0])(result.eigenvectors)
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(k), atol=1e-6)
    residuals = np.linalg.norm(vectors @ hessian - result.eigenvalues[:, None] * vectors, axis=1)
    np.testing.assert_allclose(result.residuals, residuals, atol=1e-10 * scale)
    assert int(result.num_matvecs) > 0


def test_every_method_is_jittable():
    params = mlp_params()
    for method in ("power", "lobpcg"):  # Lanczos: test_hessian_eigenvalues_is_jittable

        def top(p, method=method):
            return hessian_eigenvalues(
                mlp_loss, p, jax.random.key(15), k=1, method=method, tol=1e-6
            ).eigenvalues

        np.testing.assert_allclose(jax.jit(top)(params), top(params), rtol=1e-8)


def test_spectral_density_rules_agree_below_full_krylov():
    params = mlp_params()
    kwargs = dict(num_probes=2, num_iterations=20)
    full = hessian_spectral_density(
        mlp_loss, params, jax.random.key(16), reorthogonalization="full", **kwargs
    )
    partial = hessian_spectral_density(mlp_loss, params, jax.random.key(16), **kwargs)
    scale = np.abs(full.nodes).max()
    np.testing.assert_allclose(partial.nodes, full.nodes, atol=1e-6 * scale)
    np.testing.assert_allclose(partial.weights, full.weights, atol=1e-6)


def test_new_arguments_are_checked():
    params = mlp_params()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="method: expected one of"):
        hessian_eigenvalues(mlp_loss, params, key, k=1, method="arnoldi")
    with pytest.raises(ValueError, match="reorthogonalization: expected one of"):
        hessian_eigenvalues(mlp_loss, params, key, k=1, reorthogonalization="some")
    with pytest.raises(ValueError, match="tol"):
        hessian_eigenvalues(mlp_loss, params, key, k=1, tol=-1.0)
    with pytest.raises(ValueError, match="5k < P = 38"):
        hessian_eigenvalues(mlp_loss, params, key, k=8, method="lobpcg")
    with pytest.raises(ValueError, match="tol: expected a tolerance"):
        lanczos_tridiagonal(lambda v: v, 4, key, 3, jnp.float64, k=1)
    with pytest.raises(ValueError, match="k must be <= num_iterations = 3"):
        lanczos_tridiagonal(lambda v: v, 4, key, 3, jnp.float64, k=4, tol=0.1)
