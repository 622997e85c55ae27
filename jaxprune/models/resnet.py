"""ResNet-56 for CIFAR whose prunable groups are the inner filters of the basic blocks.

He et al. 2016, Section 4.2: a 3×3 convolution with 16 channels, then three stages of ``n``
basic blocks with 16, 32, 64 channels (the first block of stages 2 and 3 has stride 2), global
average pooling and a Dense classifier: ``6n + 2`` layers (``n = 9``: ResNet-56, 0.85M
parameters).  A basic block is ``conv1 → BN → ReLU → conv2 → BN → (+ shortcut) → ReLU``.
Convolutions are 3×3 without bias, padded by 1 on every side (so a stride-2 window is centred
on the even positions that the shortcut keeps).

Shortcuts are **option A** of He et al. (the one behind their CIFAR results and the 0.85M
count): the identity, and where the shape changes the input subsampled by the stride
(``x[:, ::2, ::2]``) and zero-padded to the new width (``(C_out - C_in) // 2`` channels before,
the rest after).  They have no parameters.

Pruning structure: one group per output channel of every block's *first* convolution
(``conv1``), with its ``bn1`` scale and bias.  The second convolution's outputs are added to the
shortcut, so their channels are tied across the stage and are not pruned — standard practice
(Li et al. 2017, Section 4.2; He et al. 2017, who also prune only the first layer of
residual blocks).  Layers are named ``stem_conv``,
``stem_bn``, ``block_{j}_conv1``, ``block_{j}_bn1``, ``block_{j}_conv2``, ``block_{j}_bn2``
(``j = 0..3n-1`` over all stages) and ``classifier``; layer paths are ``"params/block_4_conv1"``.

References:
  He et al. 2016, "Deep residual learning for image recognition", Section 4.2 (CIFAR-10
  ResNets, option A shortcuts, Table 6).
  Li et al. 2017, "Pruning filters for efficient ConvNets", Section 4.2 (ResNet-56/110 on
  CIFAR-10: only the first layer of each residual block is pruned; 1.25e8 FLOPs for ResNet-56).
  He et al. 2017, "Channel pruning for accelerating very deep neural networks" (residual
  blocks: only the first layer is pruned).
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
    "PRESETS",
    "SPEC",
    "ResNet",
    "ResNetConfig",
    "compact",
    "compact_resnet",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
    "resnet_flops",
    "resnet_group_ids",
]

KINDS = ("filters",)


def _check_ints(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"{name}: expected a non-empty tuple of positive ints, got {value!r}")
    for i, v in enumerate(value):
        check_positive_int(v, f"{name}[{i}]")
    return tuple(int(v) for v in value)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Configuration of :class:`ResNet`.

    Attributes:
      blocks_per_stage: ``n`` basic blocks per stage (depth ``6n + 2`` with three stages).
      widths: channels of each stage (non-decreasing: option-A shortcuts pad, never cut).
      inner_channels: output channels of every block's first convolution, ``n × len(widths)``
        entries in block order (compaction changes them); ``None`` means the stage widths.
      num_classes: outputs of the classifier.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    """

    blocks_per_stage: int = 9
    widths: tuple[int, ...] = (16, 32, 64)
    inner_channels: tuple[int, ...] | None = None
    num_classes: int = 10
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_positive_int(self.blocks_per_stage, "blocks_per_stage")
        widths = _check_ints("widths", self.widths)
        if list(widths) != sorted(widths):
            raise ValueError(
                f"widths: expected non-decreasing stage widths (option-A shortcuts zero-pad), "
                f"got {widths}"
            )
        object.__setattr__(self, "widths", widths)
        if self.inner_channels is not None:
            inner = _check_ints("inner_channels", self.inner_channels)
            if len(inner) != self.num_blocks:
                raise ValueError(
                    f"inner_channels: expected {self.num_blocks} entries (blocks_per_stage × "
                    f"stages), got {len(inner)}"
                )
            object.__setattr__(self, "inner_channels", inner)
        check_positive_int(self.num_classes, "num_classes")
        check_float_dtype(self.dtype)

    @property
    def depth(self) -> int:
        """Number of weight layers, ``2 · blocks + 2`` (56 for ResNet-56)."""
        return 2 * self.num_blocks + 2

    @property
    def num_blocks(self) -> int:
        """Number of basic blocks over all stages."""
        return self.blocks_per_stage * len(self.widths)

    @property
    def inner(self) -> tuple[int, ...]:
        """Output channels of every block's first convolution (the stage widths by default)."""
        if self.inner_channels is not None:
            return self.inner_channels
        return tuple(w for w in self.widths for _ in range(self.blocks_per_stage))

    @property
    def num_filters(self) -> int:
        """Number of filter groups ``p`` (the inner channels of all blocks)."""
        return sum(self.inner)

    def block_plan(self) -> list[tuple[int, int, int, int]]:
        """``(in_channels, inner_channels, out_channels, stride)`` of every block, in order."""
        plan, c_in, j = [], self.widths[0], 0
        for s, width in enumerate(self.widths):
            for b in range(self.blocks_per_stage):
                stride = 2 if s > 0 and b == 0 else 1
                plan.append((c_in, self.inner[j], width, stride))
                c_in, j = width, j + 1
        return plan


PRESETS: dict[str, ResNetConfig] = {
    "resnet56": ResNetConfig(blocks_per_stage=9),
    "resnet20": ResNetConfig(blocks_per_stage=3),
    "resnet-tiny": ResNetConfig(blocks_per_stage=1, widths=(4, 8, 16)),
}
"""Named configurations: He et al.'s ResNet-56 and ResNet-20, and a CPU-sized ResNet-8."""


def from_preset(name: str, **overrides: Any) -> ResNetConfig:
    """The preset ``name`` of :data:`PRESETS`, with optional field ``overrides``.

    Example: ``from_preset("resnet56", num_classes=100)``.
    """
    if name not in PRESETS:
        raise ValueError(
            f"name: unknown ResNet preset {name!r}; valid presets are {sorted(PRESETS)}"
        )
    return dataclasses.replace(PRESETS[name], **overrides)


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> ResNetConfig:
    """The preset ``preset`` with ``num_classes = num_outputs`` (any image size: the classifier
    follows global average pooling)."""
    return from_preset(preset, num_classes=num_outputs, **overrides)


def _shortcut(x: jax.Array, width: int, stride: int) -> jax.Array:
    """Option A: subsample by ``stride`` and zero-pad the channels to ``width``."""
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = width - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


class ResNet(nn.Module):
    """CIFAR ResNet with option-A shortcuts (see the module docstring) and inner-filter gates.

    Attributes:
      config: a :class:`ResNetConfig`.
    """

    config: ResNetConfig

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
            (block 0's inner filters first, as :func:`group_ids`).  Inner filter ``o`` of
            block ``j`` is multiplied by its gate after ``bn1``, before ReLU; a gate of 0
            removes exactly that filter's contribution.  Differentiable. Also accepted: one
            piece per layer (:func:`~jaxprune.models.base.split_gates`).

        Returns:
          Logits in the compute dtype ``config.dtype``.
        """
        cfg = self.config
        gates = None
        if filter_gates is not None:
            gates = split_gates(filter_gates, cfg.inner, cfg.dtype, "filter_gates")
        conv = functools.partial(
            nn.Conv,
            conv_general_dilated=conv_general_dilated,
            kernel_size=(3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=cfg.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=cfg.dtype,
        )
        x = jnp.asarray(x, cfg.dtype)
        x = nn.relu(norm(name="stem_bn")(conv(cfg.widths[0], name="stem_conv")(x)))
        for j, (_, inner, width, stride) in enumerate(cfg.block_plan()):
            y = conv(inner, strides=(stride, stride), name=f"block_{j}_conv1")(x)
            y = norm(name=f"block_{j}_bn1")(y)
            if gates is not None:
                y = y * gates[j]
            y = conv(width, name=f"block_{j}_conv2")(nn.relu(y))
            y = norm(name=f"block_{j}_bn2")(y)
            x = nn.relu(y + _shortcut(x, width, stride))
        x = x.mean(axis=(1, 2))
        return nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="classifier")(x)


def group_ids(
    variables: PyTree, config: ResNetConfig, kind: str = "filters"
) -> tuple[PyTree, GroupLayout]:
    """Group ids of the prunable structure of a :class:`ResNet`.

    Args:
      variables: ``model.init(...)`` output or its ``"params"`` entry; shapes only
        (``jax.eval_shape`` output works).
      config: the model's :class:`ResNetConfig`.
      kind: ``"filters"``: one group per output channel of every block's ``conv1`` (its kernel
        slice and ``bn1`` scale/bias), numbered block by block.

    Returns:
      ``(group_ids, layout)`` from :func:`~jaxprune.masks.groups.build_group_ids`: ``p =
      config.num_filters`` groups, one layout layer per block.

    References:
      Li et al. 2017, Section 4.2 (only the first layer of a residual block is pruned).
    """
    check_choice(kind, KINDS, "kind")
    specs = [
        filters(rf"(^|params/)block_{j}_conv1$", batchnorm=rf"(^|params/)block_{j}_bn1$")
        for j in range(config.num_blocks)
    ]
    return build_group_ids(variables, specs)


def flops(config: ResNetConfig, input_shape: tuple[int, ...] = (32, 32, 3)) -> int:
    """FLOPs of one forward pass of one image: 2 × multiply-accumulates.

    Counts the multiply-accumulates of every 3×3 convolution (``H_out·W_out·9·C_in·C_out``,
    ``H_out = ceil(H / stride)``) and of the classifier, times 2.  BatchNorm, ReLU, the
    shortcut additions and the global average pooling are not counted.  Halve it to compare
    with Li et al. 2017 (ResNet-56: ``flops / 2 ≈ 1.25e8``).

    Args:
      config: the model's :class:`ResNetConfig`.
      input_shape: ``(H, W, C)`` of one image (CIFAR's ``(32, 32, 3)`` by default).

    Returns:
      The FLOP count as an int.

    References:
      Li et al. 2017, Table 1 (FLOPs of ResNet-56 on CIFAR-10).
    """
    height, width, in_channels = image_shape(input_shape)
    macs = height * width * 9 * in_channels * config.widths[0]
    for c_in, inner, c_out, stride in config.block_plan():
        height, width = math.ceil(height / stride), math.ceil(width / stride)
        macs += height * width * 9 * (c_in * inner + inner * c_out)
    macs += config.widths[-1] * config.num_classes
    return 2 * macs


def compact(
    variables: PyTree, config: ResNetConfig, keep: Any, kind: str = "filters"
) -> tuple[PyTree, ResNetConfig]:
    """Remove the inner filters not kept; the smaller model computes what the masked one does.

    Inner filter ``o`` of block ``j`` goes with ``bn1``'s scale, bias, running mean and
    variance and with the input channel ``o`` of the block's ``conv2``.  The outputs equal
    those of the model with gate 0 (or :func:`~jaxprune.masks.mask.apply_group_mask` with mask
    0) on the removed filters, in eval mode.

    Args:
      variables: the model's variables (``params`` and ``batch_stats``, nested dicts).
      config: its :class:`ResNetConfig`.
      keep: boolean ``(p,)`` in group order (as ``filter_gates``); every block must keep at
        least one filter.
      kind: ``"filters"`` (:data:`KINDS`).

    Returns:
      ``(variables, config)`` of the compacted model (``config.inner_channels`` = filters kept).

    References:
      Li et al. 2017, Section 3.1 and 4.2.
    """
    check_choice(kind, KINDS, "kind")
    keep = binary_keep(keep)
    if keep.shape != (config.num_filters,):
        raise ValueError(
            f"keep: expected shape ({config.num_filters},), one entry per inner filter, "
            f"got {keep.shape}"
        )
    per_block = np.split(keep.astype(bool), np.cumsum(config.inner)[:-1])
    links = [
        Link(f"params/block_{j}_conv1", f"params/block_{j}_conv2", f"block_{j}_bn1")
        for j in range(config.num_blocks)
    ]
    kept = compact_links(variables, links, {link.layer: m for link, m in zip(links, per_block)})
    inner = tuple(int(m.sum()) for m in per_block)
    return kept, dataclasses.replace(config, inner_channels=inner)


resnet_group_ids = deprecated_alias(group_ids, "resnet_group_ids")
compact_resnet = deprecated_alias(compact, "compact_resnet")


def resnet_flops(config: ResNetConfig, *, image_size: int = 32, in_channels: int = 3) -> int:
    """Deprecated: ``flops(config, (image_size, image_size, in_channels))`` (:func:`flops`)."""
    warn_renamed("resnet_flops", flops)
    return flops(config, (image_size, image_size, in_channels))


SPEC = ModelSpec(
    name="resnet",
    module=ResNet,
    presets=PRESETS,
    default_preset="resnet-tiny",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(8, 8, 3),
    gate_keyword="filter_gates",
    stateful=True,
)
"""The ``"resnet"`` model spec."""
