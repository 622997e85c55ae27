"""Structured sparsity: group constructors, masks, TopK, schedules and compaction.

References: Chen et al. (2023), Sections 3.2.1 and 3.2.4, Algorithm 2, Appendix E.3.
"""

from jaxprune.masks.compact import Link, compact, keep_along
from jaxprune.masks.groups import (
    build_group_ids,
    experts,
    filters,
    heads,
    neurons,
    unstructured,
)
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import (
    SparsityReport,
    apply_group_mask,
    group_mask_from_param_mask,
    param_mask,
    ratio_to_k,
    sparsity,
    topk_mask,
    topk_mask_jax,
)
from jaxprune.masks.schedules import (
    PruningSchedule,
    iterative_magnitude,
    linear,
    lth_schedule,
    num_pruned,
    one_shot,
    per_epoch_from,
    polynomial,
)

__all__ = [
    "GroupLayout",
    "Link",
    "PruningSchedule",
    "SparsityReport",
    "apply_group_mask",
    "build_group_ids",
    "compact",
    "experts",
    "filters",
    "group_mask_from_param_mask",
    "heads",
    "iterative_magnitude",
    "keep_along",
    "linear",
    "lth_schedule",
    "neurons",
    "num_pruned",
    "one_shot",
    "param_mask",
    "per_epoch_from",
    "polynomial",
    "ratio_to_k",
    "sparsity",
    "topk_mask",
    "topk_mask_jax",
    "unstructured",
]
