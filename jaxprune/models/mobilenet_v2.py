"""MobileNetV2 whose prunable groups are the channels of each block's expanded width.

Sandler et al. (2018), Table 2: a 3×3 convolution with 32 channels (stride 2), then seven stages
of inverted-residual bottlenecks ``(t, c, n, s)`` = (1,16,1,1), (6,24,2,2), (6,32,3,2),
(6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1) (expansion ``t``, output channels ``c``,
``n`` blocks, the first with stride ``s``), a 1×1 convolution with 1280 channels, global average
pooling and a Dense classifier.  A block with input width ``C_in`` and hidden width ``h = t·C_in``
is (Sandler et al. (2018), Table 1 and Fig. 4d)::

    1×1 expand conv (absent when t = 1) → BN → ReLU6
    → 3×3 depthwise conv (stride s) → BN → ReLU6
    → 1×1 linear projection → BN  (+ the input when s = 1 and C_in = c)

Convolutions have no bias (BatchNorm follows each), 3×3 windows are padded by 1 on every side
(so a stride-2 output has ``ceil(H / 2)`` rows), kernels use He et al.'s fan-out normal
initialization; there is no dropout before the classifier.  The width multiplier ``w`` scales
every channel count ``c`` to ``make_divisible(c · w)`` (the nearest multiple of 8, at least 8,
never more than 10% below ``c · w``: the reference implementation's ``_make_divisible``), except
that the last 1×1 convolution keeps 1280 channels for ``w < 1`` (Sandler et al. (2018), Sec. 4).
Width 1.0 on 224×224 images: 3,504,872 parameters and 300.8M multiply-accumulates (Sandler et
al. (2018), Table 3: 3.4M and 300M; the count includes BatchNorm scales and biases).

The CIFAR variant (preset ``"mobilenet_v2-cifar"``) is the one of the CIFAR code Wolfe et al.
(2023) adopt (Sec. 6.2, footnote 3: Liu, K. (2017)): stem stride 1 and stride 1 for the second
stage (24 channels), so a 32×32 image reaches the head at 4×4; the blocks stay the paper's
(reading GS-8, docs/readings.md).

Pruning structure (kind ``"channels"``, reading GS-7): one group per channel ``o`` of the
expanded width of every block with ``t > 1`` — the expand kernel's column ``[..., o]`` and its
BatchNorm's ``scale[o]``, ``bias[o]``, the depthwise kernel's channel ``[..., o]`` and its
BatchNorm's ``scale[o]``, ``bias[o]``, and the projection kernel's input row ``[..., o, :]``.  A
gate multiplies channel ``o`` after the depthwise BN and ReLU6, so a gate of 0 removes the
channel exactly (the per-block mask of Ye et al. (2020)'s code).  The ``t = 1`` first block is
not pruned: its depthwise channels are the stem's output channels.  The projection outputs are
added to the residual stream and are not pruned either.

Layers are named ``stem_conv``, ``stem_bn``, ``block_{j}_expand``, ``block_{j}_expand_bn``,
``block_{j}_depthwise``, ``block_{j}_depthwise_bn``, ``block_{j}_project``,
``block_{j}_project_bn`` (``j`` over all blocks; no ``expand`` layers when ``t = 1``),
``head_conv``, ``head_bn`` and ``classifier``; layer paths are ``"params/block_3_expand"``.

References:
  Sandler et al. (2018), "MobileNetV2: Inverted residuals and linear bottlenecks", Table 1
  (the block), Table 2 (the architecture), Table 3 (parameters and multiply-adds), Sec. 4
  (width multiplier).
  Ye et al. (2020), "Good subnetworks provably exist: Pruning via greedy forward selection"
  (channel pruning of MobileNetV2 on ImageNet; the mask of their released code, reading GS-7);
  Wolfe et al. (2023), Sec. 6.2 (MobileNetV2 on CIFAR-10 and ImageNet).
  Liu, K. (2017), "pytorch-cifar" (the CIFAR strides).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_choice, check_positive_int, check_real
from jaxprune.masks.compact import Link
from jaxprune.masks.compact import compact as compact_links
from jaxprune.masks.groups import build_group_ids, filters
from jaxprune.masks.layout import GroupLayout
from jaxprune.models.base import (
    ModelSpec,
    binary_keep,
    check_float_dtype,
    image_shape,
    split_gates,
)
from jaxprune.models.conv import conv_general_dilated
from jaxprune.typing import PyTree

__all__ = [
    "CIFAR_STAGES",
    "HEAD_CHANNELS",
    "KINDS",
    "PRESETS",
    "SPEC",
    "STEM_CHANNELS",
    "TABLE2_STAGES",
    "Block",
    "MobileNetV2",
    "MobileNetV2Config",
    "Stage",
    "compact",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
    "make_divisible",
]

KINDS = ("channels",)


class Stage(NamedTuple):
    """One row ``(t, c, n, s)`` of Sandler et al. (2018), Table 2.

    Attributes:
      expansion: ``t``, hidden width over input width (1: no expand convolution).
      channels: ``c``, output channels before the width multiplier.
      repeats: ``n``, number of blocks.
      stride: ``s``, stride of the first block (the others have stride 1).
    """

    expansion: int
    channels: int
    repeats: int
    stride: int


class Block(NamedTuple):
    """One inverted-residual block of a :class:`MobileNetV2Config` (see ``block_plan``).

    Attributes:
      in_channels: input width ``C_in``.
      hidden: expanded width (the depthwise convolution's channels).
      out_channels: projection width.
      stride: stride of the depthwise convolution.
      expand: the block has a 1×1 expand convolution (``t > 1``; then its hidden channels are
        prunable).
      residual: the input is added to the output (stride 1 and ``C_in = out_channels``).
    """

    in_channels: int
    hidden: int
    out_channels: int
    stride: int
    expand: bool
    residual: bool


TABLE2_STAGES = (
    Stage(1, 16, 1, 1),
    Stage(6, 24, 2, 2),
    Stage(6, 32, 3, 2),
    Stage(6, 64, 4, 2),
    Stage(6, 96, 3, 1),
    Stage(6, 160, 3, 2),
    Stage(6, 320, 1, 1),
)
"""The bottleneck stages of Sandler et al. (2018), Table 2 (ImageNet strides)."""

CIFAR_STAGES = tuple(
    stage._replace(stride=1) if i == 1 else stage for i, stage in enumerate(TABLE2_STAGES)
)
"""Table 2 with the second stage (24 channels) at stride 1: the CIFAR variant of Liu, K. (2017)."""

STEM_CHANNELS = 32
"""Output channels of the 3×3 stem convolution before the width multiplier (Table 2)."""

HEAD_CHANNELS = 1280
"""Output channels of the last 1×1 convolution before the width multiplier (Table 2)."""


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor``, and raised
    by one ``divisor`` when rounding went more than 10% below ``value``.

    The channel rounding of the reference MobileNetV2 implementation (``_make_divisible`` of the
    TensorFlow-slim and torchvision models): ``make_divisible(24 * 0.25) = 8``,
    ``make_divisible(160 * 0.35) = 56``.

    Args:
      value: a channel count times the width multiplier, finite and > 0.
      divisor: the multiple, a positive int.

    Returns:
      The rounded channel count, a positive int.

    References:
      Sandler et al. (2018), Sec. 4 (width multiplier); reference implementation's
      ``_make_divisible``.
    """
    value = check_real(value, "value", minimum=0.0, strict=True)
    divisor = check_positive_int(divisor, "divisor")
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _check_stages(value: Any) -> tuple[Stage, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or not value:
        raise ValueError(
            f"stages: expected a non-empty tuple of (expansion, channels, repeats, stride) "
            f"rows, got {value!r}"
        )
    stages = []
    for i, row in enumerate(value):
        if isinstance(row, (str, bytes)) or not isinstance(row, (tuple, list)) or len(row) != 4:
            raise ValueError(
                f"stages[{i}]: expected (expansion, channels, repeats, stride), got {row!r}"
            )
        stages.append(
            Stage(*(check_positive_int(v, f"stages[{i}].{f}") for f, v in zip(Stage._fields, row)))
        )
    return tuple(stages)


@dataclasses.dataclass(frozen=True)
class MobileNetV2Config:
    """Configuration of :class:`MobileNetV2`.

    Attributes:
      stages: ``(t, c, n, s)`` rows (:class:`Stage`), channels before the width multiplier;
        :data:`TABLE2_STAGES` (ImageNet) or :data:`CIFAR_STAGES`.
      width_multiplier: ``w > 0``; every channel count ``c`` becomes ``make_divisible(c · w)``
        (the head's 1280 only for ``w > 1``).
      stem_stride: stride of the stem convolution (2 on ImageNet, 1 on CIFAR).
      hidden_channels: expanded width of every block, in block order (compaction changes them);
        ``None`` means ``t · C_in``.  A ``t = 1`` block has no expand convolution, so its entry
        must be its input width.
      num_classes: outputs of the classifier.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    """

    stages: tuple[Stage, ...] = TABLE2_STAGES
    width_multiplier: float = 1.0
    stem_stride: int = 2
    hidden_channels: tuple[int, ...] | None = None
    num_classes: int = 1000
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "stages", _check_stages(self.stages))
        multiplier = check_real(self.width_multiplier, "width_multiplier", minimum=0.0, strict=True)
        object.__setattr__(self, "width_multiplier", multiplier)
        check_positive_int(self.stem_stride, "stem_stride")
        check_positive_int(self.num_classes, "num_classes")
        check_float_dtype(self.dtype)
        if self.hidden_channels is None:
            return
        hidden = self.hidden_channels
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (tuple, list)):
            raise ValueError(f"hidden_channels: expected a tuple of positive ints, got {hidden!r}")
        if len(hidden) != self.num_blocks:
            raise ValueError(
                f"hidden_channels: expected {self.num_blocks} entries (one per block), got "
                f"{len(hidden)}"
            )
        hidden = tuple(check_positive_int(v, f"hidden_channels[{j}]") for j, v in enumerate(hidden))
        object.__setattr__(self, "hidden_channels", hidden)
        for j, block in enumerate(self.block_plan()):
            if not block.expand and block.hidden != block.in_channels:
                raise ValueError(
                    f"hidden_channels[{j}]: block {j} has expansion 1 (no expand convolution), "
                    f"so its hidden width is its input width {block.in_channels}, got "
                    f"{block.hidden}"
                )

    @property
    def stem_channels(self) -> int:
        """Output channels of the stem, ``make_divisible(32 w)``."""
        return make_divisible(STEM_CHANNELS * self.width_multiplier)

    @property
    def head_channels(self) -> int:
        """Output channels of the last 1×1 convolution, ``make_divisible(1280 max(1, w))``."""
        return make_divisible(HEAD_CHANNELS * max(1.0, self.width_multiplier))

    @property
    def num_blocks(self) -> int:
        """Number of inverted-residual blocks, ``Σ n``."""
        return sum(stage.repeats for stage in self.stages)

    def block_plan(self) -> list[Block]:
        """The :class:`Block` of every inverted-residual block, in order."""
        plan, c_in, hidden = [], self.stem_channels, self.hidden_channels
        for stage in self.stages:
            c_out = make_divisible(stage.channels * self.width_multiplier)
            for b in range(stage.repeats):
                stride = stage.stride if b == 0 else 1
                width = stage.expansion * c_in if hidden is None else hidden[len(plan)]
                residual = stride == 1 and c_in == c_out
                plan.append(Block(c_in, width, c_out, stride, stage.expansion > 1, residual))
                c_in = c_out
        return plan

    @property
    def hidden(self) -> tuple[int, ...]:
        """Expanded width of every block (``t · C_in`` unless compacted)."""
        return tuple(block.hidden for block in self.block_plan())

    @property
    def prunable_blocks(self) -> tuple[int, ...]:
        """Indices of the blocks with an expand convolution (``t > 1``), whose channels are
        groups."""
        return tuple(j for j, block in enumerate(self.block_plan()) if block.expand)

    @property
    def prunable_widths(self) -> tuple[int, ...]:
        """Hidden width of every prunable block, in group order."""
        hidden = self.hidden
        return tuple(hidden[j] for j in self.prunable_blocks)

    @property
    def num_channels(self) -> int:
        """Number of channel groups ``p`` (the hidden widths of the prunable blocks)."""
        return sum(self.prunable_widths)


PRESETS: dict[str, MobileNetV2Config] = {
    "mobilenet_v2": MobileNetV2Config(),
    "mobilenet_v2-cifar": MobileNetV2Config(stages=CIFAR_STAGES, stem_stride=1, num_classes=10),
    "mobilenet_v2-tiny": MobileNetV2Config(
        stages=tuple(stage._replace(repeats=1) for stage in CIFAR_STAGES[:5]),
        width_multiplier=0.25,
        stem_stride=1,
        num_classes=10,
    ),
}
"""Named configurations: Sandler et al.'s ImageNet MobileNetV2 (224×224), the CIFAR variant
(32×32), and a CPU-sized one (width 0.25, the first five CIFAR stages with one block each: an
unpruned ``t = 1`` block, a residual block, two stride-2 blocks and a stride-1 block that widens
16 → 24; 8×8 images reach the head at 2×2)."""


def from_preset(name: str, **overrides: Any) -> MobileNetV2Config:
    """The preset ``name`` of :data:`PRESETS`, with optional field ``overrides``.

    Example: ``from_preset("mobilenet_v2-cifar", width_multiplier=0.5)``.
    """
    if name not in PRESETS:
        raise ValueError(
            f"name: unknown MobileNetV2 preset {name!r}; valid presets are {sorted(PRESETS)}"
        )
    return dataclasses.replace(PRESETS[name], **overrides)


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> MobileNetV2Config:
    """The preset ``preset`` with ``num_classes = num_outputs`` (any ``(H, W, C)`` image: the
    classifier follows global average pooling)."""
    image_shape(input_shape)
    return from_preset(preset, num_classes=num_outputs, **overrides)


def _split_gates(gates: Any, config: MobileNetV2Config) -> dict[int, jax.Array]:
    """The gates (flat ``(p,)`` or per-block pieces) as one ``(hidden,)`` piece per prunable
    block index."""
    pieces = split_gates(gates, config.prunable_widths, config.dtype, "channel_gates")
    return dict(zip(config.prunable_blocks, pieces))


class MobileNetV2(nn.Module):
    """MobileNetV2 (see the module docstring) with per-channel gates on the expanded widths.

    Attributes:
      config: a :class:`MobileNetV2Config`.
    """

    config: MobileNetV2Config

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, channel_gates: jax.Array | None = None
    ) -> jax.Array:
        """``(n, H, W, C)`` images (224×224×3 on ImageNet) to ``(n, num_classes)`` logits.

        Args:
          x: images, NHWC.
          train: BatchNorm uses batch statistics and updates ``batch_stats`` (apply with
            ``mutable=["batch_stats"]``); otherwise it uses the running statistics.
          channel_gates: optional ``(p,)`` gates, ``p = config.num_channels``, in group order
            (the prunable blocks' hidden channels, block by block, as :func:`group_ids`).
            Hidden channel ``o`` of block ``j`` is multiplied by its gate after the depthwise
            BatchNorm and ReLU6; a gate of 0 removes exactly that channel.  Differentiable. Also accepted: one
            piece per layer (:func:`~jaxprune.models.base.split_gates`).

        Returns:
          Logits in the compute dtype ``config.dtype``.

        References:
          Sandler et al. (2018), Tables 1–2; reading GS-7 (docs/readings.md) (the mask).
        """
        cfg = self.config
        gates = {} if channel_gates is None else _split_gates(channel_gates, cfg)
        conv = functools.partial(
            nn.Conv,
            conv_general_dilated=conv_general_dilated,
            use_bias=False,
            dtype=cfg.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        )
        window = {"kernel_size": (3, 3), "padding": ((1, 1), (1, 1))}
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=cfg.dtype,
        )
        x = jnp.asarray(x, cfg.dtype)
        stride = (cfg.stem_stride, cfg.stem_stride)
        x = conv(cfg.stem_channels, strides=stride, name="stem_conv", **window)(x)
        x = nn.relu6(norm(name="stem_bn")(x))
        for j, block in enumerate(cfg.block_plan()):
            y = x
            if block.expand:
                y = conv(block.hidden, kernel_size=(1, 1), name=f"block_{j}_expand")(y)
                y = nn.relu6(norm(name=f"block_{j}_expand_bn")(y))
            y = conv(
                block.hidden,
                strides=(block.stride, block.stride),
                feature_group_count=block.hidden,
                name=f"block_{j}_depthwise",
                **window,
            )(y)
            y = nn.relu6(norm(name=f"block_{j}_depthwise_bn")(y))
            if j in gates:
                y = y * gates[j]
            y = conv(block.out_channels, kernel_size=(1, 1), name=f"block_{j}_project")(y)
            y = norm(name=f"block_{j}_project_bn")(y)
            x = y + x if block.residual else y
        x = conv(cfg.head_channels, kernel_size=(1, 1), name="head_conv")(x)
        x = nn.relu6(norm(name="head_bn")(x)).mean(axis=(1, 2))
        return nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="classifier")(x)


def _tie_pairs(ids: PyTree, layout: GroupLayout) -> tuple[PyTree, GroupLayout]:
    """Merge layout layers ``2k`` and ``2k + 1`` (equal sizes) into one layer ``k``: group ``i``
    of either becomes group ``i`` of the merged layer, numbered over the merged layers."""
    sizes = np.bincount(layout.layer_of_group, minlength=layout.num_layers)
    first, second = sizes[0::2], sizes[1::2]
    if first.shape != second.shape or np.any(first != second):
        raise ValueError(
            f"variables: the expand and depthwise convolutions of a block must have equal widths, "
            f"got {first.tolist()} and {second.tolist()}"
        )
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    merged_starts = np.concatenate([[0], np.cumsum(first)[:-1]])
    old = np.arange(layout.num_groups)
    local = old - starts[layout.layer_of_group]
    new_id = (merged_starts[layout.layer_of_group // 2] + local).astype(np.int32)

    def relabel(leaf: np.ndarray) -> np.ndarray:
        leaf = np.asarray(leaf)
        return np.where(leaf >= 0, new_id[np.maximum(leaf, 0)], -1).astype(np.int32)

    names = tuple(layout.layer_names[0::2])
    return jax.tree_util.tree_map(relabel, ids), GroupLayout.from_sizes(names, tuple(first))


def group_ids(
    variables: PyTree, config: MobileNetV2Config, kind: str = "channels"
) -> tuple[PyTree, GroupLayout]:
    """Group ids of the hidden channels of a :class:`MobileNetV2`.

    Args:
      variables: ``model.init(...)`` output (``{"params": ..., "batch_stats": ...}``) or its
        ``"params"`` entry; shapes only (``jax.eval_shape`` output works).
      config: the model's :class:`MobileNetV2Config`.
      kind: ``"channels"``: one group per hidden channel ``o`` of every block with ``t > 1``:
        ``block_{j}_expand`` kernel ``[..., o]``, ``block_{j}_expand_bn`` scale/bias ``[o]``,
        ``block_{j}_depthwise`` kernel ``[..., o]``, ``block_{j}_depthwise_bn`` scale/bias
        ``[o]`` and ``block_{j}_project`` kernel ``[..., o, :]``, numbered block by block.
        BatchNorm running statistics are not parameters and stay ungrouped.

    Returns:
      ``(group_ids, layout)``: ``p = config.num_channels`` groups, one layout layer per
      prunable block, named by its expand convolution's path.

    Raises:
      ValueError: ``kind`` is not ``"channels"``; ``variables`` do not match ``config``.

    References:
      Ye et al. (2020) (MobileNetV2 channels); reading GS-7 (docs/readings.md).
    """
    check_choice(kind, KINDS, "kind")
    specs = []
    for j in config.prunable_blocks:
        specs.append(
            filters(rf"(^|params/)block_{j}_expand$", batchnorm=rf"(^|params/)block_{j}_expand_bn$")
        )
        specs.append(
            filters(
                rf"(^|params/)block_{j}_depthwise$",
                batchnorm=rf"(^|params/)block_{j}_depthwise_bn$",
                next_layer=rf"(^|params/)block_{j}_project$",
            )
        )
    ids, layout = _tie_pairs(*build_group_ids(variables, specs))
    if layout.num_groups != config.num_channels:
        raise ValueError(
            f"config: {config.num_channels} hidden channels (config.num_channels) do not match "
            f"the {layout.num_groups} of variables"
        )
    return ids, layout


def flops(config: MobileNetV2Config, input_shape: tuple[int, ...] = (224, 224, 3)) -> int:
    """FLOPs of one forward pass of one image: 2 × multiply-accumulates.

    Counts the multiply-accumulates of the stem (``H_1·W_1·9·C·C_stem``), of every block's
    expand (``H·W·C_in·h``), depthwise (``H_out·W_out·9·h``: one 3×3 window per channel) and
    projection (``H_out·W_out·h·C_out``) convolutions, of the head convolution and of the
    classifier, with ``H_out = ceil(H / stride)``; times 2.  BatchNorm, ReLU6, the residual
    additions and the pooling are not counted.  Halve it to compare with Sandler et al. (2018),
    who count multiply-adds (width 1.0, 224×224: ``flops / 2 ≈ 300M``).

    Args:
      config: the model's :class:`MobileNetV2Config`.
      input_shape: ``(H, W, C)`` of one image (ImageNet's ``(224, 224, 3)`` by default).

    Returns:
      The FLOP count as an int.

    References:
      Sandler et al. (2018), Table 3 (300M multiply-adds) and Sec. 3.3 (the cost of a block,
      ``h·w·d'·t(d' + k² + d'')``).
    """
    height, width, channels = image_shape(input_shape)
    height = math.ceil(height / config.stem_stride)
    width = math.ceil(width / config.stem_stride)
    macs = height * width * 9 * channels * config.stem_channels
    for block in config.block_plan():
        if block.expand:
            macs += height * width * block.in_channels * block.hidden
        height, width = math.ceil(height / block.stride), math.ceil(width / block.stride)
        macs += height * width * block.hidden * (9 + block.out_channels)
    c_last = config.block_plan()[-1].out_channels
    macs += height * width * c_last * config.head_channels
    macs += config.head_channels * config.num_classes
    return 2 * macs


def compact(
    variables: PyTree, config: MobileNetV2Config, keep: Any, kind: str = "channels"
) -> tuple[PyTree, MobileNetV2Config]:
    """Remove the hidden channels not kept; the smaller model computes what the gated one does.

    Hidden channel ``o`` of block ``j`` goes with the expand convolution's output ``o`` and its
    BatchNorm entries (scale, bias, running mean and variance), the depthwise convolution's
    channel ``o`` (its kernel ``(3, 3, 1, h)`` sliced on the last axis, like any convolution's
    outputs) and its BatchNorm entries, and the projection's input channel ``o``.  The outputs
    equal those of the model with gate 0 on the removed channels, in eval mode.

    Args:
      variables: the model's variables (``params`` and ``batch_stats``, nested dicts).
      config: its :class:`MobileNetV2Config`.
      keep: boolean ``(p,)`` in group order (as ``channel_gates``); every prunable block must
        keep at least one channel.
      kind: ``"channels"`` (:data:`KINDS`).

    Returns:
      ``(variables, config)`` of the compacted model (``config.hidden_channels`` = channels
      kept; ``t = 1`` blocks unchanged).

    Raises:
      ValueError: ``keep`` has the wrong shape or keeps no channel of a block; ``variables``
        do not match ``config``.

    References:
      Ye et al. (2020) (MobileNetV2 channels); Li et al. (2017), Section 3.1 (removing
      filters and the next layer's kernels).
    """
    check_choice(kind, KINDS, "kind")
    keep = binary_keep(keep)
    if keep.shape != (config.num_channels,):
        raise ValueError(
            f"keep: expected shape ({config.num_channels},), one entry per hidden channel of the "
            f"prunable blocks, got {keep.shape}"
        )
    per_block = np.split(keep.astype(bool), np.cumsum(config.prunable_widths)[:-1])
    links, masks = [], {}
    for j, mask in zip(config.prunable_blocks, per_block):
        expand = Link(f"params/block_{j}_expand", batchnorm=f"block_{j}_expand_bn")
        depthwise = Link(
            f"params/block_{j}_depthwise", f"params/block_{j}_project", f"block_{j}_depthwise_bn"
        )
        links += [expand, depthwise]
        masks[expand.layer] = masks[depthwise.layer] = mask
    kept = compact_links(variables, links, masks)
    hidden = list(config.hidden)
    for j, mask in zip(config.prunable_blocks, per_block):
        hidden[j] = int(mask.sum())
    return kept, dataclasses.replace(config, hidden_channels=tuple(hidden))


SPEC = ModelSpec(
    name="mobilenet_v2",
    module=MobileNetV2,
    presets=PRESETS,
    default_preset="mobilenet_v2-tiny",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(8, 8, 3),
    gate_keyword="channel_gates",
    stateful=True,
)
"""The ``"mobilenet_v2"`` model spec."""
