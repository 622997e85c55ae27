"""Hessian eigenvalues and spectral density by the Lanczos method.

Both functions work on the flattened parameter vector (``jax.flatten_util.ravel_pytree``) and
touch the Hessian only through Hessian-vector products (:func:`jaxprune.spectra.hessian.hvp`).
The Lanczos iteration is one compiled ``lax.while_loop`` over a basis preallocated on the
device (in blocks of rows).  Orthogonality of the basis is kept by one of three rules:

* ``"partial"`` (default): Simon's partial reorthogonalization.  A cheap recurrence estimates
  the inner products ``ω_k = q_{i+1}ᵀ q_k`` of the new basis vector with the old ones; only when
  one exceeds ``sqrt(eps)`` are that vector and the next orthogonalized against the basis
  built so far (block Gram-Schmidt over the filled rows only, a second pass when the first
  removed most of the vector).  The basis stays *semi-orthogonal*
  (``|q_iᵀ q_k| <= sqrt(eps)``), which keeps the tridiagonal matrix the projection of the
  Hessian to working precision, so Ritz values are as accurate as with full
  reorthogonalization at a fraction of its memory traffic.
* ``"full"``: every new vector orthogonalized against the basis built so far.
* ``"none"``: the plain three-term recurrence (spurious copies of converged Ritz values
  appear; meant for comparisons).

The iteration stops early once the top ``k`` Ritz pairs have residuals
``‖H y − θ y‖ <= tol · |θ|`` each (the residual norm is ``β_m |s_{m,j}|``, read off the
tridiagonal matrix; valid for a semi-orthogonal basis).  A breakdown (an invariant Krylov
subspace, e.g. ``m`` close to ``P``) restarts from a fresh random vector orthogonal to the basis
with a zero coupling, which keeps the tridiagonal matrix exact.  Memory is ``O(m P)`` for ``m``
iterations on ``P`` parameters.

References:
  Lanczos (1950), "An iteration method for the solution of the eigenvalue problem of linear
  differential and integral operators"; Golub & Van Loan (2013), "Matrix Computations",
  Ch. 10.  Simon (1984), "The Lanczos algorithm with partial reorthogonalization"; Parlett
  (1998), "The symmetric eigenvalue problem", Ch. 13.  Knyazev (2001), "Toward the optimal
  preconditioned eigensolver: locally optimal block preconditioned conjugate gradient method"
  (LOBPCG).  Ghorbani, Krishnan & Xiao (2019), "An investigation into neural net optimization
  via Hessian eigenvalue density"; Yao et al. (2020), "PyHessian: Neural networks through the
  lens of the Hessian".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.sparse.linalg import lobpcg_standard
from jax.flatten_util import ravel_pytree

from jaxprune._validation import (
    check_choice,
    check_finite_tree,
    check_int,
    check_positive_int,
    check_real,
)
from jaxprune.spectra.hessian import hvp
from jaxprune.spectra.static import as_partial
from jaxprune.typing import LossFn, PyTree

__all__ = [
    "METHODS",
    "REORTHOGONALIZATIONS",
    "EigenResult",
    "SpectralDensity",
    "Tridiagonalization",
    "density_moments",
    "hessian_eigenvalues",
    "hessian_spectral_density",
    "lanczos_tridiagonal",
]

Reorthogonalization = Literal["partial", "full", "none"]
REORTHOGONALIZATIONS: tuple[str, ...] = ("partial", "full", "none")
Method = Literal["lanczos", "power", "lobpcg"]
METHODS: tuple[str, ...] = ("lanczos", "power", "lobpcg")

# Orthogonalization passes against a small set of vectors ("twice is enough").
_REORTH_PASSES = 2
# Basis rows orthogonalized against together: a block stays in cache between its two products.
_BLOCK_ROWS = 8
# A second Gram-Schmidt pass runs when the first one removed more than this share of the norm
# (Daniel, Gragg, Kaufman & Stewart's criterion, 1/sqrt(2)).
_DGKS_RATIO = 0.7071
# Convergence checks: one every ceil(m / _CHECK_ROWS) Lanczos steps.  A check is one eigh of
# the m x m matrix T, whose cost grows as m^3 (on a 2-core CPU 63 us at m = 40, 1.2 ms at
# m = 200, against 2.5-3.5 ms for one HVP of a 300k-parameter MLP): at the default m = 40
# every step is checked, which stops a top-1 search at 10 HVPs instead of 12.
_CHECK_ROWS = 40
# Default residual tolerance, in units of the dtype's machine epsilon.
_DEFAULT_TOL_EPS = 100.0
# Default iteration caps of the power and LOBPCG methods (PyHessian's maxIter is 100).
_DEFAULT_POWER_ITERATIONS = 100
# Default Gaussian broadening, as a fraction of the span of the Ritz values.
_SIGMA_FRACTION = 0.01
# Grid padding on each side of the Ritz values, in units of sigma.
_PAD_SIGMAS = 5.0


class EigenResult(NamedTuple):
    """Top eigenpairs of a Hessian.

    Attributes:
      eigenvalues: ``(k,)`` Ritz values, largest first (largest in magnitude first for
        ``method="power"``).
      eigenvectors: pytree like ``params`` with a leading axis ``k`` (orthonormal as flat
        vectors), or ``None`` when not requested.
      residuals: ``(k,)`` norms ``‖H v − λ v‖`` of the returned pairs, or ``None``.
      num_matvecs: Hessian-vector products spent (an int array; for ``"lobpcg"`` the number of
        block products times ``k``).
    """

    eigenvalues: jax.Array
    eigenvectors: PyTree | None
    residuals: jax.Array | None
    num_matvecs: jax.Array | None = None


class Tridiagonalization(NamedTuple):
    """The output of :func:`lanczos_tridiagonal`.

    After ``s = num_steps`` steps ``Q H Qᵀ ≈ T`` where ``Q = basis[:s]`` and ``T`` is the
    ``s × s`` symmetric tridiagonal matrix with diagonal ``alphas[:s]`` and off-diagonal
    ``betas[:s - 1]``; ``betas[s - 1]`` is the norm of the part of ``H q_{s-1}`` outside the
    basis (the residual coupling).  Entries past ``s`` are zero.

    Attributes:
      alphas: ``(m,)`` diagonal.
      betas: ``(m,)`` off-diagonal and residual coupling.
      basis: ``(m, dim)`` Lanczos vectors as rows.
      num_steps: steps taken (``m`` unless stopped early), an int array.
      num_reorthogonalizations: steps whose vector was orthogonalized against the whole basis.
    """

    alphas: jax.Array
    betas: jax.Array
    basis: jax.Array
    num_steps: jax.Array
    num_reorthogonalizations: jax.Array


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


class _LanczosCarry(NamedTuple):
    step: jax.Array
    blocks: tuple[jax.Array, ...]
    q: jax.Array
    q_previous: jax.Array
    alphas: jax.Array
    betas: jax.Array
    omega_previous: jax.Array
    omega: jax.Array
    scale: jax.Array
    forced: jax.Array
    reorthogonalizations: jax.Array
    converged: jax.Array


def lanczos_tridiagonal(
    matvec: Callable[[jax.Array], jax.Array],
    dim: int,
    key: jax.Array,
    num_iterations: int,
    dtype: Any,
    *,
    reorthogonalization: Reorthogonalization = "partial",
    k: int | None = None,
    tol: float | None = None,
) -> Tridiagonalization:
    """Lanczos tridiagonalization of a symmetric operator, one compiled loop.

    Starts from a normalized standard Gaussian vector drawn from ``key``.  Step ``i`` computes
    ``β_i q_{i+1} = H q_i − α_i q_i − β_{i−1} q_{i−1}`` and keeps the basis orthogonal by the
    ``reorthogonalization`` rule (see the module docstring).  With partial
    reorthogonalization the inner products ``ω_k ≈ q_{i+1}ᵀ q_k`` follow Simon's recurrence

        ``β_i ω^{(i+1)}_k = β_k ω^{(i)}_{k+1} + (α_k − α_i) ω^{(i)}_k + β_{k−1} ω^{(i)}_{k−1}
        − β_{i−1} ω^{(i−1)}_k ± ε ‖H‖``,

    and ``q_{i+1}`` and ``q_{i+2}`` are orthogonalized against the basis when
    ``max_k |ω_k| > sqrt(ε)``, after which the estimates restart at ``ε``.  On breakdown
    (``β`` at rounding level) the next vector is a fresh random vector orthogonal to the basis
    and its ``β`` is 0, so ``T`` is block diagonal and still exact.

    With ``k`` and ``tol`` given, the loop stops (checked every ``ceil(m / 40)`` steps) once
    the top ``k`` Ritz pairs of ``T`` have residuals ``β_{s−1} |S_{s−1, j}| <= tol · |θ_j|``,
    so each of the ``k`` values is within a relative ``tol`` of an eigenvalue (much closer
    once it is separated: the error is at most the residual squared over the gap).

    Jit-compatible (``dim``, ``num_iterations``, ``k`` and the rule static).

    Args:
      matvec: ``v -> H v`` on ``(dim,)`` vectors, ``H`` symmetric.
      dim: dimension ``P`` of the space.
      key: PRNG key.
      num_iterations: the most steps ``m``, ``1 <= m <= dim``.
      dtype: floating dtype of the basis and coefficients.
      reorthogonalization: ``"partial"`` (default), ``"full"`` or ``"none"``.
      k: number of top Ritz pairs whose convergence stops the loop early (``1 <= k <= m``),
        or ``None`` to take all ``m`` steps.
      tol: relative residual tolerance of the early stop (>= 0); needed with ``k``.

    Returns:
      :class:`Tridiagonalization` with ``(m,)`` coefficients and an ``(m, dim)`` basis.

    References:
      Lanczos (1950); Golub & Van Loan (2013), Algorithm 10.1.1 and Section 10.3; Simon
      (1984), "The Lanczos algorithm with partial reorthogonalization", eqs. (3.5)-(3.6);
      Parlett (1998), Section 13.2 (residual norms from ``T``).
    """
    m = check_positive_int(num_iterations, "num_iterations")
    if m > dim:
        raise ValueError(f"num_iterations must be <= dim = {dim}, got {m}")
    check_choice(reorthogonalization, REORTHOGONALIZATIONS, "reorthogonalization")
    if k is not None:
        k = check_positive_int(k, "k")
        if k > m:
            raise ValueError(f"k must be <= num_iterations = {m}, got {k}")
        if tol is None:
            raise ValueError("tol: expected a tolerance >= 0 with k, got None")
        tol = check_real(tol, "tol", minimum=0.0)
    eps = float(jnp.finfo(dtype).eps)
    breakdown = 10.0 * np.sqrt(dim) * eps
    threshold = np.sqrt(eps)
    start_key, restart_key = jax.random.split(key)
    start = _unit(jax.random.normal(start_key, (dim,), dtype))
    # The basis as separate blocks of rows (and one row for the vector after the last step).
    num_blocks = -(-(m + 1) // _BLOCK_ROWS)
    blocks = tuple(jnp.zeros((_BLOCK_ROWS, dim), dtype) for _ in range(num_blocks))
    blocks = (blocks[0].at[0].set(start), *blocks[1:])
    positions = jnp.arange(m + 1)
    check_every = -(-m // _CHECK_ROWS)

    def body(c: _LanczosCarry) -> _LanczosCarry:
        i = c.step
        q = c.q
        w = matvec(q).astype(dtype)
        scale = jnp.maximum(c.scale, jnp.linalg.norm(w))
        alpha = jnp.vdot(q, w)
        beta_previous = jnp.where(i > 0, c.betas[i - 1], 0.0)
        w = w - alpha * q - beta_previous * c.q_previous
        # Blocks holding the rows 0..i built so far.
        filled = i // _BLOCK_ROWS + 1
        alphas = c.alphas.at[i].set(alpha)
        omega_next = c.omega
        if reorthogonalization == "full":
            orthogonalize = jnp.asarray(True)
        elif reorthogonalization == "partial":
            omega_next = _omega_step(
                c.omega_previous, c.omega, alphas, c.betas, i, jnp.linalg.norm(w), eps * scale
            )
            orthogonalize = c.forced | (jnp.max(jnp.abs(omega_next)) > threshold)
        else:
            orthogonalize = jnp.asarray(False)
        # No branch takes the basis as an operand (XLA's CPU conditionals then cost about a
        # copy of it per step): orthogonalization runs over a dynamic number of blocks, zero
        # when it is not due.
        if reorthogonalization != "none":
            w = _orthogonalize_blocks(w, c.blocks, jnp.where(orthogonalize, filled, 0))
        beta = jnp.linalg.norm(w)
        broke = beta <= breakdown * scale
        fresh_key = jax.random.fold_in(restart_key, i)
        w = jax.lax.cond(broke, lambda: jax.random.normal(fresh_key, (dim,), dtype), lambda: w)
        w = _orthogonalize_blocks(w, c.blocks, jnp.where(broke, filled, 0))
        beta = jnp.where(broke, 0.0, beta)
        q_next = _unit(w)
        betas = c.betas.at[i].set(beta)
        # After an orthogonalization the new vector is orthogonal to working precision.
        omega_next = jnp.where(
            orthogonalize | broke, jnp.where(positions <= i, eps, 0.0), omega_next
        )
        omega_next = omega_next.at[i + 1].set(1.0)
        converged = jnp.asarray(False)
        if k is not None:
            steps = i + 1
            check = (steps >= k) & ~broke & ((steps % check_every == 0) | (steps == m))
            converged = jax.lax.cond(
                check, lambda: _top_converged(alphas, betas, steps, k, tol), lambda: False
            )
        return _LanczosCarry(
            step=i + 1,
            blocks=_set_row(c.blocks, i + 1, q_next),
            q=q_next,
            q_previous=q,
            alphas=alphas,
            betas=betas,
            omega_previous=c.omega,
            omega=omega_next,
            scale=scale,
            forced=orthogonalize & ~c.forced & (reorthogonalization == "partial"),
            reorthogonalizations=c.reorthogonalizations + orthogonalize.astype(jnp.int32),
            converged=converged,
        )

    init = _LanczosCarry(
        step=jnp.asarray(0),
        blocks=blocks,
        q=start,
        q_previous=jnp.zeros_like(start),
        alphas=jnp.zeros(m, dtype),
        betas=jnp.zeros(m, dtype),
        omega_previous=jnp.zeros(m + 1, dtype),
        omega=jnp.zeros(m + 1, dtype).at[0].set(1.0),
        scale=jnp.zeros((), dtype),
        forced=jnp.asarray(False),
        reorthogonalizations=jnp.asarray(0, jnp.int32),
        converged=jnp.asarray(False),
    )
    out = jax.lax.while_loop(lambda c: (c.step < m) & ~c.converged, body, init)
    # The vector after the last step is not part of the basis.
    basis = jnp.concatenate(out.blocks)[:m]
    basis = jnp.where((jnp.arange(m) < out.step)[:, None], basis, 0.0)
    return Tridiagonalization(out.alphas, out.betas, basis, out.step, out.reorthogonalizations)


def _omega_step(
    omega_previous: jax.Array,
    omega: jax.Array,
    alphas: jax.Array,
    betas: jax.Array,
    i: jax.Array,
    beta: jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """Simon's estimates ``ω^{(i+1)}_k ≈ q_{i+1}ᵀ q_k`` for ``k <= i`` (zero beyond).

    ``omega`` is ``ω^{(i)}`` (``omega[i] = 1``) and ``omega_previous`` is ``ω^{(i−1)}``, both
    ``(m + 1,)``; ``alphas`` holds ``α_0..α_i`` and ``betas`` ``β_0..β_{i−1}``; ``beta`` is
    ``‖β_i q_{i+1}‖`` before normalization and ``noise`` the rounding level ``ε ‖H‖``.
    """
    size = omega.shape[0]
    positions = jnp.arange(size)
    a = jnp.pad(alphas, (0, size - alphas.shape[0]))
    b = jnp.pad(betas, (0, size - betas.shape[0]))
    above = jnp.roll(omega, -1)
    below = jnp.roll(omega, 1).at[0].set(0.0)
    b_below = jnp.roll(b, 1).at[0].set(0.0)
    beta_previous = jnp.where(i > 0, b[i - 1], 0.0)
    t = b * above + (a - a[i]) * omega + b_below * below - beta_previous * omega_previous
    t = t + jnp.where(t >= 0, noise, -noise)
    safe_beta = jnp.where(beta > 0, beta, 1.0)
    estimate = jnp.where(positions < i, t / safe_beta, 0.0)
    # Local orthogonality: q_{i+1}ᵀ q_i is at rounding level relative to β_i.
    return estimate.at[i].set(noise / safe_beta)


def _ritz(alphas: jax.Array, betas: jax.Array, steps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of the leading ``steps × steps`` block of ``T``, in ``(m, m)`` arrays.

    The unused diagonal is filled with a value below every eigenvalue of the block (a
    Gershgorin bound), so the top ``j <= steps`` eigenvalues (``eigh``'s last columns) are the
    block's; their eigenvectors vanish outside the block.
    """
    m = alphas.shape[0]
    active = jnp.arange(m) < steps
    off = jnp.where(jnp.arange(m - 1) < steps - 1, betas[: m - 1], 0.0)
    radius = jnp.abs(jnp.pad(off, (1, 0))) + jnp.abs(jnp.pad(off, (0, 1)))
    lowest = jnp.min(jnp.where(active, alphas - radius, jnp.inf))
    spread = jnp.max(jnp.where(active, jnp.abs(alphas) + radius, 0.0))
    diagonal = jnp.where(active, alphas, lowest - 1.0 - spread)
    return jnp.linalg.eigh(_tridiagonal(diagonal, off))


def _top_converged(
    alphas: jax.Array, betas: jax.Array, steps: jax.Array, k: int, tol: float
) -> jax.Array:
    """Whether each of the top ``k`` Ritz pairs has a residual ``<= tol · |θ_j|``."""
    m = alphas.shape[0]
    values, vectors = _ritz(alphas, betas, steps)
    residuals = jnp.abs(betas[steps - 1] * vectors[steps - 1, m - k :])
    return jnp.all(residuals <= tol * jnp.abs(values[m - k :]))


def hessian_eigenvalues(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    k: int,
    num_iterations: int | None = None,
    tol: float | None = None,
    method: Method = "lanczos",
    reorthogonalization: Reorthogonalization = "partial",
    return_eigenvectors: bool = False,
) -> EigenResult:
    """Top-``k`` eigenvalues of ``∇²loss(params)`` from Hessian-vector products.

    Three methods behind one function, all stopping at the same residual rule
    ``‖H v − θ v‖ <= tol · |θ|`` for each returned pair (a zero eigenvalue never meets it;
    the iteration cap ends the loop then):

    * ``"lanczos"`` (default): the Krylov method of :func:`lanczos_tridiagonal`, top-``k``
      largest *algebraic* eigenvalues; Ritz values converge first at both ends of the
      spectrum, and with ``m = P`` steps they are exact.  From one start vector it finds each
      distinct eigenvalue once: for repeated top eigenvalues use ``"lobpcg"``.
    * ``"power"``: power iteration with deflation against the eigenvectors already found, one
      at a time, as PyHessian does; top-``k`` largest in *magnitude*.  One HVP and a few
      vector operations per step: the cheapest for ``k = 1`` when the top eigenvalue is well
      separated.
    * ``"lobpcg"``: JAX's block LOBPCG (``jax.experimental.sparse.linalg.lobpcg_standard``),
      top-``k`` largest algebraic eigenvalues from block products (``k`` HVPs vmapped per
      step: the accelerator-friendly choice for larger ``k``); needs ``5k < P``.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values) with ``P`` entries in total.
      key: PRNG key for the starting vector(s).
      k: number of eigenvalues, ``1 <= k <= P``.
      num_iterations: the most steps: Lanczos' Krylov dimension ``m >= k`` (default
        ``max(2k + 20, 40)``, clipped to ``P``), power iterations per eigenvalue or LOBPCG
        iterations (default 100).
      tol: relative residual tolerance, a float >= 0; default ``100 ε`` of the parameters'
        dtype (working precision).  ``1e-3`` is PyHessian's default scale.
      method: ``"lanczos"``, ``"power"`` or ``"lobpcg"``.
      reorthogonalization: Lanczos' rule, ``"partial"`` (default), ``"full"`` or ``"none"``.
      return_eigenvectors: also return the eigenvectors as pytrees and their residuals.  For
        Lanczos the Ritz vectors get one Rayleigh–Ritz pass (``k`` extra HVPs) that makes them
        orthonormal to working precision.

    Returns:
      :class:`EigenResult` with ``(k,)`` eigenvalues.

    Raises:
      TypeError / ValueError: ``k``, ``num_iterations``, ``tol``, ``method`` or
        ``reorthogonalization`` out of range, or params not finite.

    References:
      Lanczos (1950); Simon (1984); Knyazev (2001) (LOBPCG); Yao et al. (2020), PyHessian
      (power iteration with deflation); Ghorbani, Krishnan & Xiao (2019).
    """
    check_finite_tree(params, "params")
    leaves = jax.tree_util.tree_leaves(params)
    dim = sum(int(np.size(leaf)) for leaf in leaves)
    k = check_positive_int(k, "k")
    if k > dim:
        raise ValueError(f"k must be <= the number of parameters P = {dim}, got {k}")
    check_choice(method, METHODS, "method")
    check_choice(reorthogonalization, REORTHOGONALIZATIONS, "reorthogonalization")
    if tol is None:
        tol = _DEFAULT_TOL_EPS * float(jnp.finfo(jnp.result_type(*leaves)).eps)
    tol = check_real(tol, "tol", minimum=0.0)
    if num_iterations is None:
        default = max(2 * k + 20, 40) if method == "lanczos" else _DEFAULT_POWER_ITERATIONS
        num_iterations = default
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    if method == "lobpcg" and 5 * k >= dim:
        raise ValueError(f"k: method='lobpcg' needs 5k < P = {dim}, got k = {k}")
    if method == "lanczos" and num_iterations < k:
        raise ValueError(f"num_iterations must be >= k = {k}, got {num_iterations}")
    return _top_eigenpairs(
        as_partial(loss_fn),
        params,
        key,
        k=k,
        num_iterations=num_iterations,
        tol=tol,
        method=method,
        reorthogonalization=reorthogonalization,
        return_eigenvectors=return_eigenvectors,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "k",
        "num_iterations",
        "tol",
        "method",
        "reorthogonalization",
        "return_eigenvectors",
    ),
)
def _top_eigenpairs(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    key: jax.Array,
    *,
    k: int,
    num_iterations: int,
    tol: float,
    method: str,
    reorthogonalization: str,
    return_eigenvectors: bool,
) -> EigenResult:
    """:func:`hessian_eigenvalues` after validation, compiled with ``params`` as an argument.

    XLA folds arrays captured as constants into the compiled loop; on CPU a Hessian-vector
    product inside the loop is then an order of magnitude slower than with the parameters
    passed in (8.6 ms vs 0.64 ms on a 26k-parameter MLP), so neither ``params`` nor the arrays
    bound in a :class:`jax.tree_util.Partial` loss are captured.
    """
    flat, unravel = ravel_pytree(params)
    dim = flat.size
    matvec = _flat_hvp(loss_fn, params, unravel)
    if method == "power":
        values, vectors, count = _power_iteration(
            matvec, dim, key, k, num_iterations, tol, flat.dtype
        )
        residuals = _residual_norms(matvec, values, vectors) if return_eigenvectors else None
        count = count + (k if return_eigenvectors else 0)
    elif method == "lobpcg":
        values, vectors, residuals, count = _lobpcg(
            matvec, dim, key, k, num_iterations, tol, flat.dtype
        )
    else:
        tri = lanczos_tridiagonal(
            matvec,
            dim,
            key,
            min(num_iterations, dim),
            flat.dtype,
            reorthogonalization=reorthogonalization,
            k=k,
            tol=tol,
        )
        ritz_values, ritz_vectors = _ritz(tri.alphas, tri.betas, tri.num_steps)
        values = ritz_values[::-1][:k]
        count = tri.num_steps
        if return_eigenvectors:
            values, vectors, residuals = _rayleigh_ritz(
                matvec, ritz_vectors[:, ::-1][:, :k].T @ tri.basis
            )
            count = count + k
    if not return_eigenvectors:
        return EigenResult(values, None, None, count)
    return EigenResult(values, jax.vmap(unravel)(vectors), residuals, count)


def _rayleigh_ritz(
    matvec: Callable[[jax.Array], jax.Array], vectors: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Eigenpairs of ``H`` restricted to the span of the ``(k, dim)`` rows of ``vectors``:
    ``(values (k,) largest first, orthonormal vectors (k, dim), residual norms (k,))``."""
    q = jnp.linalg.qr(vectors.T)[0].T
    products = jax.lax.map(matvec, q)
    projected = q @ products.T
    values, rotation = jnp.linalg.eigh(0.5 * (projected + projected.T))
    values, rotation = values[::-1], rotation[:, ::-1]
    vectors, products = rotation.T @ q, rotation.T @ products
    residuals = jnp.linalg.norm(products - values[:, None] * vectors, axis=1)
    return values, vectors, residuals


def _power_iteration(
    matvec: Callable[[jax.Array], jax.Array],
    dim: int,
    key: jax.Array,
    k: int,
    max_iterations: int,
    tol: float,
    dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Power iteration with deflation: ``(values (k,), vectors (k, dim), HVPs)``.

    Each eigenvector is iterated on the complement of those found before; it stops when the
    residual of the deflated operator is ``<= tol · |θ|``.
    """
    found = jnp.zeros((k, dim), dtype)
    values, count = [], jnp.asarray(0)
    for j, start_key in enumerate(jax.random.split(key, k)):
        v = _unit(_orthogonalize(jax.random.normal(start_key, (dim,), dtype), found))

        def body(carry, found=found):
            _, v, _, _, steps = carry
            w = _orthogonalize(matvec(v).astype(dtype), found)
            theta = jnp.vdot(v, w)
            residual = jnp.linalg.norm(w - theta * v)
            return v, _unit(w), theta, residual, steps + 1

        def not_done(carry):
            _, _, theta, residual, steps = carry
            return (steps < max_iterations) & (residual > tol * jnp.abs(theta))

        init = (v, v, jnp.zeros((), dtype), jnp.asarray(jnp.inf, dtype), jnp.asarray(0))
        # The returned vector is the one the last Rayleigh quotient was taken on.
        v, _, theta, _, steps = jax.lax.while_loop(not_done, body, init)
        found = found.at[j].set(v)
        values.append(theta)
        count = count + steps
    return jnp.stack(values), found, count


def _lobpcg(
    matvec: Callable[[jax.Array], jax.Array],
    dim: int,
    key: jax.Array,
    k: int,
    max_iterations: int,
    tol: float,
    dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """JAX's LOBPCG with the residual rule ``‖H v − θ v‖ <= tol · |θ|``."""
    block = jax.vmap(matvec, in_axes=1, out_axes=1)
    start = jax.random.normal(key, (dim, k), dtype)
    # lobpcg_standard's test is ``‖r‖ < tol' · 10 · dim · (θ + ‖H v‖)``, about
    # ``tol' · 20 · dim · θ``: rescale so that it reads as the rule above.
    values, vectors, iterations = lobpcg_standard(
        block, start, m=max_iterations, tol=max(tol, 1e-30) / (20.0 * dim)
    )
    vectors = vectors.T
    return values, vectors, _residual_norms(matvec, values, vectors), (iterations + 2) * k


def _residual_norms(
    matvec: Callable[[jax.Array], jax.Array], values: jax.Array, vectors: jax.Array
) -> jax.Array:
    """``‖H v_j − λ_j v_j‖`` for the ``(k, dim)`` rows ``v_j`` (``k`` HVPs)."""
    return jnp.linalg.norm(jax.lax.map(matvec, vectors) - values[:, None] * vectors, axis=1)


def hessian_spectral_density(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int = 8,
    num_iterations: int = 64,
    grid_size: int = 512,
    sigma: float | None = None,
    reorthogonalization: Reorthogonalization = "partial",
) -> SpectralDensity:
    """Eigenvalue density of ``∇²loss(params)`` by stochastic Lanczos quadrature (SLQ).

    For each probe ``v`` (a normalized standard Gaussian vector) Lanczos gives ``T = S Θ Sᵀ``;
    the Ritz values ``θ_j`` are quadrature nodes and ``w_j = S_{0j}²`` their weights, so that
    ``sum_j w_j g(θ_j) ≈ vᵀ g(H) v`` (exact for polynomials of degree ``< 2m``), whose mean
    over ``v`` uniform on the sphere is ``Tr(g(H)) / P``.  The density is the average over
    probes of ``sum_j w_j N(t; θ_j, σ²)`` on a grid spanning the nodes padded by ``5σ`` on each
    side.  Moments ``∫ t^r density ≈ Tr(H^r) / P`` are estimated, without the broadening, by
    :func:`density_moments`.  Probes run one after another (memory of one basis).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values) with ``P`` entries.
      key: PRNG key for the probes.
      num_probes: number of probes, an int >= 1.
      num_iterations: Lanczos steps per probe, an int >= 1; clipped to ``P``.
      grid_size: number of grid points, an int >= 2.
      sigma: Gaussian broadening; default ``0.01 × (max node − min node)``, floored at
        ``sqrt(eps) × max(1, |node|)`` so a single-point spectrum still gets a finite peak.
      reorthogonalization: Lanczos' rule (see :func:`lanczos_tridiagonal`).

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
    check_choice(reorthogonalization, REORTHOGONALIZATIONS, "reorthogonalization")
    if sigma is not None:
        check_real(sigma, "sigma", minimum=0.0, strict=True)
    nodes, weights = _quadrature(
        as_partial(loss_fn),
        params,
        key,
        num_probes=num_probes,
        num_iterations=num_iterations,
        reorthogonalization=reorthogonalization,
    )
    grid, density = _broadened_density(nodes, weights, grid_size, sigma)
    return SpectralDensity(grid, density, nodes, weights)


@functools.partial(jax.jit, static_argnames=("num_probes", "num_iterations", "reorthogonalization"))
def _quadrature(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    num_iterations: int,
    reorthogonalization: str,
) -> tuple[jax.Array, jax.Array]:
    """SLQ nodes and weights, ``(num_probes, m)`` each, compiled with ``params`` an argument
    (see :func:`_top_eigenpairs`)."""
    flat, unravel = ravel_pytree(params)
    dim = flat.size
    m = min(num_iterations, dim)
    matvec = _flat_hvp(loss_fn, params, unravel)

    def quadrature(probe_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        tri = lanczos_tridiagonal(
            matvec, dim, probe_key, m, flat.dtype, reorthogonalization=reorthogonalization
        )
        ritz_values, ritz_vectors = jnp.linalg.eigh(_tridiagonal(tri.alphas, tri.betas[: m - 1]))
        return ritz_values, ritz_vectors[0] ** 2

    return jax.lax.map(quadrature, jax.random.split(key, num_probes))


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
    """``v -> ravel(H unravel(v))`` on flat vectors.

    The unraveled tangent is materialized (``optimization_barrier``): otherwise XLA fuses the
    slices of ``v`` into the products' operands, which on CPU took a Hessian-vector product
    of a 300k-parameter MLP from 5.4 ms to 23 ms.
    """
    return lambda v: ravel_pytree(hvp(loss_fn, params, jax.lax.optimization_barrier(unravel(v))))[0]


def _tridiagonal(alphas: jax.Array, betas: jax.Array) -> jax.Array:
    """The symmetric tridiagonal matrix with diagonal ``alphas`` and off-diagonal ``betas``."""
    return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def _unit(v: jax.Array) -> jax.Array:
    """``v / ‖v‖``, or ``v`` itself when it is zero."""
    norm = jnp.linalg.norm(v)
    return v / jnp.where(norm > 0, norm, 1.0)


def _orthogonalize_blocks(v: jax.Array, blocks: Sequence[jax.Array], count: jax.Array) -> jax.Array:
    """``v`` minus its projection on the rows of the first ``count`` of ``blocks``.

    The rows of all blocks together are orthonormal (zero rows are inert).  Block
    Gram-Schmidt, one ``(B, dim)`` block at a time; a second pass only when the first removed
    most of ``v`` (DGKS).  Each block is a separate array and is read through a loop of 0 or 1
    trips: slicing rows out of one large basis array copies them on XLA:CPU, which made the
    same projection 2x slower (measured at 40 rows of 301,066 entries).  A step that both reads
    the blocks this way and writes one of them (:func:`_set_row`) still costs about 0.15 ms per
    block of that size on a 2-core CPU, with no copy in the optimized HLO; a ``lax.cond`` per
    block measured the same.

    References:
      Daniel, Gragg, Kaufman & Stewart (1976), "Reorthogonalization and stable algorithms for
      updating the Gram-Schmidt QR factorization"; Giraud, Langou & Rozložník (2005), "The
      loss of orthogonality in the Gram-Schmidt orthogonalization process".
    """

    def one_pass(v: jax.Array, count: jax.Array) -> jax.Array:
        for j, rows in enumerate(blocks):
            trips = (j < count).astype(jnp.int32)
            v = jax.lax.fori_loop(0, trips, lambda _, v, rows=rows: v - (rows @ v) @ rows, v)
        return v

    once = one_pass(v, count)
    removed_most = jnp.linalg.norm(once) < _DGKS_RATIO * jnp.linalg.norm(v)
    return one_pass(once, jnp.where(removed_most, count, 0))


def _set_row(blocks: tuple[jax.Array, ...], row: jax.Array, value: jax.Array) -> tuple:
    """``blocks`` with row ``row`` of their concatenation set to ``value``: each block goes
    through a loop of 0 or 1 trips that writes the row in place (no copy of the others in the
    optimized HLO)."""
    target, offset = row // _BLOCK_ROWS, row % _BLOCK_ROWS
    return tuple(
        jax.lax.fori_loop(
            0, (target == j).astype(jnp.int32), lambda _, b: b.at[offset].set(value), block
        )
        for j, block in enumerate(blocks)
    )


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
