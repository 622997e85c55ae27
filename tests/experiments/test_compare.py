"""``run_comparison`` resumes an interrupted comparison: finished runs with the same settings
and source are read back (figures and curves identical), anything else is trained."""

from __future__ import annotations

import json

import numpy as np
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


def _run_rows(scale, event_step=None):
    """Rows of a classification run as the engine logs them: loss and accuracy every 2 steps,
    analysis every 10 steps, and at ``event_step`` the group sparsity and the analysis before
    and after the event."""
    rows = []
    for step in range(0, 21, 2):
        row = {"step": step}
        if step:
            row.update(train_loss=scale / step, train_accuracy=1.0 - 0.5 / step)
        if step == event_step:
            row.update(
                group_sparsity=0.5, ntk_condition_before_event=90.0, hessian_trace_before_event=9.0
            )
        if step % 10 == 0 or step == event_step:
            row.update(ntk_condition=10.0 * scale + step, hessian_trace=scale + step)
        rows.append(row)
    return rows


def test_plot_comparison_labels_every_panel_and_marks_the_pruning_events(tmp_path):
    curves = {"dense": [_run_rows(1.0)], "snip": [_run_rows(2.0, event_step=6)]}
    results = {"dense": {"test_accuracy": [0.95, 0.97]}, "snip": {"test_accuracy": [0.90, 0.92]}}
    path = tmp_path / "demo.png"
    figure = compare.plot_comparison(curves, results, "test_accuracy", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = {axes.get_title(): axes for axes in figure.axes}
    assert set(panels) == {
        "Training loss (first seed)",
        "NTK condition number (first seed)",
        "Hessian trace (first seed)",
        "Test accuracy",
    }
    for axes in figure.axes:
        assert axes.get_xlabel() and axes.get_ylabel() and axes.get_legend() is not None
    legends = {
        title: [t.get_text() for t in axes.get_legend().get_texts()]
        for title, axes in panels.items()
    }
    assert legends["Training loss (first seed)"] == ["dense", "snip", "pruning event"]
    marks = ["dense", "snip", "before event", "after event", "pruning event"]
    assert legends["NTK condition number (first seed)"] == marks
    assert legends["Hessian trace (first seed)"] == marks
    assert legends["Test accuracy"] == ["mean ± sd over 2 seeds"]
    loss = panels["Training loss (first seed)"]
    assert "nats" in loss.get_ylabel()
    lines = {line.get_label(): line for line in loss.get_lines()}
    np.testing.assert_array_equal(lines["snip"].get_xdata(), range(2, 21, 2))  # every logged step
    events = [line for line in loss.get_lines() if line.get_label() == "_pruning event"]
    assert [list(line.get_xdata()) for line in events] == [[6, 6]]
    condition = {
        line.get_label(): line for line in panels["NTK condition number (first seed)"].get_lines()
    }
    np.testing.assert_array_equal(condition["snip"].get_xdata(), [0, 6, 6, 10, 20])
    np.testing.assert_array_equal(condition["snip"].get_ydata(), [20, 90, 26, 30, 40])
    np.testing.assert_array_equal(condition["_before event"].get_ydata(), [90])
    np.testing.assert_array_equal(condition["_after event"].get_ydata(), [26])
    accuracy = panels["Test accuracy"]
    low, high = accuracy.get_ylim()
    assert 0.85 < low < 0.9 - 0.01 and 0.97 + 0.01 < high <= 1.0  # fitted to mean ± sd


def test_plot_comparison_without_analysis_draws_loss_and_metric_only(tmp_path):
    rows = [{k: v for k, v in r.items() if k in ("step", "train_loss")} for r in _run_rows(1.0)]
    figure = compare.plot_comparison(
        {"dense": [rows]}, {"dense": {"test_loss": [0.5]}}, "test_loss", tmp_path / "p.png"
    )
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["Training loss (first seed)", "Test loss"]
    assert "squared error" in figure.axes[0].get_ylabel()


def test_curves_are_logged_ten_points_per_report_window_and_the_table_averages_the_window():
    from jaxprune.experiments.compare import _loss_at, curve_interval

    assert [curve_interval(w) for w in (100, 22, 40, 5, 2, 1)] == [10, 2, 4, 1, 1, 1]
    with pytest.raises(ValueError, match="window"):
        curve_interval(0)
    rows = [{"step": s, "train_loss": float(s)} for s in range(10, 101, 10)]
    rows.insert(3, {"step": 35, "test_loss": 9.0})  # rows without a training loss are skipped
    assert _loss_at(rows, 100, 100) == pytest.approx(np.mean(range(10, 101, 10)))
    assert _loss_at(rows, 50, 20) == pytest.approx(45.0)  # steps 40 and 50
    assert np.isnan(_loss_at(rows, 5, 5))
