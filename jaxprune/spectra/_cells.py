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
    n1 = jac1.shape[0]
    n2 = jac2.shape[0]
    leaf_ndim = jac1.ndim - 2
    cell_ids, cell_axes = compact_ids(ids, leaf_ndim)
    if np.all(cell_ids < 0):
        return jnp.zeros((p, n1, n2), jac1.dtype)
    rest_axes = tuple(a for a in range(leaf_ndim) if a not in cell_axes)
    # One transpose to (cells, n, rest * k), the operand layout of a product batched over
    # cells, with k innermost as jnp.einsum orders it.  Transposing to (n, k, cells, rest) and
    # letting the einsum move the cells again fused two transpositions of the whole Jacobian
    # into each operand: 1.4x plain vmap(jacrev) + einsum on a CPU CNN (bench_spectra, 3.).
    order = (*(2 + a for a in cell_axes), 0, *(2 + a for a in rest_axes), 1)
    num_cells = cell_ids.size
    j1 = jnp.transpose(jac1, order).reshape(num_cells, n1, -1)
    j2 = j1 if jac2 is jac1 else jnp.transpose(jac2, order).reshape(num_cells, n2, -1)
    chunk = max(1, min(num_cells, CELL_KERNEL_BUDGET // max(1, n1 * n2)))
    if chunk >= num_cells:
        return segment_kernels(jnp.einsum("cxr,cyr->cxy", j1, j2), cell_ids, p)
    # Too many cells to hold their kernels at once: scan over chunks of cells.
    num_chunks = -(-num_cells // chunk)
    pad = num_chunks * chunk - num_cells
    padded_ids = np.concatenate([cell_ids, np.full(pad, -1, cell_ids.dtype)])
    symmetric = j2 is j1
    j1 = jnp.pad(j1, ((0, pad), (0, 0), (0, 0))).reshape(num_chunks, chunk, n1, -1)
    j2 = (
        j1
        if symmetric
        else jnp.pad(j2, ((0, pad), (0, 0), (0, 0))).reshape(num_chunks, chunk, n2, -1)
    )
    segments = np.where(padded_ids < 0, p, padded_ids).astype(np.int32).reshape(num_chunks, chunk)

    def body(total, inputs):
        a, b, seg = inputs
        cells = jnp.einsum("cxr,cyr->cxy", a, b)
        return total + jax.ops.segment_sum(cells, seg, num_segments=p + 1), None

    total = jnp.zeros((p + 1, n1, n2), jac1.dtype)
    total, _ = jax.lax.scan(body, total, (j1, j2, jnp.asarray(segments)))
    return total[:p]
