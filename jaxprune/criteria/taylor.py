"""Gate-gradient importance (Michel et al. 2019), the first-order Taylor criterion of a group.

Each group gets a multiplicative gate ``ξ_g`` on its weights, ``w_[g] -> ξ_g w_[g]``; the score
is ``|∂L/∂ξ_g|`` at ``ξ = 1``.  By the chain rule ``∂L/∂ξ_g = sum_{j in g} w_j ∂L/∂w_j``, the
first-order Taylor estimate of the loss change when the group is removed.

References:
  Michel, Levy & Neubig (2019), "Are sixteen heads really better than one?", Section 4.1 (head
  importance; the Att-Score/Exp-Score baseline of Chen et al. (2023), Appendix E.3, reading PL-9 in
  docs/readings.md), and the authors' code
  (github.com/pmichel31415/are-16-heads-really-better-than-1: ``|∂L/∂ξ|`` summed over batches, then
  each layer's scores divided by their L2 norm).  Molchanov, Mallya, Tyree, Frosio & Kautz (2019),
  "Importance estimation for neural network pruning", Section 3 (the first-order Taylor criterion of
  a group of weights).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_callable, check_iterable
from jaxprune.criteria._reduce import (
    check_finite_loss,
    check_layout,
    checked_num_groups,
    loss_and_grad,
)
from jaxprune.masks.layout import GroupLayout
from jaxprune.typing import PyTree

__all__ = ["gate_gradient_scores"]


def gate_gradient_scores(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    group_ids: PyTree,
    *,
    batches: Iterable[Any] | None = None,
    normalize_by: GroupLayout | None = None,
) -> jax.Array:
    """Gate-gradient importance ``|∂L/∂ξ_g|`` at ``ξ = 1``, averaged over batches.

    The gates scale every weight of group ``g`` by ``ξ_g`` (ungrouped weights are not gated), so
    ``∂L/∂ξ_g = sum_{j in g} w_j ∂L/∂w_j``.  When a group is exactly a head's rows of the
    attention output projection, this gate is Michel et al.'s gate on the head's output.

    Averaging: with ``batches``, ``loss_fn(params, batch)`` is evaluated on each batch and the
    score is the mean over batches of ``|∂L_batch/∂ξ_g|`` (absolute value first, then the
    average), as in Michel et al.'s ``I_h = E_x |∂L(x)/∂ξ_h|``; batches of one example give their
    per-example expectation exactly.  Without ``batches``, ``loss_fn(params)`` is the loss on one
    batch and the score is the absolute value of its gate gradient (the average over the
    examples inside that loss is taken before the absolute value).

    Molchanov et al. (2019) rank by the square ``(sum_{j in g} w_j ∂L/∂w_j)²``; for one batch
    the ranking is the same.

    Sign convention: scores are >= 0 and higher means more important (removing the group
    changes the loss more, to first order); pruning keeps the top scores.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch) -> scalar`` when
        ``batches`` is given.
      params: parameter pytree (finite values).
      group_ids: group-id pytree with ``p`` groups; weights with id ``-1`` are not gated.
      batches: optional iterable of batches (consumed once) to average over.
      normalize_by: optional :class:`~jaxprune.masks.layout.GroupLayout` of the ``p`` groups;
        if given, each layer's scores are divided by their L2 norm over the layer (Michel et
        al. 2019 and their code); a layer whose scores are all zero stays zero.

    Returns:
      ``(p,)`` scores in the dtype of ``params``.

    Raises:
      ValueError: ``batches`` is empty, ``normalize_by`` has a different number of groups,
        ``params`` hold NaN/inf, ``group_ids`` does not match ``params``, or the loss is not a
        scalar or (checked when concrete) NaN or inf.
      TypeError: ``normalize_by`` is not a ``GroupLayout``, ``loss_fn`` is not callable, or
        ``batches`` is not an iterable.

    References:
      Michel, Levy & Neubig (2019), Section 4.1; Molchanov et al. (2019), Section 3.
    """
    check_callable(loss_fn, "loss_fn")
    p = checked_num_groups(params, group_ids)
    if normalize_by is not None:
        check_layout(normalize_by, p, "normalize_by")
    if batches is not None:
        check_iterable(batches, "batches", "an iterable of batches or None")
    id_leaves = [np.asarray(ids, np.int32) for ids in jax.tree_util.tree_leaves(group_ids)]
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))

    @jax.jit
    def abs_gate_gradient(params: PyTree, *batch: Any) -> tuple[jax.Array, jax.Array]:
        def gated_loss(gates: jax.Array) -> jax.Array:
            return loss_fn(_gate(params, id_leaves, gates), *batch)

        loss, grads = loss_and_grad(gated_loss, jnp.ones(p, dtype))
        return jnp.abs(grads), loss

    if batches is None:
        scores, loss = abs_gate_gradient(params)
        check_finite_loss(loss)
    else:
        total, count = jnp.zeros(p, dtype), 0
        for batch in batches:
            scores, loss = abs_gate_gradient(params, batch)
            check_finite_loss(loss, where=f"params on batch {count}")
            total, count = total + scores, count + 1
        if count == 0:
            raise ValueError("batches must contain at least one batch, got an empty iterable")
        scores = total / count
    if normalize_by is None:
        return scores
    return _normalize_by_layer(scores, normalize_by)


def _gate(params: PyTree, id_leaves: list[np.ndarray], gates: jax.Array) -> PyTree:
    """``params`` with every weight of group ``g`` multiplied by ``gates[g]``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    scaled = [
        leaf * jnp.where(ids >= 0, gates[np.maximum(ids, 0)], jnp.ones((), gates.dtype))
        for leaf, ids in zip(leaves, id_leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, scaled)


def _normalize_by_layer(scores: jax.Array, layout: GroupLayout) -> jax.Array:
    """Each layer's scores divided by their L2 norm over the layer (all-zero layers unchanged)."""
    layer = np.asarray(layout.layer_of_group)
    norms = jnp.sqrt(
        jax.ops.segment_sum(jnp.square(scores), layer, num_segments=layout.num_layers)
    )[layer]
    return scores / jnp.where(norms > 0, norms, 1)
