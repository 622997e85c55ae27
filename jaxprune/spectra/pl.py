"""Polyak–Łojasiewicz (PL*) quantities: PL constant, Lipschitz constant, condition number.

For the square loss ``L(w) = ½ Σ_x ‖f(x; w) − y(x)‖²`` the gradient is ``DFᵀ r`` with residual
``r = f − y``, so ``‖∇L‖² = rᵀ K r ≥ λ_min(K) ‖r‖² = 2 λ_min(K) L``: the loss is μ-PL* with
``μ = λ_min(K)`` (uniform conditioning, Liu et al. 2022), and the map ``w ↦ f`` is
``L_f = ‖DF‖₂ = √λ_max(K)``-Lipschitz.  ``K = DF DFᵀ`` is the empirical NTK.

References:
  Chen et al. (2023), Section 3.1 (Definition 7: condition number L_f/μ; eq. 5: μ* ≈ λ_min(K) under
  uniform conditioning; Proposition 8: upper bound) and Appendix D footnote, with reading PL-3 in
  docs/readings.md (the experiments report λ_max(K)/λ_min(K)).  Liu, Zhu & Belkin (2022), "Loss
  landscapes and optimization in over-parameterized non-linear systems and neural networks".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune._validation import check_real
from jaxprune.spectra.spectrum import check_kernel, spectrum_features

__all__ = [
    "PLCondition",
    "empirical_pl_ratio",
    "pl_condition",
    "proposition8_bound",
]


class PLCondition(NamedTuple):
    """PL quantities of a kernel ``K = DF DFᵀ`` (one or a stack of them).

    Attributes:
      pl_constant: μ = λ_min(K) / scale (0 when K is rank deficient: no PL* constant).
      lipschitz: L_f = ‖DF‖₂ = √λ_max(K / scale).
      condition_number: the paper's L_f / μ (Definition 7); ``inf`` when μ = 0.
      kernel_condition_number: λ_max(K) / λ_min(K), what the paper's experiments plot.
      rank_deficient: whether λ_min(K) is 0 up to round-off.
    """

    pl_constant: jax.Array
    lipschitz: jax.Array
    condition_number: jax.Array
    kernel_condition_number: jax.Array
    rank_deficient: jax.Array


def pl_condition(kernel: jax.Array, *, loss_scale: float = 1.0, dtype: Any = None) -> PLCondition:
    """PL constant, Lipschitz constant and condition numbers from an empirical NTK.

    Args:
      kernel: ``(n, n)`` or ``(p, n, n)`` empirical NTK(s) ``DF DFᵀ`` (for ``k`` outputs the
        kernel traced over outputs, :func:`jaxprune.spectra.empirical_ntk`'s convention):
        finite and symmetric, checked on concrete values as in
        :func:`~jaxprune.spectra.spectrum_features` (skipped inside ``jit``).
      loss_scale: ``s`` in ``L = (1/(2s)) Σ ‖f − y‖²``: 1 for the summed square loss, ``n``
        for the mean.  μ scales as ``λ_min(K)/s`` and ``L_f`` as ``√(λ_max(K)/s)``.
      dtype: eigen-decomposition dtype (``np.float64`` for ill-conditioned kernels); half
        precision is computed in float32.

    Returns:
      :class:`PLCondition`.

    Raises:
      ValueError: ``loss_scale <= 0``; a kernel of the wrong shape, with NaN or inf, or not
        symmetric (see :func:`~jaxprune.spectra.spectrum.check_kernel`).
    """
    check_real(loss_scale, "loss_scale", minimum=0.0, strict=True)
    features = spectrum_features(kernel, dtype=dtype)
    mu = features.lambda_min / loss_scale
    lipschitz = jnp.sqrt(features.lambda_max / loss_scale)
    condition = jnp.where(mu > 0, lipschitz / jnp.where(mu > 0, mu, 1.0), jnp.inf)
    return PLCondition(
        pl_constant=mu,
        lipschitz=lipschitz,
        condition_number=condition,
        kernel_condition_number=features.condition_number,
        rank_deficient=features.rank_deficient,
    )


def empirical_pl_ratio(
    loss_fn: Callable[[Any], jax.Array], params: Any, *, loss_min: float = 0.0
) -> jax.Array:
    """The PL ratio ``‖∇L(w)‖² / (2 (L(w) − L*))`` at ``params``.

    A loss is μ-PL* on a set when this ratio is at least μ everywhere on it; for the square
    loss it lies in ``[λ_min(K), λ_max(K)]`` (see the module docstring).  ``loss_min`` is L*
    (0 for interpolating over-parameterized models).  Returns ``inf`` when ``L = L*``.

    References: Chen et al. (2023), Section 3.1 (PL* condition); Liu et al. (2022), Definition 3.
    """
    loss, grad = jax.value_and_grad(loss_fn)(params)
    squared = sum(jnp.vdot(g, g).real for g in jax.tree_util.tree_leaves(grad))
    gap = loss - loss_min
    return jnp.where(gap > 0, squared / (2 * jnp.where(gap > 0, gap, 1.0)), jnp.inf)


def proposition8_bound(
    kernel_at_w0: jax.Array,
    *,
    hessian_norm: float | jax.Array,
    radius: float,
    lambda_min_inf: float | jax.Array | None = None,
) -> jax.Array:
    """Upper bound of Proposition 8 on the condition number L_f/μ* over a ball B(w₀, R).

    ``(‖DF(w₀)‖₂ + √n R sup_B ‖H_f‖₂) / inf_B λ_min(K)`` with ``‖DF(w₀)‖₂ = √λ_max(K(w₀))``.

    Args:
      kernel_at_w0: ``(n, n)`` NTK at the centre w₀, finite and symmetric (checked on concrete
        values, see :func:`~jaxprune.spectra.spectrum.check_kernel`).
      hessian_norm: ``sup_B ‖H_f‖₂ = sup_B max_i ‖∂²f_i/∂w²‖₂`` (e.g. from
        :func:`jaxprune.spectra.hessian_eigenvalues` of each output at points of the ball).
      radius: R.
      lambda_min_inf: ``inf_B λ_min(K)``; defaults to λ_min(K(w₀)) (a lower estimate of the
        bound, exact only if the kernel's smallest eigenvalue is smallest at w₀).

    Returns:
      The bound (``inf`` when the λ_min used is 0).

    References: Chen et al. (2023), Proposition 8 and Appendix C.
    """
    check_real(radius, "radius", minimum=0.0)
    check_kernel(kernel_at_w0, "kernel_at_w0")
    features = spectrum_features(kernel_at_w0)
    n = kernel_at_w0.shape[-1]
    lam = features.lambda_min if lambda_min_inf is None else jnp.asarray(lambda_min_inf)
    numerator = jnp.sqrt(features.lambda_max) + jnp.sqrt(n) * radius * hessian_norm
    return jnp.where(lam > 0, numerator / jnp.where(lam > 0, lam, 1.0), jnp.inf)
