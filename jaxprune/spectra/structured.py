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
each Dense/DenseGeneral/Conv call's input is recorded and a zero perturbation is added to its
output, whose VJP is ``delta``.  Linen calls are intercepted by ``flax.linen.intercept_methods``;
Flax NNX has no such hook, so while a model is traced the ``__call__`` of ``nnx.Linear``,
``nnx.LinearGeneral`` and ``nnx.Conv`` is wrapped (for the tracing thread only, restored
afterwards).  An NNX model is passed as ``apply_fn(state, x) = nnx.merge(graphdef, state)(x)``
with ``graphdef, state = nnx.split(model)``.

Assumptions (documented in :func:`jaxprune.spectra.empirical_ntk`): examples are processed
independently (the model is applied to one example at a time under ``vmap``), and a kernel is
used only by its own module's call.  Kernels used by more than one call, grouped or masked
convolutions, ``DenseGeneral``/``LinearGeneral`` with batch dimensions, subclasses of these
layers, and groups that vary along both the input and output axis of a kernel are left to the
generic Jacobian path.

References:
  Novak et al. (2022), "Fast finite width neural tangent kernel", Sections 3-4 (structured
  derivatives).  Chen et al. (2023), Section 3.2.2 (per-group kernels K(w_[i])).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import (
    check_batch,
    check_callable,
    check_positive_int,
    check_second_batch,
)
from jaxprune.spectra._cells import compact_ids, segment_kernels

__all__ = ["LinearCall", "find_linear_calls", "plan_structured", "structured_group_kernels"]


class LinearCall(NamedTuple):
    """One call of a Flax (Linen or NNX) layer that is linear in its kernel.

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


def _nnx() -> Any:
    """The ``flax.nnx`` module if it was imported (an NNX model cannot exist otherwise)."""
    return sys.modules.get("flax.nnx")


def _is_nnx(module: Any) -> bool:
    nnx = _nnx()
    return nnx is not None and isinstance(module, nnx.Module)


def _supported(module: Any) -> bool:
    kind = type(module)
    if kind is nn.Dense:
        return True
    if kind is nn.DenseGeneral:
        return not module.batch_dims
    if kind is nn.Conv:
        return module.feature_group_count == 1 and module.mask is None
    nnx = _nnx()
    if nnx is None:
        return False
    if kind is nnx.Linear:
        return True
    if kind is nnx.LinearGeneral:
        return not module.batch_axis
    if kind is nnx.Conv:
        return module.feature_group_count == 1 and module.mask is None
    return False


def _variable_value(variable: Any) -> Any:
    """The array held by an NNX variable (``get_value`` on current Flax, ``value`` before)."""
    get_value = getattr(variable, "get_value", None)
    return get_value() if get_value is not None else variable.value


def _layer_params(module: Any) -> tuple[Any, Any]:
    """``(kernel, bias)`` arrays of a supported layer; ``bias`` is None without one."""
    if _is_nnx(module):
        kernel = _variable_value(module.kernel)
        bias = _variable_value(module.bias) if module.bias is not None else None
        return kernel, bias
    layer_params = module.variables.get("params", {})
    bias = layer_params.get("bias") if getattr(module, "use_bias", False) else None
    return layer_params.get("kernel"), bias


def _conv_patches(module: Any, inputs: jax.Array, kernel: jax.Array) -> jax.Array:
    """The Jacobian ``(*spatial, *kernel.shape[:-1])`` of one filter's output w.r.t. that
    filter, from a one-filter, bias-free copy of the layer, which inherits every
    padding/stride/dilation convention of the Flax layer."""
    single = jnp.zeros((*kernel.shape[:-1], 1), kernel.dtype)
    if _is_nnx(module):
        # NNX layers read their settings from attributes: a namespace copy with the kernel
        # replaced by ``w`` runs the layer's own __call__ without touching the module.
        settings = {**vars(module), "bias": None, "use_bias": False}
        param = _nnx().Param

        def conv(w):
            probe = types.SimpleNamespace(**{**settings, "kernel": param(w)})
            return type(module).__call__(probe, inputs)[..., 0]

    else:
        probe = module.clone(features=1, use_bias=False, parent=None)

        def conv(w):
            return probe.apply({"params": {"kernel": w}}, inputs)[..., 0]

    return jax.jacfwd(conv)(single)[..., 0]


def _kernel_rows(module: Any, inputs: jax.Array, kernel: jax.Array) -> jax.Array:
    """The rows ``a_t`` that multiply the flattened kernel: shape ``(positions, in_size)``."""
    nnx = _nnx()
    kind = type(module)
    if kind is nn.Dense or (nnx is not None and kind is nnx.Linear):
        return inputs.reshape(-1, inputs.shape[-1])
    if kind is nn.DenseGeneral or (nnx is not None and kind is nnx.LinearGeneral):
        # Both layers contract the input axes in increasing order against the kernel's
        # leading axes, whatever order ``axis`` lists them in.
        axes = module.axis if isinstance(module.axis, tuple) else (module.axis,)
        axes = tuple(sorted(a % inputs.ndim for a in axes))
        moved = jnp.moveaxis(inputs, axes, tuple(range(inputs.ndim - len(axes), inputs.ndim)))
        in_size = int(np.prod([inputs.shape[a] for a in axes]))
        return moved.reshape(-1, in_size)
    patches = _conv_patches(module, inputs, kernel)
    return patches.reshape(-1, int(np.prod(kernel.shape[:-1])))


def _leaf_index(leaves: list[Any], value: Any) -> int | None:
    for i, leaf in enumerate(leaves):
        if leaf is value:
            return i
    return None


# NNX interception: the active recorders of each thread, and the wrapped classes' own __call__.
_NNX_LOCAL = threading.local()
_NNX_LOCK = threading.Lock()
_NNX_ORIGINALS: dict[type, Callable] = {}
_NNX_USERS = [0]


def _nnx_wrapper(original: Callable) -> Callable:
    @functools.wraps(original)
    def call(self, *args, **kwargs):
        recorders = getattr(_NNX_LOCAL, "recorders", None)
        if not recorders or not args or not _supported(self):
            return original(self, *args, **kwargs)
        return recorders[-1](self, args[0], lambda: original(self, *args, **kwargs))

    return call


@contextlib.contextmanager
def _intercept_nnx(record: Callable) -> Iterator[None]:
    """Route this thread's calls of ``nnx.Linear``/``LinearGeneral``/``Conv`` through
    ``record(module, inputs, call) -> output`` (``call()`` runs the layer)."""
    nnx = _nnx()
    if nnx is None:
        yield
        return
    with _NNX_LOCK:
        if not _NNX_USERS[0]:
            for cls in (nnx.Linear, nnx.LinearGeneral, nnx.Conv):
                _NNX_ORIGINALS[cls] = cls.__call__
                cls.__call__ = _nnx_wrapper(cls.__call__)
        _NNX_USERS[0] += 1
    recorders = _NNX_LOCAL.__dict__.setdefault("recorders", [])
    recorders.append(record)
    try:
        yield
    finally:
        recorders.pop()
        with _NNX_LOCK:
            _NNX_USERS[0] -= 1
            if not _NNX_USERS[0]:
                for cls, original in _NNX_ORIGINALS.items():
                    cls.__call__ = original
                _NNX_ORIGINALS.clear()


def _run_intercepted(apply_fn, params, x_single, perturbations=None):
    """Apply the model to one example, recording linear calls and perturbing their outputs."""
    leaves = jax.tree_util.tree_leaves(params)
    records: list[tuple[LinearCall | None, jax.Array | None]] = []

    def record(module, inputs, call_layer):
        kernel, bias = _layer_params(module)
        kernel_leaf = _leaf_index(leaves, kernel)
        bias_leaf = None if bias is None else _leaf_index(leaves, bias)
        out = call_layer()
        if kernel_leaf is None or (bias is not None and bias_leaf is None):
            return out
        rows = _kernel_rows(module, inputs, kernel)
        out_size = int(np.prod(np.shape(kernel))) // rows.shape[-1]
        index = len(records)
        call = LinearCall(kernel_leaf, bias_leaf, rows.shape[-1], out_size, rows.shape[0], index)
        records.append((call, rows))
        if perturbations is not None:
            out = out + perturbations[index].reshape(out.shape).astype(out.dtype)
        return out

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not _supported(module):
            return next_fun(*args, **kwargs)
        return record(module, args[0], lambda: next_fun(*args, **kwargs))

    with nn.intercept_methods(interceptor), _intercept_nnx(record):
        out = apply_fn(params, x_single[None])[0]
    return out, records


def find_linear_calls(apply_fn: Callable, params: Any, x: jax.Array) -> list[LinearCall]:
    """Every intercepted linear layer call of one forward pass, in call order: Linen
    Dense/DenseGeneral/Conv and NNX Linear/LinearGeneral/Conv.

    Calls whose kernel or bias is used by more than one call are marked ``shared``.  ``x`` is a
    batch whose first example is used to trace the model abstractly (no FLOPs are spent).

    Raises:
      TypeError: ``apply_fn`` not callable, or ``x`` not an array.
      ValueError: ``x`` without a leading batch axis of length >= 1.
    """
    check_callable(apply_fn, "apply_fn")
    check_batch(x, "x")
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
    calls: list[LinearCall],
    leaf_ids: list[np.ndarray],
    leaf_shapes: list[tuple[int, ...]],
    *,
    warn_if_empty: bool = False,
) -> tuple[list[tuple[LinearCall, str, np.ndarray, np.ndarray | None]], set[int]]:
    """Decide which calls are handled by factorization, and how.

    Returns the plan (call, kernel axis kind, kernel cell ids, bias cell ids) and the set of
    leaf indices it covers; every other grouped leaf goes to the generic Jacobian path.  With
    ``warn_if_empty`` (``backend="structured"`` asked for explicitly) an empty plan, where the
    whole kernel takes the Jacobian path, is reported by a ``UserWarning``.

    Raises:
      TypeError: ``calls`` not a sequence of :class:`LinearCall` (from :func:`find_linear_calls`).
      ValueError: ``leaf_ids`` and ``leaf_shapes`` of different lengths, or a call whose kernel or
        bias leaf is not among them.
    """
    _check_plan_arguments(calls, leaf_ids, leaf_shapes)
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
    if warn_if_empty and not plan:
        warnings.warn(
            f"backend='structured': none of the model's {len(calls)} intercepted layer calls "
            "can be factorized (supported: Linen Dense/DenseGeneral/Conv and NNX "
            "Linear/LinearGeneral/Conv, not subclasses, whose kernel is a leaf of params used "
            "by one call and grouped along one kernel axis); every leaf takes the Jacobian "
            "path, as with backend='jacobian'",
            stacklevel=3,
        )
    return plan, covered


def _check_plan_arguments(calls: Any, leaf_ids: Any, leaf_shapes: Any) -> None:
    if isinstance(calls, str) or not isinstance(calls, list | tuple):
        raise TypeError(
            f"calls: expected a list of LinearCall (find_linear_calls), got {type(calls).__name__}"
        )
    for i, call in enumerate(calls):
        if not isinstance(call, LinearCall):
            raise TypeError(f"calls[{i}]: expected a LinearCall, got {type(call).__name__}")
    if len(leaf_ids) != len(leaf_shapes):
        raise ValueError(
            f"leaf_ids: expected one entry per leaf of leaf_shapes ({len(leaf_shapes)}), got "
            f"{len(leaf_ids)}"
        )
    for i, call in enumerate(calls):
        for name in ("kernel_leaf", "bias_leaf"):
            leaf = getattr(call, name)
            if leaf is not None and not 0 <= leaf < len(leaf_shapes):
                raise ValueError(
                    f"calls[{i}].{name}: expected a leaf index in [0, {len(leaf_shapes)}) of "
                    f"leaf_shapes, got {leaf}"
                )


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

    Raises:
      TypeError / ValueError: ``p`` not a positive int; ``x1`` or ``x2`` not a batch, or
        ``x2`` with other example shapes than ``x1``.
    """
    check_positive_int(p, "p")
    check_batch(x1, "x1")
    check_second_batch(x2, x1, reference="x1")
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
