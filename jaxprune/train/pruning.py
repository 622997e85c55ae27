"""Pruning methods as the training engine sees them: a schedule and a select function.

At every step the schedule names (``schedule.is_event(step)``), the engine builds a
:class:`PruneContext` (the current parameters, group structure, gates, a data source, the loss)
and calls ``pruner.select(context, method_state)``.  The method returns the new ``(p,)`` group
mask, its updated state (any pytree, checkpointed with the run) and a record of the event; the
engine then installs the mask in the masked optimizer, zeros the pruned weights and, if asked,
compacts the model.  Nothing in the engine depends on how the mask was chosen, so the baseline
criteria below, PL gating (Chen et al. 2023), gRDA (Chao et al. 2020, which needs no events)
and greedy selection (Wolfe et al. 2023) plug in the same way, each one registration
(:func:`register_pruner`; :func:`make_pruner` builds any of them by name).

Masks only shrink: groups pruned earlier score ``-inf`` and stay pruned, and every layer keeps
at least ``min_per_layer`` groups (Chen et al. (2023) keep at least one head/expert per layer).

References:
  Chen et al. (2023), Algorithm 2 and App. E.3 (baselines: LTH with rewinding, Att-Score, SNIP,
  GraSP, all structured, all with one group per layer protected).
  Li et al. (2020), Sec. 2, Def. 2.1 (the ``"natural"`` criterion).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxprune._validation import check_bool, check_choice, check_int, check_positive_int
from jaxprune.criteria import (
    fpgm_scores,
    gate_gradient_scores,
    grasp_scores,
    hessian_diagonal_scores,
    magnitude_scores,
    random_scores,
    snip_scores,
)
from jaxprune.masks import (
    GroupLayout,
    PruningSchedule,
    apply_group_mask,
    topk_mask,
    topk_mask_jax,
)
from jaxprune.methods import pl_gating
from jaxprune.methods.greedy.channels import flat_gates, greedy_gate_selection
from jaxprune.methods.importance.scores import natural_importance
from jaxprune.spectra.gauss_newton import SplitLoss
from jaxprune.typing import PyTree

__all__ = [
    "CRITERIA",
    "PruneContext",
    "Pruner",
    "PrunerEntry",
    "criterion_pruner",
    "greedy_pruner",
    "lth_pruner",
    "make_pruner",
    "pl_event_summary",
    "pl_gating_pruner",
    "pruner_entry",
    "pruner_names",
    "register_pruner",
]


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
      split_loss: ``loss_fn`` split at the model outputs, a
        :class:`~jaxprune.spectra.SplitLoss` of ``Partial`` functions (``forward`` in training
        mode, ``output_loss`` the task loss of its outputs): for Gauss-Newton curvature.
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
    split_loss: SplitLoss | None = None


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
      init: ``init(key) -> state``, the method state before the first event from the run's
        key (so it follows the run's seed); when given, it replaces ``init_state``.
      settings: the method's resolved options, defaults included (the factories below
        record them; :func:`make_pruner` records the options it was given for a factory that
        records none), part of the run's identity that a resumed run must match
        (:mod:`jaxprune.train.identity`).
      traced_select: ``traced_select(context, state) -> (mask, state)``, the same selection
        as ``select`` in jit-able form (the context's arrays may be traced, its ``num_keep``
        is a Python int; no record), for methods that can prune inside a compiled training
        step (:func:`jaxprune.optim.prune_with`); ``None`` for methods that select on the
        host (PL gating, greedy selection).
      summarize: ``summarize(record) -> dict``, the event's headline facts from its record,
        JSON scalars (``int``, ``float``, ``str``, ``bool`` or ``None``) under new keys, added
        to the event's summary (``events.json``, :attr:`RunResult.events`, the CLI's event
        lines; :func:`jaxprune.train.events.prune`); a key ``X`` with an ``X_stderr`` beside
        it is shown as ``X ± X_stderr``.  ``None``: the summary has the engine's facts only.
    """

    name: str
    schedule: PruningSchedule
    select: Callable[[PruneContext, Any], tuple[np.ndarray, Any, dict]]
    init_state: Any = None
    init: Callable[[jax.Array], Any] | None = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)
    traced_select: Callable[[PruneContext, Any], tuple[jax.Array, Any]] | None = None
    summarize: Callable[[dict], dict] | None = None

    def initial_state(self, key: jax.Array) -> Any:
        """The method state before the first event of a run whose method key is ``key``."""
        return self.init_state if self.init is None else self.init(key)


def _check_schedule(schedule: Any) -> None:
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"schedule: expected a PruningSchedule, got {type(schedule).__name__}")


def _mean_batch_loss(loss_fn: Callable, batches: list[dict], params: PyTree) -> jax.Array:
    return sum(loss_fn(params, b) for b in batches) / len(batches)


def _batch_loss(context: PruneContext, num_batches: int) -> Partial:
    """The mean loss over ``num_batches`` event batches as a ``Partial`` (the batches and the
    event's model state are its arguments, so a compiled criterion compiles once)."""
    return Partial(_mean_batch_loss, context.loss_fn, context.batches(num_batches))


#: ``score(context, num_batches, num_probes) -> (p,)`` scores of the current groups.
ScoreFn = Callable[[PruneContext, int, int], jax.Array]


class _Criterion(NamedTuple):
    score: ScoreFn
    description: str


def _magnitude(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    return magnitude_scores(context.params, context.group_ids)


def _random(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    return random_scores(context.key, len(context.gates))


def _snip(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    return snip_scores(_batch_loss(context, num_batches), context.params, context.group_ids)


def _grasp(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    return grasp_scores(_batch_loss(context, num_batches), context.params, context.group_ids)


def _taylor(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    return gate_gradient_scores(
        context.loss_fn,
        context.params,
        context.group_ids,
        batches=context.batches(num_batches),
        normalize_by=context.layout,
    )


def _hessian_diag(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    loss = _batch_loss(context, num_batches)
    return hessian_diagonal_scores(
        loss, context.params, context.group_ids, key=context.key, num_probes=num_probes
    )


def _natural(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    return natural_importance(_batch_loss(context, num_batches), context.params, context.group_ids)


def _fpgm(context: PruneContext, num_batches: int, num_probes: int) -> jax.Array:
    return fpgm_scores(context.params, context.group_ids, layout=context.layout)


#: Criterion name -> its scoring function and one-line description (higher score = keep);
#: adding a criterion is one entry here.
_CRITERIA: dict[str, _Criterion] = {
    "magnitude": _Criterion(
        _magnitude, "group norm of the weights (Han et al. 2015; Li et al. 2017)"
    ),
    "random": _Criterion(_random, "uniformly random scores"),
    "snip": _Criterion(_snip, "connection sensitivity |g * w| summed per group (Lee et al. 2019)"),
    "grasp": _Criterion(
        _grasp, "gradient-flow preservation -w * Hg summed per group (Wang et al. 2020)"
    ),
    "taylor": _Criterion(
        _taylor, "gate-gradient importance |dL/dxi|, Att-Score/Exp-Score (Michel et al. 2019)"
    ),
    "hessian_diag": _Criterion(
        _hessian_diag, "Optimal Brain Damage 1/2 H_ii w_i^2 per group (LeCun et al. 1990)"
    ),
    "fpgm": _Criterion(_fpgm, "distance to the layer's geometric median (He et al. 2019)"),
    "natural": _Criterion(
        _natural, "natural importance: loss increase when the group is zeroed (Li et al. 2020)"
    ),
}

#: Criterion names of :func:`criterion_pruner`.
CRITERIA = tuple(_CRITERIA)


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
    default, at least ``min_per_layer`` per layer).  ``"natural"`` is Li et al. (2020)'s
    one-shot natural importance (Def. 2.1, regular pruning) of every group on the batch loss;
    Hessian-importance pruning (their Def. 2.2) is ``"hessian_diag"``, whose OBD ½ leaves the
    ranking unchanged (reading HB-3).  ``"taylor"`` is Michel et al.'s
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
    check_choice(criterion, CRITERIA, "criterion")
    _check_schedule(schedule)
    check_positive_int(num_batches, "num_batches")
    check_positive_int(num_probes, "num_probes")
    check_bool(per_layer, "per_layer")
    check_int(min_per_layer, "min_per_layer", minimum=0)
    score = _CRITERIA[criterion].score

    def select(context: PruneContext, state: Any) -> tuple[np.ndarray, Any, dict]:
        scores = np.asarray(score(context, num_batches, num_probes), np.float64)
        scores = np.where(context.gates > 0, scores, -np.inf)
        mask = topk_mask(
            scores,
            context.num_keep,
            layout=context.layout,
            per_layer=per_layer,
            min_per_layer=min_per_layer,
        )
        return mask, state, {"scores": scores}

    def traced_select(context: PruneContext, state: Any) -> tuple[jax.Array, Any]:
        scores = score(context, num_batches, num_probes)
        scores = jnp.where(jnp.asarray(context.gates) > 0, scores, -jnp.inf)
        mask = topk_mask_jax(
            scores,
            context.num_keep,
            layout=context.layout,
            per_layer=per_layer,
            min_per_layer=min_per_layer,
        )
        return mask, state

    rewinds = criterion == "magnitude" and schedule.rewind_step is not None
    name = "lth" if rewinds else criterion
    settings = {
        "criterion": criterion,
        "num_batches": num_batches,
        "num_probes": num_probes,
        "per_layer": per_layer,
        "min_per_layer": min_per_layer,
    }
    return Pruner(name, schedule, select, settings=settings, traced_select=traced_select)


def _inputs(batch: dict) -> jax.Array:
    """The model inputs of a prepared batch (one function object: part of compile-cache keys)."""
    return batch["x"]


def pl_gating_pruner(
    schedule: PruningSchedule,
    config: pl_gating.PLGatingConfig | None = None,
    *,
    seed: int | None = None,
) -> Pruner:
    """PL-regularization-driven gating (Chen et al. (2023), Algorithm 2) as a pruning method.

    At each event: per-group NTK features of the current (gated) model on the first
    ``config.feature_batch_size`` examples of the event's training batches, the gating
    network ``v`` trained for ``config.gating_steps`` batches on eq. 36 with
    ``config.objective`` (loss at the soft gates plus ``α·Tr(H_f)``, reading PL-5), then TopK
    of the gates with ``config.min_per_layer`` groups kept per layer (within each layer unless
    ``config.per_layer`` is false).  The Hessian of the trace term is ``config.hessian``
    (``"auto"``: the Gauss-Newton trace of the event's split loss on piecewise-linear models,
    where eq. 36's output Hessian is identically zero;
    :func:`jaxprune.methods.pl_gating.resolve_hessian`).  ``v`` is the method
    state: it starts from ``init_gating`` of the run's method key (it follows the run's seed;
    ``seed`` fixes it to ``key(seed)`` for every run instead) and each event continues from the
    previous one (it is checkpointed with the run).  Groups pruned earlier stay pruned; after compaction
    the remaining groups are the current model's.

    The event record holds the gates, raw and normalized features, and the gating loss
    history (saved as ``event_<step>.npz`` in the run directory).  The event's summary
    (``events.json`` and the CLI's event line, :func:`pl_event_summary`) adds the Hessian target
    and the final gating step's Hutchinson trace estimate with its standard error.

    References:
      Chen et al. (2023), Sec. 3.2 and App. E.2 (Algorithm 2, eq. 36); readings PL-4 to PL-6
      (docs/readings.md).
    """
    config = pl_gating.PLGatingConfig() if config is None else config
    if not isinstance(config, pl_gating.PLGatingConfig):
        raise TypeError(f"config: expected a PLGatingConfig or None, got {type(config).__name__}")
    _check_schedule(schedule)
    if seed is not None:
        check_int(seed, "seed", minimum=0)

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
            split_loss=context.split_loss,
        )
        objective = event.objective
        record = {
            "gates": event.gates,
            "lambda_min": event.features.lambda_min,
            "entropy": event.features.entropy,
            "dead": event.features.dead,
            "normalized_features": event.normalized_features,
            "hessian": objective.hessian,
            "loss_scale": objective.loss_scale,
            "trace_scale": objective.trace_scale,
            "num_probes": objective.num_probes,
            **{f"history_{name}": values for name, values in event.history._asdict().items()},
        }
        return event.mask, event.v, record

    def init(key: jax.Array) -> pl_gating.GatingParams:
        return pl_gating.init_gating(key if seed is None else jax.random.key(seed), config.hidden)

    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return Pruner(
        "pl",
        schedule,
        select,
        init=init,
        settings={**settings, "seed": seed},
        summarize=pl_event_summary,
    )


def pl_event_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """The headline facts of a PL-gating event record, for its summary in ``events.json``.

    The Hutchinson estimate ``T`` of the gating step that was taken last (at the gates before
    that step's update) and its standard error over that step's probes,
    ``sd(zᵢᵀ H zᵢ) / √num_probes``: the noise the trace term trained ``v`` on.

    Args:
      record: the event record of :func:`pl_gating_pruner` (``hessian``, ``num_probes``,
        ``history_trace`` and ``history_trace_stderr``, each history ``(steps,)``).

    Returns:
      ``{"gating_hessian": str, "gating_steps": int, "gating_probes": int, "gating_trace":
      float, "gating_trace_stderr": float | None}``; the standard error is ``None`` (JSON
      ``null``) where it is not finite (one probe per step).

    Raises:
      ValueError: a record without these entries, or with an empty history.

    References:
      Hutchinson (1990); Chen et al. (2023), App. E.2 (Algorithm 1, eq. 36).
    """
    needed = ("hessian", "num_probes", "history_trace", "history_trace_stderr")
    missing = [k for k in needed if k not in record]
    if missing:
        raise ValueError(f"record: expected a PL-gating event record, missing {missing}")
    trace = np.asarray(record["history_trace"], np.float64).ravel()
    stderr = np.asarray(record["history_trace_stderr"], np.float64).ravel()
    if trace.size == 0 or trace.shape != stderr.shape:
        raise ValueError(
            f"record: expected equal, non-empty trace histories, got shapes {trace.shape} and "
            f"{stderr.shape}"
        )
    last = float(stderr[-1])
    return {
        "gating_hessian": str(record["hessian"]),
        "gating_steps": int(trace.size),
        "gating_probes": int(record["num_probes"]),
        "gating_trace": float(trace[-1]),
        "gating_trace_stderr": last if np.isfinite(last) else None,
    }


def lth_pruner(
    schedule: PruningSchedule, *, per_layer: bool = False, min_per_layer: int = 1
) -> Pruner:
    """The lottery-ticket baseline: iterative magnitude pruning with rewinding.

    Args:
      schedule: a rewinding schedule (``schedule.rewind_step`` set), e.g.
        :func:`~jaxprune.masks.iterative_magnitude` or :func:`~jaxprune.masks.lth_schedule`.
      per_layer, min_per_layer: as in :func:`criterion_pruner`.

    Raises:
      ValueError: the schedule does not rewind.

    References:
      Frankle & Carbin (2019); Frankle et al. (2020) (rewinding); Chen et al. (2023), App. E.3.
    """
    _check_schedule(schedule)
    if schedule.rewind_step is None:
        raise ValueError(
            "schedule: expected a rewinding schedule (rewind_step set) for 'lth', got "
            "rewind_step=None; build it with jaxprune.masks.lth_schedule or iterative_magnitude"
        )
    return criterion_pruner("magnitude", schedule, per_layer=per_layer, min_per_layer=min_per_layer)


def _layer_quotas(layout: GroupLayout, num_keep: int, min_per_layer: int) -> np.ndarray:
    """``(L,)`` groups kept per layer by ``topk_mask(..., per_layer=True, min_per_layer=...)``
    (the quotas do not depend on the scores)."""
    kept = topk_mask(
        np.zeros(layout.num_groups),
        num_keep,
        layout=layout,
        per_layer=True,
        min_per_layer=min_per_layer,
    )
    return np.bincount(layout.layer_of_group[kept > 0], minlength=layout.num_layers)


def greedy_pruner(
    schedule: PruningSchedule,
    *,
    num_batches: int | None = None,
    min_per_layer: int = 1,
    max_candidates: int | None = None,
    chunk_size: int | None = None,
) -> Pruner:
    """Greedy forward selection (Wolfe et al. (2023), App. D, Algorithm 2) as a pruning method.

    At each event every layer gets the quota of ``topk_mask(..., per_layer=True,
    min_per_layer=min_per_layer)`` (the same fraction of each layer); each layer with fewer
    quota than alive groups is searched from the input on by
    :func:`~jaxprune.methods.greedy.channels.greedy_gate_selection` with that budget: it
    starts empty and adds, one step per minibatch, the alive group whose addition gives the
    lowest loss, earlier layers as selected and later ones full.  Groups pruned earlier stay
    pruned and are never candidates; a layer whose quota exceeds its alive groups is an error
    (only possible without compaction when quotas are not monotone in the ratio).

    The loss of a candidate mask ``m`` is ``context.loss_fn(apply_group_mask(params, ids, m),
    batch)``: the task's training-mode loss of the model with ``m`` installed (what the
    engine runs after the event), exact for groups whose ids cover everything that feeds
    their output (kernel slice, bias, BatchNorm scale and bias, as in the zoo's filter and
    neuron groups: a zeroed filter then outputs 0 with batch or running statistics).

    Args:
      schedule: the pruning schedule.
      num_batches: the event's training batches (``context.batches(n)``) the steps cycle
        through; None: one fresh batch per step (Algorithm 2, line 5; all are prepared at the
        event, so memory grows with the number of kept groups).
      min_per_layer: groups kept in every layer, at least (>= 1).
      max_candidates: score a random subset of this many candidates per step (Ye et al.
        2020; the event's key draws them); None: exact search.
      chunk_size: candidates evaluated together (see ``greedy_gate_selection``).

    Returns:
      :class:`Pruner` named ``"greedy"``; its event record holds the picks in order
      (``order``), their layers (``layer_of_pick``), the loss after each pick (``losses``) and
      the whole layer's loss on the same batch (``full_losses``).

    References:
      Wolfe et al. (2023), App. D, Algorithm 2; readings GS-3 and GS-13 (docs/readings.md);
      Ye et al. (2020) (layer-wise selection, random candidate subsets).
    """
    _check_schedule(schedule)
    if num_batches is not None:
        check_positive_int(num_batches, "num_batches")
    check_positive_int(min_per_layer, "min_per_layer")
    if max_candidates is not None:
        check_positive_int(max_candidates, "max_candidates")
    if chunk_size is not None:
        check_positive_int(chunk_size, "chunk_size")

    def select(context: PruneContext, state: Any) -> tuple[np.ndarray, Any, dict]:
        layout, alive = context.layout, context.gates > 0
        quotas = _layer_quotas(layout, context.num_keep, min_per_layer)
        alive_counts = np.bincount(layout.layer_of_group[alive], minlength=layout.num_layers)
        over = np.flatnonzero(quotas > alive_counts)
        if over.size:
            layer = over[0]
            raise ValueError(
                f"greedy: layer {layout.layer_names[layer]!r} must keep {quotas[layer]} groups "
                f"but only {alive_counts[layer]} are alive; compact after events or use a "
                "criterion with global TopK"
            )
        searched = np.flatnonzero(quotas < alive_counts)
        if not searched.size:  # every layer keeps all its alive groups
            picks = {"order": np.zeros(0, np.int64), "layer_of_pick": np.zeros(0, np.int64)}
            losses = {"losses": np.zeros(0), "full_losses": np.zeros(0)}
            return alive.astype(np.float32), state, {**picks, **losses}
        budgets = [int(quotas[layer]) for layer in searched]
        group_ids, loss_fn = context.group_ids, context.loss_fn

        def masked_loss(params: PyTree, pieces: tuple, batch: dict) -> tuple:
            gates = flat_gates(pieces, layout)
            return loss_fn(apply_group_mask(params, group_ids, gates), batch), jnp.full((), jnp.nan)

        batches = context.batches(sum(budgets) if num_batches is None else num_batches)
        result = greedy_gate_selection(
            masked_loss,
            context.params,
            layout,
            itertools.cycle(batches),
            keep_per_layer=budgets,
            layers=[int(layer) for layer in searched],
            alive=alive,
            max_candidates=max_candidates,
            key=context.key,
            chunk_size=chunk_size,
        )
        layers = result.layers
        record = {
            "order": np.concatenate([r.order for r in layers]),
            "layer_of_pick": np.concatenate([np.full(len(r.order), r.layer) for r in layers]),
            "losses": np.concatenate([r.losses for r in layers]),
            "full_losses": np.concatenate([r.full_losses for r in layers]),
        }
        return result.mask, state, record

    settings = {
        "num_batches": num_batches,
        "min_per_layer": min_per_layer,
        "max_candidates": max_candidates,
        "chunk_size": chunk_size,
    }
    return Pruner("greedy", schedule, select, settings=settings)


class PrunerEntry(NamedTuple):
    """One registered pruning method.

    Attributes:
      name: registry name (``jaxprune train --method NAME``).
      factory: ``factory(schedule, **options) -> Pruner``.
      description: one line for listings and ``--help``.
      options: the keyword options ``factory`` accepts.
    """

    name: str
    factory: Callable[..., Pruner]
    description: str
    options: tuple[str, ...]


_PRUNERS: dict[str, PrunerEntry] = {}


def _keyword_options(factory: Callable[..., Pruner]) -> tuple[str, ...]:
    parameters = list(inspect.signature(factory).parameters.values())[1:]
    return tuple(p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def register_pruner(
    name: str,
    factory: Callable[..., Pruner] | None = None,
    *,
    description: str = "",
    options: tuple[str, ...] | None = None,
    replace: bool = False,
) -> Any:
    """Register a pruning method under ``name`` (usable directly or as a decorator).

    Args:
      name: the method's name in :func:`make_pruner`, the CLI and the experiments.
      factory: ``factory(schedule, **options) -> Pruner``.
      description: one line shown in listings.
      options: the option names ``factory`` accepts (default: its keyword parameters after
        the schedule); :func:`make_pruner` refuses any other.
      replace: allow replacing an existing entry.

    Returns:
      ``factory`` (so that ``@register_pruner("name")`` leaves the function as it is).

    Raises:
      ValueError: ``name`` is taken and ``replace`` is false.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")

    def register(function: Callable[..., Pruner]) -> Callable[..., Pruner]:
        if not callable(function):
            raise TypeError(f"factory: expected a callable, got {type(function).__name__}")
        if name in _PRUNERS and not replace:
            raise ValueError(f"name: {name!r} is already registered; pass replace=True")
        known = _keyword_options(function) if options is None else tuple(options)
        _PRUNERS[name] = PrunerEntry(name, function, description, known)
        return function

    return register if factory is None else register(factory)


def pruner_names() -> tuple[str, ...]:
    """Names of the registered pruning methods, in registration order."""
    return tuple(_PRUNERS)


def pruner_entry(name: str) -> PrunerEntry:
    """The registry entry ``name`` (``ValueError`` lists the registered names)."""
    if name not in _PRUNERS:
        raise ValueError(f"method: expected one of {pruner_names()}, got {name!r}")
    return _PRUNERS[name]


def make_pruner(name: str, schedule: PruningSchedule, **options: Any) -> Pruner:
    """The registered pruning method ``name`` on ``schedule``.

    Args:
      name: one of :func:`pruner_names` (the criteria of :data:`CRITERIA`, ``"lth"``,
        ``"pl"``, and whatever else was registered).
      schedule: when and how much to prune.
      **options: the method's options (see ``pruner_entry(name).options``).

    Raises:
      ValueError: unknown name, or an option the method does not take.
    """
    entry = pruner_entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(
            f"options: {name!r} takes {entry.options or 'no options'}, got unknown {unknown}"
        )
    pruner = entry.factory(schedule, **options)
    if isinstance(pruner, Pruner) and not pruner.settings:  # a factory that records none
        pruner = dataclasses.replace(pruner, settings=dict(options))
    return pruner


for _criterion in CRITERIA:
    register_pruner(
        _criterion,
        functools.partial(criterion_pruner, _criterion),
        description=_CRITERIA[_criterion].description,
        options=("num_batches", "num_probes", "per_layer", "min_per_layer"),
    )

register_pruner(
    "lth",
    lth_pruner,
    description="iterative magnitude pruning with rewinding (Frankle et al. 2020)",
)


def _pl_from_options(
    schedule: PruningSchedule,
    *,
    config: pl_gating.PLGatingConfig | None = None,
    seed: int | None = None,
    **fields: Any,
) -> Pruner:
    if config is not None and fields:
        raise ValueError(f"options: pass either config or PLGatingConfig fields, got both {fields}")
    if config is None:
        config = pl_gating.PLGatingConfig(**fields)
    return pl_gating_pruner(schedule, config, seed=seed)


register_pruner(
    "pl",
    _pl_from_options,
    description="PL-regularization-driven gating on per-group NTK features (Chen et al. 2023)",
    options=(
        "config",
        "seed",
        *(f.name for f in dataclasses.fields(pl_gating.PLGatingConfig)),
    ),
)

register_pruner(
    "greedy",
    greedy_pruner,
    description="greedy forward selection, layer by layer to per-layer quotas (Wolfe et al. "
    "2023, App. D; Ye et al. 2020)",
)
