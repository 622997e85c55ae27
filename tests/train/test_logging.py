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

from jaxprune.train.logging import MetricsLogger, plot_curves, read_metrics, summary_table


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
