"""Multi-layer perceptron whose hidden units are the prunable neuron groups."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """``x -> act(Dense) -> ... -> Dense(num_outputs)`` on flattened inputs.

    Attributes:
      hidden: widths of the hidden layers.
      num_outputs: width of the output layer.
      activation: elementwise nonlinearity (``jax.nn.relu`` by default).
    """

    hidden: Sequence[int]
    num_outputs: int
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(n, ...)`` inputs to ``(n, num_outputs)`` outputs."""
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = self.activation(nn.Dense(width)(x))
        return nn.Dense(self.num_outputs)(x)
