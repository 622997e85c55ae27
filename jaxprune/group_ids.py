"""The group-id pytree: which structured group (neuron, filter, head, expert) each weight is in.

A group-id pytree has the structure of ``params``.  Each leaf is an int32 array broadcastable to
the shape of the matching parameter leaf; value ``g`` in ``[0, p)`` puts the weight in group
``g`` and ``-1`` leaves it ungrouped.  Group ids are static structure: they are concrete
(NumPy) arrays, never traced.  Constructors (neurons, filters, heads, experts) live in
:mod:`jaxprune.masks.groups`.

References:
  Chen et al. (2023), Section 3.2.1: the Khatri–Rao grouping ``m * w = [m_1 w_[1], ...,
  m_p w_[p]]``.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxprune.typing import PyTree

__all__ = [
    "group_sizes",
    "leaf_group_ids",
    "num_groups",
    "validate_group_ids",
]


def _path_str(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def validate_group_ids(params: PyTree, group_ids: PyTree) -> int:
    """Check ``group_ids`` against ``params`` and return the number of groups ``p``.

    Raises:
      ValueError: the structures differ (naming the first differing path), a leaf does not
        broadcast to its parameter's shape, an id is below -1, or a group in ``[0, p)`` is empty.
      TypeError: a leaf is not an integer array, or is a traced value.
    """
    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    try:
        id_leaves = jax.tree_util.tree_flatten_with_path(group_ids)[0]
    except Exception as error:  # pragma: no cover - flattening arbitrary objects
        raise TypeError(f"group_ids: could not flatten {type(group_ids).__name__}") from error
    param_paths = [_path_str(p) for p, _ in param_leaves]
    id_paths = [_path_str(p) for p, _ in id_leaves]
    if param_paths != id_paths:
        missing = sorted(set(param_paths) - set(id_paths))
        extra = sorted(set(id_paths) - set(param_paths))
        detail = []
        if missing:
            detail.append(f"missing for params leaves {missing[:3]}")
        if extra:
            detail.append(f"unexpected leaves {extra[:3]}")
        if not detail:
            detail.append("same leaves in a different order")
        raise ValueError(
            "group_ids must have the same pytree structure as params: " + "; ".join(detail)
        )
    highest = -1
    present: set[int] = set()
    for (path, param), (_, ids) in zip(param_leaves, id_leaves):
        name = _path_str(path)
        if isinstance(ids, jax.core.Tracer):
            raise TypeError(f"group_ids{name}: group ids must be concrete arrays, got a tracer")
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"group_ids{name}: expected an integer array, got dtype {ids.dtype}")
        shape = np.shape(param)
        try:
            np.broadcast_shapes(ids.shape, shape)
            if np.broadcast_shapes(ids.shape, shape) != tuple(shape):
                raise ValueError
        except ValueError:
            raise ValueError(
                f"group_ids{name}: shape {ids.shape} does not broadcast to the parameter's "
                f"shape {tuple(shape)}"
            ) from None
        if ids.size and ids.min() < -1:
            raise ValueError(
                f"group_ids{name}: ids must be -1 (ungrouped) or >= 0, got {int(ids.min())}"
            )
        if ids.size:
            highest = max(highest, int(ids.max()))
            present.update(np.unique(ids[ids >= 0]).tolist())
    p = highest + 1
    if p == 0:
        raise ValueError("group_ids: every weight is ungrouped (-1); expected at least one group")
    empty = sorted(set(range(p)) - present)
    if empty:
        raise ValueError(
            f"group_ids: groups {empty[:10]} of [0, {p}) contain no weight; number groups "
            "contiguously from 0"
        )
    return p


def num_groups(group_ids: PyTree) -> int:
    """Number of groups ``p`` (one more than the largest id).

    Raises:
      TypeError: a leaf that is not an integer array (a float or bool mask passed as ids).
    """
    leaves = []
    for path, ids in jax.tree_util.tree_flatten_with_path(group_ids)[0]:
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(
                f"group_ids{_path_str(path)}: expected an integer array, got dtype {ids.dtype}"
            )
        leaves.append(ids)
    return 1 + max((int(g.max()) for g in leaves if g.size), default=-1)


def leaf_group_ids(params: PyTree, group_ids: PyTree) -> list[np.ndarray]:
    """Each leaf's group ids broadcast to the parameter's full shape, in flattening order.

    Raises:
      ValueError: ``group_ids`` with another number of leaves than ``params``, or a leaf that
        does not broadcast to its parameter's shape (see :func:`validate_group_ids`).
    """
    param_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    id_leaves = jax.tree_util.tree_leaves(group_ids)
    if len(param_leaves) != len(id_leaves):
        raise ValueError(
            f"group_ids: expected the pytree structure of params ({len(param_leaves)} leaves), "
            f"got {len(id_leaves)} leaves"
        )
    out = []
    for (path, param), ids in zip(param_leaves, id_leaves):
        try:
            out.append(np.broadcast_to(np.asarray(ids, np.int32), np.shape(param)))
        except ValueError:
            raise ValueError(
                f"group_ids{_path_str(path)}: shape {np.shape(ids)} does not broadcast to the "
                f"parameter's shape {np.shape(param)}"
            ) from None
    return out


def group_sizes(params: PyTree, group_ids: PyTree) -> np.ndarray:
    """Number of parameters in each group, shape ``(p,)``."""
    p = num_groups(group_ids)
    sizes = np.zeros(p, np.int64)
    for ids in leaf_group_ids(params, group_ids):
        kept = ids[ids >= 0]
        sizes += np.bincount(kept.ravel(), minlength=p)
    return sizes
