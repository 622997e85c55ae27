"""Spectra of (group) kernels: eigenvalues, λ_min, λ_max, condition number, spectral entropy.

References:
  Chen et al. (2023), Section 3.2.2, eq. 7 (spectral entropy ρ of K(w_[i])) and Appendix D footnote
  (the experiments' condition number is λ_max(K)/λ_min(K)).  Roy & Vetterli (2007), effective
  rank exp(ρ).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_finite_tree, check_symmetric

__all__ = [
    "SYMMETRY_RTOL",
    "SpectrumFeatures",
    "check_kernel",
    "group_rank_bound",
    "spectrum_features",
]

# A kernel K is refused as non-symmetric when max|K - Kᵀ| > rtol · max|K| (per kernel), with
# rtol = max(SYMMETRY_RTOL, 16 eps) for the eps of K's dtype: loose enough for the round-off of
# kernels computed in float32 with TensorFloat-32 matrix products (unit round-off 2⁻¹¹ ≈ 5e-4,
# JAX's default on recent NVIDIA GPUs) and of half-precision kernels, tight enough for what it
# is meant to catch: a cross-kernel K(x, x2), a Jacobian product or a mis-assembled matrix,
# whose asymmetry is of the order of max|K|.
SYMMETRY_RTOL = 1e-2


class SpectrumFeatures(NamedTuple):
    """Spectral summary of one ``(n, n)`` kernel, or of each of ``(p, n, n)`` kernels.

    Attributes:
      eigenvalues: ``(..., n)`` descending; round-off negatives and values within the
        tolerance of zero are exactly 0, as are the structural zeros beyond ``max_rank``.
      lambda_min: smallest eigenvalue of the considered spectrum (the top
        ``d = min(n, max_rank)``); exactly 0 when the kernel is rank deficient.
      lambda_min_nonzero: smallest eigenvalue above the tolerance: λ_min of the kernel
        restricted to its range (the nonzero spectrum of the Gram matrix ``Jᵀ J``, reading PL-6);
        0 only for a zero kernel.
      lambda_max: largest eigenvalue.
      condition_number: ``lambda_max / lambda_min``; ``inf`` when rank deficient.
      entropy: spectral entropy ρ = -Σ λ̄ log λ̄ with λ̄ = λ / Σλ (Chen et al. (2023), eq. 7);
        0 log 0 = 0.
      effective_rank: ``exp(entropy)``, between 1 and the rank.
      rank: number of eigenvalues above the tolerance.
      rank_deficient: ``rank < d``: λ_min is 0 and the condition number infinite.
      negative: the input had an eigenvalue below ``-tolerance``: not positive semi-definite
        beyond round-off (those eigenvalues are reported as 0, and this flag is set).
      tolerance: the threshold used, ``rtol * lambda_max``.
    """

    eigenvalues: jax.Array
    lambda_min: jax.Array
    lambda_min_nonzero: jax.Array
    lambda_max: jax.Array
    condition_number: jax.Array
    entropy: jax.Array
    effective_rank: jax.Array
    rank: jax.Array
    rank_deficient: jax.Array
    negative: jax.Array
    tolerance: jax.Array


def group_rank_bound(sizes: Any, num_outputs: int, num_examples: int) -> np.ndarray:
    """Largest possible rank of each group kernel: ``min(n, k * m_i)``.

    ``K_i = (1/k) Σ_c J_c,[i] J_c,[i]ᵀ`` has rank at most ``k m_i`` (``m_i`` parameters, ``k``
    traced outputs).  Its nonzero eigenvalues are those of the smaller Gram matrix
    ``J_[i]ᵀ J_[i]``; pass the result as ``max_rank`` to :func:`spectrum_features` so that a
    group smaller than the batch is summarized by that nonzero spectrum instead of a
    structural λ_min = 0 (reading PL-6, docs/readings.md: "per-group λ_min is zero by
    construction").
    """
    sizes = np.asarray(sizes, np.int64)
    return np.minimum(num_examples, num_outputs * sizes)


def check_kernel(kernel: Any, name: str = "kernel") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``kernel`` is an ``(n, n)`` or ``(p, n, n)``
    array (``n >= 1``) of finite, symmetric matrices.

    Symmetric means ``max|K - Kᵀ| <= rtol · max|K|`` for each matrix, with
    ``rtol = max(SYMMETRY_RTOL, 16 eps)`` for the eps of the kernel's dtype.  The shape is always
    checked; the values only when concrete: traced kernels (inside ``jit``/``vmap``) are not
    inspected.
    """
    shape = getattr(kernel, "shape", None)
    if shape is None or len(shape) not in (2, 3) or shape[-1] != shape[-2] or shape[-1] < 1:
        raise ValueError(
            f"{name}: expected a square (n, n) or (p, n, n) array with n >= 1, got shape "
            f"{None if shape is None else tuple(shape)}"
        )
    check_finite_tree(kernel, name)
    check_symmetric(kernel, name, rtol=max(SYMMETRY_RTOL, 16 * _eps(kernel.dtype)))


def spectrum_features(
    kernel: jax.Array,
    *,
    max_rank: int | Any | None = None,
    rtol: float | None = None,
    dtype: Any = None,
) -> SpectrumFeatures:
    """Eigen-decomposition summary of a symmetric PSD kernel or a stack of them.

    The symmetric part ``(K + Kᵀ)/2`` is decomposed, which removes round-off asymmetry.

    Args:
      kernel: ``(n, n)`` or ``(p, n, n)`` symmetric positive semi-definite matrices.  Refused
        (:func:`check_kernel`) when it holds NaN or inf or is clearly not symmetric:
        ``max|K - Kᵀ| > max(SYMMETRY_RTOL, 16 eps) · max|K|`` for a kernel of the stack
        (``1e-2`` for float32 and float64; :data:`SYMMETRY_RTOL` gives the reasons).  The value
        checks need concrete values: inside ``jit``/``vmap`` they are skipped, and a
        non-symmetric kernel is then symmetrized silently.
      max_rank: optional int or ``(p,)`` ints: only the top ``max_rank`` eigenvalues are
        considered (the rest are structural zeros); see :func:`group_rank_bound`.
      rtol: relative tolerance for zero eigenvalues; default ``n * eps`` (NumPy's
        ``matrix_rank`` convention) with the eps of the *input's* dtype when that is coarser
        than the computation's: a float32 kernel decomposed in float64 still carries float32
        round-off.
      dtype: computation dtype, e.g. ``np.float64`` for ill-conditioned kernels.  With JAX's
        64-bit mode off, a float64 request is computed by NumPy on the host (not jit-able).
        Half precision (float16, bfloat16, requested or the kernel's own) is computed in
        float32: there is no half-precision eigensolver.

    Returns:
      :class:`SpectrumFeatures` with leading shape ``()`` or ``(p,)``; float32 for a
      half-precision kernel.

    Raises:
      ValueError: a kernel of the wrong shape, with non-finite entries or not symmetric; a bad
        ``max_rank``.
    """
    check_kernel(kernel)
    shape = kernel.shape
    n = shape[-1]
    if max_rank is not None:
        ranks = np.asarray(max_rank)
        if not np.issubdtype(ranks.dtype, np.integer) or np.any(ranks < 1):
            raise ValueError(f"max_rank: expected ints >= 1, got {max_rank!r}")
        if ranks.ndim > 1 or (ranks.ndim == 1 and (len(shape) != 3 or ranks.size != shape[0])):
            raise ValueError(
                f"max_rank: expected an int or one entry per kernel, got shape {ranks.shape} "
                f"for kernels of shape {tuple(shape)}"
            )
        considered = np.minimum(ranks, n)
    else:
        considered = np.asarray(n)
    input_dtype = np.dtype(kernel.dtype)
    input_eps = _eps(input_dtype)
    compute = None if dtype is None else np.dtype(dtype)
    if compute == np.float64 and not jax.config.jax_enable_x64:
        kernel = np.asarray(kernel, np.float64)
        values = np.linalg.eigvalsh(0.5 * (kernel + np.swapaxes(kernel, -1, -2)))[..., ::-1]
        return _summarize(np, values, considered, rtol, input_eps)
    if _is_half(input_dtype if compute is None else compute):
        compute = np.dtype(np.float32)
    kernel = jnp.asarray(kernel, compute)
    values = jnp.linalg.eigvalsh(0.5 * (kernel + jnp.swapaxes(kernel, -1, -2)))[..., ::-1]
    return _summarize(jnp, values, jnp.asarray(considered), rtol, input_eps)


def _eps(dtype: Any) -> float:
    """Machine epsilon of a floating dtype (bfloat16 included), 0 for integers."""
    return float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.inexact) else 0.0


def _is_half(dtype: np.dtype) -> bool:
    """float16 and bfloat16: no eigensolver computes in them."""
    return bool(jnp.issubdtype(dtype, jnp.floating)) and dtype.itemsize < 4


def _summarize(xp, values, considered, rtol, input_eps: float) -> SpectrumFeatures:
    n = values.shape[-1]
    eps = max(float(np.finfo(values.dtype).eps), input_eps)
    rtol = n * eps if rtol is None else rtol
    lambda_max = xp.maximum(values[..., 0], 0.0)
    tolerance = rtol * lambda_max
    index = xp.arange(n)
    considered = considered[..., None] if np.ndim(considered) else considered
    structural = index >= considered
    negative = xp.any((values < -tolerance[..., None]) & ~structural, axis=-1)
    cleaned = xp.where(structural | (values <= tolerance[..., None]), 0.0, values)
    rank = xp.sum(cleaned > 0, axis=-1)
    dim = xp.minimum(considered, n).reshape(np.shape(rank)) if np.ndim(considered) else considered
    rank_deficient = rank < dim
    last = xp.take_along_axis(
        cleaned, (xp.broadcast_to(dim, np.shape(rank)) - 1)[..., None].astype(int), axis=-1
    )[..., 0]
    lambda_min = xp.where(rank_deficient, 0.0, last)
    lambda_min_nonzero = xp.min(xp.where(cleaned > 0, cleaned, xp.inf), axis=-1)
    lambda_min_nonzero = xp.where(rank > 0, lambda_min_nonzero, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        condition = xp.where(rank_deficient | (lambda_min <= 0), xp.inf, lambda_max / lambda_min)
        total = xp.sum(cleaned, axis=-1, keepdims=True)
        share = xp.where(total > 0, cleaned / xp.where(total > 0, total, 1.0), 0.0)
        entropy = 0.0 - xp.sum(
            xp.where(share > 0, share * xp.log(xp.where(share > 0, share, 1.0)), 0.0), axis=-1
        )
    return SpectrumFeatures(
        eigenvalues=cleaned,
        lambda_min=lambda_min,
        lambda_min_nonzero=lambda_min_nonzero,
        lambda_max=lambda_max,
        condition_number=condition,
        entropy=entropy,
        effective_rank=xp.exp(entropy),
        rank=rank,
        rank_deficient=rank_deficient,
        negative=negative,
        tolerance=tolerance,
    )
