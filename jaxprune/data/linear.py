"""The over-parameterized linear-regression model of Li et al. (2020) with diagonal feature scaling.

``x ~ N(0, I_p)``, ``y = xᵀθ̄ + z`` with ``z ~ N(0, σ²)`` and the ground truth
``θ̄_i ∝ 1 / (1 + 4 i / p)²`` (unit norm, so the leading weights matter most).  The observed
features are ``x^Λ = Λ x`` with ``Λ_ii = λ`` for the first ``⌊fraction · p⌋`` coordinates and 1
for the rest: labels are unchanged, the population minimizer becomes ``Λ⁻¹θ̄`` and the Hessian
(feature covariance) becomes ``Λ²``.

References:
  Li et al. (2020), Section 3 (the scaled dataset ``S_Λ``) and Section 3.1 (realizable model, the
  polynomially decaying ``θ̄`` and eq. 3.5, ``Λ`` scaling the first 10% of features).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from jaxprune._validation import check_positive_int, check_real

__all__ = ["LinearProblem", "decaying_theta", "scaled_linear_regression", "scaling_diagonal"]


class LinearProblem(NamedTuple):
    """A sample of the linear model of Li et al. (2020).

    Attributes:
      x: ``(n, p)`` float32 scaled features ``Λ x``.
      y: ``(n,)`` float32 labels ``xᵀθ̄ + z``.
      theta: ``(p,)`` ground truth ``θ̄`` in the unscaled coordinates.
      scales: ``(p,)`` the diagonal of ``Λ``.
      noise: the label-noise standard deviation ``σ``.
    """

    x: np.ndarray
    y: np.ndarray
    theta: np.ndarray
    scales: np.ndarray
    noise: float


def decaying_theta(p: int) -> np.ndarray:
    """``θ̄_i = 1 / (1 + 4 i / p)²`` for ``i = 1..p``, scaled to unit Euclidean norm.

    References: Li et al. (2020), Section 3.1.
    """
    p = check_positive_int(p, "p")
    theta = 1.0 / (1.0 + 4.0 * np.arange(1, p + 1) / p) ** 2
    return theta / np.linalg.norm(theta)


def scaled_linear_regression(
    key: jax.Array,
    num_examples: int,
    dim: int,
    *,
    scale: float = 1.0,
    fraction: float = 0.1,
    noise: float = 0.0,
) -> LinearProblem:
    """Draw ``n`` examples of the scaled linear model (over-parameterized when ``dim > n``).

    Args:
      key: PRNG key.
      num_examples: ``n >= 1``.
      dim: ``p >= 1`` features.
      scale: ``λ > 0`` applied to the first ``⌊fraction · p⌋`` features (eq. 3.5).
      fraction: share of scaled features in ``[0, 1]``.
      noise: label-noise standard deviation ``σ >= 0``.

    Returns:
      :class:`LinearProblem`.

    References: Li et al. (2020), Section 3.1, eq. 3.5.
    """
    num_examples = check_positive_int(num_examples, "num_examples")
    dim = check_positive_int(dim, "dim")
    scale = check_real(scale, "scale", minimum=0.0, strict=True)
    fraction = check_real(fraction, "fraction", minimum=0.0, maximum=1.0)
    noise = check_real(noise, "noise", minimum=0.0)
    kx, kz = jax.random.split(key)
    theta = decaying_theta(dim)
    x = np.asarray(jax.random.normal(kx, (num_examples, dim)), np.float64)
    y = x @ theta + noise * np.asarray(jax.random.normal(kz, (num_examples,)), np.float64)
    scales = scaling_diagonal(dim, scale, fraction)
    return LinearProblem(
        (x * scales).astype(np.float32), y.astype(np.float32), theta, scales, float(noise)
    )


def scaling_diagonal(p: int, lam: float, fraction: float) -> np.ndarray:
    """Eq. 3.5: the diagonal of ``Λ``, ``λ`` on the first ``⌊fraction·p⌋`` features, else 1.

    References: Li et al. (2020), Sec. 3.1, eq. 3.5.
    """
    p = check_positive_int(p, "p")
    lam = check_real(lam, "lam", minimum=0.0, strict=True)
    fraction = check_real(fraction, "fraction", minimum=0.0, maximum=1.0)
    diagonal = np.ones(p)
    diagonal[: int(fraction * p)] = lam
    return diagonal
