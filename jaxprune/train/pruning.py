"""Pruning methods as the training engine sees them: a schedule and a select function.

At every step the schedule names (``schedule.is_event(step)``), the engine builds a
:class:`PruneContext` (the current parameters, group structure, gates, a data source, the loss)
and calls ``pruner.select(context, method_state)``.  The method returns the new ``(p,)`` group
mask, its updated state (any pytree, checkpointed with the run) and a record of the event; the
engine then installs the mask in the masked optimizer, zeros the pruned weights and, if asked,
compacts the model.  Nothing in the engine depends on how the mask was chosen, so the baseline
criteria below, PL gating (paper 000), gRDA (paper 003, which needs no events) and greedy
selection (paper 004) plug in the same way.

Masks only shrink: groups pruned earlier score ``-inf`` and stay pruned, and every layer keeps
at least ``min_per_layer`` groups (paper 000 keeps at least one head/expert per layer).

References:
  Paper 000, Algorithm 2 and Appendix E.3 (baselines: LTH with rewinding, Att-Score, SNIP,
  GraSP, all structured, all with one group per layer protected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.criteria import (
    fpgm_scores,
    gate_gradient_scores,
    grasp_scores,
    hessian_diagonal_scores,
    magnitude_scores,
    random_scores,
    snip_scores,
)
from jaxprune.masks import GroupLayout, PruningSchedule, topk_mask
from jaxprune.methods import pl_gating

__all__ = ["CRITERIA", "PruneContext", "Pruner", "criterion_pruner", "pl_gating_pruner"]

PyTree = Any


class PruneContext(NamedTuple):
    """What a pruning method may read at an event.

    Attributes:
      step: the training step of the event (before that step's update).
      ratio: pruned fraction of the original groups in effect after the event.
      num_keep: groups of the current model to keep (the original count times ``1 - ratio``).
      params: current parameters (pruned weights are 0).
      collections: other model variables (BatchNorm statistics).
      gates: ``(p,)`` current group mask (NumPy, 0/1) over the current model's groups.
      group_ids: group-id pytree over ``params``.
      layout: the groups' :class:`GroupLayout`.
      key: PRNG key of this event.
      loss_fn: ``loss_fn(params, batch) -> scalar``, the task loss of the gated model in training
        mode on a prepared batch; a :class:`jax.tree_util.Partial` binding the event's model
        state to one function per model, so methods may pass it to compiled functions as an
        argument and compile once for all events.
      apply_fn: ``apply_fn(params, x) -> outputs`` of the gated model in eval mode (a
        ``Partial`` likewise).
      batches: ``batches(n)`` draws ``n`` prepared training batches (deterministic per event).
    """

    step: int
    ratio: float
    num_keep: int
    params: PyTree
    collections: PyTree
    gates: np.ndarray
    group_ids: PyTree
    layout: GroupLayout
    key: jax.Array
    loss_fn: Callable[[PyTree, dict], jax.Array]
    apply_fn: Callable[[PyTree, jax.Array], jax.Array]
    batches: Callable[[int], list[dict]]


@dataclasses.dataclass(frozen=True)
class Pruner:
    """A pruning method bound to a schedule.

    Attributes:
      name: label for logs and tables.
      schedule: when and how much (:class:`~jaxprune.masks.PruningSchedule`); its
        ``rewind_step`` makes the engine rewind weights and optimizer after each event (LTH).
      select: ``select(context, state) -> (mask, state, record)``: ``(p,)`` 0/1 mask with
        ``context.num_keep`` ones, the method's new state, and a dict of event facts (arrays
        or numbers) saved with the run.
      init_state: the method state before the first event (any pytree; ``None`` if unused).
    """

    name: str
    schedule: PruningSchedule
    select: Callable[[PruneContext, Any], tuple[np.ndarray, Any, dict]]
    init_state: Any = None


def _batch_loss(context: PruneContext, num_batches: int) -> Callable[[PyTree], jax.Array]:
    batches = context.batches(num_batches)

    def loss(params: PyTree) -> jax.Array:
        return sum(context.loss_fn(params, b) for b in batches) / len(batches)

    return loss


def _scores(name: str, context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    params, ids = context.params, context.group_ids
    if name == "magnitude":
        return magnitude_scores(params, ids)
    if name == "random":
        return random_scores(context.key, len(context.gates))
    if name == "fpgm":
        return fpgm_scores(params, ids, layout=context.layout)
    if name == "taylor":
        return gate_gradient_scores(
            context.loss_fn,
            params,
            ids,
            batches=context.batches(num_batches),
            normalize_by=context.layout,
        )
    loss = _batch_loss(context, num_batches)
    if name == "snip":
        return snip_scores(loss, params, ids)
    if name == "grasp":
        return grasp_scores(loss, params, ids)
    return hessian_diagonal_scores(loss, params, ids, key=context.key, num_probes=num_probes)


#: Criterion names of :func:`criterion_pruner` (higher score = keep).
CRITERIA = ("magnitude", "random", "snip", "grasp", "taylor", "hessian_diag", "fpgm")


def criterion_pruner(
    criterion: str,
    schedule: PruningSchedule,
    *,
    num_batches: int = 1,
    num_probes: int = 16,
    per_layer: bool = False,
    min_per_layer: int = 1,
) -> Pruner:
    """A baseline criterion from :mod:`jaxprune.criteria` as a pruning method.

    At each event the criterion scores the current groups, previously pruned groups get
    ``-inf``, and :func:`~jaxprune.masks.topk_mask` keeps ``num_keep`` of them (global TopK by
    default, at least ``min_per_layer`` per layer).  ``"taylor"`` is Michel et al.'s
    ``|∂L/∂ξ|`` (Att-Score/Exp-Score, normalized per layer); LTH is ``"magnitude"`` with an
    :func:`~jaxprune.masks.iterative_magnitude` schedule (rewinding).

    Args:
      criterion: one of :data:`CRITERIA`.
      schedule: the pruning schedule.
      num_batches: training batches the data-driven criteria average over.
      num_probes: Hutchinson probes of ``"hessian_diag"``.
      per_layer: keep the same fraction in every layer.
      min_per_layer: groups kept in every layer, at least.

    Returns:
      :class:`Pruner` named after the criterion (``"lth"`` when the schedule rewinds).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"schedule must be a PruningSchedule, got {type(schedule).__name__}")
    for name, value in (("num_batches", num_batches), ("num_probes", num_probes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")

    def select(context: PruneContext, state: Any) -> tuple[np.ndarray, Any, dict]:
        scores = np.asarray(_scores(criterion, context, num_batches, num_probes), np.float64)
        scores = np.where(context.gates > 0, scores, -np.inf)
        mask = topk_mask(
            scores,
            context.num_keep,
            layout=context.layout,
            per_layer=per_layer,
            min_per_layer=min_per_layer,
        )
        return mask, state, {"scores": scores}

    rewinds = criterion == "magnitude" and schedule.rewind_step is not None
    return Pruner("lth" if rewinds else criterion, schedule, select)


def _inputs(batch: dict) -> jax.Array:
    """The model inputs of a prepared batch (one function object: part of compile-cache keys)."""
    return batch["x"]


def pl_gating_pruner(
    schedule: PruningSchedule,
    config: pl_gating.PLGatingConfig | None = None,
    *,
    seed: int = 0,
) -> Pruner:
    """PL-regularization-driven gating (paper 000, Algorithm 2) as a pruning method.

    At each event: per-group NTK features of the current (gated) model on the first
    ``config.feature_batch_size`` examples of the event's training batches, the gating
    network ``v`` trained for ``config.gating_steps`` batches on eq. 36 (loss at the soft
    gates plus ``α·Tr(H_f)``), then TopK of the gates with ``config.min_per_layer`` groups kept
    per layer.  ``v`` is the method state: it starts from ``init_gating(key(seed))`` and each
    event continues from the previous one (it is checkpointed with the run).  Groups pruned
    earlier stay pruned; after compaction the remaining groups are the current model's.

    The event record holds the gates, raw and normalized features, and the gating loss
    history (saved as ``event_<step>.npz`` in the run directory).

    References:
      Paper 000, Section 3.2 and Appendix E.2 (Algorithm 2, eq. 36).
    """
    config = pl_gating.PLGatingConfig() if config is None else config
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"schedule must be a PruningSchedule, got {type(schedule).__name__}")

    def select(context: PruneContext, v: pl_gating.GatingParams) -> tuple[np.ndarray, Any, dict]:
        batches = context.batches(config.gating_steps)
        inputs = jnp.concatenate([b["x"] for b in batches])
        if len(inputs) < config.feature_batch_size:
            raise ValueError(
                f"feature_batch_size={config.feature_batch_size} exceeds the {len(inputs)} "
                "examples of the event's batches; raise gating_steps or the batch size"
            )
        p = len(context.gates)
        ratio = 1.0 - context.num_keep / p  # the same k out of the current model's groups
        event = pl_gating.prune(
            context.key,
            context.loss_fn,
            context.apply_fn,
            context.params,
            context.group_ids,
            context.layout,
            inputs[: config.feature_batch_size],
            batches,
            ratio,
            config,
            v=v,
            current_mask=context.gates,
            inputs_of=_inputs,
        )
        record = {
            "gates": event.gates,
            "lambda_min": event.features.lambda_min,
            "entropy": event.features.entropy,
            "normalized_features": event.normalized_features,
            **{f"history_{name}": values for name, values in event.history._asdict().items()},
        }
        return event.mask, event.v, record

    init = pl_gating.init_gating(jax.random.key(seed), config.hidden)
    return Pruner("pl", schedule, select, init)
