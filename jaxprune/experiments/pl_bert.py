"""Chen et al. (2023), Table 1: PL-gating head pruning of BERT on masked language modelling.

Trains one BERT densely and with each pruning method under the ``{t, r}`` policy (one-shot, a
fraction ``r`` of all attention heads pruned at epoch ``t``; paper: ``{5, 75%}``), at least one
head kept per layer, pruned heads physically removed (``compact=True``), and reports training
perplexity ``exp(train loss)`` at three fixed iteration counts, the final test perplexity, its
difference to dense training, the generalization gap (test minus final training perplexity),
the wall-clock time and its saving against dense training (Table 6).

Methods: ``dense``; ``lth`` (iterative magnitude pruning, 3 rounds, rewinding to 5% of the
training steps, Chen et al. 2020); ``taylor`` (Att-Score, Michel et al. 2019); ``snip`` and
``grasp`` (scores summed per head); ``pl`` (PL gating), all built by
:func:`jaxprune.train.make_pruner`.  With
``baselines="appendix"`` (App. E.3) SNIP and GraSP prune at initialization and Att-Score at the
LTH event steps (without rewinding); with ``baselines="policy"`` every baseline but LTH prunes
one-shot at the policy's step.

Figures: ``pl_bert.png`` (training loss, NTK condition number when ``analysis_every > 0``, test
perplexity); ``heads.png``: (left, Figure 1d) the per-head condition number
``λ_max/λ_min`` of each head's NTK ``K(w_[i])`` of the dense model at the pruning step (same seed
and data order, so the same weights the PL event sees), heads pruned by PL crossed out; (right,
Figure 3 at the event) the whole-model NTK condition number of that model before and after the
PL mask is applied.  Both use randomly sketched outputs (``output_projections``): the exact
kernels trace all ``T × V`` logits per example and take minutes on a CPU.

Optimizer (Table 4; reading PL-8, docs/readings.md): Adam with ``[ε, β1, β2] = [1e-6, 0.9,
0.999]`` (Table 4 prints ``[0, 0, 0]`` for BERT, an extraction error), no warmup, peak rate
decayed linearly to 0, no weight decay.

References:
  Chen et al. (2023), Sec. 5.1 (Table 1), App. D (Figure 3), App. E.3 (baselines, Table 4),
  App. F.2 (Table 6), Figure 1d; readings PL-8 (Adam settings) and PL-9 (baselines) in
  docs/readings.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_choice, check_positive_int
from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import (
    Comparison,
    MethodFactory,
    mean_std,
    pruner_factories,
    run_method_comparison,
)
from jaxprune.experiments.settings import (
    TOPK_NOTE,
    MethodComparisonSettings,
    deprecated_names,
    pl_options,
)
from jaxprune.masks import PruningSchedule, apply_group_mask, lth_schedule, one_shot
from jaxprune.methods import pl_gating
from jaxprune.spectra import empirical_ntk, sketch_outputs, spectrum_features
from jaxprune.train import Bound, Pruner, TrainConfig, train
from jaxprune.train.logging import y_scale

__all__ = [
    "EXPERIMENT",
    "METHODS",
    "PLBertSettings",
    "make_optimizer",
    "method_pruner",
    "perplexity_table",
    "run_pl_bert",
]

METHODS = ("dense", "lth", "taylor", "snip", "grasp", "pl")
BASELINES = ("appendix", "policy")


@dataclasses.dataclass(frozen=True)
class PLBertSettings(MethodComparisonSettings):
    """Settings of the BERT experiment (each is ``--set field=value`` on the command line).

    Attributes:
      dataset: MLM dataset (``docstrings`` or ``text:PATH``).
      seq_len, vocab_size, max_chars: token rows, tokenizer vocabulary, characters of text.
      model_preset: BERT preset (``tiny``, ``small``, ``base``).
      methods: subset of :data:`METHODS`.
      ratio: fraction ``r`` of all heads pruned, in ``(0, 1)``.
      prune_epoch: epoch ``t`` of the one-shot event.
      steps_per_epoch: training steps per "epoch" (maps epochs to steps).
      num_steps, batch_size, learning_rate: Adam training, linear decay to 0.
      report_steps: steps of the training-perplexity columns.
      baselines: ``"appendix"`` (App. E.3 timings) or ``"policy"`` (all at the policy's step).
      lth_rounds: IMP rounds of ``lth``.
      seeds: one run per seed and method.
      analysis_every: steps between the engine's NTK analyses (0: off; slow for MLM).
      gating_steps, feature_batch_size, output_projections, alpha: PL gating (Algorithm 2).
      per_layer: every method's TopK within each layer (the same fraction of each; default,
        reading PL-12) instead of the paper's global TopK keeping one group per layer.
    """

    METHODS = METHODS

    dataset: str = "docstrings"
    model_preset: str = "tiny"
    batch_size: int = 16
    report_steps: tuple[int, ...] = (150, 225, 300)
    methods: tuple[str, ...] = METHODS
    ratio: float = 0.75
    seq_len: int = 32
    vocab_size: int = 500
    max_chars: int | None = 100_000
    prune_epoch: int = 5
    steps_per_epoch: int = 20
    baselines: str = "appendix"
    lth_rounds: int = 3
    analysis_every: int = 0
    gating_steps: int = 8
    feature_batch_size: int = 16
    output_projections: int | None = 16
    alpha: float = 1.0
    per_layer: bool = True

    def check(self) -> None:
        check_choice(self.baselines, BASELINES, "baselines")
        check_positive_int(self.steps_per_epoch, "steps_per_epoch")
        check_positive_int(self.lth_rounds, "lth_rounds")
        if self.prune_step >= self.num_steps or self.prune_epoch < 0:
            raise ValueError(
                f"prune_epoch: epoch {self.prune_epoch} x steps_per_epoch "
                f"{self.steps_per_epoch} = step {self.prune_step}, expected a step in "
                f"[0, num_steps={self.num_steps})"
            )

    @property
    def prune_step(self) -> int:
        """The step of the policy's event: ``prune_epoch * steps_per_epoch``."""
        return self.prune_epoch * self.steps_per_epoch


def _schedule(config: PLBertSettings, method: str) -> PruningSchedule:
    """``method``'s schedule: the policy, or with ``baselines="appendix"`` App. E.3's timing."""
    lth = lth_schedule(config.num_steps, config.ratio, rounds=config.lth_rounds)
    appendix = config.baselines == "appendix"
    if method == "lth":
        return lth
    if appendix and method == "taylor":  # the LTH event steps, without rewinding
        return PruningSchedule(lth.event_steps, lth.event_ratios)
    if appendix and method in ("snip", "grasp"):
        return one_shot(0, config.ratio)
    return one_shot(config.prune_step, config.ratio)


def _options(config: PLBertSettings, method: str) -> Mapping[str, Any]:
    return pl_options(config) if method == "pl" else {"per_layer": config.per_layer}


def _methods(config: PLBertSettings, names: tuple[str, ...]) -> dict[str, MethodFactory]:
    return pruner_factories(
        names, functools.partial(_schedule, config), functools.partial(_options, config)
    )


def method_pruner(method: str, config: PLBertSettings) -> Pruner | None:
    """A fresh pruner of ``method`` under ``config``'s policy (``None`` for ``dense``)."""
    return _methods(config, (method,))[method]()


def make_optimizer(config: PLBertSettings) -> optax.GradientTransformation:
    """Adam, ``[ε, β1, β2] = [1e-6, 0.9, 0.999]`` (reading PL-8), rate decayed linearly to 0."""
    rate = optax.linear_schedule(config.learning_rate, 0.0, config.num_steps)
    return optax.adam(rate, b1=0.9, b2=0.999, eps=1e-6)


def perplexity_table(
    results: dict[str, dict[str, list[float]]], report_steps: tuple[int, ...]
) -> str:
    """Markdown table of Table 1's layout from :func:`run_comparison` results.

    Training PPL at step ``s`` is ``exp(train_loss@s)`` per seed; ``Δ test PPL`` is the mean
    difference to ``dense`` (when run); ``gap`` the test minus the last training PPL; ``time
    saved`` ``1 - wall / wall(dense)`` of the means; ``event %`` the share of the wall time
    spent in pruning events (features, gating training, compaction).  Cells: mean ± std over
    seeds.
    """
    header = ["method", *(f"train PPL @{s}" for s in report_steps), "test PPL"]
    header += ["Δ test PPL", "gap", "wall s", "time saved", "event %", "heads pruned", "params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    dense = results.get("dense")
    last = max(report_steps)
    for method, figures in results.items():
        train_ppl = {s: np.exp(figures[f"train_loss@{s}"]) for s in report_steps}
        test_ppl = np.asarray(figures["test_perplexity"])
        wall = np.asarray(figures["wall_seconds"])
        cells = [method, *(mean_std(train_ppl[s], 2) for s in report_steps), mean_std(test_ppl, 2)]
        delta = "" if dense is None else test_ppl.mean() - np.mean(dense["test_perplexity"])
        cells += [f"{delta:+.2f}" if dense else "", mean_std(test_ppl - train_ppl[last], 2)]
        saved = "" if dense is None else f"{1 - wall.mean() / np.mean(dense['wall_seconds']):+.0%}"
        share = np.asarray(figures["event_seconds"]) / wall
        cells += [
            mean_std(wall, 1),
            saved,
            f"{share.mean():.1%}",
            f"{np.mean(figures['group_sparsity']):.0%}",
            f"{int(np.mean(figures['parameters'])):,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sketched_condition(
    model: Bound, params: Any, x: jax.Array, key: jax.Array, projections: int
) -> float:
    """``λ_max/λ_min`` of the whole-model NTK of ``params`` with sketched outputs."""

    def apply_fn(p: Any, inputs: jax.Array) -> jax.Array:
        return model.apply({"params": p}, inputs, train=False)[0]

    sketched = sketch_outputs(apply_fn, params, x, key, projections)
    kernel = np.asarray(empirical_ntk(sketched, params, x))
    return float(spectrum_features(kernel, dtype=np.float64).condition_number)


def head_conditions(
    model: Bound, params: Any, x: jax.Array, key: jax.Array, projections: int
) -> np.ndarray:
    """``(L, H)`` condition numbers ``λ_max/λ_min`` (nonzero spectrum) of every head's NTK
    ``K(w_[i])`` on inputs ``x`` ``(n, T)``, outputs sketched to ``projections`` values."""

    def apply_fn(p: Any, inputs: jax.Array) -> jax.Array:
        return model.apply({"params": p}, inputs, train=False)[0]

    ids, layout = model.group_ids(params)
    feats = pl_gating.features(
        apply_fn, params, x, ids, output_projections=projections, key=key, dtype=np.float64
    )
    ratio = np.asarray(feats.lambda_max) / np.asarray(feats.lambda_min)
    return ratio.reshape(layout.num_layers, -1)


def _event_figures(
    config: PLBertSettings, model: Bound, splits: Any, out_dir: Path, progress: bool
) -> dict:
    """Figure 1d and the event jump of Figure 3 for the first seed; writes ``heads.png``."""
    seed = config.seeds[0]
    x = jnp.asarray(splits.train["x"][: config.feature_batch_size])
    if config.prune_step > 0:
        state = train(
            model,
            splits,
            make_optimizer(config),
            TrainConfig(
                num_steps=config.prune_step,
                batch_size=config.batch_size,
                seed=seed,
                progress=progress,
            ),
        ).state
        params = state.params
    else:
        params = model.init(jax.random.key(seed), x)["params"]
    key = jax.random.key(seed)
    projections = config.output_projections or 16
    conditions = head_conditions(model, params, x, key, projections)
    event = out_dir / "runs" / f"pl_seed{seed}" / f"event_{config.prune_step}.npz"
    mask = np.load(event)["mask"] if event.exists() else None
    before = _sketched_condition(model, params, x, key, projections)
    after = None
    if mask is not None:
        ids, _ = model.group_ids(params)
        masked = apply_group_mask(params, ids, jnp.asarray(mask))
        after = _sketched_condition(model, masked, x, key, projections)
    _plot_heads(conditions, mask, before, after, config.prune_step, out_dir / "heads.png")
    return {
        "head_conditions": conditions.tolist(),
        "pl_mask": None if mask is None else mask.tolist(),
        "condition_before_event": before,
        "condition_after_event": after,
    }


def _plot_heads(
    conditions: np.ndarray,
    mask: np.ndarray | None,
    before: float,
    after: float | None,
    step: int,
    path: Path,
) -> None:
    """Save ``heads.png``: the heatmap of the per-head NTK condition numbers ``conditions``
    ``(L, H)`` at ``step``, the heads PL's ``mask`` (``(L·H,)``, 0: pruned) removes crossed out
    (Figure 1d); bars of the whole-model condition number ``before`` and ``after`` the PL mask
    (Figure 3 at the event), their values written on them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    heat, bars = figure.subplots(1, 2, width_ratios=(2, 1))
    image = heat.imshow(np.log10(conditions), cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=heat, label="log₁₀(λ_max / λ_min) of the head's NTK")
    if mask is not None:
        layers, heads = np.nonzero(mask.reshape(conditions.shape) == 0)
        heat.plot(heads, layers, "wx", ls="none", ms=10, mew=2)
    crossed = "" if mask is None else "; × pruned by PL"
    heat.set(
        xlabel="head (index in its layer)",
        ylabel="layer",
        title=f"Per-head NTK condition number\n(dense model at step {step}{crossed})",
    )
    heat.set_xticks(range(conditions.shape[1]))
    heat.set_yticks(range(conditions.shape[0]))
    labels, values = ["before event\n(dense)"], [before]
    if after is not None:
        labels.append("after event\n(PL mask)")
        values.append(after)
    drawn = bars.bar(labels, values, color=["tab:gray", "tab:red"][: len(values)])
    bars.bar_label(drawn, fmt="%.3g")
    bars.set_yscale(y_scale(values))
    bars.set(
        ylabel="NTK λ_max / λ_min (ratio, outputs sketched)",
        title=f"Whole-model NTK condition number\n(step {step})",
    )
    bars.margins(y=0.12)
    bars.grid(alpha=0.3, axis="y")
    figure.suptitle("BERT heads at the PL pruning event (Chen et al. 2023, Figs. 1d and 3)")
    figure.savefig(path, dpi=120)


def _note(config: PLBertSettings, found: Comparison) -> str:
    return (
        f"BERT {config.model_preset} on {config.dataset} (seq_len {config.seq_len}, "
        f"{len(found.splits.train['x'])} training rows), {config.num_steps} Adam steps of batch "
        f"{config.batch_size}, policy {{{config.prune_epoch}, {config.ratio:.0%}}} = step "
        f"{config.prune_step} ({config.steps_per_epoch} steps/epoch), baselines: "
        f"{config.baselines}; {TOPK_NOTE[config.per_layer]} for every method, seeds "
        f"{', '.join(map(str, config.seeds))}; PPL = exp(loss)."
    )


def run_pl_bert(config: PLBertSettings, out_dir: Path, progress: bool = True) -> dict:
    """Run every method and seed; write ``table.md``, ``results.json``, ``pl_bert.png``,
    ``heads.png`` and ``figures.json``.

    Returns:
      ``{"table": str, "results": {method: {figure: [value per seed]}}, "figures": {...}}``.
    """
    out_dir = Path(out_dir)
    found = run_method_comparison(
        config,
        _methods(config, config.methods),
        out_dir,
        model="bert",
        optimizer=functools.partial(make_optimizer, config),
        note=functools.partial(_note, config),
        table=lambda c: perplexity_table(c.results, config.report_steps),
        plot="pl_bert.png",
        progress=progress,
        train_options={
            "analysis_every": config.analysis_every,
            "analysis_examples": 8,
            "compact": True,
        },
    )
    figures = {}
    if "pl" in found.results:
        figures = _event_figures(config, found.model, found.splits, out_dir, progress)
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=1))
    return {"table": found.table, "results": found.results, "figures": figures}


EXPERIMENT = Experiment(
    name="pl_bert",
    description=(
        "Chen et al. (2023), Table 1: BERT attention heads pruned {5 epochs, 75%} on masked "
        "language modelling by PL gating vs LTH, Att-Score, SNIP, GraSP and dense training: "
        "training PPL at fixed steps, test PPL, wall-clock time (compacted), per-head NTK "
        "condition heatmap (Figure 1d) and the condition number at the event (Figure 3)."
    ),
    presets={
        "smoke": PLBertSettings(
            seq_len=16,
            vocab_size=300,
            max_chars=20_000,
            methods=("dense", "snip", "pl"),
            prune_epoch=5,
            steps_per_epoch=2,
            num_steps=16,
            batch_size=8,
            report_steps=(8, 12, 16),
            seeds=(0,),
            gating_steps=2,
            feature_batch_size=8,
        ),
        "small": PLBertSettings(),
        "paper": PLBertSettings(
            dataset="text:wikitext-2-raw/wiki.train.raw",
            seq_len=512,
            vocab_size=30_000,
            max_chars=None,
            model_preset="base",
            prune_epoch=5,
            steps_per_epoch=70,
            num_steps=15_000,
            batch_size=64,
            learning_rate=1e-4,
            report_steps=(8_000, 10_000, 15_000),
            analysis_every=1_000,
            gating_steps=100,
            feature_batch_size=32,
            output_projections=64,
        ),
    },
    run=run_pl_bert,
)


__getattr__ = deprecated_names(
    __name__, {"PLBertConfig": PLBertSettings, "make_pruner": method_pruner}
)
