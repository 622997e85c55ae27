"""The zoo's convolution: ``lax.conv_general_dilated``, except where XLA:CPU's is slow.

Two kinds of convolution run at a small fraction of XLA:CPU's usual speed, and the zoo computes
both another way (``experiments/benchmarks/bench_small_map_conv.py`` measures them):

* **Small output maps.** A 3×3 convolution onto a 2×2 map with 64 channels in and out took
  1.14 ms at batch 64 (9 G multiply-adds/s, against 80 on the 4×4 map of the same layer), with
  512 channels 537 ms.  CIFAR's VGG-16 ends with three of them.  When the output map has at
  most :data:`MAX_MATMUL_PIXELS` pixels, the ``kh·kw`` shifted windows of the padded input are
  gathered into ``(n·H_out·W_out, kh·kw·C_in)`` patches and multiplied by the
  ``(kh·kw·C_in, C_out)`` kernel: 0.23 ms and 5.0 ms.  Larger maps stay on the convolution,
  which is faster there (4×4 maps at stride 1: the patches took 1.1-2.6× as long, 16-512
  channels).
* **Depthwise convolutions** (``feature_group_count`` = input channels, one filter per
  channel: MobileNetV2's 3×3 convolutions).  XLA:CPU took 5-32× as long as a sum of the
  ``kh·kw`` shifted windows, each times its per-channel tap (e.g. 144 channels on 16×16 maps,
  batch 64: 49.8 ms against 1.5 ms), so that sum is what the zoo computes, accumulated in at
  least float32.

Both give the same sums in another order (agreement to float32 rounding, about 1e-6
relative).  Everything else, and every convolution with dilation or another layout than
NHWC/HWIO, goes to ``lax.conv_general_dilated`` unchanged.  The zoo's ``nn.Conv`` layers call
:func:`conv_general_dilated` through their ``conv_general_dilated`` attribute, so parameters,
names and shapes are those of ``nn.Conv``.

References:
  Chellapilla, Puri & Simard (2006), "High performance convolutional neural networks for
  document processing" (convolution as an unrolled-patch matrix product).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["MAX_MATMUL_PIXELS", "conv_general_dilated"]

MAX_MATMUL_PIXELS = 4
"""Output maps of at most this many pixels (``H_out · W_out``) are computed as a matmul."""

_LAYOUT = ("NHWC", "HWIO", "NHWC")


def _is_plain(lhs: jax.Array, rhs: jax.Array, dilations, dimension_numbers) -> bool:
    """A 2-D NHWC/HWIO convolution without dilation."""
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    if any(d is not None and tuple(d) != (1, 1) for d in dilations):
        return False
    canonical = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _LAYOUT)
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or _LAYOUT)
    return given == canonical


def _pads(padding: Any, spatial: Sequence[int], window: Sequence[int], strides: Sequence[int]):
    """Explicit ``(low, high)`` pairs of ``padding`` (a lax padding string or pairs)."""
    if isinstance(padding, str):
        return lax.padtype_to_pads(spatial, window, strides, padding)
    return [tuple(int(p) for p in pair) for pair in padding]


def _shifted_windows(lhs, window, strides, pads):
    """The ``kh·kw`` windows of the padded ``(n, H, W, C)`` input that tap ``(a, b)`` of a
    ``window = (kh, kw)`` kernel reads, in row-major tap order, each ``(n, H_o, W_o, C)``."""
    n, _, _, channels = lhs.shape
    kh, kw = window
    padded = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    rows = (padded.shape[1] - kh) // strides[0] + 1
    cols = (padded.shape[2] - kw) // strides[1] + 1
    return [
        lax.slice(
            padded,
            (0, a, b, 0),
            (n, a + (rows - 1) * strides[0] + 1, b + (cols - 1) * strides[1] + 1, channels),
            (1, *strides, 1),
        )
        for a in range(kh)
        for b in range(kw)
    ]


def _patches_matmul(lhs, rhs, strides, pads, precision):
    """``(n, H, W, C)`` NHWC input and ``(kh, kw, C, O)`` kernel to the ``(n, H_o, W_o, O)``
    convolution, as padded-input windows times the kernel matrix."""
    kh, kw, channels, out = rhs.shape
    windows = _shifted_windows(lhs, (kh, kw), strides, pads)
    n, rows, cols, _ = windows[0].shape
    patches = jnp.concatenate(windows, axis=-1).reshape(n * rows * cols, kh * kw * channels)
    product = jnp.matmul(patches, rhs.reshape(kh * kw * channels, out), precision=precision)
    return product.reshape(n, rows, cols, out)


def _depthwise_shifted_sum(lhs, rhs, strides, pads):
    """``(n, H, W, C)`` NHWC input and ``(kh, kw, 1, C)`` per-channel kernel to the
    ``(n, H_o, W_o, C)`` depthwise convolution, as the sum of the shifted windows times their
    taps (accumulated in at least float32, returned in the inputs' dtype)."""
    kh, kw = rhs.shape[:2]
    accumulate = jnp.promote_types(lhs.dtype, jnp.float32)
    windows = _shifted_windows(lhs.astype(accumulate), (kh, kw), strides, pads)
    taps = rhs.astype(accumulate).reshape(kh * kw, -1)
    total = windows[0] * taps[0]
    for window, tap in zip(windows[1:], taps[1:]):
        total = total + window * tap
    return total.astype(jnp.result_type(lhs, rhs))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` (same arguments, same result up to float rounding), with
    2-D convolutions onto at most :data:`MAX_MATMUL_PIXELS` output pixels computed as one
    patches-times-kernel matmul and depthwise ones as a sum of shifted windows (see the module
    docstring for when and why).

    Args:
      lhs: input, e.g. ``(n, H, W, C_in)`` in NHWC.
      rhs: kernel, e.g. ``(kh, kw, C_in, C_out)`` in HWIO.
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, precision, preferred_element_type: as for
        ``lax.conv_general_dilated``.

    Returns:
      The convolution, e.g. ``(n, H_out, W_out, C_out)``.
    """
    arguments = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    plain = (
        batch_group_count == 1
        and preferred_element_type is None
        and _is_plain(lhs, rhs, (lhs_dilation, rhs_dilation), dimension_numbers)
    )
    if plain:
        strides = tuple(int(s) for s in window_strides)
        pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], strides)
        channels = lhs.shape[3]
        rows = (lhs.shape[1] + sum(pads[0]) - rhs.shape[0]) // strides[0] + 1
        cols = (lhs.shape[2] + sum(pads[1]) - rhs.shape[1]) // strides[1] + 1
        if min(min(pair) for pair in pads) >= 0 and rows > 0 and cols > 0:
            depthwise = feature_group_count == channels > 1 and rhs.shape[2:] == (1, channels)
            if depthwise:
                return _depthwise_shifted_sum(lhs, rhs, strides, pads)
            if feature_group_count == 1 and rows * cols <= MAX_MATMUL_PIXELS:
                return _patches_matmul(lhs, rhs, strides, pads, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **arguments)
