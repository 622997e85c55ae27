"""ResNet-34 (and ResNet-18) with projection shortcuts, pruned by the inner channels of its blocks.

He et al. (2016), Table 1: a stem, four stages of basic blocks with 64, 128, 256, 512 channels
(``[3, 4, 6, 3]`` blocks for ResNet-34, ``[2, 2, 2, 2]`` for ResNet-18; the first block of
stages 2–4 has stride 2), global average pooling and a Dense classifier.  A basic block is
``conv1 (3×3) → BN → ReLU → conv2 (3×3) → BN → (+ shortcut) → ReLU``; 3×3 convolutions are
padded by 1 on every side and have no bias.

Stems (``ResNet34Config.stem``):

* ``"imagenet"``: He et al.'s 7×7 stride-2 convolution (padding 3) → BN → ReLU → 3×3 stride-2
  max pooling (padding 1): a 224×224 image reaches the first stage at 56×56.
* ``"cifar"``: one 3×3 stride-1 convolution → BN → ReLU and no pooling, the common CIFAR
  adaptation of Liu, K. (2017)'s repository, whose settings Wolfe et al. (2023), Sec. 6.2
  (footnote 3) adopt for their CIFAR-10 ResNet-34.

Shortcuts are **option B** of He et al. (2016), Sec. 4.1 (as torchvision's ``resnet34`` and
Ye et al. (2020)'s ImageNet experiments): the identity, and where the stride or the width
changes a projection, a 1×1 convolution with the block's stride and no bias followed by
BatchNorm.  With 1000 classes ResNet-34 has 21,797,672 parameters (torchvision's count) and
3.66e9 multiply-accumulates on 224×224 (He et al. report 3.6e9).

Pruning structure (Ye et al. 2020; Wolfe et al. 2023, Sec. 6.2): one group per inner channel
of every basic block — an output channel of ``conv1`` with its ``bn1`` scale and bias; its
input slice of ``conv2`` leaves with it on compaction.  The second convolution's outputs are
added to the shortcut and are not pruned, nor are the stem, the projections and the classifier
(as in :mod:`jaxprune.models.resnet`, whose group ids and compaction this module shares).
Layers are named ``stem_conv``, ``stem_bn``, ``block_{j}_conv1``, ``block_{j}_bn1``,
``block_{j}_conv2``, ``block_{j}_bn2``, ``block_{j}_proj_conv``, ``block_{j}_proj_bn``
(``j = 0..blocks-1`` over all stages; projections only where the shape changes) and
``classifier``.

References:
  He et al. (2016), "Deep residual learning for image recognition", Sec. 3.3 (projection
  shortcuts) and 4.1 (option B) and Table 1 (ResNet-18/34: stages, widths, 3.6e9 FLOPs).
  Ye et al. (2020), "Good subnetworks provably exist: pruning via greedy forward selection"
  (ResNet-34 on ImageNet, the channels inside the residual blocks selected greedily).
  Wolfe et al. (2023), Sec. 6.2 (ResNet-34 on CIFAR-10 and ImageNet).
  Liu, K. (2017), "pytorch-cifar" (the CIFAR stem).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxprune._validation import check_choice, check_positive_int
from jaxprune.masks.layout import GroupLayout
from jaxprune.models import resnet
from jaxprune.models.base import ModelSpec, check_float_dtype, image_shape
from jaxprune.models.conv import conv_general_dilated
from jaxprune.models.resnet import _check_ints
from jaxprune.models.vgg import _conv_init, _split_gates
from jaxprune.typing import PyTree

__all__ = [
    "KINDS",
    "PRESETS",
    "SPEC",
    "STEMS",
    "ResNet34",
    "ResNet34Config",
    "compact",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
]

KINDS = ("filters",)

STEMS = ("imagenet", "cifar")
"""The stems: He et al.'s 7×7/2 convolution with 3×3/2 max pooling, or one 3×3/1 convolution."""


@dataclasses.dataclass(frozen=True)
class ResNet34Config:
    """Configuration of :class:`ResNet34`.

    Attributes:
      blocks_per_stage: basic blocks of each stage (``(3, 4, 6, 3)``: ResNet-34).
      widths: channels of each stage, one per entry of ``blocks_per_stage``; the stem has
        ``widths[0]`` channels.
      stem: ``"imagenet"`` or ``"cifar"`` (:data:`STEMS`, see the module docstring).
      inner_channels: output channels of every block's first convolution, ``sum(
        blocks_per_stage)`` entries in block order (compaction changes them); ``None`` means
        the stage widths.
      num_classes: outputs of the classifier.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    """

    blocks_per_stage: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "imagenet"
    inner_channels: tuple[int, ...] | None = None
    num_classes: int = 1000
    dtype: Any = jnp.float32

    def __post_init__(self):
        blocks = _check_ints("blocks_per_stage", self.blocks_per_stage)
        widths = _check_ints("widths", self.widths)
        if len(widths) != len(blocks):
            raise ValueError(
                f"widths: expected {len(blocks)} stage widths (one per entry of "
                f"blocks_per_stage), got {widths}"
            )
        object.__setattr__(self, "blocks_per_stage", blocks)
        object.__setattr__(self, "widths", widths)
        check_choice(self.stem, STEMS, "stem")
        if self.inner_channels is not None:
            inner = _check_ints("inner_channels", self.inner_channels)
            if len(inner) != self.num_blocks:
                raise ValueError(
                    f"inner_channels: expected {self.num_blocks} entries (one per block), got "
                    f"{len(inner)}"
                )
            object.__setattr__(self, "inner_channels", inner)
        check_positive_int(self.num_classes, "num_classes")
        check_float_dtype(self.dtype)

    @property
    def depth(self) -> int:
        """Number of weight layers on the main path, ``2 · blocks + 2`` (34 for ResNet-34)."""
        return 2 * self.num_blocks + 2

    @property
    def num_blocks(self) -> int:
        """Number of basic blocks over all stages."""
        return sum(self.blocks_per_stage)

    @property
    def inner(self) -> tuple[int, ...]:
        """Output channels of every block's first convolution (the stage widths by default)."""
        if self.inner_channels is not None:
            return self.inner_channels
        return tuple(w for w, n in zip(self.widths, self.blocks_per_stage) for _ in range(n))

    @property
    def num_filters(self) -> int:
        """Number of filter groups ``p`` (the inner channels of all blocks)."""
        return sum(self.inner)

    def block_plan(self) -> list[tuple[int, int, int, int]]:
        """``(in_channels, inner_channels, out_channels, stride)`` of every block, in order; a
        block has a projection shortcut where ``stride > 1`` or ``in_channels != out_channels``."""
        plan, c_in, j = [], self.widths[0], 0
        for s, (width, count) in enumerate(zip(self.widths, self.blocks_per_stage)):
            for b in range(count):
                stride = 2 if s > 0 and b == 0 else 1
                plan.append((c_in, self.inner[j], width, stride))
                c_in, j = width, j + 1
        return plan


PRESETS: dict[str, ResNet34Config] = {
    "resnet34": ResNet34Config(),
    "resnet34-cifar": ResNet34Config(stem="cifar", num_classes=10),
    "resnet18": ResNet34Config(blocks_per_stage=(2, 2, 2, 2)),
    "resnet18-cifar": ResNet34Config(blocks_per_stage=(2, 2, 2, 2), stem="cifar", num_classes=10),
    "resnet34-tiny": ResNet34Config(
        blocks_per_stage=(1, 1, 1, 1), widths=(4, 8, 16, 32), stem="cifar", num_classes=10
    ),
}
"""Named configurations: ResNet-34 and ResNet-18 with the ImageNet stem (1000 classes) or the
CIFAR stem (10 classes), and a CPU-sized one (one block per stage, widths 4–32, CIFAR stem)."""


def from_preset(name: str, **overrides: Any) -> ResNet34Config:
    """The preset ``name`` of :data:`PRESETS`, with optional field ``overrides``.

    Example: ``from_preset("resnet34-cifar", num_classes=100)``.
    """
    if name not in PRESETS:
        raise ValueError(
            f"name: unknown ResNet-34 preset {name!r}; valid presets are {sorted(PRESETS)}"
        )
    return dataclasses.replace(PRESETS[name], **overrides)


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> ResNet34Config:
    """The preset ``preset`` with ``num_classes = num_outputs`` for ``(H, W, C)`` images of any
    size (the classifier follows global average pooling)."""
    image_shape(input_shape)
    return from_preset(preset, num_classes=num_outputs, **overrides)


class ResNet34(nn.Module):
    """ResNet-18/34 with projection shortcuts (see the module docstring) and inner-channel gates.

    Attributes:
      config: a :class:`ResNet34Config`.
    """

    config: ResNet34Config

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, filter_gates: jax.Array | None = None
    ) -> jax.Array:
        """``(n, H, W, C)`` images to ``(n, num_classes)`` logits.

        Args:
          x: images, NHWC (224×224×3 on ImageNet, 32×32×3 on CIFAR).
          train: BatchNorm uses batch statistics and updates ``batch_stats`` (apply with
            ``mutable=["batch_stats"]``); otherwise it uses the running statistics.
          filter_gates: optional ``(p,)`` gates, ``p = config.num_filters``, in group order
            (block 0's inner channels first, as :func:`group_ids`).  Inner channel ``o`` of
            block ``j`` is multiplied by its gate after ``bn1``, before ReLU; a gate of 0
            removes exactly that channel's contribution.  Differentiable. Also accepted: one
            piece per layer (:func:`~jaxprune.models.base.split_gates`).

        Returns:
          Logits in the compute dtype ``config.dtype``.

        Raises:
          ValueError: ``x`` is not 4-D, or ``filter_gates`` does not have shape ``(p,)``.
        """
        cfg = self.config
        if jnp.ndim(x) != 4:
            raise ValueError(
                f"x: expected (n, height, width, channels) images, got shape {jnp.shape(x)}"
            )
        gates = _split_gates(filter_gates, cfg.inner, cfg.dtype)
        conv = functools.partial(
            nn.Conv,
            conv_general_dilated=conv_general_dilated,
            use_bias=False,
            dtype=cfg.dtype,
            kernel_init=_conv_init,
        )
        conv3 = functools.partial(conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)))
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=cfg.dtype,
        )
        x = jnp.asarray(x, cfg.dtype)
        if cfg.stem == "imagenet":
            x = conv(
                cfg.widths[0], (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), name="stem_conv"
            )(x)
        else:
            x = conv3(cfg.widths[0], name="stem_conv")(x)
        x = nn.relu(norm(name="stem_bn")(x))
        if cfg.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for j, (c_in, inner, width, stride) in enumerate(cfg.block_plan()):
            y = conv3(inner, strides=(stride, stride), name=f"block_{j}_conv1")(x)
            y = norm(name=f"block_{j}_bn1")(y)
            if gates is not None:
                y = y * gates[j]
            y = conv3(width, name=f"block_{j}_conv2")(nn.relu(y))
            y = norm(name=f"block_{j}_bn2")(y)
            if stride > 1 or c_in != width:
                x = conv(
                    width,
                    (1, 1),
                    strides=(stride, stride),
                    padding="VALID",
                    name=f"block_{j}_proj_conv",
                )(x)
                x = norm(name=f"block_{j}_proj_bn")(x)
            x = nn.relu(y + x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="classifier")(x)


def group_ids(
    variables: PyTree, config: ResNet34Config, kind: str = "filters"
) -> tuple[PyTree, GroupLayout]:
    """Group ids of the prunable structure of a :class:`ResNet34`: its blocks' inner channels.

    Args:
      variables: ``model.init(...)`` output or its ``"params"`` entry; shapes only
        (``jax.eval_shape`` output works).
      config: the model's :class:`ResNet34Config`.
      kind: ``"filters"``: one group per output channel of every block's ``conv1`` (its kernel
        slice and ``bn1`` scale/bias), numbered block by block; the stem, ``conv2``, the
        projections and the classifier are ungrouped.

    Returns:
      ``(group_ids, layout)`` from :func:`~jaxprune.masks.groups.build_group_ids`: ``p =
      config.num_filters`` groups, one layout layer per block (``"params/block_{j}_conv1"``).

    Raises:
      ValueError: an unknown ``kind``, or ``variables`` without a block's ``conv1``/``bn1``.

    References:
      Ye et al. (2020) and Wolfe et al. (2023), Sec. 6.2 (channel selection inside the
      residual blocks of ResNet-34).
    """
    return resnet.group_ids(variables, config, kind)


def flops(config: ResNet34Config, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of one image: 2 × multiply-accumulates.

    Counts the multiply-accumulates of every convolution (``H_out·W_out·k²·C_in·C_out``; every
    stride-2 layer, max pooling included, gives ``H_out = ceil(H / 2)``): the stem (7×7 at
    half resolution, or 3×3), both 3×3 convolutions of every block, the 1×1 projections, and
    the classifier (``widths[-1] · num_classes``), times 2.  BatchNorm, ReLU, pooling and the
    shortcut additions are not counted.  Halve it to compare with He et al. (2016), Table 1
    (ResNet-34 on 224×224: ``flops / 2 = 3.66e9``, reported as 3.6e9).

    Args:
      config: the model's :class:`ResNet34Config`.
      input_shape: ``(H, W, C)`` of one image.

    Returns:
      The FLOP count as an int.

    Raises:
      ValueError: ``input_shape`` is not three positive ints.

    References:
      He et al. (2016), Table 1 (FLOPs of ResNet-18/34).
    """
    height, width, in_channels = image_shape(input_shape)
    if config.stem == "imagenet":
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        macs = height * width * 49 * in_channels * config.widths[0]
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    else:
        macs = height * width * 9 * in_channels * config.widths[0]
    for c_in, inner, c_out, stride in config.block_plan():
        height, width = math.ceil(height / stride), math.ceil(width / stride)
        macs += height * width * 9 * (c_in * inner + inner * c_out)
        if stride > 1 or c_in != c_out:
            macs += height * width * c_in * c_out
    macs += config.widths[-1] * config.num_classes
    return 2 * macs


def compact(
    variables: PyTree, config: ResNet34Config, keep: Any, kind: str = "filters"
) -> tuple[PyTree, ResNet34Config]:
    """Remove the inner channels not kept; the smaller model computes what the gated one does.

    Inner channel ``o`` of block ``j`` goes with ``conv1``'s kernel slice, ``bn1``'s scale,
    bias, running mean and variance, and the input slice ``o`` of the block's ``conv2``.  The
    outputs equal those of the model with gate 0 (or
    :func:`~jaxprune.masks.mask.apply_group_mask` with mask 0) on the removed channels, in
    eval mode.

    Args:
      variables: the model's variables (``params`` and ``batch_stats``, nested dicts).
      config: its :class:`ResNet34Config`.
      keep: boolean ``(p,)`` in group order (as ``filter_gates``); every block must keep at
        least one channel.
      kind: ``"filters"`` (:data:`KINDS`).

    Returns:
      ``(variables, config)`` of the compacted model (``config.inner_channels`` = channels
      kept per block).

    Raises:
      ValueError: an unknown ``kind``, ``keep`` of the wrong shape, or a block keeping nothing.

    References:
      Ye et al. (2020) (the pruned network keeps the selected channels of every block).
    """
    return resnet.compact(variables, config, keep, kind)


SPEC = ModelSpec(
    name="resnet34",
    module=ResNet34,
    presets=PRESETS,
    default_preset="resnet34-tiny",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(8, 8, 3),
    gate_keyword="filter_gates",
    stateful=True,
)
"""The ``"resnet34"`` model spec."""
