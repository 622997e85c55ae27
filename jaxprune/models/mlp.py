"""Multi-layer perceptron whose hidden units are the prunable neuron groups.

Its model spec (:data:`SPEC`, :class:`~jaxprune.models.base.ModelSpec`) is registered as
``"mlp"``; the config is the :class:`MLP` module itself.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxprune._validation import check_choice
from jaxprune.masks.compact import Link
from jaxprune.masks.compact import compact as compact_links
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.masks.layout import GroupLayout
from jaxprune.models.base import (
    ModelSpec,
    binary_keep,
    config_module,
    deprecated_alias,
    flat_size,
    split_gates,
    warn_renamed,
)
from jaxprune.typing import PyTree

__all__ = [
    "KINDS",
    "MLP",
    "PRESETS",
    "SPEC",
    "compact",
    "compact_mlp",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
    "mlp_flops",
    "mlp_group_ids",
]

KINDS = ("neurons",)


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
        layer by layer (the group order of :func:`group_ids`), or one ``(width,)`` piece per
        hidden layer (:func:`~jaxprune.models.base.split_gates`); a gate of 0 removes exactly
        that neuron's contribution, and gates are differentiable.
        """
        if any(w < 1 for w in self.hidden) or self.num_outputs < 1:
            raise ValueError(
                f"MLP: widths must be >= 1, got hidden={tuple(self.hidden)}, "
                f"num_outputs={self.num_outputs}"
            )
        x = x.reshape(x.shape[0], -1)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        gates = (
            None
            if neuron_gates is None
            else split_gates(neuron_gates, self.hidden, x.dtype, "neuron_gates")
        )
        for i, width in enumerate(self.hidden):
            x = self.activation(nn.Dense(width, dtype=self.dtype)(x))
            if gates is not None:
                x = x * gates[i].astype(x.dtype)
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


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> MLP:
    """The :class:`MLP` of ``preset`` with ``num_outputs`` outputs (inputs are flattened, so
    ``input_shape`` is not needed); ``preset`` is a name of :data:`PRESETS` or comma-separated
    hidden widths such as ``"128,64"``."""
    if not isinstance(preset, str):
        raise TypeError(
            f"preset: expected a preset name or widths such as '128,64', got {preset!r}"
        )
    if preset[:1].isdigit():
        widths = preset.split(",")
        if not all(w.strip().isdigit() and int(w) >= 1 for w in widths):
            raise ValueError(
                f"preset: expected comma-separated positive widths such as '128,64', got {preset!r}"
            )
        return MLP(hidden=tuple(int(w) for w in widths), num_outputs=num_outputs, **overrides)
    return from_preset(preset, num_outputs=num_outputs, **overrides)


def group_ids(variables: PyTree, config: MLP, kind: str = "neurons") -> tuple[PyTree, GroupLayout]:
    """One group per hidden neuron (its kernel column and bias), one layout layer per hidden
    layer, numbered layer by layer.

    Args:
      variables: ``model.init(...)`` output or its ``"params"`` entry (shapes only).
      config: the :class:`MLP`.
      kind: ``"neurons"`` (:data:`KINDS`).

    Returns:
      ``(group_ids, layout)``: ``sum(config.hidden)`` groups.

    References: Chen et al. (2023), Sec. 3.2.1 (structured groups w_[i]).
    """
    check_choice(kind, KINDS, "kind")
    specs = [neurons(rf"(^|params/)Dense_{i}$") for i in range(len(config.hidden))]
    return build_group_ids(variables, specs)


def flops(config: MLP, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs per example of ``input_shape`` (flattened): 2 × the multiply-accumulates
    of the Dense layers."""
    widths = [flat_size(input_shape), *config.hidden, config.num_outputs]
    return 2 * sum(a * b for a, b in itertools.pairwise(widths))


def compact(variables: PyTree, config: MLP, keep: Any, kind: str = "neurons") -> tuple[PyTree, MLP]:
    """Remove the hidden neurons not kept: ``keep`` is a boolean ``(sum(hidden),)`` vector in
    group order.  Returns smaller variables and the matching :class:`MLP`; its outputs equal
    those of the model with gate (or group mask) 0 on the removed neurons.

    References: Li et al. (2017), Sec. 3.1 (removing units and the next layer's matching
    weights).
    """
    check_choice(kind, KINDS, "kind")
    keep = binary_keep(keep)
    total = sum(config.hidden)
    if keep.shape != (total,):
        raise ValueError(f"keep: expected shape ({total},), one entry per neuron, got {keep.shape}")
    bounds = np.cumsum([0, *config.hidden])
    layers = [f"params/Dense_{i}" for i in range(len(config.hidden) + 1)]
    links = [Link(layers[i], layers[i + 1]) for i in range(len(config.hidden))]
    per_layer = {layers[i]: keep[bounds[i] : bounds[i + 1]] for i in range(len(config.hidden))}
    small = compact_links(variables, links, per_layer)
    widths = tuple(int(k.sum()) for k in per_layer.values())
    return small, dataclasses.replace(config, hidden=widths)


mlp_group_ids = deprecated_alias(group_ids, "mlp_group_ids")
compact_mlp = deprecated_alias(compact, "compact_mlp")


def mlp_flops(model: MLP, input_dim: int) -> int:
    """Deprecated: ``flops(model, (input_dim,))`` (:func:`flops`)."""
    warn_renamed("mlp_flops", flops)
    return flops(model, (input_dim,))


SPEC = ModelSpec(
    name="mlp",
    module=config_module,
    presets=PRESETS,
    default_preset="digits",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(8,),
    gate_keyword="neuron_gates",
)
"""The ``"mlp"`` model spec."""
