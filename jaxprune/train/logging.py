"""Per-step metrics logging: JSON Lines and CSV files, optional TensorBoard, tables and plots.

:class:`MetricsLogger` appends one row per logged step to ``<run_dir>/metrics.jsonl`` (the source
of truth, one JSON object per line, ``step`` first) and mirrors it to ``<run_dir>/metrics.csv``
whose columns are ``step`` followed by the union of the metric names seen, in first-seen order
(a new metric rewrites the CSV with the wider header; missing cells are empty).  Resuming from
step ``s`` (``MetricsLogger(run_dir, resume_step=s)``) keeps the rows with ``step <= s`` and
drops the later ones, which the resumed run logs again, so no step is duplicated.

TensorBoard scalars are written to ``<run_dir>/tensorboard`` when ``tensorboardX`` or TensorFlow
is importable; otherwise this is skipped with a WARNING line on this module's logger and the
reason is kept in :attr:`MetricsLogger.tensorboard_skipped`.  Non-finite values are written as
``NaN``/``Infinity`` (Python's JSON dialect), which :func:`read_metrics` reads back.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune._validation import check_int

__all__ = [
    "METRIC_LABELS",
    "MetricsLogger",
    "curve_figure",
    "draw_curve",
    "draw_events",
    "event_steps",
    "loss_unit",
    "metric_label",
    "plot_curves",
    "read_metrics",
    "skipped_note",
    "summary_table",
    "y_scale",
]

_log = logging.getLogger(__name__)

JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"
Row = dict[str, Any]


def _scalar(name: str, value: Any) -> int | float:
    """A metric value as a Python ``int`` or ``float`` (0-d arrays and NumPy scalars accepted)."""
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "biuf":
        raise TypeError(f"metric {name!r} must be a real scalar, got {value!r}")
    return float(array) if array.dtype.kind == "f" else int(array)


def read_metrics(run_dir: str | os.PathLike) -> list[Row]:
    """The rows of ``<run_dir>/metrics.jsonl`` in order (``[]`` if the file does not exist)."""
    path = Path(run_dir) / JSONL_NAME
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not a JSON object ({err})") from err
    return rows


def _columns(rows: Iterable[Row]) -> list[str]:
    columns = {"step": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def _csv_text(rows: Sequence[Row], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _replace_text(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (temporary file and ``os.replace``)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _open_tensorboard(log_dir: Path) -> tuple[Any, str | None]:
    """``((add_scalar(name, value, step), flush(), close()), None)``, or ``(None, reason)``."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        pass
    else:
        writer = SummaryWriter(str(log_dir))
        return (writer.add_scalar, writer.flush, writer.close), None
    try:
        import tensorflow as tf
    except ImportError:
        return None, "neither tensorboardX nor tensorflow is importable"
    writer = tf.summary.create_file_writer(str(log_dir))

    def add_scalar(name: str, value: float, step: int) -> None:
        with writer.as_default():
            tf.summary.scalar(name, value, step=step)

    return (add_scalar, writer.flush, writer.close), None


class MetricsLogger:
    """Writes metric rows to ``metrics.jsonl``/``metrics.csv`` (and TensorBoard) in ``run_dir``.

    Args:
      run_dir: run directory (created if missing).
      resume_step: ``None`` starts a fresh log (existing metric files are replaced); an int
        keeps the existing rows with ``step <= resume_step`` and drops the later ones.
      tensorboard: also write TensorBoard scalars if a writer is importable.

    Steps must increase strictly.  Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        resume_step: int | None = None,
        tensorboard: bool = True,
    ) -> None:
        if resume_step is not None:
            check_int(resume_step, "resume_step", minimum=0)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / JSONL_NAME
        self.csv_path = self.run_dir / CSV_NAME
        kept = [] if resume_step is None else self._kept_rows(resume_step)
        self.rows: list[Row] = kept
        self.columns = _columns(kept)
        _replace_text(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in kept))
        _replace_text(self.csv_path, _csv_text(kept, self.columns))
        self._tensorboard = None
        self.tensorboard_skipped: str | None = "disabled" if not tensorboard else None
        if tensorboard:
            self._tensorboard, self.tensorboard_skipped = _open_tensorboard(
                self.run_dir / "tensorboard"
            )
            if self.tensorboard_skipped is not None:
                _log.warning(
                    "TensorBoard logging skipped: %s (pip install 'jaxprune[tensorboard]')",
                    self.tensorboard_skipped,
                )

    def _kept_rows(self, resume_step: int) -> list[Row]:
        return [row for row in read_metrics(self.run_dir) if row["step"] <= resume_step]

    def log(self, step: int, metrics: Mapping[str, Any]) -> Row:
        """Append the row ``{"step": step, **metrics}``; values are real scalars (0-d arrays ok).

        Returns the row as written."""
        check_int(step, "step")
        if self.rows and step <= self.rows[-1]["step"]:
            raise ValueError(
                f"step must increase: got step={step} after step={self.rows[-1]['step']}"
            )
        if "step" in metrics:
            raise ValueError(f"metrics must not contain the key 'step', got keys {list(metrics)}")
        row = {"step": int(step), **{str(k): _scalar(str(k), v) for k, v in metrics.items()}}
        self.rows.append(row)
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        new_columns = [key for key in row if key not in self.columns]
        if new_columns:
            self.columns += new_columns
            _replace_text(self.csv_path, _csv_text(self.rows, self.columns))
        else:
            with self.csv_path.open("a", newline="") as f:
                f.write(_csv_text([row], self.columns).split("\n", 1)[1])
        if self._tensorboard is not None:
            add_scalar = self._tensorboard[0]
            for key, value in row.items():
                if key != "step":
                    add_scalar(key, value, row["step"])
        return row

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the metric files are always complete)."""
        if self._tensorboard is not None:
            _, flush, close = self._tensorboard
            flush()
            close()
            self._tensorboard = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def summary_table(
    metrics_rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    maximize: Iterable[str] = (),
) -> str:
    """An aligned text table of each metric's final value, best value and step of the best.

    Args:
      metrics_rows: rows as logged (``{"step": int, name: value, ...}``), in step order.
      keys: metric names to show, one table line each.
      maximize: names for which larger is better (accuracy); for the others smaller is better.

    Returns:
      The table, lines ``metric  final  best  best step`` separated by newlines; NaN values are
      never "best", and a metric never logged is an error.
    """
    maximize = set(maximize)
    header = ("metric", "final", "best", "best step")
    lines = [header]
    for key in keys:
        seen = [(row["step"], row[key]) for row in metrics_rows if key in row]
        if not seen:
            raise ValueError(f"keys: metric {key!r} is in none of the {len(metrics_rows)} rows")
        finite = [(step, value) for step, value in seen if not math.isnan(value)]
        best = None
        if finite:
            pick = max if key in maximize else min
            best = pick(finite, key=lambda item: item[1])
        lines.append(
            (key, _format(seen[-1][1]), *(("-", "-") if best is None else map(_format, best[::-1])))
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        )
        for line in lines
    )


def _file_stem(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


#: Metric key -> ``(title, axis label)`` of the plots; ``{loss}`` stands for the unit of the
#: loss (:func:`loss_unit`).
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "train_loss": ("Training loss", "training loss ({loss})"),
    "test_loss": ("Test loss", "test loss ({loss})"),
    "train_accuracy": ("Training accuracy", "training accuracy (fraction correct)"),
    "test_accuracy": ("Test accuracy", "test accuracy (fraction correct)"),
    "train_perplexity": ("Training perplexity", "training perplexity (exp of the loss in nats)"),
    "test_perplexity": ("Test perplexity", "test perplexity (exp of the loss in nats)"),
    "ntk_condition": ("NTK condition number", "NTK λ_max / λ_min (ratio)"),
    "ntk_lambda_max": ("Largest NTK eigenvalue", "NTK λ_max"),
    "ntk_lambda_min": ("Smallest NTK eigenvalue", "NTK λ_min"),
    "hessian_trace": ("Hessian trace", "tr ∇²(loss), Hutchinson estimate"),
    "weight_sparsity": ("Weight sparsity", "weights exactly zero (fraction)"),
    "group_sparsity": ("Group sparsity", "groups pruned (fraction)"),
}

#: The x-axis label of every training curve.
STEP_LABEL = "step"

#: The key the engine logs at every pruning event (:mod:`jaxprune.train.engine`).
EVENT_KEY = "group_sparsity"


def loss_unit(rows: Iterable[Mapping[str, Any]]) -> str:
    """The unit of the logged loss: cross-entropy in nats where an accuracy or perplexity is
    logged too (classification, masked language modelling), else ½ squared error
    (regression, :mod:`jaxprune.train.tasks`)."""
    keys = {key for row in rows for key in row}
    if any(key.endswith(("accuracy", "perplexity")) for key in keys):
        return "cross-entropy, nats"
    return "½ squared error"


def metric_label(key: str, loss: str = "cross-entropy, nats") -> tuple[str, str]:
    """``(title, axis label)`` of metric ``key`` from :data:`METRIC_LABELS` with the loss's
    unit ``loss``; a key not there is shown with spaces for underscores."""
    title, label = METRIC_LABELS.get(key, (key.replace("_", " "), key.replace("_", " ")))
    return title, label.format(loss=loss)


def event_steps(rows: Iterable[Mapping[str, Any]]) -> list[int]:
    """The steps of a run's pruning events: its rows with :data:`EVENT_KEY`."""
    return [row["step"] for row in rows if EVENT_KEY in row]


def draw_curve(
    axes: Any,
    rows: Sequence[Mapping[str, Any]],
    key: str,
    *,
    label: str,
    color: Any = None,
    label_markers: bool = True,
) -> tuple[list[float], int]:
    """Draw metric ``key`` of ``rows`` against the step on Matplotlib ``axes``.

    At a step with ``<key>_before_event`` too (the engine's analysis before a pruning event;
    ``key`` at that step is after it) the line runs through the value before, then the one
    after, and marks them ``×`` and ``○``, labelled "before event" / "after event" when
    ``label_markers`` (else hidden from the legend).

    Returns:
      ``(values, skipped)``: the finite values drawn and the number of non-finite ones that
      could not be.
    """
    before_key = f"{key}_before_event"
    points, before, after = [], [], []
    for row in rows:
        if before_key in row:
            before.append((row["step"], row[before_key]))
            points.append(before[-1])
            if key in row:
                after.append((row["step"], row[key]))
        if key in row:
            points.append((row["step"], row[key]))
    finite = [(step, value) for step, value in points if math.isfinite(value)]
    if finite:
        steps, values = zip(*finite)
        (line,) = axes.plot(
            steps, values, color=color, marker="." if len(finite) < 50 else None, label=label
        )
        color = line.get_color()
    prefix = "" if label_markers else "_"
    for marks, marker, name in ((before, "x", "before event"), (after, "o", "after event")):
        marks = [(step, value) for step, value in marks if math.isfinite(value)]
        if marks:
            axes.plot(
                *zip(*marks),
                ls="none",
                marker=marker,
                ms=7,
                mfc="none",
                color=color,
                label=prefix + name,
            )
    return [value for _, value in finite], len(points) - len(finite)


def draw_events(axes: Any, steps: Sequence[int], *, color: Any = "0.4", label: bool = True) -> None:
    """Vertical dotted lines at the pruning ``steps``, the first labelled "pruning event" when
    ``label``."""
    for i, step in enumerate(steps):
        name = "pruning event" if label and i == 0 else "_pruning event"
        axes.axvline(step, color=color, ls=":", lw=1.2, label=name)


def y_scale(values: Sequence[float]) -> str:
    """``"log"`` for positive values spread over more than a factor of 20, else ``"linear"``."""
    values = [v for v in values if math.isfinite(v)]
    if values and min(values) > 0 and max(values) > 20 * min(values):
        return "log"
    return "linear"


def skipped_note(skipped: int) -> str:
    """The title's second line naming ``skipped`` non-finite values (``""`` when none)."""
    if not skipped:
        return ""
    return f"\n({skipped} non-finite value{'s' if skipped > 1 else ''} not drawn)"


def curve_figure(rows: Sequence[Mapping[str, Any]], key: str) -> Any:
    """The training curve of metric ``key`` in logged ``rows`` (a Matplotlib ``Figure`` on the
    Agg canvas): every logged value against the step (:func:`draw_curve`, with the values
    before and after each pruning event where they were logged), dotted lines at the pruning
    events, a human title and axis labels with units (:func:`metric_label`), a legend.  A metric
    that was never logged is an error."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any(key in row or f"{key}_before_event" in row for row in rows):
        raise ValueError(f"key: metric {key!r} was never logged in the {len(rows)} rows")
    title, label = metric_label(key, loss_unit(rows))
    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values, skipped = draw_curve(axes, rows, key, label=title)
    draw_events(axes, event_steps(rows))
    axes.set(xlabel=STEP_LABEL, ylabel=label, title=title + skipped_note(skipped))
    axes.set_yscale(y_scale(values))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def plot_curves(run_dir: str | os.PathLike, keys: Sequence[str]) -> list[Path]:
    """Save one PNG training curve per metric, ``<run_dir>/curve_<key>.png``
    (:func:`curve_figure` of the run's ``metrics.jsonl``).

    Uses Matplotlib's Agg canvas directly (no pyplot, no global backend change).  Returns the
    paths in the order of ``keys``; a metric that was never logged is an error."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    paths = []
    for key in keys:
        if not any(key in row for row in rows):
            raise ValueError(f"keys: metric {key!r} was never logged in {run_dir / JSONL_NAME}")
        path = run_dir / f"curve_{_file_stem(key)}.png"
        curve_figure(rows, key).savefig(path, dpi=100)
        paths.append(path)
    return paths
