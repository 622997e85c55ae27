"""Masked training as an optax transformation: pruned weights become exactly 0.0 and stay there.

:func:`masked` wraps any optimizer.  Its state holds a 0/1 mask per weight next to the inner
optimizer's state; the inner optimizer sees the pruned model (masked gradients and masked
parameters), and the final updates land pruned weights on exactly zero, whatever the inner
optimizer does (weight decay, momentum and Adam statistics cannot resurrect them).  A new mask is
installed with :func:`set_mask`, which also zeros the optimizer statistics of newly pruned
weights.  The mask is ordinary state: everything is jit-able and works under ``jax.pmap`` and
``shard_map`` (replicate or shard the mask like the parameters).

Not to be confused with ``optax.masked``, which applies a transformation to a subset of the
parameter leaves.

References:
  Chen et al. (2023), Section 3.2 (``m * w``: training the pruned network) and Algorithm 2.
  Lee et al. (2023), "JaxPruner: a concise library for sparsity research" (sparse training as an
  optax transformation that keeps masks in the optimizer state).  Frankle et al. (2020),
  "Linear mode connectivity and the lottery ticket hypothesis" (training masked subnetworks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_optimizer
from jaxprune.typing import PyTree

__all__ = [
    "MaskedState",
    "apply_mask",
    "map_param_subtrees",
    "masked",
    "masked_update",
    "set_mask",
    "zero_pruned_statistics",
]


class MaskedState(NamedTuple):
    """State of :func:`masked`.

    Attributes:
      mask: a pytree like ``params``; each leaf has its parameter's shape and dtype and holds
        1 (kept) or 0 (pruned) per weight.
      inner_state: the wrapped optimizer's state.
    """

    mask: PyTree
    inner_state: optax.OptState


def _binary_mask(mask: PyTree, reference: PyTree, name: str) -> PyTree:
    """Check a 0/1 mask against ``reference`` and return it as 0/1 in the reference's shapes
    and dtypes (broadcast to full shape)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(reference)
    mask_def = jax.tree_util.tree_structure(mask)
    if mask_def != treedef:
        raise ValueError(
            f"{name} must have the pytree structure of the parameters, {treedef}; got {mask_def}"
        )
    out = []
    for (path, ref), leaf in zip(flat, jax.tree_util.tree_leaves(mask)):
        where = f"{name}{jax.tree_util.keystr(path)}"
        dtype = jnp.result_type(leaf)
        if not any(jnp.issubdtype(dtype, kind) for kind in (jnp.bool_, jnp.integer, jnp.floating)):
            raise TypeError(f"{where}: expected a boolean, integer or float mask, got {dtype}")
        shape = np.shape(ref)
        try:
            broadcast = np.broadcast_shapes(np.shape(leaf), shape)
        except ValueError:
            broadcast = None
        if broadcast != tuple(shape):
            raise ValueError(
                f"{where}: shape {np.shape(leaf)} does not broadcast to the parameter's shape "
                f"{tuple(shape)}"
            )
        if not isinstance(leaf, jax.core.Tracer):
            values = np.asarray(leaf)
            if not np.all((values == 0) | (values == 1)):
                bad = values[(values != 0) & (values != 1)].ravel()[0]
                raise ValueError(f"{where}: mask entries must be 0 or 1, got {bad}")
        out.append(jnp.broadcast_to(jnp.asarray(leaf) != 0, shape).astype(jnp.result_type(ref)))
    return jax.tree_util.tree_unflatten(treedef, out)


def check_structure(tree: PyTree, reference: PyTree, name: str) -> None:
    """Raise ``ValueError`` unless ``tree`` has the pytree structure of the parameters
    ``reference`` (static: works under tracing)."""
    expected, got = jax.tree_util.tree_structure(reference), jax.tree_util.tree_structure(tree)
    if got != expected:
        raise ValueError(
            f"{name}: expected the pytree structure of the parameters, {expected}; got {got}"
        )


def _keep(mask: PyTree, tree: PyTree) -> PyTree:
    """``tree`` with the entries where ``mask`` is 0 set to exactly 0 (NaN and inf included)."""
    return jax.tree_util.tree_map(lambda m, x: jnp.where(m != 0, x, 0), mask, tree)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """The pruned parameters ``m * w``: entries where ``mask`` is 0 set to exactly 0.0.

    :func:`set_mask` does not touch the parameters (they are not optimizer state); the first
    update after it zeros the newly pruned weights.  Call this at installation time to evaluate
    or checkpoint the pruned model before that update.

    Args:
      params: a parameter pytree.
      mask: a pytree like ``params`` whose leaves broadcast to the parameters' shapes and hold
        0 or 1 (bool, int or float).

    Returns:
      A pytree like ``params`` (same shapes and dtypes).

    References:
      Chen et al. (2023), Section 3.2.1 (the Khatri–Rao product ``m * w``, here per weight).
    """
    return _keep(_binary_mask(mask, params, "mask"), params)


def masked(
    inner: optax.GradientTransformation,
    initial_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Train only the weights a mask keeps; pruned weights become and stay exactly 0.0.

    ``update(updates, state, params)`` runs ``inner`` on the masked gradients, with the masked
    parameters ``m * w`` as its ``params`` (so weight decay and other parameter-dependent terms
    see the pruned model and the statistics of pruned weights stay 0), and returns
    ``where(m, inner_updates, -params)``: after ``optax.apply_updates`` the new parameters are
    exactly ``m * (params + inner_updates)``.  ``where`` rather than a product keeps a NaN or inf
    of the inner optimizer at a pruned entry (Adam with ``eps=0`` gives 0/0 there) out of the
    result.

    Use it as the outermost transformation: wrap the whole chain,
    ``masked(optax.chain(clip, optax.adamw(...)))``, or put it last in a chain.  Its updates at
    pruned entries are ``-params``, which lands them on zero only if nothing rescales the updates
    afterwards (a later learning-rate scaling or clipping would leave ``(1 - c) * params``).
    Transformations before it in a chain see unmasked gradients and their statistics are not
    reset by :func:`set_mask`.  Wrapping by ``optax.MultiSteps`` or ``optax.apply_if_finite``
    is fine: they pass the updates through or replace them by zeros.

    Args:
      inner: the optimizer to run on the pruned model (any ``GradientTransformation``; extra
        arguments of ``update`` are forwarded to it).
      initial_mask: the mask installed by ``init``: a pytree like ``params`` of 0/1 leaves that
        broadcast to the parameters' shapes, or a function ``params -> mask``; all ones (dense)
        if ``None``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`MaskedState`; ``update``
      requires ``params`` (ValueError without them) and ``updates`` and ``params`` with the
      mask's pytree structure (ValueError naming the argument otherwise).

    Raises:
      TypeError: ``inner`` is not an optax ``GradientTransformation``.

    References:
      Chen et al. (2023), Section 3.2 and Algorithm 2 (training ``m * w``).  Lee et al. (2023),
      JaxPruner (the mask as optimizer state of an optax wrapper).
    """
    inner = optax.with_extra_args_support(check_optimizer(inner, "inner"))

    def init_fn(params: PyTree) -> MaskedState:
        if initial_mask is None:
            mask = jax.tree_util.tree_map(jnp.ones_like, params)
        else:
            given = initial_mask(params) if callable(initial_mask) else initial_mask
            mask = _binary_mask(given, params, "initial_mask")
        return MaskedState(mask=mask, inner_state=inner.init(_keep(mask, params)))

    def update_fn(
        updates: PyTree, state: MaskedState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, MaskedState]:
        if params is None:
            raise ValueError(
                "masked: update needs params (call update(updates, state, params)) to land "
                "pruned weights on zero"
            )
        for name, tree in (("updates", updates), ("params", params)):
            check_structure(tree, state.mask, name)
        out, inner_state = masked_update(
            inner, state.mask, updates, state.inner_state, params, **extra_args
        )
        return out, MaskedState(mask=state.mask, inner_state=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def masked_update(
    inner: optax.GradientTransformationExtraArgs,
    mask: PyTree,
    updates: PyTree,
    inner_state: optax.OptState,
    params: PyTree,
    **extra_args: Any,
) -> tuple[PyTree, optax.OptState]:
    """One step of ``inner`` on the kept weights only: the update rule of :func:`masked`.

    ``inner`` sees the gradient and the parameters with their pruned entries at 0, so its
    statistics of pruned weights do not move (they stay 0 after :func:`zero_pruned_statistics`);
    the returned update is ``inner``'s where the mask is 1 and ``−w`` where it is 0, so every
    pruned weight lands on exactly 0.0.

    Args:
      inner: the wrapped optimizer (``optax.with_extra_args_support`` applied).
      mask: a pytree like ``params`` of 0/1 leaves in the parameters' shapes (already checked).
      updates, params: the gradient and the parameters, pytrees like ``mask``.
      inner_state: ``inner``'s state.
      **extra_args: passed on to ``inner.update``.

    Returns:
      ``(updates, inner_state)``: the masked update (pytree like ``params``) and ``inner``'s new
      state.

    References:
      Chen et al. (2023), Section 3.2 and Algorithm 2 (training ``m * w``).
    """
    inner_updates, inner_state = inner.update(
        _keep(mask, updates), inner_state, _keep(mask, params), **extra_args
    )
    out = jax.tree_util.tree_map(
        lambda m, u, p: jnp.where(m != 0, u, -p), mask, inner_updates, params
    )
    return out, inner_state


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def map_param_subtrees(tree: PyTree, reference: PyTree, fn: Callable[[PyTree], PyTree]) -> PyTree:
    """Apply ``fn`` to every subtree of ``tree`` with the pytree structure of ``reference``.

    These are an optimizer state's parameter-shaped statistics (Adam's ``mu`` and ``nu``,
    momentum traces, a :class:`MaskedState`'s mask, also inside chains,
    ``inject_hyperparams``, ``optax.masked`` and ``optax.partition``, with ``optax.MaskedNode``
    standing in for left-out leaves): the subtrees that ``optax.tree_map_params`` finds, found
    here from the state alone.  Other nodes are returned unchanged.  Used to zero pruned
    statistics and to compact optimizer states along with their model.

    Args:
      tree: e.g. an optimizer state.
      reference: a pytree with the parameters' structure.
      fn: maps one such subtree to its replacement.
    """
    reference_def = jax.tree_util.tree_structure(reference)

    def visit(node: Any) -> Any:
        if jax.tree_util.tree_structure(node, is_leaf=_is_masked_node) == reference_def:
            return fn(node)
        children, node_def = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        if jax.tree_util.treedef_is_leaf(node_def):
            return node
        return node_def.unflatten([visit(child) for child in children])

    return visit(tree)


def zero_pruned_statistics(tree: PyTree, mask: PyTree) -> PyTree:
    """Zero the pruned entries of every parameter-shaped statistic found in ``tree``.

    Within each statistic (see :func:`map_param_subtrees`), the inexact array leaves of their
    parameter's shape are masked and the others (factored moments, counters, masked-out nodes)
    are kept.  :func:`set_mask` applies it when a new mask is installed, so a pruned weight
    starts from zero momentum if it is ever regrown.

    Args:
      tree: an optimizer state (any pytree).
      mask: a pytree with the parameters' structure, 0/1 leaves in the parameters' shapes.

    Returns:
      ``tree`` with the same structure, shapes and dtypes.
    """
    mask_def = jax.tree_util.tree_structure(mask)
    mask_leaves = jax.tree_util.tree_leaves(mask)

    def zero_pruned(stat: Any, m: jax.Array) -> Any:
        if (
            isinstance(stat, jax.Array | np.ndarray)
            and stat.shape == m.shape
            and jnp.issubdtype(stat.dtype, jnp.inexact)
        ):
            return jnp.where(m != 0, stat, 0)
        return stat

    def zero_subtree(node: Any) -> Any:
        stats = jax.tree_util.tree_leaves(node, is_leaf=_is_masked_node)
        return mask_def.unflatten([zero_pruned(s, m) for s, m in zip(stats, mask_leaves)])

    return map_param_subtrees(tree, mask, zero_subtree)


def set_mask(state: MaskedState, new_mask: PyTree, *, reset: bool = True) -> MaskedState:
    """Install ``new_mask`` in a :class:`MaskedState`.

    With ``reset``, the optimizer statistics of the weights the new mask prunes are set to
    exactly 0: every subtree of ``state.inner_state`` with the pytree structure of the
    parameters (Adam's ``mu`` and ``nu``, momentum traces, ... also inside chains,
    ``inject_hyperparams``, ``optax.masked`` and ``optax.partition``) has its inexact leaves of
    the parameter's shape masked; other leaves
    (step counts, factored second moments such as Adafactor's ``v_row``/``v_col``, whose
    entries belong to no single weight) are kept.  These are the subtrees that
    ``optax.tree_map_params`` maps over, found from the state alone, so this function needs no
    handle on the inner optimizer.  Statistics of kept weights are untouched, and revived
    weights (0 -> 1) restart from 0 with zero statistics.  With ``reset=False`` only the mask
    changes.

    The parameters are not part of the state: the next update zeros the newly pruned weights,
    or call :func:`apply_mask` now.  Jit-able; inside ``pmap``/``shard_map`` pass the same mask
    on every device.

    Args:
      state: the state of :func:`masked` (pass the element of a chain's state tuple).
      new_mask: a pytree like ``params`` whose leaves broadcast to the parameters' shapes and
        hold 0 or 1 (bool, int or float; concrete values are checked).
      reset: whether to zero the statistics of pruned weights.

    Returns:
      The new :class:`MaskedState`.

    References:
      Chen et al. (2023), Algorithm 2 (re-masking at the pruning times ``t_j``).  Lee et al. (2023),
      JaxPruner.
    """
    if not isinstance(state, MaskedState):
        raise TypeError(
            f"state must be a MaskedState (the state of masked(...)), got {type(state).__name__}"
        )
    mask = _binary_mask(new_mask, state.mask, "new_mask")
    inner_state = zero_pruned_statistics(state.inner_state, mask) if reset else state.inner_state
    return MaskedState(mask=mask, inner_state=inner_state)
