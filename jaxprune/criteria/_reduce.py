"""Shared helpers of the pruning criteria: argument checks and per-group sums of elementwise scores.

Every criterion scores each weight (or each group directly) and reduces to one score per group
with :func:`group_sum`; weights whose group id is ``-1`` (ungrouped) count in no group.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxprune._validation import check_callable, check_finite_tree, is_traced
from jaxprune.group_ids import validate_group_ids
from jaxprune.masks.layout import GroupLayout
from jaxprune.typing import PyTree


def checked_num_groups(params: PyTree, group_ids: PyTree) -> int:
    """Check that ``params`` are finite and ``group_ids`` match them; return ``p``.

    Raises:
      ValueError: a parameter leaf holds NaN or inf, or ``group_ids`` does not match ``params``
        (the message names the offending path).
      TypeError: a group-id leaf is not a concrete integer array.
    """
    check_finite_tree(params, "params")
    return validate_group_ids(params, group_ids)


def loss_and_grad(loss_fn: Callable[..., jax.Array], params: PyTree, *args: Any) -> tuple:
    """``(loss, ∇loss)`` of ``loss_fn(params, *args)`` in ``params``, one reverse pass.

    Raises:
      ValueError: the output of ``loss_fn`` is not a scalar (its shape is static, so this is
        checked while tracing, at no cost).
    """
    loss, pullback = jax.vjp(lambda p: loss_fn(p, *args), params)
    check_scalar_loss(loss)
    return loss, pullback(jnp.ones_like(loss))[0]


def check_scalar_loss(loss: jax.Array, name: str = "loss_fn") -> None:
    """Raise ``ValueError`` unless ``loss`` has shape ``()`` (static: works under tracing)."""
    if jnp.shape(loss) != ():
        raise ValueError(
            f"{name}: expected a scalar loss (shape ()), got an output of shape {jnp.shape(loss)}"
        )


def check_finite_loss(loss: jax.Array, name: str = "loss_fn", where: str = "params") -> None:
    """Raise ``ValueError`` if the concrete ``loss`` is NaN or inf (traced losses pass: inside
    ``jit`` a NaN loss gives NaN scores, which :func:`~jaxprune.masks.topk_mask` refuses)."""
    if not is_traced(loss) and not np.isfinite(float(loss)):
        raise ValueError(f"{name}: expected a finite loss at {where}, got {float(loss)}")


def group_sum(values: PyTree, group_ids: PyTree, p: int) -> jax.Array:
    """Sum an elementwise score over each group: ``out[g] = sum_{j in g} values_j``.

    Args:
      values: pytree with the structure and leaf shapes of the parameters (one value per weight).
      group_ids: group-id pytree matching ``values`` (see :mod:`jaxprune.group_ids`); its leaves
        may be traced (a compiled criterion takes them as arguments, so one program serves
        every call).
      p: number of groups.

    Returns:
      ``(p,)`` array in the dtype of ``values``; weights with id ``-1`` are dropped.
    """
    leaves = jax.tree_util.tree_leaves(values)
    ids = jax.tree_util.tree_leaves(group_ids)
    # segment_sum drops ids outside [0, p), so the ungrouped id -1 counts nowhere.
    per_leaf = [
        jax.ops.segment_sum(
            jnp.ravel(leaf), jnp.ravel(jnp.broadcast_to(leaf_ids, jnp.shape(leaf))), p
        )
        for leaf, leaf_ids in zip(leaves, ids, strict=True)
    ]
    return sum(per_leaf[1:], per_leaf[0])


def call_compiled(
    core: Callable[..., Any], static_argnums: tuple[int, ...], loss_fn: Callable, *args: Any
) -> Any:
    """``core(loss_fn, *args)`` compiled, once per function when ``loss_fn`` is a ``Partial``.

    A :class:`jax.tree_util.Partial` is passed as an argument (its bound arrays are traced, its
    function is part of the compile key), so the same function with new data (the batches of
    each pruning event, a new seed) reuses one program.  Any other callable is compiled by a
    jit of its own, as a closure must be: its captured arrays are constants of the program, and
    that jit is dropped with the call rather than kept alive in a shared cache.

    Args:
      core: ``core(loss_fn, *args)``, traceable.
      static_argnums: positions (in ``(loss_fn, *args)``) of the hashable, static arguments.
      loss_fn: the loss the criterion differentiates.
      *args: the remaining arguments of ``core``.
    """
    check_callable(loss_fn, "loss_fn")
    if isinstance(loss_fn, Partial):
        return _shared_jit(core, static_argnums)(loss_fn, *args)

    def program(*arguments: Any) -> Any:  # a new function: jit's caches forget it with the call
        return core(*arguments)

    return jax.jit(program, static_argnums=static_argnums)(Partial(loss_fn), *args)


@functools.cache
def _shared_jit(core: Callable[..., Any], static_argnums: tuple[int, ...]) -> Callable[..., Any]:
    return jax.jit(core, static_argnums=static_argnums)


def check_layout(layout: Any, p: int, name: str = "layout") -> GroupLayout:
    """Return ``layout`` if it is a :class:`GroupLayout` of exactly ``p`` groups, else raise.

    Raises:
      TypeError: ``layout`` is not a :class:`GroupLayout`.
      ValueError: its number of groups is not ``p``, or a layer index is outside ``[0, L)``.
    """
    if not isinstance(layout, GroupLayout):
        raise TypeError(f"{name} must be a GroupLayout, got {type(layout).__name__}")
    if layout.num_groups != p:
        raise ValueError(
            f"{name} describes {layout.num_groups} groups but group_ids has {p} groups"
        )
    layers = np.asarray(layout.layer_of_group)
    if layers.size and (layers.min() < 0 or layers.max() >= layout.num_layers):
        raise ValueError(
            f"{name}.layer_of_group must lie in [0, {layout.num_layers}), got values in "
            f"[{int(layers.min())}, {int(layers.max())}]"
        )
    return layout
