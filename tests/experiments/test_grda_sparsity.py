"""``grda_sparsity``: gRDA with ``c = 0`` is SGD through the engine, gRDA prunes where SGD does
not at a similar accuracy (smoke preset), the learning-rate schedule and config checks."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from jaxprune.experiments.grda_sparsity import (
    EXPERIMENT,
    learning_rate_schedule,
    load_setup,
)
from jaxprune.optim import grda
from jaxprune.train import TrainConfig, train

SMOKE = EXPERIMENT.presets["smoke"]


def test_smoke_writes_table_results_and_plot(smoke):
    out, result = smoke
    assert (out / "table.md").read_text().strip() == result["table"]
    assert "| SGD |" in result["table"] and "| gRDA_c0.01_mu0.6 |" in result["table"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"] == json.loads(json.dumps(result["results"]))
    assert (out / "sparsity_mlp-digits.png").stat().st_size > 1000


def test_grda_prunes_where_sgd_does_not_at_similar_accuracy(smoke):
    results = smoke[1]["results"]["mlp-digits"]
    sgd, grda = results["SGD"], results["gRDA_c0.01_mu0.6"]
    # SGD's only exact zeros are the zero-initialized biases of units that never activate.
    assert sgd["weight_sparsity"][0] < 1e-3
    assert grda["weight_sparsity"][0] > 0.1
    assert grda["test_accuracy"][0] > sgd["test_accuracy"][0] - 0.05 > 0.8


def test_grda_with_c_zero_is_sgd_through_the_engine():
    model, splits = load_setup("mlp-digits")
    config = TrainConfig(num_steps=30, batch_size=32, log_every=10, progress=False)
    sgd = train(model, splits, optax.sgd(0.1), config)
    ours = train(model, splits, grda(0.1, 0.0, 0.6), config)
    for a, b in zip(
        jax.tree_util.tree_leaves(sgd.state.params), jax.tree_util.tree_leaves(ours.state.params)
    ):
        np.testing.assert_array_equal(a, b)
    assert ours.summary["test_accuracy"] == sgd.summary["test_accuracy"]
    assert ours.summary["weight_sparsity"] == sgd.summary["weight_sparsity"]


def test_swa_schedule_phases():
    schedule = learning_rate_schedule(0.1, "swa", 1000)
    values = [float(schedule(s)) for s in (0, 499, 500, 700, 899, 900, 999)]
    expected = [0.1, 0.1, 0.1, 0.1 * (1 - 0.2 * 0.99 / 0.4), 0.1 * (1 - 0.399 * 0.99 / 0.4)]
    np.testing.assert_allclose(values[:5], expected, rtol=1e-5)
    np.testing.assert_allclose(values[5:], [0.001, 0.001], rtol=1e-5)
    assert learning_rate_schedule(0.1, "constant", 1000) == 0.1


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"setups": ("mlp-imagenet",)}, "setups: unknown"),
        ({"cs": (0.0,)}, "cs: expected a number in \\(0, inf\\), got 0"),
        ({"mus": ()}, "mus: expected a non-empty tuple"),
        ({"lr_schedule": "cosine"}, "lr_schedule: expected one of"),
        ({"eval_every": 30}, "eval_every: expected a divisor of num_steps=200"),
        ({"seeds": ()}, "seeds: expected at least one seed"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMOKE, **changes)
