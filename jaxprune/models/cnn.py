"""A small convolutional network whose filters are the prunable groups.

Its model spec (:data:`SPEC`) is registered as ``"cnn"``; the config is the :class:`SmallCNN`
module itself.  It has no gates and no compaction: pruning masks its filters' weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from jaxprune._validation import check_choice
from jaxprune.masks.groups import build_group_ids, filters
from jaxprune.masks.layout import GroupLayout
from jaxprune.models.base import ModelSpec, config_module, image_shape
from jaxprune.models.conv import conv_general_dilated
from jaxprune.typing import PyTree

__all__ = ["KINDS", "PRESETS", "SPEC", "SmallCNN", "flops", "group_ids", "make_config"]

KINDS = ("filters",)


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
            x = jax.nn.relu(
                nn.Conv(
                    width,
                    (3, 3),
                    strides=(2, 2) if i == 0 else (1, 1),
                    conv_general_dilated=conv_general_dilated,
                )(x)
            )
        return nn.Dense(self.num_outputs)(x.mean(axis=(1, 2)))


PRESETS: dict[str, dict[str, Any]] = {"small": {"channels": (8, 16)}}
"""Named configurations (fields of :class:`SmallCNN`)."""


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> SmallCNN:
    """The :class:`SmallCNN` of ``preset`` with ``num_outputs`` outputs (any image size)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown cnn preset {preset!r}; expected 'small'")
    return SmallCNN(**{**PRESETS[preset], "num_outputs": num_outputs, **overrides})


def group_ids(
    variables: PyTree, config: SmallCNN, kind: str = "filters"
) -> tuple[PyTree, GroupLayout]:
    """One group per output channel of every convolution (kernel slice and bias), numbered
    ``Conv_0`` first, one layout layer per convolution.

    Args:
      variables: ``model.init(...)`` output or its ``"params"`` entry (shapes only).
      config: the :class:`SmallCNN`.
      kind: ``"filters"`` (:data:`KINDS`).
    """
    check_choice(kind, KINDS, "kind")
    specs = [filters(rf"(^|params/)Conv_{i}$") for i in range(len(config.channels))]
    return build_group_ids(variables, specs)


def flops(config: SmallCNN, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs of one ``(H, W, C)`` image: 2 × the multiply-accumulates of the 3×3
    convolutions (``SAME`` padding; the first has stride 2, so its output is
    ``ceil(H/2) × ceil(W/2)``) and of the Dense head.  Biases, ReLU and pooling are not counted.
    """
    height, width, c_in = image_shape(input_shape)
    height, width = math.ceil(height / 2), math.ceil(width / 2)
    macs = 0
    for c_out in config.channels:
        macs += height * width * 9 * c_in * c_out
        c_in = c_out
    return 2 * (macs + c_in * config.num_outputs)


SPEC = ModelSpec(
    name="cnn",
    module=config_module,
    presets=PRESETS,
    default_preset="small",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=None,
    flops=flops,
    example_input_shape=(8, 8, 1),
)
"""The ``"cnn"`` model spec."""
