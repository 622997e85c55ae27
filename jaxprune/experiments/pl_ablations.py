"""Ablations of PL-gating pruning (Chen et al. (2023), App. F.3-F.4, and the readings' choices).

Every variant changes one factor of a base PL run (one-shot at ``base_epoch``, ratio
``base_ratio``, gate scaling ``"mean_one"``, ``α = 1``) and is compared with dense training at
the same initialization and data order:

* pruning time: one-shot at each of ``prune_epochs`` (Table 8: epochs 0, 5, 50);
* schedule: one-shot vs linear, the same number of groups pruned at each of ``linear_epochs``
  consecutive epochs from ``base_epoch`` (Table 9);
* ratio: each of ``ratios`` (Tables 10-11: 50% and 90%);
* gate scaling: ``"mean_one"`` (``p·softmax``) vs the literal softmax of eq. 8 (reading PL-4);
* ``α`` of eq. 36: each of ``alphas`` (0: gating trained on the loss alone);
* TopK: within every layer (``"per_layer"``: the same fraction of each layer kept; the base,
  reading PL-12) vs over all groups (``"global"``, the paper's, one group per layer protected);
* the trace's Hessian: ``"auto"`` (the base: the Gauss-Newton trace on piecewise-linear models) vs
  eq. 36's output Hessian (``"outputs"``, identically zero on a ReLU MLP; reading PL-2);
* the terms' normalization (reading PL-10): normalized (the base) vs eq. 36 as printed;
* feature standardization (reading PL-11): across all groups (the base) vs within each layer;
* probe count: Hutchinson probes per gating step, each of ``probe_counts`` vs the base's
  :class:`~jaxprune.methods.pl_gating.PLGatingConfig` default (4): the trace estimate's
  standard error falls as ``1/√probes`` (one probe has none), at that many Hessian-vector
  products per step.

Tables: training loss (or PPL for MLM) at ``report_steps``, the test metric and its difference
to dense, wall time; one table per factor, each with the dense and base rows.

References:
  Chen et al. (2023), App. F.3 (Tables 8-9), F.4 (Tables 10-11), Sec. 3.2 (eq. 8), App. E.2
  (eq. 36, Algorithms 1 and 2); Hutchinson (1990) (the probes); reading PL-4 (gate scaling) in
  docs/readings.md.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import optax

from jaxprune._validation import check_positive_int, check_ratio, check_real
from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import (
    DENSE,
    Comparison,
    MethodFactory,
    comparison_table,
    run_method_comparison,
)
from jaxprune.experiments.settings import ComparisonSettings, deprecated_names, pl_options
from jaxprune.masks import PruningSchedule, linear, one_shot
from jaxprune.methods import pl_gating
from jaxprune.train import Pruner, make_pruner

__all__ = ["EXPERIMENT", "PLAblationSettings", "Variant", "run_pl_ablations", "variants"]

BASE = "base"
FACTORS = (
    "time",
    "schedule",
    "ratio",
    "scaling",
    "alpha",
    "topk",
    "hessian",
    "normalize",
    "features",
    "probes",
)
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
    topk: str = "per_layer"
    hessian: str = "auto"
    normalize: bool = True
    features: str = "global"
    num_probes: int = pl_gating.PLGatingConfig.num_probes


@dataclasses.dataclass(frozen=True)
class PLAblationSettings(ComparisonSettings):
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
      hessians: trace Hessians compared (``"auto"``, ``"outputs"``, ``"loss"``).
      normalizations: objective normalizations compared (``True``, ``False``).
      feature_normalizations: feature standardizations compared (``"global"``, ``"layer"``).
      probe_counts: Hutchinson probes per gating step compared, each an int ``>= 1`` (the
        base uses :class:`~jaxprune.methods.pl_gating.PLGatingConfig`'s 4; ``()``: no probe
        rows, as in the smoke preset).
      steps_per_epoch: training steps per "epoch".
      num_steps, batch_size, learning_rate: Adam training.
      report_steps: steps of the training-loss columns.
      seeds: one run per seed and variant.
      gating_steps, feature_batch_size, output_projections: PL gating (Algorithm 2).
    """

    num_steps: int = 800
    report_steps: tuple[int, ...] = (200, 400, 800)
    model: str = "mlp"
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
    hessians: tuple[str, ...] = ("auto", "outputs")
    normalizations: tuple[bool, ...] = (True, False)
    feature_normalizations: tuple[str, ...] = ("global", "layer")
    probe_counts: tuple[int, ...] = (1, 64)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps_per_epoch: int = 10
    gating_steps: int = 20
    feature_batch_size: int = 32
    output_projections: int | None = None

    def check(self) -> None:
        check_positive_int(self.steps_per_epoch, "steps_per_epoch")
        check_positive_int(self.gating_steps, "gating_steps")
        check_ratio(self.base_ratio, "base_ratio")
        for ratio in self.ratios:
            check_ratio(ratio, "ratios")
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
        for alpha in self.alphas:
            check_real(alpha, "alphas", minimum=0.0)
        if not isinstance(self.probe_counts, tuple):
            raise TypeError(f"probe_counts: expected a tuple of ints, got {self.probe_counts!r}")
        for count in self.probe_counts:
            check_positive_int(count, "probe_counts")
        for name, values, allowed in (
            ("hessians", self.hessians, ("auto", *pl_gating.HESSIANS)),
            ("normalizations", self.normalizations, (True, False)),
            (
                "feature_normalizations",
                self.feature_normalizations,
                pl_gating.FEATURE_NORMALIZATIONS,
            ),
        ):
            unknown = [
                v
                for v in values
                if v not in allowed or isinstance(v, bool) != isinstance(allowed[0], bool)
            ]
            if unknown:
                raise ValueError(f"{name}: got {unknown}, expected a subset of {allowed}")


def variants(config: PLAblationSettings) -> dict[str, Variant]:
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
    for hessian in config.hessians:
        runs[f"hessian {hessian}"] = dataclasses.replace(base, factor="hessian", hessian=hessian)
    for normalize in config.normalizations:
        name = "normalized" if normalize else "eq. 36 unnormalized"
        runs[name] = dataclasses.replace(base, factor="normalize", normalize=normalize)
    for within in config.feature_normalizations:
        runs[f"features {within}"] = dataclasses.replace(base, factor="features", features=within)
    for count in config.probe_counts:
        runs[f"probes {count}"] = dataclasses.replace(base, factor="probes", num_probes=count)
    return {
        n: v for n, v in runs.items() if n == BASE or dataclasses.replace(v, factor=BASE) != base
    }


def _schedule(variant: Variant, config: PLAblationSettings) -> PruningSchedule:
    start = variant.epoch * config.steps_per_epoch
    if variant.schedule == "one-shot":
        return one_shot(start, variant.ratio)
    times = [start + i * config.steps_per_epoch for i in range(config.linear_epochs)]
    return linear(times, variant.ratio)


def _pruner(variant: Variant, config: PLAblationSettings) -> Pruner:
    options = pl_options(
        config,
        scaling=variant.scaling,
        alpha=variant.alpha,
        per_layer=variant.topk == "per_layer",
        hessian=variant.hessian,
        normalize=variant.normalize,
        feature_normalization=variant.features,
        num_probes=variant.num_probes,
    )
    return make_pruner("pl", _schedule(variant, config), **options)


def _tables(config: PLAblationSettings, runs: dict[str, Variant], found: Comparison) -> str:
    """One comparison table per factor, each with the dense and base rows."""
    sections = []
    for factor in FACTORS:
        names = [n for n, v in runs.items() if v.factor == factor]
        if names:
            rows = {n: found.results[n] for n in (DENSE, BASE, *names)}
            table = comparison_table(rows, config.report_steps, found.metric)
            sections.append(f"**{factor}**\n\n{table}")
    return "\n\n".join(sections)


def _note(config: PLAblationSettings, base: Variant, found: Comparison) -> str:
    note = (
        f"{config.model} ({config.model_preset}) on {config.dataset}, {config.num_steps} "
        f"Adam steps, {config.steps_per_epoch} steps/epoch; base: PL one-shot at epoch "
        f"{base.epoch}, {base.ratio:.0%} pruned, scaling {base.scaling}, alpha {base.alpha:g}, "
        f"TopK {base.topk}, Hessian {base.hessian}, normalized terms, features standardized "
        f"{base.features}, {base.num_probes} Hutchinson probes per gating step; "
        f"seeds {', '.join(map(str, config.seeds))}."
    )
    return note + (" Training loss is log PPL." if found.splits.task == "mlm" else "")


def run_pl_ablations(config: PLAblationSettings, out_dir: Path, progress: bool = True) -> dict:
    """Run dense training and every variant for every seed; write ``table.md``,
    ``results.json`` and ``pl_ablations.png``.

    Returns:
      ``{"table": str, "results": {run: {figure: [value per seed]}}, "variants": {...}}``.
    """
    runs = variants(config)
    methods: dict[str, MethodFactory] = {DENSE: lambda: None}
    methods.update({name: functools.partial(_pruner, v, config) for name, v in runs.items()})
    found = run_method_comparison(
        config,
        methods,
        out_dir,
        model=config.model,
        optimizer=lambda: optax.adam(config.learning_rate),
        note=functools.partial(_note, config, runs[BASE]),
        table=functools.partial(_tables, config, runs),
        plot="pl_ablations.png",
        progress=progress,
        train_options={"compact": True},
    )
    return {
        "table": found.table,
        "results": found.results,
        "variants": {n: dataclasses.asdict(v) for n, v in runs.items()},
    }


EXPERIMENT = Experiment(
    name="pl_ablations",
    description=(
        "Chen et al. (2023), Tables 8-11, and reading PL-4: PL-gating pruning time (epochs "
        "0/5/50), one-shot vs linear schedule, ratios 50/75/90%, gate scaling mean_one vs "
        "softmax, alpha, per-layer vs global TopK, the trace's Hessian, the objective's "
        "normalization, the feature standardization and the Hutchinson probe count, each "
        "against dense training and the base run."
    ),
    presets={
        "smoke": PLAblationSettings(
            model_preset="16,16",
            base_epoch=1,
            prune_epochs=(0, 1),
            linear_epochs=2,
            ratios=(0.5,),
            scalings=("softmax",),
            alphas=(0.0,),
            topks=("global",),
            hessians=("outputs",),
            normalizations=(False,),
            feature_normalizations=("layer",),
            probe_counts=(),  # no probe rows: the smoke run's time stays as it was
            steps_per_epoch=5,
            num_steps=20,
            report_steps=(10, 20),
            seeds=(0,),
            gating_steps=2,
            feature_batch_size=8,
        ),
        "small": PLAblationSettings(),
        "paper": PLAblationSettings(
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


__getattr__ = deprecated_names(__name__, {"PLAblationConfig": PLAblationSettings})
