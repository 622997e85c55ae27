"""``jaxprune demo``: dense training against baseline pruning criteria at one sparsity.

Trains one small model on built-in data densely and with each pruning method at the same
structured sparsity (same initialization, data order and optimizer), then prints the
comparison table of paper 000's Tables 1-3 layout (training loss at fixed steps, test metric,
wall time, sparsity) and saves plots of the training curves, of the NTK condition number over
training (Figures 3 and 5) and of the test metric.

Methods: ``dense``; ``pl`` (paper 000's PL gating, Algorithm 2, one-shot at ``prune_step``);
``random``, ``magnitude``, ``snip``, ``grasp``, ``taylor`` (Att-Score),
``fpgm`` and ``hessian_diag`` pruned one-shot at ``prune_step``; ``lth`` (iterative magnitude
pruning with rewinding to 5% of a round, paper 000 App. E.3) with its rounds fitted into the
same number of training steps.

References:
  Paper 000, Section 4 (Tables 1-3: training loss at fixed iterations, test metric, time),
  Appendix E.3 (baselines).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import optax

from jaxprune.data import DataConfig, load_dataset
from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import (
    comparison_table,
    lth_schedule,
    plot_comparison,
    run_comparison,
    test_metric_name,
    write_results,
)
from jaxprune.masks import one_shot
from jaxprune.methods.pl_gating import PLGatingConfig
from jaxprune.train import CRITERIA, TrainConfig, build_model, criterion_pruner, pl_gating_pruner

__all__ = ["EXPERIMENT", "DemoConfig", "run_demo"]

METHODS = ("dense", "lth", "pl", *CRITERIA)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (each is ``--set field=value`` on the command line).

    Attributes:
      dataset, model, model_preset: what is trained (registry names; the MLP preset may be
        hidden widths such as ``"256,256"``).
      methods: subset of ``METHODS``.
      ratio: pruned fraction of the groups (neurons/filters/heads/experts).
      prune_step: step of the one-shot pruning event.
      num_steps, batch_size, learning_rate: Adam training.
      report_steps: steps at which the table reports the training loss.
      per_layer: prune the same fraction in every layer (default: global TopK, one group per
        layer protected).
      seeds: one run per seed and method; the table shows mean ± standard deviation.
      analysis_every: steps between NTK-condition / Hessian-trace analyses (0: off).
      compact: remove pruned groups physically (pruned runs then really run faster).
      gating_steps: batches the PL gating network trains on at the pruning event.
    """

    dataset: str = "digits"
    model: str = "mlp"
    model_preset: str = "256,256"
    methods: tuple[str, ...] = (
        "dense",
        "random",
        "magnitude",
        "snip",
        "grasp",
        "taylor",
        "lth",
        "pl",
    )
    ratio: float = 0.75
    prune_step: int = 100
    num_steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    report_steps: tuple[int, ...] = (200, 400, 600)
    per_layer: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    analysis_every: int = 100
    compact: bool = True
    gating_steps: int = 50

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"methods: unknown {unknown}; expected a subset of {METHODS}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must lie in (0, 1), got {self.ratio!r}")
        if not 0 <= self.prune_step < self.num_steps:
            raise ValueError(
                f"prune_step must lie in [0, num_steps={self.num_steps}), got {self.prune_step}"
            )
        bad = [s for s in self.report_steps if not 0 < s <= self.num_steps]
        if bad:
            raise ValueError(f"report_steps must lie in (0, num_steps], got {bad}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")


def _pruner(method: str, config: DemoConfig) -> Any:
    if method == "dense":
        return None
    if method == "pl":
        gating = PLGatingConfig(gating_steps=config.gating_steps, per_layer=config.per_layer)
        return pl_gating_pruner(one_shot(config.prune_step, config.ratio), gating)
    if method == "lth":
        return criterion_pruner(
            "magnitude", lth_schedule(config.num_steps, config.ratio), per_layer=config.per_layer
        )
    schedule = one_shot(config.prune_step, config.ratio)
    return criterion_pruner(method, schedule, per_layer=config.per_layer)


def run_demo(config: DemoConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run every method and seed; write ``table.md``, ``results.json`` and ``demo.png``.

    Returns:
      ``{"table": str, "results": {method: {figure: [value per seed]}}, "metric": name}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_dataset(DataConfig(name=config.dataset))
    model = build_model(
        config.model,
        num_outputs=splits.num_outputs,
        input_shape=splits.train["x"].shape[1:],
        preset=config.model_preset,
    )
    train_config = TrainConfig(
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        log_every=int(np.gcd.reduce([*config.report_steps, config.num_steps])),
        analysis_every=config.analysis_every,
        compact=config.compact,
    )
    metric = test_metric_name(splits.task)
    results, curves = run_comparison(
        model,
        splits,
        {method: functools.partial(_pruner, method, config) for method in config.methods},
        optimizer=lambda: optax.adam(config.learning_rate),
        config=train_config,
        seeds=config.seeds,
        report_steps=config.report_steps,
        out_dir=out_dir,
        progress=progress,
        settings=dataclasses.asdict(config),
    )
    table = comparison_table(results, config.report_steps, metric) + (
        f"\n\n{config.model} ({config.model_preset}) on {config.dataset}, {config.num_steps} "
        f"Adam steps, {config.ratio:.0%} of groups pruned at step {config.prune_step} (LTH: 3 "
        f"rounds with rewinding), {'per-layer' if config.per_layer else 'global'} TopK with one "
        f"group per layer kept, seeds {', '.join(map(str, config.seeds))}; params = parameters "
        "after compaction."
    )
    write_results(out_dir, dataclasses.asdict(config), results, table)
    plot_comparison(curves, results, metric, out_dir / "demo.png")
    return {"table": table, "results": results, "metric": metric}


EXPERIMENT = Experiment(
    name="demo",
    description=(
        "Dense training vs PL gating vs baseline pruning criteria (random, magnitude, SNIP, GraSP, "
        "Att-Score/Taylor, LTH) at one structured sparsity on built-in data: table of training "
        "loss at fixed steps, test metric, wall time and sparsity, plus plots."
    ),
    presets={
        "smoke": DemoConfig(
            model_preset="32",
            methods=("dense", "magnitude", "lth", "pl"),
            num_steps=40,
            prune_step=10,
            report_steps=(20, 40),
            seeds=(0,),
            analysis_every=20,
            gating_steps=30,  # more than the 22 batches of an epoch: events span epochs
        ),
        "small": DemoConfig(),
        "paper": DemoConfig(
            dataset="digits32",
            model="vgg",
            model_preset="vgg16-bn",
            methods=("dense", "random", "magnitude", "snip", "grasp", "fpgm", "lth"),
            ratio=0.5,
            num_steps=20_000,
            prune_step=2_000,
            batch_size=128,
            report_steps=(5_000, 10_000, 20_000),
            analysis_every=1_000,
        ),
    },
    run=run_demo,
)
