"""The gating objective of Chen et al. (2023), App. E.2, eq. 36, and the training of ``v``.

``L_total(v) = L_S(g ∗ w) + α Tr(H_f(g ∗ w))`` with ``w`` fixed and ``g = gate(v, d_w)``; the
trace is Hutchinson's estimate (Algorithm 1).  The options of the objective are one validated
:class:`GatingObjective`; :func:`gating_loss` evaluates it and :func:`train_gating` trains ``v``
on it with any optax optimizer (Algorithm 2, lines 6-8).

References:
  Chen et al. (2023), App. E.2 (eq. 36, Algorithms 1 and 2); Hutchinson (1990); readings PL-1,
  PL-2, PL-4 and PL-5 (docs/readings.md).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
import optax

from jaxprune._validation import check_choice, check_positive_int, check_real
from jaxprune.group_ids import validate_group_ids
from jaxprune.masks.mask import apply_group_mask
from jaxprune.methods.pl_gating.gating import (
    SCALINGS,
    GatingParams,
    Scaling,
    check_features_matrix,
    gate,
)
from jaxprune.spectra.hessian import hessian_trace, output_hessian_trace
from jaxprune.spectra.static import FrozenGroupIds, as_partial
from jaxprune.typing import ApplyFn, BatchLossFn, PyTree

__all__ = [
    "HESSIANS",
    "TRACE_WRT",
    "GatingHistory",
    "GatingObjective",
    "GatingTraining",
    "Hessian",
    "TraceWrt",
    "gating_loss",
    "train_gating",
]

Hessian = Literal["outputs", "loss"]
TraceWrt = Literal["gated", "weights"]
HESSIANS: tuple[str, ...] = ("outputs", "loss")
TRACE_WRT: tuple[str, ...] = ("gated", "weights")

_STATIC_FIELDS = ("num_probes", "scaling", "hessian", "trace_wrt", "inputs_of")


def _first(batch: Any) -> Any:
    """The default ``inputs_of``: ``batch[0]``."""
    return batch[0]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class GatingObjective:
    """The options of eq. 36's gating objective, validated once when constructed.

    A pytree whose only leaf is ``alpha``: passed to a compiled function, ``alpha`` is traced
    (new values do not recompile) and the other fields are static.

    Attributes:
      alpha: trade-off ``α >= 0`` of the trace term (Algorithm 2 trains ``v`` with ``α = 1``).
      num_probes: Hutchinson probes per evaluation, ``>= 1``.
      scaling: gate scaling, ``"mean_one"`` (``p·softmax``, reading PL-4) or ``"softmax"``
        (eq. 8), see :func:`jaxprune.methods.pl_gating.gate`.
      hessian: ``"outputs"`` (eq. 36's ``H_f``, the Hessian of the summed outputs, reading
        PL-1) or ``"loss"`` (the training loss's Hessian, reading PL-2).
      trace_wrt: ``"gated"`` (eq. 36's notation: the Hessian in the parameters at
        ``u = g ∗ w``) or ``"weights"`` (the Hessian of ``w ↦ f(g ∗ w)``, ``diag(g) H
        diag(g)``: for a binary mask, the pruned model's own Hessian).
      inputs_of: ``inputs_of(batch) -> x``, the model inputs of a batch for the output Hessian
        (default ``batch[0]``; e.g. ``operator.itemgetter("x")`` for dict batches).  Part of
        compile-cache keys: pass one function object.

    Raises:
      TypeError / ValueError: a field of the wrong type or value.

    References:
      Chen et al. (2023), App. E.2, eq. 36 and Algorithm 1; readings PL-1, PL-2, PL-4
      (docs/readings.md).
    """

    alpha: float = 1.0
    num_probes: int = 1
    scaling: Scaling = "mean_one"
    hessian: Hessian = "outputs"
    trace_wrt: TraceWrt = "gated"
    inputs_of: Callable[[Any], jax.Array] = _first

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_real(self.alpha, "alpha", minimum=0.0))
        object.__setattr__(self, "num_probes", check_positive_int(self.num_probes, "num_probes"))
        check_choice(self.scaling, SCALINGS, "scaling")
        check_choice(self.hessian, HESSIANS, "hessian")
        check_choice(self.trace_wrt, TRACE_WRT, "trace_wrt")
        if not callable(self.inputs_of):
            raise TypeError(f"inputs_of: expected a callable, got {self.inputs_of!r}")

    def tree_flatten(self) -> tuple[tuple[Any], tuple]:
        return (self.alpha,), tuple(getattr(self, name) for name in _STATIC_FIELDS)

    @classmethod
    def tree_unflatten(cls, static: tuple, children: tuple[Any]) -> GatingObjective:
        # Without __init__: alpha may be a tracer, and the fields were validated already.
        objective = object.__new__(cls)
        object.__setattr__(objective, "alpha", children[0])
        for name, value in zip(_STATIC_FIELDS, static):
            object.__setattr__(objective, name, value)
        return objective


def _as_objective(objective: GatingObjective | None, options: dict[str, Any]) -> GatingObjective:
    """``objective``, or one built from its fields given as keywords (not both)."""
    if objective is None:
        return GatingObjective(**options)
    if not isinstance(objective, GatingObjective):
        raise TypeError(f"objective: expected a GatingObjective, got {type(objective).__name__}")
    if options:
        raise TypeError(
            f"objective: pass either a GatingObjective or its fields, got both {options}"
        )
    return objective


def _gating_objective(
    v: GatingParams,
    params: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    *,
    loss_fn: BatchLossFn,
    apply_fn: ApplyFn,
    group_ids: PyTree,
    objective: GatingObjective,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """``(L + α T, (L, T))`` with ``L = L_S(g ∗ w)`` and ``T`` the Hutchinson trace."""
    gates = gate(v, normalized_features, scaling=objective.scaling)
    gated = apply_group_mask(params, group_ids, gates)
    loss = loss_fn(gated, batch)

    if objective.trace_wrt == "gated":
        point = gated

        def reparameterize(u: PyTree) -> PyTree:
            return u
    else:
        point = params

        def reparameterize(u: PyTree) -> PyTree:
            return apply_group_mask(u, group_ids, gates)

    if objective.hessian == "outputs":
        trace = output_hessian_trace(
            lambda u, x: apply_fn(reparameterize(u), x),
            point,
            objective.inputs_of(batch),
            key,
            num_probes=objective.num_probes,
        ).estimate
    else:
        trace = hessian_trace(
            lambda u: loss_fn(reparameterize(u), batch),
            point,
            key,
            num_probes=objective.num_probes,
            distribution="gaussian",
        ).estimate
    return loss + objective.alpha * trace, (loss, trace)


@functools.partial(jax.jit, static_argnames=("ids",))
def _objective_value_and_grad(
    v: GatingParams,
    params: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    objective: GatingObjective,
    loss_fn: jax.tree_util.Partial,
    apply_fn: jax.tree_util.Partial,
    *,
    ids: FrozenGroupIds,
) -> tuple[tuple[jax.Array, tuple[jax.Array, jax.Array]], GatingParams]:
    """Value and ``v``-gradient of :func:`_gating_objective`, compiled once per model and
    objective options: ``objective.alpha`` and the arrays bound in ``loss_fn``/``apply_fn``
    are traced."""
    return jax.value_and_grad(_gating_objective, has_aux=True)(
        v,
        params,
        normalized_features,
        batch,
        key,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        group_ids=ids.group_ids,
        objective=objective,
    )


def _check_features_rows(params: PyTree, group_ids: PyTree, normalized_features: Any) -> None:
    p = validate_group_ids(params, group_ids)
    rows = check_features_matrix(normalized_features).shape[0]
    if rows != p:
        raise ValueError(
            f"normalized_features: has {rows} rows, expected one per group ({p} groups)"
        )


def gating_loss(
    v: GatingParams,
    loss_fn: BatchLossFn,
    apply_fn: ApplyFn,
    params: PyTree,
    group_ids: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    *,
    objective: GatingObjective | None = None,
    **options: Any,
) -> jax.Array:
    """Eq. 36 for the gating parameters: ``L_S(g ∗ w) + α Tr(H_f(g ∗ w))``, ``w`` fixed.

    ``g = gate(v, normalized_features, scaling=objective.scaling)``; ``g ∗ w`` is
    :func:`jaxprune.masks.apply_group_mask` with the soft gates (reading PL-5: the loss at the
    soft gates, so both terms train ``v``).  ``Tr(H_f)`` is Hutchinson's estimate with
    ``objective.num_probes`` Gaussian probes drawn from ``key`` (Algorithm 1):

    * ``hessian="outputs"``: :func:`jaxprune.spectra.output_hessian_trace` of ``apply_fn`` on
      ``inputs_of(batch)``, the Hessian of the sum of all outputs over examples and output axes
      (classes; tokens × vocabulary for MLM logits; reading PL-1);
    * ``hessian="loss"``: :func:`jaxprune.spectra.hessian_trace` of ``loss_fn(·, batch)``;

    in the parameters at ``g ∗ w`` (``trace_wrt="gated"``) or of ``w ↦ f(g ∗ w)``
    (``trace_wrt="weights"``, ``diag(g) H diag(g)``).  The estimate is unbiased for fixed
    ``v``; differentiable in ``v`` (and jit-able) for a fixed key.

    The output Hessian is indefinite, so ``Tr(H_f)`` can be negative and lowering it is not
    lowering ``‖H_f‖₂`` (App. E.2 replaces the norm by the trace); it is a sum over all
    ``n k`` outputs, so at ``α = 1`` it can dwarf a mean loss (MLM logits: ``k = T V``).  Choose
    ``α`` (and ``num_probes``: one probe's spread exceeds its mean on BERT) accordingly.  On
    piecewise-linear networks ``Tr(H_f)`` is zero (reading PL-2): use ``hessian="loss"``.

    Args:
      v: :class:`GatingParams`.
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: the weights ``w`` (fixed).
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      normalized_features: ``(p, 2)`` from :func:`normalize_features`.
      batch: a training batch, passed to ``loss_fn`` as is.
      key: PRNG key of the probes.
      objective: the :class:`GatingObjective` (default: its defaults).
      **options: instead of ``objective``, its fields as keywords (``alpha``, ``num_probes``,
        ``scaling``, ``hessian``, ``trace_wrt``, ``inputs_of``).

    Returns:
      Scalar objective.

    Raises:
      TypeError / ValueError: ``normalized_features`` without one row per group, invalid
        objective fields, or both ``objective`` and fields.

    References:
      Chen et al. (2023), App. E.2, eq. 36 and Algorithm 1; Algorithm 2 line 7; reading PL-5
      (docs/readings.md: soft gates).
    """
    objective = _as_objective(objective, options)
    _check_features_rows(params, group_ids, normalized_features)
    total, _ = _gating_objective(
        v,
        params,
        normalized_features,
        batch,
        key,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        group_ids=group_ids,
        objective=objective,
    )
    return total


class GatingHistory(NamedTuple):
    """Per-step values of the gating objective (before each step's update).

    Attributes:
      total: ``(steps,)`` ``L + α T``.
      loss: ``(steps,)`` ``L_S(g ∗ w)``.
      trace: ``(steps,)`` Hutchinson estimate ``T`` of the Hessian trace.
    """

    total: np.ndarray
    loss: np.ndarray
    trace: np.ndarray


class GatingTraining(NamedTuple):
    """Result of :func:`train_gating`.

    Attributes:
      v: trained :class:`GatingParams`.
      opt_state: the optimizer state (pass it back to continue training).
      history: :class:`GatingHistory`.
    """

    v: GatingParams
    opt_state: optax.OptState
    history: GatingHistory


def train_gating(
    v: GatingParams,
    loss_fn: BatchLossFn,
    apply_fn: ApplyFn,
    params: PyTree,
    group_ids: PyTree,
    normalized_features: jax.Array,
    batches: Iterable[Any],
    key: jax.Array,
    *,
    objective: GatingObjective | None = None,
    num_steps: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    opt_state: optax.OptState | None = None,
    **options: Any,
) -> GatingTraining:
    """Train ``v`` on :func:`gating_loss` with an optax optimizer, ``w`` fixed.

    One jit-compiled gradient of :func:`gating_loss` and one optimizer update per batch; step
    ``t`` draws its probes from ``fold_in(key, t)``.  The gradient is compiled once per
    ``(loss_fn, apply_fn, group_ids)``, objective options other than ``alpha``, and shapes, and
    reused by later calls (pruning events) with the same function objects.  To reuse it when
    the functions depend on arrays that change between calls (model state, gates), pass them as
    :class:`jax.tree_util.Partial` of one function: the bound arrays are traced arguments, not
    constants of the compiled code.

    Args:
      v: initial :class:`GatingParams`.
      loss_fn, apply_fn, params, group_ids, normalized_features: as in :func:`gating_loss`.
      batches: iterable of batches; one step per batch.
      key: PRNG key of the probes.
      objective: the :class:`GatingObjective` (default: its defaults).
      num_steps: steps to take (the first ``num_steps`` batches); ``None`` uses every batch.
      optimizer: any optax optimizer on ``v``; default ``optax.adam(1e-2)``.
      opt_state: optimizer state to continue from; default ``optimizer.init(v)``.
      **options: instead of ``objective``, its fields as keywords, as in :func:`gating_loss`.

    Returns:
      :class:`GatingTraining`.

    Raises:
      ValueError: no batch, or fewer batches than ``num_steps``; invalid arguments as in
        :func:`gating_loss`.

    References:
      Chen et al. (2023), App. E.2, Algorithm 2, lines 6-8 (``v ← v − η ∇_v L_total`` with
      ``α = 1``).
    """
    objective = _as_objective(objective, options)
    _check_features_rows(params, group_ids, normalized_features)
    if num_steps is not None:
        num_steps = check_positive_int(num_steps, "num_steps")
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    opt_state = optimizer.init(v) if opt_state is None else opt_state
    sharding = jax.tree_util.tree_leaves(params)[0].sharding
    if sharding.is_fully_replicated:
        # Place v as the updates will leave it (on the weights' devices): otherwise the second
        # step sees committed arrays where the first saw uncommitted ones and compiles again.
        v, opt_state = jax.device_put((v, opt_state), sharding)

    value_and_grad = functools.partial(
        _objective_value_and_grad,
        loss_fn=as_partial(loss_fn),
        apply_fn=as_partial(apply_fn),
        ids=FrozenGroupIds(group_ids),
    )

    @jax.jit
    def update(grads, opt_state, v):
        updates, opt_state = optimizer.update(grads, opt_state, v)
        return optax.apply_updates(v, updates), opt_state

    values = []
    for batch in itertools.islice(batches, num_steps):
        step_key = jax.random.fold_in(key, len(values))
        (total, (loss, trace)), grads = value_and_grad(
            v, params, normalized_features, batch, step_key, objective
        )
        v, opt_state = update(grads, opt_state, v)
        values.append((total, loss, trace))
    if not values or (num_steps is not None and len(values) < num_steps):
        raise ValueError(
            f"batches: yielded {len(values)} batches, expected "
            f"{'at least one' if num_steps is None else num_steps}"
        )
    table = np.asarray(jax.device_get(values))
    return GatingTraining(v, opt_state, GatingHistory(table[:, 0], table[:, 1], table[:, 2]))
