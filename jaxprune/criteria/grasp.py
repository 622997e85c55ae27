"""GraSP (gradient signal preservation) applied structurally, with the sign flipped so that
higher scores mean more important.

References:
  Wang, Zhang & Grosse (2020), "Picking winning tickets before training by preserving gradient
  flow", eqs. 7-8 and Algorithm 1; the authors' code (github.com/alecwangcq/GraSP,
  ``pruner/GraSP.py``).  Chen et al. (2023), Appendix E.3, and reading PL-9 (docs/readings.md): GraSP
  applied structurally, the scores summed per head/expert.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from jaxprune.criteria._reduce import (
    call_compiled,
    check_finite_loss,
    checked_num_groups,
    group_sum,
    loss_and_grad,
)
from jaxprune.spectra.hessian import hvp
from jaxprune.typing import PyTree

__all__ = ["grasp_scores"]


def grasp_scores(
    loss_fn: Callable[[PyTree], jax.Array], params: PyTree, group_ids: PyTree
) -> jax.Array:
    """Negated structured GraSP score: ``sum_{j in g} w_j (H g)_j = -sum_{j in g} S(-w)_j``.

    GraSP scores each weight by ``S(-w) = -w ⊙ H g`` (eq. 8), where ``g = ∇L`` and ``H = ∇²L``:
    the first-order change of the gradient-flow term ``ΔL = -gᵀg`` when ``w`` is removed
    (``δ = -w`` in ``S(δ) = 2 δᵀ H g``, eq. 7, dropping the factor 2).  GraSP removes the
    weights with the **highest** ``S(-w)`` (Algorithm 1 and the authors' code, which keeps
    ``S <= τ`` for ``τ`` the score at the pruning quantile from the top).  This function returns
    ``-S`` summed per group, so that, as for every criterion here, **higher = more important**
    and keeping the top scores is GraSP's rule.  Scores are signed.

    ``H g`` is one Hessian-vector product by forward-over-reverse differentiation
    (:func:`jaxprune.spectra.hessian.hvp`), with ``g`` and ``H`` both of ``loss_fn`` (GraSP's
    temperature on the logits, ``T = 200`` in the authors' code, belongs in ``loss_fn``).
    GraSP's normalisation by ``|sum S|`` is a positive constant and is left out.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` (the loss on the scoring batch).
      params: parameter pytree (finite values).
      group_ids: group-id pytree with ``p`` groups; weights with id ``-1`` are ignored.

    Returns:
      ``(p,)`` scores in the dtype of ``params``.

    Raises:
      ValueError: ``params`` hold NaN/inf, ``group_ids`` does not match ``params``, the loss
        is not a scalar, or (checked when concrete) it is NaN or inf at ``params``.
      TypeError: ``loss_fn`` is not callable.

    References:
      Wang, Zhang & Grosse (2020), eqs. 7-8, Algorithm 1; Chen et al. (2023), Appendix E.3; reading
      PL-9 (docs/readings.md).
    """
    p = checked_num_groups(params, group_ids)
    scores, loss = call_compiled(_grasp_scores, (3,), loss_fn, params, group_ids, p)
    check_finite_loss(loss)
    return scores


def _grasp_scores(
    loss_fn: Partial, params: PyTree, group_ids: PyTree, p: int
) -> tuple[jax.Array, jax.Array]:
    loss, grads = loss_and_grad(loss_fn, params)
    hessian_grad = hvp(loss_fn, params, grads)
    scores = group_sum(jax.tree_util.tree_map(jnp.multiply, params, hessian_grad), group_ids, p)
    return scores, loss
