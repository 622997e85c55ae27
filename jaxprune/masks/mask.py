"""Group masks: the Khatri–Rao product ``m * w``, TopK selection and sparsity accounting.

A group mask is a vector ``m`` of length ``p`` (one entry per group of a group-id pytree, see
:mod:`jaxprune.group_ids`): ``{0, 1}`` for pruning, ``[0, 1]`` for soft gates.  Weights of group
``g`` are multiplied by ``m[g]``; ungrouped weights (id ``-1``) are left alone.

References:
  Chen et al. (2023), Section 3.2.1: ``m * w = [m_1 w_[1], ..., m_p w_[p]]`` and the TopK mask.
  Chen et al. (2023), Appendix E.3, and reading PL-9 (docs/readings.md): every method keeps at
  least one head/expert per layer.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_int, check_positive_int, check_ratio, is_traced
from jaxprune.group_ids import group_sizes, leaf_group_ids, validate_group_ids
from jaxprune.masks.layout import GroupLayout
from jaxprune.typing import PyTree

__all__ = [
    "SparsityReport",
    "apply_group_mask",
    "group_mask_from_param_mask",
    "param_mask",
    "ratio_to_k",
    "sparsity",
    "topk_mask",
    "topk_mask_jax",
]


# ---------------------------------------------------------------------------------------------
# m * w


def _mask_vector(mask: Any, p: int) -> jax.Array:
    mask = jnp.asarray(mask)
    if not (
        jnp.issubdtype(mask.dtype, jnp.floating)
        or jnp.issubdtype(mask.dtype, jnp.integer)
        or mask.dtype == jnp.bool_
    ):
        raise TypeError(f"mask: expected a real or boolean array, got dtype {mask.dtype}")
    if mask.shape != (p,):
        raise ValueError(f"mask: expected shape ({p},), one entry per group, got {mask.shape}")
    if not is_traced(mask) and jnp.issubdtype(mask.dtype, jnp.inexact):
        bad = np.flatnonzero(~np.isfinite(np.asarray(mask)))
        if bad.size:
            raise ValueError(
                f"mask: non-finite entries (NaN or inf) at groups {bad[:10].tolist()}; "
                "expected finite values"
            )
    return mask


def _leaf_multipliers(params: PyTree, group_ids: PyTree, mask: Any) -> list[jax.Array | None]:
    """Per leaf, ``mask[ids]`` in the ids' (broadcastable) shape, or None for ungrouped leaves."""
    p = validate_group_ids(params, group_ids)
    mask = _mask_vector(mask, p)
    multipliers: list[jax.Array | None] = []
    extended: dict[Any, jax.Array] = {}  # mask in each leaf dtype, with a trailing 1 for id -1
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, leaf), ids in zip(paths, jax.tree_util.tree_leaves(group_ids)):
        ids = np.asarray(ids)
        if not (ids >= 0).any():
            multipliers.append(None)
            continue
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"params{jax.tree_util.keystr(path)}: grouped weights must be floating point, "
                f"got dtype {dtype}"
            )
        if dtype not in extended:
            extended[dtype] = jnp.concatenate([mask.astype(dtype), jnp.ones((1,), dtype)])
        multipliers.append(extended[dtype][np.where(ids < 0, p, ids)])
    return multipliers


def apply_group_mask(params: PyTree, group_ids: PyTree, mask: Any) -> PyTree:
    """The Khatri–Rao product ``m * w``: every weight of group ``g`` multiplied by ``mask[g]``.

    Each leaf is multiplied by ``mask[ids]`` gathered in the (compact, broadcastable) shape of
    its group ids, so the cost is one small gather and one broadcast multiply per leaf.  Leaves
    without grouped weights are returned unchanged.  Works for binary masks and soft gates, is
    differentiable in ``mask`` and jit-able (``group_ids`` must be concrete; ``mask`` may be
    traced).  The mask is cast to each leaf's dtype.

    Args:
      params: parameter pytree.
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      mask: ``(p,)`` real or boolean array with finite entries.  NaN or inf is a
        ``ValueError`` naming the groups when the mask is concrete; a traced mask (inside
        ``jit``) is not inspected and a NaN entry then reaches the weights of its group.

    Returns:
      A pytree like ``params``.

    References:
      Chen et al. (2023), Section 3.2.1, the product ``m * w = [m_1 w_[1], ..., m_p w_[p]]``.
    """
    multipliers = _leaf_multipliers(params, group_ids, mask)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    masked = [w if m is None else w * m for w, m in zip(leaves, multipliers)]
    return jax.tree_util.tree_unflatten(treedef, masked)


def param_mask(params: PyTree, group_ids: PyTree, mask: Any) -> PyTree:
    """Per-weight multipliers of ``m * w``: ``mask[g]`` for weights of group ``g``, 1 elsewhere.

    Args:
      params: parameter pytree (its shapes and dtypes are used).
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      mask: ``(p,)`` real or boolean array with finite entries (checked when concrete, as in
        :func:`apply_group_mask`).

    Returns:
      A pytree like ``params`` whose leaves have the full shape and dtype of each parameter, so
      that ``apply_group_mask(params, group_ids, mask) == params * param_mask(...)`` leafwise.

    References:
      Chen et al. (2023), Section 3.2.1 (the mask ``m`` expanded to every weight).
    """
    multipliers = _leaf_multipliers(params, group_ids, mask)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    full = [
        jnp.ones(jnp.shape(w), jnp.result_type(w))
        if m is None
        else jnp.broadcast_to(m, jnp.shape(w))
        for w, m in zip(leaves, multipliers)
    ]
    return jax.tree_util.tree_unflatten(treedef, full)


def group_mask_from_param_mask(params: PyTree, group_ids: PyTree, pmask: PyTree) -> jax.Array:
    """Group mask of a per-weight mask: group ``g`` is kept iff any of its weights is nonzero.

    Per-weight masks that are not constant on groups (e.g. after unstructured pruning) map to
    the smallest group mask that keeps every surviving weight.  Entries of ungrouped weights are
    ignored.  Jit-able in ``pmask``.

    Args:
      params: parameter pytree (its shapes are used).
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      pmask: pytree like ``params`` whose leaves broadcast to each parameter's shape.

    Returns:
      ``(p,)`` float32 array in ``{0, 1}``.

    References:
      Chen et al. (2023), Section 3.2.1 (a group is removed when all of ``w_[g]`` is).
    """
    p = validate_group_ids(params, group_ids)
    param_leaves, treedef = jax.tree_util.tree_flatten(params)
    pmask_leaves, pmask_def = jax.tree_util.tree_flatten(pmask)
    if pmask_def != treedef:
        raise ValueError(
            f"pmask: expected the pytree structure of params {treedef}, got {pmask_def}"
        )
    kept = jnp.zeros((p + 1,), jnp.float32)
    for w, ids, m in zip(param_leaves, leaf_group_ids(params, group_ids), pmask_leaves):
        shape = jnp.shape(w)
        try:
            m = jnp.broadcast_to(m, shape)
        except ValueError:
            raise ValueError(
                f"pmask: a leaf of shape {jnp.shape(m)} does not broadcast to the parameter's "
                f"shape {shape}"
            ) from None
        if not (ids >= 0).any():
            continue
        segments = np.where(ids < 0, p, ids).reshape(-1)
        nonzero = (m != 0).reshape(-1).astype(jnp.float32)
        kept = jnp.maximum(kept, jax.ops.segment_max(nonzero, segments, num_segments=p + 1))
    return kept[:p]


# ---------------------------------------------------------------------------------------------
# How many groups to keep, and which.


def ratio_to_k(num_groups: int, ratio: float) -> int:
    """Number of groups kept when pruning the fraction ``ratio`` of ``num_groups``.

    ``k = (1 - ratio) * num_groups`` rounded to the nearest integer, ties rounded up (towards
    keeping more).  The ratio is read as the shortest decimal that represents it (``0.3`` is
    ``3/10``, not the float just below), so ``ratio_to_k(5, 0.3) == 4`` (3.5 rounds up) exactly.

    Args:
      num_groups: ``p >= 1``.
      ratio: pruning ratio ``r`` with ``0 <= r < 1``.

    Returns:
      ``k`` with ``1 <= k <= p``.

    Raises:
      ValueError: ``r`` outside ``[0, 1)`` or not finite, or the rounding leaves no group
        (``(1 - r) p < 1/2``): pruning every group is never done implicitly.

    References:
      Chen et al. (2023), Section 3.2.1 (TopK keeps ``k`` of ``p`` groups).
    """
    num_groups = check_positive_int(num_groups, "num_groups")
    ratio = check_ratio(ratio, "ratio", allow_zero=True)
    kept = (1 - Fraction(repr(float(ratio)))) * int(num_groups)
    k = int(kept + Fraction(1, 2))  # floor(x + 1/2): nearest, ties up (x >= 0)
    if k < 1:
        raise ValueError(
            f"ratio: pruning {ratio} of {num_groups} groups keeps {float(kept)}, which rounds to "
            "0 groups; expected a ratio that keeps at least one group"
        )
    return k


def _scores_vector(scores: Any) -> np.ndarray:
    if isinstance(scores, jax.core.Tracer):
        raise TypeError("scores: topk_mask needs concrete scores; inside jit use topk_mask_jax")
    scores = np.asarray(scores)
    if not (
        jnp.issubdtype(scores.dtype, jnp.floating) or jnp.issubdtype(scores.dtype, jnp.integer)
    ):
        raise TypeError(f"scores: expected a real array, got dtype {scores.dtype}")
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores: expected shape (p,) with p >= 1, got {scores.shape}")
    scores = scores.astype(np.float64)
    nan = np.flatnonzero(np.isnan(scores))
    if nan.size:
        raise ValueError(f"scores: NaN at groups {nan[:10].tolist()}; expected real scores")
    return scores


def _check_k(k: Any, p: int) -> int:
    """``k`` as an int in ``[0, p]``: a number of groups to keep out of ``p``."""
    k = check_int(k, "k", minimum=0)
    if k > p:
        raise ValueError(f"k: expected an int in [0, {p}] (the number of groups), got {k}")
    return k


def _layer_counts(layout: GroupLayout | None, p: int) -> tuple[np.ndarray, np.ndarray]:
    """``layer_of_group`` and the number of groups per layer, validated against ``p``."""
    if not isinstance(layout, GroupLayout):
        raise TypeError(f"layout: expected a GroupLayout, got {layout!r}")
    layers = np.asarray(layout.layer_of_group)
    if layers.shape != (p,):
        raise ValueError(
            f"layout: has {layers.shape[0] if layers.ndim == 1 else layers.shape} groups, "
            f"expected {p} (the number of groups)"
        )
    if layers.size and (layers.min() < 0 or layers.max() >= layout.num_layers):
        raise ValueError(
            f"layout: layer_of_group must lie in [0, {layout.num_layers}), got values in "
            f"[{layers.min()}, {layers.max()}]"
        )
    return layers, np.bincount(layers, minlength=layout.num_layers)


def _apportion(budget: int, capacity: np.ndarray) -> np.ndarray:
    """Largest-remainder split of ``budget`` in proportion to ``capacity`` (ties: lower index)."""
    total = int(capacity.sum())
    if total == 0:
        return np.zeros_like(capacity)
    shares = budget * capacity
    quota, remainder = shares // total, shares % total
    extra = budget - int(quota.sum())
    order = np.argsort(-remainder, kind="stable")
    quota[order[:extra]] += 1
    return quota


def topk_mask(
    scores: Any,
    k: int,
    *,
    layout: GroupLayout | None = None,
    per_layer: bool = False,
    min_per_layer: int = 0,
) -> np.ndarray:
    """Mask keeping exactly ``k`` groups with the highest scores.

    Groups are ranked by score, highest first; equal scores rank the lower group index first.

    * Global (default): the ``k`` best-ranked groups.
    * ``min_per_layer = m > 0`` (global): first the ``m`` best groups of every layer of
      ``layout`` are kept, then the best-ranked of the rest until ``k`` are kept.  ``m = 1`` is
      the paper's "keep at least one head/expert per layer".
    * ``per_layer=True``: every layer keeps the same fraction ``k / p`` of its ``n_l`` groups,
      its ``k_l`` best.  The quotas ``k_l`` are the largest-remainder (Hamilton) rounding of
      ``k n_l / p``: floors first, then one more for the layers with the largest fractional
      parts (ties: lower layer index), so ``sum k_l == k`` and ``|k_l - k n_l / p| < 1``.  With
      ``min_per_layer = m`` every layer first gets ``m`` and the remaining ``k - L m`` are
      apportioned the same way in proportion to ``n_l - m``.

    Args:
      scores: ``(p,)`` concrete real scores (NumPy or a concrete jax array); NaN is an error,
        ``±inf`` are allowed.  Compared in float64.
      k: number of groups to keep, ``0 <= k <= p``.
      layout: the groups' :class:`GroupLayout`; required for ``per_layer`` or
        ``min_per_layer > 0``.
      per_layer: keep the same fraction in every layer instead of the global best.
      min_per_layer: groups to keep in every layer, ``>= 0``.

    Returns:
      ``(p,)`` float32 NumPy array in ``{0, 1}`` with exactly ``k`` ones.

    Raises:
      ValueError: NaN scores; ``k`` out of range; a layout of the wrong size; ``k`` smaller than
        ``min_per_layer`` times the number of layers, or a layer with fewer than
        ``min_per_layer`` groups.
      TypeError: traced scores (use :func:`topk_mask_jax`), or arguments of the wrong type.

    References:
      Chen et al. (2023), Section 3.2.1 (TopK mask), Appendix E.3 (at least one head/expert per
      layer).
    """
    scores = _scores_vector(scores)
    p = scores.size
    k = _check_k(k, p)
    min_per_layer = check_int(min_per_layer, "min_per_layer", minimum=0)
    order = np.argsort(-scores, kind="stable")
    kept = np.zeros(p, bool)
    if not per_layer and min_per_layer == 0:
        kept[order[:k]] = True
        return kept.astype(np.float32)
    layers, counts = _layered_counts(layout, p, k, min_per_layer)
    # Rank of every group within its layer (0 = best of the layer).
    by_layer = order[np.argsort(layers[order], kind="stable")]
    rank = np.empty(p, np.int64)
    rank[by_layer] = np.arange(p) - np.repeat(np.cumsum(counts) - counts, counts)
    if per_layer:
        kept = rank < _layer_quotas(counts, k, min_per_layer)[layers]
    else:
        kept = rank < min_per_layer
        rest = order[~kept[order]]
        kept[rest[: k - int(kept.sum())]] = True
    return kept.astype(np.float32)


def _layered_counts(
    layout: GroupLayout | None, p: int, k: int, min_per_layer: int
) -> tuple[np.ndarray, np.ndarray]:
    """``layer_of_group`` and the groups per layer of a per-layer or protected TopK of ``k``
    out of ``p``, checked against ``min_per_layer``."""
    if layout is None:
        raise ValueError("layout: required when per_layer=True or min_per_layer > 0, got None")
    layers, counts = _layer_counts(layout, p)
    small = np.flatnonzero(counts < min_per_layer)
    if small.size:
        raise ValueError(
            f"min_per_layer: {min_per_layer} exceeds the {counts[small[0]]} groups of layer "
            f"{layout.layer_names[small[0]]!r}"
        )
    if k < min_per_layer * layout.num_layers:
        raise ValueError(
            f"k: {k} is less than min_per_layer ({min_per_layer}) × number of layers "
            f"({layout.num_layers}) = {min_per_layer * layout.num_layers}"
        )
    return layers, counts


def _layer_quotas(counts: np.ndarray, k: int, min_per_layer: int) -> np.ndarray:
    """``(L,)`` groups kept per layer by a per-layer TopK of ``k``: ``min_per_layer`` each,
    the rest apportioned in proportion to ``counts - min_per_layer``."""
    budget = k - min_per_layer * len(counts)
    return min_per_layer + _apportion(budget, counts - min_per_layer)


def topk_mask_jax(
    scores: jax.Array,
    k: int,
    *,
    layout: GroupLayout | None = None,
    per_layer: bool = False,
    min_per_layer: int = 0,
) -> jax.Array:
    """Jit-able :func:`topk_mask`: exactly ``k`` ones at the highest scores.

    The same rules and ranking as :func:`topk_mask` (global, ``min_per_layer`` protected per
    layer, or ``per_layer`` quotas; highest score first, equal scores by lower group index,
    ``-0.0`` equal to ``0.0``), so it returns the same mask for the same scores.  ``k``,
    ``layout`` and the options are static (the per-layer quotas depend on them only); the scores
    may be traced.  Concrete NaN scores raise ``ValueError``; traced scores cannot raise, so if
    any traced score is NaN the whole mask is NaN, which poisons the masked parameters visibly
    instead of dropping groups silently.

    Inside ``jit`` XLA flushes subnormal floats to zero (on CPU at least), so a subnormal
    score ties with 0 here while :func:`topk_mask` still orders them.

    Args:
      scores: ``(p,)`` real scores, possibly traced.
      k: static int, ``0 <= k <= p``.
      layout, per_layer, min_per_layer: as in :func:`topk_mask`.

    Returns:
      ``(p,)`` mask in ``{0, 1}``, of the scores' dtype when floating (else the default float).

    References:
      Chen et al. (2023), Section 3.2.1 (TopK mask), Appendix E.3 (at least one head/expert per
      layer).
    """
    scores = jnp.asarray(scores)
    if not (
        jnp.issubdtype(scores.dtype, jnp.floating) or jnp.issubdtype(scores.dtype, jnp.integer)
    ):
        raise TypeError(f"scores: expected a real array, got dtype {scores.dtype}")
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"scores: expected shape (p,) with p >= 1, got {scores.shape}")
    p = scores.shape[0]
    k = _check_k(k, p)
    min_per_layer = check_int(min_per_layer, "min_per_layer", minimum=0)
    has_nan = jnp.isnan(scores).any()
    if not isinstance(has_nan, jax.core.Tracer) and bool(has_nan):
        nan = np.flatnonzero(np.isnan(np.asarray(scores)))
        raise ValueError(f"scores: NaN at groups {nan[:10].tolist()}; expected real scores")
    dtype = scores.dtype if jnp.issubdtype(scores.dtype, jnp.floating) else jnp.result_type(float)
    ranked = jnp.where(scores == 0, jnp.zeros_like(scores), scores)
    if not per_layer and min_per_layer == 0:
        _, index = jax.lax.top_k(ranked, k)
        kept = jnp.zeros(p, bool).at[index].set(True)
    else:
        layers, counts = _layered_counts(layout, p, k, min_per_layer)
        order = jnp.argsort(-ranked, stable=True)
        by_layer = order[jnp.argsort(jnp.asarray(layers)[order], stable=True)]
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        within = jnp.asarray(np.arange(p) - starts, jnp.int32)
        rank = jnp.zeros(p, jnp.int32).at[by_layer].set(within)
        if per_layer:
            kept = rank < jnp.asarray(_layer_quotas(counts, k, min_per_layer))[layers]
        else:
            protected = rank < min_per_layer
            rest = ~protected[order]
            extra = k - min_per_layer * len(counts)
            take = rest & (jnp.cumsum(rest) <= extra)
            kept = protected | jnp.zeros(p, bool).at[order].set(take)
    mask = kept.astype(dtype)
    return jnp.where(has_nan, jnp.full_like(mask, jnp.nan), mask)


# ---------------------------------------------------------------------------------------------
# Accounting.


class SparsityReport(NamedTuple):
    """How much a group mask prunes.  A group is pruned iff its mask entry is exactly 0.

    Attributes:
      num_groups_pruned: number of pruned groups.
      groups_pruned: fraction of the ``p`` groups pruned.
      num_params_pruned: number of weights in pruned groups.
      grouped_params_pruned: fraction of the grouped weights that are pruned.
      params_pruned: fraction of all weights (grouped or not) that are pruned.
      layer_groups_pruned: ``(L,)`` fraction of each layer's groups pruned, or None.
      layer_params_pruned: ``(L,)`` fraction of each layer's grouped weights pruned, or None.
      flops_removed: sum of ``group_flops`` over pruned groups, or None.
    """

    num_groups_pruned: int
    groups_pruned: float
    num_params_pruned: int
    grouped_params_pruned: float
    params_pruned: float
    layer_groups_pruned: np.ndarray | None
    layer_params_pruned: np.ndarray | None
    flops_removed: float | None


def sparsity(
    params: PyTree,
    group_ids: PyTree,
    mask: Any,
    *,
    layout: GroupLayout | None = None,
    group_flops: Any = None,
) -> SparsityReport:
    """Fractions of groups, weights and FLOPs that ``mask`` prunes.

    Args:
      params: parameter pytree (its shapes are used).
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      mask: ``(p,)`` concrete mask; entries equal to 0 are pruned (soft gates count as kept).
      layout: optional :class:`GroupLayout` for per-layer fractions.
      group_flops: optional ``(p,)`` non-negative FLOPs of each group.

    Returns:
      A :class:`SparsityReport`.

    References:
      Chen et al. (2023), Section 3.2.1 (pruning ratio ``r``: ``k = (1 - r) p`` groups kept).
    """
    p = validate_group_ids(params, group_ids)
    mask = np.asarray(mask)
    if mask.shape != (p,):
        raise ValueError(f"mask: expected shape ({p},), one entry per group, got {mask.shape}")
    if mask.dtype != np.bool_ and np.isnan(mask.astype(np.float64)).any():
        raise ValueError("mask: contains NaN; expected values in [0, 1]")
    pruned = mask == 0
    sizes = group_sizes(params, group_ids)
    total = sum(int(np.size(w)) for w in jax.tree_util.tree_leaves(params))
    removed = int(sizes[pruned].sum())
    layer_groups = layer_params = None
    if layout is not None:
        layers, counts = _layer_counts(layout, p)
        per_layer_sizes = np.bincount(layers, weights=sizes, minlength=layout.num_layers)
        layer_groups = np.bincount(layers, weights=pruned, minlength=layout.num_layers) / counts
        layer_params = (
            np.bincount(layers, weights=sizes * pruned, minlength=layout.num_layers)
            / per_layer_sizes
        )
    flops = None
    if group_flops is not None:
        group_flops = np.asarray(group_flops, np.float64)
        if (
            group_flops.shape != (p,)
            or not np.all(np.isfinite(group_flops))
            or (group_flops < 0).any()
        ):
            raise ValueError(
                f"group_flops: expected ({p},) finite non-negative FLOPs, got shape "
                f"{group_flops.shape}"
            )
        flops = float(group_flops[pruned].sum())
    return SparsityReport(
        num_groups_pruned=int(pruned.sum()),
        groups_pruned=float(pruned.mean()),
        num_params_pruned=removed,
        grouped_params_pruned=removed / int(sizes.sum()),
        params_pruned=removed / total,
        layer_groups_pruned=layer_groups,
        layer_params_pruned=layer_params,
        flops_removed=flops,
    )
