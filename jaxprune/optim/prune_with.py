"""Pruning as one optax transformation: any registered method, on a schedule, in the caller's loop.

:func:`prune_with` wraps an optimizer like :func:`~jaxprune.optim.masked` does and adds the
pruning events of a :class:`~jaxprune.masks.PruningSchedule`: at the schedule's steps it runs
the method's selection (a criterion, LTH with rewinding, PL gating, greedy selection: anything
:func:`~jaxprune.train.make_pruner` builds), installs the new mask, zeros the optimizer
statistics of newly pruned weights and returns updates that land the pruned weights on exactly
0.  A researcher's own Flax training loop becomes a pruned one by changing its optimizer line.

Order of events.  The state counts the updates applied (``step``).  An event at step ``t >= 1``
runs at the end of the update that produces the step-``t`` weights: the method selects on those
weights, so the caller's next gradient is taken at the pruned model.  This is the engine's
order (:func:`jaxprune.train.train` prunes at step ``t`` before computing that step's gradient)
and Algorithm 2's of Chen et al. (2023), so both runs end with the same weights.  An event at
step 0 selects on the initial weights at the start of the first update, which then uses the
gradient the caller took at the dense initialization, masked (the engine takes it at the pruned
weights): schedule the first event at step ``>= 1`` for identical runs.

Where events run.  Methods with a jit-able selection (:attr:`Pruner.traced_select`: every
criterion of :data:`~jaxprune.train.pruning.CRITERIA` and LTH) run inside the caller's
compiled step, a ``lax.switch`` over the schedule's events (one branch per event, whose number
of kept groups is static) that executes only at event steps.  PL gating and greedy selection
train a gating network or search candidates over many batches and select on the host: call the
update outside ``jit`` at the steps :func:`event_due` names (everything else stays compiled); a
compiled update that reaches such an event stops with an error naming the step instead of
skipping it.

Data of an event.  ``update(..., loss_fn=, batch=)`` gives the method the loss of the model and
the data; ``batches=`` (a sequence of batches, or ``batches(n) -> list``) replaces ``[batch] *
n`` where a method draws ``n`` batches (PL's gating steps, a criterion's ``num_batches``).  The
event of step ``t`` uses the PRNG key ``fold_in(key, t)`` of the constructor's ``key`` unless the
update gets ``key=``.  Under ``jax.pmap`` or ``shard_map`` pass ``axis_name``: the event's batches
are gathered over the axis (tiled in device order), so every device selects on the global batch
and the masks equal a one-device run's; under ``jit`` with sharded batches nothing is needed.
Methods that select on the host need a single process-local view of the state: run their event
step outside ``pmap`` on one replica (``jax.tree.map(lambda x: x[0], state)``) with the global
batch, then replicate the result.

References:
  Chen et al. (2023), Algorithm 2 (masks selected at the schedule's times ``t_j``, then training
  of ``m * w``).  Frankle & Carbin (2019); Frankle et al. (2020) (rewinding).  Lee et al.
  (2023), JaxPruner (pruning as an optax wrapper, here for every registered method).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial

from jaxprune._validation import check_bool
from jaxprune.masks import GroupLayout, PruningSchedule, param_mask, ratio_to_k
from jaxprune.optim.masked import masked_update, zero_pruned_statistics
from jaxprune.spectra.gauss_newton import SplitLoss
from jaxprune.train.pruning import PruneContext, Pruner, make_pruner
from jaxprune.typing import PyTree

__all__ = ["PruneWithState", "RewindPoint", "event_due", "prune_with"]


class RewindPoint(NamedTuple):
    """Weights and inner optimizer state saved at the schedule's ``rewind_step`` (LTH).

    Attributes:
      params: the parameters at the start of the rewind step.
      inner_state: the inner optimizer's state then.
    """

    params: PyTree
    inner_state: optax.OptState


class PruneWithState(NamedTuple):
    """State of :func:`prune_with`.

    Attributes:
      step: ``()`` int32, updates applied so far.
      gates: ``(p,)`` float32 group mask (1 kept, 0 pruned).
      mask: the per-weight 0/1 mask, a pytree like the parameters (dtypes of the parameters).
      inner_state: the wrapped optimizer's state.
      method_state: the method's state (PL gating's gating parameters; ``None`` for criteria).
      rewind: :class:`RewindPoint` for a rewinding schedule (zeros until its ``rewind_step``),
        ``None`` otherwise.
    """

    step: jax.Array
    gates: jax.Array
    mask: PyTree
    inner_state: optax.OptState
    method_state: PyTree
    rewind: RewindPoint | None


def event_due(state: PruneWithState, schedule: PruningSchedule) -> bool:
    """Whether the coming update of ``state`` runs a pruning event of ``schedule``.

    True when the update ends with the event of step ``state.step + 1``, or, at step 0, starts
    with an event of step 0.  Call the update outside ``jit`` on those steps when the method
    selects on the host (PL gating, greedy selection).

    Args:
      state: a concrete :class:`PruneWithState` (not inside ``jit``).
      schedule: the schedule given to :func:`prune_with`.
    """
    if not isinstance(state, PruneWithState):
        raise TypeError(f"state: expected a PruneWithState, got {type(state).__name__}")
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"schedule: expected a PruningSchedule, got {type(schedule).__name__}")
    step = int(state.step)
    return schedule.is_event(step + 1) or (step == 0 and schedule.is_event(0))


class _EventData(NamedTuple):
    """What :func:`prune_with`'s update received for an event."""

    loss_fn: Callable | None
    batch: Any
    batches: Any
    key: jax.Array | None
    apply_fn: Callable | None
    split_loss: SplitLoss | None


def _missing(name: str, method: str) -> Callable:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            f"{name}: method {method!r} needs it at its pruning events; pass "
            f"update(grads, state, params, {name}=...)"
        )

    return fail


def _gather(tree: PyTree, axis_name: str | None) -> PyTree:
    if axis_name is None:
        return tree
    return jax.tree_util.tree_map(lambda x: jax.lax.all_gather(x, axis_name, tiled=True), tree)


def _batch_source(data: _EventData, method: str, axis_name: str | None) -> Callable:
    """``batches(n)`` of an event from ``batches=`` or ``[batch] * n``."""
    if data.batches is None:
        if data.batch is None:
            return _missing("batch", method)
        batch = _gather(data.batch, axis_name)
        return lambda n: [batch] * n
    if callable(data.batches):
        return lambda n: [_gather(b, axis_name) for b in data.batches(n)]
    given = list(data.batches)

    def take(n: int) -> list:
        if n > len(given):
            raise ValueError(
                f"batches: method {method!r} draws {n} batches at an event, got {len(given)}"
            )
        return [_gather(b, axis_name) for b in given[:n]]

    return take


def _check_group_ids(group_ids: PyTree, params: PyTree) -> None:
    ids_def, params_def = (
        jax.tree_util.tree_structure(group_ids),
        jax.tree_util.tree_structure(params),
    )
    if ids_def != params_def:
        raise ValueError(
            f"group_ids: expected the pytree structure of the parameters, {params_def}; got "
            f"{ids_def}"
        )
    for path, ids, leaf in zip(
        (p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]),
        jax.tree_util.tree_leaves(group_ids),
        jax.tree_util.tree_leaves(params),
    ):
        try:
            np.broadcast_shapes(np.shape(ids), np.shape(leaf))
        except ValueError:
            raise ValueError(
                f"group_ids{jax.tree_util.keystr(path)}: shape {np.shape(ids)} does not "
                f"broadcast to the parameter's shape {np.shape(leaf)}"
            ) from None


def prune_with(
    inner: optax.GradientTransformation,
    method: str | Pruner,
    schedule: PruningSchedule | None,
    group_ids: PyTree,
    *,
    layout: GroupLayout | None = None,
    key: jax.Array | None = None,
    axis_name: str | None = None,
    guard_host_events: bool = True,
    **method_options: Any,
) -> optax.GradientTransformationExtraArgs:
    """Train with ``inner`` and prune on ``schedule`` by ``method``, all in one optax transform.

    On ordinary steps ``update(updates, state, params, **extra)`` is :func:`masked` of ``inner``:
    the inner optimizer sees the masked gradients and parameters, and the updates land pruned
    weights on exactly 0.  At the schedule's events (see the module docstring for their order)
    the method selects a group mask with the update's ``loss_fn``, ``batch``/``batches``,
    ``key``, ``apply_fn`` and ``split_loss``; previously pruned groups stay pruned; the mask
    replaces the old one, the inner statistics of newly pruned weights are zeroed, and with a
    rewinding schedule (LTH) the kept weights and the inner state return to the rewind point.
    The model's shapes never change (compaction is the engine's).

    Use it as the outermost transformation (its pruned updates are ``-params``, which a later
    rescaling would not land on zero): ``prune_with(optax.chain(clip, adam), ...)``, or last in
    ``optax.chain(clip, prune_with(adam, ...))``.  With :func:`~jaxprune.optim.grda` as
    ``inner``, gRDA's own soft-thresholding keeps working inside the kept groups.

    Args:
      inner: the optimizer of the kept weights (extra arguments of ``update`` other than the
        event's are forwarded to it).
      method: a registered method name (:func:`~jaxprune.train.pruning.pruner_names`: the
        criteria, ``"lth"``, ``"pl"``, ``"greedy"``, ...) built with ``schedule`` and
        ``method_options``, or a :class:`~jaxprune.train.pruning.Pruner` (then ``schedule``
        must be ``None`` or its schedule, and no options).
      schedule: when and how much to prune.
      group_ids: the group-id pytree over the parameters (``-1``: ungrouped), e.g. from a zoo
        model's ``group_ids`` or :func:`~jaxprune.masks.build_group_ids`.
      layout: the groups' :class:`~jaxprune.masks.GroupLayout`, needed by per-layer TopK and
        ``min_per_layer`` (the defaults of every method) and by the feature normalization of PL.
      key: PRNG key of the method's initial state and, folded with the step, of its events
        (default ``PRNGKey(0)``).
      axis_name: the ``pmap`` or ``shard_map`` axis; events then select on the batches gathered
        over it.
      guard_host_events: for a method that selects on the host (PL gating, greedy), make a
        compiled update that reaches one of its events fail with an error naming the step (a
        host callback compiled into every step).  The callback costs about 1 ms per compiled
        step on a 2-core CPU (1.47x ``masked(adam)`` on an MLP 64-512-512-10, batch 128,
        ``experiments/benchmarks/bench_prune_with.py``); a loop that runs the event steps
        outside ``jit`` (:func:`event_due`) can pass ``False`` and lose nothing but the guard.
      **method_options: the method's options (``pruner_entry(method).options``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`PruneWithState`.
      ``update`` needs ``params``; a method that scores on data needs ``loss_fn`` and ``batch``
      (or ``batches``) at its events, PL gating also ``apply_fn`` (ValueError naming the
      argument otherwise).

    References:
      Chen et al. (2023), Algorithm 2; Lee et al. (2023), JaxPruner (``wrap_optax``).
    """
    check_bool(guard_host_events, "guard_host_events")
    pruner = _as_pruner(method, schedule, method_options)
    schedule = pruner.schedule
    if layout is not None and not isinstance(layout, GroupLayout):
        raise TypeError(f"layout: expected a GroupLayout or None, got {type(layout).__name__}")
    base_key = jax.random.PRNGKey(0) if key is None else key
    inner = optax.with_extra_args_support(inner)
    leaves = [np.asarray(ids) for ids in jax.tree_util.tree_leaves(group_ids)]
    num_groups = int(max((ids.max() for ids in leaves if ids.size), default=-1)) + 1
    if layout is not None and layout.num_groups != num_groups:
        raise ValueError(f"layout: has {layout.num_groups} groups, group_ids number {num_groups}")
    if num_groups == 0:
        raise ValueError("group_ids: no group (every id is -1); expected ids 0..p-1")
    steps = schedule.event_steps
    keeps = tuple(int(ratio_to_k(num_groups, r)) for r in schedule.event_ratios)

    def _missed_event(step: Any, alive: Any) -> None:
        """Raise when the state at the start of update ``step`` holds more alive groups than
        the last event of a step ``<= step`` kept (at update ``step >= 1`` the events of steps
        ``<= step`` have run; at step 0 none): that event never ran on this state."""
        step, alive = int(step), int(alive)
        past = [j for j, t in enumerate(steps) if t <= step and step > 0]
        if past and alive > keeps[past[-1]]:
            j = past[-1]
            raise ValueError(
                f"state: step {step} is past the schedule's event at step {steps[j]} (keep "
                f"{keeps[j]} of {num_groups} groups), but {alive} are alive: that event never "
                "ran on this state (a schedule whose events precede the state's step, or a "
                "state advanced without prune_with's update)"
            )

    def init_fn(params: PyTree) -> PruneWithState:
        _check_group_ids(group_ids, params)
        mask = jax.tree_util.tree_map(jnp.ones_like, params)
        inner_state = inner.init(params)
        rewind = None
        if schedule.rewind_step is not None:
            rewind = RewindPoint(jax.tree_util.tree_map(jnp.zeros_like, params), inner_state)
        return PruneWithState(
            step=jnp.zeros((), jnp.int32),
            gates=jnp.ones((num_groups,), jnp.float32),
            mask=mask,
            inner_state=inner_state,
            method_state=pruner.initial_state(base_key),
            rewind=rewind,
        )

    def context(j: int, params: PyTree, state: PruneWithState, data: _EventData) -> PruneContext:
        step = steps[j]
        event_key = jax.random.fold_in(base_key, step) if data.key is None else data.key
        # Partials: the criteria pass them to compiled functions as (pytree) arguments.
        loss_fn = Partial(
            _missing("loss_fn", pruner.name) if data.loss_fn is None else data.loss_fn
        )
        apply_fn = Partial(
            _missing("apply_fn", pruner.name) if data.apply_fn is None else data.apply_fn
        )
        return PruneContext(
            step=step,
            ratio=schedule.event_ratios[j],
            num_keep=keeps[j],
            params=params,
            collections={},
            gates=state.gates,
            group_ids=group_ids,
            layout=layout,
            key=event_key,
            loss_fn=loss_fn,
            apply_fn=apply_fn,
            batches=_batch_source(data, pruner.name, axis_name),
            split_loss=data.split_loss,
        )

    def install(
        gates: jax.Array,
        params: PyTree,
        updates: PyTree,
        state: PruneWithState,
        is_event: bool | jax.Array = True,
    ) -> tuple[PyTree, PruneWithState]:
        """``updates`` from ``params`` with the mask of ``gates`` installed: pruned weights go
        to 0, kept ones by ``updates`` (or, rewinding, to the rewind point).

        ``is_event`` (a traced bool in the compiled step) selects between the event's install
        and ``(updates, state)`` elementwise, so that no parameter-sized buffer passes through
        a conditional on ordinary steps; there ``gates`` are the state's own, whose mask is the
        state's mask and leaves ``updates`` (already masked) unchanged.
        """
        mask = jax.tree_util.tree_map(
            lambda m, p: m.astype(jnp.result_type(p)), param_mask(params, group_ids, gates), params
        )

        def pick(new: PyTree, old: PyTree) -> PyTree:
            if is_event is True:
                return new
            return jax.tree_util.tree_map(lambda a, b: jnp.where(is_event, a, b), new, old)

        if state.rewind is None:
            inner_state = pick(zero_pruned_statistics(state.inner_state, mask), state.inner_state)
            kept = updates
        else:
            start = pick(state.rewind.inner_state, state.inner_state)
            inner_state = pick(zero_pruned_statistics(start, mask), start)
            rewound = jax.tree_util.tree_map(jnp.subtract, state.rewind.params, params)
            kept = pick(rewound, updates)
        out = jax.tree_util.tree_map(lambda m, u, p: jnp.where(m != 0, u, -p), mask, kept, params)
        gates = jnp.asarray(gates, jnp.float32)
        return out, state._replace(gates=gates, mask=mask, inner_state=inner_state)

    def select(j: int, weights: PyTree, state: PruneWithState, data: _EventData, traced: bool):
        """``(gates, method_state)`` of event ``j`` selected on ``weights``."""
        ctx = context(j, weights, state, data)
        if traced:
            return pruner.traced_select(ctx, state.method_state)
        ctx = ctx._replace(gates=np.asarray(state.gates))
        mask, method_state, _ = pruner.select(ctx, state.method_state)
        mask = np.asarray(mask, np.float32)
        if mask.shape != (num_groups,) or int(mask.sum()) != keeps[j]:
            raise ValueError(
                f"method {pruner.name!r} returned a mask of shape {mask.shape} with "
                f"{int(mask.sum())} ones at step {steps[j]}; expected ({num_groups},) with "
                f"{keeps[j]} ones"
            )
        return jnp.asarray(mask), method_state

    def event(j: int, args: tuple, data: _EventData, traced: bool) -> tuple[PyTree, PruneWithState]:
        """Event ``j``: select on the weights after ``updates``, install on them."""
        params, updates, state = args
        weights = optax.apply_updates(params, updates)
        gates, method_state = select(j, weights, state, data, traced)
        return install(gates, params, updates, state._replace(method_state=method_state))

    def at_event(target: Any, args: tuple, data: _EventData) -> tuple[PyTree, PruneWithState]:
        """The event of step ``target`` (a Python int, or traced) on ``args = (params, updates,
        state)`` if there is one, else ``(updates, state)``."""
        params, updates, state = args
        if not _traced(target):
            if target not in steps:
                return updates, state
            return event(steps.index(target), args, data, traced=False)
        index = jnp.searchsorted(jnp.asarray(steps), target)
        index = jnp.where(jnp.isin(target, jnp.asarray(steps)), index, len(steps))
        if pruner.traced_select is None:
            if not guard_host_events:
                return updates, state
            fail = functools.partial(_host_event_error, name=pruner.name)
            jax.lax.cond(index < len(steps), lambda: jax.debug.callback(fail, target), lambda: None)
            return updates, state

        def selection(j: int) -> Callable:
            def run(params: PyTree, updates: PyTree, state: PruneWithState) -> tuple:
                weights = optax.apply_updates(params, updates)
                gates, method_state = select(j, weights, state, data, traced=True)
                return jnp.asarray(gates, jnp.float32), method_state

            return run

        branches = [selection(j) for j in range(len(steps))]
        branches.append(lambda params, updates, state: (state.gates, state.method_state))
        # Only the (p,) gates and the method state leave the conditional; the install is
        # elementwise (ordinary steps pass no parameter-sized buffer through a conditional).
        gates, method_state = jax.lax.switch(index, branches, params, updates, state)
        state = state._replace(method_state=method_state)
        return install(gates, params, updates, state, is_event=index < len(steps))

    def update_fn(
        updates: PyTree,
        state: PruneWithState,
        params: PyTree | None = None,
        *,
        loss_fn: Callable | None = None,
        batch: Any = None,
        batches: Sequence | Callable | None = None,
        key: jax.Array | None = None,
        apply_fn: Callable | None = None,
        split_loss: SplitLoss | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, PruneWithState]:
        if params is None:
            raise ValueError(
                "params: prune_with's update needs them (update(updates, state, params)) to "
                "select masks and land pruned weights on zero"
            )
        if not isinstance(state, PruneWithState):
            raise TypeError(f"state: expected a PruneWithState, got {type(state).__name__}")
        data = _EventData(loss_fn, batch, batches, key, apply_fn, split_loss)
        step = state.step
        if not _traced(step):  # compiled: unchecked (a host callback would slow every step)
            _missed_event(step, np.sum(np.asarray(state.gates) > 0))
        if schedule.rewind_step is not None:
            at_rewind = step == schedule.rewind_step
            rewind = jax.tree_util.tree_map(
                lambda new, old: jnp.where(at_rewind, new, old),
                RewindPoint(params, state.inner_state),
                state.rewind,
            )
            state = state._replace(rewind=rewind)
        traced = _traced(step)
        if 0 in steps:  # the step-0 event selects before the first update
            first = jnp.where(step == 0, 0, -1)
            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            _, state = at_event(first if traced else int(first), (params, zeros, state), data)
        mask = state.mask
        out, inner_state = masked_update(
            inner, mask, updates, state.inner_state, params, **extra_args
        )
        state = state._replace(inner_state=inner_state)
        next_step = step + 1
        out, state = at_event(next_step if traced else int(next_step), (params, out, state), data)
        return out, state._replace(step=jnp.asarray(next_step, jnp.int32))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _host_event_error(step: Any, *, name: str) -> None:
    raise ValueError(
        f"prune_with: step {int(step)} is a pruning event of {name!r}, which selects its mask "
        "on the host; call the update outside jit at the steps event_due(state, schedule) names"
    )


def _as_pruner(method: str | Pruner, schedule: PruningSchedule | None, options: dict) -> Pruner:
    if isinstance(method, Pruner):
        if options:
            raise ValueError(f"method_options: a Pruner carries its options, got {sorted(options)}")
        if schedule is not None and schedule != method.schedule:
            raise ValueError(
                f"schedule: {schedule} differs from the Pruner's {method.schedule}; pass None"
            )
        return method
    if not isinstance(method, str):
        raise TypeError(f"method: expected a method name or a Pruner, got {type(method).__name__}")
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"schedule: expected a PruningSchedule, got {type(schedule).__name__}")
    return make_pruner(method, schedule, **options)
