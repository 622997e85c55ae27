"""Hessian importance (OBD saliency) per group: ``sum_{j in g} ½ H_jj w_j²``.

The ½ convention: Optimal Brain Damage's saliency of weight ``j`` is ``½ H_jj w_j²``, the diagonal
second-order estimate of the loss increase when ``w_j`` is set to zero at a minimum. The Hessian
importance of Li et al. (2020), Def. 2.2, eq. 2.1, omits the ½, ``HI = sum H_ii θ_i²``; by reading
HB-3 (docs/readings.md, "Hessian factor 2"), "NI = HI" for the squared loss holds with OBD's ½ (or
with ``H := Σ``).  The scores here are therefore half of their HI; rankings are identical.

References:
  LeCun, Denker & Solla (1990), "Optimal brain damage" (saliency ``s_k = h_kk u_k² / 2``).
  Li et al. (2020), Section 2 (Def. 2.2, the Hessian importance HI) and Section 3 (HI of linear
  models), with reading HB-3 (docs/readings.md).  Bekas, Kokiopoulou & Saad (2007) and Hutchinson (1990) for the
  stochastic diagonal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from jaxprune._validation import check_key, check_positive_int
from jaxprune.criteria._reduce import (
    call_compiled,
    check_finite_loss,
    check_scalar_loss,
    checked_num_groups,
    group_sum,
)
from jaxprune.spectra.hessian import (
    Distribution,
    TraceEstimate,
    hessian_diagonal,
    hvp,
)
from jaxprune.typing import LossFn, PyTree

__all__ = ["hessian_diagonal_score_estimate", "hessian_diagonal_scores"]

# Basis vectors whose Hessian-vector products are evaluated together for the exact diagonal.
_EXACT_BATCH = 64


def hessian_diagonal_scores(
    loss_fn: LossFn,
    params: PyTree,
    group_ids: PyTree,
    *,
    key: jax.Array | None = None,
    num_probes: int | None = None,
    exact: bool = False,
) -> jax.Array:
    """OBD / Hessian importance of each group: ``s_g = sum_{j in g} ½ H_jj w_j²``.

    With ``exact=True`` the diagonal ``H_jj`` is exact: one Hessian-vector product per
    parameter (``P`` HVPs, the cost of forming ``jax.hessian``, in memory ``O(64 P)``), for
    small models.  Otherwise it is the Hutchinson estimate ``E[v ⊙ H v]`` with ``num_probes``
    Rademacher probes drawn from ``key`` (:func:`jaxprune.spectra.hessian.hessian_diagonal`);
    :func:`hessian_diagonal_score_estimate` returns the same estimate with its standard error.

    Sign convention: higher means more important (removing the group raises the loss more, to
    second order); pruning keeps the top scores.  At a minimum ``H_jj >= 0`` and the scores are
    >= 0; away from one a negative ``H_jj`` gives a negative score.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values).
      group_ids: group-id pytree with ``p`` groups; weights with id ``-1`` are ignored.
      key: PRNG key for the Hutchinson probes (required unless ``exact``).
      num_probes: number of Hutchinson probes, an int >= 1 (required unless ``exact``).
      exact: compute ``H_jj`` exactly instead of estimating it.

    Returns:
      ``(p,)`` scores in the dtype of ``params``.

    Raises:
      ValueError: ``exact`` with ``key``/``num_probes`` given, or not ``exact`` with either
        missing; ``num_probes < 1``; ``params`` hold NaN/inf; ``group_ids`` does not match;
        a loss that is not a scalar or (checked when concrete) NaN or inf at ``params``.
      TypeError: ``num_probes`` is not an int, ``key`` not a PRNG key, ``loss_fn`` not callable.

    References:
      LeCun, Denker & Solla (1990); Li et al. (2020), Def. 2.2, and reading HB-3
      (docs/readings.md, "Hessian factor 2").
    """
    if exact:
        if key is not None or num_probes is not None:
            raise ValueError(
                f"key and num_probes are for the Hutchinson estimate (exact=False); with "
                f"exact=True pass neither, got key={key!r}, num_probes={num_probes!r}"
            )
        p = checked_num_groups(params, group_ids)
        scores, loss = call_compiled(_exact_scores, (3,), loss_fn, params, group_ids, p)
        check_finite_loss(loss)
        return scores
    if key is None or num_probes is None:
        raise ValueError(
            f"the Hutchinson estimate (exact=False) needs both key and num_probes, got "
            f"key={key!r}, num_probes={num_probes!r}"
        )
    return hessian_diagonal_score_estimate(
        loss_fn, params, group_ids, key, num_probes=num_probes
    ).estimate


def hessian_diagonal_score_estimate(
    loss_fn: LossFn,
    params: PyTree,
    group_ids: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: Distribution = "rademacher",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson estimate of ``s_g = sum_{j in g} ½ H_jj w_j²`` with its standard error.

    Probe ``v`` gives the unbiased sample ``sum_{j in g} ½ w_j² v_j (H v)_j`` for every group
    at once (one HVP per probe).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values).
      group_ids: group-id pytree with ``p`` groups; weights with id ``-1`` are ignored.
      key: PRNG key.
      num_probes: number of probes, an int >= 1.
      distribution: ``"rademacher"`` (default) or ``"gaussian"`` probes.
      batch_size: probes evaluated together; default as :func:`jaxprune.spectra.hessian_trace`
        (1 on CPU, blocks of up to 16 that fit an eighth of the memory on GPU/TPU).

    Returns:
      :class:`~jaxprune.spectra.hessian.TraceEstimate` with ``(p,)`` ``estimate`` and
      ``stderr`` and ``(num_probes, p)`` samples.

    Raises:
      ValueError / TypeError: as :func:`hessian_diagonal_scores`, and bad ``distribution`` or
        ``batch_size`` (as :func:`jaxprune.spectra.hessian.hessian_diagonal`).

    References:
      LeCun, Denker & Solla (1990); Bekas, Kokiopoulou & Saad (2007); Li et al. (2020), Def. 2.2.
    """
    p = checked_num_groups(params, group_ids)
    num_probes = check_positive_int(num_probes, "num_probes")
    check_key(key)
    estimate, stderr, samples, loss = call_compiled(
        _estimated_scores,
        (4, 5, 6, 7),
        loss_fn,
        params,
        group_ids,
        key,
        p,
        num_probes,
        distribution,
        batch_size,
    )
    check_finite_loss(loss)
    return TraceEstimate(estimate, stderr, num_probes, samples)


def _scalar_loss(loss_fn: LossFn, params: PyTree) -> jax.Array:
    """``loss_fn(params)``, checked to be a scalar."""
    loss = loss_fn(params)
    check_scalar_loss(loss)
    return loss


def _exact_scores(
    loss_fn: Partial, params: PyTree, group_ids: PyTree, p: int
) -> tuple[jax.Array, jax.Array]:
    loss = _scalar_loss(loss_fn, params)
    diagonal = _exact_hessian_diagonal(loss_fn, params)
    return group_sum(_obd_saliency(diagonal, params), group_ids, p), loss


def _estimated_scores(
    loss_fn: Partial,
    params: PyTree,
    group_ids: PyTree,
    key: jax.Array,
    p: int,
    num_probes: int,
    distribution: Distribution,
    batch_size: int | None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(estimate, stderr, samples, loss)`` of :func:`hessian_diagonal_score_estimate`."""
    loss = _scalar_loss(loss_fn, params)
    diagonal = hessian_diagonal(
        loss_fn,
        params,
        key,
        num_probes=num_probes,
        distribution=distribution,
        batch_size=batch_size,
    )
    samples = jax.vmap(lambda d: group_sum(_obd_saliency(d, params), group_ids, p))(
        diagonal.samples
    )
    estimate = TraceEstimate.from_samples(samples, num_probes)
    return estimate.estimate, estimate.stderr, estimate.samples, loss


def _obd_saliency(diagonal: PyTree, params: PyTree) -> PyTree:
    """Elementwise ``½ H_jj w_j²``."""
    return jax.tree_util.tree_map(lambda h, w: 0.5 * h * jnp.square(w), diagonal, params)


def _exact_hessian_diagonal(loss_fn: LossFn, params: PyTree) -> PyTree:
    """Exact ``diag(∇²loss)`` as a pytree like ``params``: ``H_jj = e_jᵀ H e_j``, one HVP each."""
    flat, unravel = ravel_pytree(params)

    def flat_loss(x: jax.Array) -> jax.Array:
        return loss_fn(unravel(x))

    def entry(j: jax.Array) -> jax.Array:
        basis = jnp.zeros_like(flat).at[j].set(1)
        return hvp(flat_loss, flat, basis)[j]

    indices = jnp.arange(flat.size)
    return unravel(jax.lax.map(entry, indices, batch_size=min(flat.size, _EXACT_BATCH)))
