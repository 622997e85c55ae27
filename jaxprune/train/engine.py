"""The training engine: one loop for every model, dataset and pruning method.

:func:`train` runs jit-compiled, data-parallel steps (:mod:`jaxprune.train.parallel`) over the
seeded, resumable batches of :mod:`jaxprune.data.batches`, and at the steps a pruner's schedule
names it runs a pruning event (:mod:`jaxprune.train.pruning`): the method's mask goes into the
masked optimizer (:func:`jaxprune.optim.masked`), pruned weights become exactly zero, the
model is optionally compacted (fewer heads/filters/experts/neurons: real savings in time),
and with a rewinding schedule (LTH) weights and optimizer return to their saved state.

Periodic analysis logs the papers' training-time quantities on a fixed probe batch: the
condition number ``λ_max/λ_min`` of the empirical NTK (paper 000, Figures 3 and 5; App. D
footnote) and the Hutchinson trace of the loss Hessian, both of the pruned model (the
parameters seen through the mask), and before and after every pruning event.

Everything a run needs to continue is checkpointed atomically: parameters, optimizer state
(masks included), gates, the method's state, the LTH rewind point, the data position and the
compaction history; the per-step PRNG key is ``fold_in(key, step)``.  A run stopped at any
point and restarted with the same arguments ends with the same metrics as an uninterrupted one.

Run directory: ``metrics.jsonl``/``metrics.csv`` (one row per logged step), ``events.json``
and ``event_<step>.npz`` (each event's mask and method record), ``checkpoints/``,
``summary.json`` and ``curve_*.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.tree_util import Partial
from tqdm.auto import tqdm

from jaxprune.data.batches import BatchPosition, epoch_batches, iterate_batches, prefetch
from jaxprune.data.registry import Splits
from jaxprune.masks import apply_group_mask, param_mask, ratio_to_k
from jaxprune.optim import MaskedState, apply_mask, map_param_subtrees, masked, set_mask
from jaxprune.spectra import empirical_ntk, hessian_trace, sketch_outputs, spectrum_features
from jaxprune.train.checkpoint import latest_step, restore_checkpoint, save_checkpoint
from jaxprune.train.logging import MetricsLogger, plot_curves
from jaxprune.train.parallel import (
    check_batch_size,
    compile_step,
    data_mesh,
    local_slice,
    replicate,
    shard_batch,
)
from jaxprune.train.pruning import PruneContext, Pruner
from jaxprune.train.steps import (
    TrainState,
    init_state,
    make_eval_step,
    make_loss_fn,
    make_train_step,
)
from jaxprune.train.tasks import Task, make_task, summarize_metrics
from jaxprune.train.zoo import Bound

__all__ = ["RunResult", "TrainConfig", "evaluate", "train"]

PyTree = Any

# Purposes of the keys folded out of the run's key: fold_in(key, purpose).
_INIT, _STEPS, _EVENTS, _PROBE, _ANALYSIS, _EVAL = range(6)


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
        each example's outputs (:func:`jaxprune.methods.pl_gating.sketch_outputs`, an unbiased
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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        projections = self.analysis_projections
        if projections is not None and (not isinstance(projections, int) or projections < 1):
            raise ValueError(
                f"analysis_projections must be None or an int >= 1, got {projections!r}"
            )
        if self.prefetch is not None and (not isinstance(self.prefetch, int) or self.prefetch < 0):
            raise ValueError(f"prefetch must be None or an int >= 0, got {self.prefetch!r}")
        for name in ("eval_every", "analysis_every", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")


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


class _Timer:
    """Wall-clock seconds per phase (device work is synchronized at phase ends)."""

    def __init__(self) -> None:
        self.seconds = {"events": 0.0, "analysis": 0.0, "eval": 0.0, "checkpoint": 0.0, "wall": 0.0}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


def _to_host(tree: PyTree) -> PyTree:
    """Replicated global arrays to host NumPy (works on every process of a multi-host run)."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return x

    return jax.tree_util.tree_map(leaf, tree)


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
    totals: dict[str, list] = {}
    rows = local_slice(batch_size)
    for i, batch in enumerate(_padded_batches(data, batch_size)):
        metrics = eval_step(
            state,
            shard_batch({k: v[rows] for k, v in batch.items()}, mesh),
            jax.random.fold_in(key, i),
        )
        for name, (total, weight) in metrics.items():
            acc = totals.setdefault(name, [0.0, 0.0])
            acc[0] += total
            acc[1] += weight
    return summarize_metrics(_to_host({k: tuple(v) for k, v in totals.items()}), task)


def _training_batches(
    data: dict[str, np.ndarray], batch_size: int, seed: int, start: BatchPosition
) -> Iterator[tuple[dict[str, np.ndarray], BatchPosition]]:
    n = len(next(iter(data.values())))
    rows = local_slice(batch_size)
    for indices, position in iterate_batches(n, batch_size, seed=seed, start=start):
        yield {k: v[indices[rows]] for k, v in data.items()}, position


def _event_batches(
    data: dict[str, np.ndarray],
    task: Task,
    batch_size: int,
    seed: int,
    step: int,
    key: jax.Array,
) -> Any:
    """``batches(n)`` of a pruning event: ``n`` batches from permutations fixed by ``(seed,
    step)``, one epoch after another when ``n`` exceeds an epoch, prepared by the task (single
    device)."""
    n_examples = len(next(iter(data.values())))

    def batches(n: int) -> list[dict]:
        indices: list[np.ndarray] = []
        epoch = 0
        while len(indices) < n:
            indices += epoch_batches(
                n_examples, batch_size, seed=seed + 1, epoch=step * 1_000 + epoch
            )
            epoch += 1
        return [
            task.prepare(
                {k: jnp.asarray(v[idx]) for k, v in data.items()}, jax.random.fold_in(key, i)
            )
            for i, idx in enumerate(indices[:n])
        ]

    return batches


class _Run:
    """Mutable bookkeeping of one :func:`train` call (kept out of the pure step functions)."""

    def __init__(
        self,
        model: Bound,
        splits: Splits,
        optimizer: optax.GradientTransformation,
        config: TrainConfig,
        pruner: Pruner | None,
        run_dir: Path | None,
    ) -> None:
        self.config, self.pruner, self.splits, self.run_dir = config, pruner, splits, run_dir
        self.mesh = data_mesh(config.num_devices)
        check_batch_size(config.batch_size, self.mesh)
        check_batch_size(config.eval_batch_size, self.mesh, "eval_batch_size")
        n_train = len(splits.train["x"])
        if config.batch_size > n_train:
            raise ValueError(
                f"batch_size={config.batch_size} exceeds the {n_train} training examples"
            )
        if pruner is not None:
            last = pruner.schedule.event_steps[-1]
            if last >= config.num_steps:
                raise ValueError(
                    f"pruning schedule event at step {last} is beyond the run's "
                    f"num_steps={config.num_steps}"
                )
        self.task = make_task(splits.task, num_outputs=splits.num_outputs, info=splits.info)
        self.key = jax.random.key(config.seed)
        self.optimizer = optimizer
        if pruner is not None:
            self.optimizer = masked(
                optimizer, lambda params: jax.tree_util.tree_map(jnp.ones_like, params)
            )
        self.timer = _Timer()
        self.began = time.perf_counter()
        self.events: list[dict] = []
        self.window: dict[str, list] = {}  # training metrics since the last logged row
        self.compactions: list[list[bool]] = []
        self.position = BatchPosition(0, 0)
        self.rewind: tuple[PyTree, PyTree] | None = None
        self.method_state = None if pruner is None else pruner.init_state
        self.probe = {k: v[: config.analysis_examples] for k, v in splits.train.items()}
        self._bind(model)
        example = splits.train["x"][:1]
        self.num_groups0 = None
        num_groups = None
        if pruner is not None:
            shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
            _, layout = model.group_ids(shapes["params"])
            num_groups = self.num_groups0 = len(layout.layer_of_group)
        self.state = init_state(
            model, self.optimizer, self.key_for(_INIT), example, num_groups=num_groups
        )
        self._refresh_groups()

    def key_for(self, purpose: int) -> jax.Array:
        return jax.random.fold_in(self.key, purpose)

    def wall_seconds(self) -> float:
        """Wall time of the run, earlier sessions of a resumed run included."""
        return self.timer.seconds["wall"] + time.perf_counter() - self.began

    def _bind(self, model: Bound) -> None:
        self.model = model
        self.loss_fn = make_loss_fn(model, self.task)
        self.event_loss = _event_loss(self.loss_fn)
        self.event_apply = _event_apply(model)
        self.train_step = compile_step(make_train_step(model, self.task, self.optimizer), self.mesh)
        self.analysis_fn = self._analysis_fn()
        self.eval_step = compile_step(
            make_eval_step(model, self.task), self.mesh, donate_state=False
        )

    def _refresh_groups(self) -> None:
        if self.pruner is not None:
            self.group_ids, self.layout = self.model.group_ids(self.state.params)

    # -- checkpoints -------------------------------------------------------------------------
    def _checkpoint_tree(self) -> dict:
        return {"state": self.state, "method": self.method_state, "rewind": self.rewind}

    def add_to_window(self, metrics: list[dict]) -> None:
        """Add steps' ``(total, weight)`` metrics to the window of the next logged row."""
        if not metrics:
            return
        sums = jax.tree_util.tree_map(lambda *xs: jnp.sum(jnp.stack(xs)), *metrics)
        for name, (total, weight) in sums.items():
            acc = self.window.setdefault(name, [0.0, 0.0])
            acc[0] += total
            acc[1] += weight

    def save(self, step: int) -> None:
        if self.run_dir is None or jax.process_index() != 0:
            return
        with self.timer.phase("checkpoint"):
            meta = {
                "position": list(self.position),
                "events": self.events,
                "compactions": self.compactions,
                "has_rewind": self.rewind is not None,
                "window": {k: [float(t), float(w)] for k, (t, w) in _to_host(self.window).items()},
                "seconds": {**self.timer.seconds, "wall": self.wall_seconds()},
            }
            save_checkpoint(
                self.run_dir / "checkpoints",
                step,
                _to_host(self._checkpoint_tree()),
                metadata=meta,
                keep=self.config.keep_checkpoints,
            )

    def restore(self) -> int:
        directory = None if self.run_dir is None else self.run_dir / "checkpoints"
        step = None if directory is None else latest_step(directory)
        if step is None:
            return 0
        meta = json.loads((directory / f"checkpoint_{step}.json").read_text())["metadata"]
        for keep in meta["compactions"]:
            self._compact(np.asarray(keep, bool))
        if meta["has_rewind"]:
            self.rewind = (self.state.params, self.state.opt_state)
        tree, meta = restore_checkpoint(directory, self._checkpoint_tree(), step)
        self.state, self.method_state, self.rewind = tree["state"], tree["method"], tree["rewind"]
        self.position = BatchPosition(*meta["position"])
        self.events, self.compactions = meta["events"], meta["compactions"]
        self.window = meta["window"]
        self.timer.seconds.update(meta["seconds"])
        self.began = time.perf_counter()
        self._refresh_groups()
        return int(self.state.step)

    # -- pruning -----------------------------------------------------------------------------
    def prune_event(self, step: int) -> None:
        pruner, state = self.pruner, self.state
        with self.timer.phase("events"):
            key = jax.random.fold_in(self.key_for(_EVENTS), step)
            ratio = float(pruner.schedule.ratio(step))
            collections, gates = state.collections, state.gates
            context = PruneContext(
                step=step,
                ratio=ratio,
                num_keep=int(ratio_to_k(self.num_groups0, ratio)),
                params=state.params,
                collections=collections,
                gates=np.asarray(gates),
                group_ids=self.group_ids,
                layout=self.layout,
                key=key,
                loss_fn=Partial(self.event_loss, collections, gates, key),
                apply_fn=Partial(self.event_apply, collections, gates),
                batches=_event_batches(
                    self.splits.train,
                    self.task,
                    self.config.batch_size,
                    self.config.seed,
                    step,
                    key,
                ),
            )
            start = time.perf_counter()
            mask, self.method_state, record = pruner.select(context, self.method_state)
            mask = np.asarray(mask, np.float32)
            if mask.shape != context.gates.shape or int(mask.sum()) != context.num_keep:
                raise ValueError(
                    f"pruner {pruner.name!r} returned a mask of shape {mask.shape} with "
                    f"{int(mask.sum())} ones; expected shape {context.gates.shape} with "
                    f"{context.num_keep} ones"
                )
            self._install(mask)
            jax.block_until_ready(self.state.params)
            summary = {
                "step": step,
                "ratio": ratio,
                "kept": context.num_keep,
                "groups_before": len(mask),
                "seconds": time.perf_counter() - start,
            }
            self.events.append(summary)
            if self.run_dir is not None and jax.process_index() == 0:
                arrays = {k: np.asarray(v) for k, v in record.items()}
                np.savez(self.run_dir / f"event_{step}.npz", mask=mask, **arrays)
                (self.run_dir / "events.json").write_text(json.dumps(self.events, indent=1))
            if self.config.compact:
                self._compact(mask > 0)

    def _install(self, mask: np.ndarray) -> None:
        state = self.state
        params, opt_state = state.params, state.opt_state
        if self.rewind is not None:  # a copy: the state's buffers are donated to the next step
            params, opt_state = jax.tree_util.tree_map(jnp.copy, self.rewind)
        pmask = param_mask(params, self.group_ids, mask)
        params = apply_group_mask(params, self.group_ids, mask)
        opt_state = set_mask(opt_state, pmask)
        self.state = replicate(
            TrainState(
                state.step, params, state.collections, opt_state, jnp.asarray(mask, jnp.float32)
            ),
            self.mesh,
        )

    def _compact(self, keep: np.ndarray) -> None:
        state, model = self.state, self.model
        collections = state.collections

        def shrink(params: PyTree) -> PyTree:
            return model.compact({"params": params, **collections}, keep)[1]["params"]

        small_model, variables = model.compact({"params": state.params, **collections}, keep)
        variables = dict(variables)
        params = variables.pop("params")
        opt_state = map_param_subtrees(state.opt_state, state.params, shrink)
        if self.rewind is not None:
            self.rewind = (
                shrink(self.rewind[0]),
                map_param_subtrees(self.rewind[1], state.params, shrink),
            )
        gates = jnp.ones((int(keep.sum()),), jnp.float32)
        self.state = replicate(
            TrainState(state.step, params, variables, opt_state, gates), self.mesh
        )
        self.compactions.append([bool(k) for k in keep])
        self._bind(small_model)
        self._refresh_groups()

    # -- analysis ----------------------------------------------------------------------------
    def _analysis_fn(self) -> Any:
        """Jitted ``(params, mask, collections, gates, probe, key) -> (kernel, trace)``, built
        once per model binding: the NTK of the pruned model (``f(m * w)``, so only kept weights
        contribute tangents) and the Hutchinson trace of its loss Hessian on the probe batch."""
        model, loss_fn, num_probes = self.model, self.loss_fn, self.config.analysis_probes
        projections = self.config.analysis_projections

        def analysis(params, mask, collections, gates, probe, key):
            def apply_fn(p: PyTree, x: jax.Array) -> jax.Array:
                variables = {"params": apply_mask(p, mask), **collections}
                return model.apply(variables, x, train=False, gates=gates)[0]

            def loss(p: PyTree) -> jax.Array:
                return loss_fn(apply_mask(p, mask), collections, gates, probe, key, False)[0]

            kernel_fn = apply_fn
            if projections is not None:
                kernel_fn = sketch_outputs(apply_fn, params, probe["x"], key, projections)
            kernel = empirical_ntk(kernel_fn, params, probe["x"])
            return kernel, hessian_trace(loss, params, key, num_probes=num_probes).estimate

        return jax.jit(analysis)

    def analysis(self, step: int) -> dict[str, float]:
        with self.timer.phase("analysis"):
            state = self.state
            if isinstance(state.opt_state, MaskedState):
                mask = state.opt_state.mask
            else:
                mask = jax.tree_util.tree_map(jnp.ones_like, state.params)
            probe = self.task.prepare(
                {k: jnp.asarray(v) for k, v in self.probe.items()}, self.key_for(_PROBE)
            )
            kernel, trace = self.analysis_fn(
                *_to_host((state.params, mask, state.collections, state.gates)),
                probe,
                jax.random.fold_in(self.key_for(_ANALYSIS), step),
            )
            features = spectrum_features(np.asarray(kernel), dtype=np.float64)
            return {
                "ntk_lambda_max": float(features.lambda_max),
                "ntk_lambda_min": float(features.lambda_min),
                "ntk_condition": float(features.condition_number),
                "hessian_trace": float(trace),
            }

    def test_metrics(self) -> dict[str, float]:
        with self.timer.phase("eval"):
            return evaluate(
                self.eval_step,
                self.state,
                self.splits.test,
                batch_size=self.config.eval_batch_size,
                key=self.key_for(_EVAL),
                mesh=self.mesh,
                task=self.splits.task,
            )


def _event_loss(loss_fn: Callable) -> Callable:
    """``(collections, gates, key, params, batch) -> loss``: training-mode loss of the gated model,
    one function per model binding, so events bind their state with ``Partial`` and methods
    that compile (PL gating) compile once per model."""

    def loss(collections: PyTree, gates: Any, key: jax.Array, params: PyTree, batch: dict):
        return loss_fn(params, collections, gates, batch, key, True)[0]

    return loss


def _event_apply(model: Bound) -> Callable:
    """``(collections, gates, params, x) -> outputs`` of the gated model in evaluation mode."""

    def apply(collections: PyTree, gates: Any, params: PyTree, x: jax.Array) -> jax.Array:
        return model.apply({"params": params, **collections}, x, train=False, gates=gates)[0]

    return apply


def _group_sparsity(state: TrainState, num_groups0: int | None) -> float:
    if num_groups0 is None or state.gates is None:
        return 0.0
    return 1.0 - float(np.sum(np.asarray(state.gates))) / num_groups0


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
      resume: continue from the newest checkpoint in ``run_dir`` if there is one.

    Returns:
      :class:`RunResult`.
    """
    run_dir = None if run_dir is None else Path(run_dir)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(model, splits, optimizer, config, pruner, run_dir)
    start = run.restore() if resume else 0
    run.state = replicate(run.state, run.mesh)
    writer = run_dir is not None and jax.process_index() == 0
    logger = None
    if writer:
        logger = MetricsLogger(
            run_dir, resume_step=start if start else None, tensorboard=config.tensorboard
        )
    rows: list[dict] = [] if logger is None else logger.rows

    pending: dict[str, Any] = {}

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

    step_key = run.key_for(_STEPS)
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
                row.update({f"{k}_before_event": v for k, v in run.analysis(step).items()})
            if event:
                run.prune_event(step)
                row["group_sparsity"] = _group_sparsity(run.state, run.num_groups0)
            if config.analysis_every and (event or step % config.analysis_every == 0):
                row.update(run.analysis(step))
            if row:
                log(step, row)
            if schedule is not None and schedule.rewind_step == step:
                run.rewind = jax.tree_util.tree_map(
                    jnp.copy, (run.state.params, run.state.opt_state)
                )
            batch, run.position = next(batches)
            run.state, metrics = run.train_step(run.state, shard_batch(batch, run.mesh), step_key)
            pending_metrics.append(metrics)
            done = step + 1
            row = {}
            if done % config.log_every == 0 or done == config.num_steps:
                run.add_to_window(pending_metrics)
                pending_metrics = []
                means = summarize_metrics(
                    _to_host({k: tuple(v) for k, v in run.window.items()}), splits.task
                )
                row.update({f"train_{k}": v for k, v in means.items()})
                run.window = {}
                bar.set_postfix(loss=f"{means['loss']:.4g}")
            last = done == config.num_steps
            if last or (config.eval_every and done % config.eval_every == 0):
                row.update({f"test_{k}": v for k, v in run.test_metrics().items()})
                row["weight_sparsity"] = _weight_sparsity(_to_host(run.state.params))
            if last and config.analysis_every:
                row.update(run.analysis(done))
            if row:
                log(done, row)
            if config.checkpoint_every and done % config.checkpoint_every == 0:
                run.add_to_window(pending_metrics)
                pending_metrics = []
                run.save(done)
            bar.update(1)
        flush()
    finally:
        bar.close()
        batches.close()
    if logger is not None:
        logger.close()
    final = rows[-1] if rows and rows[-1]["step"] == config.num_steps else {}
    seconds = run.timer.seconds
    wall = run.wall_seconds()
    summary = {
        **{k: v for k, v in final.items() if k != "step"},
        "steps": config.num_steps,
        "group_sparsity": _group_sparsity(run.state, run.num_groups0),
        "weight_sparsity": _weight_sparsity(_to_host(run.state.params)),
        "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(run.state.params))),
        "wall_seconds": wall,
        "event_seconds": seconds["events"],
        "analysis_seconds": seconds["analysis"],
        "event_share": seconds["events"] / wall,
        "analysis_share": seconds["analysis"] / wall,
        "devices": int(run.mesh.devices.size),
    }
    if writer:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        curves = ("train_loss", "test_loss", "ntk_condition", "hessian_trace")
        plot_curves(run_dir, [k for k in curves if any(k in r for r in rows)])
    state = jax.device_get(_to_host(run.state))
    return RunResult(state, run.model, list(rows), run.events, summary)
