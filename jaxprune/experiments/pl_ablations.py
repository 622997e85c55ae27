"""Ablations of PL-gating pruning (paper 000, Appendix F.3-F.4 and the ERRATA's open choices).

Every variant changes one factor of a base PL run (one-shot at ``base_epoch``, ratio
``base_ratio``, gate scaling ``"mean_one"``, ``α = 1``) and is compared with dense training at
the same initialization and data order:

* pruning time: one-shot at each of ``prune_epochs`` (Table 8: epochs 0, 5, 50);
* schedule: one-shot vs linear, the same number of groups pruned at each of ``linear_epochs``
  consecutive epochs from ``base_epoch`` (Table 9);
* ratio: each of ``ratios`` (Tables 10-11: 50% and 90%);
* gate scaling: ``"mean_one"`` (``p·softmax``) vs the literal softmax of eq. 8 (ERRATA);
* ``α`` of eq. 36: each of ``alphas`` (0: gating trained on the loss alone);
* TopK: over all groups (``"global"``, the paper's, one group per layer protected) vs within
  every layer (``"per_layer"``: the same fraction of each layer kept).

Tables: training loss (or PPL for MLM) at ``report_steps``, the test metric and its difference
to dense, wall time; one table per factor, each with the dense and base rows.

References:
  Paper 000, Appendix F.3 (Tables 8-9), F.4 (Tables 10-11), Section 3.2 (eq. 8), Appendix E.2
  (eq. 36, Algorithm 2); ERRATA for paper 000 (gate scaling).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import optax

from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import (
    comparison_table,
    load_splits,
    plot_comparison,
    run_comparison,
    test_metric_name,
    write_results,
)
from jaxprune.masks import PruningSchedule, linear, one_shot
from jaxprune.methods import pl_gating
from jaxprune.train import Pruner, TrainConfig, build_model, pl_gating_pruner

__all__ = ["EXPERIMENT", "PLAblationConfig", "Variant", "run_pl_ablations", "variants"]

BASE = "base"
FACTORS = ("time", "schedule", "ratio", "scaling", "alpha", "topk")
TOPKS = ("global", "per_layer")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One PL run of the ablation: ``factor`` names the table it belongs to."""

    factor: str
    epoch: int
    ratio: float
    schedule: str = "one-shot"
    scaling: str = "mean_one"
    alpha: float = 1.0
    topk: str = "global"


@dataclasses.dataclass(frozen=True)
class PLAblationConfig:
    """Settings of the ablations (each is ``--set field=value`` on the command line).

    Attributes:
      dataset, model, model_preset: what is trained (registry names; MLM datasets use
        ``seq_len``, ``vocab_size``, ``max_chars``).
      base_epoch, base_ratio: the base run's one-shot epoch and pruned fraction.
      prune_epochs: one-shot epochs compared (Table 8).
      linear_epochs: epochs of the linear schedule (Table 9; 0: no linear variant).
      ratios: pruned fractions compared, each in ``(0, 1)`` (Tables 10-11).
      scalings: gate scalings compared (``"mean_one"``, ``"softmax"``).
      alphas: ``α`` values compared, each ``>= 0``.
      topks: TopK scopes compared (``"global"``, ``"per_layer"``).
      steps_per_epoch: training steps per "epoch".
      num_steps, batch_size, learning_rate: Adam training.
      report_steps: steps of the training-loss columns.
      seeds: one run per seed and variant.
      gating_steps, feature_batch_size, output_projections: PL gating (Algorithm 2).
    """

    dataset: str = "digits"
    model: str = "mlp"
    model_preset: str = "256,256"
    seq_len: int = 32
    vocab_size: int = 500
    max_chars: int | None = 100_000
    base_epoch: int = 5
    base_ratio: float = 0.75
    prune_epochs: tuple[int, ...] = (0, 5, 50)
    linear_epochs: int = 10
    ratios: tuple[float, ...] = (0.5, 0.75, 0.9)
    scalings: tuple[str, ...] = ("mean_one", "softmax")
    alphas: tuple[float, ...] = (0.0, 1.0, 10.0)
    topks: tuple[str, ...] = TOPKS
    steps_per_epoch: int = 10
    num_steps: int = 800
    batch_size: int = 64
    learning_rate: float = 1e-3
    report_steps: tuple[int, ...] = (200, 400, 800)
    seeds: tuple[int, ...] = (0, 1, 2)
    gating_steps: int = 20
    feature_batch_size: int = 32
    output_projections: int | None = None

    def __post_init__(self) -> None:
        for name in ("steps_per_epoch", "num_steps", "batch_size", "gating_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        bad = [r for r in (self.base_ratio, *self.ratios) if not 0.0 < r < 1.0]
        if bad:
            raise ValueError(f"ratios: expected fractions in (0, 1), got {bad}")
        epochs = (self.base_epoch, *self.prune_epochs)
        late = [e for e in epochs if not 0 <= e * self.steps_per_epoch < self.num_steps]
        if late:
            raise ValueError(
                f"prune_epochs: epochs {late} x steps_per_epoch {self.steps_per_epoch} are not "
                f"steps in [0, num_steps={self.num_steps})"
            )
        last = (self.base_epoch + self.linear_epochs - 1) * self.steps_per_epoch
        if self.linear_epochs < 0 or (self.linear_epochs and last >= self.num_steps):
            raise ValueError(
                f"linear_epochs: {self.linear_epochs} epochs from epoch {self.base_epoch} end at "
                f"step {last}, expected an int >= 0 ending before num_steps={self.num_steps}"
            )
        unknown = [s for s in self.scalings if s not in pl_gating.SCALINGS]
        if unknown:
            raise ValueError(f"scalings: got {unknown}, expected a subset of {pl_gating.SCALINGS}")
        unknown = [t for t in self.topks if t not in TOPKS]
        if unknown:
            raise ValueError(f"topks: got {unknown}, expected a subset of {TOPKS}")
        if any(not np.isfinite(a) or a < 0 for a in self.alphas):
            raise ValueError(f"alphas: expected finite values >= 0, got {self.alphas}")
        wrong = [s for s in self.report_steps if not 0 < s <= self.num_steps]
        if not self.report_steps or wrong:
            raise ValueError(f"report_steps: expected steps in (0, {self.num_steps}], got {wrong}")
        if not self.seeds:
            raise ValueError("seeds: expected at least one seed, got ()")


def variants(config: PLAblationConfig) -> dict[str, Variant]:
    """Name -> :class:`Variant`: the base run and one run per changed factor value."""
    base = Variant(BASE, config.base_epoch, config.base_ratio)
    runs = {BASE: base}
    for epoch in config.prune_epochs:
        runs.setdefault(f"epoch {epoch}", dataclasses.replace(base, factor="time", epoch=epoch))
    if config.linear_epochs:
        runs[f"linear {config.linear_epochs} epochs"] = dataclasses.replace(
            base, factor="schedule", schedule="linear"
        )
    for ratio in config.ratios:
        runs[f"ratio {ratio:.0%}"] = dataclasses.replace(base, factor="ratio", ratio=ratio)
    for scaling in config.scalings:
        runs[f"scaling {scaling}"] = dataclasses.replace(base, factor="scaling", scaling=scaling)
    for alpha in config.alphas:
        runs[f"alpha {alpha:g}"] = dataclasses.replace(base, factor="alpha", alpha=alpha)
    for topk in config.topks:
        runs[f"topk {topk}"] = dataclasses.replace(base, factor="topk", topk=topk)
    return {
        n: v for n, v in runs.items() if n == BASE or dataclasses.replace(v, factor=BASE) != base
    }


def _schedule(variant: Variant, config: PLAblationConfig) -> PruningSchedule:
    start = variant.epoch * config.steps_per_epoch
    if variant.schedule == "one-shot":
        return one_shot(start, variant.ratio)
    times = [start + i * config.steps_per_epoch for i in range(config.linear_epochs)]
    return linear(times, variant.ratio)


def _pruner(variant: Variant, config: PLAblationConfig) -> Pruner:
    gating = pl_gating.PLGatingConfig(
        scaling=variant.scaling,
        alpha=variant.alpha,
        gating_steps=config.gating_steps,
        feature_batch_size=config.feature_batch_size,
        output_projections=config.output_projections,
        per_layer=variant.topk == "per_layer",
    )
    return pl_gating_pruner(_schedule(variant, config), gating, seed=0)


def run_pl_ablations(config: PLAblationConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run dense training and every variant for every seed; write ``table.md``,
    ``results.json`` and ``pl_ablations.png``.

    Returns:
      ``{"table": str, "results": {run: {figure: [value per seed]}}, "variants": {...}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(config)
    model = build_model(
        config.model,
        num_outputs=splits.num_outputs,
        input_shape=splits.train["x"].shape[1:],
        preset=config.model_preset,
    )
    runs = variants(config)
    methods = {"dense": lambda: None}
    methods.update({name: functools.partial(_pruner, v, config) for name, v in runs.items()})
    results, curves = run_comparison(
        model,
        splits,
        methods,
        optimizer=lambda: optax.adam(config.learning_rate),
        config=TrainConfig(
            num_steps=config.num_steps,
            batch_size=config.batch_size,
            log_every=int(np.gcd.reduce([*config.report_steps, config.num_steps])),
            compact=True,
        ),
        seeds=config.seeds,
        report_steps=config.report_steps,
        out_dir=out_dir,
        progress=progress,
        settings=dataclasses.asdict(config),
    )
    metric = test_metric_name(splits.task)
    sections = []
    for factor in FACTORS:
        names = [n for n, v in runs.items() if v.factor == factor]
        if names:
            rows = {n: results[n] for n in ("dense", BASE, *names)}
            sections.append(
                f"**{factor}**\n\n" + comparison_table(rows, config.report_steps, metric)
            )
    base = runs[BASE]
    table = "\n\n".join(sections) + (
        f"\n\n{config.model} ({config.model_preset}) on {config.dataset}, {config.num_steps} "
        f"Adam steps, {config.steps_per_epoch} steps/epoch; base: PL one-shot at epoch "
        f"{base.epoch}, {base.ratio:.0%} pruned, scaling {base.scaling}, alpha {base.alpha:g}; "
        f"seeds {', '.join(map(str, config.seeds))}."
    )
    if splits.task == "mlm":
        table += " Training loss is log PPL."
    write_results(out_dir, dataclasses.asdict(config), results, table)
    plot_comparison(curves, results, metric, out_dir / "pl_ablations.png")
    return {
        "table": table,
        "results": results,
        "variants": {n: dataclasses.asdict(v) for n, v in runs.items()},
    }


EXPERIMENT = Experiment(
    name="pl_ablations",
    description=(
        "Paper 000 Tables 8-11 and the ERRATA's choices: PL-gating pruning time (epochs 0/5/50), "
        "one-shot vs linear schedule, ratios 50/75/90%, gate scaling mean_one vs softmax, "
        "alpha, and global vs per-layer TopK, each against dense training and the base run."
    ),
    presets={
        "smoke": PLAblationConfig(
            model_preset="16,16",
            base_epoch=1,
            prune_epochs=(0, 1),
            linear_epochs=2,
            ratios=(0.5,),
            scalings=("softmax",),
            alphas=(0.0,),
            topks=("per_layer",),
            steps_per_epoch=5,
            num_steps=20,
            report_steps=(10, 20),
            seeds=(0,),
            gating_steps=2,
            feature_batch_size=8,
        ),
        "small": PLAblationConfig(),
        "paper": PLAblationConfig(
            dataset="text:wikitext-2-raw/wiki.train.raw",
            model="bert",
            model_preset="base",
            seq_len=512,
            vocab_size=30_000,
            max_chars=None,
            prune_epochs=(0, 5, 50),
            linear_epochs=10,
            steps_per_epoch=70,
            num_steps=15_000,
            batch_size=64,
            learning_rate=1e-4,
            report_steps=(8_000, 10_000, 15_000),
            alphas=(0.0, 1.0),
            gating_steps=100,
            output_projections=64,
        ),
    },
    run=run_pl_ablations,
)
