"""``run_comparison`` resumes an interrupted comparison: finished runs with the same settings
and source are read back (figures and curves identical), anything else is trained."""

from __future__ import annotations

import json

import optax
import pytest

from jaxprune.data import load_dataset
from jaxprune.experiments import compare
from jaxprune.masks import one_shot
from jaxprune.train import TrainConfig, build_model, criterion_pruner


@pytest.fixture(scope="module")
def setup():
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="16")
    return model, splits


def _compare(setup, out_dir, settings, calls):
    model, splits = setup
    return compare.run_comparison(
        model,
        splits,
        {"dense": lambda: None, "snip": lambda: criterion_pruner("snip", one_shot(2, 0.5))},
        optimizer=lambda: optax.sgd(0.1),
        config=TrainConfig(num_steps=6, batch_size=32, log_every=3, progress=False),
        seeds=(0, 1),
        report_steps=(3, 6),
        out_dir=out_dir,
        progress=False,
        settings=settings,
    )


@pytest.fixture
def counted_train(monkeypatch):
    calls = []
    real = compare.train

    def train(*args, **kwargs):
        calls.append(kwargs["run_dir"].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "train", train)
    return calls


def test_finished_runs_are_reused_only_with_the_same_settings(setup, tmp_path, counted_train):
    settings = {"lr": 0.1, "shape": (16,)}
    first = _compare(setup, tmp_path, settings, counted_train)
    assert sorted(counted_train) == ["dense_seed0", "dense_seed1", "snip_seed0", "snip_seed1"]
    assert (tmp_path / "runs" / "snip_seed1" / "finished.json").exists()

    counted_train.clear()
    again = _compare(setup, tmp_path, settings, counted_train)
    assert counted_train == []
    assert json.dumps(again) == json.dumps(first)  # wall times included: nothing re-measured

    # An interrupted comparison: the run without finished.json is trained, the others reused.
    (tmp_path / "runs" / "snip_seed0" / "finished.json").unlink()
    resumed = _compare(setup, tmp_path, settings, counted_train)
    assert counted_train == ["snip_seed0"]
    for figure in ("train_loss@6", "test_accuracy", "group_sparsity", "parameters"):
        assert resumed[0]["snip"][figure] == first[0]["snip"][figure]  # deterministic training

    counted_train.clear()
    _compare(setup, tmp_path, {**settings, "lr": 0.2}, counted_train)
    assert len(counted_train) == 4


def test_without_settings_every_run_is_trained(setup, tmp_path, counted_train):
    _compare(setup, tmp_path, None, counted_train)
    _compare(setup, tmp_path, None, counted_train)
    assert len(counted_train) == 8
    assert not (tmp_path / "runs" / "dense_seed0" / "finished.json").exists()
