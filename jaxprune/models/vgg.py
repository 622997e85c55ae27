"""VGG-16 for CIFAR whose convolution filters are the prunable groups.

The CIFAR variant of VGG-16 (the convolutional part as in Li et al. 2017): thirteen 3×3
convolutions (``SAME`` padding, stride 1) with the channel plan
``64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M`` (``M`` = 2×2
max pooling, stride 2), optional BatchNorm after every convolution, ReLU, and a classifier of
**one** Dense layer ``512 → num_classes`` on the flattened ``1×1×512`` map of a 32×32 image.
This classifier is the common CIFAR re-implementation's choice (14.7M parameters); Li et al.
use two layers ``512-512-classes`` (0.26M more parameters, 0.3M more multiply-accumulates), and
the ImageNet ``4096-4096`` head is not used.  With BatchNorm the convolutions have no bias (the
BatchNorm bias replaces it).  Kernels use He et al. 2015's fan-out normal initialization.

Pruning structure: one group per output channel (filter) of each convolution — its kernel slice
``kernel[..., o]``, its bias ``[o]`` and, with BatchNorm, that layer's ``scale[o]`` and
``bias[o]``.  Layers are named ``conv_{i}``, ``bn_{i}`` (``i = 0..12``) and ``classifier``, so
layer paths are ``"params/conv_3"``.

References:
  Simonyan & Zisserman 2015, "Very deep convolutional networks for large-scale image
  recognition", Table 1 (configuration D = VGG-16).
  Li et al. 2017, "Pruning filters for efficient ConvNets", Section 4.1 (VGG-16 on CIFAR-10,
  filter pruning and its FLOP count 3.13e8 multiply-accumulates).
  Ioffe & Szegedy 2015, "Batch normalization" (the ``-bn`` variants).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_choice, check_positive_int
from jaxprune.masks.compact import Link
from jaxprune.masks.compact import compact as compact_links
from jaxprune.masks.groups import build_group_ids, filters
from jaxprune.masks.layout import GroupLayout
from jaxprune.models.base import (
    ModelSpec,
    binary_keep,
    check_float_dtype,
    deprecated_alias,
    image_shape,
    split_gates,
    warn_renamed,
)
from jaxprune.models.conv import conv_general_dilated
from jaxprune.typing import PyTree

__all__ = [
    "KINDS",
    "POOL_AFTER",
    "PRESETS",
    "SPEC",
    "VGG",
    "VGG16_CHANNELS",
    "VGGConfig",
    "compact",
    "compact_vgg",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
    "vgg16_channels",
    "vgg_flops",
    "vgg_group_ids",
]

VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
"""Output channels of VGG-16's thirteen convolutions (configuration D)."""

POOL_AFTER = (1, 3, 6, 9, 12)
"""Indices of the convolutions followed by 2×2 max pooling (the ``M`` of the channel plan)."""

KINDS = ("filters",)


def vgg16_channels(width_multiplier: float = 1.0) -> tuple[int, ...]:
    """VGG-16's channel plan scaled by ``width_multiplier``: ``max(1, round(c * w))`` per layer.

    Args:
      width_multiplier: ``w > 0``; ``1/8`` gives ``8, 8, 16, ..., 64``.

    Returns:
      A tuple of 13 channel counts.

    References:
      Simonyan & Zisserman 2015, Table 1 (configuration D).
    """
    if (
        isinstance(width_multiplier, bool)
        or not isinstance(width_multiplier, (int, float, np.integer, np.floating))
        or not np.isfinite(width_multiplier)
        or width_multiplier <= 0
    ):
        raise ValueError(
            f"width_multiplier: expected a finite number > 0, got {width_multiplier!r}"
        )
    return tuple(max(1, round(c * float(width_multiplier))) for c in VGG16_CHANNELS)


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """Configuration of :class:`VGG`.

    Attributes:
      channels: output channels of the 13 convolutions, in order (compaction changes them);
        :func:`vgg16_channels` builds them from a width multiplier.
      num_classes: outputs of the classifier.
      batch_norm: BatchNorm after every convolution (then the convolutions have no bias).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    """

    channels: tuple[int, ...] = VGG16_CHANNELS
    num_classes: int = 10
    batch_norm: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        channels = self.channels
        if (
            isinstance(channels, (str, bytes))
            or not isinstance(channels, (tuple, list))
            or len(channels) != len(VGG16_CHANNELS)
        ):
            raise ValueError(
                f"channels: expected {len(VGG16_CHANNELS)} channel counts (one per convolution), "
                f"got {channels!r}"
            )
        for i, c in enumerate(channels):
            check_positive_int(c, f"channels[{i}]")
        object.__setattr__(self, "channels", tuple(int(c) for c in channels))
        check_positive_int(self.num_classes, "num_classes")
        if not isinstance(self.batch_norm, bool):
            raise ValueError(f"batch_norm: expected a bool, got {self.batch_norm!r}")
        check_float_dtype(self.dtype)

    @property
    def num_filters(self) -> int:
        """Number of filter groups ``p`` (all output channels of all convolutions)."""
        return sum(self.channels)


PRESETS: dict[str, VGGConfig] = {
    "vgg16": VGGConfig(),
    "vgg16-bn": VGGConfig(batch_norm=True),
    "vgg16-tiny": VGGConfig(channels=vgg16_channels(1 / 8)),
    "vgg16-bn-tiny": VGGConfig(channels=vgg16_channels(1 / 8), batch_norm=True),
}
"""Named configurations: full VGG-16 (CIFAR) with/without BatchNorm and CPU-sized width/8 ones."""


def from_preset(name: str, **overrides: Any) -> VGGConfig:
    """The preset ``name`` of :data:`PRESETS`, with optional field ``overrides``.

    Example: ``from_preset("vgg16-bn", num_classes=100)``.
    """
    if name not in PRESETS:
        raise ValueError(f"name: unknown VGG preset {name!r}; valid presets are {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> VGGConfig:
    """The preset ``preset`` with ``num_classes = num_outputs`` (any image of at least 32×32)."""
    return from_preset(preset, num_classes=num_outputs, **overrides)


def _split_gates(gates: Any, widths: tuple[int, ...], dtype: Any) -> list[jax.Array] | None:
    """The gates (flat ``(sum(widths),)`` or per-layer pieces) as one piece per layer."""
    return None if gates is None else split_gates(gates, widths, dtype, "filter_gates")


_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VGG(nn.Module):
    """VGG-16 for CIFAR (see the module docstring) with optional per-filter gates.

    Attributes:
      config: a :class:`VGGConfig`.
    """

    config: VGGConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, filter_gates: jax.Array | None = None
    ) -> jax.Array:
        """``(n, H, W, C)`` images (32×32×3 on CIFAR) to ``(n, num_classes)`` logits.

        Args:
          x: images, NHWC.
          train: BatchNorm uses batch statistics and updates ``batch_stats`` (apply with
            ``mutable=["batch_stats"]``); otherwise it uses the running statistics.
          filter_gates: optional ``(p,)`` gates, ``p = config.num_filters``, in group order
            (the order of :func:`group_ids`: all filters of ``conv_0``, then ``conv_1``,
            ...).  Filter ``o`` of convolution ``i`` is multiplied by its gate after BatchNorm,
            before ReLU; a gate of 0 removes exactly that filter's contribution.  Differentiable
            (Michel et al. 2019's importance ``|∂L/∂gate|``). Also accepted: one
            piece per layer (:func:`~jaxprune.models.base.split_gates`).

        Returns:
          Logits in the compute dtype ``config.dtype``.
        """
        cfg = self.config
        gates = _split_gates(filter_gates, cfg.channels, cfg.dtype)
        x = jnp.asarray(x, cfg.dtype)
        for i, width in enumerate(cfg.channels):
            x = nn.Conv(
                width,
                (3, 3),
                padding="SAME",
                conv_general_dilated=conv_general_dilated,
                use_bias=not cfg.batch_norm,
                dtype=cfg.dtype,
                kernel_init=_conv_init,
                name=f"conv_{i}",
            )(x)
            if cfg.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    epsilon=1e-5,
                    dtype=cfg.dtype,
                    name=f"bn_{i}",
                )(x)
            if gates is not None:
                x = x * gates[i]
            x = nn.relu(x)
            if i in POOL_AFTER:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="classifier")(x)


def group_ids(
    variables: PyTree, config: VGGConfig, kind: str = "filters"
) -> tuple[PyTree, GroupLayout]:
    """Group ids of the prunable structure of a :class:`VGG`.

    Args:
      variables: ``model.init(...)`` output (``{"params": ..., "batch_stats": ...}``) or its
        ``"params"`` entry; shapes only (``jax.eval_shape`` output works).
      config: the model's :class:`VGGConfig`.
      kind: ``"filters"``: one group per output channel of every convolution (kernel slice,
        bias, and BatchNorm scale/bias), numbered ``conv_0`` first; BatchNorm running
        statistics are not parameters and stay ungrouped.

    Returns:
      ``(group_ids, layout)`` from :func:`~jaxprune.masks.groups.build_group_ids`: ``p =
      config.num_filters`` groups, one layout layer per convolution (named by its path).

    References:
      Li et al. 2017, Section 3.1 (a filter and its BatchNorm entries as one unit).
    """
    check_choice(kind, KINDS, "kind")
    specs = [
        filters(
            rf"(^|params/)conv_{i}$",
            batchnorm=rf"(^|params/)bn_{i}$" if config.batch_norm else None,
        )
        for i in range(len(config.channels))
    ]
    return build_group_ids(variables, specs)


def flops(config: VGGConfig, input_shape: tuple[int, ...] = (32, 32, 3)) -> int:
    """FLOPs of one forward pass of one image: 2 × multiply-accumulates.

    Counts the multiply-accumulates of the 13 convolutions (``H·W·9·C_in·C_out`` at each
    layer's resolution) and of the classifier (``inputs · num_classes``), times 2.  BatchNorm,
    biases, ReLU and pooling are not counted.  Halve it to compare with Li et al. 2017, who count
    multiply-accumulates (VGG-16 on 32×32: ``flops / 2 ≈ 3.13e8``).

    Args:
      config: the model's :class:`VGGConfig`.
      input_shape: ``(H, W, C)`` of one image (CIFAR's ``(32, 32, 3)`` by default).

    Returns:
      The FLOP count as an int.

    References:
      Li et al. 2017, Table 1 (FLOPs of VGG-16 on CIFAR-10).
    """
    height, width, c_in = image_shape(input_shape)
    macs = 0
    for i, c_out in enumerate(config.channels):
        macs += height * width * 9 * c_in * c_out
        c_in = c_out
        if i in POOL_AFTER:
            height, width = height // 2, width // 2
    if min(height, width) < 1:
        raise ValueError(
            f"input_shape: {tuple(input_shape)} is too small for 5 poolings; expected sides >= 32"
        )
    macs += height * width * c_in * config.num_classes
    return 2 * macs


def compact(
    variables: PyTree, config: VGGConfig, keep: Any, kind: str = "filters"
) -> tuple[PyTree, VGGConfig]:
    """Remove the filters not kept; the smaller model computes what the masked one does.

    Filter ``o`` of ``conv_i`` goes with its BatchNorm entries (scale, bias, running mean and
    variance) and the input channel ``o`` of ``conv_{i+1}`` (of the classifier's rows for the
    last convolution, one per spatial position of the final map).  The outputs equal those of
    the model with gate 0 (or :func:`~jaxprune.masks.mask.apply_group_mask` with mask 0) on the
    removed filters, in eval mode.

    Args:
      variables: the model's variables (nested dicts: ``params`` and, with BatchNorm,
        ``batch_stats``).
      config: its :class:`VGGConfig`.
      keep: boolean ``(p,)`` in group order (as ``filter_gates``); every convolution must keep
        at least one filter.
      kind: ``"filters"`` (:data:`KINDS`).

    Returns:
      ``(variables, config)`` of the compacted model (``config.channels`` = filters kept).

    References:
      Li et al. 2017, Section 3.1 (removing filters and the next layer's kernels).
    """
    check_choice(kind, KINDS, "kind")
    keep = binary_keep(keep)
    if keep.shape != (config.num_filters,):
        raise ValueError(
            f"keep: expected shape ({config.num_filters},), one entry per filter, got {keep.shape}"
        )
    per_layer = np.split(keep.astype(bool), np.cumsum(config.channels)[:-1])
    last = len(config.channels) - 1
    rows = np.shape(variables["params"]["classifier"]["kernel"])[0]
    links = [
        Link(
            f"params/conv_{i}",
            next_layer=f"params/conv_{i + 1}" if i < last else "params/classifier",
            batchnorm=f"bn_{i}" if config.batch_norm else None,
            positions=1 if i < last else rows // config.channels[-1],
        )
        for i in range(len(config.channels))
    ]
    kept = compact_links(variables, links, {link.layer: m for link, m in zip(links, per_layer)})
    channels = tuple(int(m.sum()) for m in per_layer)
    return kept, dataclasses.replace(config, channels=channels)


vgg_group_ids = deprecated_alias(group_ids, "vgg_group_ids")
compact_vgg = deprecated_alias(compact, "compact_vgg")


def vgg_flops(config: VGGConfig, *, image_size: int = 32, in_channels: int = 3) -> int:
    """Deprecated: ``flops(config, (image_size, image_size, in_channels))`` (:func:`flops`)."""
    warn_renamed("vgg_flops", flops)
    return flops(config, (image_size, image_size, in_channels))


SPEC = ModelSpec(
    name="vgg",
    module=VGG,
    presets=PRESETS,
    default_preset="vgg16-bn-tiny",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(32, 32, 3),
    gate_keyword="filter_gates",
    stateful=True,
)
"""The ``"vgg"`` model spec."""
