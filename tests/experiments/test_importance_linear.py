"""``importance_linear`` (the smoke preset): Figure 1 of Li et al. (2020) — predicted and simulated
risks of MP and HP agree within Monte-Carlo error, MP = HP at λ = 1, HP beats MP at λ = 5 and
loses at λ = 1/2, the test NI is Σ_{i<=s} θ̄_i²; the experiment writes its table, results and
plot."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxprune.data.linear import decaying_theta, scaling_diagonal
from jaxprune.experiments import get_experiment
from jaxprune.experiments.importance_linear import EXPERIMENT

SMOKE = EXPERIMENT.presets["smoke"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("importance_linear")
    return out_dir, EXPERIMENT.run(SMOKE, out_dir, False)


def test_experiment_writes_table_results_and_plot(run):
    out_dir, results = run
    assert get_experiment("importance_linear") is EXPERIMENT
    assert (out_dir / "table.md").read_text().strip() == results["table"]
    assert "| s/p | MP λ=0.5 | HP λ=0.5 |" in results["table"]
    assert "Largest |predicted − empirical|" in results["table"]
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["max_gap"] == results["max_gap"]
    assert saved["config"] == {**dataclasses.asdict(SMOKE), "lams": list(SMOKE.lams)}
    assert (out_dir / "figure1.png").stat().st_size > 1000


def test_predicted_and_empirical_agree_within_monte_carlo_error(run):
    _, results = run
    z_max = 0.0
    for curves in results["curves"].values():
        for curve in curves.values():
            predicted, empirical = np.array(curve["predicted"]), np.array(curve["empirical"])
            combined = np.hypot(curve["predicted_stderr"], curve["empirical_stderr"])
            positive = np.array(results["keep"]) > 0
            z_max = max(z_max, np.max(np.abs(predicted - empirical)[positive] / combined[positive]))
            # s = 0 keeps nothing: L(0) = ‖θ̄‖² + σ² exactly.
            assert predicted[0] == pytest.approx(1 + SMOKE.sigma**2, rel=1e-12)
            assert empirical[0] == pytest.approx(1 + SMOKE.sigma**2, rel=1e-12)
    assert results["max_gap_z"] == pytest.approx(z_max)
    assert z_max < 4.0


def test_figure_1_orderings(run):
    _, results = run
    curves = {
        lam: {m: np.array(c["predicted"]) for m, c in v.items()}
        for lam, v in results["curves"].items()
    }
    middle = slice(1, -1)  # 0 < s < p
    # Λ = I: MP and HP are the same pruning, hence the same risks.
    for key in ("predicted", "empirical"):
        mp = results["curves"]["1.0"]["magnitude"][key]
        hp = results["curves"]["1.0"]["hessian"][key]
        assert mp == hp
    # λ = 5: HP beats MP; λ = 1/2: HP is worse than MP (Sec. 3.1).
    assert np.all(curves["5.0"]["hessian"][middle] < curves["5.0"]["magnitude"][middle])
    assert np.all(curves["0.5"]["hessian"][middle] > curves["0.5"]["magnitude"][middle])


def test_importances_of_the_first_weights(run):
    _, results = run
    keep = np.array(results["keep"])
    theta_bar = decaying_theta(SMOKE.p)
    expected = np.cumsum(np.r_[0.0, theta_bar**2])[keep]
    np.testing.assert_allclose(results["test_importance"], expected, rtol=1e-12, atol=1e-15)
    # Larger λ gives the leading (test-important) weights a larger training NI (Fig. 1c).
    train = {lam: np.array(v["importance"]) for lam, v in results["training_importance"].items()}
    middle = slice(1, -1)
    assert np.all(train["5.0"][middle] > train["1.0"][middle])
    assert np.all(train["1.0"][middle] > train["0.5"][middle])


def test_scaling_diagonal_is_eq_3_5():
    np.testing.assert_array_equal(scaling_diagonal(20, 5.0, 0.1), np.r_[5.0, 5.0, np.ones(18)])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n": 60}, "n: expected fewer examples than p=60"),
        ({"sigma": -1.0}, "sigma"),
        ({"lams": ()}, "lams: expected a non-empty tuple"),
        ({"lams": (1.0, 0.0)}, "lams"),
        ({"fraction": 1.5}, "fraction"),
        ({"num_trials": 1}, "num_trials"),
        ({"num_draws": 1}, "num_draws"),
        ({"num_points": 0}, "num_points"),
    ],
)
def test_settings_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMOKE, **changes)
