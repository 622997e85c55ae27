"""Tasks (losses and metrics) and the model registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune.train import build_model, make_task
from jaxprune.train.tasks import summarize_metrics


def test_classification_metrics_ignore_padding():
    task = make_task("classification", num_outputs=3, info={})
    logits = jnp.asarray([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [9.0, 0.0, 0.0]])
    batch = {"y": jnp.asarray([0, 2, 1]), "valid": jnp.asarray([1.0, 1.0, 0.0])}
    loss, metrics = task.loss(logits, batch)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits[:2], batch["y"][:2])
    assert float(loss) == pytest.approx(float(expected.mean()))
    assert summarize_metrics(metrics, "classification")["accuracy"] == pytest.approx(0.5)


def test_regression_loss_is_half_squared_error():
    task = make_task("regression", num_outputs=2, info={})
    outputs, y = jnp.ones((4, 2)), jnp.zeros((4, 2))
    loss, _ = task.loss(outputs, {"y": y})
    assert float(loss) == pytest.approx(1.0)


def test_mlm_task_scores_only_masked_positions():
    task = make_task("mlm", num_outputs=50, info={"mask_id": 4, "special_ids": (0, 1, 2, 3, 4)})
    tokens = jnp.tile(jnp.arange(5, 45)[None], (6, 1))
    batch = task.prepare({"x": tokens}, jax.random.key(0))
    assert float(batch["weights"].sum()) == 6 * 6  # 15% of 40 tokens, rounded
    logits = jax.nn.one_hot(tokens, 50) * 20.0  # predicts the original token everywhere
    loss, metrics = task.loss(logits, batch)
    assert summarize_metrics(metrics, "mlm")["accuracy"] == 1.0
    assert summarize_metrics(metrics, "mlm")["perplexity"] == pytest.approx(np.exp(float(loss)))


@pytest.mark.parametrize(
    ("name", "shape", "kind", "groups"),
    [
        ("mlp", (64,), None, 128),
        ("two_layer", (64,), None, 8),
        ("cnn", (8, 8, 1), None, 24),
        ("resnet", (32, 32, 3), None, 28),
        ("resnet34", (16, 16, 3), None, 60),
        ("mobilenet_v2", (16, 16, 3), None, 240),
        ("bert", (16,), None, 8),
        ("switch", (16,), "experts+heads", 12),
    ],
)
def test_registered_models_gate_and_compact_consistently(name, shape, kind, groups):
    model = build_model(name, num_outputs=50, input_shape=shape, kind=kind)
    x = jnp.zeros((2, *shape), jnp.int32 if name in ("bert", "switch") else jnp.float32)
    if name not in ("bert", "switch"):
        x = jax.random.uniform(jax.random.key(1), (2, *shape))
    variables = model.init(jax.random.key(0), x)
    _, layout = model.group_ids(variables["params"])
    assert len(layout.layer_of_group) == groups
    if not model.compactable:
        with pytest.raises(ValueError, match="does not support compaction"):
            model.compact(variables, np.ones(groups, bool))
        return
    keep = np.ones(groups, bool)
    for layer in np.unique(layout.layer_of_group):  # drop the first group of every layer
        keep[np.flatnonzero(layout.layer_of_group == layer)[0]] = False
    gated = model.apply(variables, x, train=False, gates=jnp.asarray(keep, jnp.float32))[0]
    if model.gate_keyword is not None:  # the same gates as one piece per layout layer
        pieces = [
            jnp.asarray(keep[layout.layer_of_group == layer], jnp.float32)
            for layer in range(layout.num_layers)
        ]
        by_layer = model.apply(variables, x, train=False, gates=pieces)[0]
        np.testing.assert_array_equal(by_layer, gated)
    small, small_variables = model.compact(variables, keep)
    compacted = small.apply(small_variables, x, train=False)[0]
    np.testing.assert_allclose(compacted, gated, atol=1e-5)


def test_unknown_model_and_kind_are_errors():
    with pytest.raises(ValueError, match=r"unknown model 'gpt'.*mlp, two_layer, cnn"):
        build_model("gpt", num_outputs=2, input_shape=(3,))
    with pytest.raises(ValueError, match="kind 'heads' is not a group kind of mlp"):
        build_model("mlp", num_outputs=2, input_shape=(3,), kind="heads")
