"""``greedy_cnn`` (Wolfe et al. (2023), Table 1): the smoke preset pre-trains, prunes by greedy
channel selection, fine-tunes and writes its table, results and plot; the recorded FLOPs and
parameter ratios are those of the compacted models; the bold "first match" and the settings
checks behave as documented."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.experiments import get_experiment, greedy_cnn
from jaxprune.experiments.greedy_cnn import (
    EXPERIMENT,
    IMAGENET_TABLE2,
    GreedyCNNSettings,
    first_match,
)
from jaxprune.train import build_model


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("greedy_cnn")
    return out, EXPERIMENT.run(EXPERIMENT.presets["smoke"], out, False)


def test_smoke_writes_table_results_and_plot(smoke):
    out, results = smoke
    assert get_experiment("greedy_cnn") is EXPERIMENT
    for name in ("table.md", "results.json", "table1.png"):
        assert (out / name).stat().st_size > 0
    settings = EXPERIMENT.presets["smoke"]
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["records"]) == len(settings.seeds) * len(settings.models) * len(settings.sizes)
    for record in saved["records"]:
        assert [p["iteration"] for p in record["points"]] == list(settings.prune_at)
        for point in record["points"]:
            assert 0.0 <= point["pruned_accuracy"] <= 1.0
            assert 0.0 <= point["dense_accuracy"] <= 1.0
            assert 1 <= point["kept"] <= point["groups"]
            # Compaction removed exactly the unselected channels: fewer FLOPs and parameters
            # unless every channel was kept.
            assert 0.0 < point["flops_ratio"] <= 1.0
            assert 0.0 < point["params_ratio"] <= 1.0
            assert (point["flops_ratio"] < 1.0) == (point["kept"] < point["groups"])
        assert record["final_dense_accuracy"] == record["points"][-1]["dense_accuracy"]
    table = (out / "table.md").read_text()
    assert "Table 1" in table and "first matching prune point" in table
    rows = results["rows"]
    assert [(r["model"], r["size"]) for r in rows] == [
        (m, s) for m in settings.models for s in settings.sizes
    ]


def test_rerun_reuses_finished_runs_and_redoes_only_missing_ones(smoke, tmp_path, monkeypatch):
    out, first = smoke
    out = shutil.copytree(out, tmp_path / "out")
    settings = EXPERIMENT.presets["smoke"]
    calls = []
    real = greedy_cnn._run_one

    def run_one(settings, index, seed, size_index, *args):
        calls.append((settings.models[index], seed, settings.sizes[size_index]))
        return real(settings, index, seed, size_index, *args)

    monkeypatch.setattr(greedy_cnn, "_run_one", run_one)
    again = EXPERIMENT.run(settings, out, False)
    assert calls == []
    assert again["records"] == first["records"]  # selection times included: nothing redone

    # An interrupted run: the missing (model, seed, size) is redone, the rest read back.
    (out / "runs" / "resnet34_m200_seed0.json").unlink()
    resumed = EXPERIMENT.run(settings, out, False)
    assert calls == [("resnet34", 0, 200)]
    assert resumed["records"][0] == first["records"][0]
    redone, before = resumed["records"][1], first["records"][1]
    for ours, theirs in zip(redone["points"], before["points"], strict=True):
        assert ours["kept"] == theirs["kept"]  # deterministic selection and training
        assert ours["pruned_accuracy"] == theirs["pruned_accuracy"]

    EXPERIMENT.run(dataclasses.replace(settings, finetune_steps=2), out, False)
    assert len(calls) == 1 + len(settings.sizes)  # other settings: nothing is reused


def test_a_fixed_budget_keeps_the_same_channels_at_every_prune_point(tmp_path):
    settings = dataclasses.replace(
        EXPERIMENT.presets["smoke"], sizes=(100,), finetune_steps=1, keep_fraction=0.5
    )
    result = EXPERIMENT.run(settings, tmp_path, False)
    (record,) = result["records"]
    model = build_model("resnet34", num_outputs=10, input_shape=(8, 8, 1), preset="resnet34-tiny")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    _, layout = model.group_ids(variables["params"])
    budget = sum(
        max(1, round(0.5 * len(layout.groups_in_layer(layer))))
        for layer in range(layout.num_layers)
    )
    assert [p["kept"] for p in record["points"]] == [budget] * len(settings.prune_at)
    assert len({p["flops_ratio"] for p in record["points"]}) == 1  # same architecture each time
    assert record["points"][0]["flops_ratio"] < 1.0
    assert "a fixed 0.5 of every layer's channels kept" in result["table"]


def test_first_match_is_the_first_prune_point_within_tolerance():
    prune_at = (10, 20, 40)
    assert first_match(np.array([0.5, 0.79, 0.9]), 0.8, prune_at, 0.01) == 20
    assert first_match(np.array([0.81, 0.7, 0.9]), 0.8, prune_at, 0.0) == 10
    assert first_match(np.array([0.5, 0.6, 0.7]), 0.8, prune_at, 0.05) is None


def test_paper_presets_validate_without_running():
    paper = EXPERIMENT.presets["paper"]
    assert paper.dataset == "tfds:cifar10" and paper.eps == (0.02, 0.05)
    assert paper.prune_at == (20_000, 40_000, 60_000, 80_000) and paper.finetune_steps == 2_500
    assert IMAGENET_TABLE2.dataset == "tfds:imagenet2012"
    assert IMAGENET_TABLE2.presets == ("mobilenet_v2", "resnet34")


def test_paper_preset_runs_end_to_end_on_mock_cifar10(tmp_path):
    """The paper's configuration, shrunk, through TensorFlow-Datasets' CIFAR-10 loader on
    ``tfds.testing.mock_data`` (random images of CIFAR-10's feature spec): the data path the
    ``paper`` preset takes on an accelerator."""
    tfds = pytest.importorskip("tensorflow_datasets")
    settings = dataclasses.replace(
        EXPERIMENT.presets["paper"],
        models=("resnet34",),
        presets=("resnet34-tiny",),
        eps=(0.05,),
        data_dir=str(tmp_path / "tfds"),
        sizes=(20,),
        prune_at=(2,),
        finetune_steps=1,
        batch_size=8,
        seeds=(0,),
    )
    with tfds.testing.mock_data(num_examples=200, policy=tfds.testing.MockPolicy.USE_CODE):
        result = EXPERIMENT.run(settings, tmp_path / "out", False)
    (record,) = result["records"]
    assert record["size"] == 20 and "Dataset tfds:cifar10" in result["table"]
    (point,) = record["points"]
    assert 1 <= point["kept"] <= point["groups"] and 0.0 < point["flops_ratio"] <= 1.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"presets": ("resnet34-tiny",)}, "presets: expected one entry per model"),
        ({"eps": (-0.1, 0.05)}, "eps"),
        ({"criterion": "median"}, "criterion"),
        ({"sizes": (800, 400)}, "sizes"),
        ({"prune_at": (100, 100)}, "prune_at"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"lr": 0.0}, "lr"),
        ({"max_candidates": 0}, "max_candidates"),
        ({"keep_fraction": 1.0}, "keep_fraction"),
        ({"keep_fraction": 0.0}, "keep_fraction"),
        ({"models": ()}, "models"),
    ],
)
def test_bad_settings_are_refused(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        dataclasses.replace(GreedyCNNSettings(), **change)
