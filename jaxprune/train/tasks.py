"""Training objectives: classification, regression and masked language modelling.

A :class:`Task` turns a host batch into model inputs and targets (``prepare``; MLM corrupts
tokens there, from a PRNG key, so every step sees fresh masks) and model outputs into a scalar
loss plus metrics.  Metrics are ``(total, weight)`` pairs, so they average correctly over
batches of different sizes and over masked tokens: the mean of a metric is ``Σ total / Σ
weight``.  An optional ``batch["valid"]`` (1 real example, 0 padding) lets evaluation pad its
last batch to the compiled size without counting the padding.

References:
  Devlin et al. (2019), Section 3.1 (masked-LM objective, 15% of tokens, 80/10/10).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune._validation import check_int, check_positive_int
from jaxprune.data.mlm import mask_tokens

__all__ = [
    "Task",
    "accumulate_metrics",
    "classification",
    "make_task",
    "mlm",
    "regression",
    "summarize_metrics",
]

Batch = dict[str, jax.Array]
Metrics = dict[str, tuple[jax.Array, jax.Array]]


class Task(NamedTuple):
    """A training objective.

    Attributes:
      name: ``"classification"``, ``"regression"`` or ``"mlm"``.
      prepare: ``prepare(batch, key) -> batch`` with ``batch["x"]`` the model input.
      loss: ``loss(outputs, batch) -> (scalar loss, metrics)``; ``metrics`` maps names to
        ``(total, weight)`` pairs; ``"loss"`` is always one of them.
    """

    name: str
    prepare: Callable[[Batch, jax.Array], Batch]
    loss: Callable[[jax.Array, Batch], tuple[jax.Array, Metrics]]


def _unchanged(batch: Batch, key: jax.Array) -> Batch:
    del key
    return batch


def _example_weights(batch: Batch, num_examples: int, dtype: Any) -> jax.Array:
    """``batch["valid"]`` (1 for real examples, 0 for padding) or all ones."""
    if "valid" in batch:
        return batch["valid"].astype(dtype)
    return jnp.ones((num_examples,), dtype)


def _weighted(values: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.sum(weights * values), jnp.sum(weights)


def _classification_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    correct = (jnp.argmax(logits, -1) == batch["y"]).astype(losses.dtype)
    weights = _example_weights(batch, losses.shape[0], losses.dtype)
    loss = _weighted(losses, weights)
    return loss[0] / jnp.maximum(loss[1], 1.0), {
        "loss": loss,
        "accuracy": _weighted(correct, weights),
    }


def _regression_loss(outputs: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    outputs = outputs.astype(jnp.promote_types(outputs.dtype, jnp.float32))
    targets = jnp.reshape(batch["y"], outputs.shape)
    per_example = 0.5 * jnp.sum((outputs - targets) ** 2, axis=tuple(range(1, outputs.ndim)))
    weights = _example_weights(batch, per_example.shape[0], per_example.dtype)
    loss = _weighted(per_example, weights)
    return loss[0] / jnp.maximum(loss[1], 1.0), {"loss": loss}


def _mlm_prepare(
    batch: Batch, key: jax.Array, *, vocab_size: int, mask_id: int, special_ids: tuple[int, ...]
) -> Batch:
    inputs, labels, weights = mask_tokens(
        key, batch["x"], vocab_size=vocab_size, mask_id=mask_id, special_ids=special_ids
    )
    return {**batch, "x": inputs, "labels": labels, "weights": weights}


def _mlm_loss(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    weights = batch["weights"].astype(losses.dtype)
    weights = weights * _example_weights(batch, weights.shape[0], weights.dtype)[:, None]
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(losses.dtype)
    total = jnp.sum(weights)
    loss = jnp.sum(weights * losses) / jnp.maximum(total, 1.0)
    return loss, {
        "loss": (jnp.sum(weights * losses), total),
        "accuracy": (jnp.sum(weights * correct), total),
    }


classification = Task("classification", _unchanged, _classification_loss)
"""Softmax cross-entropy on integer labels ``batch["y"]``; metrics loss and accuracy."""

regression = Task("regression", _unchanged, _regression_loss)
"""Half squared error ``½‖f(x) − y‖²`` per example; metric loss."""


def mlm(*, vocab_size: int, mask_id: int, special_ids: Sequence[int]) -> Task:
    """Masked language modelling: BERT corruption of ``batch["x"]`` in ``prepare``, then
    cross-entropy on the selected positions; metrics loss (per masked token) and accuracy.
    Perplexity is ``exp`` of the mean loss (see :func:`summarize_metrics`).

    Equal arguments return the same :class:`Task` object, so runs on one dataset share their
    compiled steps (:mod:`jaxprune.train.programs`).

    Raises:
      TypeError / ValueError: ``vocab_size`` not a positive int, ``mask_id`` outside
        ``[0, vocab_size)``.

    References: Devlin et al. (2019), Section 3.1.
    """
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    if not 0 <= check_int(mask_id, "mask_id") < vocab_size:
        raise ValueError(f"mask_id: expected an id in [0, vocab_size={vocab_size}), got {mask_id}")
    return _mlm_task(vocab_size, int(mask_id), tuple(int(i) for i in special_ids))


@functools.cache
def _mlm_task(vocab_size: int, mask_id: int, special_ids: tuple[int, ...]) -> Task:
    prepare = functools.partial(
        _mlm_prepare, vocab_size=vocab_size, mask_id=mask_id, special_ids=special_ids
    )
    return Task("mlm", prepare, _mlm_loss)


def make_task(name: str, *, num_outputs: int, info: dict[str, Any]) -> Task:
    """The task of a dataset (``Splits.task``, ``Splits.num_outputs``, ``Splits.info``)."""
    check_positive_int(num_outputs, "num_outputs")
    if name == "classification":
        return classification
    if name == "regression":
        return regression
    if name == "mlm":
        return mlm(vocab_size=num_outputs, mask_id=info["mask_id"], special_ids=info["special_ids"])
    raise ValueError(f"task must be classification, regression or mlm, got {name!r}")


def accumulate_metrics(
    totals: dict[str, tuple[Any, Any]], metrics: Sequence[Metrics]
) -> dict[str, tuple[Any, Any]]:
    """``totals`` plus the ``(total, weight)`` metrics of several steps or batches (one dict
    each, same names); a name not yet in ``totals`` starts at ``(0.0, 0.0)``."""
    if not metrics:
        return totals
    sums = jax.tree_util.tree_map(lambda *xs: jnp.sum(jnp.stack(xs)), *metrics)
    totals = dict(totals)
    for name, (total, weight) in sums.items():
        acc_total, acc_weight = totals.get(name, (0.0, 0.0))
        totals[name] = (acc_total + total, acc_weight + weight)
    return totals


def summarize_metrics(totals: dict[str, tuple[Any, Any]], task: str) -> dict[str, float]:
    """Means of accumulated ``(total, weight)`` metrics, plus ``perplexity = exp(loss)`` for
    MLM."""
    means = {
        name: float(total) / max(float(weight), 1e-12) for name, (total, weight) in totals.items()
    }
    if task == "mlm":
        means["perplexity"] = float(jnp.exp(means["loss"]))
    return means
