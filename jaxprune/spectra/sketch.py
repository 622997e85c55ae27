"""Random projections of a model's outputs: kernels traced over ``s`` outputs instead of ``k``.

:func:`sketch_outputs` returns a model whose per-example outputs ``(d_1, ..., d_r)`` are
projected to ``s`` values by a Khatri–Rao Gaussian sketch; the empirical NTK of the sketch
(:func:`jaxprune.spectra.empirical_ntk`) is an unbiased estimate of the kernel traced over all
``k = Π d_a`` outputs, whole or per group.  :func:`output_sketch` is the same projection with
its factors as an explicit argument, so that one compiled kernel serves every key.

References:
  Rakhshan & Rabusseau (2020), "Tensorized random projections" (Khatri–Rao Gaussian
  sketches); Chen et al. (2023), Sec. 3.1 (the NTK of the logits).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_batch, check_positive_int
from jaxprune.typing import ApplyFn, PyTree

__all__ = ["OutputSketch", "example_output_shape", "output_sketch", "sketch_outputs"]


def example_output_shape(apply_fn: ApplyFn, params: PyTree, x: jax.Array) -> jax.ShapeDtypeStruct:
    """Shape ``(d_1, ..., d_r)`` and dtype of one example's outputs (nothing is computed)."""
    out = jax.eval_shape(apply_fn, params, x[:1])
    return jax.ShapeDtypeStruct(tuple(out.shape[1:]), out.dtype)


class OutputSketch(NamedTuple):
    """A sketched model with its projection factors as an explicit argument.

    Attributes:
      apply_fn: ``((params, factors), x) -> (n, s)``; one function object per model and
        output rank, so kernels of sketches with different factors share one compilation.
      factors: ``r`` arrays ``A_a`` of shape ``(d_a, s)``.
    """

    apply_fn: ApplyFn
    factors: list[jax.Array]


def _sketch_factors(
    key: jax.Array, shape: tuple[int, ...], num_projections: int, dtype: Any
) -> list[jax.Array]:
    """Independent standard normal ``(d_a, s)`` factors, the first scaled by ``1/√k``."""
    keys = jax.random.split(key, len(shape))
    factors = [jax.random.normal(k, (d, num_projections), dtype) for k, d in zip(keys, shape)]
    factors[0] = factors[0] / np.sqrt(float(np.prod(shape)))
    return factors


@functools.lru_cache(maxsize=32)
def _sketched(apply_fn: ApplyFn, num_axes: int) -> ApplyFn:
    """``((params, factors), x) -> (n, s)``: one function object per model and output rank."""
    axes = list(range(1, num_axes + 1))

    def sketched(packed: tuple[PyTree, list[jax.Array]], x: jax.Array) -> jax.Array:
        params, factors = packed
        operands: list[Any] = []
        for axis, factor in zip(axes, factors):
            operands += [factor, [axis, num_axes + 1]]
        return jnp.einsum(apply_fn(params, x), [0, *axes], *operands, [0, num_axes + 1])

    return sketched


def output_sketch(
    apply_fn: ApplyFn, output: jax.ShapeDtypeStruct, key: jax.Array, num_projections: int
) -> OutputSketch:
    """The sketch of :func:`sketch_outputs` with its factors as an argument.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, d_1, ..., d_r)`` outputs.
      output: one example's output shape and dtype (:func:`example_output_shape`).
      key: PRNG key of the projection.
      num_projections: ``s >= 1``.

    Returns:
      :class:`OutputSketch`, deterministic given ``key``.
    """
    s = check_positive_int(num_projections, "num_projections")
    factors = _sketch_factors(key, output.shape, s, output.dtype)
    return OutputSketch(_sketched(apply_fn, len(output.shape)), factors)


def sketch_outputs(
    apply_fn: ApplyFn, params: PyTree, x: jax.Array, key: jax.Array, num_projections: int
) -> ApplyFn:
    """``apply_fn`` with its per-example outputs randomly projected to ``num_projections`` values.

    For outputs ``(n, d_1, ..., d_r)`` (``k = Π d_a`` values per example) the sketch is
    ``f̃_j(x) = Σ_c R_cj f_c(x)`` with ``R_cj = Π_a A_a[c_a, j] / √k`` and independent standard
    normal factors ``A_a`` of shape ``(d_a, s)``: memory ``s Σ d_a`` instead of ``s k``.  Since
    ``E[R_cj R_c'j] = δ_cc' / k``, the traced kernel of the sketch (:func:`empirical_ntk`
    divides by its ``s`` outputs) is an unbiased estimate of the kernel traced over all ``k``
    outputs, whole or per group, at the cost of ``s`` outputs instead of ``k``.  Outputs with a
    single value per example are returned unchanged.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: parameter pytree (shapes and dtypes are used).
      x: ``(n, ...)`` example inputs (shapes and dtypes are used).
      key: PRNG key of the projection.
      num_projections: ``s >= 1``.

    Returns:
      ``sketched(params, x) -> (n, s)``, deterministic given ``key``.

    References:
      Rakhshan & Rabusseau (2020), "Tensorized random projections" (Khatri–Rao Gaussian
      sketches); Chen et al. (2023), Sec. 3.1 (the NTK of the logits).
    """
    s = check_positive_int(num_projections, "num_projections")
    check_batch(x, "x")
    out = example_output_shape(apply_fn, params, x)
    if int(np.prod(out.shape)) == 1:
        return apply_fn
    sketch = output_sketch(apply_fn, out, key, s)
    return lambda params, x: sketch.apply_fn((params, sketch.factors), x)
