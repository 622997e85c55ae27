"""``jaxprune experiment greedy_cnn``: Table 1 of Wolfe et al. (2023), how much pre-training a
CNN needs before greedy channel selection finds a subnetwork as good as the dense model.

For each model (MobileNetV2 and ResNet-34 of the zoo), seed and class-balanced sub-dataset size,
the dense network is pre-trained with SGD with momentum, a cosine learning-rate decay from
``lr`` over the whole pre-training, weight decay and batch size ``batch_size`` (Sec. 6.2); at
every iteration of ``prune_at`` the current dense network is pruned by greedy forward selection
of channels (:func:`~jaxprune.methods.greedy.greedy_channel_selection`, layer by layer, each
layer until its loss is within ``eps`` of the unpruned one, reading GS-11; or, with
``keep_fraction``, a fixed share of every layer's channels), the subnetwork is
fine-tuned for ``finetune_steps`` iterations (cosine from ``finetune_lr``; as the gated dense
model, which trains the compacted one exactly, reading GS-19), and its test accuracy is
recorded with the FLOPs and parameters of the compacted model relative to the dense one.  The
dense model's test accuracy is recorded at every prune point and at the end of pre-training.

The table reports, per model and size, the pruned test accuracy at each prune point (mean ± sd
over the seeds, which pair the initialization, data order and sub-dataset across prune points),
the dense accuracy after the whole pre-training, and the first prune point whose pruned mean
reaches that dense accuracy less ``match_tolerance`` (the paper's bold entries, reading GS-18).
It states from the data whether that first prune point grows with the dataset size.  Writes
``table.md``, ``results.json`` and ``table1.png`` (pruned accuracy against pre-training, one
panel per model, one line per size).

Presets: ``smoke`` (seconds), ``small`` (the built-in digits at CIFAR's 32×32×3, ``digits32``,
CPU-tiny widths, 16 random candidates per greedy step as Ye et al.; 48 minutes on two CPU
cores, ``--set dataset=digits_image`` runs the 8×8 digits instead), ``paper``
(CIFAR-10 through tensorflow-datasets, sizes 10K/30K/50K, 20K–80K iterations, ε = 0.02 for
MobileNetV2 and 0.05 for ResNet-34, 2,500 fine-tuning iterations).  :data:`IMAGENET_TABLE2` is
the Table 2 configuration (ImageNet, 150 epochs pruned every 50, 80 fine-tuning epochs), run
from Python with ``EXPERIMENT.run(IMAGENET_TABLE2, out_dir, True)``.

References:
  Wolfe et al. (2023), Sec. 6.2 (Tables 1 and 2, the three-stage protocol, hyper-parameters),
  App. D (Algorithm 2, the ε grid); readings GS-3, GS-11, GS-18, GS-19 (docs/readings.md).
  Ye et al. (2020) (layer-wise greedy selection of channels for MobileNetV2 and ResNet-34).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_choice, check_int, check_positive_int, check_real
from jaxprune.compile_cache import release_compiled_programs
from jaxprune.data import DataConfig, load_dataset
from jaxprune.experiments import Experiment
from jaxprune.experiments.finished_runs import load_finished, run_key, save_finished
from jaxprune.experiments.greedy_pretraining import stratified_subsets
from jaxprune.experiments.settings import check_seeds
from jaxprune.methods.greedy import CHANNEL_CRITERIA, greedy_channel_selection
from jaxprune.train import build_model
from jaxprune.train.steps import TrainState, make_eval_step, make_train_step
from jaxprune.train.tasks import accumulate_metrics, make_task, summarize_metrics
from jaxprune.train.zoo import Bound

__all__ = [
    "EXPERIMENT",
    "IMAGENET_TABLE2",
    "GreedyCNNSettings",
    "first_match",
    "run_greedy_cnn",
]


@dataclasses.dataclass(frozen=True)
class GreedyCNNSettings:
    """One Table 1 run (each field is ``--set field=value``).

    Attributes:
      models: zoo model names, e.g. ``("mobilenet_v2", "resnet34")``.
      presets: one zoo preset per model.
      eps: one stopping tolerance ε per model (Sec. 6.2: 0.02 for MobileNetV2, 0.05 for
        ResNet-34).
      criterion: the layer's stopping rule, one of ``CHANNEL_CRITERIA`` (reading GS-11).
      dataset: a :func:`~jaxprune.data.load_dataset` name of images (``digits32``,
        ``tfds:cifar10``).
      data_dir: TFDS data directory (``tfds:`` datasets).
      sizes: class-balanced sub-dataset sizes of the training split (nested across sizes).
      prune_at: pre-training iterations at which the dense model is pruned, increasing; the
        last one is the length of pre-training.
      finetune_steps: fine-tuning iterations of each subnetwork.
      batch_size: minibatch size of pre-training, fine-tuning and the greedy steps.
      lr: initial pre-training learning rate (cosine decay over ``prune_at[-1]`` iterations).
      finetune_lr: initial fine-tuning learning rate (cosine decay over ``finetune_steps``).
      momentum: SGD momentum.
      weight_decay: decoupled weight decay of pre-training and fine-tuning.
      max_candidates: candidates scored per greedy step (Ye et al.'s random subset); ``None``
        scores all.
      keep_fraction: a fixed budget in ``(0, 1)`` instead of ``eps``: every layer keeps this
        share of its channels (rounded, at least one), so the subnetwork's size does not depend on
        how long the dense model was pre-trained; ``None`` (the paper's protocol): each layer
        stops on ``eps``.
      match_tolerance: a prune point "matches" when its pruned mean accuracy is at least the
        final dense mean less this (reading GS-18).
      seeds: paired seeds (initialization, data order, sub-datasets).
    """

    models: tuple[str, ...] = ("mobilenet_v2", "resnet34")
    presets: tuple[str, ...] = ("mobilenet_v2-tiny", "resnet34-tiny")
    eps: tuple[float, ...] = (0.02, 0.05)
    criterion: str = "relative"
    dataset: str = "digits32"
    data_dir: str | None = None
    sizes: tuple[int, ...] = (320, 640, 1280)
    prune_at: tuple[int, ...] = (50, 100, 200, 400)
    finetune_steps: int = 50
    batch_size: int = 64
    lr: float = 0.1
    finetune_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_candidates: int | None = None
    keep_fraction: float | None = None
    match_tolerance: float = 0.005
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models: expected at least one model name")
        for field in ("presets", "eps"):
            if len(getattr(self, field)) != len(self.models):
                raise ValueError(
                    f"{field}: expected one entry per model ({len(self.models)}: {self.models}), "
                    f"got {getattr(self, field)!r}"
                )
        for i, value in enumerate(self.eps):
            check_real(value, f"eps[{i}]", minimum=0.0)
        check_choice(self.criterion, CHANNEL_CRITERIA, "criterion")
        if not self.sizes or any(b <= a for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"sizes: expected strictly increasing sizes, got {self.sizes!r}")
        for i, size in enumerate(self.sizes):
            check_positive_int(size, f"sizes[{i}]")
        if not self.prune_at or any(b <= a for a, b in zip(self.prune_at, self.prune_at[1:])):
            raise ValueError(
                f"prune_at: expected strictly increasing iterations, got {self.prune_at!r}"
            )
        for i, step in enumerate(self.prune_at):
            check_int(step, f"prune_at[{i}]", minimum=0)
        check_int(self.finetune_steps, "finetune_steps", minimum=0)
        check_positive_int(self.batch_size, "batch_size")
        for field in ("lr", "finetune_lr"):
            check_real(getattr(self, field), field, minimum=0.0, strict=True)
        check_real(self.momentum, "momentum", minimum=0.0, maximum=1.0)
        check_real(self.weight_decay, "weight_decay", minimum=0.0)
        if self.max_candidates is not None:
            check_positive_int(self.max_candidates, "max_candidates")
        if self.keep_fraction is not None:
            check_real(self.keep_fraction, "keep_fraction", minimum=0.0, maximum=1.0, strict=True)
        check_real(self.match_tolerance, "match_tolerance", minimum=0.0)
        check_seeds(self.seeds)


PRESETS = {
    "smoke": GreedyCNNSettings(
        models=("resnet34",),
        presets=("resnet34-tiny",),
        eps=(0.05,),
        dataset="digits_image",
        sizes=(100, 200),
        prune_at=(5, 10),
        finetune_steps=3,
        batch_size=32,
        seeds=(0,),
    ),
    "small": GreedyCNNSettings(max_candidates=16),
    "paper": GreedyCNNSettings(
        presets=("mobilenet_v2-cifar", "resnet34-cifar"),
        dataset="tfds:cifar10",
        sizes=(10_000, 30_000, 50_000),
        prune_at=(20_000, 40_000, 60_000, 80_000),
        finetune_steps=2_500,
        batch_size=128,
        seeds=(0, 1, 2),
    ),
}

IMAGENET_TABLE2 = dataclasses.replace(
    PRESETS["paper"],
    presets=("mobilenet_v2", "resnet34"),
    dataset="tfds:imagenet2012",
    sizes=(1_281_167,),
    prune_at=(500_450, 1_000_900, 1_501_350),
    finetune_steps=800_720,
    seeds=(0,),
)
"""Table 2 of Wolfe et al. (2023): ImageNet (1,281,167 training images), batch 128, 150
epochs (10,009 iterations each) pruned at 50, 100 and 150 epochs, 80 fine-tuning epochs, ε =
0.02 / 0.05 (the 40% FLOP reduction; ε = 0.05 / 0.08 gives the 60% one)."""


def first_match(
    pruned: np.ndarray, dense: float, prune_at: tuple[int, ...], tolerance: float
) -> int | None:
    """The first prune point whose pruned accuracy is at least ``dense − tolerance`` (the
    paper's bold entry, reading GS-18), or ``None`` when none is.

    Args:
      pruned: ``(len(prune_at),)`` mean pruned accuracies.
      dense: the dense model's accuracy after the whole pre-training.
      prune_at: the prune points.
      tolerance: accuracy the pruned model may lose.
    """
    reached = np.flatnonzero(np.asarray(pruned) >= dense - tolerance)
    return int(prune_at[reached[0]]) if reached.size else None


@functools.lru_cache(maxsize=16)
def _sgd(lr: float, steps: int, settings: GreedyCNNSettings) -> optax.GradientTransformation:
    """SGD with momentum, cosine decay from ``lr`` over ``steps`` and decoupled weight decay
    (one object per configuration, so compiled steps are reused across prune points)."""
    schedule = optax.cosine_decay_schedule(lr, max(steps, 1))
    return optax.chain(
        optax.add_decayed_weights(settings.weight_decay),
        optax.sgd(schedule, momentum=settings.momentum),
    )


def _minibatches(
    data: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator
) -> Iterator[dict[str, jax.Array]]:
    """Endless minibatches: a fresh permutation of ``data`` every epoch, the last partial batch
    of an epoch dropped (every batch has ``batch_size`` examples, so one program compiles)."""
    n = len(data["y"])
    size = min(batch_size, n)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - size + 1, size):
            idx = order[start : start + size]
            yield {k: jnp.asarray(v[idx]) for k, v in data.items()}


@functools.lru_cache(maxsize=16)
def _eval_step(model: Bound, task) -> Any:
    return jax.jit(make_eval_step(model, task))


@functools.lru_cache(maxsize=16)
def _train_step(model: Bound, task, optimizer: optax.GradientTransformation) -> Any:
    return jax.jit(make_train_step(model, task, optimizer))


def _accuracy(model: Bound, state: TrainState, data: dict, task, batch_size: int) -> float:
    """Test accuracy over every example of ``data``; the last batch is padded with ``valid =
    0`` rows, so one program compiles per model."""
    eval_step = _eval_step(model, task)
    totals: dict = {}
    n = len(data["y"])
    for start in range(0, n, batch_size):
        index = np.arange(start, start + batch_size)
        valid = index < n
        batch = {k: jnp.asarray(v[np.where(valid, index, 0)]) for k, v in data.items()}
        batch["valid"] = jnp.asarray(valid, jnp.float32)
        totals = accumulate_metrics(totals, [eval_step(state, batch, jax.random.key(0))])
    return summarize_metrics(totals, "classification")["accuracy"]


def _train(
    model: Bound,
    state: TrainState,
    optimizer: optax.GradientTransformation,
    batches: Iterator[dict],
    steps: int,
    task,
) -> TrainState:
    step = _train_step(model, task, optimizer)
    key = jax.random.key(0)
    for _ in range(steps):
        state, _ = step(state, next(batches), key)
    return state


def _variables(state: TrainState) -> dict:
    return {"params": state.params, **state.collections}


def _num_params(params: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


def _prune_point(
    model: Bound,
    state: TrainState,
    settings: GreedyCNNSettings,
    eps: float,
    sub: dict,
    test: dict,
    task,
    rng: np.random.Generator,
    key: jax.Array,
) -> dict:
    """Greedy selection on ``state``, fine-tuning of the subnetwork, and its figures."""
    shape = tuple(sub["x"].shape[1:])
    budgets = None
    if settings.keep_fraction is not None:
        _, layout = model.group_ids(state.params)
        budgets = [
            max(1, round(settings.keep_fraction * len(layout.groups_in_layer(layer))))
            for layer in range(layout.num_layers)
        ]
    start = time.perf_counter()
    selection = greedy_channel_selection(
        model,
        _variables(state),
        _minibatches(sub, settings.batch_size, rng),
        eps=eps if budgets is None else None,
        keep_per_layer=budgets,
        criterion=settings.criterion,
        max_candidates=settings.max_candidates,
        key=key,
    )
    select_seconds = time.perf_counter() - start
    # Fine-tune the gated model: with its gates at 0 a pruned channel gets zero gradient and
    # contributes nothing, so this trains exactly the compacted subnetwork (the tests check
    # compacted == gated) while every prune point reuses one compiled step.
    gates = jnp.asarray(selection.mask, jnp.float32)
    optimizer = _sgd(settings.finetune_lr, settings.finetune_steps, settings)
    pruned = TrainState(
        jnp.zeros((), jnp.int32),
        state.params,
        state.collections,
        optimizer.init(state.params),
        gates,
    )
    pruned = _train(
        model,
        pruned,
        optimizer,
        _minibatches(sub, settings.batch_size, rng),
        settings.finetune_steps,
        task,
    )
    small = selection.model
    return {
        "pruned_accuracy": _accuracy(model, pruned, test, task, 256),
        "dense_accuracy": _accuracy(model, state, test, task, 256),
        "kept": int(np.sum(selection.mask)),
        "groups": int(np.size(selection.mask)),
        "flops_ratio": small.flops(shape) / model.flops(shape),
        "params_ratio": _num_params(selection.variables["params"]) / _num_params(state.params),
        "select_seconds": select_seconds,
    }


def _run_one(settings, index: int, seed: int, size_index: int, splits, subsets, progress, t0):
    name, preset, eps = settings.models[index], settings.presets[index], settings.eps[index]
    train, test = splits.train, splits.test
    sub = {k: v[subsets[size_index]] for k, v in train.items()}
    shape = tuple(train["x"].shape[1:])
    model = build_model(name, num_outputs=splits.num_outputs, input_shape=shape, preset=preset)
    task = make_task(splits.task, num_outputs=splits.num_outputs, info=splits.info)
    rng = np.random.default_rng([seed, size_index])
    optimizer = _sgd(settings.lr, settings.prune_at[-1], settings)
    variables = dict(model.init(jax.random.key(seed), jnp.asarray(train["x"][:1])))
    params = variables.pop("params")
    state = TrainState(jnp.zeros((), jnp.int32), params, variables, optimizer.init(params), None)
    batches = _minibatches(sub, settings.batch_size, rng)
    points, done = [], 0
    for point in settings.prune_at:
        state = _train(model, state, optimizer, batches, point - done, task)
        done = point
        figures = _prune_point(
            model,
            state,
            settings,
            eps,
            sub,
            test,
            task,
            np.random.default_rng([seed, size_index, point]),
            jax.random.fold_in(jax.random.key(seed), point),
        )
        points.append({"iteration": point, **figures})
        if progress:
            print(
                f"{name}, seed {seed}, size {len(subsets[size_index])}, iteration {point}: "
                f"pruned {figures['pruned_accuracy']:.4f}, dense {figures['dense_accuracy']:.4f}, "
                f"FLOPs {figures['flops_ratio']:.2f}, kept {figures['kept']}/{figures['groups']} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return {
        "model": name,
        "seed": seed,
        "size": len(subsets[size_index]),
        "points": points,
        "final_dense_accuracy": points[-1]["dense_accuracy"],
    }


def _summaries(settings: GreedyCNNSettings, records: list[dict]) -> list[dict]:
    rows = []
    for name in settings.models:
        for size in sorted({r["size"] for r in records}):
            runs = [r for r in records if r["model"] == name and r["size"] == size]
            pruned = np.array([[p["pruned_accuracy"] for p in r["points"]] for r in runs])
            flops = np.array([[p["flops_ratio"] for p in r["points"]] for r in runs])
            dense = np.array([r["final_dense_accuracy"] for r in runs])
            mean = pruned.mean(axis=0)
            rows.append(
                {
                    "model": name,
                    "size": size,
                    "pruned_mean": mean.tolist(),
                    "pruned_sd": pruned.std(axis=0, ddof=1).tolist() if len(runs) > 1 else None,
                    "flops_mean": flops.mean(axis=0).tolist(),
                    "dense_mean": float(dense.mean()),
                    "dense_sd": float(dense.std(ddof=1)) if len(runs) > 1 else None,
                    "first_match": first_match(
                        mean, float(dense.mean()), settings.prune_at, settings.match_tolerance
                    ),
                }
            )
    return rows


def _claims(settings: GreedyCNNSettings, rows: list[dict]) -> dict[str, Any]:
    claims = {}
    for name in settings.models:
        matches = [r["first_match"] for r in rows if r["model"] == name]
        never = math.inf
        values = [never if m is None else m for m in matches]
        claims[name] = {
            "first_match_by_size": matches,
            "more_data_needs_more_pretraining": bool(
                all(b >= a for a, b in itertools.pairwise(values)) and values[-1] > values[0]
            ),
        }
    return claims


def _budget(settings: GreedyCNNSettings) -> str:
    """How the subnetworks' size is chosen, in words."""
    if settings.keep_fraction is not None:
        return f"a fixed {settings.keep_fraction:g} of every layer's channels kept"
    return f"ε = {settings.eps} ({settings.criterion})"


def _table(settings: GreedyCNNSettings, rows: list[dict], claims: dict, seconds: float) -> str:
    sd = "± sd " if len(settings.seeds) > 1 else ""
    head = " | ".join(f"{p} it." for p in settings.prune_at)
    lines = [
        "# Greedy channel selection after pre-training (Wolfe et al. 2023, Table 1)",
        "",
        f"Dataset {settings.dataset}; models {', '.join(settings.models)} "
        f"({', '.join(settings.presets)}), {_budget(settings)}; "
        f"seeds {list(settings.seeds)}; fine-tuning {settings.finetune_steps} iterations; "
        f"{seconds:.0f} s. Pruned test accuracy mean {sd}over seeds; **bold**: the first "
        f"prune point within {settings.match_tolerance} of the final dense accuracy.",
        "",
        f"| model | size | {head} | dense (final) | FLOPs kept |",
        "|---|---|" + "---|" * len(settings.prune_at) + "---|---|",
    ]
    for row in rows:
        cells = []
        for i, point in enumerate(settings.prune_at):
            text = f"{row['pruned_mean'][i]:.4f}"
            if row["pruned_sd"] is not None:
                text += f" ± {row['pruned_sd'][i]:.4f}"
            cells.append(f"**{text}**" if row["first_match"] == point else text)
        dense = f"{row['dense_mean']:.4f}"
        if row["dense_sd"] is not None:
            dense += f" ± {row['dense_sd']:.4f}"
        flops = ", ".join(f"{v:.2f}" for v in row["flops_mean"])
        lines.append(
            f"| {row['model']} | {row['size']} | {' | '.join(cells)} | {dense} | {flops} |"
        )
    lines += ["", "Claims, from these figures:"]
    for name, claim in claims.items():
        matches = ["never" if m is None else str(m) for m in claim["first_match_by_size"]]
        verdict = "holds" if claim["more_data_needs_more_pretraining"] else "does not hold"
        lines.append(
            f"- {name}: first matching prune point by size {matches}; 'more data needs more "
            f"pre-training' {verdict} here."
        )
    return "\n".join(lines) + "\n"


#: Zoo model name -> its name in the plot (others are shown as they are).
_MODEL_NAMES = {"mobilenet_v2": "MobileNetV2", "resnet34": "ResNet-34"}


def _plot(settings: GreedyCNNSettings, rows: list[dict], path: Path) -> None:
    """Save ``table1.png``: per model (columns), the fine-tuned pruned test accuracy against
    the pre-training iterations before pruning, one colour per sub-dataset size (mean ± sd over
    seeds shaded; dashed: the dense accuracy after the whole pre-training; star: the first
    matching prune point), and below it the pruned network's FLOPs relative to dense."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(7.0, 5.5 * len(settings.models)), 8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(settings.models), squeeze=False, sharex="col")
    prune_at = np.asarray(settings.prune_at)
    for column, name in enumerate(settings.models):
        accuracy, flops = axes[:, column]
        for i, row in enumerate(r for r in rows if r["model"] == name):
            color = f"C{i}"
            mean = np.array(row["pruned_mean"])
            accuracy.plot(prune_at, mean, "o-", color=color, label=f"m = {row['size']}")
            if row["pruned_sd"] is not None:
                sd = np.array(row["pruned_sd"])
                accuracy.fill_between(prune_at, mean - sd, mean + sd, color=color, alpha=0.2)
            accuracy.axhline(row["dense_mean"], color=color, ls="--", lw=0.8)
            if row["first_match"] is not None:
                at = settings.prune_at.index(row["first_match"])
                accuracy.plot(prune_at[at], mean[at], "*", color=color, ms=14, mec="k")
            flops.plot(prune_at, row["flops_mean"], "o-", color=color, label=f"m = {row['size']}")
        accuracy.plot([], [], "k--", lw=0.8, label="dense, after all pre-training")
        accuracy.plot(
            [],
            [],
            "k*",
            ms=10,
            ls="none",
            label=f"first within {settings.match_tolerance:g} of dense",
        )
        accuracy.set(
            ylabel="pruned test accuracy after fine-tuning\n(fraction correct)",
            title=f"{_MODEL_NAMES.get(name, name)}: accuracy of the pruned network",
        )
        flops.set(
            xlabel="pre-training iterations before pruning",
            ylabel="FLOPs of the pruned network\n(fraction of dense)",
            title=f"{_MODEL_NAMES.get(name, name)}: cost of the pruned network",
        )
        flops.set_xticks(prune_at, [str(t) for t in settings.prune_at])
        for ax in (accuracy, flops):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    seeds = len(settings.seeds)
    spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "1 seed"
    figure.suptitle(
        f"Greedy channel selection after pre-training on {settings.dataset}\n"
        f"{settings.finetune_steps} fine-tuning iterations, {spread} (Wolfe et al. 2023, Table 1)"
    )
    figure.savefig(path, dpi=120)


def run_greedy_cnn(settings: GreedyCNNSettings, out_dir: Path, progress: bool = True) -> dict:
    """Run Table 1 with ``settings``; writes ``table.md``, ``results.json`` and ``table1.png``.

    Each (model, seed, size) run leaves its figures in ``out_dir/runs/``; running the same
    settings and jaxprune source into the same ``out_dir`` again reuses the runs that finished
    (:mod:`~jaxprune.experiments.finished_runs`), so an interrupted experiment resumes.

    Returns:
      ``{"table": markdown, "rows": per model and size, "claims": ..., "records": per run}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = load_dataset(DataConfig(name=settings.dataset, data_dir=settings.data_dir))
    if splits.task != "classification" or np.ndim(splits.train["x"]) != 4:
        raise ValueError(
            f"dataset: expected images for classification, got {settings.dataset!r} "
            f"({splits.task}, inputs of shape {np.shape(splits.train['x'])[1:]})"
        )
    records = []
    for seed in settings.seeds:
        subsets = stratified_subsets(splits.train["y"], settings.sizes, np.random.default_rng(seed))
        for index, name in enumerate(settings.models):
            for size_index, size in enumerate(settings.sizes):
                path = out_dir / "runs" / f"{name}_m{size}_seed{seed}.json"
                key = run_key(
                    {
                        "settings": dataclasses.asdict(settings),
                        "model": index,
                        "seed": seed,
                        "size": size_index,
                    }
                )
                record = load_finished(path, key)
                if record is None:
                    record = _run_one(
                        settings, index, seed, size_index, splits, subsets, progress, t0
                    )
                    save_finished(path, key, record)
                    release_compiled_programs()  # compacted shapes differ per run
                elif progress:
                    print(f"{name}, seed {seed}, size {size}: finished earlier, reused", flush=True)
                records.append(record)
    rows = _summaries(settings, records)
    claims = _claims(settings, rows)
    table = _table(settings, rows, claims, time.perf_counter() - t0)
    (out_dir / "table.md").write_text(table)
    result = {
        "settings": dataclasses.asdict(settings),
        "rows": rows,
        "claims": claims,
        "records": records,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2))
    _plot(settings, rows, out_dir / "table1.png")
    return {"table": table, **result}


EXPERIMENT = Experiment(
    name="greedy_cnn",
    description=(
        "Wolfe et al. (2023) Table 1: pre-train MobileNetV2 / ResNet-34, prune by greedy "
        "channel selection at several pre-training amounts, fine-tune and evaluate, over "
        "sub-dataset sizes; does more data need more pre-training?"
    ),
    presets=PRESETS,
    run=run_greedy_cnn,
)
