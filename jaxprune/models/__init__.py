"""Flax models with prunable structure."""

from jaxprune.models.cnn import SmallCNN
from jaxprune.models.mlp import MLP

__all__ = ["MLP", "SmallCNN"]
