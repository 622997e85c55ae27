"""The zoo's convolution: ``lax.conv_general_dilated``, with small output maps as one matmul.

XLA:CPU runs a 3×3 convolution whose output map has only a few pixels at a small fraction of
its usual speed.  Measured on this 2-core CPU (float32, stride 1, ``SAME`` padding, batch 64):
a 2×2 map with 64 channels in and out takes 1.14 ms (9 G multiply-adds/s, against 80 on the
4×4 map of the same layer), with 512 channels 537 ms.  The same product as patches times a
matrix takes 0.23 ms and 5.0 ms (``experiments/benchmarks/bench_small_map_conv.py``).  CIFAR's
VGG-16 ends with three such convolutions, so they cost a third of a forward pass of the zoo's
``vgg16-bn-tiny`` and most of one at full width.

:func:`conv_general_dilated` takes the arguments of ``lax.conv_general_dilated`` and is what
the zoo's ``nn.Conv`` layers call (their ``conv_general_dilated`` attribute; parameters, names
and shapes are unchanged).  When the output map has at most :data:`MAX_MATMUL_PIXELS` pixels,
and the convolution is an ordinary one (no dilation, one feature group, NHWC/HWIO layout), it
gathers the ``kh·kw`` shifted windows of the padded input into ``(n·H_out·W_out, kh·kw·C_in)``
patches and multiplies them by the ``(kh·kw·C_in, C_out)`` kernel: the same sum, in another
order (agreement to float32 rounding, about 1e-6 relative).  Everything else goes to
``lax.conv_general_dilated`` unchanged.  Larger maps stay on the convolution, which is faster
there (4×4 maps at stride 1: the patches took 1.1-2.6× as long, 16-512 channels).

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


def _is_plain(lhs: jax.Array, rhs: jax.Array, dilations, dimension_numbers, groups) -> bool:
    """A 2-D NHWC/HWIO convolution without dilation and with one feature group."""
    if lhs.ndim != 4 or rhs.ndim != 4 or groups != 1:
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


def _patches_matmul(lhs, rhs, strides, pads, precision):
    """``(n, H, W, C)`` NHWC input and ``(kh, kw, C, O)`` kernel to the ``(n, H_o, W_o, O)``
    convolution, as padded-input windows times the kernel matrix."""
    n, _, _, channels = lhs.shape
    kh, kw, _, out = rhs.shape
    padded = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
    rows = (padded.shape[1] - kh) // strides[0] + 1
    cols = (padded.shape[2] - kw) // strides[1] + 1
    windows = [
        lax.slice(
            padded,
            (0, a, b, 0),
            (n, a + (rows - 1) * strides[0] + 1, b + (cols - 1) * strides[1] + 1, channels),
            (1, *strides, 1),
        )
        for a in range(kh)
        for b in range(kw)
    ]
    patches = jnp.concatenate(windows, axis=-1).reshape(n * rows * cols, kh * kw * channels)
    product = jnp.matmul(patches, rhs.reshape(kh * kw * channels, out), precision=precision)
    return product.reshape(n, rows, cols, out)


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
    ordinary 2-D convolutions onto at most :data:`MAX_MATMUL_PIXELS` output pixels computed as
    one patches-times-kernel matmul (see the module docstring for when and why).

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
        and _is_plain(
            lhs, rhs, (lhs_dilation, rhs_dilation), dimension_numbers, feature_group_count
        )
    )
    if plain:
        strides = tuple(int(s) for s in window_strides)
        pads = _pads(padding, lhs.shape[1:3], rhs.shape[:2], strides)
        if min(min(pair) for pair in pads) < 0:
            return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **arguments)
        rows = (lhs.shape[1] + sum(pads[0]) - rhs.shape[0]) // strides[0] + 1
        cols = (lhs.shape[2] + sum(pads[1]) - rhs.shape[1]) // strides[1] + 1
        if rows > 0 and cols > 0 and rows * cols <= MAX_MATMUL_PIXELS:
            return _patches_matmul(lhs, rhs, strides, pads, precision)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **arguments)
