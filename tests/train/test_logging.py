"""Metrics logger: JSONL/CSV files, resume truncation, TensorBoard fallback, tables, plots."""

from __future__ import annotations

import csv
import json
import logging
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.train.logging import (
    MetricsLogger,
    curve_figure,
    plot_curves,
    read_metrics,
    summary_table,
)


def _csv_rows(run_dir) -> tuple[list[str], list[dict]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def test_writes_jsonl_and_csv_with_union_of_columns(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": jnp.float32(2.5), "lr": 0.1})
        logger.log(2, {"loss": np.float64(1.5), "acc": np.int64(3)})
        logger.log(3, {"lr": 0.05, "loss": 1.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 2.5, "lr": 0.1},
        {"step": 2, "loss": 1.5, "acc": 3},
        {"step": 3, "lr": 0.05, "loss": 1.0},
    ]
    columns, rows = _csv_rows(tmp_path)
    assert columns == ["step", "loss", "lr", "acc"]
    assert rows == [
        {"step": "1", "loss": "2.5", "lr": "0.1", "acc": ""},
        {"step": "2", "loss": "1.5", "lr": "", "acc": "3"},
        {"step": "3", "loss": "1.0", "lr": "0.05", "acc": ""},
    ]
    assert isinstance(read_metrics(tmp_path)[1]["acc"], int)


def test_resume_truncates_later_steps_and_appends(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 8):
            logger.log(step, {"loss": 1.0 / step, **({"extra": 1.0} if step == 6 else {})})
    with MetricsLogger(tmp_path, resume_step=4, tensorboard=False) as logger:
        assert [row["step"] for row in logger.rows] == [1, 2, 3, 4]
        with pytest.raises(ValueError, match="step must increase"):
            logger.log(4, {"loss": 0.0})
        logger.log(5, {"loss": 0.5})
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    columns, rows = _csv_rows(tmp_path)
    assert columns == ["step", "loss"]  # the dropped step 6 took its column with it
    assert [row["step"] for row in rows] == ["1", "2", "3", "4", "5"]
    MetricsLogger(tmp_path, tensorboard=False).close()  # a fresh start replaces the log
    assert read_metrics(tmp_path) == []


def test_rejects_bad_values(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    with pytest.raises(TypeError, match="'loss'"):
        logger.log(1, {"loss": np.ones(2)})
    with pytest.raises(TypeError, match="'z'"):
        logger.log(1, {"z": 1j})
    with pytest.raises(TypeError, match="step"):
        logger.log(1.0, {"loss": 1.0})
    with pytest.raises(ValueError, match="resume_step"):
        MetricsLogger(tmp_path, resume_step=-1)


def test_tensorboard_skipped_without_writer(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with caplog.at_level(logging.INFO, logger="jaxprune.train.logging"):
        logger = MetricsLogger(tmp_path)
    assert logger.tensorboard_skipped is not None
    assert "TensorBoard logging skipped" in caplog.text
    logger.log(1, {"loss": 1.0})
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_used_when_importable(tmp_path, monkeypatch):
    written = []

    class FakeWriter:
        def __init__(self, log_dir):
            written.append(("open", log_dir))

        def add_scalar(self, name, value, step):
            written.append((name, value, step))

        def flush(self):
            written.append(("flush",))

        def close(self):
            written.append(("close",))

    monkeypatch.setitem(
        sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=FakeWriter)
    )
    with MetricsLogger(tmp_path) as logger:
        assert logger.tensorboard_skipped is None
        logger.log(3, {"loss": 0.5, "acc": 1})
    assert written == [
        ("open", str(tmp_path / "tensorboard")),
        ("loss", 0.5, 3),
        ("acc", 1, 3),
        ("flush",),
        ("close",),
    ]


def test_summary_table_final_and_best():
    rows = [
        {"step": 1, "loss": 3.0, "acc": 0.2},
        {"step": 2, "loss": 1.0, "acc": 0.9},
        {"step": 3, "loss": float("nan"), "acc": 0.7},
    ]
    table = summary_table(rows, ["loss", "acc"], maximize=["acc"])
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "final", "best", "best", "step"]
    assert lines[1].split() == ["loss", "nan", "1", "2"]
    assert lines[2].split() == ["acc", "0.7", "0.9", "2"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    with pytest.raises(ValueError, match="'missing'"):
        summary_table(rows, ["missing"])


def test_plot_curves_writes_pngs(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(step, {"loss": 1.0 / step, "train/acc": step / 5})
    paths = plot_curves(tmp_path, ["loss", "train/acc"])
    assert [p.name for p in paths] == ["curve_loss.png", "curve_train_acc.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="'nope'"):
        plot_curves(tmp_path, ["nope"])


def _pruned_run(run_dir):
    """A run pruned at step 4 with analysis at steps 0, 4 (before and after the event) and 8."""
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        logger.log(0, {"ntk_condition": 50.0, "hessian_trace": 3.0})
        logger.log(2, {"train_loss": 2.0, "train_accuracy": 0.3})
        logger.log(
            4,
            {
                "ntk_condition_before_event": 80.0,
                "hessian_trace_before_event": 2.0,
                "group_sparsity": 0.5,
                "ntk_condition": 400.0,
                "hessian_trace": 5.0,
                "train_loss": 1.5,
                "train_accuracy": 0.5,
            },
        )
        logger.log(6, {"train_loss": 1.2, "train_accuracy": 0.6})
        logger.log(8, {"ntk_condition": 300.0, "hessian_trace": 4.0, "train_loss": 1.0})
    return read_metrics(run_dir)


def _lines(axes):
    return {line.get_label(): line for line in axes.get_lines()}


def test_curve_figure_labels_axes_and_marks_events_and_before_after_values(tmp_path):
    rows = _pruned_run(tmp_path)
    (axes,) = curve_figure(rows, "ntk_condition").axes
    assert axes.get_title() == "NTK condition number"
    assert axes.get_xlabel() == "step" and "λ_max / λ_min" in axes.get_ylabel()
    lines = _lines(axes)
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert (
        set(legend)
        == set(lines)
        == {"NTK condition number", "before event", "after event", "pruning event"}
    )
    # The curve runs through the value before the event and jumps to the one after it.
    np.testing.assert_array_equal(lines["NTK condition number"].get_xdata(), [0, 4, 4, 8])
    np.testing.assert_array_equal(lines["NTK condition number"].get_ydata(), [50, 80, 400, 300])
    np.testing.assert_array_equal(lines["before event"].get_ydata(), [80])
    np.testing.assert_array_equal(lines["after event"].get_ydata(), [400])
    np.testing.assert_array_equal(lines["pruning event"].get_xdata(), [4, 4])

    (axes,) = curve_figure(rows, "train_loss").axes
    assert axes.get_title() == "Training loss" and "nats" in axes.get_ylabel()
    lines = _lines(axes)
    np.testing.assert_array_equal(lines["Training loss"].get_xdata(), [2, 4, 6, 8])
    np.testing.assert_array_equal(lines["pruning event"].get_xdata(), [4, 4])
    assert axes.get_legend() is not None


def test_curve_figure_names_values_it_cannot_draw(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step, value in enumerate([1.0, float("inf"), 0.5]):
            logger.log(step, {"ntk_condition": value})
    (axes,) = curve_figure(read_metrics(tmp_path), "ntk_condition").axes
    assert "1 non-finite value not drawn" in axes.get_title()
    with pytest.raises(ValueError, match="key: metric 'nope' was never logged in the 3 rows"):
        curve_figure(read_metrics(tmp_path), "nope")


def test_plot_curves_files_are_the_curve_figures(tmp_path):
    _pruned_run(tmp_path)
    paths = plot_curves(tmp_path, ["train_loss", "ntk_condition", "hessian_trace"])
    assert [p.name for p in paths] == [
        "curve_train_loss.png",
        "curve_ntk_condition.png",
        "curve_hessian_trace.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
