"""Pruning events of a training run: select a mask, install it, optionally compact the model.

At a step its schedule names, a :class:`~jaxprune.train.pruning.Pruner` sees a
:class:`~jaxprune.train.pruning.PruneContext` (:func:`prune_context`) and returns a group mask
(:func:`select_mask`); the mask goes into the masked optimizer and zeroes the pruned weights
(:func:`install_mask`; with a rewind point, LTH, the weights and optimizer state first return
to it); :func:`compact` then optionally removes the pruned groups, so the smaller model is
faster.  Every function returns new values; the engine keeps the run's state.

References:
  Frankle & Carbin (2019) (lottery tickets: rewinding to early weights after pruning).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from jaxprune.data.batches import epoch_batches
from jaxprune.masks import GroupLayout, apply_group_mask, param_mask, ratio_to_k
from jaxprune.optim import map_param_subtrees, set_mask
from jaxprune.spectra.gauss_newton import SplitLoss
from jaxprune.train.parallel import replicate
from jaxprune.train.pruning import PruneContext, Pruner
from jaxprune.train.steps import TrainState
from jaxprune.train.tasks import Task
from jaxprune.train.zoo import Bound
from jaxprune.typing import PyTree

__all__ = [
    "EventFns",
    "EventOutcome",
    "compact",
    "event_batches",
    "event_fns",
    "format_event",
    "group_sparsity",
    "install_mask",
    "prune",
    "prune_context",
    "rewind_point",
    "select_mask",
    "write_event",
]

#: ``(params, opt_state)`` saved at the schedule's rewind step (LTH), or ``None``.
Rewind = tuple[PyTree, PyTree] | None


class EventFns(NamedTuple):
    """The model functions a pruning event hands to the method, one pair per model binding, so
    events bind their state with ``Partial`` and methods that compile (PL gating) compile once
    per model.

    Attributes:
      loss: ``loss(collections, gates, key, params, batch) -> scalar``, the training-mode loss
        of the gated model.
      apply: ``apply(collections, gates, params, x) -> outputs`` of the gated model in
        evaluation mode.
      forward: ``forward(collections, gates, key, params, batch) -> outputs`` of the gated
        model in training mode, the outputs ``loss`` takes its task loss of.
      output_loss: ``output_loss(outputs, batch) -> scalar``, the task loss of ``forward``'s
        outputs (without a model's auxiliary loss, e.g. Switch load balancing).
    """

    loss: Callable[..., jax.Array]
    apply: Callable[..., jax.Array]
    forward: Callable[..., jax.Array]
    output_loss: Callable[..., jax.Array]


def event_fns(model: Bound, task: Task, loss_fn: Callable) -> EventFns:
    """:class:`EventFns` of ``model`` and ``task`` with their
    :func:`~jaxprune.train.steps.make_loss_fn`."""

    def loss(collections: PyTree, gates: Any, key: jax.Array, params: PyTree, batch: dict):
        return loss_fn(params, collections, gates, batch, key, True)[0]

    def apply(collections: PyTree, gates: Any, params: PyTree, x: jax.Array) -> jax.Array:
        return model.apply({"params": params, **collections}, x, train=False, gates=gates)[0]

    def forward(collections: PyTree, gates: Any, key: jax.Array, params: PyTree, batch: dict):
        variables = {"params": params, **collections}
        return model.apply(variables, batch["x"], train=True, rng=key, gates=gates)[0]

    def output_loss(outputs: jax.Array, batch: dict) -> jax.Array:
        return task.loss(outputs, batch)[0]

    return EventFns(loss, apply, forward, output_loss)


def event_batches(
    data: dict[str, np.ndarray],
    task: Task,
    batch_size: int,
    seed: int,
    step: int,
    key: jax.Array,
) -> Callable[[int], list[dict]]:
    """``batches(n)`` of a pruning event: ``n`` batches from permutations fixed by ``(seed,
    step)``, one epoch after another when ``n`` exceeds an epoch, prepared by the task (single
    device)."""
    n_examples = len(next(iter(data.values())))

    def batches(n: int) -> list[dict]:
        indices: list[np.ndarray] = []
        epoch = 0
        while len(indices) < n:
            indices += epoch_batches(
                n_examples, batch_size, seed=seed + 1, epoch=step * 1_000 + epoch
            )
            epoch += 1
        return [
            task.prepare(
                {k: jnp.asarray(v[idx]) for k, v in data.items()}, jax.random.fold_in(key, i)
            )
            for i, idx in enumerate(indices[:n])
        ]

    return batches


def prune_context(
    pruner: Pruner,
    step: int,
    state: TrainState,
    groups: tuple[PyTree, GroupLayout],
    fns: EventFns,
    *,
    num_groups0: int,
    batches: Callable[[int], list[dict]],
    key: jax.Array,
) -> PruneContext:
    """What the pruner sees at ``step``: the schedule's ratio of the ``num_groups0`` groups of
    the uncompacted model, the state, the group ids and layout ``groups``, and the model
    functions bound to the state's collections and gates."""
    ratio = float(pruner.schedule.ratio(step))
    collections, gates = state.collections, state.gates
    group_ids, layout = groups
    return PruneContext(
        step=step,
        ratio=ratio,
        num_keep=int(ratio_to_k(num_groups0, ratio)),
        params=state.params,
        collections=collections,
        gates=np.asarray(gates),
        group_ids=group_ids,
        layout=layout,
        key=key,
        loss_fn=Partial(fns.loss, collections, gates, key),
        apply_fn=Partial(fns.apply, collections, gates),
        batches=batches,
        split_loss=SplitLoss(
            Partial(fns.forward, collections, gates, key), Partial(fns.output_loss)
        ),
    )


def select_mask(
    pruner: Pruner, context: PruneContext, method_state: PyTree
) -> tuple[np.ndarray, PyTree, dict]:
    """``(mask, method_state, record)`` of the pruner at ``context``; the ``(p,)`` float32 mask
    must keep exactly ``context.num_keep`` groups."""
    mask, method_state, record = pruner.select(context, method_state)
    mask = np.asarray(mask, np.float32)
    if mask.shape != context.gates.shape or int(mask.sum()) != context.num_keep:
        raise ValueError(
            f"pruner {pruner.name!r} returned a mask of shape {mask.shape} with "
            f"{int(mask.sum())} ones; expected shape {context.gates.shape} with "
            f"{context.num_keep} ones"
        )
    return mask, method_state, record


def install_mask(
    state: TrainState, mask: np.ndarray, group_ids: PyTree, rewind: Rewind, mesh: Any
) -> TrainState:
    """The state with group ``mask`` ``(p,)`` in the masked optimizer and as the gates, pruned
    weights at exactly zero; with a ``rewind`` point the kept weights and the optimizer state
    are the rewind point's (LTH)."""
    params, opt_state = state.params, state.opt_state
    if rewind is not None:  # a copy: the state's buffers are donated to the next step
        params, opt_state = jax.tree_util.tree_map(jnp.copy, rewind)
    pmask = param_mask(params, group_ids, mask)
    params = apply_group_mask(params, group_ids, mask)
    opt_state = set_mask(opt_state, pmask)
    gates = jnp.asarray(mask, jnp.float32)
    return replicate(TrainState(state.step, params, state.collections, opt_state, gates), mesh)


class EventOutcome(NamedTuple):
    """What :func:`prune` returns.

    Attributes:
      state: the state with the mask installed.
      method_state: the pruner's state after the event.
      mask: ``(p,)`` float32 group mask.
      record: the method's arrays for ``event_<step>.npz``.
      summary: ``{"step", "ratio", "kept", "groups_before", "seconds"}``: ``groups_before``
        the groups alive before the event (its context's nonzero gates), ``seconds`` those of
        the selection and installation, device work included; then the method's own facts,
        ``pruner.summarize(record)`` (PL gating: the final gating trace ± its standard error).
    """

    state: TrainState
    method_state: PyTree
    mask: np.ndarray
    record: dict
    summary: dict


def prune(
    pruner: Pruner,
    context: PruneContext,
    state: TrainState,
    method_state: PyTree,
    rewind: Rewind,
    mesh: Any,
) -> EventOutcome:
    """One pruning event: :func:`select_mask` at ``context``, then :func:`install_mask`."""
    start = time.perf_counter()
    mask, method_state, record = select_mask(pruner, context, method_state)
    state = install_mask(state, mask, context.group_ids, rewind, mesh)
    jax.block_until_ready(state.params)
    summary = {
        "step": context.step,
        "ratio": context.ratio,
        "kept": context.num_keep,
        "groups_before": int(np.count_nonzero(context.gates)),
        "seconds": time.perf_counter() - start,
    }
    if pruner.summarize is not None:
        summary.update(_method_summary(pruner, record, summary))
    return EventOutcome(state, method_state, mask, record, summary)


_JSON_SCALARS = (bool, int, float, str, type(None))


def _method_summary(pruner: Pruner, record: dict, summary: dict) -> dict:
    """``pruner.summarize(record)``, checked: a dict of JSON scalars under new keys."""
    facts = pruner.summarize(record)
    if not isinstance(facts, dict):
        raise TypeError(
            f"pruner {pruner.name!r}: summarize returned {type(facts).__name__}, expected a dict"
        )
    for name, value in facts.items():
        if not isinstance(name, str) or name in summary:
            raise ValueError(
                f"pruner {pruner.name!r}: summarize key {name!r} is not a string or collides "
                f"with the engine's {sorted(summary)}"
            )
        if not isinstance(value, _JSON_SCALARS):
            raise TypeError(
                f"pruner {pruner.name!r}: summarize[{name!r}] is {type(value).__name__}, expected "
                "int, float, str, bool or None"
            )
    return facts


def format_event(summary: dict) -> str:
    """One line describing a pruning event from its summary (:attr:`EventOutcome.summary`).

    ``event at step S: kept K of G groups (ratio R, T s)``, then the method's facts as
    ``name value``; a fact ``X`` with an ``X_stderr`` beside it reads ``X value ± stderr``
    (a ``None`` standard error: ``± n/a``).  E.g. PL gating: ``gating_trace 3.12 ± 0.08``.

    Raises:
      ValueError: a summary without the engine's keys (``step``, ``ratio``, ``kept``,
        ``groups_before``, ``seconds``).
    """
    base = ("step", "ratio", "kept", "groups_before", "seconds")
    missing = [k for k in base if k not in summary]
    if missing:
        raise ValueError(f"summary: expected an event summary, missing {missing}")
    line = (
        f"event at step {summary['step']}: kept {summary['kept']} of {summary['groups_before']} "
        f"groups (ratio {summary['ratio']:.3g}, {summary['seconds']:.2f} s)"
    )
    facts = []
    for name, value in summary.items():
        if name in base or (name.endswith("_stderr") and name[: -len("_stderr")] in summary):
            continue
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        if f"{name}_stderr" in summary:
            stderr = summary[f"{name}_stderr"]
            text += " ± " + ("n/a" if stderr is None else f"{stderr:.2g}")
        facts.append(f"{name} {text}")
    return "; ".join([line, *facts])


def compact(
    model: Bound, state: TrainState, rewind: Rewind, keep: np.ndarray, mesh: Any
) -> tuple[Bound, TrainState, Rewind]:
    """Remove the groups with ``keep[g] = False`` from the model, the state (parameters,
    collections, optimizer state) and the rewind point; the smaller model's gates are all 1."""
    collections = state.collections

    def shrink(params: PyTree) -> PyTree:
        return model.compact({"params": params, **collections}, keep)[1]["params"]

    small_model, variables = model.compact({"params": state.params, **collections}, keep)
    variables = dict(variables)
    params = variables.pop("params")
    opt_state = map_param_subtrees(state.opt_state, state.params, shrink)
    if rewind is not None:
        rewind = (shrink(rewind[0]), map_param_subtrees(rewind[1], state.params, shrink))
    gates = jnp.ones((int(keep.sum()),), jnp.float32)
    small = replicate(TrainState(state.step, params, variables, opt_state, gates), mesh)
    return small_model, small, rewind


def rewind_point(state: TrainState) -> tuple[PyTree, PyTree]:
    """A copy of ``(params, opt_state)`` to rewind to (the state's buffers are donated)."""
    return jax.tree_util.tree_map(jnp.copy, (state.params, state.opt_state))


def write_event(
    run_dir: Path, step: int, mask: np.ndarray, record: dict, events: list[dict]
) -> None:
    """``event_<step>.npz`` (the mask and the method's record) and ``events.json`` (every
    event's summary so far)."""
    arrays = {k: np.asarray(v) for k, v in record.items()}
    np.savez(run_dir / f"event_{step}.npz", mask=mask, **arrays)
    (run_dir / "events.json").write_text(json.dumps(events, indent=1))


def group_sparsity(gates: jax.Array | None, num_groups0: int | None) -> float:
    """Pruned share of the ``num_groups0`` groups of the uncompacted model (0 when dense)."""
    if num_groups0 is None or gates is None:
        return 0.0
    return 1.0 - float(np.sum(np.asarray(gates))) / num_groups0
