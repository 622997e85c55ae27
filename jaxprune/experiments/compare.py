"""Method comparisons in the layout of Chen et al. (2023)'s Tables 1-3, shared by the experiments.

:func:`run_method_comparison` is an experiment's whole comparison: the data and model of its
settings (:class:`~jaxprune.experiments.settings.ComparisonSettings`), every method and seed
trained, the table, ``results.json`` and the plot; :func:`compare_methods` is its training part
alone, and :func:`pruner_factories` builds the methods through the pruner registry.

:func:`run_comparison` trains one model on one dataset with each method and seed (same
initialization, data order and optimizer per seed) through :func:`jaxprune.train.train`, and
collects per run: the training loss at fixed steps, the final test metrics, wall time, group and
weight sparsity and the parameter count (after compaction).  Given the experiment's settings,
it reuses runs that an earlier, interrupted invocation finished in the same directory with the
same settings and the same jaxprune source, so a long comparison resumes where it stopped.
:func:`comparison_table` prints
means ± standard deviations over seeds, :func:`plot_comparison` draws the training loss, the NTK
condition number and the Hessian trace over training (Figures 3 and 5; before and after every
pruning event, which are marked) and the test metric.

References:
  Chen et al. (2023), Sec. 4 (Tables 1-3), App. D (condition number of the empirical NTK).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optax

from jaxprune._validation import check_positive_int
from jaxprune.compile_cache import release_compiled_programs
from jaxprune.data.registry import DataConfig, Splits, load_dataset
from jaxprune.experiments.finished_runs import load_finished, run_key, save_finished
from jaxprune.experiments.settings import ComparisonSettings
from jaxprune.masks import PruningSchedule
from jaxprune.masks import lth_schedule as _lth_schedule
from jaxprune.train import Bound, Pruner, TrainConfig, build_model, make_pruner, train
from jaxprune.train.logging import (
    STEP_LABEL,
    draw_curve,
    draw_events,
    event_steps,
    loss_unit,
    metric_label,
    skipped_note,
    y_scale,
)

__all__ = [
    "DENSE",
    "Comparison",
    "MethodFactory",
    "compare_methods",
    "comparison_table",
    "draw_curve_panel",
    "load_splits",
    "lth_schedule",
    "mean_std",
    "paired_table",
    "plot_comparison",
    "pruner_factories",
    "run_comparison",
    "run_method_comparison",
    "test_metric_name",
    "write_results",
]

#: The method name of training without pruning.
DENSE = "dense"

#: ``factory() -> Pruner | None``: a fresh pruner per run (``None``: dense training).
MethodFactory = Callable[[], Pruner | None]

#: Settings fields that :func:`load_splits` passes to :class:`~jaxprune.data.DataConfig`.
_DATA_FIELDS = ("seq_len", "vocab_size", "max_chars")


def lth_schedule(num_steps: int, ratio: float, rounds: int = 3) -> PruningSchedule:
    """Deprecated: use :func:`jaxprune.masks.lth_schedule` (``rounds`` keyword-only)."""
    warnings.warn(
        "jaxprune.experiments.compare.lth_schedule is deprecated; use jaxprune.masks.lth_schedule",
        DeprecationWarning,
        stacklevel=2,
    )
    return _lth_schedule(num_steps, ratio, rounds=rounds)


def load_splits(config: Any) -> Splits:
    """The dataset of an experiment's settings: ``config.dataset``, and its ``seq_len``,
    ``vocab_size`` and ``max_chars`` where it has them (text datasets use them)."""
    text = {name: getattr(config, name) for name in _DATA_FIELDS if hasattr(config, name)}
    return load_dataset(DataConfig(name=config.dataset, **text))


def test_metric_name(task: str) -> str:
    """The headline test metric of a task: accuracy, perplexity (MLM) or loss (regression)."""
    return {"classification": "test_accuracy", "mlm": "test_perplexity"}.get(task, "test_loss")


def _run_key(
    settings: Any, name: str, seed: int, config: TrainConfig, steps: Sequence[int], window: int
) -> str:
    """Identity of one run of a comparison (everything that determines its figures)."""
    return run_key(
        {
            "settings": settings,
            "method": name,
            "seed": seed,
            "train": dataclasses.asdict(dataclasses.replace(config, progress=False)),
            "report_steps": list(steps),
            "report_window": window,
        }
    )


def _loss_at(rows: list[dict], step: int, window: int) -> float:
    """Mean of the logged training losses of the ``window`` steps up to ``step`` (the rows of
    steps in ``(step - window, step]``; each row is the mean over its logging interval)."""
    losses = [
        r["train_loss"] for r in rows if step - window < r["step"] <= step and "train_loss" in r
    ]
    return float(np.mean(losses)) if losses else np.nan


def curve_interval(window: int, points: int = 10) -> int:
    """The logging interval that draws ``points`` points per report ``window`` (or one per
    step when the window is shorter): the largest divisor ``d`` of ``window`` with
    ``window // d >= min(points, window)``."""
    check_positive_int(window, "window")
    need = min(points, window)
    return max(d for d in range(1, window + 1) if window % d == 0 and window // d >= need)


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
    report_window: int | None = None,
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
      optimizer: factory of the optimizer, called once: optax transformations are pure, so
        every run uses the same object, and runs of equal shapes reuse one compiled step
        (:mod:`jaxprune.train.programs`).
      config: training settings (``seed`` is replaced per run; ``compact`` applies to pruned
        runs only).
      seeds: one run per seed and method.
      report_steps: steps whose (windowed) training loss is reported; they should be multiples
        of ``report_window``.
      out_dir: each run writes to ``out_dir/runs/<method>_seed<seed>``.
      progress: print one line per run and show progress bars.
      settings: JSON-serializable settings that, with the arguments above, determine the runs
        (``None``: nothing is reused); values JSON cannot hold are compared by ``repr``.
      report_window: the steps a reported training loss averages over, a multiple of
        ``config.log_every`` (``None``: ``config.log_every``, one logged row).

    Returns:
      ``(results, curves)``: ``results[method][figure]`` lists one value per seed (figures:
      ``train_loss@<step>``, the test metrics, ``wall_seconds``, ``event_seconds``,
      ``group_sparsity``, ``weight_sparsity``, ``parameters``); ``curves[method]`` the logged
      rows of every seed.
    """
    window = config.log_every if report_window is None else report_window
    if window % config.log_every:
        raise ValueError(
            f"report_window: expected a multiple of log_every={config.log_every}, got {window}"
        )
    results: dict[str, dict[str, list[float]]] = {}
    curves: dict[str, list[list[dict]]] = {}
    shared_optimizer = optimizer()  # pure: one object lets runs share compiled steps
    for name, new_pruner in methods.items():
        for seed in seeds:
            pruner = new_pruner()
            run_config = dataclasses.replace(
                config, seed=seed, progress=progress, compact=config.compact and pruner is not None
            )
            run_dir = Path(out_dir) / "runs" / f"{name}_seed{seed}"
            finished = run_dir / "finished.json"
            key = None
            if settings is not None:
                key = _run_key(settings, name, seed, config, report_steps, window)
            saved = None if key is None else load_finished(finished, key)
            if progress:
                print(
                    f"{name}, seed {seed}" + (" (finished earlier: reused)" if saved else ""),
                    flush=True,
                )
            if saved is None:
                figures, rows = _train_one(
                    model,
                    splits,
                    shared_optimizer,
                    run_config,
                    pruner,
                    run_dir,
                    report_steps,
                    window,
                )
                if key is not None:
                    save_finished(finished, key, {"figures": figures, "rows": rows})
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
    window: int,
) -> tuple[dict[str, float], list[dict]]:
    """One run from scratch: its figures (see :func:`run_comparison`) and logged rows."""
    result = train(model, splits, optimizer, config, pruner=pruner, run_dir=run_dir, resume=False)
    release_compiled_programs()  # many runs in one process: stay clear of vm.max_map_count
    figures = {f"train_loss@{s}": _loss_at(result.rows, s, window) for s in report_steps}
    keys = ("wall_seconds", "event_seconds", "group_sparsity", "weight_sparsity", "parameters")
    figures.update({k: result.summary[k] for k in keys})
    figures.update({k: v for k, v in result.summary.items() if k.startswith("test_")})
    return {k: float(v) for k, v in figures.items()}, result.rows


def mean_std(values: Sequence[float], digits: int, *, scale: float = 1.0) -> str:
    """A table cell: ``scale * values`` as ``mean ± sample std`` (one value: the value)."""
    values = scale * np.asarray(values, float)
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
        cells = [method, *(mean_std(figures[f"train_loss@{s}"], 3) for s in report_steps)]
        cells.append(mean_std(figures[metric], 4))
        if has_baseline:
            delta = np.mean(figures[metric]) - np.mean(results[baseline][metric])
            cells.append(f"{delta:+.4f}")
        cells += [
            mean_std(figures["wall_seconds"], 1),
            f"{np.mean(figures['group_sparsity']):.0%}",
            f"{int(np.mean(figures['parameters'])):,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _higher_is_better(metric: str) -> bool:
    return metric.endswith("accuracy")


def paired_table(
    results: dict[str, dict[str, list[float]]],
    metric: str,
    method: str,
    *,
    exclude: Sequence[str] = (DENSE,),
    seeds: Sequence[int] | None = None,
) -> str:
    """Markdown table of ``method`` against every other method, paired by seed.

    Seed ``i`` of every method shares its initialization and data order, so the differences
    ``method[i] - other[i]`` remove the seed's own luck.  One row per other method (not in
    ``exclude``): the paired difference of ``metric`` (mean ± sample sd over seeds) and the
    wins / ties / losses of ``method`` (a win is a better metric on that seed: higher accuracy,
    lower perplexity or loss).  The best baseline (best mean among the rows) is marked.

    Args:
      results: ``results[method][figure]``, one value per seed in the same seed order.
      metric: the figure compared (e.g. ``"test_accuracy"``).
      method: the method in focus (e.g. ``"pl"``).
      exclude: methods left out of the rows (default: dense training).
      seeds: the seeds, for the header line.

    Returns:
      The table with a header line, or ``""`` when there is nothing to compare.
    """
    others = [m for m in results if m != method and m not in exclude]
    if method not in results or not others:
        return ""
    sign = 1.0 if _higher_is_better(metric) else -1.0
    mine = np.asarray(results[method][metric], float)
    best = max(others, key=lambda m: sign * np.mean(results[m][metric]))
    label = metric.removeprefix("test_")
    lines = [
        f"Paired by seed ({len(mine)} seeds"
        + (f": {', '.join(map(str, seeds))}" if seeds is not None else "")
        + f"): {method} − method, test {label}; wins / ties / losses of {method}.",
        "",
        f"| against | {method} − method | wins / ties / losses |",
        "|---|---|---|",
    ]
    for other in others:
        theirs = np.asarray(results[other][metric], float)
        difference = mine - theirs
        wins = int(np.sum(sign * difference > 0))
        ties = int(np.sum(difference == 0))
        spread = f" ± {difference.std(ddof=1):.4f}" if len(difference) > 1 else ""
        name = f"{other} (best baseline)" if other == best else other
        cells = [
            name,
            f"{difference.mean():+.4f}{spread}",
            f"{wins} / {ties} / {len(mine) - wins - ties}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_comparison(
    curves: dict[str, list[list[dict]]],
    results: dict[str, dict[str, list[float]]],
    metric: str,
    path: Path,
) -> Any:
    """Save the comparison figure to ``path`` and return it (a Matplotlib ``Figure``).

    Panels, one colour per method: the training loss at every logged step, and where any run
    logged them the NTK condition number and the Hessian trace over training (first seed;
    the values before and after each pruning event marked, :func:`jaxprune.train.logging.draw_curve`),
    with dotted lines at every method's pruning events; then the test ``metric`` per method
    (mean ± sample standard deviation over seeds, its axis fitted to them).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first_runs = {method: runs[0] for method, runs in curves.items()}
    keys = ["train_loss"] + [
        key
        for key in ("ntk_condition", "hessian_trace")
        if any(key in row for rows in first_runs.values() for row in rows)
    ]
    grid = (2, 2) if len(keys) == 3 else (1, len(keys) + 1)
    figure = Figure(figsize=(5.5 * grid[1], 4.2 * grid[0]), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(*grid, squeeze=False).ravel()
    palette = colormaps["tab10" if len(results) <= 10 else "tab20"]
    colors = {method: palette(i) for i, method in enumerate(results)}
    loss = loss_unit(row for rows in first_runs.values() for row in rows)
    for ax, key in zip(axes, keys):
        draw_curve_panel(ax, first_runs, key, colors, loss)
    _plot_metric(axes[-1], results, metric, colors, loss)
    figure.savefig(path, dpi=120)
    return figure


def draw_curve_panel(
    ax: Any, runs: Mapping[str, Sequence[dict]], key: str, colors: Mapping[str, Any], loss: str
) -> None:
    """Metric ``key`` of one logged run per method (``runs``: method -> rows) against the step
    on ``ax``, a panel of :func:`plot_comparison`: one curve per method in ``colors[method]``
    (values before / after each pruning event marked, :func:`~jaxprune.train.logging.draw_curve`),
    dotted lines at its pruning events, the title and axis labels of the metric (``loss``: the
    unit of a loss), a log axis where the values span more than a factor of 20, a legend."""
    values, skipped = [], 0
    for method, rows in runs.items():
        drawn, missing = draw_curve(
            ax, rows, key, label=method, color=colors[method], label_markers=False
        )
        draw_events(ax, event_steps(rows), color=colors[method], label=False)
        values += drawn
        skipped += missing
    _legend_keys(ax, key, runs.values())
    title, label = metric_label(key, loss)
    ax.set(xlabel=STEP_LABEL, ylabel=label, title=f"{title} (first seed){skipped_note(skipped)}")
    ax.set_yscale(y_scale(values))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _legend_keys(ax: Any, key: str, runs: Iterable[Sequence[dict]]) -> None:
    """Legend entries in black for the marks of :func:`plot_comparison`'s curve panels that
    some run has: values before / after a pruning event, pruning events (in the method's
    colour on the axes)."""
    runs = list(runs)
    if any(f"{key}_before_event" in row for rows in runs for row in rows):
        ax.plot([], [], "kx", ls="none", ms=7, label="before event")
        ax.plot([], [], "ko", ls="none", ms=7, mfc="none", label="after event")
    if any(event_steps(rows) for rows in runs):
        ax.plot([], [], "k:", lw=1.2, label="pruning event")


def _plot_metric(
    ax: Any,
    results: dict[str, dict[str, list[float]]],
    metric: str,
    colors: dict[str, Any],
    loss: str,
) -> None:
    """Mean ± sample standard deviation of ``metric`` per method on ``ax`` (``loss``: the unit
    of a loss), the axis fitted to them (accuracy within ``[0, 1]``)."""
    names = list(results)
    values = [np.asarray(results[m][metric], float) for m in names]
    means = np.array([v.mean() for v in values])
    errors = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
    seeds = len(values[0])
    spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "1 seed"
    for i, name in enumerate(names):
        ax.errorbar(i, means[i], yerr=errors[i], fmt="o", ms=7, capsize=4, color=colors[name])
    ax.errorbar([], [], yerr=[], fmt="ko", ms=7, capsize=4, label=spread)
    finite = np.isfinite(means)
    if finite.any():
        low = np.min((means - errors)[finite])
        high = np.max((means + errors)[finite])
        pad = max(0.1 * (high - low), 0.01 * abs(high), 1e-6)
        high = high + pad if not metric.endswith("accuracy") else min(high + pad, 1.0)
        ax.set_ylim(max(low - pad, 0.0), high)  # accuracy, perplexity, loss: all >= 0
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    title, label = metric_label(metric, loss)
    ax.set(xlabel="method", ylabel=label, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)


def write_results(out_dir: Path, config: dict, results: dict, table: str) -> None:
    """``table.md`` and ``results.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(
        json.dumps({"config": config, "results": results}, indent=1, default=str)
    )


class Comparison(NamedTuple):
    """What :func:`compare_methods` (and :func:`run_method_comparison`) found.

    Attributes:
      model, splits: what was trained.
      metric: the headline test metric (:func:`test_metric_name` of the task).
      results: ``results[method][figure]``, one value per seed (see :func:`run_comparison`).
      curves: ``curves[method]``, the logged rows of every seed.
      table: the Markdown table written to ``table.md`` (``""`` before it is made).
    """

    model: Bound
    splits: Splits
    metric: str
    results: dict[str, dict[str, list[float]]]
    curves: dict[str, list[list[dict]]]
    table: str = ""

    def report(self) -> dict:
        """``{"table", "results", "metric"}``: what an experiment's ``run`` returns."""
        return {"table": self.table, "results": self.results, "metric": self.metric}


def pruner_factories(
    methods: Sequence[str],
    schedule: Callable[[str], PruningSchedule],
    options: Callable[[str], Mapping[str, Any]] | None = None,
) -> dict[str, MethodFactory]:
    """Method name -> factory of a fresh pruner, through the pruner registry.

    Args:
      methods: :data:`DENSE` (no pruner) or :func:`jaxprune.train.pruner_names` entries.
      schedule: ``schedule(method)``, the method's pruning schedule.
      options: ``options(method)``, the method's registry options (default: none).

    Returns:
      ``{method: factory}``; ``factory()`` is ``make_pruner(method, schedule(method),
      **options(method))``, or ``None`` for :data:`DENSE`.
    """

    def factory(method: str) -> Pruner | None:
        if method == DENSE:
            return None
        return make_pruner(method, schedule(method), **({} if options is None else options(method)))

    return {method: functools.partial(factory, method) for method in methods}


def compare_methods(
    settings: ComparisonSettings,
    methods: Mapping[str, MethodFactory],
    out_dir: Path,
    *,
    model: str,
    optimizer: Callable[[], optax.GradientTransformation],
    splits: Splits | None = None,
    model_options: Mapping[str, Any] | None = None,
    train_options: Mapping[str, Any] | None = None,
    run_settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Comparison:
    """Train the model of ``settings`` with every method and seed (:func:`run_comparison`).

    Args:
      settings: the experiment's settings (``dataset``, ``model_preset``, ``num_steps``,
        ``batch_size``, ``report_steps``, ``seeds``; ``seq_len``, ``vocab_size``,
        ``max_chars`` where it has them).
      methods: name -> factory of a fresh pruner (``None``: dense training).
      out_dir: runs go to ``out_dir/runs/<method>_seed<seed>``; finished ones are reused.
      model: registry name of the model (:func:`jaxprune.train.build_model`).
      optimizer: factory of the optimizer.
      splits: the data (default: :func:`load_splits` of ``settings``).
      model_options: further :func:`~jaxprune.train.build_model` arguments (``kind``,
        ``overrides``).
      train_options: further :class:`~jaxprune.train.TrainConfig` fields (the steps and batch
        size come from ``settings``).  A reported training loss is the mean over the gcd of
        the report steps before it, logged :func:`curve_interval` apart (about 10 points per
        window, so the plotted curves are full); a ``log_every`` given here, which should
        divide the report steps, is both the logging interval and the window.
      run_settings: more settings that identify the runs (e.g. the group kind), added to
        ``dataclasses.asdict(settings)`` for the reuse of finished runs.
      progress: print one line per run and show progress bars.
    """
    splits = load_splits(settings) if splits is None else splits
    bound = build_model(
        model,
        num_outputs=splits.num_outputs,
        input_shape=splits.train["x"].shape[1:],
        preset=settings.model_preset,
        **(model_options or {}),
    )
    options = dict(train_options or {})
    window = options.get(
        "log_every", int(np.gcd.reduce([*settings.report_steps, settings.num_steps]))
    )
    options.setdefault("log_every", curve_interval(window))
    config = TrainConfig(num_steps=settings.num_steps, batch_size=settings.batch_size, **options)
    results, curves = run_comparison(
        bound,
        splits,
        dict(methods),
        optimizer=optimizer,
        config=config,
        seeds=settings.seeds,
        report_steps=settings.report_steps,
        out_dir=Path(out_dir),
        report_window=window,
        progress=progress,
        settings={**dataclasses.asdict(settings), **(run_settings or {})},
    )
    return Comparison(bound, splits, test_metric_name(splits.task), results, curves)


def run_method_comparison(
    settings: ComparisonSettings,
    methods: Mapping[str, MethodFactory],
    out_dir: Path,
    *,
    note: str | Callable[[Comparison], str] = "",
    table: Callable[[Comparison], str] | None = None,
    plot: str = "curves.png",
    **options: Any,
) -> Comparison:
    """An experiment's comparison: :func:`compare_methods`, then its table, results and plot.

    Writes ``table.md`` and ``results.json`` (:func:`write_results`, with
    ``dataclasses.asdict(settings)`` as ``config``) and ``out_dir/plot``
    (:func:`plot_comparison`).

    Args:
      settings, methods, out_dir: as in :func:`compare_methods`.
      note: text after the table (the run's settings in words), or ``note(comparison)``.
      table: ``table(comparison) -> str`` (default: :func:`comparison_table` of the report
        steps and the test metric); :func:`paired_table` of ``"pl"`` follows it when ``"pl"``
        ran, whichever table is used.
      plot: file name of the curves plot.
      **options: the keyword arguments of :func:`compare_methods` (``model`` and
        ``optimizer``; ``splits``, ``model_options``, ``train_options``, ``run_settings``,
        ``progress``).

    Returns:
      The :class:`Comparison`, its ``table`` the written one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = compare_methods(settings, methods, out_dir, **options)
    if table is not None:
        text = table(found)
    else:
        text = comparison_table(found.results, settings.report_steps, found.metric)
    paired = paired_table(found.results, found.metric, "pl", seeds=settings.seeds)
    text = f"{text}\n\n{paired}" if paired else text
    note = note(found) if callable(note) else note
    found = found._replace(table=f"{text}\n\n{note}" if note else text)
    write_results(out_dir, dataclasses.asdict(settings), found.results, found.table)
    plot_comparison(found.curves, found.results, found.metric, out_dir / plot)
    return found
