"""Method comparisons in the layout of paper 000's Tables 1-3, shared by the experiments.

:func:`run_comparison` trains one model on one dataset with each method and seed (same
initialization, data order and optimizer per seed) through :func:`jaxprune.train.train`, and
collects per run: the training loss at fixed steps, the final test metrics, wall time, group and
weight sparsity and the parameter count (after compaction).  Given the experiment's settings,
it reuses runs that an earlier, interrupted invocation finished in the same directory with the
same settings and the same jaxprune source, so a long comparison resumes where it stopped.
:func:`comparison_table` prints
means ± standard deviations over seeds, :func:`plot_comparison` draws training curves, the NTK
condition number over training (Figures 3 and 5) and the test metric.

References:
  Paper 000, Section 4 (Tables 1-3), Appendix D (condition number of the empirical NTK).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optax

from jaxprune.data.registry import DataConfig, Splits, load_dataset
from jaxprune.masks import PruningSchedule, iterative_magnitude
from jaxprune.train import Bound, Pruner, TrainConfig, train

__all__ = [
    "comparison_table",
    "load_splits",
    "lth_schedule",
    "plot_comparison",
    "run_comparison",
    "test_metric_name",
    "write_results",
]


def lth_schedule(num_steps: int, ratio: float, rounds: int = 3) -> PruningSchedule:
    """The LTH baseline fitted into a run: ``rounds`` rounds of iterative magnitude pruning to
    ``ratio``, rewinding to ``k = max(1, round(5% of num_steps))``, with the longest round
    length ``L`` such that ``L + rounds (L - k) <= num_steps``.

    Raises:
      ValueError: ``num_steps`` too short for ``rounds`` rounds after the rewind step.

    References:
      Paper 000, Appendix E.3 (LTH: IMP with rewinding to 5% of the maximum epochs);
      Frankle et al. (2020).
    """
    rewind = max(1, round(0.05 * num_steps))
    length = (num_steps + rounds * rewind) // (rounds + 1)
    if length <= rewind:
        raise ValueError(f"num_steps: {num_steps} steps are too few for {rounds} LTH rounds")
    return iterative_magnitude(rounds, length, rewind, final_ratio=ratio)


def load_splits(config: Any) -> Splits:
    """The dataset of an experiment config with fields ``dataset``, ``seq_len``,
    ``vocab_size`` and ``max_chars`` (the text settings are ignored by non-text datasets)."""
    return load_dataset(
        DataConfig(
            name=config.dataset,
            seq_len=config.seq_len,
            vocab_size=config.vocab_size,
            max_chars=config.max_chars,
        )
    )


def test_metric_name(task: str) -> str:
    """The headline test metric of a task: accuracy, perplexity (MLM) or loss (regression)."""
    return {"classification": "test_accuracy", "mlm": "test_perplexity"}.get(task, "test_loss")


@functools.cache
def _source_digest() -> str:
    """SHA-256 of jaxprune's Python source: a finished run is reused only by the same code."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _run_key(settings: Any, name: str, seed: int, config: TrainConfig, steps: Sequence[int]) -> str:
    """Identity of one run of a comparison (everything that determines its figures)."""
    described = {
        "settings": settings,
        "method": name,
        "seed": seed,
        "train": dataclasses.asdict(dataclasses.replace(config, progress=False)),
        "report_steps": list(steps),
        "source": _source_digest(),
    }
    text = json.dumps(described, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _load_finished(path: Path, key: str) -> dict | None:
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved if saved.get("key") == key else None


def _save_finished(path: Path, key: str, figures: dict, rows: list[dict]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"key": key, "figures": figures, "rows": rows}))
    os.replace(temporary, path)


def _loss_at(rows: list[dict], step: int) -> float:
    return next((r["train_loss"] for r in rows if r["step"] == step and "train_loss" in r), np.nan)


def run_comparison(
    model: Bound,
    splits: Splits,
    methods: dict[str, Callable[[], Pruner | None]],
    *,
    optimizer: Callable[[], optax.GradientTransformation],
    config: TrainConfig,
    seeds: Sequence[int],
    report_steps: Sequence[int],
    out_dir: Path,
    progress: bool = True,
    settings: Any = None,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[list[dict]]]]:
    """Train ``model`` with every method and seed.

    With ``settings`` (the experiment's configuration, e.g. ``dataclasses.asdict(config)``),
    each finished run leaves ``finished.json`` in its directory, and a run whose file matches
    ``settings``, method, seed, ``config``, ``report_steps`` and the jaxprune source is read back
    instead of trained again (a line says so when ``progress``): re-running an interrupted
    experiment into the same ``out_dir`` resumes it.  Delete ``out_dir`` to retrain.

    Args:
      model, splits: what is trained.
      methods: name -> factory of a fresh pruner (``None``: dense training).
      optimizer: factory of the optimizer.
      config: training settings (``seed`` is replaced per run; ``compact`` applies to pruned
        runs only).
      seeds: one run per seed and method.
      report_steps: steps whose (windowed) training loss is reported; they should be multiples
        of ``config.log_every``.
      out_dir: each run writes to ``out_dir/runs/<method>_seed<seed>``.
      progress: print one line per run and show progress bars.
      settings: JSON-serializable settings that, with the arguments above, determine the runs
        (``None``: nothing is reused); values JSON cannot hold are compared by ``repr``.

    Returns:
      ``(results, curves)``: ``results[method][figure]`` lists one value per seed (figures:
      ``train_loss@<step>``, the test metrics, ``wall_seconds``, ``event_seconds``,
      ``group_sparsity``, ``weight_sparsity``, ``parameters``); ``curves[method]`` the logged
      rows of every seed.
    """
    results: dict[str, dict[str, list[float]]] = {}
    curves: dict[str, list[list[dict]]] = {}
    for name, make_pruner in methods.items():
        for seed in seeds:
            pruner = make_pruner()
            run_config = dataclasses.replace(
                config, seed=seed, progress=progress, compact=config.compact and pruner is not None
            )
            run_dir = Path(out_dir) / "runs" / f"{name}_seed{seed}"
            finished = run_dir / "finished.json"
            key = None if settings is None else _run_key(settings, name, seed, config, report_steps)
            saved = None if key is None else _load_finished(finished, key)
            if progress:
                print(
                    f"{name}, seed {seed}" + (" (finished earlier: reused)" if saved else ""),
                    flush=True,
                )
            if saved is None:
                figures, rows = _train_one(
                    model, splits, optimizer(), run_config, pruner, run_dir, report_steps
                )
                if key is not None:
                    _save_finished(finished, key, figures, rows)
            else:
                figures, rows = saved["figures"], saved["rows"]
            for figure, value in figures.items():
                results.setdefault(name, {}).setdefault(figure, []).append(float(value))
            curves.setdefault(name, []).append(rows)
    return results, curves


def _train_one(
    model: Bound,
    splits: Splits,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    pruner: Pruner | None,
    run_dir: Path,
    report_steps: Sequence[int],
) -> tuple[dict[str, float], list[dict]]:
    """One run from scratch: its figures (see :func:`run_comparison`) and logged rows."""
    result = train(model, splits, optimizer, config, pruner=pruner, run_dir=run_dir, resume=False)
    figures = {f"train_loss@{s}": _loss_at(result.rows, s) for s in report_steps}
    keys = ("wall_seconds", "event_seconds", "group_sparsity", "weight_sparsity", "parameters")
    figures.update({k: result.summary[k] for k in keys})
    figures.update({k: v for k, v in result.summary.items() if k.startswith("test_")})
    return {k: float(v) for k, v in figures.items()}, result.rows


def _cell(values: list[float], digits: int) -> str:
    values = np.asarray(values, float)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def comparison_table(
    results: dict[str, dict[str, list[float]]],
    report_steps: Sequence[int],
    metric: str,
    *,
    baseline: str | None = "dense",
) -> str:
    """Markdown table, one row per method: training loss at ``report_steps``, ``metric``, its
    difference to ``baseline`` (when present), wall time, groups pruned and parameters; cells
    are mean ± sample standard deviation over seeds."""
    label = metric.removeprefix("test_")
    header = ["method", *(f"train loss @{s}" for s in report_steps), f"test {label}"]
    has_baseline = baseline is not None and baseline in results
    if has_baseline:
        header.append(f"Δ {label}")
    header += ["wall s", "groups pruned", "params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, figures in results.items():
        cells = [method, *(_cell(figures[f"train_loss@{s}"], 3) for s in report_steps)]
        cells.append(_cell(figures[metric], 4))
        if has_baseline:
            delta = np.mean(figures[metric]) - np.mean(results[baseline][metric])
            cells.append(f"{delta:+.4f}")
        cells += [
            _cell(figures["wall_seconds"], 1),
            f"{np.mean(figures['group_sparsity']):.0%}",
            f"{int(np.mean(figures['parameters'])):,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(
    curves: dict[str, list[list[dict]]],
    results: dict[str, dict[str, list[float]]],
    metric: str,
    path: Path,
) -> None:
    """Training loss and NTK condition number over training (first seed) and the test metric
    per method (mean, error bar = std over seeds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    panels = [("train_loss", "training loss"), ("ntk_condition", "NTK λmax/λmin")]
    for ax, (key, label) in zip(axes, panels):
        for method, runs in curves.items():
            points = [(r["step"], r[key]) for r in runs[0] if key in r and np.isfinite(r[key])]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=method, marker=None if key == "train_loss" else ".")
        ax.set(xlabel="step", ylabel=label, yscale="log")
    axes[0].legend(fontsize=8)
    names = list(results)
    means = [np.mean(results[m][metric]) for m in names]
    errors = [np.std(results[m][metric]) for m in names]
    axes[2].bar(names, means, yerr=errors, color="tab:blue")
    axes[2].set(ylabel=metric.replace("_", " "))
    axes[2].tick_params(axis="x", rotation=45)
    if metric == "test_accuracy":
        axes[2].set_ylim(max(0.0, min(means) - 0.1), 1.0)
    figure.savefig(path, dpi=120)


def write_results(out_dir: Path, config: dict, results: dict, table: str) -> None:
    """``table.md`` and ``results.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(
        json.dumps({"config": config, "results": results}, indent=1, default=str)
    )
