"""Natural, magnitude and Hessian importance of weight groups, pruning and natural pruning.

Li et al. (2020), Section 2, score a set ``Δ`` of weights three ways: the natural importance
``I^N_Δ(θ, θ^R) = L(θ^R_Δ + θ_Δ̄) − L(θ)`` (Def. 2.1: the exact loss change when the weights of
``Δ`` take the reference values, ``θ^R = 0`` for regular pruning and ``θ^R = θ_0`` for
init-pruning), the magnitude importance ``I^M_Δ = Σ_{i∈Δ} θ_i²`` and the Hessian importance
``I^H_Δ = Σ_{i∈Δ} ½ H_ii θ_i²`` (Def. 2.2, eq. 2.1, with Optimal Brain Damage's ½ by reading
HB-3, docs/readings.md).  Pruning ``Π_s`` (Def. 2.3) keeps the ``s`` best-scoring groups and
zeros the rest; natural pruning (NP) keeps the ``s`` groups whose joint support has the
smallest loss.

Conventions shared by every function here:

* Groups: ``group_ids`` is a group-id pytree (:mod:`jaxprune.group_ids`) with ``p`` disjoint
  groups, or ``None`` for unstructured pruning: one group per scalar weight, numbered in
  flattening order (leaves in ``jax.tree_util`` order, row-major within a leaf, the order of
  ``jax.flatten_util.ravel_pytree``), so ``p`` is the number of weights ``P``.
* Sets: the importance functions also take ``group_ids`` as a non-empty sequence of boolean
  pytrees shaped like ``params`` (leaves broadcastable to each parameter leaf, e.g. ``True`` /
  ``False`` for a whole leaf), each one set ``Δ``; sets may overlap and may be empty.
* Paths for natural importance, all exact and returning the same ``(p,)`` scores where they
  apply: :func:`natural_importance` (any groups, sets or reference; one full forward pass per
  group), :func:`natural_importance_from_gates` (regular pruning of gated neurons, channels or
  heads: only the part of the model downstream of the gates is redone per group) and
  :func:`natural_importance_of_dense_inputs` (neurons feeding a single dense layer: each
  removal is a rank-1 change of that layer's output, nothing before it is redone).  Prefer the
  most specific one that applies; chunking defaults are :func:`default_chunk_size`.
* Sign: higher means more important.  NI can be negative (removing the group lowers the loss).
  For MI and HI (sums over weights) ``Π_s`` is exactly "drop the ``p − s`` smallest group
  scores"; NI is not additive over groups, so pruning by one-shot group NI is a proxy for NP,
  which :func:`natural_pruning` solves (exactly on small ``p``, greedily otherwise).

References:
  Li et al. (2020), "Exploring Weight Importance and Hessian Bias in Model Pruning",
  arXiv:2006.10903, Section 2 (Defs. 2.1-2.3, eq. 2.1), with readings HB-3, HB-10 and HB-11
  (docs/readings.md).  LeCun, Denker & Solla (1990), "Optimal brain damage" (the ½).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import (
    check_choice,
    check_finite_tree,
    check_int,
    check_positive_int,
)
from jaxprune.criteria._reduce import checked_num_groups, group_sum
from jaxprune.criteria.hessian_diag import hessian_diagonal_scores
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import apply_group_mask, topk_mask
from jaxprune.typing import LossFn, PyTree

__all__ = [
    "ACCELERATOR_CHUNK",
    "EXACT_SUPPORT_LIMIT",
    "HESSIAN_METHODS",
    "NATURAL_PRUNING_METHODS",
    "STRUCTURED_CHUNK_CPU",
    "WHOLE_MODEL_BLOCK_ENTRIES_CPU",
    "NaturalPruning",
    "default_chunk_size",
    "hessian_importance",
    "magnitude_importance",
    "natural_importance",
    "natural_importance_from_gates",
    "natural_importance_of_dense_inputs",
    "natural_pruning",
    "prune",
    "prune_mask",
]

#: Most supports ``C(p, s)`` that exact natural pruning enumerates.
EXACT_SUPPORT_LIMIT = 2**20

#: Defaults of ``chunk_size`` (:func:`default_chunk_size`): on CPU the whole-model paths
#: (:func:`natural_importance`, :func:`natural_pruning`) put at most
#: ``WHOLE_MODEL_BLOCK_ENTRIES_CPU`` parameter entries in one block (at least one model), the
#: structured paths (:func:`natural_importance_from_gates`,
#: :func:`natural_importance_of_dense_inputs`) use ``STRUCTURED_CHUNK_CPU``; every path uses
#: ``ACCELERATOR_CHUNK`` on GPU/TPU, also the cap on CPU.
WHOLE_MODEL_BLOCK_ENTRIES_CPU = 4096
STRUCTURED_CHUNK_CPU = 4
ACCELERATOR_CHUNK = 64

#: ``method`` choices of :func:`hessian_importance`.
HESSIAN_METHODS: tuple[str, ...] = ("exact", "hutchinson")

#: ``method`` choices of :func:`natural_pruning`.
NATURAL_PRUNING_METHODS: tuple[str, ...] = ("auto", "exact", "greedy")


class NaturalPruning(NamedTuple):
    """The result of natural pruning.

    Attributes:
      mask: ``(p,)`` bool NumPy array, True for the ``s`` kept groups.
      params: the pruned parameters: weights of removed groups take the reference values (zero
        for regular pruning), all others are unchanged.
      loss: ``loss_fn(params)`` of the pruned parameters, a float.
      method: ``"exact"`` (the minimum over all supports) or ``"greedy"`` (backward
        elimination), the one used (``"auto"`` resolves to one of them).
    """

    mask: np.ndarray
    params: PyTree
    loss: float
    method: str


# ---------------------------------------------------------------------------------------------
# Groups, sets and the reference: checked once at the public boundary.


def _unstructured_ids(params: PyTree) -> PyTree:
    """Group ids with one group per scalar weight, numbered in ``ravel_pytree`` order."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    sizes = [int(np.size(leaf)) for leaf in leaves]
    starts = np.cumsum([0, *sizes[:-1]])
    ids = [
        (start + np.arange(size, dtype=np.int32)).reshape(np.shape(leaf))
        for leaf, start, size in zip(leaves, starts, sizes, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, ids)


def _groups(params: PyTree, group_ids: PyTree | None) -> tuple[PyTree, int]:
    """The checked group-id pytree (``None``: unstructured) and its number of groups ``p``."""
    ids = _unstructured_ids(params) if group_ids is None else group_ids
    return ids, checked_num_groups(params, ids)


def _is_boolean(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return np.dtype(np.asarray(leaf).dtype if dtype is None else dtype) == np.bool_


def _is_set_sequence(group_ids: Any) -> bool:
    """True when ``group_ids`` is a sequence of boolean pytrees (sets), not a group-id pytree."""
    if not isinstance(group_ids, Sequence) or isinstance(group_ids, str):
        return False
    leaves = jax.tree_util.tree_leaves(group_ids)
    return len(group_ids) == 0 or all(_is_boolean(leaf) for leaf in leaves)


def _set_matrix(params: PyTree, sets: Sequence[PyTree]) -> np.ndarray:
    """``(len(sets), P)`` bool membership of every weight (``ravel_pytree`` order) in each set.

    Raises:
      ValueError: no sets, a set without the structure of ``params``, or a leaf that does not
        broadcast to its parameter's shape.
      TypeError: a traced set leaf.
    """
    if len(sets) == 0:
        raise ValueError("group_ids: expected a non-empty sequence of sets, got an empty one")
    param_leaves, treedef = jax.tree_util.tree_flatten(params)
    rows = []
    for index, members in enumerate(sets):
        leaves, structure = jax.tree_util.tree_flatten(members)
        if structure != treedef:
            raise ValueError(
                f"group_ids[{index}]: a set must have the pytree structure of params "
                f"{treedef}, got {structure}"
            )
        row = []
        for leaf, param in zip(leaves, param_leaves, strict=True):
            if isinstance(leaf, jax.core.Tracer):
                raise TypeError(f"group_ids[{index}]: sets must be concrete, got a tracer")
            try:
                row.append(np.broadcast_to(np.asarray(leaf), np.shape(param)).ravel())
            except ValueError:
                raise ValueError(
                    f"group_ids[{index}]: a leaf of shape {np.shape(leaf)} does not broadcast "
                    f"to the parameter's shape {np.shape(param)}"
                ) from None
        rows.append(np.concatenate(row) if row else np.zeros(0, bool))
    return np.stack(rows)


def _leaves_like_params(tree: PyTree, params: PyTree, name: str, what: str) -> list:
    """The leaves of ``tree``; ValueError unless it has the structure and leaf shapes of
    ``params`` (``what`` is the expected value, as the message names it)."""
    leaves, structure = jax.tree_util.tree_flatten(tree)
    param_leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = [np.shape(leaf) for leaf in leaves]
    expected = [np.shape(leaf) for leaf in param_leaves]
    if structure != treedef or shapes != expected:
        raise ValueError(
            f"{name}: expected {what} with the structure {treedef} and leaf shapes {expected} "
            f"of params, got {structure} with shapes {shapes}"
        )
    return leaves


def _checked_reference(params: PyTree, reference: PyTree | None) -> PyTree | None:
    """``reference`` if it is finite with the structure and leaf shapes of ``params``."""
    if reference is None:
        return None
    _leaves_like_params(reference, params, "reference", "a pytree")
    check_finite_tree(reference, "reference")
    return reference


def _checked_keep(keep: Any, p: int) -> int:
    keep = check_int(keep, "keep", minimum=0)
    if keep > p:
        raise ValueError(f"keep: expected an int in [0, {p}] (the number of groups), got {keep}")
    return keep


def _index_leaves(params: PyTree, group_ids: PyTree, p: int) -> list[np.ndarray | None]:
    """Per leaf, its compact group ids with ``-1`` mapped to ``p``; None for ungrouped leaves."""
    indices: list[np.ndarray | None] = []
    for ids in jax.tree_util.tree_leaves(group_ids):
        ids = np.asarray(ids, np.int32)
        indices.append(np.where(ids < 0, p, ids) if (ids >= 0).any() else None)
    return indices


# ---------------------------------------------------------------------------------------------
# Traced building blocks: models with some groups (or sets) replaced by the reference.


def _replace_groups(
    params: PyTree, reference: PyTree | None, indices: list, kept: jax.Array
) -> PyTree:
    """``params`` with the weights of every group ``g`` with ``kept[g]`` False replaced."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    refs = [None] * len(leaves) if reference is None else jax.tree_util.tree_leaves(reference)
    extended = jnp.concatenate([kept, jnp.ones((1,), bool)])  # ungrouped weights stay
    out = [
        w if ids is None else jnp.where(extended[ids], w, 0 if r is None else r)
        for w, r, ids in zip(leaves, refs, indices, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _replace_set(params: PyTree, reference: PyTree | None, members: jax.Array) -> PyTree:
    """``params`` with the weights flagged in the flat ``(P,)`` ``members`` replaced."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    refs = [None] * len(leaves) if reference is None else jax.tree_util.tree_leaves(reference)
    out, start = [], 0
    for w, r in zip(leaves, refs, strict=True):
        size = int(np.size(w))
        flags = members[start : start + size].reshape(np.shape(w))
        out.append(jnp.where(flags, 0 if r is None else r, w))
        start += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _scalar_loss(loss_fn: LossFn, params: PyTree, name: str = "loss_fn") -> jax.Array:
    value = loss_fn(params)
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name}: expected a scalar loss, got shape {jnp.shape(value)}")
    return value


def _hashable(loss_fn: Any, name: str = "loss_fn") -> Any:
    """``loss_fn`` usable as a static jit argument (compiled once per loss function object)."""
    if not callable(loss_fn):
        raise TypeError(f"{name}: expected a callable, got {type(loss_fn).__name__}")
    try:
        hash(loss_fn)
    except TypeError:
        return functools.partial(loss_fn)
    return loss_fn


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _group_removal_losses(loss_fn, chunk_size, params, reference, indices, alive):
    """Loss of the model ``alive`` and of it with each group ``g`` also removed: ``(), (p,)``."""
    p = alive.shape[0]
    base = _scalar_loss(loss_fn, _replace_groups(params, reference, indices, alive))

    def removed(g: jax.Array) -> jax.Array:
        kept = alive & (jnp.arange(p) != g)
        return _scalar_loss(loss_fn, _replace_groups(params, reference, indices, kept))

    return base, jax.lax.map(removed, jnp.arange(p), batch_size=min(chunk_size, p))


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _set_removal_losses(loss_fn, chunk_size, params, reference, members):
    """Loss of ``params`` and of it with each set (row of ``members``) replaced."""
    base = _scalar_loss(loss_fn, params)

    def removed(row: jax.Array) -> jax.Array:
        return _scalar_loss(loss_fn, _replace_set(params, reference, row))

    return base, jax.lax.map(removed, members, batch_size=min(chunk_size, members.shape[0]))


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size", "p", "listed_kept"))
def _support_losses(loss_fn, chunk_size, p, listed_kept, params, reference, indices, listed):
    """Loss of every support; row ``listed[n]`` names its kept (or removed) groups."""

    def support_loss(names: jax.Array) -> jax.Array:
        if listed_kept:
            kept = jnp.zeros((p,), bool).at[names].set(True)
        else:
            kept = jnp.ones((p,), bool).at[names].set(False)
        return _scalar_loss(loss_fn, _replace_groups(params, reference, indices, kept))

    return jax.lax.map(support_loss, listed, batch_size=min(chunk_size, listed.shape[0]))


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk_size"))
def _backward_elimination(loss_fn, chunk_size, rounds, params, reference, indices, alive):
    """``rounds`` greedy removals (traced: one program for every ``keep``); returns the final
    alive mask and whether a live candidate's loss was NaN."""

    def step(_, carry):
        alive, saw_nan = carry
        _, losses = _group_removal_losses(loss_fn, chunk_size, params, reference, indices, alive)
        saw_nan = saw_nan | jnp.any(alive & jnp.isnan(losses))
        choice = jnp.argmin(jnp.where(alive, losses, jnp.inf))  # first index on ties
        choice = jnp.where(alive[choice], choice, jnp.argmax(alive))  # every live loss is inf
        return alive.at[choice].set(False), saw_nan

    return jax.lax.fori_loop(0, rounds, step, (alive, jnp.zeros((), bool)))


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _loss(loss_fn, params):
    """``loss_fn(params)``, compiled once per loss function object."""
    return _scalar_loss(loss_fn, params)


def _check_losses(
    base: jax.Array,
    losses: jax.Array,
    what: str,
    name: str = "loss_fn",
    unpruned: str = "params",
) -> None:
    """Raise unless the unpruned loss is finite and no loss in ``losses`` is NaN."""
    base = float(base)
    if not math.isfinite(base):
        raise ValueError(f"{name}: the loss of {unpruned} is {base}; expected a finite loss")
    nan = np.flatnonzero(np.isnan(np.asarray(losses)))
    if nan.size:
        raise ValueError(
            f"{name}: NaN loss with {what} {nan[:10].tolist()} replaced; expected real losses"
        )


# ---------------------------------------------------------------------------------------------
# Importance.


def default_chunk_size(num_params: int | None = None, *, backend: str | None = None) -> int:
    """The ``chunk_size`` used when none is given: how many candidates one step evaluates.

    Every path evaluates its ``p`` candidates in one compiled program, a ``lax.map`` over
    blocks of ``chunk_size`` candidates ``vmap``-ed together.  The rule:

    * Whole-model paths (:func:`natural_importance`, :func:`natural_pruning`; ``num_params``
      given): each lane of a block holds its own copy of the ``P`` parameters, so the block's
      matrix products are batched products of per-lane weights and ``chunk × P`` parameter
      entries move through memory.  XLA:CPU runs those no faster than one model after another
      (measured on MLPs 64-1000-10 and 64-100-10, batch 32 or 256: chunk 64 took 1.4-3.3x the
      time of chunk 1, and chunk 1 the time of a Python loop of compiled calls; replacing the
      group gather by a compare-select or a multiply by a 0/1 gate changed nothing measurable:
      a step costs one full forward pass either way), while for tiny
      models the loop's per-step overhead dominates (``P = 16``: chunk 64 2.4x faster than 1).
      So on ``"cpu"``: ``min(ACCELERATOR_CHUNK, max(1, WHOLE_MODEL_BLOCK_ENTRIES_CPU // P))``,
      one model per step above 4096 entries, and never slower than a Python loop of compiled
      calls beyond timing noise.
    * Structured paths (:func:`natural_importance_from_gates`,
      :func:`natural_importance_of_dense_inputs`; ``num_params=None``): the lanes share the
      weights (only gates or one rank-1 term differ), so a block is one larger matrix product;
      on ``"cpu"`` small blocks keep the per-lane activations in cache (MLP 64-1000-10: chunk 4
      about 1.4x faster than chunk 16 for the gated path, no difference for the dense-input
      path): :data:`STRUCTURED_CHUNK_CPU` (4).
    * GPUs, TPUs and other backends fill their cores with wide blocks on every path:
      :data:`ACCELERATOR_CHUNK` (64; the previous default, not re-measured on an accelerator).

    ``chunk_size`` changes speed and memory (one candidate's intermediates per lane), never the
    result beyond floating-point summation order.

    Args:
      num_params: ``P``, the number of parameter entries of the model, for the whole-model
        paths (an int >= 1); ``None`` for the structured paths.
      backend: a JAX platform name (``"cpu"``, ``"gpu"``, ``"tpu"``, ...); ``None`` is
        ``jax.default_backend()``.

    Returns:
      The default chunk size, an int in ``[1, ACCELERATOR_CHUNK]``.

    Raises:
      ValueError: ``num_params < 1``.
      TypeError: ``num_params`` is neither None nor an int.
    """
    if num_params is not None:
        num_params = check_positive_int(num_params, "num_params")
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return ACCELERATOR_CHUNK
    if num_params is None:
        return STRUCTURED_CHUNK_CPU
    return min(ACCELERATOR_CHUNK, max(1, WHOLE_MODEL_BLOCK_ENTRIES_CPU // num_params))


def _chunk(chunk_size: Any, params: PyTree | None) -> int:
    """The checked ``chunk_size``, or the default for ``params`` (None: a structured path)."""
    if chunk_size is not None:
        return check_positive_int(chunk_size, "chunk_size")
    if params is None:
        return default_chunk_size()
    num_params = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    return default_chunk_size(max(num_params, 1))


def natural_importance(
    loss_fn: LossFn,
    params: PyTree,
    group_ids: PyTree | Sequence[PyTree] | None,
    *,
    reference: PyTree | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    """Natural importance of every group or set: ``I^N_Δ = L(θ^R_Δ + θ_Δ̄) − L(θ)``.

    The general path: any groups or sets, any reference, any ``loss_fn``.  Each of the ``p``
    replaced models is a full forward pass, all of them in one compiled program (a ``lax.map``
    over blocks of ``chunk_size`` models ``vmap``-ed together; memory grows with
    ``chunk_size``, one model copy per lane, not with ``p``).  Its cost is ``p`` loss
    evaluations minus the per-call dispatch; the default chunking (:func:`default_chunk_size`)
    keeps it no slower than a Python loop of compiled calls on CPU.  The program is compiled
    once per ``loss_fn`` object, shapes and dtypes: repeated calls with the same ``loss_fn``
    reuse it.

    Which path to use:

    * Regular pruning (``θ^R = 0``) of neurons, channels or heads whose removal equals a zero
      multiplicative gate on their output (the model zoo's ``ModelSpec.gate_keyword``, e.g.
      an MLP's hidden units with ``act(0) = 0``): :func:`natural_importance_from_gates`, the
      same scores with only the computation downstream of the gates redone per group.
    * Those neurons feeding a single dense layer (an MLP hidden layer, a transformer MLP's
      hidden units, the features before a classifier): :func:`natural_importance_of_dense_inputs`,
      each removal a rank-1 change of that layer's output; the fastest.
    * Anything else (unstructured weights, arbitrary sets, init-pruning ``θ^R = θ_0``): this
      function.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` (e.g. the training loss on a fixed batch).
      params: parameter pytree ``θ`` (finite values).
      group_ids: a group-id pytree with ``p`` groups, ``None`` (one group per scalar weight,
        ``p = P``), or a non-empty sequence of ``n`` boolean pytrees like ``params``, each a set
        ``Δ`` (sets may overlap).
      reference: ``θ^R``, a pytree like ``params``; ``None`` is ``θ^R = 0`` (regular pruning),
        the initial weights ``θ_0`` give init-pruning.
      chunk_size: replaced models evaluated together (the vmap width), an int >= 1, or
        ``None`` for :func:`default_chunk_size` (on CPU ``4096 // P`` within ``[1, 64]``, 64
        elsewhere); it changes memory
        and speed, not the result (up to floating-point summation order).

    Returns:
      ``(p,)`` (or ``(n,)`` for sets) loss increases, in the loss dtype; may be negative.

    Raises:
      ValueError: ``params`` or ``reference`` hold NaN/inf, ``reference`` does not match
        ``params``, ``group_ids`` does not match ``params``, ``loss_fn`` is not scalar, the loss
        of ``params`` is not finite, or a replaced model's loss is NaN (the message names the
        groups); ``chunk_size < 1``.
      TypeError: ``chunk_size`` is not an int, ``loss_fn`` is not callable, or group ids / sets
        are not concrete integer / boolean arrays.

    References:
      Li et al. (2020), Sec. 2, Def. 2.1 (natural importance; pruning and init-pruning).
    """
    chunk_size = _chunk(chunk_size, params)
    loss_fn = _hashable(loss_fn)
    check_finite_tree(params, "params")
    reference = _checked_reference(params, reference)
    if _is_set_sequence(group_ids):
        members = jnp.asarray(_set_matrix(params, group_ids))
        base, losses = _set_removal_losses(loss_fn, chunk_size, params, reference, members)
        _check_losses(base, losses, "sets")
    else:
        ids, p = _groups(params, group_ids)
        indices = _index_leaves(params, ids, p)
        alive = jnp.ones((p,), bool)
        base, losses = _group_removal_losses(loss_fn, chunk_size, params, reference, indices, alive)
        _check_losses(base, losses, "groups")
    return losses - base


@functools.partial(jax.jit, static_argnames=("gated_loss_fn", "num_groups", "chunk_size"))
def _gate_removal_losses(gated_loss_fn, num_groups, chunk_size):
    """Loss with every gate 1 and with each gate ``g`` alone set to 0: ``(), (p,)``."""
    ones = jnp.ones((num_groups,))
    base = _scalar_loss(gated_loss_fn, ones, "gated_loss_fn")

    def removed(g: jax.Array) -> jax.Array:
        gates = jnp.where(jnp.arange(num_groups) == g, 0.0, ones)
        return _scalar_loss(gated_loss_fn, gates, "gated_loss_fn")

    return base, jax.lax.map(
        removed, jnp.arange(num_groups), batch_size=min(chunk_size, num_groups)
    )


def natural_importance_from_gates(
    gated_loss_fn: Any, num_groups: int, *, chunk_size: int | None = None
) -> jax.Array:
    """Natural importance of ``p`` gated groups: ``I^N_g = L(1 − e_g) − L(1)``.

    ``gated_loss_fn(gates)`` is the loss with the groups' outputs multiplied by the ``(p,)``
    ``gates`` (the zoo's modules take them through ``ModelSpec.gate_kwargs``, e.g.
    ``MLP(...).apply(params, x, neuron_gates=gates)``), ``1`` the all-ones vector and ``e_g``
    the ``g``-th unit vector.  When a zero gate removes exactly what group ``g``'s weights
    contribute (an MLP hidden unit with ``act(0) = 0``: zeroing its kernel column and bias, or
    its next-layer row, zeroes its output), this equals :func:`natural_importance` with those
    groups and ``reference=None`` (regular pruning, Def. 2.1 with ``θ^R = 0``).

    Everything upstream of the gates does not depend on them, so under the ``vmap`` of a block
    of ``chunk_size`` gate vectors it stays unbatched (and XLA hoists it out of the loop over
    blocks: on an MLP 64-1000-10 the gated loss ran as fast as one with the hidden activations
    precomputed), and the lanes share the weights downstream: each group costs the downstream
    part of one forward pass, here the gated ``(batch, width)`` activations times the next
    kernel, about 4-5x less than a loop of full evaluations on CPU (see
    ``experiments/benchmarks/bench_importance.py``).  When the gated units feed one dense
    layer, :func:`natural_importance_of_dense_inputs` is far cheaper.  Gates have the default
    float dtype (float64 under ``jax.enable_x64``).

    Args:
      gated_loss_fn: ``gated_loss_fn(gates (p,)) -> scalar``, data and parameters closed over
        (compiled once per function object).
      num_groups: ``p``, an int >= 1.
      chunk_size: gate vectors evaluated together, an int >= 1, or ``None`` for
        :func:`default_chunk_size` (4 on CPU, 64 elsewhere); memory and speed, not the result.

    Returns:
      ``(p,)`` loss increases; may be negative.

    Raises:
      ValueError: ``num_groups`` or ``chunk_size`` < 1; the loss is not scalar; the loss with
        every gate 1 is not finite; a removal's loss is NaN (the message names the groups).
      TypeError: ``gated_loss_fn`` not callable; ``num_groups``/``chunk_size`` not ints.

    References:
      Li et al. (2020), Sec. 2, Def. 2.1 (natural importance, regular pruning).
    """
    num_groups = check_positive_int(num_groups, "num_groups")
    chunk_size = _chunk(chunk_size, None)
    gated_loss_fn = _hashable(gated_loss_fn, "gated_loss_fn")
    base, losses = _gate_removal_losses(gated_loss_fn, num_groups, chunk_size)
    _check_losses(base, losses, "groups", "gated_loss_fn", "all gates 1")
    return losses - base


@functools.partial(jax.jit, static_argnames=("loss_of_outputs", "chunk_size"))
def _dense_input_removal_losses(loss_of_outputs, chunk_size, inputs, kernel):
    """Loss of ``inputs @ kernel`` and with each input unit's rank-1 term taken out."""
    outputs = inputs @ kernel
    base = _scalar_loss(loss_of_outputs, outputs, "loss_of_outputs")

    def removed(unit: tuple[jax.Array, jax.Array]) -> jax.Array:
        column, row = unit  # inputs[..., g] and kernel[g]
        return _scalar_loss(loss_of_outputs, outputs - column[..., None] * row, "loss_of_outputs")

    units = (jnp.moveaxis(inputs, -1, 0), kernel)
    return base, jax.lax.map(removed, units, batch_size=min(chunk_size, kernel.shape[0]))


def natural_importance_of_dense_inputs(
    loss_of_outputs: Any,
    inputs: jax.Array,
    kernel: jax.Array,
    *,
    chunk_size: int | None = None,
) -> jax.Array:
    """Natural importance of the ``p`` input units of a dense layer, by rank-1 updates.

    The layer computes ``z = inputs @ kernel`` (``inputs (..., p)``, ``kernel (p, m)``; its
    bias and everything after it belong to ``loss_of_outputs``).  Removing input unit ``g``
    (zeroing ``inputs[..., g]``, equivalently ``kernel[g]``) changes ``z`` exactly by the
    rank-1 term ``−inputs[..., g] ⊗ kernel[g]``, so
    ``I^N_g = loss_of_outputs(z − inputs[..., g] ⊗ kernel[g]) − loss_of_outputs(z)``: per group
    ``O(size(z))`` work plus the part of the model after the layer, nothing before it.  The
    update equals the recomputed product up to floating-point summation order.

    It is :func:`natural_importance` with ``reference=None`` (regular pruning) for groups that
    are neurons whose removal zeroes their output and whose output feeds only this layer: e.g.
    hidden layer ``l`` of an MLP (``inputs`` its activations ``act(x_l W_l + b_l)``, groups
    kernel column + bias of layer ``l`` and/or row of layer ``l + 1``, ``act(0) = 0``,
    ``kernel = W_{l+1}``, ``loss_of_outputs(z)`` the rest of the network from ``z + b_{l+1}``),
    a transformer MLP's hidden units before its output projection, or the features before a
    linear classifier.  Units feeding several layers (skip connections) are not covered.

    Args:
      loss_of_outputs: ``loss_of_outputs(z (..., m)) -> scalar``, compiled once per function
        object.
      inputs: ``(..., p)`` real activations entering the layer (finite).
      kernel: ``(p, m)`` real weights of the layer (finite).
      chunk_size: groups evaluated together, an int >= 1, or ``None`` for
        :func:`default_chunk_size` (4 on CPU, 64 elsewhere); memory and speed, not the result.

    Returns:
      ``(p,)`` loss increases, in the loss dtype; may be negative.

    Raises:
      ValueError: ``kernel`` not 2-D or ``inputs`` not at least 1-D; ``inputs.shape[-1] !=
        kernel.shape[0]``; ``p = 0``; NaN/inf in ``inputs`` or ``kernel``; ``chunk_size < 1``;
        the loss is not scalar; the unpruned loss is not finite; a removal's loss is NaN.
      TypeError: ``loss_of_outputs`` not callable; ``chunk_size`` not an int.

    References:
      Li et al. (2020), Sec. 2, Def. 2.1 (natural importance, regular pruning).
    """
    chunk_size = _chunk(chunk_size, None)
    loss_of_outputs = _hashable(loss_of_outputs, "loss_of_outputs")
    inputs, kernel = jnp.asarray(inputs), jnp.asarray(kernel)
    if kernel.ndim != 2 or inputs.ndim < 1 or inputs.shape[-1] != kernel.shape[0]:
        raise ValueError(
            f"inputs, kernel: expected shapes (..., p) and (p, m), got {inputs.shape} and "
            f"{kernel.shape}"
        )
    if kernel.shape[0] == 0:
        raise ValueError("kernel: expected p >= 1 input units, got shape (0, m)")
    check_finite_tree(inputs, "inputs")
    check_finite_tree(kernel, "kernel")
    base, losses = _dense_input_removal_losses(loss_of_outputs, chunk_size, inputs, kernel)
    _check_losses(base, losses, "groups", "loss_of_outputs", "inputs @ kernel")
    return losses - base


def _sum_over_sets(elementwise: PyTree, members: np.ndarray) -> jax.Array:
    """``out[k] = sum of elementwise over set k`` for ``(n, P)`` flat set memberships."""
    flat = jnp.concatenate([jnp.ravel(v) for v in jax.tree_util.tree_leaves(elementwise)])
    return jnp.where(jnp.asarray(members), flat, 0).sum(axis=1)


def magnitude_importance(params: PyTree, group_ids: PyTree | Sequence[PyTree] | None) -> jax.Array:
    """Magnitude importance of every group or set: ``I^M_Δ = Σ_{i∈Δ} θ_i²``.

    The squared L2 norm (Def. 2.2), not the norm of
    :func:`jaxprune.criteria.magnitude_scores` (same ranking of groups, different values).

    Args:
      params: parameter pytree (finite values).
      group_ids: a group-id pytree with ``p`` groups, ``None`` (one group per scalar weight), or
        a non-empty sequence of ``n`` boolean pytrees like ``params`` (sets, may overlap).

    Returns:
      ``(p,)`` (or ``(n,)``) non-negative scores in the dtype of ``params``.

    Raises:
      ValueError: ``params`` hold NaN/inf, or ``group_ids`` does not match ``params``.
      TypeError: group ids / sets are not concrete integer / boolean arrays.

    References:
      Li et al. (2020), Sec. 2, Def. 2.2, eq. 2.1 (MI).
    """
    squares = jax.tree_util.tree_map(jnp.square, params)
    if _is_set_sequence(group_ids):
        check_finite_tree(params, "params")
        return _sum_over_sets(squares, _set_matrix(params, group_ids))
    ids, p = _groups(params, group_ids)
    return group_sum(squares, ids, p)


def hessian_importance(
    loss_fn: LossFn,
    params: PyTree,
    group_ids: PyTree | Sequence[PyTree] | None,
    *,
    method: str = "exact",
    key: jax.Array | None = None,
    num_probes: int | None = None,
) -> jax.Array:
    """Hessian importance of every group or set: ``I^H_Δ = Σ_{i∈Δ} ½ H_ii θ_i²``.

    ``H = ∇²L(θ)``.  Li et al.'s eq. 2.1 has no ½; with Optimal Brain Damage's ½ (reading HB-3)
    NI equals HI for a quadratic loss at its minimum with a diagonal Hessian (Lemma 3.1), and
    rankings are unchanged.  The diagonal comes from
    :func:`jaxprune.criteria.hessian_diag.hessian_diagonal_scores`: ``"exact"`` (``P``
    Hessian-vector products, small models) or ``"hutchinson"`` (the unbiased estimate from
    ``num_probes`` Rademacher probes drawn from ``key``).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, twice differentiable.
      params: parameter pytree (finite values).
      group_ids: a group-id pytree with ``p`` groups, ``None`` (one group per scalar weight), or
        a non-empty sequence of ``n`` boolean pytrees like ``params`` (sets, may overlap).
      method: ``"exact"`` or ``"hutchinson"`` (:data:`HESSIAN_METHODS`).
      key: PRNG key of the Hutchinson probes (``"hutchinson"`` only, required there).
      num_probes: number of Hutchinson probes, an int >= 1 (``"hutchinson"`` only, required).

    Returns:
      ``(p,)`` (or ``(n,)``) scores in the dtype of ``params``; >= 0 at a minimum.

    Raises:
      ValueError: unknown ``method``; ``key``/``num_probes`` given with ``"exact"`` or missing
        with ``"hutchinson"``; ``num_probes < 1``; ``params`` hold NaN/inf; ``group_ids`` does
        not match ``params``.
      TypeError: ``method`` is not a string, ``num_probes`` not an int.

    References:
      Li et al. (2020), Sec. 2, Def. 2.2, eq. 2.1 (HI), with reading HB-3 (docs/readings.md);
      LeCun, Denker & Solla (1990).
    """
    method = check_choice(method, HESSIAN_METHODS, "method")
    exact = method == "exact"
    if exact and (key is not None or num_probes is not None):
        raise ValueError(
            f"key and num_probes are for method='hutchinson'; with method='exact' pass neither, "
            f"got key={key!r}, num_probes={num_probes!r}"
        )
    if not exact and (key is None or num_probes is None):
        raise ValueError(
            f"method='hutchinson' needs both key and num_probes, got key={key!r}, "
            f"num_probes={num_probes!r}"
        )
    sets = _is_set_sequence(group_ids)
    members = _set_matrix(params, group_ids) if sets else None
    ids = None if sets else group_ids
    scores = hessian_diagonal_scores(
        loss_fn,
        params,
        _unstructured_ids(params) if ids is None else ids,
        key=key,
        num_probes=num_probes,
        exact=exact,
    )
    return scores if members is None else _sum_over_sets(scores, members)


# ---------------------------------------------------------------------------------------------
# Pruning by a score: Π_s.


def _score_vector(params: PyTree, scores: Any, p: int, unstructured: bool) -> np.ndarray:
    """The ``(p,)`` score vector (a pytree like ``params`` is raveled when unstructured)."""
    if isinstance(scores, jax.core.Tracer):
        raise TypeError("scores: expected concrete scores, got a tracer")
    if unstructured and not isinstance(scores, np.ndarray | jax.Array):
        leaves = _leaves_like_params(scores, params, "scores", f"a ({p},) vector or a pytree")
        scores = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
    vector = np.asarray(scores)
    if vector.shape != (p,):
        raise ValueError(f"scores: expected shape ({p},), one score per group, got {vector.shape}")
    return vector


def _leaf_layout(params: PyTree, group_ids: PyTree, p: int) -> GroupLayout:
    """Layout whose layers are parameter leaves: a group is in the first leaf holding it."""
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    first_leaf = np.full(p, -1, np.int64)
    for leaf, ids in enumerate(jax.tree_util.tree_leaves(group_ids)):
        present = np.unique(np.asarray(ids))
        present = present[present >= 0]
        first_leaf[present] = np.where(first_leaf[present] < 0, leaf, first_leaf[present])
    leaves, layer_of_group = np.unique(first_leaf, return_inverse=True)
    names = tuple(jax.tree_util.keystr(paths[leaf]) or "<root>" for leaf in leaves)
    return GroupLayout(names, layer_of_group.astype(np.int32))


def prune_mask(
    params: PyTree,
    scores: Any,
    keep: int,
    *,
    group_ids: PyTree | None = None,
    per_layer: bool = False,
    layout: GroupLayout | None = None,
) -> np.ndarray:
    """The kept groups of ``Π_s``: the ``keep`` highest scores (Def. 2.3).

    Ties rank the lower group index first (for ``group_ids=None``: the earlier weight in
    flattening order), as :func:`jaxprune.masks.topk_mask`, which makes the selection.

    Args:
      params: parameter pytree (finite values).
      scores: ``(p,)`` concrete real scores, higher = keep (NaN is an error, ``±inf`` allowed);
        with ``group_ids=None`` also a pytree like ``params`` (one score per weight).
      keep: the sparsity ``s``, the number of groups kept, ``0 <= keep <= p``.
      group_ids: a group-id pytree with ``p`` groups, or ``None`` (one group per scalar weight).
      per_layer: keep the same fraction ``keep / p`` in every layer (largest-remainder quotas,
        as :func:`~jaxprune.masks.topk_mask`) instead of the global top ``keep``.
      layout: the groups' layers for ``per_layer``; default: every parameter leaf is a layer
        and a group belongs to the first leaf (flattening order) holding one of its weights
        (reading HB-11, docs/readings.md).

    Returns:
      ``(p,)`` bool NumPy array with exactly ``keep`` True entries.

    Raises:
      ValueError: ``keep`` negative or above ``p``; ``scores`` of the wrong shape or with NaN;
        ``params`` hold NaN/inf; ``group_ids`` or ``layout`` does not match.
      TypeError: ``keep`` is not an int; traced scores.

    References:
      Li et al. (2020), Sec. 2, Def. 2.3 (``Π_s``); reading HB-11 (docs/readings.md).
    """
    ids, p = _groups(params, group_ids)
    keep = _checked_keep(keep, p)
    vector = _score_vector(params, scores, p, group_ids is None)
    if per_layer and layout is None:
        layout = _leaf_layout(params, ids, p)
    return topk_mask(vector, keep, layout=layout, per_layer=per_layer).astype(bool)


def prune(
    params: PyTree,
    scores: Any,
    keep: int,
    *,
    group_ids: PyTree | None = None,
    per_layer: bool = False,
    layout: GroupLayout | None = None,
) -> PyTree:
    """``Π_s(θ)``: the weights of the ``keep`` best-scoring groups kept, all other groups zeroed.

    Ungrouped weights (id ``-1``) are kept.  The kept groups are :func:`prune_mask` with the
    same arguments (ties: lower group index first).

    Args:
      params, scores, keep, group_ids, per_layer, layout: as in :func:`prune_mask`.

    Returns:
      A pytree like ``params``.

    Raises:
      As :func:`prune_mask`.

    References:
      Li et al. (2020), Sec. 2, Def. 2.3 (``Π_s(θ) = θ_Δ̄``).
    """
    mask = prune_mask(params, scores, keep, group_ids=group_ids, per_layer=per_layer, layout=layout)
    ids = _unstructured_ids(params) if group_ids is None else group_ids
    return apply_group_mask(params, ids, mask)


# ---------------------------------------------------------------------------------------------
# Natural pruning.


def _supports(p: int, keep: int) -> tuple[np.ndarray, bool]:
    """All ``C(p, keep)`` supports as ``(C, r)`` index rows of the shorter side.

    Returns ``(rows, listed_kept)``: the kept groups when ``keep <= p - keep`` (rows of length
    ``keep``), else the removed ones (length ``p - keep``); rows in lexicographic order.
    """
    listed_kept = keep <= p - keep
    r = keep if listed_kept else p - keep
    count = math.comb(p, r)
    flat = itertools.chain.from_iterable(itertools.combinations(range(p), r))
    return np.fromiter(flat, np.int32, count=count * r).reshape(count, r), listed_kept


def _support_masks(rows: np.ndarray, listed_kept: bool, p: int) -> np.ndarray:
    """``(n, p)`` kept masks of ``(n, r)`` support rows of :func:`_supports`."""
    masks = np.full((rows.shape[0], p), not listed_kept)
    masks[np.arange(rows.shape[0])[:, None], rows] = listed_kept
    return masks


def _best_support(losses: np.ndarray, rows: np.ndarray, listed_kept: bool, p: int) -> np.ndarray:
    """Kept mask of the smallest loss; ties: the lexicographically smallest kept groups."""
    best = np.flatnonzero(losses == losses.min())
    masks = _support_masks(rows[best], listed_kept, p)
    # Lexicographically smallest sorted kept tuple = largest boolean row read left to right.
    order = np.lexsort(tuple(~masks[:, j] for j in reversed(range(p))))
    return masks[order[0]]


def natural_pruning(
    loss_fn: LossFn,
    params: PyTree,
    keep: int,
    *,
    group_ids: PyTree | None = None,
    reference: PyTree | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> NaturalPruning:
    """Natural pruning (NP): the ``keep``-group model with the smallest loss, ``Π^N_s`` of Def. 2.3.

    ``Π^N_s(θ) = θ_Δ̄`` with ``Δ = argmin_{|Δ| = p − s} I^N_Δ(θ, θ^R)``: equivalently the support
    of ``s`` kept groups minimizing ``L``.  Removed weights take ``reference`` values.

    * ``"exact"``: every one of the ``C(p, s)`` supports is evaluated, batched as in
      :func:`natural_importance`; at most :data:`EXACT_SUPPORT_LIMIT` (``2^20``) supports.
      Ties: the support whose sorted kept groups are lexicographically smallest.
    * ``"greedy"``: backward elimination, a heuristic (not guaranteed optimal): ``p − s``
      rounds, each removing the remaining group whose removal raises the loss least (the NI of
      every remaining group on the current model, one batched pass per round, all rounds in one
      compiled loop; ties: lower group index).  ``p − s`` passes of ``p`` loss evaluations.
    * ``"auto"``: ``"exact"`` when ``C(p, s) <= EXACT_SUPPORT_LIMIT``, else ``"greedy"``.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree ``θ`` (finite values).
      keep: the sparsity ``s``, the number of groups kept, ``0 <= keep <= p``.
      group_ids: a group-id pytree with ``p`` groups, or ``None`` (one group per scalar weight).
      reference: ``θ^R`` like ``params``; ``None`` is regular pruning (``θ^R = 0``).
      method: one of :data:`NATURAL_PRUNING_METHODS`.
      chunk_size: models evaluated together (the vmap width), an int >= 1, or ``None`` for
        :func:`default_chunk_size` (on CPU ``4096 // P`` within ``[1, 64]``, 64 elsewhere).

    Returns:
      :class:`NaturalPruning` (kept mask, pruned params, their loss, the method used).

    Raises:
      ValueError: ``keep`` negative or above ``p``; unknown ``method``; ``"exact"`` with more
        than ``EXACT_SUPPORT_LIMIT`` supports; ``params``/``reference`` non-finite or not
        matching; ``group_ids`` does not match; a NaN loss; a non-finite loss of ``params``.
      TypeError: ``keep``/``chunk_size`` not ints; ``method`` not a string; ``group_ids`` a
        sequence of sets (NP needs disjoint groups).

    References:
      Li et al. (2020), Sec. 2, Defs. 2.1 and 2.3 (NP); reading HB-10 (docs/readings.md).
    """
    method = check_choice(method, NATURAL_PRUNING_METHODS, "method")
    chunk_size = _chunk(chunk_size, params)
    loss_fn = _hashable(loss_fn)
    if group_ids is not None and _is_set_sequence(group_ids):
        raise TypeError(
            "group_ids: natural_pruning needs a group-id pytree of disjoint groups or None, "
            "got a sequence of boolean sets"
        )
    ids, p = _groups(params, group_ids)
    keep = _checked_keep(keep, p)
    reference = _checked_reference(params, reference)
    indices = _index_leaves(params, ids, p)
    count = math.comb(p, keep)
    if method == "exact" and count > EXACT_SUPPORT_LIMIT:
        raise ValueError(
            f"method: 'exact' would enumerate C({p}, {keep}) = {count} supports, more than "
            f"EXACT_SUPPORT_LIMIT = {EXACT_SUPPORT_LIMIT}; use method='greedy' or 'auto'"
        )
    if method == "auto":
        method = "exact" if count <= EXACT_SUPPORT_LIMIT else "greedy"
    _check_losses(_loss(loss_fn, params), np.zeros(0), "groups")  # a finite starting loss
    if method == "exact":
        rows, listed_kept = _supports(p, keep)
        losses = np.asarray(
            _support_losses(
                loss_fn, chunk_size, p, listed_kept, params, reference, indices, jnp.asarray(rows)
            )
        )
        nan = np.flatnonzero(np.isnan(losses))
        if nan.size:
            kept = np.flatnonzero(_support_masks(rows[nan[:1]], listed_kept, p)[0]).tolist()
            raise ValueError(
                f"loss_fn: NaN loss on {nan.size} of {losses.size} supports, e.g. keeping groups "
                f"{kept[:10]}; expected real losses"
            )
        mask = _best_support(losses, rows, listed_kept, p)
    else:
        alive, saw_nan = _backward_elimination(
            loss_fn,
            chunk_size,
            jnp.asarray(p - keep),
            params,
            reference,
            indices,
            jnp.ones((p,), bool),
        )
        if bool(saw_nan):
            raise ValueError("loss_fn: NaN loss during greedy elimination; expected real losses")
        mask = np.asarray(alive)
    pruned = _replace_groups(params, reference, indices, jnp.asarray(mask))
    loss = float(_loss(loss_fn, pruned))
    return NaturalPruning(mask, pruned, loss, method)
