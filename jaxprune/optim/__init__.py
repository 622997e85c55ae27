"""Optax transforms for pruning: masked training and gRDA (Chao et al., 2020)."""

from jaxprune.optim.grda import GrdaState, grda, grda_threshold, soft_threshold
from jaxprune.optim.masked import MaskedState, apply_mask, map_param_subtrees, masked, set_mask

__all__ = [
    "GrdaState",
    "MaskedState",
    "apply_mask",
    "grda",
    "grda_threshold",
    "map_param_subtrees",
    "masked",
    "set_mask",
    "soft_threshold",
]
