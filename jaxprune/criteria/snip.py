"""SNIP (connection sensitivity) applied structurally: ``sum_{j in g} |g_j w_j|`` per group.

References:
  Lee, Ajanthan & Torr (2019), "SNIP: Single-shot network pruning based on connection
  sensitivity", eq. 6.  Chen et al. (2023), Appendix E.3, and reading PL-9
  (docs/readings.md): SNIP applied structurally, the scores summed per head/expert.
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
from jaxprune.typing import PyTree

__all__ = ["snip_scores"]


def snip_scores(
    loss_fn: Callable[[PyTree], jax.Array], params: PyTree, group_ids: PyTree
) -> jax.Array:
    """Structured SNIP: ``s_g = sum_{j in g} |∂L/∂w_j · w_j|``.

    ``∂L/∂c_j = w_j ∂L/∂w_j`` is the derivative of the loss in a multiplicative mask ``c`` at
    ``c = 1``; SNIP ranks weights by its magnitude.  SNIP's normalisation by
    ``sum_k |g_k w_k|`` is a positive constant and is left out (rankings are unchanged).

    Sign convention: scores are >= 0 and higher means more important (pruning keeps the top
    scores, as in SNIP).

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
      Lee, Ajanthan & Torr (2019), eq. 6; Chen et al. (2023), Appendix E.3; reading PL-9
      (docs/readings.md).
    """
    p = checked_num_groups(params, group_ids)
    scores, loss = call_compiled(_snip_scores, (3,), loss_fn, params, group_ids, p)
    check_finite_loss(loss)
    return scores


def _snip_scores(
    loss_fn: Partial, params: PyTree, group_ids: PyTree, p: int
) -> tuple[jax.Array, jax.Array]:
    loss, grads = loss_and_grad(loss_fn, params)
    sensitivity = jax.tree_util.tree_map(lambda g, w: jnp.abs(g * w), grads, params)
    return group_sum(sensitivity, group_ids, p), loss
