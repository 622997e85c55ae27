"""Variance-reduced estimators of ``Tr(∇²loss(params))``: Hutch++, XTrace and Lanczos deflation.

Plain Hutchinson (:func:`jaxprune.spectra.hessian.hessian_trace`) needs ``O(1/ε²)`` probes for a
relative error ``ε``.  Both estimators here spend part of the budget on a sketch ``Y = H Ω``,
take the trace of ``H`` on the span ``Q`` of the sketch exactly and estimate only the rest,
``Tr((I − QQᵀ) H (I − QQᵀ))``, by Hutchinson; for a Hessian whose spectrum decays (the usual
case: a few large outlier eigenvalues over a bulk near zero) the rest is small, and so is the
variance.  ``num_probes`` counts Hessian-vector products (or, for the Hutchinson part, the
cheaper quadratic forms ``vᵀ H v``): the whole budget, comparable with ``hessian_trace``'s.

Both work on the flattened parameter vector (``jax.flatten_util.ravel_pytree``), touch the
Hessian only through :func:`jaxprune.spectra.hessian.hvp` and
:func:`jaxprune.spectra.hessian.hessian_quadratic_form`, and are jit-compatible with the integer
and string options static.  They return a :class:`~jaxprune.spectra.hessian.TraceEstimate`
whose ``samples`` are unbiased estimates of the whole trace and whose ``num_probes`` is their
number (not the budget): ``estimate`` is their mean and ``stderr`` their standard error.

References:
  Meyer, Musco, Musco & Woodruff (2021), "Hutch++: Optimal stochastic trace estimation".
  Epperly, Tropp & Webber (2024), "XTrace: Making the most of every sample in stochastic trace
  estimation".  Gambhir, Stathopoulos & Orginos (2017), "Deflation as a method of variance
  reduction for estimating the trace of a matrix inverse".  Hutchinson (1990).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxprune._validation import check_callable, check_int, check_key
from jaxprune.spectra.hessian import (
    Distribution,
    TraceEstimate,
    _check_finite_loss,
    _check_probe_args,
    _draw_probe,
    _map_probes,
    _quadratic_form_and_loss,
    hessian_quadratic_form,
    hvp,
)
from jaxprune.spectra.lanczos import _flat_hvp, lanczos_tridiagonal
from jaxprune.spectra.static import as_partial
from jaxprune.typing import LossFn, PyTree

__all__ = ["deflated_trace", "hutchpp_trace", "xtrace"]


def hutchpp_trace(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: Distribution = "rademacher",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutch++ estimate of ``Tr(∇²loss(params))`` from ``num_probes`` Hessian products.

    Of the budget ``m = num_probes``, ``r = m // 3`` HVPs sketch ``Y = H S`` (``S`` a
    ``(P, r)`` random matrix), ``Q = orth(Y)``; ``r`` quadratic forms give ``Tr(Qᵀ H Q)``
    exactly; the other ``m − 2r`` probes ``g`` give Hutchinson samples
    ``gᵀ (I − QQᵀ) H (I − QQᵀ) g``.  Each returned sample is ``Tr(Qᵀ H Q)`` plus one of them, an
    unbiased estimate of ``Tr(H)``; the standard error is that of the Hutchinson part (the
    low-rank part is exact).  When ``rank(H) <= r`` the residual vanishes and the estimate is
    exact.  The error is ``O(1/m)`` for a positive semi-definite ``H`` instead of Hutchinson's
    ``O(1/sqrt(m))``.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, finite at ``params``.
      params: parameter pytree (finite values) with ``P`` entries.
      key: PRNG key (the sketch and the probes are drawn from keys split from it).
      num_probes: the budget ``m`` of Hessian products, an int >= 3 (one sketch vector, its
        quadratic form and one Hutchinson probe; >= 4 for a finite standard error).
      distribution: entries of ``S`` and of the probes, ``"rademacher"`` or ``"gaussian"``.
      batch_size: products evaluated together (vectorized); default as
        :func:`jaxprune.spectra.hessian.hessian_trace` (1 on CPU, memory-sized blocks on GPU/TPU).

    Returns:
      :class:`TraceEstimate` with scalar ``estimate``/``stderr``, ``num_probes = m − 2r``
      and ``(m − 2r,)`` samples.

    Raises:
      TypeError / ValueError: ``loss_fn`` not callable, ``key`` not a PRNG key; bad
        ``num_probes`` (an int < 3), ``distribution`` or ``batch_size``; non-finite ``params``; a non-scalar ``loss_fn`` output; a NaN or inf
        loss (checked when concrete).

    References:
      Meyer, Musco, Musco & Woodruff (2021), Algorithm 1 (Hutch++); Hutchinson (1990).
    """
    _check_function_and_key(loss_fn, key)
    check_int(num_probes, "num_probes", minimum=3)
    num_probes, batch_size = _check_probe_args(params, num_probes, distribution, batch_size)
    _check_scalar_loss(loss_fn, params)
    samples, loss = _hutchpp_samples(
        as_partial(loss_fn),
        params,
        key,
        num_probes=num_probes,
        distribution=distribution,
        batch_size=batch_size,
    )
    _check_finite_loss(loss, "loss_fn: expected a finite loss at params, got")
    return TraceEstimate.from_samples(samples, num_probes - 2 * (num_probes // 3))


@functools.partial(jax.jit, static_argnames=("num_probes", "distribution", "batch_size"))
def _hutchpp_samples(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: str,
    batch_size: int,
) -> tuple[jax.Array, jax.Array]:
    """Hutch++'s ``(m − 2r,)`` samples and the loss, compiled with ``params`` as an argument
    (see :func:`jaxprune.spectra.hessian._hutchinson_samples`)."""
    unravel = ravel_pytree(params)[1]
    rank = num_probes // 3
    sketch_key, probe_key = jax.random.split(key)

    def sketch(k: jax.Array) -> jax.Array:
        return ravel_pytree(hvp(loss_fn, params, _draw_probe(k, params, distribution)))[0]

    basis = jnp.linalg.qr(_map_probes(sketch, sketch_key, rank, batch_size).T)[0].T  # (r, P)
    forms, losses = jax.lax.map(
        lambda q: _quadratic_form_and_loss(
            loss_fn, params, jax.lax.optimization_barrier(unravel(q))
        ),
        basis,
        batch_size=batch_size,
    )

    def residual(k: jax.Array) -> jax.Array:
        return hessian_quadratic_form(
            loss_fn, params, _complement_probe(k, params, distribution, basis, unravel)
        )

    samples = jnp.sum(forms) + _map_probes(residual, probe_key, num_probes - 2 * rank, batch_size)
    return samples, losses[0]


def xtrace(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: Distribution = "gaussian",
    batch_size: int | None = None,
) -> TraceEstimate:
    """XTrace estimate of ``Tr(∇²loss(params))`` with its leave-one-out standard error.

    Of the budget ``m = num_probes`` (even), ``k = m / 2`` HVPs give ``Y = H Ω`` for a ``(P, k)``
    random ``Ω = [ω_1 … ω_k]`` and ``k`` more give ``H Q`` for ``Q = orth(Y)``.  For each ``i``,
    ``Q_(i)`` spans ``H Ω`` without column ``i`` and
    ``t_i = Tr(Q_(i)ᵀ H Q_(i)) + ω_iᵀ (I − Q_(i)Q_(i)ᵀ) H (I − Q_(i)Q_(i)ᵀ) ω_i``
    is unbiased (``ω_i`` is independent of ``Q_(i)``); all ``k`` come from the one sketch by
    rank-one downdates of the QR factors.  The estimate is their mean and the standard error
    ``std(t) / sqrt(k)``, the leave-one-out error of the paper (the ``t_i`` are not
    independent: it is an error estimate, not an exact standard deviation).  With Gaussian
    probes each projected probe is rescaled to the expected norm of its projection
    ("resphering", Epperly, Tropp & Webber (2024), Sec. 2.2); Rademacher probes are used as
    drawn.  If ``rank(H) < k`` the sketch spans the range of ``H``, every ``t_i`` is the exact
    ``Tr(Qᵀ H Q)`` and the standard error is zero.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, finite at ``params``.
      params: parameter pytree (finite values) with ``P`` entries.
      key: PRNG key of ``Ω``.
      num_probes: the budget ``m`` of HVPs, an even int with ``4 <= m <= 2P``.
      distribution: entries of ``Ω``, ``"gaussian"`` (default, resphered) or ``"rademacher"``.
      batch_size: HVPs evaluated together (vectorized); default as
        :func:`jaxprune.spectra.hessian.hessian_trace` (1 on CPU, memory-sized blocks on GPU/TPU).

    Returns:
      :class:`TraceEstimate` with scalar ``estimate``/``stderr``, ``num_probes = m / 2`` and the
      ``(m / 2,)`` leave-one-out estimates as ``samples``.

    Raises:
      TypeError / ValueError: ``loss_fn`` not callable, ``key`` not a PRNG key;
        ``num_probes`` not an even int in ``[4, 2P]``; bad
        ``distribution`` or ``batch_size``; non-finite ``params``; a non-scalar ``loss_fn``
        output; a NaN or inf estimate (checked when concrete).

    References:
      Epperly, Tropp & Webber (2024), Algorithm 2 (XTrace) and Sec. 2.2.
    """
    _check_function_and_key(loss_fn, key)
    num_probes, batch_size = _check_probe_args(params, num_probes, distribution, batch_size)
    dim = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    if num_probes % 2 or not 4 <= num_probes <= 2 * dim:
        raise ValueError(
            f"num_probes: expected an even int in [4, 2P] = [4, {2 * dim}] (half sketch, half "
            f"products with its basis), got {num_probes}"
        )
    _check_scalar_loss(loss_fn, params)
    samples = _xtrace_samples(
        as_partial(loss_fn),
        params,
        key,
        num_probes=num_probes,
        distribution=distribution,
        batch_size=batch_size,
    )
    result = TraceEstimate.from_samples(samples, num_probes // 2)
    _check_finite_loss(
        result.estimate, "loss_fn: expected finite Hessian products at params, got a trace of"
    )
    return result


@functools.partial(jax.jit, static_argnames=("num_probes", "distribution", "batch_size"))
def _xtrace_samples(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: str,
    batch_size: int,
) -> jax.Array:
    """XTrace's ``(m / 2,)`` leave-one-out estimates, compiled with ``params`` as an argument
    (see :func:`jaxprune.spectra.hessian._hutchinson_samples`)."""
    flat, unravel = ravel_pytree(params)
    dim = flat.size
    k = num_probes // 2
    flat_hvp = _flat_hvp(loss_fn, params, unravel)
    omega = _map_probes(
        lambda pk: ravel_pytree(_draw_probe(pk, params, distribution))[0], key, k, batch_size
    )  # (k, P)
    q, r = jnp.linalg.qr(jax.lax.map(flat_hvp, omega, batch_size=batch_size).T)  # (P, k), (k, k)
    z = jax.lax.map(flat_hvp, q.T, batch_size=batch_size)  # (k, P): rows H q_j
    h = z @ q
    return _leave_one_out_traces(
        0.5 * (h + h.T), r, q.T @ omega.T, jnp.sum(omega**2, axis=1), dim, distribution
    )


def deflated_trace(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    num_lanczos_steps: int | None = None,
    distribution: Distribution = "rademacher",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson on the complement of a Lanczos basis: ``Tr(∇²loss(params))`` with the
    Krylov subspace deflated.

    Of the budget ``m = num_probes``, ``s`` HVPs run ``s`` Lanczos steps with full
    reorthogonalization from a random start; their orthonormal basis ``Q`` (``s × P``) spans
    the directions of the extreme eigenvalues first, and ``Tr(Q H Qᵀ) = sum_j α_j`` comes free
    with the tridiagonal coefficients (``α_j = q_jᵀ H q_j``).  The other ``m − s`` probes ``g``
    give Hutchinson samples ``gᵀ (I − QᵀQ) H (I − QᵀQ) g`` of the rest; each returned sample is
    ``sum_j α_j`` plus one of them, unbiased because ``Q`` depends on its own key only.  The
    standard error is that of the Hutchinson part.  Against Hutch++ (whose sketch is one random
    block) the Krylov basis captures the outlier eigenvalues of a Hessian more fully and its
    trace costs no products; the steps are sequential, so on an accelerator Hutch++'s block
    products may be quicker at the same budget.  When the Krylov space becomes invariant
    (``s`` at least the number of distinct nonzero eigenvalues seen from the start vector) the
    rest is zero and the estimate exact.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, finite at ``params``.
      params: parameter pytree (finite values) with ``P`` entries.
      key: PRNG key (the Lanczos start and the probes are drawn from keys split from it).
      num_probes: the budget ``m`` of Hessian products, an int >= 2.
      num_lanczos_steps: ``s``, an int with ``1 <= s <= min(m − 1, P)``; default
        ``max(1, m // 3)`` (capped likewise), as Hutch++ spends a third on its sketch.
      distribution: entries of the Hutchinson probes, ``"rademacher"`` or ``"gaussian"``.
      batch_size: probes evaluated together (vectorized); default as
        :func:`jaxprune.spectra.hessian.hessian_trace` (1 on CPU, memory-sized blocks on GPU/TPU).

    Returns:
      :class:`TraceEstimate` with scalar ``estimate``/``stderr``, ``num_probes = m − s`` and
      ``(m − s,)`` samples.

    Raises:
      TypeError / ValueError: ``loss_fn`` not callable, ``key`` not a PRNG key;
        ``num_probes`` not an int >= 2, ``num_lanczos_steps`` outside
        ``[1, min(m − 1, P)]``, bad ``distribution`` or ``batch_size``; non-finite ``params``;
        a non-scalar ``loss_fn`` output; a NaN or inf loss (checked when concrete).

    References:
      Gambhir, Stathopoulos & Orginos (2017), Sec. 3 (deflated Hutchinson); Lanczos (1950);
      Meyer, Musco, Musco & Woodruff (2021) (the split of the budget); Hutchinson (1990).
    """
    _check_function_and_key(loss_fn, key)
    check_int(num_probes, "num_probes", minimum=2)
    dim = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    most = min(num_probes - 1, dim)
    if num_lanczos_steps is None:
        num_lanczos_steps = min(max(1, num_probes // 3), most)
    check_int(num_lanczos_steps, "num_lanczos_steps", minimum=1)
    if num_lanczos_steps > most:
        raise ValueError(
            f"num_lanczos_steps: expected an int in [1, min(num_probes - 1, P)] = [1, {most}] "
            f"(at least one Hutchinson probe), got {num_lanczos_steps}"
        )
    num_hutchinson = num_probes - num_lanczos_steps
    num_hutchinson, batch_size = _check_probe_args(params, num_hutchinson, distribution, batch_size)
    _check_scalar_loss(loss_fn, params)
    samples, loss = _deflated_samples(
        as_partial(loss_fn),
        params,
        key,
        num_lanczos_steps=num_lanczos_steps,
        num_hutchinson=num_hutchinson,
        distribution=distribution,
        batch_size=batch_size,
    )
    _check_finite_loss(loss, "loss_fn: expected a finite loss at params, got")
    return TraceEstimate.from_samples(samples, num_hutchinson)


@functools.partial(
    jax.jit,
    static_argnames=("num_lanczos_steps", "num_hutchinson", "distribution", "batch_size"),
)
def _deflated_samples(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    key: jax.Array,
    *,
    num_lanczos_steps: int,
    num_hutchinson: int,
    distribution: str,
    batch_size: int,
) -> tuple[jax.Array, jax.Array]:
    """The ``(m − s,)`` deflated samples and the loss, compiled with ``params`` as an argument
    (see :func:`jaxprune.spectra.hessian._hutchinson_samples`)."""
    flat, unravel = ravel_pytree(params)
    lanczos_key, probe_key = jax.random.split(key)
    tri = lanczos_tridiagonal(
        _flat_hvp(loss_fn, params, unravel),
        flat.size,
        lanczos_key,
        num_lanczos_steps,
        flat.dtype,
        reorthogonalization="full",
    )
    basis = tri.basis  # (s, P), orthonormal

    def residual(k: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _quadratic_form_and_loss(
            loss_fn, params, _complement_probe(k, params, distribution, basis, unravel)
        )

    forms, losses = _map_probes(residual, probe_key, num_hutchinson, batch_size)
    return jnp.sum(tri.alphas) + forms, losses[0]


def _complement_probe(
    key: jax.Array, params: PyTree, distribution: str, basis: jax.Array, unravel: Callable
) -> PyTree:
    """A probe drawn from ``key`` with its projection on the ``(r, P)`` orthonormal rows of
    ``basis`` removed, ``(I − basisᵀ basis) g``, as a materialized pytree like ``params``."""
    g = ravel_pytree(_draw_probe(key, params, distribution))[0]
    return jax.lax.optimization_barrier(unravel(g - basis.T @ (basis @ g)))


def _leave_one_out_traces(
    h: jax.Array, r: jax.Array, w: jax.Array, omega_sq: jax.Array, dim: int, distribution: str
) -> jax.Array:
    """The ``k`` XTrace estimates ``t_i`` from the small factors of one sketch.

    With ``Y = H Ω = Q R``, the span of ``Y`` without column ``i`` is ``Q (I − s_i s_iᵀ)`` for
    the unit ``s_i ∝ R^{-T} e_i`` (orthogonal to every column of ``R`` but the ``i``-th).  Then
    ``Tr(Q_(i)ᵀ H Q_(i)) = Tr(Qᵀ H Q) − s_iᵀ (Qᵀ H Q) s_i`` and, with ``w_i = Qᵀ ω_i``,
    ``x_i = w_i − s_i (s_iᵀ w_i)`` and ``Qᵀ H ω_i = r_i`` (``H`` symmetric), the residual form
    ``ω_iᵀ P_i H P_i ω_i = −x_iᵀ r_i + x_iᵀ (QᵀHQ) x_i + (s_iᵀ r_i)(s_iᵀ w_i)``; the projected
    probe's squared norm is ``‖ω_i‖² − ‖x_i‖²``.

    Args:
      h: ``(k, k)`` symmetric ``Qᵀ H Q``.
      r: ``(k, k)`` upper-triangular ``R``.
      w: ``(k, k)`` ``Qᵀ Ω`` (column ``i`` is ``w_i``).
      omega_sq: ``(k,)`` squared norms ``‖ω_i‖²``.
      dim: ``P``.
      distribution: ``"gaussian"`` rescales each residual by ``(P − k + 1) / ‖P_i ω_i‖²``.

    Returns:
      ``(k,)`` estimates; all ``Tr(h)`` when ``R`` is singular to working precision.

    References:
      Epperly, Tropp & Webber (2024), Sec. 2.1-2.2 and Algorithm 2.
    """
    k = r.shape[0]
    diag = jnp.abs(jnp.diagonal(r))
    singular = jnp.min(diag) <= k * jnp.finfo(r.dtype).eps * jnp.max(diag)
    safe_r = jnp.where(singular, jnp.eye(k, dtype=r.dtype), r)
    s = jax.scipy.linalg.solve_triangular(safe_r, jnp.eye(k, dtype=r.dtype), lower=False).T
    s = s / jnp.linalg.norm(s, axis=0)
    sw = jnp.sum(s * w, axis=0)
    x = w - s * sw
    low_rank = jnp.trace(h) - jnp.sum(s * (h @ s), axis=0)
    residual = -jnp.sum(x * r, axis=0) + jnp.sum(x * (h @ x), axis=0) + jnp.sum(s * r, axis=0) * sw
    if distribution == "gaussian":
        residual = residual * (dim - k + 1) / (omega_sq - jnp.sum(x**2, axis=0))
    return jnp.where(singular, jnp.trace(h), low_rank + residual)


def _check_function_and_key(loss_fn: LossFn, key: jax.Array) -> None:
    """``TypeError`` naming ``loss_fn`` (not callable) or ``key`` (not a PRNG key, e.g. an int
    seed), which would otherwise fail inside JAX."""
    check_callable(loss_fn, "loss_fn")
    check_key(key, "key")


def _check_scalar_loss(loss_fn: LossFn, params: PyTree) -> None:
    """Trace (without running) one quadratic form, so a non-scalar ``loss_fn`` output raises
    :func:`hessian_quadratic_form`'s ``ValueError`` before any Hessian product is formed."""
    jax.eval_shape(lambda p: hessian_quadratic_form(loss_fn, p, p), params)
