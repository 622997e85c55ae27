"""Empirical neural tangent kernels, whole and per structured group, in one pass.

References:
  Jacot et al. (2018), the neural tangent kernel.  Chen et al. (2023), Sec. 3.1 (K(w) = DF DFᵀ)
  and Sec. 3.2.2 (per-group kernels K(w_[i])).  Novak et al. (2022), "Fast finite width neural
  tangent kernel" (Jacobian contraction, NTK-vector products, structured derivatives).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import (
    check_batch,
    check_finite_tree,
    check_positive_int,
    check_second_batch,
)
from jaxprune.group_ids import validate_group_ids
from jaxprune.spectra._cells import leaf_group_kernels
from jaxprune.spectra.static import FrozenGroupIds
from jaxprune.spectra.structured import find_linear_calls, plan_structured, structured_group_kernels

__all__ = ["BACKENDS", "empirical_ntk"]

Backend = Literal["auto", "structured", "jacobian", "ntvp", "neural_tangents"]
BACKENDS: tuple[str, ...] = ("auto", "structured", "jacobian", "ntvp", "neural_tangents")

# Memory a block of per-example Jacobians may take before examples are chunked (bytes).
_BLOCK_BUDGET = 1 << 30


def empirical_ntk(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    x: jax.Array,
    x2: jax.Array | None = None,
    *,
    group_ids: Any = None,
    backend: Backend = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """Empirical NTK ``K = J Jᵀ`` of ``apply_fn`` at ``params``, whole or per group.

    ``K(x, y) = (1/k) sum_c <d f_c(x)/dw, d f_c(y)/dw>``: traced over the output axes and
    divided by their size ``k``, which is neural-tangents' ``trace_axes=(-1,)`` convention for
    ``(n, k)`` outputs (for ``(n, ...)`` outputs every non-batch axis is traced).

    With ``group_ids`` (the group-id pytree, see :mod:`jaxprune.group_ids`) it returns all
    ``p`` group kernels ``K_i = J_[i] J_[i]ᵀ`` from one shared computation; they sum to ``K``
    when the groups cover every parameter.  Weights with id ``-1`` contribute to no group.

    Backends:
      * ``"structured"``: factorized kernels of Flax ``Dense``/``DenseGeneral``/``Conv`` layers
        (see :mod:`jaxprune.spectra.structured`), the Jacobian path for every other leaf.
      * ``"jacobian"``: per-example Jacobians (``vmap`` of ``jacrev``) contracted per leaf.
      * ``"ntvp"``: NTK-vector products (``vmap`` of ``jvp ∘ vjp``), whole kernel only; memory
        of one gradient per product, time of ``n k`` products.
      * ``"neural_tangents"``: neural-tangents' ``JACOBIAN_CONTRACTION`` kernel; per group, one
        jit-compiled call per group with the others held by ``stop_gradient``.
      * ``"auto"``: ``structured`` if the model has Flax layers it can factorize, else
        ``jacobian`` when the Jacobians fit in memory (or groups are asked for), else ``ntvp``.

    Examples are treated as independent (the model is applied to one at a time, like
    neural-tangents' ``vmap_axes=0``): use models in evaluation mode.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs for a batch ``x``.
      params: parameter pytree (finite values).
      x: ``(n, ...)`` inputs (finite values when floating).
      x2: optional ``(n2, ...)`` second inputs: the cross-kernel ``K(x, x2)``.
      group_ids: optional group-id pytree with ``p`` groups.
      backend: one of :data:`BACKENDS`.
      chunk_size: examples per block; blocks of the kernel are computed one at a time to bound
        peak memory.  Default: chosen so a block's Jacobians take at most about 1 GiB.

    Returns:
      ``(n, n2)`` kernel, or ``(p, n, n2)`` group kernels (``n2 = n`` without ``x2``).

    Raises:
      ValueError / TypeError: unknown backend, malformed ``group_ids`` (naming the path),
        non-finite parameters or inputs, inputs without a batch axis, ``chunk_size < 1``.
        Values are checked on concrete arrays only: inside ``jit`` a NaN input gives a NaN
        kernel.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    check_batch(x, "x")
    check_second_batch(x2, x)
    if chunk_size is not None:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_finite_tree(params)
    check_finite_tree(x, "x")
    check_finite_tree(x2, "x2")

    leaves, treedef = jax.tree_util.tree_flatten(params)
    if group_ids is None:
        p = 1
        ids = tuple(np.zeros((1,) * np.ndim(leaf), np.int32) for leaf in leaves)
    else:
        p = validate_group_ids(params, group_ids)
        ids = tuple(np.asarray(g, np.int32) for g in jax.tree_util.tree_leaves(group_ids))
    signature = _Signature(
        apply_fn,
        treedef,
        tuple((np.shape(leaf), jnp.result_type(leaf)) for leaf in leaves),
        tuple(x.shape[1:]),
        jnp.result_type(x),
        FrozenGroupIds(ids),
        p,
        group_ids is None,
        backend,
    )
    block, per_example = _build_block(signature)
    if chunk_size is None:
        chunk_size = max(1, _BLOCK_BUDGET // (2 * per_example))
    kernel = _assemble(block, params, x, x2, chunk_size)
    return kernel[0] if group_ids is None else kernel


class _Signature(NamedTuple):
    apply_fn: Callable
    treedef: Any
    leaf_specs: tuple
    example_shape: tuple[int, ...]
    example_dtype: Any
    ids: FrozenGroupIds
    p: int
    whole: bool
    backend: str


@functools.lru_cache(maxsize=64)
def _build_block(sig: _Signature) -> tuple[Callable, int]:
    """The jit-compiled kernel block for one model/grouping/backend, and its bytes/example."""
    params = jax.tree_util.tree_unflatten(
        sig.treedef, [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in sig.leaf_specs]
    )
    probe_x = jax.ShapeDtypeStruct((1, *sig.example_shape), sig.example_dtype)
    sizes = [int(np.prod(shape)) for shape, _ in sig.leaf_specs]
    out_shape = jax.eval_shape(sig.apply_fn, params, probe_x).shape
    k = int(np.prod(out_shape[1:]))
    ids = sig.ids.leaves
    backend = sig.backend
    plan, covered, calls = [], set(), []
    if backend in ("auto", "structured"):
        calls = find_linear_calls(sig.apply_fn, params, probe_x)
        plan, covered = plan_structured(
            calls, list(ids), [s for s, _ in sig.leaf_specs], warn_if_empty=backend == "structured"
        )
        if backend == "auto" and not covered:
            fits = 2 * k * sum(sizes) * 4 * 128 <= _BLOCK_BUDGET
            backend = "jacobian" if (not sig.whole or fits) else "ntvp"
        else:
            backend = "structured"
    if backend == "ntvp" and not sig.whole:
        raise ValueError(
            "backend='ntvp' computes whole-model kernels only; for group kernels use "
            "'structured', 'jacobian' or 'neural_tangents'"
        )
    if backend == "neural_tangents":
        block = _neural_tangents_block(
            sig.apply_fn,
            [(g, shape) for g, (shape, _) in zip(ids, sig.leaf_specs)],
            sig.p,
            len(out_shape),
            sig.whole,
        )
        return block, k * sum(sizes) * 4
    if backend == "ntvp":
        whole = _ntvp_block(sig.apply_fn, k)
        return (lambda params, x1, x2: whole(params, x1, x2)[None]), k * 4 * max(sizes)
    generic = [i for i, leaf_ids in enumerate(ids) if i not in covered and np.any(leaf_ids >= 0)]
    block = _jacobian_block(sig.apply_fn, ids, sig.p, k, calls, plan, generic)
    per_example = k * 4 * (1 + sum(sizes[i] for i in generic))
    per_example += 4 * k * sum(c.in_size * c.out_size for c, *_ in plan if c.num_positions > 1)
    return block, per_example


def _assemble(block, params, x1, x2, chunk: int) -> jax.Array:
    """Compute the kernel block by block over chunks of examples (mirroring when symmetric)."""
    symmetric = x2 is None
    rows = [x1[i : i + chunk] for i in range(0, x1.shape[0], chunk)]
    cols = rows if symmetric else [x2[i : i + chunk] for i in range(0, x2.shape[0], chunk)]
    if len(rows) == 1 and len(cols) == 1:
        return block(params, x1, x2)
    grid: list[list[jax.Array]] = []
    for i, xi in enumerate(rows):
        line = []
        for j, xj in enumerate(cols):
            if symmetric and j < i:
                line.append(jnp.swapaxes(grid[j][i], -1, -2))
            else:
                line.append(block(params, xi, None if symmetric and i == j else xj))
        grid.append(line)
    return jnp.concatenate([jnp.concatenate(line, axis=-1) for line in grid], axis=-2)


def _leaf_jacobians(apply_fn, params, x, indices: list[int]) -> list[jax.Array]:
    """Per-example Jacobians ``(n, k, *leaf_shape)`` of the flattened outputs w.r.t. the
    leaves at ``indices``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)

    def single(chosen, x_single):
        full = list(leaves)
        for i, leaf in zip(indices, chosen):
            full[i] = leaf
        return apply_fn(jax.tree_util.tree_unflatten(treedef, full), x_single[None])[0].reshape(-1)

    chosen = [leaves[i] for i in indices]
    return jax.vmap(jax.jacrev(single), in_axes=(None, 0))(chosen, x)


def _jacobian_block(apply_fn, ids, p, k, calls, plan, generic):
    @jax.jit
    def block(params, x1, x2):
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        total = jnp.zeros((p, x1.shape[0], n2), dtype)
        if plan:
            total = total + structured_group_kernels(apply_fn, params, x1, x2, calls, plan, p)
        if generic:
            jac1 = _leaf_jacobians(apply_fn, params, x1, generic)
            jac2 = jac1 if x2 is None else _leaf_jacobians(apply_fn, params, x2, generic)
            for i, j1, j2 in zip(generic, jac1, jac2):
                total = total + leaf_group_kernels(j1, j2, ids[i], p)
        return total / k

    return block


def _ntvp_block(apply_fn, k):
    @jax.jit
    def block(params, x1, x2):
        x2 = x1 if x2 is None else x2
        n1, n2 = x1.shape[0], x2.shape[0]

        def f1(w):
            return apply_fn(w, x1).reshape(n1, k)

        def f2(w):
            return apply_fn(w, x2).reshape(n2, k)

        _, vjp2 = jax.vjp(f2, params)

        def product(index):  # column (y, c) of J1 J2ᵀ, restricted to output c of f1
            y, c = index // k, index % k
            cotangent = jax.nn.one_hot(y, n2)[:, None] * jax.nn.one_hot(c, k)[None, :]
            (tangent,) = vjp2(cotangent.astype(jax.tree_util.tree_leaves(params)[0].dtype))
            return jax.jvp(f1, (params,), (tangent,))[1][:, c]

        columns = jax.lax.map(product, jnp.arange(n2 * k), batch_size=min(n2 * k, 64))
        return columns.reshape(n2, k, n1).sum(axis=1).T / k

    return block


def _neural_tangents_block(apply_fn, ids, p, out_ndim, whole):
    from jaxprune._compat.neural_tangents import import_neural_tangents

    nt = import_neural_tangents()
    trace_axes = tuple(range(1, out_ndim))
    contraction = nt.NtkImplementation.JACOBIAN_CONTRACTION
    if whole:
        kernel_fn = jax.jit(
            nt.empirical_ntk_fn(
                apply_fn, trace_axes=trace_axes, vmap_axes=0, implementation=contraction
            )
        )
        return lambda params, x1, x2: kernel_fn(x1, x2, params)[None]

    # Per group: differentiate only that group's weights, gathered into one vector per leaf and
    # scattered back at traced positions, so groups with the same per-leaf sizes (all neurons
    # of a layer, all heads) share one compilation.  This is the straightforward per-group use
    # of neural-tangents, one call per group, that the structured backend is measured against.
    positions = [
        [np.flatnonzero(np.broadcast_to(leaf_ids, shape) == g) for leaf_ids, shape in ids]
        for g in range(p)
    ]

    def restricted(group_values, x, base, group_positions):
        leaves, treedef = jax.tree_util.tree_flatten(base)
        leaves = [
            leaf.reshape(-1).at[where].set(values).reshape(leaf.shape)
            for leaf, values, where in zip(leaves, group_values, group_positions)
        ]
        return apply_fn(jax.tree_util.tree_unflatten(treedef, leaves), x)

    ntk_fn = nt.empirical_ntk_fn(
        restricted, trace_axes=trace_axes, vmap_axes=0, implementation=contraction
    )

    @jax.jit
    def group_kernel(params, x1, x2, where):
        values = [leaf.reshape(-1)[w] for leaf, w in zip(jax.tree_util.tree_leaves(params), where)]
        return ntk_fn(x1, x2, values, base=params, group_positions=where)

    def block(params, x1, x2):
        return jnp.stack([group_kernel(params, x1, x2, where) for where in positions])

    return block
