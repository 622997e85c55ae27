"""Multi-layer perceptron whose hidden units are the prunable neuron groups."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxprune.masks.compact import Link, compact
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.masks.layout import GroupLayout

__all__ = ["MLP", "PRESETS", "compact_mlp", "from_preset", "mlp_flops", "mlp_group_ids"]

PyTree = Any


class MLP(nn.Module):
    """``x -> act(Dense) -> ... -> Dense(num_outputs)`` on flattened inputs.

    Layers are named ``Dense_0 ... Dense_L`` (``L`` hidden layers, then the output layer).

    Attributes:
      hidden: widths of the hidden layers.
      num_outputs: width of the output layer.
      activation: elementwise nonlinearity with ``act(0) = 0`` for the gate/mask/compaction
        equivalence (``jax.nn.relu`` by default; tanh and GELU qualify).
      dtype: compute dtype, e.g. ``jnp.bfloat16`` (parameters keep their own dtype); ``None``
        computes in the dtype of the inputs and parameters, as ``flax.linen.Dense`` does.
    """

    hidden: Sequence[int]
    num_outputs: int
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, *, neuron_gates: jax.Array | None = None) -> jax.Array:
        """``(n, ...)`` inputs to ``(n, num_outputs)`` outputs.

        ``neuron_gates``: optional ``(sum(hidden),)`` multipliers of the hidden units' outputs,
        layer by layer (the group order of :func:`mlp_group_ids`); a gate of 0 removes exactly
        that neuron's contribution, and gates are differentiable.
        """
        if any(w < 1 for w in self.hidden) or self.num_outputs < 1:
            raise ValueError(
                f"MLP: widths must be >= 1, got hidden={tuple(self.hidden)}, "
                f"num_outputs={self.num_outputs}"
            )
        if neuron_gates is not None and np.shape(neuron_gates) != (sum(self.hidden),):
            raise ValueError(
                f"neuron_gates: expected shape ({sum(self.hidden)},), one gate per hidden "
                f"neuron, got {np.shape(neuron_gates)}"
            )
        x = x.reshape(x.shape[0], -1)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        offset = 0
        for width in self.hidden:
            x = self.activation(nn.Dense(width, dtype=self.dtype)(x))
            if neuron_gates is not None:
                x = x * neuron_gates[offset : offset + width].astype(x.dtype)
            offset += width
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x)


PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"hidden": (64, 64), "num_outputs": 10},
    "lenet-300-100": {"hidden": (300, 100), "num_outputs": 10},
    "bench-512x512": {"hidden": (512, 512), "num_outputs": 10},
}


def from_preset(name: str, **overrides: Any) -> MLP:
    """An :class:`MLP` from a named preset (:data:`PRESETS`), fields overridable."""
    if name not in PRESETS:
        raise ValueError(f"unknown MLP preset {name!r}; expected one of {', '.join(PRESETS)}")
    return MLP(**{**PRESETS[name], **overrides})


def mlp_group_ids(variables: PyTree, model: MLP) -> tuple[PyTree, GroupLayout]:
    """One group per hidden neuron (its kernel column and bias), one layout layer per hidden
    layer, numbered layer by layer.

    References: paper 000, Section 3.2.1 (structured groups w_[i]).
    """
    specs = [neurons(rf"(^|params/)Dense_{i}$") for i in range(len(model.hidden))]
    return build_group_ids(variables, specs)


def mlp_flops(model: MLP, input_dim: int) -> int:
    """Forward FLOPs per example: 2 × the multiply-accumulates of the Dense layers."""
    widths = [input_dim, *model.hidden, model.num_outputs]
    return 2 * sum(a * b for a, b in itertools.pairwise(widths))


def compact_mlp(variables: PyTree, model: MLP, keep: Any) -> tuple[PyTree, MLP]:
    """Remove the hidden neurons not kept: ``keep`` is a boolean ``(sum(hidden),)`` vector in
    group order.  Returns smaller variables and the matching :class:`MLP`; its outputs equal
    those of the model with gate (or group mask) 0 on the removed neurons.

    References: Li et al. (2017), "Pruning filters for efficient ConvNets" (removing units and
    the next layer's matching weights).
    """
    keep = np.asarray(keep, bool)
    total = sum(model.hidden)
    if keep.shape != (total,):
        raise ValueError(f"keep: expected shape ({total},), one entry per neuron, got {keep.shape}")
    bounds = np.cumsum([0, *model.hidden])
    layers = [f"params/Dense_{i}" for i in range(len(model.hidden) + 1)]
    links = [Link(layers[i], layers[i + 1]) for i in range(len(model.hidden))]
    per_layer = {layers[i]: keep[bounds[i] : bounds[i + 1]] for i in range(len(model.hidden))}
    small = compact(variables, links, per_layer)
    widths = tuple(int(k.sum()) for k in per_layer.values())
    return small, dataclasses.replace(model, hidden=widths)
