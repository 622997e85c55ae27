"""Pure training and evaluation steps for any :class:`~jaxprune.train.zoo.Bound` model.

``train_step(state, batch, key)`` is one optimizer update on a batch, ``eval_step(state, batch,
key)`` the summed metrics of a batch.  Both are pure functions of their arguments, meant to be
wrapped in ``jax.jit``; data parallelism comes from the shardings of their inputs (see
:mod:`jaxprune.train.parallel`), so the same step runs on one device or many and computes the
same mean gradient over the global batch.

When the state carries group ``gates`` (a pruning run), the model sees them at every forward pass
(so a pruned Switch expert also leaves the routing), and the masked optimizer keeps the pruned
weights at exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune.train.tasks import Task
from jaxprune.train.zoo import Bound
from jaxprune.typing import PyTree

__all__ = ["TrainState", "init_state", "make_eval_step", "make_loss_fn", "make_train_step"]


class TrainState(NamedTuple):
    """Everything a training step reads and writes.

    Attributes:
      step: int32 scalar, updates applied so far.
      params: parameter pytree.
      collections: the model's other variable collections (``{"batch_stats": ...}`` or ``{}``).
      opt_state: optimizer state.
      gates: ``(p,)`` float32 group mask of a pruning run, or ``None`` (dense training).
    """

    step: jax.Array
    params: PyTree
    collections: PyTree
    opt_state: optax.OptState
    gates: jax.Array | None


def init_state(
    model: Bound,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    example_x: jax.Array,
    *,
    num_groups: int | None = None,
) -> TrainState:
    """Initial state: fresh variables, the optimizer's initial state, all gates 1 when
    ``num_groups`` is given."""
    variables = dict(model.init(key, example_x))
    params = variables.pop("params")
    gates = None if num_groups is None else jnp.ones((num_groups,), jnp.float32)
    return TrainState(jnp.zeros((), jnp.int32), params, variables, optimizer.init(params), gates)


def make_loss_fn(model: Bound, task: Task) -> Callable[..., tuple[jax.Array, tuple[dict, PyTree]]]:
    """``loss_fn(params, collections, gates, batch, key, train) -> (loss, (metrics,
    updated_collections))`` on a prepared batch; the Switch auxiliary loss is added to the
    training loss (not to the reported task loss)."""

    def loss_fn(params, collections, gates, batch, key, train):
        outputs, updates, aux = model.apply(
            {"params": params, **collections}, batch["x"], train=train, rng=key, gates=gates
        )
        loss, metrics = task.loss(outputs, batch)
        return loss + aux, (metrics, {**collections, **updates})

    return loss_fn


def make_train_step(
    model: Bound, task: Task, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """One update: ``train_step(state, batch, key) -> (state, metrics)``.

    The step's randomness (the task's corruption, e.g. MLM masks, and dropout) is
    ``fold_in(key, state.step)``: pass the same ``key`` every step, and a run restarted from a
    checkpoint draws exactly the masks it would have drawn.
    ``metrics`` maps names to ``(total, weight)`` pairs over the batch.
    """
    loss_fn = make_loss_fn(model, task)

    def train_step(state: TrainState, batch: dict, key: jax.Array) -> tuple[TrainState, dict]:
        prepare_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step))
        batch = task.prepare(batch, prepare_key)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (metrics, collections)), grads = grad_fn(
            state.params, state.collections, state.gates, batch, dropout_key, True
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(state.step + 1, params, collections, opt_state, state.gates)
        return new_state, metrics

    return train_step


def make_eval_step(model: Bound, task: Task) -> Callable[[TrainState, dict, jax.Array], dict]:
    """``eval_step(state, batch, key) -> metrics``: ``(total, weight)`` pairs in eval mode (no
    dropout, running BatchNorm statistics); ``key`` fixes the MLM corruption of the batch."""
    loss_fn = make_loss_fn(model, task)

    def eval_step(state: TrainState, batch: dict, key: jax.Array) -> dict:
        batch = task.prepare(batch, key)
        _, (metrics, _) = loss_fn(state.params, state.collections, state.gates, batch, key, False)
        return metrics

    return eval_step
