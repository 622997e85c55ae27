"""A small convolutional network whose filters are the prunable groups."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class SmallCNN(nn.Module):
    """Conv(3×3) + ReLU blocks (the first strided), global average pooling, Dense head.

    Attributes:
      channels: output channels of each convolution.
      num_outputs: width of the output layer.
    """

    channels: Sequence[int] = (8, 16)
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(n, H, W, C)`` images to ``(n, num_outputs)`` outputs."""
        for i, width in enumerate(self.channels):
            x = jax.nn.relu(nn.Conv(width, (3, 3), strides=(2, 2) if i == 0 else (1, 1))(x))
        return nn.Dense(self.num_outputs)(x.mean(axis=(1, 2)))
