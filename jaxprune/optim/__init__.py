"""Optax transforms for pruning: masked training, gRDA (Chao et al., 2020) and any registered
pruning method on a schedule (:func:`prune_with`)."""

from jaxprune.optim.grda import GrdaState, grda, grda_threshold, soft_threshold
from jaxprune.optim.masked import (
    MaskedState,
    apply_mask,
    map_param_subtrees,
    masked,
    masked_update,
    set_mask,
    zero_pruned_statistics,
)
from jaxprune.optim.prune_with import PruneWithState, RewindPoint, event_due, prune_with

__all__ = [
    "GrdaState",
    "MaskedState",
    "PruneWithState",
    "RewindPoint",
    "apply_mask",
    "event_due",
    "grda",
    "grda_threshold",
    "map_param_subtrees",
    "masked",
    "masked_update",
    "prune_with",
    "set_mask",
    "soft_threshold",
    "zero_pruned_statistics",
]
