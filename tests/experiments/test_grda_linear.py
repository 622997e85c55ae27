"""``grda_linear``: Theorem 3.1 on over-parameterized least squares (the smoke preset): gRDA
lands near the directional-pruning solution of SGD, moves off SGD along the Hessian's null space,
and prunes; the experiment writes its table, results and plot."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxprune.experiments import get_experiment
from jaxprune.experiments.grda_linear import (
    EXPERIMENT,
    GRDALinearSettings,
    run_linear_regression,
)
from jaxprune.optim.grda import grda_threshold

PRESETS = EXPERIMENT.presets


@pytest.fixture(scope="module")
def smoke():
    return run_linear_regression(PRESETS["smoke"])


def test_grda_performs_directional_pruning(smoke):
    config = PRESETS["smoke"]
    # λ is gRDA's threshold c·γ^{1/2}(Nγ)^μ.
    expected_lam = grda_threshold(config.c, config.mu, config.learning_rate, config.num_steps)
    assert smoke["lam"] == pytest.approx(expected_lam, rel=1e-5)
    # gRDA is much closer to the directional-pruning solution than SGD is.
    assert smoke["dp_distance"] < 0.5 * smoke["sgd_dp_distance"]
    assert smoke["dp_relative_error"] < 0.5
    # It departs from SGD along flat directions (the null space of XᵀX) ...
    assert smoke["null_space_fraction"] > 0.99
    assert smoke["null_space_fraction"] ** 2 + smoke["row_space_fraction"] ** 2 == pytest.approx(1)
    # ... so it still fits the data, and it is sparse where SGD is dense.
    assert smoke["loss_grda"] < 1e-4 * smoke["loss_init"]
    assert smoke["sparsity_grda"] > smoke["sparsity_sgd"] == 0.0
    assert smoke["sparsity_dp"] > 0
    assert smoke["support_agreement"] > 0.8
    # The history has one entry per step; gRDA's sparsity grows from zero.
    history = smoke["history"]
    assert history["loss_grda"].shape == (config.num_steps,)
    assert history["sparsity_grda"][0] < history["sparsity_grda"][-1]


def test_smaller_c_tracks_the_solution_more_closely(smoke):
    small = run_linear_regression(dataclasses.replace(PRESETS["smoke"], c=0.05))
    assert small["lam"] < smoke["lam"]
    assert small["dp_relative_error"] < smoke["dp_relative_error"]


def test_c_zero_is_sgd():
    config = dataclasses.replace(PRESETS["smoke"], c=0.0, num_steps=200)
    results = run_linear_regression(config)
    assert results["lam"] == 0.0
    np.testing.assert_array_equal(results["weights"]["grda"], results["weights"]["sgd"])
    np.testing.assert_array_equal(results["weights"]["dp"], results["weights"]["sgd"])
    assert np.isnan(results["null_space_fraction"]) and results["sparsity_grda"] == 0.0


def test_experiment_writes_table_results_and_plot(tmp_path):
    experiment = get_experiment("grda_linear")
    assert experiment is EXPERIMENT and set(experiment.presets) == {"smoke", "small", "paper"}
    out = experiment.run(experiment.presets["smoke"], tmp_path, False)
    assert "| ‖w^gRDA − w^DP‖ / ‖w^SGD‖ |" in out["table"]
    assert (tmp_path / "table.md").read_text().strip() == out["table"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sparsity_grda"] == out["sparsity_grda"] > 0
    assert (tmp_path / "grda_linear.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"d": 20}, "d: expected more parameters than n"),
        ({"c": -0.1}, "c: expected a number in \\[0, inf\\]"),
        ({"mu": 0.0}, "mu: expected a number in \\(0, inf\\)"),
        ({"learning_rate": 0.0}, "learning_rate: expected a number in \\(0, inf\\)"),
        ({"num_steps": 0}, "num_steps: expected a positive int"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PRESETS["smoke"], **changes)


def test_divergent_learning_rate_is_rejected():
    config = GRDALinearSettings(n=5, d=10, noise=0.0, c=0.1, mu=0.6, learning_rate=5.0, num_steps=3)
    with pytest.raises(ValueError, match="learning_rate must be below"):
        run_linear_regression(config)
