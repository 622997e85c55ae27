"""``jaxprune experiment pl_switch``: PL gating on Switch-Transformer experts (Table 2, Figure 2).

A Switch Transformer is trained from scratch on masked language modelling, densely and with
each pruning method at the policy ``{t, r}`` = ``{5, 50%}`` of Chen et al. (2023) (50% of the groups
pruned, PL at ``prune_step``), in two settings: experts only and experts & heads
(``build_model("switch", kind=...)``).  Every run of a seed shares initialization, data order
and optimizer (AdamW with warm-up and cosine decay, Table 4).  Pruned runs are compacted, so
their wall time is that of the smaller model.

Methods (Chen et al. (2023), App. E.3; reading PL-9, docs/readings.md), all built by
:func:`jaxprune.train.make_pruner`:
  * ``dense``: the vanilla Switch Transformer (trained once; its row is shared by the
    settings, the dense model does not depend on the group kind).
  * ``lth``: Switch-LTH, iterative magnitude pruning in 3 rounds with rewinding to 5% of a
    run, the rounds fitted into ``num_steps`` training steps.
  * ``taylor``: Exp-Score / Att-Score (Michel et al. 2019, ``|∂L/∂ξ|`` per expert/head),
    pruned by the same iterative schedule as ``lth`` (rewinding included).
  * ``snip``, ``grasp``: scores summed per expert/head, pruned once at initialization.
  * ``pl``: PL gating (Algorithm 2), one-shot at ``prune_step``.
Every method keeps at least one expert (or head) per layer; the TopK is global.

Table 2 layout: training perplexity (``exp`` of the windowed training loss) at three step
counts, final test perplexity, ΔPPL = test PPL − final training PPL (our reading of "the
perplexity difference between training and test"), wall time, groups pruned and parameters
after compaction; mean ± standard deviation over seeds.

Figure 2 (``experts_<kind>.png``): per pruned method one heatmap over (Switch layer × expert)
of the fraction of seeds that keep each expert at the end of training, composed from the
event masks the engine saves as ``runs/<method>_seed<s>/event_<step>.npz`` (with compaction
each mask refers to the experts left by the previous event).  The paper colours the experts by
their condition number; we show which experts are kept, not their conditioning.

The policy ``{5, 50%}`` prunes "at epoch 5", but Table 2 stops at 70k iterations of 8 rows of
512 tokens, under 3 epochs of WikiText-103's ~103M tokens; the ``paper`` preset therefore prunes
at step 5,000 (our assumption). WikiText-103 is not bundled: the ``paper`` preset names the
built-in ``docstrings`` corpus; run it on WikiText-103 with ``--set
dataset=text:PATH/wiki.train.tokens``.

References:
  Chen et al. (2023), Sec. 5.2 (Table 2), Sec. 5.4 (Figure 2), App. E.3 (baselines, Table 4
  hyperparameters); reading PL-9 (baselines) in docs/readings.md.  Michel et al. (2019), "Are
  sixteen heads really better than one?" (Exp-/Att-Score).  Fedus et al. (2022), Switch
  Transformers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optax

from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import (
    compare_methods,
    load_splits,
    mean_std,
    plot_comparison,
    pruner_factories,
    write_results,
)
from jaxprune.experiments.settings import (
    TOPK_NOTE,
    MethodComparisonSettings,
    check_step,
    deprecated_names,
    pl_options,
)
from jaxprune.masks import PruningSchedule, lth_schedule, one_shot
from jaxprune.models import switch
from jaxprune.train import Bound

__all__ = [
    "EXPERIMENT",
    "METHODS",
    "PLSwitchSettings",
    "kept_experts",
    "perplexity_table",
    "run_pl_switch",
]

METHODS = ("dense", "lth", "taylor", "snip", "grasp", "pl")
LABELS = {
    "dense": "Switch-Transformer",
    "lth": "Switch-LTH",
    "taylor": "Exp-Score",
    "snip": "SNIP",
    "grasp": "GraSP",
    "pl": "PL (Chen et al.)",
}
#: Settings fields that override the Switch preset when not ``None``.
MODEL_FIELDS = (
    "num_layers",
    "hidden_size",
    "intermediate_size",
    "num_heads",
    "num_experts",
    "moe_every",
    "dropout_rate",
)


@dataclasses.dataclass(frozen=True)
class PLSwitchSettings(MethodComparisonSettings):
    """Settings of the Switch experiment (each is ``--set field=value``).

    Attributes:
      dataset, seq_len, vocab_size, max_chars: the MLM corpus (registry name, token rows of
        ``seq_len``, tokenizer vocabulary, characters read).
      model_preset: Switch preset (``tiny``, ``small``, ``base``).
      num_layers, hidden_size, intermediate_size, num_heads, num_experts, moe_every,
        dropout_rate: overrides of the preset (``None``: the preset's value).
      kinds: group kinds, a subset of ``("experts", "heads", "experts+heads")``.
      methods: subset of :data:`METHODS`.
      ratio: pruned fraction of the groups, in ``(0, 1)``.
      prune_step: step of the PL event (the paper's epoch 5).
      num_steps, batch_size: training length and batch size.
      learning_rate, warmup_fraction, weight_decay, adam_eps: AdamW with linear warm-up over
        ``warmup_fraction`` of the steps and cosine decay to 0 (Table 4).
      report_steps: steps whose training perplexity the table reports.
      gating_steps, feature_batch_size: PL gating network training per event.
      output_projections: random output projections of the feature kernels (``None``: all
        ``seq_len × vocab_size`` logits, whose per-example Jacobians need tens of GB at the
        ``small`` sizes; see :func:`jaxprune.spectra.sketch_outputs`).
      per_layer: every method's TopK within each layer (the same fraction of each; default,
        reading PL-12) instead of the paper's global TopK keeping one group per layer.
      seeds: one run per seed, method and kind.
    """

    METHODS = METHODS

    dataset: str = "docstrings"
    model_preset: str = "tiny"
    batch_size: int = 16
    methods: tuple[str, ...] = METHODS
    seq_len: int = 32
    vocab_size: int = 1000
    max_chars: int | None = 200_000
    num_layers: int | None = 4
    hidden_size: int | None = 64
    intermediate_size: int | None = 128
    num_heads: int | None = 4
    num_experts: int | None = 4
    moe_every: int | None = 1
    dropout_rate: float | None = 0.0
    kinds: tuple[str, ...] = ("experts", "experts+heads")
    prune_step: int = 50
    warmup_fraction: float = 0.06
    weight_decay: float = 1e-2
    adam_eps: float = 1e-6
    gating_steps: int = 10
    feature_batch_size: int = 16
    output_projections: int | None = 16
    per_layer: bool = True

    def check(self) -> None:
        bad_kinds = [k for k in self.kinds if k not in switch.KINDS]
        if not self.kinds or bad_kinds:
            raise ValueError(
                f"kinds: {self.kinds!r} holds {bad_kinds} that Switch does not have; expected "
                f"a non-empty subset of {switch.KINDS}"
            )
        check_step(self.prune_step, self.num_steps, "prune_step")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction: expected [0, 1), got {self.warmup_fraction!r}")


def _schedule(config: PLSwitchSettings, method: str) -> PruningSchedule:
    if method == "pl":
        return one_shot(config.prune_step, config.ratio)
    if method in ("lth", "taylor"):  # Exp-Score: the same rounds, rewinding included
        return lth_schedule(config.num_steps, config.ratio)
    return one_shot(0, config.ratio)


def _options(config: PLSwitchSettings, method: str) -> Mapping[str, Any]:
    return pl_options(config) if method == "pl" else {"per_layer": config.per_layer}


def _optimizer(config: PLSwitchSettings) -> optax.GradientTransformation:
    warmup = int(config.warmup_fraction * config.num_steps)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, config.num_steps
    )
    return optax.adamw(
        schedule, b1=0.9, b2=0.999, eps=config.adam_eps, weight_decay=config.weight_decay
    )


def kept_experts(model: Bound, run_dir: Path) -> np.ndarray:
    """Which experts a pruned run kept, from its saved event masks.

    Args:
      model: the uncompacted model of the run (``kind`` ``experts`` or ``experts+heads``).
      run_dir: the run directory holding ``event_<step>.npz``.

    Returns:
      ``(num_switch_layers, num_experts)`` bool: expert ``e`` of the ``k``-th Switch layer
      survived every event.  Each event's mask refers to the groups left by the previous one
      (compaction), so the masks are composed in step order.
    """
    if model.kind not in ("experts", "experts+heads"):
        raise ValueError(f"model.kind: expected 'experts' or 'experts+heads', got {model.kind!r}")
    config = model.config
    num_experts = len(config.moe_layers) * config.num_experts
    num_heads = config.num_layers * config.num_heads if model.kind == "experts+heads" else 0
    alive = np.arange(num_experts + num_heads)
    events = sorted(run_dir.glob("event_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    for path in events:
        alive = alive[np.load(path)["mask"] > 0]
    shape = (len(config.moe_layers), config.num_experts)
    kept = np.zeros(num_experts, bool)
    kept[alive[alive < num_experts]] = True  # experts are numbered first, layer by layer
    return kept.reshape(shape)


def perplexity_table(rows: dict[str, dict[str, list[float]]], report_steps: tuple[int, ...]) -> str:
    """Table 2 layout: one row per ``label``; cells mean ± std over seeds.

    Args:
      rows: label -> results of :func:`~jaxprune.experiments.compare.run_comparison`
        (``train_loss@<step>``, ``test_perplexity``, ``wall_seconds``, ``group_sparsity``,
        ``parameters``, one value per seed).
      report_steps: the steps of the training-perplexity columns (the last is the final one
        used by ΔPPL).
    """
    header = [
        "method",
        *(f"train PPL @{s}" for s in report_steps),
        "test PPL",
        "Δ PPL",
        "wall s",
        "groups pruned",
        "params",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, figures in rows.items():
        train_ppl = {s: np.exp(figures[f"train_loss@{s}"]) for s in report_steps}
        gap = np.asarray(figures["test_perplexity"]) - train_ppl[report_steps[-1]]
        cells = [
            label,
            *(mean_std(train_ppl[s], 2) for s in report_steps),
            mean_std(figures["test_perplexity"], 2),
            mean_std(gap, 2),
            mean_std(figures["wall_seconds"], 1),
            f"{np.mean(figures['group_sparsity']):.0%}",
            f"{int(np.mean(figures['parameters'])):,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot_experts(
    heatmaps: dict[str, np.ndarray],
    layers: tuple[int, ...],
    seeds: int,
    title: str,
    path: Path,
) -> None:
    """One panel per method: the share of the ``seeds`` runs keeping each expert
    (``heatmaps[method]``: ``(len(layers), num_experts)``), rows named by the transformer layer
    ``layers[k]`` of the ``k``-th Switch layer; ``title`` heads the figure."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.8 * len(heatmaps) + 1.5, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(heatmaps), squeeze=False)[0]
    cmap = colormaps["Greens"].resampled(seeds + 1)  # one colour per count of seeds
    half = 0.5 / seeds
    image = None
    for ax, (method, values) in zip(axes, heatmaps.items()):
        image = ax.imshow(values, vmin=-half, vmax=1 + half, cmap=cmap, aspect="auto")
        ax.set(
            title=LABELS[method],
            xlabel="expert (index in its layer)",
            ylabel="Switch layer (layer index)",
        )
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]), [str(layer) for layer in layers])
    ticks = np.linspace(0.0, 1.0, seeds + 1)
    colorbar = figure.colorbar(image, ax=list(axes), ticks=ticks)
    if seeds == 1:
        colorbar.set_ticklabels(["pruned", "kept"])
        colorbar.set_label("expert after training (1 seed)")
    else:
        colorbar.set_ticklabels([f"{k}/{seeds}" for k in range(seeds + 1)])
        colorbar.set_label(f"seeds keeping the expert (of {seeds})")
    figure.suptitle(title)
    figure.savefig(path, dpi=120)


def run_pl_switch(config: PLSwitchSettings, out_dir: Path, progress: bool = True) -> dict:
    """Train every method, kind and seed; write ``table.md``, ``results.json``,
    ``curves_<kind>.png`` and ``experts_<kind>.png``.

    Returns:
      ``{"table": str, "results": {kind: {method: {figure: [per seed]}}},
      "experts": {kind: {method: (layers, experts) share of seeds keeping each expert}}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(config)
    overrides = {f: getattr(config, f) for f in MODEL_FIELDS if getattr(config, f) is not None}
    results: dict[str, dict] = {}
    experts: dict[str, dict[str, np.ndarray]] = {}
    sections = []
    dense = None
    for kind in config.kinds:
        methods = [m for m in config.methods if not (m == "dense" and dense is not None)]
        kind_dir = out_dir / kind.replace("+", "_")
        comparison = compare_methods(
            config,
            pruner_factories(
                methods, functools.partial(_schedule, config), functools.partial(_options, config)
            ),
            kind_dir,
            model="switch",
            optimizer=functools.partial(_optimizer, config),
            splits=splits,
            model_options={"kind": kind, "overrides": overrides},
            train_options={"compact": True},
            run_settings={"kind": kind},
            progress=progress,
        )
        model, found, curves = comparison.model, comparison.results, comparison.curves
        if "dense" in found:
            dense = found["dense"], curves["dense"]
        if dense is not None and "dense" not in found:
            found = {"dense": dense[0], **found}
            curves = {"dense": dense[1], **curves}
        results[kind] = found
        plot_comparison(curves, found, "test_perplexity", out_dir / f"curves_{kind}.png")
        if kind != "heads":
            experts[kind] = {
                m: np.mean(
                    [kept_experts(model, kind_dir / "runs" / f"{m}_seed{s}") for s in config.seeds],
                    axis=0,
                )
                for m in methods
                if m != "dense"
            }
            if experts[kind]:
                groups = "experts" if kind == "experts" else "experts and heads"
                _plot_experts(
                    experts[kind],
                    model.config.moe_layers,
                    len(config.seeds),
                    f"Switch experts kept after pruning {config.ratio:.0%} of the {groups}",
                    out_dir / f"experts_{kind}.png",
                )
        rows = {LABELS[m] + ("" if m == "dense" else f" ({kind})"): found[m] for m in found}
        sections.append(f"**{kind}**\n\n" + perplexity_table(rows, config.report_steps))
    table = "\n\n".join(sections) + (
        f"\n\nSwitch ({config.model_preset}: {config.num_layers} layers, {config.num_experts} "
        f"experts, Switch layer every {config.moe_every}) MLM on {config.dataset}, "
        f"{config.num_steps} AdamW steps, {config.ratio:.0%} of the groups pruned (PL one-shot "
        f"at step {config.prune_step}; SNIP/GraSP at step 0; LTH and Exp-Score in 3 rounds with "
        f"rewinding), {TOPK_NOTE[config.per_layer]} for every method, compacted; seeds "
        f"{', '.join(map(str, config.seeds))}. Δ PPL = test PPL − training PPL at step "
        f"{config.report_steps[-1]}; params after compaction."
    )
    write_results(out_dir, dataclasses.asdict(config), results, table)
    return {"table": table, "results": results, "experts": experts}


EXPERIMENT = Experiment(
    name="pl_switch",
    description=(
        "Chen et al. (2023), Table 2 and Figure 2: Switch-Transformer MLM with 50% of the experts "
        "(or experts and heads) pruned by PL gating, LTH, Exp-Score, SNIP and GraSP against dense "
        "training: training/test perplexity, wall time, and heatmaps of the kept experts."
    ),
    presets={
        "smoke": PLSwitchSettings(
            max_chars=20_000,
            vocab_size=300,
            seq_len=16,
            num_layers=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            kinds=("experts",),
            methods=("dense", "lth", "snip", "pl"),
            prune_step=10,
            num_steps=40,
            batch_size=8,
            report_steps=(20, 40),
            gating_steps=2,
            feature_batch_size=8,
            seeds=(0,),
        ),
        "small": PLSwitchSettings(),
        "paper": PLSwitchSettings(
            seq_len=512,
            vocab_size=32128,
            max_chars=None,
            model_preset="base",
            num_layers=None,
            hidden_size=None,
            intermediate_size=None,
            num_heads=None,
            num_experts=4,
            moe_every=None,
            dropout_rate=0.1,
            prune_step=5_000,
            num_steps=70_000,
            batch_size=8,
            learning_rate=2e-4,
            report_steps=(50_000, 60_000, 70_000),
            gating_steps=100,
            feature_batch_size=32,
            output_projections=64,
        ),
    },
    run=run_pl_switch,
)


__getattr__ = deprecated_names(__name__, {"SwitchConfig": PLSwitchSettings})
