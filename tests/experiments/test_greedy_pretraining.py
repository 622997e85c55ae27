"""``greedy_pretraining`` (Wolfe et al. (2023), Sec. 6.1 Figure 1, App. C Figures 2–3): the smoke
preset writes its table, results and plots with the right shapes; the red line, the dashed line
and the √N fit on hand-made inputs; the condition-number and σ_min(Ψ) helpers against
``np.linalg.svd``; the recorded pruned accuracy against the compacted subnetwork; class-balanced
nested sub-datasets; settings validation and the paper preset."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.data import load_dataset
from jaxprune.experiments import get_experiment
from jaxprune.experiments.greedy_pretraining import (
    EXPERIMENT,
    GreedyPretrainingSettings,
    binary_labels,
    dashed_line,
    extreme_singular_values,
    gaussian_inverse_condition,
    prune_and_score,
    random_psi,
    red_line,
    sqrt_fit,
    stratified_subsets,
)
from jaxprune.methods.greedy import subnetwork
from jaxprune.models import TwoLayer, TwoLayerConfig


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("greedy_pretraining")
    experiment = get_experiment("greedy_pretraining")
    return out, experiment.run(experiment.presets["smoke"], out, False)


def test_smoke_writes_outputs_with_the_right_shapes(smoke):
    out, results = smoke
    settings = EXPERIMENT.presets["smoke"]
    for name in ("table.md", "results.json", "figure1.png", "appendix_c.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    sizes, iterations = list(settings.subset_sizes), list(settings.iterations)
    assert saved["sizes"] == sizes and saved["iterations"] == iterations == [0, 2, 4]
    assert sorted(saved["widths"], key=int) == [str(w) for w in settings.widths]
    assert len(saved["runs"]) == len(settings.widths) * len(settings.seeds) * len(sizes)
    for run in saved["runs"]:
        for field in ("pruned_accuracy", "pruned_accuracy_full", "dense_accuracy", "dense_loss"):
            assert len(run[field]) == len(iterations)
        assert all(1 <= d <= settings.num_selected for d in run["distinct"])
    for width, row in saved["widths"].items():
        for field in ("pruned_accuracy", "pruned_accuracy_full", "dense_accuracy_full"):
            mean = np.asarray(row[field]["mean"])
            assert mean.shape == (len(sizes), len(iterations))
            assert ((0 <= mean) & (mean <= 1)).all() and (np.asarray(row[field]["sd"]) >= 0).all()
        # The heatmap is the seed mean of the runs, and the red line is that of the heatmap.
        runs = [r for r in saved["runs"] if str(r["width"]) == width]
        for s, size in enumerate(sizes):
            expected = np.mean([r["pruned_accuracy"] for r in runs if r["size"] == size], axis=0)
            np.testing.assert_allclose(row["pruned_accuracy"]["mean"][s], expected)
        red = red_line(np.asarray(row["pruned_accuracy"]["mean"]), iterations)
        assert row["red_line"]["iterations"] == red.iterations
        assert red.iterations[-1] is not None and len(row["dashed_line"]["iterations"]) == 2
        assert len(row["claims"]["a_red_line"]) == len(sizes)
    appendix = saved["appendix_c"]
    assert len(appendix["figure2"]) == len(settings.psi_activations) * len(settings.psi_dims)
    for entry in appendix["figure2"]:
        assert len(entry["sigma_min"]["mean"]) == len(settings.psi_neurons)
    for entry in appendix["figure3"].values():
        assert all(0 < v < 1 for v in entry["mean"]) and len(entry["mean"]) == len(sizes)
    table = (out / "table.md").read_text()
    assert "red line" in table and "(a) larger sub-datasets" in table and "Figure 3" in table
    assert results["plots"] == ["figure1.png", "appendix_c.png"]


def test_red_line_on_a_hand_made_heatmap():
    iterations = [0, 10, 20, 30]
    accuracy = [
        [0.90, 0.95, 0.97, 0.96],  # first reaches 0.95 at t = 10
        [0.50, 0.60, 0.70, 0.65],  # never
        [0.93, 0.96, 0.99, 0.98],  # reaches 0.95 at t = 10 too (above the threshold)
        [0.80, 0.85, 0.95, 0.90],  # the largest size: best 0.95 at t = 20
    ]
    red = red_line(accuracy, iterations)
    assert red.threshold == 0.95
    assert red.iterations == [10, None, 10, 20]
    with pytest.raises(ValueError, match="accuracy"):
        red_line(accuracy, iterations[:3])
    with pytest.raises(ValueError, match="NaN"):
        red_line([[0.5, math.nan]], [0, 1])


def test_dashed_line_fits_the_red_line_by_least_squares():
    inverse, k = (0.5, 0.25, 0.1), 4
    shape = [-math.log(k) / math.log(1 - v * v) for v in inverse]
    line = dashed_line(inverse, k, [10, None, 40])
    constant = (10 * shape[0] + 40 * shape[2]) / (shape[0] ** 2 + shape[2] ** 2)
    assert line.constant == pytest.approx(constant, rel=1e-12)
    np.testing.assert_allclose(line.iterations, constant * np.asarray(shape), rtol=1e-12)
    assert shape[0] < shape[1] < shape[2]  # a worse conditioning needs more pre-training
    assert dashed_line(inverse, k, [None, None, None]).constant == 0.0
    with pytest.raises(ValueError, match="inverse_condition"):
        dashed_line((0.5, 1.0), k, [1, 2])
    with pytest.raises(ValueError, match="num_selected"):
        dashed_line((0.5,), 1, [1])
    with pytest.raises(ValueError, match="red_iterations"):
        dashed_line((0.5,), k, [1, 2])


def test_sqrt_fit_recovers_a_square_root_law():
    widths = [16, 64, 256, 1024]
    constant, slope = sqrt_fit(widths, [3.0 * math.sqrt(n) for n in widths])
    assert constant == pytest.approx(3.0, rel=1e-12) and slope == pytest.approx(0.5, rel=1e-9)
    assert math.isnan(sqrt_fit(widths, [1.0, 0.0, 1.0, 2.0])[1])


@pytest.mark.parametrize(("rows", "cols"), [(30, 10), (10, 30), (12, 10)])
def test_gaussian_condition_number_against_numpy_svd(rows, cols):
    inverse = gaussian_inverse_condition(np.random.default_rng(3), rows, cols, 5)
    matrices = np.random.default_rng(3).standard_normal((5, rows, cols))
    singular = np.linalg.svd(matrices, compute_uv=False)
    np.testing.assert_allclose(inverse, singular[:, -1] / singular[:, 0], rtol=1e-10)
    low, high = extreme_singular_values(np.diag([3.0, -0.5, 2.0])[None])
    np.testing.assert_allclose([low[0], high[0]], [0.5, 3.0], rtol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        extreme_singular_values(np.full((2, 2), np.nan))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_sigma_min_of_psi_against_numpy_svd(activation):
    psi = random_psi(np.random.default_rng(0), 40, 6, 8, activation=activation, num_draws=3)
    assert psi.shape == (3, 40, 8)
    low, high = extreme_singular_values(psi)
    singular = np.linalg.svd(psi, compute_uv=False)
    np.testing.assert_allclose(low, singular[:, -1], rtol=1e-9)
    np.testing.assert_allclose(high, singular[:, 0], rtol=1e-12)
    assert (psi >= 0).all() if activation == "relu" else (np.abs(psi) < 1).all()


@pytest.mark.parametrize(("scale", "variance"), [("variance", 16**-0.5), ("std", 1 / 16)])
def test_psi_weight_scale_readings(scale, variance):
    # ‖x_j‖ = 1, so a_iᵀx_j ~ N(0, s²) and E[ReLU(a_iᵀx_j)²] = s²/2 exactly.
    psi = random_psi(np.random.default_rng(1), 4000, 16, 25, weight_scale=scale)
    assert np.mean(psi**2) == pytest.approx(variance / 2, rel=0.1)
    with pytest.raises(ValueError, match="weight_scale"):
        random_psi(np.random.default_rng(1), 4, 2, 2, weight_scale="covariance")


def test_pruned_accuracy_equals_the_compacted_subnetwork():
    # The smoke preset's shapes (whole digits split, N = 16, m = 20, k = 4): compiled already.
    splits = load_dataset("digits")
    x_full = np.asarray(splits.train["x"], np.float32)
    y_full = binary_labels(splits.train["y"])
    x, y = x_full[100:120], y_full[100:120]
    config = TwoLayerConfig(input_dim=64, width=16)
    model = TwoLayer(config)
    params = model.init(jax.random.key(5), x[:1])["params"]
    score = prune_and_score(params, x, y, x_full, y_full, num_selected=4)
    assert int(score.counts.sum()) == 4 and score.distinct == np.count_nonzero(score.counts)
    variables, small = subnetwork(params, score.counts)
    assert small.width == score.distinct

    def accuracy(net, inputs, targets):
        return float(np.mean((np.asarray(net(inputs))[:, 0] > 0) == (targets > 0.5)))

    pruned = TwoLayer(small)
    assert score.pruned_accuracy == accuracy(lambda v: pruned.apply(variables, v), x, y)
    assert score.pruned_accuracy_full == accuracy(
        lambda v: pruned.apply(variables, v), x_full, y_full
    )
    dense = {"params": params}
    assert score.dense_accuracy == accuracy(lambda v: model.apply(dense, v), x, y)
    assert score.dense_accuracy_full == accuracy(lambda v: model.apply(dense, v), x_full, y_full)
    logits = pruned.apply(variables, x)[:, 0]
    loss = float(jnp.mean(jax.nn.softplus(logits) - y * logits))
    assert score.greedy_loss == pytest.approx(loss, rel=1e-5)


def test_binary_labels():
    np.testing.assert_array_equal(binary_labels(np.arange(10)), [0] * 5 + [1] * 5)
    with pytest.raises(ValueError, match="labels"):
        binary_labels(np.array([0.5, 1.0]))


def test_stratified_subsets_are_balanced_and_nested():
    labels = np.repeat([0, 1, 2, 3], [10, 7, 12, 9])
    subsets = stratified_subsets(labels, (8, 14, 28), np.random.default_rng(0))
    for subset, size in zip(subsets, (8, 14, 28)):
        assert len(subset) == len(np.unique(subset)) == size
        per_class = np.bincount(labels[subset], minlength=4)
        assert set(per_class) <= {size // 4, -(-size // 4)}
    for small, large in itertools.pairwise(subsets):
        assert set(small) <= set(large)
    with pytest.raises(ValueError, match="needs 8 of class 1, but the training set has only 7"):
        stratified_subsets(labels, (8, 32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="50 exceeds the 38 training examples"):
        stratified_subsets(labels, (8, 50), np.random.default_rng(0))
    with pytest.raises(ValueError, match="increasing"):
        stratified_subsets(labels, (14, 8), np.random.default_rng(0))


def test_sizes_the_training_set_cannot_fill_fail_before_training(tmp_path):
    smoke = EXPERIMENT.presets["smoke"]
    with pytest.raises(ValueError, match="exceeds the 1438 training examples"):
        EXPERIMENT.run(dataclasses.replace(smoke, subset_sizes=(20, 5000)), tmp_path, False)
    with pytest.raises(ValueError, match="class-balanced sub-dataset of 1400"):
        EXPERIMENT.run(dataclasses.replace(smoke, subset_sizes=(20, 1400)), tmp_path, False)
    assert not any(tmp_path.iterdir())


def test_settings_validation():
    smoke = EXPERIMENT.presets["smoke"]
    for field, value, error, match in [
        ("subset_sizes", (), ValueError, "subset_sizes"),
        ("subset_sizes", (40, 20), ValueError, "strictly increasing"),
        ("subset_sizes", (0, 20), ValueError, "subset_sizes"),
        ("widths", (0,), ValueError, "widths"),
        ("widths", (1.5,), TypeError, "widths"),
        ("prune_every", 3, ValueError, "divisor of num_iterations=4"),
        ("num_selected", 1, ValueError, "num_selected"),
        ("learning_rate", 0.0, ValueError, "learning_rate"),
        ("seeds", (), ValueError, "seeds"),
        ("psi_points", (4, 8), ValueError, "psi_points"),
        ("psi_activations", ("gelu",), ValueError, "psi_activations"),
        ("psi_weight_scale", "covariance", ValueError, "psi_weight_scale"),
        ("psi_draws", 1, ValueError, "psi_draws"),
    ]:
        with pytest.raises(error, match=match):
            dataclasses.replace(smoke, **{field: value})
    with pytest.raises(TypeError, match="GreedyPretrainingSettings"):
        EXPERIMENT.run({"widths": (4,)}, "unused", False)


def test_paper_preset_validates_and_fits_mnist():
    paper = EXPERIMENT.presets["paper"]
    assert isinstance(paper, GreedyPretrainingSettings) and paper.dataset == "tfds:mnist"
    assert paper.widths == (5000, 10000, 20000)
    assert paper.subset_sizes == (1000, *range(5000, 50001, 5000))
    assert paper.iterations == tuple(range(0, 8001, 1000)) and paper.num_selected == 200
    assert len(paper.seeds) == 3 and paper.psi_draws == 10
    # MNIST's training split has these class counts (TFDS / LeCun et al.): 5,000 per class fit.
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    labels = np.repeat(np.arange(10), counts)
    subsets = stratified_subsets(labels, paper.subset_sizes, np.random.default_rng(0))
    assert all((np.bincount(labels[s]) == len(s) // 10).all() for s in subsets)
