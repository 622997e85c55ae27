"""Hessian eigenvalues and spectral density by the Lanczos method.

Both functions work on the flattened parameter vector (``jax.flatten_util.ravel_pytree``) and
touch the Hessian only through Hessian-vector products (:func:`jaxprune.spectra.hessian.hvp`).
Lanczos runs with full reorthogonalization, so its basis stays orthonormal to working precision
and no spurious copies of converged Ritz values appear; the cost is ``O(m P)`` memory for ``m``
iterations on ``P`` parameters.  A breakdown (an invariant Krylov subspace, e.g. ``m`` close to
``P``) restarts from a fresh random vector orthogonal to the basis with a zero coupling, which
keeps the tridiagonal matrix exact.

References:
  Lanczos (1950), "An iteration method for the solution of the eigenvalue problem of linear
  differential and integral operators"; Golub & Van Loan (2013), "Matrix Computations", Ch. 10.
  Ghorbani, Krishnan & Xiao (2019), "An investigation into neural net optimization via Hessian
  eigenvalue density"; Yao et al. (2020), "PyHessian: Neural networks through the lens of the
  Hessian".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxprune._validation import check_finite_tree, check_int, check_positive_int, check_real
from jaxprune.spectra.hessian import hvp
from jaxprune.typing import LossFn, PyTree

__all__ = [
    "EigenResult",
    "SpectralDensity",
    "density_moments",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "lanczos_tridiagonal",
]

# Orthogonalization passes per iteration ("twice is enough").
_REORTH_PASSES = 2
# Default Gaussian broadening, as a fraction of the span of the Ritz values.
_SIGMA_FRACTION = 0.01
# Grid padding on each side of the Ritz values, in units of sigma.
_PAD_SIGMAS = 5.0


class EigenResult(NamedTuple):
    """Top eigenpairs of a Hessian.

    Attributes:
      eigenvalues: ``(k,)`` Ritz values, largest first.
      eigenvectors: pytree like ``params`` with a leading axis ``k`` (unit-norm as flat
        vectors), or ``None`` when not requested.
      residuals: ``(k,)`` norms ``‖H v − λ v‖`` of the returned pairs, or ``None``.
    """

    eigenvalues: jax.Array
    eigenvectors: PyTree | None
    residuals: jax.Array | None


class SpectralDensity(NamedTuple):
    """Stochastic Lanczos quadrature of a Hessian's eigenvalue density.

    Attributes:
      grid: ``(m,)`` evaluation points, increasing.
      density: ``(m,)`` Gaussian-broadened density on ``grid`` (integrates to about 1).
      nodes: ``(num_probes, num_iterations)`` Ritz values of each probe's tridiagonal matrix.
      weights: ``(num_probes, num_iterations)`` quadrature weights; each row sums to 1.
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array


def lanczos_tridiagonal(
    matvec: Callable[[jax.Array], jax.Array],
    dim: int,
    key: jax.Array,
    num_iterations: int,
    dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lanczos tridiagonalization of a symmetric operator, with full reorthogonalization.

    Starts from a normalized standard Gaussian vector drawn from ``key``.  After ``m`` steps
    ``Q H Qᵀ = T`` with ``T = tridiag(betas, alphas, betas)`` and orthonormal rows ``Q``.  On
    breakdown (``beta`` at rounding level) the next basis vector is a fresh random vector
    orthogonal to the basis and its ``beta`` is 0, so ``T`` is block diagonal and still exact.
    Jit-compatible (``dim`` and ``num_iterations`` static).

    Args:
      matvec: ``v -> H v`` on ``(dim,)`` vectors, ``H`` symmetric.
      dim: dimension ``P`` of the space.
      key: PRNG key.
      num_iterations: ``m`` with ``1 <= m <= dim``.
      dtype: floating dtype of the basis and coefficients.

    Returns:
      ``(alphas, betas, basis)`` of shapes ``(m,)``, ``(m - 1,)`` and ``(m, dim)``.

    References:
      Lanczos (1950); Golub & Van Loan (2013), "Matrix Computations", Algorithm 10.1.1 (with
      reorthogonalization, Section 10.3).
    """
    m = check_positive_int(num_iterations, "num_iterations")
    if m > dim:
        raise ValueError(f"num_iterations must be <= dim = {dim}, got {m}")
    eps = jnp.finfo(dtype).eps
    tol = 10.0 * np.sqrt(dim) * eps
    start_key, restart_key = jax.random.split(key)
    basis = jnp.zeros((m, dim), dtype).at[0].set(_unit(jax.random.normal(start_key, (dim,), dtype)))

    def restart(i: jax.Array, basis: jax.Array) -> jax.Array:
        fresh = jax.random.normal(jax.random.fold_in(restart_key, i), (dim,), dtype)
        return _orthogonalize(fresh, basis)

    def step(i, carry):
        basis, alphas, betas, scale = carry
        q = basis[i]
        w = matvec(q).astype(dtype)
        scale = jnp.maximum(scale, jnp.linalg.norm(w))
        alpha = jnp.vdot(q, w)
        w = w - alpha * q - jnp.where(i > 0, betas[i - 1], 0.0) * basis[i - 1]
        w = _orthogonalize(w, basis)
        beta = jnp.linalg.norm(w)
        broke = beta <= tol * scale
        nxt = jax.lax.cond(broke, lambda: restart(i, basis), lambda: w)
        beta = jnp.where(broke, 0.0, beta)
        basis = basis.at[i + 1].set(_unit(nxt), mode="drop")
        return basis, alphas.at[i].set(alpha), betas.at[i].set(beta), scale

    init = (basis, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.zeros((), dtype))
    basis, alphas, betas, _ = jax.lax.fori_loop(0, m, step, init)
    return alphas, betas[: m - 1], basis


def hessian_eigenvalues(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    k: int,
    num_iterations: int | None = None,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """Top-``k`` (largest algebraic) eigenvalues of ``∇²loss(params)`` by Lanczos.

    The Ritz values of an ``m``-dimensional Krylov space converge first at the ends of the
    spectrum; with ``m = P`` they are the exact eigenvalues (up to rounding).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values) with ``P`` entries in total.
      key: PRNG key for the starting vector.
      k: number of eigenvalues, ``1 <= k <= P``.
      num_iterations: Krylov dimension ``m``, ``k <= m``; default ``max(2k + 20, 40)``; clipped
        to ``P``.
      return_eigenvectors: also return the Ritz vectors as pytrees and their residuals
        (``k`` extra HVPs).

    Returns:
      :class:`EigenResult` with ``(k,)`` eigenvalues, largest first.

    Raises:
      TypeError / ValueError: ``k`` or ``num_iterations`` is not an int in range, or params
        are not finite.

    References:
      Lanczos (1950); Yao et al. (2020), PyHessian; Ghorbani, Krishnan & Xiao (2019).
    """
    check_finite_tree(params, "params")
    flat, unravel = ravel_pytree(params)
    dim = flat.size
    k = check_positive_int(k, "k")
    if k > dim:
        raise ValueError(f"k must be <= the number of parameters P = {dim}, got {k}")
    if num_iterations is None:
        num_iterations = max(2 * k + 20, 40)
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    if num_iterations < k:
        raise ValueError(f"num_iterations must be >= k = {k}, got {num_iterations}")
    matvec = _flat_hvp(loss_fn, params, unravel)
    alphas, betas, basis = lanczos_tridiagonal(
        matvec, dim, key, min(num_iterations, dim), flat.dtype
    )
    ritz_values, ritz_vectors = jnp.linalg.eigh(_tridiagonal(alphas, betas))
    eigenvalues = ritz_values[::-1][:k]
    if not return_eigenvectors:
        return EigenResult(eigenvalues, None, None)
    vectors = ritz_vectors[:, ::-1][:, :k].T @ basis
    residuals = jax.lax.map(matvec, vectors) - eigenvalues[:, None] * vectors
    return EigenResult(eigenvalues, jax.vmap(unravel)(vectors), jnp.linalg.norm(residuals, axis=1))


def hessian_spectral_density(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int = 8,
    num_iterations: int = 64,
    grid_size: int = 512,
    sigma: float | None = None,
) -> SpectralDensity:
    """Eigenvalue density of ``∇²loss(params)`` by stochastic Lanczos quadrature (SLQ).

    For each probe ``v`` (a normalized standard Gaussian vector) Lanczos gives ``T = S Θ Sᵀ``;
    the Ritz values ``θ_j`` are quadrature nodes and ``w_j = S_{0j}²`` their weights, so that
    ``sum_j w_j g(θ_j) ≈ vᵀ g(H) v`` (exact for polynomials of degree ``< 2m``), whose mean
    over ``v`` uniform on the sphere is ``Tr(g(H)) / P``.  The density is the average over
    probes of ``sum_j w_j N(t; θ_j, σ²)`` on a grid spanning the nodes padded by ``5σ`` on each
    side.  Moments ``∫ t^r density ≈ Tr(H^r) / P`` are estimated, without the broadening, by
    :func:`density_moments`.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values) with ``P`` entries.
      key: PRNG key for the probes.
      num_probes: number of probes, an int >= 1.
      num_iterations: Lanczos steps per probe, an int >= 1; clipped to ``P``.
      grid_size: number of grid points, an int >= 2.
      sigma: Gaussian broadening; default ``0.01 × (max node − min node)``, floored at
        ``sqrt(eps) × max(1, |node|)`` so a single-point spectrum still gets a finite peak.

    Returns:
      :class:`SpectralDensity`; ``nodes`` and ``weights`` have shape
      ``(num_probes, min(num_iterations, P))``.

    References:
      Ghorbani, Krishnan & Xiao (2019); Yao et al. (2020), PyHessian; Lin, Saad & Yang (2016),
      "Approximating spectral densities of large matrices".
    """
    check_finite_tree(params, "params")
    num_probes = check_positive_int(num_probes, "num_probes")
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    grid_size = check_int(grid_size, "grid_size", minimum=2)
    if sigma is not None:
        check_real(sigma, "sigma", minimum=0.0, strict=True)
    flat, unravel = ravel_pytree(params)
    dim = flat.size
    m = min(num_iterations, dim)
    matvec = _flat_hvp(loss_fn, params, unravel)

    def quadrature(probe_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        alphas, betas, _ = lanczos_tridiagonal(matvec, dim, probe_key, m, flat.dtype)
        ritz_values, ritz_vectors = jnp.linalg.eigh(_tridiagonal(alphas, betas))
        return ritz_values, ritz_vectors[0] ** 2

    nodes, weights = jax.lax.map(quadrature, jax.random.split(key, num_probes))
    grid, density = _broadened_density(nodes, weights, grid_size, sigma)
    return SpectralDensity(grid, density, nodes, weights)


def density_moments(result: SpectralDensity, orders: Sequence[int]) -> jax.Array:
    """Quadrature moments ``mean_probes sum_j w_j θ_j^r ≈ Tr(H^r) / P`` for each ``r``.

    Args:
      result: a :class:`SpectralDensity`.
      orders: moment orders ``r`` (non-negative ints).

    Returns:
      ``(len(orders),)`` moments; order 0 gives 1.

    References:
      Ghorbani, Krishnan & Xiao (2019); Lin, Saad & Yang (2016).
    """
    moments = [jnp.sum(result.weights * result.nodes**r, axis=-1) for r in orders]
    return jnp.mean(jnp.stack(moments), axis=-1)


def _flat_hvp(
    loss_fn: LossFn, params: PyTree, unravel: Callable[[jax.Array], PyTree]
) -> Callable[[jax.Array], jax.Array]:
    """``v -> ravel(H unravel(v))`` on flat vectors."""
    return lambda v: ravel_pytree(hvp(loss_fn, params, unravel(v)))[0]


def _tridiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
    """The symmetric tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas``."""
    return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def _unit(v: jax.Array) -> jax.Array:
    """``v / ‖v‖``, or ``v`` itself when it is zero."""
    norm = jnp.linalg.norm(v)
    return v / jnp.where(norm > 0, norm, 1.0)


def _orthogonalize(v: jax.Array, basis: jax.Array) -> jax.Array:
    """``v`` minus its projection on the rows of ``basis`` (zero rows are inert)."""
    for _ in range(_REORTH_PASSES):
        v = v - basis.T @ (basis @ v)
    return v


def _broadened_density(
    nodes: jax.Array, weights: jax.Array, grid_size: int, sigma: float | None
) -> tuple[jax.Array, jax.Array]:
    """Grid and probe-averaged Gaussian-broadened density of weighted nodes."""
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    if sigma is None:
        floor = jnp.sqrt(jnp.finfo(nodes.dtype).eps) * jnp.maximum(1.0, jnp.maximum(-lo, hi))
        sigma = jnp.maximum(_SIGMA_FRACTION * (hi - lo), floor)
    grid = jnp.linspace(lo - _PAD_SIGMAS * sigma, hi + _PAD_SIGMAS * sigma, grid_size)
    z = (grid - nodes[..., None]) / sigma
    kernels = jnp.exp(-0.5 * z**2) / (sigma * np.sqrt(2 * np.pi))
    return grid, jnp.mean(jnp.sum(weights[..., None] * kernels, axis=1), axis=0)
