"""Magnitude criterion: the L1 or L2 norm of each group's weights.

References:
  Han, Pool, Tran & Dally (2015), "Learning both weights and connections for efficient neural
  networks" (magnitude pruning; the criterion of iterative magnitude pruning / LTH, Frankle &
  Carbin 2019).  Li, Kadav, Durdanovic, Samet & Graf (2017), "Pruning filters for efficient
  ConvNets" (the L1 norm of each filter).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from jaxprune._validation import check_choice
from jaxprune.criteria._reduce import checked_num_groups, group_sum
from jaxprune.typing import PyTree

__all__ = ["NORMS", "magnitude_scores"]

NORMS: tuple[str, ...] = ("l1", "l2")


def magnitude_scores(
    params: PyTree, group_ids: PyTree, *, norm: Literal["l1", "l2"] = "l1"
) -> jax.Array:
    """Norm of each group's weights: ``sum_{j in g} |w_j|`` (L1) or ``sqrt(sum_{j in g} w_j²)``.

    Sign convention: scores are >= 0 and higher means more important; pruning keeps the groups
    with the largest norms.

    Args:
      params: parameter pytree (finite values).
      group_ids: group-id pytree with ``p`` groups (see :mod:`jaxprune.group_ids`); weights with
        id ``-1`` are ignored.
      norm: ``"l1"`` (Li et al. 2017 for filters) or ``"l2"``.

    Returns:
      ``(p,)`` scores in the dtype of ``params``.

    Raises:
      ValueError: ``norm`` is not one of :data:`NORMS`, ``params`` hold NaN/inf, or
        ``group_ids`` does not match ``params``.
      TypeError: ``norm`` is not a str.

    References:
      Han et al. (2015); Li et al. (2017).
    """
    check_choice(norm, NORMS, "norm")
    p = checked_num_groups(params, group_ids)
    return _magnitude_scores(params, group_ids, p, norm)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _magnitude_scores(params: PyTree, group_ids: PyTree, p: int, norm: str) -> jax.Array:
    if norm == "l1":
        return group_sum(jax.tree_util.tree_map(jnp.abs, params), group_ids, p)
    return jnp.sqrt(group_sum(jax.tree_util.tree_map(jnp.square, params), group_ids, p))
