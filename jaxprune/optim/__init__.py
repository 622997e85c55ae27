"""Optax transforms for pruning: masked training (and, in later issues, gRDA and PL gating)."""

from jaxprune.optim.masked import MaskedState, apply_mask, masked, set_mask

__all__ = ["MaskedState", "apply_mask", "masked", "set_mask"]
