"""Factorized per-group NTKs of Flax Dense and Conv layers (what neural-tangents'
STRUCTURED_DERIVATIVES exploits, without its jaxpr interpreter).

A layer ``z_t = a_t W + b`` (``t`` runs over positions: 1 for an MLP, pixels for a conv, tokens
for a sequence) has the per-example Jacobian

    d f_c / d W[i, o] = sum_t a[t, i] * delta[c, t, o],        delta[c, t, o] = d f_c / d z[t, o]

so a group of output units (a neuron, a filter, a head's query columns) has the kernel

    K_o(x, y) = (1/k) sum_c sum_{t,s} (a_t(x) . a_s(y)) delta[c,t,o](x) delta[c,s,o](y).

With one position this is ``(A Aᵀ) ⊙ (Δ_o Δ_oᵀ)``: all units of a layer cost one ``n x n`` Gram
matrix plus ``n² k`` per unit, instead of ``n² k in`` (see the issue's benchmark).  Groups of
input units (the next layer's rows of a neuron, an attention head's slice of the output
projection) use the transposed identity.  With several positions the per-unit Jacobian
``sum_t a_t ⊗ delta_t`` is formed by one einsum and contracted per cell.

The activations ``a`` and sensitivities ``delta`` are collected without changing model code:
``flax.linen.intercept_methods`` records each Dense/DenseGeneral/Conv call's input and adds a
zero perturbation to its output, whose VJP is ``delta``.

Assumptions (documented in :func:`jaxprune.spectra.empirical_ntk`): examples are processed
independently (the model is applied to one example at a time under ``vmap``), and a kernel is
used only by its own module's call.  Kernels used by more than one call, grouped convolutions,
``DenseGeneral`` with batch dimensions, and groups that vary along both the input and output
axis of a kernel are left to the generic Jacobian path.

References:
  Novak et al. (2022), "Fast finite width neural tangent kernel", Sections 3-4 (structured
  derivatives).  Chen et al. (2023), Section 3.2.2 (per-group kernels K(w_[i])).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.spectra._cells import compact_ids, segment_kernels

__all__ = ["LinearCall", "find_linear_calls", "plan_structured", "structured_group_kernels"]


class LinearCall(NamedTuple):
    """One call of a Flax layer that is linear in its kernel.

    Attributes:
      kernel_leaf: index of the kernel among ``jax.tree_util.tree_leaves(params)``.
      bias_leaf: index of the bias, or ``None``.
      in_size: product of the kernel's contracted (input) dimensions.
      out_size: product of the kernel's output dimensions.
      num_positions: positions ``t`` per example (1 for a Dense layer on a vector).
      index: position of the call among all intercepted calls of one forward pass.
      shared: whether its kernel or bias is also used by another call (weight sharing), which
        the factorization cannot handle.
    """

    kernel_leaf: int
    bias_leaf: int | None
    in_size: int
    out_size: int
    num_positions: int
    index: int
    shared: bool = False


def _supported(module: nn.Module) -> bool:
    if type(module) in (nn.Dense,):
        return True
    if type(module) is nn.DenseGeneral:
        return not module.batch_dims
    if type(module) is nn.Conv:
        return module.feature_group_count == 1 and module.mask is None
    return False


def _kernel_rows(module: nn.Module, inputs: jax.Array) -> jax.Array:
    """The rows ``a_t`` that multiply the flattened kernel: shape ``(positions, in_size)``."""
    if type(module) is nn.Dense:
        return inputs.reshape(-1, inputs.shape[-1])
    if type(module) is nn.DenseGeneral:
        axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
        axes = tuple(a % inputs.ndim for a in axes)
        moved = jnp.moveaxis(inputs, axes, tuple(range(inputs.ndim - len(axes), inputs.ndim)))
        in_size = int(np.prod([inputs.shape[a] for a in axes]))
        return moved.reshape(-1, in_size)
    # Conv: the patches are the Jacobian of a one-filter copy of the layer w.r.t. its kernel,
    # which inherits every padding/stride/dilation convention of flax.linen.Conv.
    kernel = module.variables["params"]["kernel"]
    probe = module.clone(features=1, use_bias=False, parent=None)
    single = jnp.zeros((*kernel.shape[:-1], 1), kernel.dtype)

    def conv(w):
        return probe.apply({"params": {"kernel": w}}, inputs)[..., 0]

    patches = jax.jacfwd(conv)(single)  # (*spatial, *kernel.shape[:-1], 1)
    return patches.reshape(-1, int(np.prod(kernel.shape[:-1])))


def _leaf_index(leaves: list[Any], value: Any) -> int | None:
    for i, leaf in enumerate(leaves):
        if leaf is value:
            return i
    return None


def _run_intercepted(apply_fn, params, x_single, perturbations=None):
    """Apply the model to one example, recording linear calls and perturbing their outputs."""
    leaves = jax.tree_util.tree_leaves(params)
    records: list[tuple[LinearCall | None, jax.Array | None]] = []

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not _supported(module):
            return next_fun(*args, **kwargs)
        layer_params = module.variables.get("params", {})
        kernel_leaf = _leaf_index(leaves, layer_params.get("kernel"))
        bias = layer_params.get("bias") if getattr(module, "use_bias", False) else None
        bias_leaf = None if bias is None else _leaf_index(leaves, bias)
        out = next_fun(*args, **kwargs)
        if kernel_leaf is None or (bias is not None and bias_leaf is None):
            return out
        rows = _kernel_rows(module, args[0])
        out_size = int(np.prod(np.shape(leaves[kernel_leaf]))) // rows.shape[-1]
        index = len(records)
        call = LinearCall(kernel_leaf, bias_leaf, rows.shape[-1], out_size, rows.shape[0], index)
        records.append((call, rows))
        if perturbations is not None:
            out = out + perturbations[index].reshape(out.shape).astype(out.dtype)
        return out

    with nn.intercept_methods(interceptor):
        out = apply_fn(params, x_single[None])[0]
    return out, records


def find_linear_calls(apply_fn: Callable, params: Any, x: jax.Array) -> list[LinearCall]:
    """Every intercepted Dense/DenseGeneral/Conv call of one forward pass, in call order.

    Calls whose kernel or bias is used by more than one call are marked ``shared``.  ``x`` is a
    batch whose first example is used to trace the model abstractly (no FLOPs are spent).
    """
    found: list[LinearCall] = []

    def trace(params, x_single):
        nonlocal found
        _, records = _run_intercepted(apply_fn, params, x_single)
        found = [call for call, _ in records]
        return 0

    jax.eval_shape(lambda params, x: trace(params, x[0]), params, x)
    counts: dict[int, int] = {}
    for call in found:
        counts[call.kernel_leaf] = counts.get(call.kernel_leaf, 0) + 1
        if call.bias_leaf is not None:
            counts[call.bias_leaf] = counts.get(call.bias_leaf, 0) + 1
    return [
        call._replace(
            shared=counts[call.kernel_leaf] > 1
            or (call.bias_leaf is not None and counts[call.bias_leaf] > 1)
        )
        for call in found
    ]


def _capture(apply_fn, params, x, calls: list[LinearCall]):
    """Per-example rows ``a`` and sensitivities ``delta`` of every intercepted call.

    ``calls`` is the full list from :func:`find_linear_calls`.  Returns lists (in call order)
    of ``(n, T, in)`` rows and ``(n, k, T, out)`` sensitivities.
    """
    dtype = jax.tree_util.tree_leaves(params)[0].dtype

    def single(x_single):
        zeros = [jnp.zeros((c.num_positions * c.out_size,), dtype) for c in calls]

        def perturbed(eps):
            out, recs = _run_intercepted(apply_fn, params, x_single, eps)
            return out.reshape(-1), [rows for _, rows in recs]

        out, vjp_fn, rows = jax.vjp(perturbed, zeros, has_aux=True)
        k = out.shape[0]
        eye = jnp.eye(k, dtype=out.dtype)
        (deltas,) = jax.vmap(vjp_fn)(eye)
        deltas = [d.reshape(k, c.num_positions, c.out_size) for d, c in zip(deltas, calls)]
        return rows, deltas

    return jax.vmap(single)(x)


def _kernel_cells_ids(ids: np.ndarray, shape: tuple[int, ...], call: LinearCall):
    """Classify a kernel's group ids as varying along its output units, input units, neither
    (one cell) or both (``None``), with one id per cell."""
    ndim = len(shape)
    split = next(j for j in range(ndim + 1) if int(np.prod(shape[:j])) == call.in_size)
    _, axes = compact_ids(ids, ndim)
    full = np.broadcast_to(
        np.asarray(ids).reshape((1,) * (ndim - np.ndim(ids)) + np.shape(ids)), shape
    )
    corner = (0,) * ndim
    if not axes:
        return "whole", np.asarray(full[corner]).reshape(1)
    if all(a >= split for a in axes):
        return "out", np.asarray(full[(0,) * split]).reshape(call.out_size)
    if all(a < split for a in axes):
        return "in", np.asarray(full[(Ellipsis, *((0,) * (ndim - split)))]).reshape(call.in_size)
    return None, None


def plan_structured(
    calls: list[LinearCall], leaf_ids: list[np.ndarray], leaf_shapes: list[tuple[int, ...]]
) -> tuple[list[tuple[LinearCall, str, np.ndarray, np.ndarray | None]], set[int]]:
    """Decide which calls are handled by factorization, and how.

    Returns the plan (call, kernel axis kind, kernel cell ids, bias cell ids) and the set of
    leaf indices it covers; every other grouped leaf goes to the generic Jacobian path.
    """
    plan: list[tuple[LinearCall, str, np.ndarray, np.ndarray | None]] = []
    covered: set[int] = set()
    for call in calls:
        if call.shared:
            continue
        kind, cell_ids = _kernel_cells_ids(
            leaf_ids[call.kernel_leaf], leaf_shapes[call.kernel_leaf], call
        )
        if kind is None:  # ids vary along both input and output axes: Jacobian path
            continue
        bias_ids = None
        if call.bias_leaf is not None:
            bias_ids = np.broadcast_to(
                leaf_ids[call.bias_leaf], leaf_shapes[call.bias_leaf]
            ).reshape(call.out_size)
        plan.append((call, kind, cell_ids, bias_ids))
        covered.add(call.kernel_leaf)
        if call.bias_leaf is not None:
            covered.add(call.bias_leaf)
    return plan, covered


def structured_group_kernels(
    apply_fn: Callable,
    params: Any,
    x1: jax.Array,
    x2: jax.Array | None,
    calls: list[LinearCall],
    plan,
    p: int,
) -> jax.Array:
    """Sum of the planned layers' contributions to the ``(p, n1, n2)`` group kernels.

    Not divided by the output size ``k``.
    """
    rows1, deltas1 = _capture(apply_fn, params, x1, calls)
    rows2, deltas2 = (rows1, deltas1) if x2 is None else _capture(apply_fn, params, x2, calls)
    n1, n2 = x1.shape[0], (x1 if x2 is None else x2).shape[0]
    total = jnp.zeros((p, n1, n2), deltas1[0].dtype if deltas1 else jnp.float32)
    for call, kind, cell_ids, bias_ids in plan:
        i = call.index
        a1, a2, d1, d2 = rows1[i], rows2[i], deltas1[i], deltas2[i]
        if not np.all(cell_ids < 0):
            total = total + segment_kernels(_kernel_cells(a1, a2, d1, d2, kind), cell_ids, p)
        if bias_ids is not None:
            bias_cells, bias_axes = compact_ids(bias_ids, 1)
            if not np.all(bias_cells < 0):
                s1, s2 = d1.sum(axis=2), d2.sum(axis=2)  # (n, k, out)
                if bias_axes:
                    cells = jnp.einsum("xco,yco->oxy", s1, s2)
                else:
                    cells = jnp.einsum("xco,yco->xy", s1, s2)[None]
                total = total + segment_kernels(cells, bias_cells, p)
    return total


def _kernel_cells(a1, a2, d1, d2, kind: str) -> jax.Array:
    """Cell kernels of a layer's kernel: ``(out, n1, n2)``, ``(in, n1, n2)`` or ``(1, n1, n2)``.

    ``a``: ``(n, T, in)`` rows; ``d``: ``(n, k, T, out)`` sensitivities.
    """
    if a1.shape[1] == 1:
        a1, a2, d1, d2 = a1[:, 0], a2[:, 0], d1[:, :, 0], d2[:, :, 0]
        if kind == "out":
            return jnp.einsum("xi,yi->xy", a1, a2)[None] * jnp.einsum("xco,yco->oxy", d1, d2)
        if kind == "in":
            return jnp.einsum("xi,yi->ixy", a1, a2) * jnp.einsum("xco,yco->xy", d1, d2)[None]
        return (jnp.einsum("xi,yi->xy", a1, a2) * jnp.einsum("xco,yco->xy", d1, d2))[None]
    # Several positions: form each example's kernel Jacobian sum_t a_t ⊗ delta_t once.
    e1 = jnp.einsum("xti,xcto->xcio", a1, d1)
    e2 = e1 if (a2 is a1 and d2 is d1) else jnp.einsum("xti,xcto->xcio", a2, d2)
    if kind == "out":
        return jnp.einsum("xcio,ycio->oxy", e1, e2)
    if kind == "in":
        return jnp.einsum("xcio,ycio->ixy", e1, e2)
    return jnp.einsum("xcio,ycio->xy", e1, e2)[None]
