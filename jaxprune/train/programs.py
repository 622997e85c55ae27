"""A model's compiled programs, built once and shared by every run that trains it.

:func:`~jaxprune.train.train` needs a train step, an eval step, the analysis function and the
functions pruning events hand to the method for every model it trains (the dense one and each
compacted one).  Rebuilding them per run gives every run new Python functions, so JAX traces,
lowers and compiles (or loads from the persistent cache) each program again: on the demo's MLP
that is most of a 300-step run.  :func:`model_programs` keeps them, keyed by the model, the task,
the optimizer *object* and the mesh, so seeds and methods that train the same shapes with the
same optimizer reuse one compiled step (jit's own cache then hits), and methods that compile
with the event functions as arguments (PL gating, the criteria) hit theirs too.

optax transformations are pure, so one optimizer object may serve any number of runs; a
comparison that wants the sharing passes the same object to every :func:`train` call.  The
caches are bounded (least recently used entries are dropped), and an entry holds a reference
to its optimizer, so an identity key is never reused by a different object.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune.optim import masked
from jaxprune.train.analysis import analysis_fn
from jaxprune.train.events import EventFns, event_fns
from jaxprune.train.parallel import compile_step
from jaxprune.train.steps import make_eval_step, make_loss_fn, make_train_step
from jaxprune.train.tasks import Task
from jaxprune.train.zoo import Bound

__all__ = ["ModelPrograms", "clear_program_cache", "model_programs", "pruning_optimizer"]

#: Entries kept by each cache (a compacted model is one entry per distinct shape).
CACHE_SIZE = 64


class ModelPrograms(NamedTuple):
    """The compiled functions of one model under one task, optimizer and mesh.

    Attributes:
      train_step: compiled ``train_step(state, batch, key) -> (state, metrics)``.
      eval_step: compiled ``eval_step(state, batch, key) -> metrics``.
      analysis: :func:`~jaxprune.train.analysis.analysis_fn` of the model.
      events: the model functions pruning events hand to the method.
    """

    train_step: Callable
    eval_step: Callable
    analysis: Callable
    events: EventFns


class _LRU:
    """A bounded mapping whose values carry the objects their identity keys stand for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: collections.OrderedDict[Hashable, tuple[Any, Any]] = collections.OrderedDict()

    def get(self, key: Hashable, owner: Any, build: Callable[[], Any]) -> Any:
        hit = self.entries.get(key)
        if hit is not None and hit[0] is owner:
            self.entries.move_to_end(key)
            return hit[1]
        value = build()
        self.entries[key] = (owner, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self.entries.clear()


_PROGRAMS = _LRU(CACHE_SIZE)
_MASKED = _LRU(CACHE_SIZE)


def _all_ones(params: Any) -> Any:
    return jax.tree_util.tree_map(jnp.ones_like, params)


def pruning_optimizer(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``masked(optimizer)`` with an all-ones initial mask, one object per ``optimizer`` (so
    runs that share an optimizer share the masked steps' compiled programs)."""
    return _MASKED.get(id(optimizer), optimizer, lambda: masked(optimizer, _all_ones))


def model_programs(
    model: Bound,
    task: Task,
    optimizer: optax.GradientTransformation,
    mesh: Any,
    *,
    num_probes: int,
    projections: int | None,
) -> ModelPrograms:
    """The :class:`ModelPrograms` of ``model``, built on first use and then reused.

    Args:
      model: the bound model (compared by value: an equal model is the same entry).
      task: its task (compared by value).
      optimizer: the optimizer of the train step (compared by identity).
      mesh: the data-parallel mesh.
      num_probes, projections: the analysis settings
        (:func:`~jaxprune.train.analysis.analysis_fn`).
    """
    key = (model, task, id(optimizer), mesh, num_probes, projections)

    def build() -> ModelPrograms:
        loss_fn = make_loss_fn(model, task)
        return ModelPrograms(
            train_step=compile_step(make_train_step(model, task, optimizer), mesh),
            eval_step=compile_step(make_eval_step(model, task), mesh, donate_state=False),
            analysis=analysis_fn(model, loss_fn, num_probes=num_probes, projections=projections),
            events=event_fns(model, task, loss_fn),
        )

    return _PROGRAMS.get(key, optimizer, build)


def clear_program_cache() -> None:
    """Forget every cached program (their compiled executables are freed with them)."""
    _PROGRAMS.clear()
    _MASKED.clear()
