"""``jaxprune demo``: dense training against baseline pruning criteria at one sparsity.

Trains one small model on built-in data densely and with each pruning method at the same
structured sparsity (same initialization, data order and optimizer), then prints the
comparison table in the layout of Chen et al. (2023)'s Tables 1-3 (training loss at fixed
steps, test metric, wall time, sparsity) and saves ``demo.png``
(:func:`~jaxprune.experiments.compare.plot_comparison`): the training loss every ``log_every``
steps, with ``analysis_every`` the NTK condition number and Hessian trace over training
(Figures 3 and 5, before and after each pruning event), the pruning steps marked, and the test
metric.

Methods: ``dense``; ``pl`` (PL gating, Chen et al. (2023), Algorithm 2, one-shot at
``prune_step``); ``random``, ``magnitude``, ``snip``, ``grasp``, ``taylor`` (Att-Score),
``fpgm``, ``hessian_diag`` and ``natural`` (natural importance, Li et al. 2020) pruned one-shot
at ``prune_step``; ``lth`` (iterative magnitude pruning with rewinding to 5% of the run,
:func:`jaxprune.masks.lth_schedule`) with its rounds fitted into the same number of training
steps.  All are built by :func:`jaxprune.train.make_pruner`.

References:
  Chen et al. (2023), Sec. 4 (Tables 1-3: training loss at fixed iterations, test metric,
  time), App. E.3 (baselines); reading PL-9 (docs/readings.md).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optax

from jaxprune._validation import check_positive_int
from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import pruner_factories, run_method_comparison
from jaxprune.experiments.settings import (
    TOPK_NOTE,
    MethodComparisonSettings,
    check_step,
    deprecated_names,
    pl_options,
)
from jaxprune.masks import PruningSchedule, lth_schedule, one_shot
from jaxprune.train import CRITERIA

__all__ = ["EXPERIMENT", "METHODS", "DemoSettings", "run_demo"]

METHODS = ("dense", "lth", "pl", *CRITERIA)


@dataclasses.dataclass(frozen=True)
class DemoSettings(MethodComparisonSettings):
    """Settings of the demo (each is ``--set field=value`` on the command line).

    Attributes:
      dataset, model, model_preset: what is trained (registry names; the MLP preset may be
        hidden widths such as ``"256,256"``).
      methods: subset of :data:`METHODS`.
      ratio: pruned fraction of the groups (neurons/filters/heads/experts).
      prune_step: step of the one-shot pruning event.
      num_steps, batch_size, learning_rate: Adam training.
      report_steps: steps at which the table reports the training loss.
      per_layer: every method prunes the same fraction in every layer (default, reading
        PL-12); ``False``: global TopK with one group per layer protected.
      seeds: one run per seed and method (seed ``i`` shares initialization and data order
        across methods); the table shows mean ± standard deviation, then PL's paired
        differences against every baseline with win counts.
      log_every: steps between logged training losses (the plotted curve; the table's loss
        at a report step is the mean over the ``log_every`` steps before it), a divisor of
        every report step.
      analysis_every: steps between NTK-condition / Hessian-trace analyses (0: off).
      compact: remove pruned groups physically (pruned runs then really run faster).
      gating_steps: batches the PL gating network trains on at the pruning event.
    """

    METHODS = METHODS

    num_steps: int = 300
    report_steps: tuple[int, ...] = (100, 200, 300)
    seeds: tuple[int, ...] = tuple(range(10))
    methods: tuple[str, ...] = (
        "dense",
        "random",
        "magnitude",
        "snip",
        "grasp",
        "lth",
        "pl",
    )
    ratio: float = 0.9
    model: str = "mlp"
    prune_step: int = 50
    log_every: int = 10
    per_layer: bool = True
    analysis_every: int = 0
    compact: bool = True
    gating_steps: int = 50

    def check(self) -> None:
        check_step(self.prune_step, self.num_steps, "prune_step")
        check_positive_int(self.log_every, "log_every")
        if any(step % self.log_every for step in self.report_steps):
            raise ValueError(
                f"log_every: expected a divisor of every report step {self.report_steps}, got "
                f"{self.log_every}"
            )


def _schedule(settings: DemoSettings, method: str) -> PruningSchedule:
    if method == "lth":
        return lth_schedule(settings.num_steps, settings.ratio)
    return one_shot(settings.prune_step, settings.ratio)


def _options(settings: DemoSettings, method: str) -> Mapping[str, Any]:
    if method == "pl":
        return pl_options(settings, per_layer=settings.per_layer)
    return {"per_layer": settings.per_layer}


def run_demo(config: DemoSettings, out_dir: Path, progress: bool = True) -> dict:
    """Run every method and seed; write ``table.md``, ``results.json`` and ``demo.png``.

    Returns:
      ``{"table": str, "results": {method: {figure: [value per seed]}}, "metric": name}``.
    """
    methods = pruner_factories(
        config.methods,
        functools.partial(_schedule, config),
        functools.partial(_options, config),
    )
    note = (
        f"{config.model} ({config.model_preset}) on {config.dataset}, {config.num_steps} "
        f"Adam steps, {config.ratio:.0%} of groups pruned at step {config.prune_step} (LTH: 3 "
        f"rounds with rewinding), {TOPK_NOTE[config.per_layer]} for every method, seeds "
        f"{', '.join(map(str, config.seeds))}; train loss @s = mean over the "
        f"{config.log_every} steps up to s; params = parameters after compaction."
    )
    return run_method_comparison(
        config,
        methods,
        out_dir,
        model=config.model,
        optimizer=lambda: optax.adam(config.learning_rate),
        note=note,
        plot="demo.png",
        progress=progress,
        train_options={
            "log_every": config.log_every,
            "analysis_every": config.analysis_every,
            "compact": config.compact,
        },
    ).report()


EXPERIMENT = Experiment(
    name="demo",
    description=(
        "Dense training vs PL gating vs baseline pruning criteria (random, magnitude, SNIP, GraSP, "
        "Att-Score/Taylor, LTH) at one structured sparsity on built-in data: table of training "
        "loss at fixed steps, test metric, wall time and sparsity, plus plots."
    ),
    presets={
        "smoke": DemoSettings(
            model_preset="32",
            methods=("dense", "magnitude", "lth", "pl"),
            num_steps=40,
            prune_step=10,
            report_steps=(20, 40),
            log_every=2,
            seeds=(0,),
            analysis_every=20,
            gating_steps=30,  # more than the 22 batches of an epoch: events span epochs
        ),
        "small": DemoSettings(),
        "paper": DemoSettings(
            dataset="digits32",
            model="vgg",
            model_preset="vgg16-bn",
            methods=("dense", "random", "magnitude", "snip", "grasp", "fpgm", "lth"),
            ratio=0.5,
            num_steps=20_000,
            prune_step=2_000,
            batch_size=128,
            report_steps=(5_000, 10_000, 20_000),
            log_every=100,
            analysis_every=1_000,
        ),
    },
    run=run_demo,
)


__getattr__ = deprecated_names(__name__, {"DemoConfig": DemoSettings})
