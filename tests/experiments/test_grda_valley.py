"""``grda_valley``: the smoke preset writes its table and plot; the curve and the line start and
end at the two minima; the whole-dataset metric is the plain mean; config checks."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from jaxprune.experiments.grda_sparsity import load_setup
from jaxprune.experiments.grda_valley import EXPERIMENT, dataset_metric
from jaxprune.train.tasks import make_task

SMOKE = EXPERIMENT.presets["smoke"]


def test_smoke_writes_table_results_and_plot(smoke):
    out, result = smoke
    assert (out / "table.md").read_text().strip() == result["table"]
    assert result["table"].count("\n| 0.6 |") == 1
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]["summary"]) == {"0.6"}
    assert (out / "valley.png").stat().st_size > 1000


def test_paths_join_the_two_minima(smoke):
    result = smoke[1]
    s, p = result["summary"]["0.6"], result["paths"]["0.6"]
    assert p["train_loss_curve"].shape == (SMOKE.num_points,)
    for path in ("curve", "line"):
        np.testing.assert_allclose(
            p[f"train_loss_{path}"][[0, -1]], [s["train_loss_sgd"], s["train_loss_grda"]], rtol=1e-5
        )
        np.testing.assert_allclose(
            p[f"test_error_{path}"][[0, -1]], [s["test_error_sgd"], s["test_error_grda"]], atol=1e-6
        )
    assert p["bezier_fit_losses"].shape == (SMOKE.curve_steps,)
    assert 0 < s["sparsity"] < 1 and 0 <= s["top_eigenspace_fraction"] <= 1
    assert s["train_barrier_curve"] >= 0 and s["train_barrier_line"] >= 0


def test_dataset_metric_is_the_mean_over_all_examples():
    model, splits = load_setup("mlp-digits")
    task = make_task(splits.task, num_outputs=splits.num_outputs, info=splits.info)
    params = model.init(jax.random.key(0), splits.test["x"][:1])["params"]
    logits = model.apply({"params": params}, splits.test["x"], train=False)[0]
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, splits.test["y"]).mean()
    expected_accuracy = np.mean(np.argmax(logits, -1) == splits.test["y"])
    assert len(splits.test["y"]) % 64  # padding is exercised
    loss = dataset_metric(model, task, splits.test, "loss", 64)(params)
    accuracy = dataset_metric(model, task, splits.test, "accuracy", 64)(params)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(accuracy, expected_accuracy, rtol=1e-6)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"setup": "wrn28x10-cifar100"}, "has BatchNorm"),
        ({"setup": "mnist"}, "setup: expected one of"),
        ({"c": 0.0}, "c: expected a number in \\(0, inf\\)"),
        ({"mus": ()}, "mus: expected a non-empty tuple"),
        ({"num_points": 2}, "num_points: expected an int >= 3"),
        ({"top_k": -1}, "top_k: expected an int >= 0"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMOKE, **changes)
