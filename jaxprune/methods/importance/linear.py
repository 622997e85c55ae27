"""The exact risk of pruned min-norm linear models and its prediction by the auxiliary distribution.

The model of Li et al. (2020), Section 3.1: features ``x ~ N(0, I_p)`` observed as ``x^Λ = Λx``
(``Λ`` diagonal, positive), labels ``y = xᵀθ̄ + z`` with ``z ~ N(0, σ²)``, ``n < p`` examples
(``κ = p/n > 1``).  The min-norm least-squares solution ``θ̂^Λ = X_Λ⁺ y`` (eq. 3.2) is pruned to
its ``s`` largest weights by magnitude (MP, ``|θ_i|``) or by Hessian importance (HP,
``Λ_ii² θ_i²``: the Hessian of the population loss is ``2Λ²``, and with Optimal Brain Damage's ½
its HI is ``Λ_ii² θ_i²``, reading HB-3), and the pruned model's population loss
``L_Λ(θ) = ‖Λθ − θ̄‖² + σ²`` is its test risk.  The auxiliary distribution of Def. 3.2 predicts
that risk through a denoising problem: ``θ_aux^Λ = Λ⁻¹[(1 − ζ) ⊙ θ̄ + γ ⊙ h]``.

Numerics: the root ``Ξ`` of eq. 3.3 is found in float64 NumPy by SciPy's Brent method on a
bracket proved in :func:`auxiliary_distribution`; sampling, pruning and the least-squares fits run in JAX with float64
enabled for the call (``jax.enable_x64``), jitted and vectorized over draws, trials and the
list of kept sizes.  Public functions return NumPy float64 arrays.

References:
  Li et al. (2020), "Exploring Weight Importance and Hessian Bias in Model Pruning",
  arXiv:2006.10903: Sec. 3 (eqs. 3.1, 3.2, Lemma 3.1), Sec. 3.1 (Def. 3.2, eqs. 3.3–3.5, the MP
  and HP loss formulas after Def. 3.2, Figure 1), App. A.3 (eqs. A.23–A.29), Def. 2.1 (NI) and
  Def. 2.2 (HI); readings HB-1 to HB-4, HB-8 and HB-9 (docs/readings.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from jaxprune._validation import check_choice, check_int, check_positive_int, check_real

__all__ = [
    "METHODS",
    "AuxiliaryDistribution",
    "ImportanceEstimate",
    "RiskEstimate",
    "auxiliary_distribution",
    "empirical_risk",
    "identity_auxiliary",
    "identity_risk",
    "leading_test_importance",
    "leading_training_importance",
    "min_norm_solution",
    "population_loss",
    "predicted_risk",
    "pruning_masks",
    "sample_auxiliary",
]

#: Pruning methods: ``"magnitude"`` keeps the largest ``θ_i²``, ``"hessian"`` the largest
#: ``Λ_ii² θ_i²``.
METHODS = ("magnitude", "hessian")

# Trials whose least-squares fits are held in memory at once by ``jax.lax.map``.
_TRIAL_BATCH = 8


class AuxiliaryDistribution(NamedTuple):
    """The auxiliary distribution of Def. 3.2, ``θ_aux^Λ = Λ⁻¹[(1 − ζ) ⊙ θ̄ + γ ⊙ h]``.

    ``h ~ N(0, I_p / p)`` (reading HB-1).  Def. 3.2 calls ``Ξ`` and ``Γ`` vectors, but both are
    scalars (App. A.3: ``Ξ`` is a Lagrange multiplier, eq. A.26, and ``Γ = ((1/p) Σ γ_i)²``);
    ``ζ`` and ``γ`` are ``(p,)`` vectors (reading HB-8).

    Attributes:
      xi: scalar ``Ξ > 0``, the root of eq. 3.3.
      gamma_cap: scalar ``Γ > 0`` (eq. A.28, with ``θ̄`` in the numerator, reading HB-2).
      zeta: ``(p,)`` shrinkage ``ζ_i = 1 / (1 + Ξ Λ_ii²)`` (eq. A.24).
      gamma: ``(p,)`` noise scales ``γ_i = κ √Γ / (1 + (Ξ Λ_ii²)⁻¹)`` (eq. A.23).
      lam_diag: ``(p,)`` the diagonal of ``Λ``.
      theta_bar: ``(p,)`` the ground truth ``θ̄``.
    """

    xi: float
    gamma_cap: float
    zeta: np.ndarray
    gamma: np.ndarray
    lam_diag: np.ndarray
    theta_bar: np.ndarray


class RiskEstimate(NamedTuple):
    """Monte-Carlo mean test risk of pruned models, one entry per kept size.

    Attributes:
      risk: ``(len(keep),)`` mean population loss of the pruned models.
      stderr: ``(len(keep),)`` standard error of that mean (sample std, ddof 1, over
        ``√(number of draws or trials)``).
    """

    risk: np.ndarray
    stderr: np.ndarray


class ImportanceEstimate(NamedTuple):
    """Monte-Carlo mean natural importance, one entry per set size.

    Attributes:
      importance: ``(len(leading),)`` mean NI.
      stderr: ``(len(leading),)`` standard error of that mean (ddof 1).
    """

    importance: np.ndarray
    stderr: np.ndarray


# ----------------------------------------------------------------------------- validation


def _check_vector(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1 or array.shape[0] < 1:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite values, got {array[~np.isfinite(array)][:3]}")
    return array


def _check_model(
    lam_diag: Any, theta_bar: Any, theta_name: str = "theta_bar"
) -> tuple[np.ndarray, np.ndarray]:
    """``(Λ diagonal, θ)`` as float64 ``(p,)`` arrays: finite, same shape, ``Λ_ii > 0``."""
    lam = _check_vector(lam_diag, "lam_diag")
    theta = _check_vector(theta_bar, theta_name)
    if lam.shape != theta.shape:
        raise ValueError(
            f"{theta_name}: expected shape {lam.shape} (that of lam_diag), got {theta.shape}"
        )
    if np.any(lam <= 0):
        raise ValueError(
            f"lam_diag: expected positive entries (Λ positive definite), got {lam[lam <= 0][:3]}"
        )
    return lam, theta


def _check_n(n: Any, p: int) -> int:
    """``n`` as an int with ``κ = p/n > 1``."""
    n = check_positive_int(n, "n")
    if n >= p:
        raise ValueError(
            f"n: expected fewer examples than p = {p} (κ = p/n > 1, over-parameterized), "
            f"got n = {n} (κ = {p / n:g})"
        )
    return n


def _check_keep(keep: Any, p: int, name: str = "keep") -> np.ndarray:
    """``keep`` as a non-empty 1-D int array with entries in ``[0, p]``."""
    array = np.asarray(keep)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty list of ints, got shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected ints, got dtype {array.dtype}")
    bad = array[(array < 0) | (array > p)]
    if bad.size:
        raise ValueError(f"{name}: expected sizes in [0, p={p}], got {bad[:3].tolist()}")
    return array.astype(np.int64)


def _check_count(value: Any, name: str) -> int:
    """A number of draws or trials, at least 2 (for a standard error)."""
    return check_int(value, name, minimum=2)


def _mean_and_stderr(samples: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over axis 0; non-finite samples raise ``ValueError``."""
    samples = np.asarray(samples, np.float64)
    if not np.all(np.isfinite(samples)):
        raise ValueError(f"{name}: non-finite values in the Monte-Carlo samples")
    stderr = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
    return samples.mean(axis=0), stderr


# ----------------------------------------------------------------------------- the model


def population_loss(theta: Any, lam_diag: Any, theta_bar: Any, sigma: float) -> np.ndarray:
    """Population (test) loss ``L_Λ(θ) = E(y − θᵀΛx)² = ‖Λθ − θ̄‖² + σ²`` of eq. 3.1.

    The paper's normalization: no ½ and no 1/n; with ``x ~ N(0, I_p)``, ``y = xᵀθ̄ + z``.

    Args:
      theta: ``(..., p)`` parameters (in the scaled coordinates).
      lam_diag: ``(p,)`` positive diagonal of ``Λ``.
      theta_bar: ``(p,)`` ground truth ``θ̄``.
      sigma: label-noise standard deviation ``σ >= 0``.

    Returns:
      ``(...)`` float64 losses.

    Raises:
      ValueError: non-finite or mismatched shapes, ``Λ_ii <= 0``, ``σ < 0``.

    References: Li et al. (2020), Sec. 3, eq. 3.1, and Sec. 3.1 (realizable model).
    """
    lam, truth = _check_model(lam_diag, theta_bar)
    sigma = check_real(sigma, "sigma", minimum=0.0)
    theta = np.asarray(theta, np.float64)
    if theta.ndim < 1 or theta.shape[-1] != lam.shape[0]:
        raise ValueError(f"theta: expected shape (..., {lam.shape[0]}), got {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta: expected finite values, got NaN or inf")
    return np.sum((lam * theta - truth) ** 2, axis=-1) + sigma**2


def min_norm_solution(x: Any, y: Any) -> np.ndarray:
    """Minimum-ℓ2-norm least-squares solution ``θ̂ = X⁺y`` (eq. 3.2), in float64.

    Computed in JAX with float64 through the pseudo-inverse (an SVD), so it is defined for any
    rank; when ``n < p`` and ``X`` has full row rank it equals ``Xᵀ(XXᵀ)⁻¹y`` and interpolates.

    Args:
      x: ``(n, p)`` design matrix.
      y: ``(n,)`` labels.

    Returns:
      ``(p,)`` float64 solution.

    Raises:
      ValueError: wrong shapes, or NaN/inf in ``x`` or ``y``.

    References: Li et al. (2020), Sec. 3, eq. 3.2.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x: expected a 2-D (n, p) array, got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y: expected shape ({x.shape[0]},), got {y.shape}")
    for name, value in (("x", x), ("y", y)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
    with jax.enable_x64(True):
        return np.asarray(_pinv_solve(x, y), np.float64)


@jax.jit
def _pinv_solve(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.linalg.pinv(x) @ y


# ----------------------------------------------------------------------------- Def. 3.2


def _xi_equation(xi: float, lam_sq: np.ndarray, kappa: float) -> float:
    """Right side minus left side of eq. 3.3: ``(κ/p) Σ ΞΛ²/(1 + ΞΛ²) − 1``."""
    scaled = xi * lam_sq
    return float(kappa * np.mean(scaled / (1.0 + scaled)) - 1.0)


def auxiliary_distribution(
    lam_diag: Any, theta_bar: Any, *, n: int, sigma: float
) -> AuxiliaryDistribution:
    """The auxiliary distribution of Def. 3.2 (``Ξ``, ``Γ``, ``ζ``, ``γ``) for ``Λ``, ``θ̄``, ``n``.

    ``Ξ`` solves eq. 3.3, ``1 = (κ/p) Σ_i 1 / (1 + (Ξ Λ_ii²)⁻¹)``.  Its right side increases
    from 0 (``Ξ → 0``) to ``κ > 1`` (``Ξ → ∞``), so the root is unique (reading HB-4); it lies
    strictly inside ``(1 / (2κ mean Λ²), 2 / ((κ − 1) min Λ²))`` (at the lower end the right
    side is ``< κ Ξ mean Λ² = 1/2``; at the upper end every term is ``>= 2/(κ + 1)``, so the
    right side is ``>= 2κ/(κ + 1) > 1``) and is found there by Brent's method in float64 to
    within ``4·eps`` relative.  Then
    ``ζ_i = 1/(1 + ΞΛ_ii²)``, ``Γ = (σ² + Σ ζ_i² θ̄_i²) / (κ (1 − (κ/p) Σ (1 + (ΞΛ_ii²)⁻¹)⁻²))``
    (``θ̄`` in the numerator, reading HB-2; the denominator is positive since each
    ``(1 + (ΞΛ²)⁻¹)⁻¹ < 1``) and ``γ_i = κ√Γ / (1 + (ΞΛ_ii²)⁻¹)``.

    Args:
      lam_diag: ``(p,)`` positive, finite diagonal of ``Λ``.
      theta_bar: ``(p,)`` finite ground truth ``θ̄``.
      n: number of examples, ``1 <= n < p``.
      sigma: label-noise standard deviation ``σ >= 0``.

    Returns:
      :class:`AuxiliaryDistribution` (float64).

    Raises:
      ValueError: ``κ = p/n <= 1``, ``Λ_ii <= 0`` or non-finite, ``σ < 0``, shape mismatch.
      TypeError: ``n`` is not an int.

    References:
      Li et al. (2020), Def. 3.2 (eqs. 3.3, 3.4), App. A.3 (eqs. A.23–A.28); readings HB-1,
      HB-2, HB-4, HB-8 (docs/readings.md).
    """
    lam, theta = _check_model(lam_diag, theta_bar)
    p = lam.shape[0]
    n = _check_n(n, p)
    sigma = check_real(sigma, "sigma", minimum=0.0)
    kappa = p / n
    lam_sq = lam**2
    lower = 0.5 / (kappa * np.mean(lam_sq))
    upper = 2.0 / ((kappa - 1.0) * np.min(lam_sq))
    xi = brentq(
        _xi_equation,
        lower,
        upper,
        args=(lam_sq, kappa),
        xtol=1e-300,
        rtol=4 * np.finfo(np.float64).eps,
        maxiter=500,
    )
    weight = 1.0 / (1.0 + 1.0 / (xi * lam_sq))  # (1 + (ΞΛ²)⁻¹)⁻¹
    zeta = 1.0 / (1.0 + xi * lam_sq)
    gamma_cap = (sigma**2 + np.sum(zeta**2 * theta**2)) / (
        kappa * (1.0 - kappa * np.mean(weight**2))
    )
    gamma = kappa * math.sqrt(gamma_cap) * weight
    return AuxiliaryDistribution(float(xi), float(gamma_cap), zeta, gamma, lam, theta)


def identity_auxiliary(theta_bar: Any, *, n: int, sigma: float) -> AuxiliaryDistribution:
    """Closed form of Def. 3.2 for ``Λ = I_p``: ``θ_aux = θ̄/κ + √(σ²/(κ−1) + (κ−1)‖θ̄‖²/κ²) h``.

    That is ``Ξ = 1/(κ − 1)``, ``ζ_i = (κ − 1)/κ``, ``Γ = σ²/(κ − 1) + (κ − 1)‖θ̄‖²/κ²`` and
    ``γ_i = √Γ``, with ``h ~ N(0, I_p/p)`` (reading HB-1).

    Args:
      theta_bar: ``(p,)`` finite ground truth.
      n: number of examples, ``1 <= n < p``.
      sigma: ``σ >= 0``.

    Returns:
      :class:`AuxiliaryDistribution` with ``lam_diag`` all ones.

    Raises:
      ValueError: ``κ <= 1``, ``σ < 0``, non-finite ``theta_bar``.

    References: Li et al. (2020), Sec. 3.1, the identity-covariance case after Def. 3.2.
    """
    theta = _check_vector(theta_bar, "theta_bar")
    p = theta.shape[0]
    kappa = p / _check_n(n, p)
    sigma = check_real(sigma, "sigma", minimum=0.0)
    gamma_cap = sigma**2 / (kappa - 1.0) + (kappa - 1.0) * float(theta @ theta) / kappa**2
    return AuxiliaryDistribution(
        1.0 / (kappa - 1.0),
        gamma_cap,
        np.full(p, (kappa - 1.0) / kappa),
        np.full(p, math.sqrt(gamma_cap)),
        np.ones(p),
        theta,
    )


def identity_risk(theta_bar: Any, *, n: int, sigma: float) -> float:
    """Closed-form test risk of the unpruned auxiliary model for ``Λ = I_p``.

    ``E‖θ_aux − θ̄‖² + σ² = (1 − 1/κ)²‖θ̄‖² + Γ E‖h‖² + σ² = (κ − 1)‖θ̄‖²/κ + σ²/(κ − 1) + σ²``,
    with ``E‖h‖² = 1`` (reading HB-1): the known risk of min-norm interpolation with isotropic
    features as ``p, n → ∞`` at fixed ``κ``.  (Pruned risks have no closed form: hard
    thresholding is discontinuous, Sec. 3.1.)

    Args:
      theta_bar: ``(p,)`` finite ground truth.
      n: number of examples, ``1 <= n < p``.
      sigma: ``σ >= 0``.

    Returns:
      The risk (float).

    Raises:
      ValueError: ``κ <= 1``, ``σ < 0``, non-finite ``theta_bar``.

    References: Li et al. (2020), Sec. 3.1 (identity case after Def. 3.2, MP loss with s = p).
    """
    aux = identity_auxiliary(theta_bar, n=n, sigma=sigma)
    kappa = aux.theta_bar.shape[0] / n
    norm_sq = float(aux.theta_bar @ aux.theta_bar)
    return (kappa - 1.0) * norm_sq / kappa + sigma**2 / (kappa - 1.0) + sigma**2


def _check_aux(aux: Any) -> AuxiliaryDistribution:
    if not isinstance(aux, AuxiliaryDistribution):
        raise TypeError(f"aux: expected an AuxiliaryDistribution, got {type(aux).__name__}")
    return aux


@functools.partial(jax.jit, static_argnames="num_draws")
def _auxiliary_draws(
    key: jax.Array,
    zeta: jax.Array,
    gamma: jax.Array,
    lam: jax.Array,
    theta: jax.Array,
    num_draws: int,
) -> jax.Array:
    p = theta.shape[0]
    h = jax.random.normal(key, (num_draws, p), jnp.float64) / jnp.sqrt(p)
    return ((1.0 - zeta) * theta + gamma * h) / lam


def sample_auxiliary(aux: AuxiliaryDistribution, key: jax.Array, num_draws: int) -> np.ndarray:
    """Draws of ``θ_aux^Λ = Λ⁻¹[(1 − ζ) ⊙ θ̄ + γ ⊙ h]`` (eq. 3.4) with ``h ~ N(0, I_p/p)``.

    Args:
      aux: an :class:`AuxiliaryDistribution`.
      key: PRNG key.
      num_draws: number of draws, an int >= 1.

    Returns:
      ``(num_draws, p)`` float64 draws.

    Raises:
      TypeError: ``aux`` is not an :class:`AuxiliaryDistribution`, ``num_draws`` not an int.
      ValueError: ``num_draws < 1``.

    References: Li et al. (2020), Def. 3.2, eq. 3.4; reading HB-1 (docs/readings.md).
    """
    aux = _check_aux(aux)
    num_draws = check_positive_int(num_draws, "num_draws")
    with jax.enable_x64(True):
        draws = _auxiliary_draws(
            key, aux.zeta, aux.gamma, aux.lam_diag, aux.theta_bar, num_draws=num_draws
        )
        return np.asarray(draws, np.float64)


# ----------------------------------------------------------------------------- pruning


def _scores(theta: jax.Array, lam: jax.Array, hessian: jax.Array | bool) -> jax.Array:
    """MI ``θ_i²`` or HI ``Λ_ii² θ_i²`` (Def. 2.2 with Hessian Λ² and OBD's ½, reading HB-3).

    ``hessian`` may be traced: both methods share one compiled function.
    """
    return jnp.where(hessian, lam**2, 1.0) * theta**2


def _pruned_risks(
    theta: jax.Array,
    lam: jax.Array,
    theta_bar: jax.Array,
    sigma: jax.Array,
    keep: jax.Array,
    hessian: jax.Array | bool,
) -> jax.Array:
    """``(K,)`` population losses of ``θ`` pruned to its ``keep[k]`` most important weights.

    Sorting once by importance, a kept weight ``i`` contributes ``(Λ_ii θ_i − θ̄_i)²`` and a
    pruned one ``θ̄_i²``, so every size's loss is a prefix sum over the sorted gains.
    """
    order = jnp.argsort(-_scores(theta, lam, hessian), stable=True)
    dropped = theta_bar**2
    gain = ((lam * theta - theta_bar) ** 2 - dropped)[order]
    prefix = jnp.concatenate([jnp.zeros(1, gain.dtype), jnp.cumsum(gain)])
    return jnp.sum(dropped) + prefix[keep] + sigma**2


def pruning_masks(theta: Any, lam_diag: Any, *, keep: Any, method: str) -> np.ndarray:
    """Which weights ``Π_s`` keeps, for every ``s`` in ``keep``: MP or HP of one model.

    MP keeps the ``s`` largest ``|θ_i|``; HP the ``s`` largest ``Λ_ii² θ_i²`` (the HI of the
    linear model, whose Hessian is ``Λ²`` up to the factor 2 of reading HB-3), i.e. MP of
    ``Λθ`` as in the HP loss formula after Def. 3.2.  Ties go to the lower index.

    Args:
      theta: ``(p,)`` finite weights.
      lam_diag: ``(p,)`` positive diagonal of ``Λ``.
      keep: sizes ``s`` in ``[0, p]`` (ints).
      method: ``"magnitude"`` or ``"hessian"``.

    Returns:
      ``(len(keep), p)`` bool masks, ``True`` where the weight is kept.

    Raises:
      ValueError: bad shapes, non-finite values, ``Λ_ii <= 0``, sizes outside ``[0, p]``,
        unknown method.

    References: Li et al. (2020), Def. 2.2 (eq. 2.1), Def. 2.3, and Sec. 3.1 (MP and HP loss).
    """
    lam, weights = _check_model(lam_diag, theta, "theta")
    keep = _check_keep(keep, lam.shape[0])
    hessian = check_choice(method, METHODS, "method") == "hessian"
    scores = lam**2 * weights**2 if hessian else weights**2
    order = np.argsort(-scores, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[None, :] < keep[:, None]


@functools.partial(jax.jit, static_argnames="num_draws")
def _predicted_samples(
    key, zeta, gamma, lam, theta_bar, sigma, keep, hessian, num_draws: int
) -> jax.Array:
    draws = _auxiliary_draws(key, zeta, gamma, lam, theta_bar, num_draws=num_draws)
    return jax.vmap(_pruned_risks, (0, None, None, None, None, None))(
        draws, lam, theta_bar, sigma, keep, hessian
    )


def predicted_risk(
    lam_diag: Any,
    theta_bar: Any,
    *,
    n: int,
    sigma: float,
    keep: Any,
    method: str,
    key: jax.Array,
    num_draws: int,
) -> RiskEstimate:
    """Predicted test risk of the pruned min-norm solution: the auxiliary model's, Def. 3.2.

    MP loss ``E_h‖Λ Π_s^M(θ_aux^Λ) − θ̄‖² + σ²`` and HP loss ``E_h‖Π_s^M(Λθ_aux^Λ) − θ̄‖² + σ²``,
    the expectation over ``num_draws`` draws of ``h`` (the same draws for every ``s``).

    Args:
      lam_diag: ``(p,)`` positive diagonal of ``Λ``.
      theta_bar: ``(p,)`` ground truth.
      n: number of examples, ``1 <= n < p``.
      sigma: ``σ >= 0``.
      keep: kept sizes ``s`` in ``[0, p]`` (ints).
      method: ``"magnitude"`` or ``"hessian"``.
      key: PRNG key.
      num_draws: draws of ``h``, an int >= 2.

    Returns:
      :class:`RiskEstimate` of shape ``(len(keep),)``.

    Raises:
      ValueError: as :func:`auxiliary_distribution`, plus sizes outside ``[0, p]``, unknown
        method, ``num_draws < 2``.

    References: Li et al. (2020), Sec. 3.1, the MP and HP loss formulas after Def. 3.2.
    """
    aux = auxiliary_distribution(lam_diag, theta_bar, n=n, sigma=sigma)
    keep = _check_keep(keep, aux.lam_diag.shape[0])
    hessian = check_choice(method, METHODS, "method") == "hessian"
    num_draws = _check_count(num_draws, "num_draws")
    with jax.enable_x64(True):
        samples = _predicted_samples(
            key,
            aux.zeta,
            aux.gamma,
            aux.lam_diag,
            aux.theta_bar,
            float(sigma),
            keep,
            hessian,
            num_draws=num_draws,
        )
        samples = np.asarray(samples)
    return RiskEstimate(*_mean_and_stderr(samples, "predicted_risk"))


# ----------------------------------------------------------------------------- simulation


def _fit(key, lam, theta_bar, sigma, n: int):
    """One dataset (``x ~ N(0, I_p)``, features ``Λx``, ``y = xᵀθ̄ + σz``) and its min-norm fit.

    For ``n < p`` Gaussian ``X_Λ`` has full row rank almost surely, so ``X_Λ⁺y =
    X_Λᵀ(X_Λ X_Λᵀ)⁻¹y`` (eq. 3.2), solved by a Cholesky factorization of the ``n × n`` Gram
    matrix (much cheaper than an SVD).  In float64 this is accurate: for ``Λ = I`` the Gram
    matrix's condition number is about ``((√p + √n)/(√p − √n))²`` (≈ 63 at ``κ = 5/3``), and
    ``Λ`` multiplies it by at most ``max Λ² / min Λ²``.
    """
    key_x, key_z = jax.random.split(key)
    x = jax.random.normal(key_x, (n, theta_bar.shape[0]), jnp.float64)
    y = x @ theta_bar + sigma * jax.random.normal(key_z, (n,), jnp.float64)
    features = x * lam
    lower = jnp.linalg.cholesky(features @ features.T)
    half = jax.scipy.linalg.solve_triangular(lower, y, lower=True)
    theta_hat = features.T @ jax.scipy.linalg.solve_triangular(lower.T, half, lower=False)
    return features, y, theta_hat


@functools.partial(jax.jit, static_argnames=("n", "num_trials"))
def _empirical_samples(
    key, lam, theta_bar, sigma, keep, hessian, n: int, num_trials: int
) -> jax.Array:
    def trial(trial_key):
        _, _, theta_hat = _fit(trial_key, lam, theta_bar, sigma, n)
        return _pruned_risks(theta_hat, lam, theta_bar, sigma, keep, hessian)

    keys = jax.random.split(key, num_trials)
    return jax.lax.map(trial, keys, batch_size=min(num_trials, _TRIAL_BATCH))


def empirical_risk(
    lam_diag: Any,
    theta_bar: Any,
    *,
    n: int,
    sigma: float,
    keep: Any,
    method: str,
    key: jax.Array,
    num_trials: int,
) -> RiskEstimate:
    """Exact test risk of the pruned min-norm least-squares solution, averaged over datasets.

    Each trial draws a fresh dataset of ``n`` examples, ``x ~ N(0, I_p)``, features ``Λx``,
    ``y = xᵀθ̄ + z`` with ``z ~ N(0, σ²)`` (the convention of
    :func:`jaxprune.data.scaled_linear_regression`, generated here with ``jax.random`` in
    float64 for any ``Λ`` and ``θ̄``), fits ``θ̂^Λ = X_Λ⁺y`` (eq. 3.2), prunes it by MP or HP
    (:func:`pruning_masks`) to each size in ``keep`` and takes the exact population loss
    :func:`population_loss`.  The same datasets serve every size (and every method, for one
    ``key``).

    Args:
      lam_diag: ``(p,)`` positive diagonal of ``Λ``.
      theta_bar: ``(p,)`` ground truth.
      n: examples per dataset, ``1 <= n < p``.
      sigma: ``σ >= 0``.
      keep: kept sizes ``s`` in ``[0, p]`` (ints).
      method: ``"magnitude"`` or ``"hessian"``.
      key: PRNG key.
      num_trials: datasets, an int >= 2.

    Returns:
      :class:`RiskEstimate` of shape ``(len(keep),)``.

    Raises:
      ValueError: ``κ <= 1``, bad ``Λ``/``θ̄``, ``σ < 0``, sizes outside ``[0, p]``, unknown
        method, ``num_trials < 2``, or a non-finite risk (a singular Gram matrix).

    References: Li et al. (2020), Sec. 3 (eqs. 3.1, 3.2) and Sec. 3.1 (Figure 1's markers).
    """
    lam, theta = _check_model(lam_diag, theta_bar)
    p = lam.shape[0]
    n = _check_n(n, p)
    sigma = check_real(sigma, "sigma", minimum=0.0)
    keep = _check_keep(keep, p)
    hessian = check_choice(method, METHODS, "method") == "hessian"
    num_trials = _check_count(num_trials, "num_trials")
    with jax.enable_x64(True):
        samples = _empirical_samples(
            key, lam, theta, sigma, keep, hessian, n=n, num_trials=num_trials
        )
        samples = np.asarray(samples)
    return RiskEstimate(*_mean_and_stderr(samples, "empirical_risk"))


# ----------------------------------------------------------------------------- Figure 1c


def leading_test_importance(
    lam_diag: Any, theta_bar: Any, *, sigma: float, leading: Any
) -> np.ndarray:
    """Test NI of the first ``s`` weights of the population minimizer ``θ̄^Λ = Λ⁻¹θ̄``.

    ``I^N_{[s]}(θ̄^Λ) = L_Λ(θ̄^Λ with its first s weights zeroed) − L_Λ(θ̄^Λ) = Σ_{i<=s} θ̄_i²``
    (Def. 2.1 with reference 0; invariant to ``Λ`` by Lemma 3.1).  Computed from
    :func:`population_loss`.

    Args:
      lam_diag: ``(p,)`` positive diagonal of ``Λ``.
      theta_bar: ``(p,)`` ground truth.
      sigma: ``σ >= 0``.
      leading: set sizes ``s`` in ``[0, p]`` (ints).

    Returns:
      ``(len(leading),)`` float64 importances.

    Raises:
      ValueError: bad ``Λ``/``θ̄``, ``σ < 0``, sizes outside ``[0, p]``.

    References: Li et al. (2020), Def. 2.1, Lemma 3.1, Sec. 3.1 (Figure 1c); reading HB-9.
    """
    lam, theta = _check_model(lam_diag, theta_bar)
    leading = _check_keep(leading, lam.shape[0], "leading")
    minimizer = theta / lam
    zeroed = np.where(np.arange(lam.shape[0])[None, :] < leading[:, None], 0.0, minimizer)
    return population_loss(zeroed, lam, theta, sigma) - population_loss(
        minimizer, lam, theta, sigma
    )


@functools.partial(jax.jit, static_argnames=("n", "num_trials"))
def _training_importance_samples(key, lam, theta_bar, sigma, leading, n: int, num_trials: int):
    def trial(trial_key):
        features, y, theta_hat = _fit(trial_key, lam, theta_bar, sigma, n)
        contributions = features * theta_hat  # (n, p): column i is x_i^Λ θ̂_i
        prefix = jnp.concatenate(
            [jnp.zeros((n, 1), contributions.dtype), jnp.cumsum(contributions, axis=1)], axis=1
        )
        full = prefix[:, -1]
        pruned = full[:, None] - prefix[:, leading]  # (n, K): predictions without the first s
        return jnp.mean((y[:, None] - pruned) ** 2, axis=0) - jnp.mean((y - full) ** 2)

    keys = jax.random.split(key, num_trials)
    return jax.lax.map(trial, keys, batch_size=min(num_trials, _TRIAL_BATCH))


def leading_training_importance(
    lam_diag: Any,
    theta_bar: Any,
    *,
    n: int,
    sigma: float,
    leading: Any,
    key: jax.Array,
    num_trials: int,
) -> ImportanceEstimate:
    """Training NI of the first ``s`` weights of the min-norm solution ``θ̂^Λ``.

    ``L̂_Λ(θ̂^Λ with its first s weights zeroed) − L̂_Λ(θ̂^Λ)`` with ``L̂_Λ(θ) = ‖y − X_Λθ‖²/n``
    (eq. 3.1; the second term is 0 up to rounding as ``θ̂^Λ`` interpolates), averaged over
    datasets drawn as in :func:`empirical_risk` (the same datasets for the same ``key``).

    Args:
      lam_diag: ``(p,)`` positive diagonal of ``Λ``.
      theta_bar: ``(p,)`` ground truth.
      n: examples per dataset, ``1 <= n < p``.
      sigma: ``σ >= 0``.
      leading: set sizes ``s`` in ``[0, p]`` (ints).
      key: PRNG key.
      num_trials: datasets, an int >= 2.

    Returns:
      :class:`ImportanceEstimate` of shape ``(len(leading),)``.

    Raises:
      ValueError: ``κ <= 1``, bad ``Λ``/``θ̄``, ``σ < 0``, sizes outside ``[0, p]``,
        ``num_trials < 2``, non-finite results.

    References: Li et al. (2020), Def. 2.1, eq. 3.1, Sec. 3.1 (Figure 1c); reading HB-9.
    """
    lam, theta = _check_model(lam_diag, theta_bar)
    p = lam.shape[0]
    n = _check_n(n, p)
    sigma = check_real(sigma, "sigma", minimum=0.0)
    leading = _check_keep(leading, p, "leading")
    num_trials = _check_count(num_trials, "num_trials")
    with jax.enable_x64(True):
        samples = _training_importance_samples(
            key, lam, theta, sigma, leading, n=n, num_trials=num_trials
        )
        samples = np.asarray(samples)
    return ImportanceEstimate(*_mean_and_stderr(samples, "leading_training_importance"))
