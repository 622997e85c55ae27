"""Optax transforms for pruning: masked training (and, in later issues, gRDA and PL gating)."""

from jaxprune.optim.masked import MaskedState, apply_mask, map_param_subtrees, masked, set_mask

__all__ = ["MaskedState", "apply_mask", "map_param_subtrees", "masked", "set_mask"]
