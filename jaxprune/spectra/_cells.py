"""Reduce per-example Jacobian leaves to per-group kernels (shared by the NTK backends).

A parameter leaf's group ids, broadcast against the leaf, vary along some axes ("cell" axes)
and are constant along the others.  Each cell (one index along the cell axes) belongs to one
group, so its kernel is a contraction over the constant axes only, and the group kernels are
segment sums of cell kernels.  This is what makes neurons, filters and heads cheap: a Dense
kernel grouped by output unit has ``out`` cells, not ``in * out``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Largest number of floats a batch of cell kernels may hold at once (256 MiB in float32).
CELL_KERNEL_BUDGET = 1 << 26


def compact_ids(ids: np.ndarray, ndim: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Shrink broadcast group ids to the axes along which they vary.

    Returns ``(cell_ids, cell_axes)``: ``cell_ids`` has one entry per cell (flattened, C-order
    over ``cell_axes``) and ``cell_axes`` are the axes of the ``ndim``-dimensional leaf along
    which the ids vary.
    """
    ids = np.asarray(ids).reshape((1,) * (ndim - np.ndim(ids)) + np.shape(ids))
    cell_axes = []
    for axis in range(ndim):
        if ids.shape[axis] > 1 and not np.all(ids == ids.take([0], axis=axis)):
            cell_axes.append(axis)
        else:
            ids = ids.take([0], axis=axis)
    return ids.reshape(-1), tuple(cell_axes)


def segment_kernels(cell_kernels: jax.Array, cell_ids: np.ndarray, p: int) -> jax.Array:
    """Sum ``(C, n1, n2)`` cell kernels into ``(p, n1, n2)`` group kernels (ids -1 dropped)."""
    first = int(cell_ids[0])
    if first >= 0 and np.array_equal(cell_ids, np.arange(first, first + cell_ids.size)):
        # One cell per group, numbered contiguously (neurons, filters): a static pad, no scatter.
        return jnp.pad(cell_kernels, ((first, p - first - cell_ids.size), (0, 0), (0, 0)))
    segments = np.where(cell_ids < 0, p, cell_ids).astype(np.int32)
    return jax.ops.segment_sum(cell_kernels, segments, num_segments=p + 1)[:p]


def leaf_group_kernels(jac1: jax.Array, jac2: jax.Array, ids: np.ndarray, p: int) -> jax.Array:
    """Per-group kernels of one leaf from its Jacobians.

    Args:
      jac1: ``(n1, k, *leaf_shape)`` Jacobian of the outputs on the first inputs.
      jac2: ``(n2, k, *leaf_shape)`` the same on the second inputs.
      ids: the leaf's group ids, broadcastable to ``leaf_shape``.
      p: number of groups.

    Returns:
      ``(p, n1, n2)``: ``sum_c sum_{w in leaf, group g} J1[x,c,w] J2[y,c,w]`` (not yet divided
      by ``k``).
    """
    n1, k = jac1.shape[:2]
    n2 = jac2.shape[0]
    leaf_ndim = jac1.ndim - 2
    cell_ids, cell_axes = compact_ids(ids, leaf_ndim)
    if np.all(cell_ids < 0):
        return jnp.zeros((p, n1, n2), jac1.dtype)
    rest_axes = tuple(a for a in range(leaf_ndim) if a not in cell_axes)
    order = (0, 1, *(2 + a for a in cell_axes), *(2 + a for a in rest_axes))
    num_cells = cell_ids.size
    j1 = jnp.transpose(jac1, order).reshape(n1, k, num_cells, -1)
    j2 = jnp.transpose(jac2, order).reshape(n2, k, num_cells, -1)
    chunk = max(1, min(num_cells, CELL_KERNEL_BUDGET // max(1, n1 * n2)))
    if chunk >= num_cells:
        cells = jnp.einsum("xkcr,ykcr->cxy", j1, j2)
        return segment_kernels(cells, cell_ids, p)
    # Too many cells to hold their kernels at once: scan over chunks of cells.
    num_chunks = -(-num_cells // chunk)
    pad = num_chunks * chunk - num_cells
    padded_ids = np.concatenate([cell_ids, np.full(pad, -1, cell_ids.dtype)])
    j1 = jnp.pad(j1, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(n1, k, num_chunks, chunk, -1)
    j2 = jnp.pad(j2, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(n2, k, num_chunks, chunk, -1)
    segments = np.where(padded_ids < 0, p, padded_ids).astype(np.int32).reshape(num_chunks, chunk)

    def body(total, inputs):
        a, b, seg = inputs
        cells = jnp.einsum("xkcr,ykcr->cxy", a, b)
        return total + jax.ops.segment_sum(cells, seg, num_segments=p + 1), None

    total = jnp.zeros((p + 1, n1, n2), jac1.dtype)
    total, _ = jax.lax.scan(
        body, total, (jnp.moveaxis(j1, 2, 0), jnp.moveaxis(j2, 2, 0), jnp.asarray(segments))
    )
    return total[:p]
