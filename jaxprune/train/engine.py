"""The training engine: one loop for every model, dataset and pruning method.

:func:`train` runs jit-compiled, data-parallel steps (:mod:`jaxprune.train.parallel`) over the
seeded, resumable batches of :mod:`jaxprune.data.batches`, and at the steps a pruner's schedule
names it runs a pruning event (:mod:`jaxprune.train.events`): the method's mask goes into the
masked optimizer (:func:`jaxprune.optim.masked`), pruned weights become exactly zero, the
model is optionally compacted (fewer heads/filters/experts/neurons: real savings in time),
and with a rewinding schedule (LTH) weights and optimizer return to their saved state.

Periodic analysis (:mod:`jaxprune.train.analysis`) logs the training-time quantities of
Chen et al. (2023) (Figures 3 and 5; App. D footnote) on a fixed probe batch: the condition
number ``λ_max/λ_min`` of the empirical NTK and the Hutchinson trace of the loss Hessian, both
of the pruned model, and before and after every pruning event.

Everything a run needs to continue is checkpointed atomically (:mod:`jaxprune.train.run_state`):
parameters, optimizer state (masks included), gates, the method's state, the LTH rewind point,
the data position and the compaction history; the per-step PRNG key is ``fold_in(key, step)``.
A run stopped at any point and restarted with the same arguments ends with the same metrics as
an uninterrupted one.

Run directory: ``metrics.jsonl``/``metrics.csv`` (one row per logged step), ``events.json``
and ``event_<step>.npz`` (each event's mask and method record), ``checkpoints/``,
``summary.json`` and ``curve_*.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune._validation import (
    check_bool,
    check_finite_tree,
    check_int,
    check_optimizer,
    check_positive_int,
)
from jaxprune.data.batches import BatchPosition, iterate_batches, prefetch
from jaxprune.data.registry import Splits
from jaxprune.masks import GroupLayout
from jaxprune.train.analysis import analyze_state, probe_batch
from jaxprune.train.checkpoint import clear_checkpoints
from jaxprune.train.events import (
    EventFns,
    compact,
    event_batches,
    group_sparsity,
    prune,
    prune_context,
    rewind_point,
    write_event,
)
from jaxprune.train.identity import RunMismatchError, identity_differences, run_identity
from jaxprune.train.logging import MetricsLogger, plot_curves
from jaxprune.train.parallel import (
    check_batch_size,
    data_mesh,
    local_slice,
    replicate,
    shard_batch,
    to_host,
)
from jaxprune.train.programs import model_programs, pruning_optimizer
from jaxprune.train.pruning import Pruner
from jaxprune.train.run_state import (
    PhaseTimer,
    RunState,
    intact_checkpoint,
    restore_run,
    save_run,
)
from jaxprune.train.steps import TrainState, init_state
from jaxprune.train.tasks import Task, accumulate_metrics, make_task, summarize_metrics
from jaxprune.train.zoo import Bound
from jaxprune.typing import PyTree

__all__ = ["RunResult", "TrainConfig", "evaluate", "train"]

# Purposes of the keys folded out of the run's key: fold_in(key, purpose).
_INIT, _STEPS, _EVENTS, _PROBE, _ANALYSIS, _EVAL, _METHOD = range(7)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train`.

    Attributes:
      num_steps: optimizer updates in the run.
      batch_size: global batch size (a multiple of the number of devices).
      eval_batch_size: evaluation batch size (a multiple of the number of devices).
      log_every: steps between logged training metrics (means over the window).
      eval_every: steps between test evaluations (0: only at the end).
      analysis_every: steps between NTK/Hessian analyses (0: off).
      analysis_examples: probe-batch size of the analysis.
      analysis_probes: Hutchinson probes of the Hessian trace.
      analysis_projections: if set, the NTK is computed on this many random projections of
        each example's outputs (:func:`jaxprune.spectra.sketch_outputs`, an unbiased
        estimate of the kernel traced over all outputs) instead of all of them: needed for
        MLM logits ``(T, V)`` per example, whose exact kernel costs ``T·V`` Jacobian rows.
      checkpoint_every: steps between checkpoints (0: no checkpoints, no resume).
      keep_checkpoints: newest checkpoints kept.
      seed: seed of initialization, data order, MLM masks and dropout.
      num_devices: devices of the data-parallel mesh (``None``: all).
      compact: physically remove pruned groups after each event.
      tensorboard: also write TensorBoard scalars (if a writer is importable).
      prefetch: host batches prepared ahead by a background thread; ``None``: 2 on
        accelerators, 0 on CPU, where the thread competes with the computation for the same
        cores (measured: 10% fewer steps/s for a small MLP on 2 cores, experiments/RESULTS.md).
      progress: show a progress bar.
    """

    num_steps: int = 500
    batch_size: int = 64
    eval_batch_size: int = 256
    log_every: int = 25
    eval_every: int = 0
    analysis_every: int = 0
    analysis_examples: int = 32
    analysis_probes: int = 8
    analysis_projections: int | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    num_devices: int | None = None
    compact: bool = False
    tensorboard: bool = False
    prefetch: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("num_steps", "batch_size", "eval_batch_size", "log_every")
        positive += ("analysis_examples", "analysis_probes", "keep_checkpoints")
        for name in positive:
            check_positive_int(getattr(self, name), name)
        for name in ("eval_every", "analysis_every", "checkpoint_every", "seed"):
            check_int(getattr(self, name), name, minimum=0)
        if self.analysis_projections is not None:
            check_positive_int(self.analysis_projections, "analysis_projections")
        if self.prefetch is not None:
            check_int(self.prefetch, "prefetch", minimum=0)
        if self.num_devices is not None:
            check_positive_int(self.num_devices, "num_devices")
        for name in ("compact", "tensorboard", "progress"):
            check_bool(getattr(self, name), name)


class RunResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      state: final :class:`~jaxprune.train.steps.TrainState` (host-fetchable arrays).
      model: the final model (smaller when compacted).
      rows: every logged metrics row.
      events: one summary per pruning event (step, ratio, kept groups, seconds).
      summary: final figures: test metrics, last training loss, sparsity, wall times and the
        shares of time in pruning events and analysis.
    """

    state: TrainState
    model: Bound
    rows: list[dict]
    events: list[dict]
    summary: dict


def _padded_batches(
    data: dict[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive batches covering every example once; the last is padded with
    ``valid = 0`` rows so all batches share one compiled shape."""
    n = len(next(iter(data.values())))
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size)
        valid = index < n
        index = np.where(valid, index, 0)
        yield {**{k: v[index] for k, v in data.items()}, "valid": valid.astype(np.float32)}


def evaluate(
    eval_step: Any,
    state: TrainState,
    data: dict[str, np.ndarray],
    *,
    batch_size: int,
    key: jax.Array,
    mesh: Any,
    task: str,
) -> dict[str, float]:
    """Mean metrics of ``state`` over every example of ``data`` (nothing dropped).

    Args:
      eval_step: compiled ``eval_step(state, batch, key)`` (:func:`compile_step` of
        :func:`~jaxprune.train.steps.make_eval_step`).
      state: the training state.
      data: host arrays of the split.
      batch_size: global evaluation batch size.
      key: fixes the MLM corruption (batch ``i`` uses ``fold_in(key, i)``).
      mesh: the data mesh.
      task: the task name (adds perplexity for MLM).
    """
    check_positive_int(batch_size, "batch_size")
    totals: dict[str, tuple] = {}
    rows = local_slice(batch_size)
    for i, batch in enumerate(_padded_batches(data, batch_size)):
        metrics = eval_step(
            state,
            shard_batch({k: v[rows] for k, v in batch.items()}, mesh),
            jax.random.fold_in(key, i),
        )
        totals = accumulate_metrics(totals, [metrics])
    return summarize_metrics(to_host(totals), task)


def _training_batches(
    data: dict[str, np.ndarray], batch_size: int, seed: int, start: BatchPosition
) -> Iterator[tuple[dict[str, np.ndarray], BatchPosition]]:
    n = len(next(iter(data.values())))
    rows = local_slice(batch_size)
    for indices, position in iterate_batches(n, batch_size, seed=seed, start=start):
        yield {k: v[indices[rows]] for k, v in data.items()}, position


class _Binding(NamedTuple):
    """A model and its compiled functions, rebuilt when compaction changes the model.

    Attributes:
      model: the bound model.
      train_step: compiled ``train_step(state, batch, key) -> (state, metrics)``.
      eval_step: compiled ``eval_step(state, batch, key) -> metrics``.
      analysis: :func:`~jaxprune.train.analysis.analysis_fn` of the model.
      events: the model functions pruning events hand to the method.
      groups: ``(group_ids, layout)`` over the parameters (``None`` in dense training).
    """

    model: Bound
    train_step: Callable
    eval_step: Callable
    analysis: Callable
    events: EventFns
    groups: tuple[PyTree, GroupLayout] | None


class _Setup(NamedTuple):
    """What stays fixed during a :func:`train` call."""

    config: TrainConfig
    splits: Splits
    task: Task
    mesh: Any
    key: jax.Array
    optimizer: optax.GradientTransformation
    pruner: Pruner | None
    num_groups0: int | None
    run_dir: Path | None

    def key_for(self, purpose: int, step: int | None = None) -> jax.Array:
        """``fold_in(key, purpose)``, then ``fold_in(·, step)`` when a step is given."""
        key = jax.random.fold_in(self.key, purpose)
        return key if step is None else jax.random.fold_in(key, step)

    @property
    def writes(self) -> bool:
        """This process writes the run directory."""
        return self.run_dir is not None and jax.process_index() == 0


def _setup(
    model: Bound,
    splits: Splits,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    pruner: Pruner | None,
    run_dir: Path | None,
) -> _Setup:
    """Check the run's arguments; the mesh, task, key and (when pruning) masked optimizer."""
    mesh = data_mesh(config.num_devices)
    check_batch_size(config.batch_size, mesh)
    check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    n_train = len(splits.train["x"])
    if config.batch_size > n_train:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {n_train} training examples")
    for name, split in (("train", splits.train), ("test", splits.test)):
        check_finite_tree(split, f"splits.{name}")
    shapes = _check_model_fits(model, splits)
    num_groups0 = None
    if pruner is not None:
        last = pruner.schedule.event_steps[-1]
        if last >= config.num_steps:
            raise ValueError(
                f"pruning schedule event at step {last} is beyond the run's "
                f"num_steps={config.num_steps}"
            )
        if config.compact and not model.compactable:
            raise ValueError(
                f"config.compact: model {model.name!r} does not support compaction; train "
                "with compact=False (its pruned groups stay masked at 0)"
            )
        optimizer = pruning_optimizer(optimizer)
        num_groups0 = len(model.group_ids(shapes["params"])[1].layer_of_group)
    task = make_task(splits.task, num_outputs=splits.num_outputs, info=splits.info)
    key = jax.random.key(config.seed)
    return _Setup(config, splits, task, mesh, key, optimizer, pruner, num_groups0, run_dir)


def _check_model_fits(model: Bound, splits: Splits) -> PyTree:
    """The variable shapes of ``model`` on ``splits``' inputs, checked to give one output per
    class (classification), token id (MLM) or target entry (regression); a traced
    evaluation, nothing computed.

    Raises:
      ValueError: the model cannot take the inputs, or its outputs do not fit the targets (a
        classifier with fewer outputs than classes gives NaN losses; regression outputs of
        another shape would broadcast against the targets).
    """
    example = splits.train["x"][:1]
    try:
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
        outputs = jax.eval_shape(lambda v: model.apply(v, example, train=False)[0], shapes)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"model: {model.name!r} cannot take the inputs of splits.train['x'] (examples of "
            f"shape {tuple(example.shape[1:])}, dtype {example.dtype}): {error}"
        ) from error
    if splits.task == "regression":
        got, expected = tuple(outputs.shape[1:]), tuple(np.shape(splits.train["y"])[1:])
        want = f"the targets' shape {expected} (splits.train['y'])"
    else:
        got, expected = outputs.shape[-1], splits.num_outputs
        kind = "token ids" if splits.task == "mlm" else "classes"
        want = f"{expected} {kind} (splits.num_outputs)"
    if got != expected:
        raise ValueError(
            f"model: {model.name!r} gives outputs of shape {tuple(outputs.shape[1:])} per "
            f"example, expected {want}; build it with num_outputs=splits.num_outputs"
        )
    return shapes


def _check_arguments(
    model: Any,
    splits: Any,
    optimizer: Any,
    config: Any,
    pruner: Any,
    run_dir: Any,
    resume: Any,
    run_info: Any,
) -> None:
    """Raise ``TypeError`` naming the first argument of :func:`train` of the wrong type."""
    expected = (
        ("model", model, Bound, "a Bound (jaxprune.train.build_model)"),
        ("splits", splits, Splits, "Splits (jaxprune.data.load_dataset)"),
        ("config", config, TrainConfig, "a TrainConfig"),
        ("pruner", pruner, Pruner | None, "a Pruner (jaxprune.train.make_pruner) or None"),
        ("run_dir", run_dir, str | os.PathLike | None, "a directory path or None"),
        ("run_info", run_info, dict | None, "a dict or None"),
    )
    for name, value, kind, what in expected:
        if not isinstance(value, kind):
            raise TypeError(f"{name}: expected {what}, got {type(value).__name__}")
    check_optimizer(optimizer)
    check_bool(resume, "resume")


def _bind(setup: _Setup, model: Bound, params: PyTree) -> _Binding:
    """``model``'s compiled steps (shared with earlier runs of the same model, task and
    optimizer: :func:`~jaxprune.train.programs.model_programs`); group ids over ``params``
    when pruning."""
    config = setup.config
    programs = model_programs(
        model,
        setup.task,
        setup.optimizer,
        setup.mesh,
        num_probes=config.analysis_probes,
        projections=config.analysis_projections,
    )
    return _Binding(
        model=model,
        train_step=programs.train_step,
        eval_step=programs.eval_step,
        analysis=programs.analysis,
        events=programs.events,
        groups=None if setup.pruner is None else model.group_ids(params),
    )


def _compact(
    setup: _Setup, run: RunState, binding: _Binding, keep: np.ndarray
) -> tuple[RunState, _Binding]:
    """Remove the groups with ``keep[g] = False``; the smaller model gets a new binding."""
    model, state, rewind = compact(binding.model, run.state, run.rewind, keep, setup.mesh)
    compactions = [*run.compactions, [bool(k) for k in keep]]
    run = run._replace(state=state, rewind=rewind, compactions=compactions)
    return run, _bind(setup, model, state.params)


def _prune_event(
    setup: _Setup, run: RunState, binding: _Binding, step: int
) -> tuple[RunState, _Binding]:
    """The pruning event at ``step``: select and install the mask, record it, compact."""
    config, pruner = setup.config, setup.pruner
    key = setup.key_for(_EVENTS, step)
    batches = event_batches(
        setup.splits.train, setup.task, config.batch_size, config.seed, step, key
    )
    context = prune_context(
        pruner,
        step,
        run.state,
        binding.groups,
        binding.events,
        num_groups0=setup.num_groups0,
        batches=batches,
        key=key,
    )
    outcome = prune(pruner, context, run.state, run.method_state, run.rewind, setup.mesh)
    events = [*run.events, outcome.summary]
    run = run._replace(state=outcome.state, method_state=outcome.method_state, events=events)
    if setup.writes:
        write_event(setup.run_dir, step, outcome.mask, outcome.record, events)
    if config.compact:
        run, binding = _compact(setup, run, binding, outcome.mask > 0)
    return run, binding


def _resume(
    setup: _Setup, run: RunState, binding: _Binding, timer: PhaseTimer, identity: dict
) -> tuple[RunState, _Binding, dict]:
    """The run continued from its newest intact checkpoint (unchanged if there is none), and
    the metrics row that was being assembled at that checkpoint (``{}``: none).

    Raises:
      RunMismatchError: the checkpoint is of a different run (its identity differs).
    """
    directory = None if setup.run_dir is None else setup.run_dir / "checkpoints"
    found = intact_checkpoint(directory)
    if found is None:
        return run, binding, {}
    for line in found.skipped:
        print(f"jaxprune: skipping a corrupt checkpoint, {line}", flush=True)
    saved = found.metadata.get("identity")
    differences = (
        ["identity: <absent> (written before runs recorded one)"]
        if saved is None
        else identity_differences(saved, identity)
    )
    if differences:
        raise RunMismatchError(
            f"run_dir: {setup.run_dir} holds a checkpoint (step {found.step}) of a different "
            f"run: {'; '.join(differences)}; start fresh with resume=False (--fresh) or use "
            "another run directory (--out)"
        )
    for keep in found.metadata["compactions"]:
        run, binding = _compact(setup, run, binding, np.asarray(keep, bool))
    run, seconds = restore_run(directory, found, run)
    timer.resume(seconds)
    return run, binding, found.pending


def _clear_checkpoints(run_dir: Path | None) -> None:
    """Remove an earlier run's checkpoints from ``run_dir`` (a fresh run: ``resume=False``),
    so that they can never be taken for this run's."""
    directory = None if run_dir is None else run_dir / "checkpoints"
    if directory is not None and jax.process_index() == 0:
        clear_checkpoints(directory)


#: Files of the run directory that :func:`train` writes (``tensorboard/`` holds TensorBoard's
#: ``events.out.tfevents.*`` files); a fresh start removes these and nothing else.
_RUN_FILES = ("metrics.jsonl", "metrics.csv", "events.json", "summary.json")
_RUN_FILE_PATTERNS = ("event_*.npz", "curve_*.png", ".metrics.jsonl.tmp", ".metrics.csv.tmp")


def _clear_run_files(run_dir: Path) -> list[str]:
    """Remove what an earlier run wrote in ``run_dir`` (metrics, events, summary, curves,
    TensorBoard event files) at a fresh start, so no stale file passes for this run's; other
    files are left alone.  Returns the removed names (relative to ``run_dir``)."""
    stale = [run_dir / name for name in _RUN_FILES]
    stale += [path for pattern in _RUN_FILE_PATTERNS for path in sorted(run_dir.glob(pattern))]
    board = run_dir / "tensorboard"
    if board.is_dir():
        stale += sorted(board.glob("events.out.tfevents.*"))
    removed = []
    for path in stale:
        if path.is_file():
            path.unlink()
            removed.append(path.relative_to(run_dir).as_posix())
    if board.is_dir() and not any(board.iterdir()):
        board.rmdir()
    if removed:
        shown = ", ".join(removed[:6]) + (
            f", ... ({len(removed)} in all)" if len(removed) > 6 else ""
        )
        print(f"jaxprune: fresh start in {run_dir}: removed an earlier run's {shown}", flush=True)
    return removed


def _weight_sparsity(params: PyTree) -> float:
    leaves = jax.tree_util.tree_leaves(params)
    zeros = sum(int(np.sum(np.asarray(leaf) == 0)) for leaf in leaves)
    return zeros / max(1, sum(leaf.size for leaf in leaves))


def train(
    model: Bound,
    splits: Splits,
    optimizer: optax.GradientTransformation,
    config: TrainConfig,
    *,
    pruner: Pruner | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    run_info: dict | None = None,
) -> RunResult:
    """Train ``model`` on ``splits`` with ``optimizer``, pruning on ``pruner``'s schedule.

    Args:
      model: a :class:`~jaxprune.train.zoo.Bound` model (:func:`~jaxprune.train.build_model`).
      splits: data from :func:`~jaxprune.data.load_dataset`.
      optimizer: any optax optimizer (wrapped in :func:`~jaxprune.optim.masked` when pruning;
        an optimizer that prunes by itself, like gRDA, needs no pruner).
      config: :class:`TrainConfig`.
      pruner: a :class:`~jaxprune.train.pruning.Pruner`, or ``None`` for dense training.
      run_dir: directory for metrics, events, checkpoints and plots (``None``: nothing written).
      resume: continue from the newest intact checkpoint in ``run_dir`` if there is one (a
        corrupt newer one is skipped with a line saying so); it must be of the same run:
        same model, data, settings, method and ``run_info`` (:mod:`jaxprune.train.identity`),
        else :class:`~jaxprune.train.identity.RunMismatchError`.  ``False``: start fresh and
        delete the directory's earlier checkpoints.  A fresh start (``False``, or no intact
        checkpoint) also removes the files an earlier run wrote there (``metrics.*``,
        ``events.json``, ``event_*.npz``, ``summary.json``, ``curve_*.png``, TensorBoard
        event files; one line says which), never other files.
      run_info: JSON-like settings the engine cannot see but a resume must match (the
        optimizer's, e.g. ``{"optimizer": "adam", "learning_rate": 1e-3}``).

    Returns:
      :class:`RunResult`.

    Raises:
      TypeError: an argument of the wrong type (the message names it).
      ValueError: settings the data or devices cannot meet (batch sizes), NaN or inf in the
        data, a model that does not fit the data (inputs, or outputs other than one per class,
        token id or target), a schedule beyond ``num_steps``, or a checkpoint of another run
        (:class:`~jaxprune.train.identity.RunMismatchError`).
    """
    _check_arguments(model, splits, optimizer, config, pruner, run_dir, resume, run_info)
    run_dir = None if run_dir is None else Path(run_dir)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    setup = _setup(model, splits, optimizer, config, pruner, run_dir)
    timer = PhaseTimer()
    state = init_state(
        model,
        setup.optimizer,
        setup.key_for(_INIT),
        splits.train["x"][:1],
        num_groups=setup.num_groups0,
    )
    method_state = None if pruner is None else pruner.initial_state(setup.key_for(_METHOD))
    run = RunState(state, method_state, None, BatchPosition(0, 0), [], [], {})
    binding = _bind(setup, model, state.params)
    identity = {} if run_dir is None else run_identity(model, splits, config, pruner, run_info)
    pending: dict[str, Any] = {}
    if resume:
        run, binding, pending = _resume(setup, run, binding, timer, identity)
    else:
        _clear_checkpoints(run_dir)
    start = int(run.state.step)
    if start == 0 and setup.writes:  # a fresh start: nothing of an earlier run may remain
        _clear_run_files(run_dir)
    run = run._replace(state=replicate(run.state, setup.mesh))
    logger = None
    if setup.writes:
        # Rows from the pending one on were not written at the checkpoint: log them again.
        kept = (pending["step"] - 1 if pending else start) if start else None
        logger = MetricsLogger(run_dir, resume_step=kept, tensorboard=config.tensorboard)
    rows: list[dict] = [] if logger is None else logger.rows

    def log(step: int, row: dict) -> None:
        """Rows of one step are merged (after-update metrics of step ``s - 1`` and analysis
        before update ``s`` both belong to step ``s``); a row is written when a later step
        starts."""
        if pending and pending["step"] != step:
            flush()
        pending.update({"step": step, **row})

    def flush() -> None:
        if pending:
            row = dict(pending)
            step = row.pop("step")
            if logger is not None:
                logger.log(step, row)
            else:
                rows.append({"step": step, **row})
            pending.clear()

    probe = None
    if config.analysis_every:
        examples = {k: v[: config.analysis_examples] for k, v in splits.train.items()}
        probe = probe_batch(setup.task, examples, setup.key_for(_PROBE))

    def analysis(binding: _Binding, state: TrainState, step: int) -> dict[str, float]:
        with timer.phase("analysis"):
            return analyze_state(binding.analysis, state, probe, setup.key_for(_ANALYSIS, step))

    def test_metrics(binding: _Binding, state: TrainState) -> dict[str, float]:
        with timer.phase("eval"):
            return evaluate(
                binding.eval_step,
                state,
                splits.test,
                batch_size=config.eval_batch_size,
                key=setup.key_for(_EVAL),
                mesh=setup.mesh,
                task=splits.task,
            )

    step_key = setup.key_for(_STEPS)
    batches = _training_batches(splits.train, config.batch_size, config.seed, run.position)
    ahead = config.prefetch
    if ahead is None:
        ahead = 0 if jax.default_backend() == "cpu" else 2
    if ahead:
        batches = prefetch(batches, ahead)
    schedule = None if pruner is None else pruner.schedule
    pending_metrics: list[dict] = []  # summed at log time: no per-step host work
    bar = tqdm(
        total=config.num_steps,
        initial=start,
        disable=not config.progress,
        desc="train",
        unit="step",
        leave=False,
    )
    try:
        for step in range(start, config.num_steps):
            row: dict[str, float] = {}
            event = schedule is not None and schedule.is_event(step)
            if event and config.analysis_every:
                row.update(
                    {f"{k}_before_event": v for k, v in analysis(binding, run.state, step).items()}
                )
            if event:
                with timer.phase("events"):
                    run, binding = _prune_event(setup, run, binding, step)
                row["group_sparsity"] = group_sparsity(run.state.gates, setup.num_groups0)
            if config.analysis_every and (event or step % config.analysis_every == 0):
                row.update(analysis(binding, run.state, step))
            if row:
                log(step, row)
            if schedule is not None and schedule.rewind_step == step:
                run = run._replace(rewind=rewind_point(run.state))
            batch, position = next(batches)
            state, metrics = binding.train_step(run.state, shard_batch(batch, setup.mesh), step_key)
            run = run._replace(state=state, position=position)
            pending_metrics.append(metrics)
            done = step + 1
            row = {}
            if done % config.log_every == 0 or done == config.num_steps:
                window = accumulate_metrics(run.window, pending_metrics)
                means = summarize_metrics(to_host(window), splits.task)
                run = run._replace(window={})
                pending_metrics = []
                row.update({f"train_{k}": v for k, v in means.items()})
                bar.set_postfix(loss=f"{means['loss']:.4g}")
            last = done == config.num_steps
            if last or (config.eval_every and done % config.eval_every == 0):
                row.update({f"test_{k}": v for k, v in test_metrics(binding, run.state).items()})
                row["weight_sparsity"] = _weight_sparsity(to_host(run.state.params))
            if last and config.analysis_every:
                row.update(analysis(binding, run.state, done))
            if row:
                log(done, row)
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                run = run._replace(window=accumulate_metrics(run.window, pending_metrics))
                pending_metrics = []
                if run_dir is not None:  # orbax saves are collective: every process calls
                    with timer.phase("checkpoint"):
                        directory = run_dir / "checkpoints"
                        save_run(
                            directory,
                            done,
                            run,
                            timer,
                            keep=config.keep_checkpoints,
                            identity=identity,
                            pending=pending,
                        )
            bar.update(1)
        flush()
    finally:
        bar.close()
        batches.close()
    if logger is not None:
        logger.close()
    final = rows[-1] if rows and rows[-1]["step"] == config.num_steps else {}
    seconds = timer.seconds
    wall = timer.wall()
    summary = {
        **{k: v for k, v in final.items() if k != "step"},
        "steps": config.num_steps,
        "group_sparsity": group_sparsity(run.state.gates, setup.num_groups0),
        "weight_sparsity": _weight_sparsity(to_host(run.state.params)),
        "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(run.state.params))),
        "wall_seconds": wall,
        "event_seconds": seconds["events"],
        "analysis_seconds": seconds["analysis"],
        "event_share": seconds["events"] / wall,
        "analysis_share": seconds["analysis"] / wall,
        "devices": int(setup.mesh.devices.size),
    }
    if setup.writes:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        curves = ("train_loss", "test_loss", "ntk_condition", "hessian_trace")
        plot_curves(run_dir, [k for k in curves if any(k in r for r in rows)])
    state = jax.device_get(to_host(run.state))
    return RunResult(state, binding.model, list(rows), run.events, summary)
