"""FPGM (filter pruning via geometric median): each group's summed distance to its layer's groups.

References:
  He, Liu, Wang, Hu & Yang (2019), "Filter pruning via geometric median for deep convolutional
  neural networks acceleration", Section 3.4 (the filters nearest the geometric median of a
  layer, those minimising the summed Euclidean distance to the layer's other filters, are the
  most replaceable and are pruned).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.criteria._reduce import check_layout, checked_num_groups
from jaxprune.group_ids import leaf_group_ids
from jaxprune.masks.layout import GroupLayout
from jaxprune.typing import PyTree

__all__ = ["fpgm_scores"]


def fpgm_scores(
    params: PyTree, group_ids: PyTree, *, layout: GroupLayout | None = None
) -> jax.Array:
    """FPGM score of each group: ``s_g = sum_{h in layer(g)} ‖w_[g] − w_[h]‖₂``.

    A group's vector is all of its weights (every leaf of its layer that holds it, e.g. a
    filter's kernel slice and its bias entry), flattened in row-major order leaf by leaf; the
    groups of one layer must have the same number of weights in each leaf, so that their
    vectors correspond entry by entry.  A layer of a single group scores 0.

    Layers: the layers of ``layout`` if given; otherwise the groups that share a parameter leaf,
    joined transitively (a Dense/Conv layer's units, or the heads of an attention block whose
    query, value and output kernels all hold every head).

    Sign convention: higher means more important.  FPGM prunes the groups nearest the layer's
    geometric median (the smallest summed distance, the most replaceable by the others), so
    pruning keeps the top scores.  Scores are >= 0.

    Args:
      params: parameter pytree (finite values).
      group_ids: group-id pytree with ``p`` groups; weights with id ``-1`` are ignored.
      layout: optional :class:`~jaxprune.masks.layout.GroupLayout` of the ``p`` groups.

    Returns:
      ``(p,)`` scores in the dtype of ``params``.

    Raises:
      ValueError: groups of one layer differ in their number of weights in some leaf (the
        message names the layer and the leaf); ``layout`` has a different number of groups;
        ``params`` hold NaN/inf; ``group_ids`` does not match ``params``.
      TypeError: ``layout`` is not a ``GroupLayout``.

    References:
      He et al. (2019), Section 3.4.
    """
    p = checked_num_groups(params, group_ids)
    paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    id_leaves = leaf_group_ids(params, group_ids)
    if layout is None:
        layers = _shared_leaf_layers(id_leaves, p)
        labels = [f"layer holding groups {_preview(groups)}" for groups in layers]
    else:
        check_layout(layout, p)
        layers = [layout.groups_in_layer(layer) for layer in range(layout.num_layers)]
        labels = [f"layer {name!r}" for name in layout.layer_names]
    paths = [path for path, _ in paths_leaves]
    plan = _gather_plan(paths, id_leaves, layers, labels, p)

    def scores(leaves: list[jax.Array]) -> jax.Array:
        out = jnp.zeros(p, jnp.result_type(*leaves))
        for groups, gathers in plan:
            vectors = jnp.concatenate([jnp.ravel(leaves[i])[index] for i, index in gathers], axis=1)
            distance_sums = jax.lax.map(
                lambda v: jnp.sum(jnp.linalg.norm(vectors - v, axis=1)), vectors
            )
            out = out.at[groups].set(distance_sums)
        return out

    return jax.jit(scores)([leaf for _, leaf in paths_leaves])


def _gather_plan(
    paths: list[Any],
    id_leaves: list[np.ndarray],
    layers: list[np.ndarray],
    labels: list[str],
    p: int,
) -> list[tuple[np.ndarray, list[tuple[int, np.ndarray]]]]:
    """For each non-empty layer, its groups and, per leaf holding them, the ``(n_groups, k)``
    flat indices of each group's ``k`` weights in that leaf (row-major order)."""
    positions = [_group_positions(ids, p) for ids in id_leaves]
    plan = []
    for groups, label in zip(layers, labels, strict=True):
        if groups.size == 0:
            continue
        gathers = []
        for i, (path, (order, starts, counts)) in enumerate(zip(paths, positions, strict=True)):
            sizes = counts[groups]
            if not sizes.any():
                continue
            if (sizes != sizes[0]).any():
                raise ValueError(
                    f"fpgm_scores: the groups of the {label} hold different numbers of weights "
                    f"in params{jax.tree_util.keystr(path)} (between {int(sizes.min())} and "
                    f"{int(sizes.max())}); FPGM compares groups of equal shape"
                )
            gathers.append((i, order[starts[groups][:, None] + np.arange(sizes[0])[None, :]]))
        plan.append((groups, gathers))
    return plan


def _preview(groups: np.ndarray) -> str:
    """A short list of group ids for messages."""
    shown = ", ".join(str(g) for g in groups[:4])
    return f"[{shown}{', ...' if groups.size > 4 else ''}]"


def _group_positions(ids: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each group's weights lie in a leaf's flattened (row-major) entries.

    Returns ``(order, starts, counts)``: group ``g``'s flat positions, ascending, are
    ``order[starts[g] : starts[g] + counts[g]]``.
    """
    flat = np.ravel(ids)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat[flat >= 0], minlength=p)
    ungrouped = int(np.count_nonzero(flat < 0))
    starts = ungrouped + np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def _shared_leaf_layers(id_leaves: list[np.ndarray], p: int) -> list[np.ndarray]:
    """Groups joined when they share a leaf (union-find), each layer's ids ascending."""
    parent = np.arange(p)

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for ids in id_leaves:
        present = np.unique(ids[ids >= 0])
        for g in present[1:]:
            a, b = root(int(present[0])), root(int(g))
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(g) for g in range(p)])
    return [np.flatnonzero(roots == r) for r in np.unique(roots)]
