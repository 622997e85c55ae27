"""``jaxprune experiment pl_vgg``: PL gating on VGG-16 filters (Tables 3, 12, 13; Figure 5).

VGG-16 (with BatchNorm) is trained from scratch, densely and with each filter-pruning method,
all pruned with the linear schedule of Section 5.3: from epoch ``prune_start_epoch`` on, the
same number of filters is pruned at the start of every epoch until the target ``ratio`` (50%,
Table 3; 75% and 90%, Tables 12 and 13, via ``--set ratio=...``) is reached at
``prune_end_epoch``.  Runs of one seed share initialization, data order and optimizer (SGD
with momentum 0.9, learning rate decayed by 10 at 1/2 and 3/4 of training, App. E.4); pruned
runs are compacted, so their wall time and parameter count are those of the smaller network.

Methods: ``dense`` (vanilla VGG-16); ``lth`` (iterative magnitude pruning, 3 rounds with
rewinding to 5% of the run, fitted into the same number of steps); ``snip``, ``grasp``, ``fpgm``
(filter scores summed per filter; FPGM's geometric-median criterion) and ``pl`` (PL gating,
Algorithm 2), all on the linear schedule (global TopK, at least one filter per layer).
``baselines_at_init=true`` prunes SNIP and GraSP once at initialization instead, as App. E.4
describes for their original settings (E.4 also prunes LTH/SNIP/GraSP *unstructured*, which
would not remove filters and is not compared here).  FPGM at 90% uses its distance criterion
throughout, not E.4's 50% norm then 40% distance split.

Not implemented: CHIP (Sui et al. 2021) and DPFPS (Ruan et al. 2021).  CHIP ranks the filters
of a *pre-trained* network by the nuclear-norm independence of their feature maps and then
fine-tunes; it needs a pre-train/prune/fine-tune pipeline and feature-map hooks that the
sparsity core (criteria that score groups of the current parameters from gradients or weights)
does not provide.  DPFPS trains with a group-sparsity regulariser whose per-layer sparsity
allocation changes during training; it needs a regularised optimizer with dynamic per-layer
ratios, not a group mask from a schedule.

Table (Table 3 layout): training loss at three step counts, final test accuracy, its difference
to dense, wall time, filters pruned and parameters after compaction; mean ± std over seeds.
Figure 5 analogue (``condition.png``): the empirical-NTK condition number ``λ_max/λ_min`` and
the Hutchinson trace of the Hessian on a probe batch over training, dense against PL, with the
values just before each pruning event, so the jumps at events are visible.

References:
  Chen et al. (2023), Sec. 5.3 (Table 3), App. D (Figure 5, condition number of the empirical
  NTK), App. E.4 (VGG-16 settings, baselines, schedule), App. F (Tables 12 and 13); readings
  PL-3 (condition number) and PL-9 (baselines) in docs/readings.md.  He et al. (2019), FPGM;
  Sui et al. (2021), CHIP; Ruan et al. (2021), DPFPS; Lee et al. (2019), SNIP; Wang et al.
  (2020), GraSP.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optax

from jaxprune._validation import check_choice
from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import (
    draw_curve_panel,
    load_splits,
    pruner_factories,
    run_method_comparison,
)
from jaxprune.experiments.settings import (
    TOPK_NOTE,
    MethodComparisonSettings,
    deprecated_names,
    pl_options,
)
from jaxprune.masks import PruningSchedule, lth_schedule, one_shot, per_epoch_from
from jaxprune.methods.pl_gating import HESSIANS
from jaxprune.train.logging import loss_unit

__all__ = ["EXPERIMENT", "METHODS", "PLVGGSettings", "linear_schedule", "run_pl_vgg"]

METHODS = ("dense", "lth", "snip", "grasp", "fpgm", "pl")
MODELS = {"vgg": ("filters",), "resnet": ("filters",)}


@dataclasses.dataclass(frozen=True)
class PLVGGSettings(MethodComparisonSettings):
    """Settings of the VGG experiment (each is ``--set field=value``).

    Attributes:
      dataset: registry name (``digits32``, ``tfds:cifar10``, ``tfds:cifar100``).
      model, model_preset, kind: the network (``vgg`` or ``resnet``, e.g. ``resnet56`` for
        App. F.1) and its pruned group kind (``filters``).
      methods: subset of :data:`METHODS`.
      ratio: final pruned fraction of the filters, in ``(0, 1)``.
      prune_start_epoch, prune_end_epoch: first epoch of the linear schedule and the epoch at
        which ``ratio`` is reached (the same number of filters each epoch in between).
      baselines_at_init: prune SNIP and GraSP once at step 0 instead.
      num_steps, batch_size, learning_rate, momentum, weight_decay: SGD training, learning
        rate divided by 10 at 1/2 and 3/4 of ``num_steps``.
      report_steps: steps whose training loss the table reports.
      analysis_every: steps between NTK-condition / Hessian-trace analyses (0: off).
      analysis_examples, analysis_probes: probe-batch size and Hutchinson probes of the
        analysis.
      gating_steps, feature_batch_size: PL gating network training per event.
      hessian: PL's trace target (``auto``, ``loss``, ``gauss_newton`` or ``outputs``, see
        :class:`~jaxprune.methods.pl_gating.PLGatingConfig`); ``gauss_newton`` equals the loss
        Hessian's trace on this piecewise-linear network and differentiates at one order less.
      per_layer: every method's TopK within each layer (the same fraction of each; default,
        reading PL-12) instead of the paper's global TopK keeping one group per layer.
      compact: remove pruned filters physically after each event (each new shape recompiles
        the steps; off, pruned filters are only masked and the parameter count stays dense).
      seeds: one run per seed and method.
    """

    METHODS = METHODS

    dataset: str = "digits32"
    model_preset: str = "vgg16-bn-tiny"
    learning_rate: float = 0.05
    methods: tuple[str, ...] = METHODS
    model: str = "vgg"
    kind: str = "filters"
    prune_start_epoch: int = 2
    prune_end_epoch: int = 3
    baselines_at_init: bool = False
    momentum: float = 0.9
    weight_decay: float = 5e-4
    analysis_every: int = 100
    analysis_examples: int = 8
    analysis_probes: int = 2
    gating_steps: int = 5
    feature_batch_size: int = 16
    hessian: str = "auto"
    per_layer: bool = True
    compact: bool = True

    def check(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {tuple(MODELS)}, got {self.model!r}")
        if self.kind not in MODELS[self.model]:
            raise ValueError(
                f"kind: {self.model} has no group kind {self.kind!r}; expected one of "
                f"{MODELS[self.model]}"
            )
        check_choice(self.hessian, ("auto", *HESSIANS), "hessian")
        if not 0 <= self.prune_start_epoch <= self.prune_end_epoch:
            raise ValueError(
                f"prune_end_epoch: expected 0 <= prune_start_epoch={self.prune_start_epoch} <= "
                f"prune_end_epoch, got {self.prune_end_epoch}"
            )


def linear_schedule(config: PLVGGSettings, steps_per_epoch: int) -> PruningSchedule:
    """The linear schedule of Section 5.3 in steps: events at the start of epochs
    ``prune_start_epoch .. prune_end_epoch``, equal increments up to ``ratio``.

    Raises:
      ValueError: the last event is not before ``num_steps``.
    """
    last = config.prune_end_epoch * steps_per_epoch
    if last >= config.num_steps:
        raise ValueError(
            f"prune_end_epoch: epoch {config.prune_end_epoch} starts at step {last} "
            f"({steps_per_epoch} steps per epoch), beyond num_steps={config.num_steps}"
        )
    return per_epoch_from(
        config.prune_start_epoch, config.prune_end_epoch, config.ratio, steps_per_epoch
    )


def _schedule(config: PLVGGSettings, steps_per_epoch: int, method: str) -> PruningSchedule:
    if method == "lth":
        return lth_schedule(config.num_steps, config.ratio)
    if config.baselines_at_init and method in ("snip", "grasp"):
        return one_shot(0, config.ratio)
    return linear_schedule(config, steps_per_epoch)


def _options(config: PLVGGSettings, method: str) -> Mapping[str, Any]:
    return pl_options(config) if method == "pl" else {"per_layer": config.per_layer}


def _optimizer(config: PLVGGSettings) -> optax.GradientTransformation:
    boundaries = {config.num_steps // 2: 0.1, (3 * config.num_steps) // 4: 0.1}
    schedule = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def _plot_condition(curves: dict[str, list[list[dict]]], path: Path) -> None:
    """NTK condition number and Hessian trace over training, dense against PL (first seed,
    :func:`~jaxprune.experiments.compare.draw_curve_panel`): the values before (×) and after (○)
    each pruning event, dotted lines at the events."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    runs = {method: curves[method][0] for method in ("dense", "pl")}
    colors = {"dense": "tab:blue", "pl": "tab:red"}
    for ax, key in zip(figure.subplots(1, 2), ("ntk_condition", "hessian_trace")):
        draw_curve_panel(ax, runs, key, colors, loss_unit(runs["dense"]))
    figure.suptitle(
        "Dense against PL gating: conditioning over training (Chen et al. 2023, Fig. 5)"
    )
    figure.savefig(path, dpi=120)


def run_pl_vgg(config: PLVGGSettings, out_dir: Path, progress: bool = True) -> dict:
    """Run every method and seed; write ``table.md``, ``results.json``, ``curves.png`` and
    (with ``dense``, ``pl`` and analysis on) ``condition.png``.

    Returns:
      ``{"table": str, "results": {method: {figure: [value per seed]}}, "metric":
      "test_accuracy"}``.
    """
    splits = load_splits(config)
    steps_per_epoch = len(splits.train["x"]) // config.batch_size
    linear_schedule(config, steps_per_epoch)  # fail before any training
    at_init = " (SNIP/GraSP at step 0)" if config.baselines_at_init else ""
    counted = "after compaction" if config.compact else "of the masked, uncompacted network"
    note = (
        f"{config.model} ({config.model_preset}) on {config.dataset}, {config.num_steps} SGD "
        f"steps ({steps_per_epoch} per epoch), {config.ratio:.0%} of the filters pruned by the "
        f"linear schedule over epochs {config.prune_start_epoch}-{config.prune_end_epoch}"
        f"{at_init}; LTH: 3 rounds with rewinding; "
        f"{TOPK_NOTE[config.per_layer]} for every method; "
        f"seeds {', '.join(map(str, config.seeds))}; params {counted}. CHIP and DPFPS are "
        "not implemented (CHIP needs a pre-trained network, feature-map independence scores and "
        "fine-tuning; DPFPS a group-sparsity regularised optimizer with dynamic per-layer ratios)."
    )
    found = run_method_comparison(
        config,
        pruner_factories(
            config.methods,
            functools.partial(_schedule, config, steps_per_epoch),
            functools.partial(_options, config),
        ),
        out_dir,
        model=config.model,
        optimizer=functools.partial(_optimizer, config),
        note=note,
        progress=progress,
        splits=splits,
        model_options={"kind": config.kind},
        train_options={
            "analysis_every": config.analysis_every,
            "analysis_examples": config.analysis_examples,
            "analysis_probes": config.analysis_probes,
            "compact": config.compact,
        },
    )
    if config.analysis_every and {"dense", "pl"} <= set(found.curves):
        curves = {m: found.curves[m] for m in ("dense", "pl")}
        _plot_condition(curves, Path(out_dir) / "condition.png")
    return found.report()


EXPERIMENT = Experiment(
    name="pl_vgg",
    description=(
        "Chen et al. (2023), Table 3 (and Tables 12-13 via ratio): VGG-16 filters pruned by PL "
        "gating, LTH, SNIP, GraSP and FPGM on a linear per-epoch schedule against dense training: "
        "training loss, test accuracy, wall time, parameters, and the NTK condition number over "
        "training (Figure 5 analogue)."
    ),
    presets={
        "smoke": PLVGGSettings(
            methods=("dense", "pl"),
            prune_start_epoch=1,
            prune_end_epoch=1,
            num_steps=30,
            batch_size=64,
            report_steps=(15, 30),
            analysis_every=15,
            analysis_examples=2,
            analysis_probes=1,
            gating_steps=1,
            feature_batch_size=8,
            compact=False,
            seeds=(0,),
        ),
        "small": PLVGGSettings(),
        "paper": PLVGGSettings(
            dataset="tfds:cifar10",
            model_preset="vgg16-bn",
            prune_start_epoch=15,
            prune_end_epoch=30,
            num_steps=78_000,  # 200 epochs of 390 batches of 128
            batch_size=128,
            learning_rate=0.1,
            report_steps=(39_000, 58_500, 78_000),  # epochs 100, 150, 200
            analysis_every=1_000,
            analysis_examples=32,
            analysis_probes=8,
            gating_steps=100,
            feature_batch_size=32,
        ),
    },
    run=run_pl_vgg,
)


__getattr__ = deprecated_names(__name__, {"VGGConfig": PLVGGSettings})
