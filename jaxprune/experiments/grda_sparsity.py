"""``jaxprune experiment grda_sparsity``: sparsity against accuracy of gRDA and SGD.

Every model (a *setup*: model, preset and dataset) is trained with plain SGD and with gRDA
(:func:`jaxprune.optim.grda`) over a grid of ``(c, μ)``, all from the same initialization and
with the same minibatches (one ``TrainConfig.seed`` per run fixes both), without momentum or
weight decay and with no pruner: gRDA's soft threshold makes weights exactly zero during
training.  For each setup the table reports the final training loss (last logging window),
test accuracy, its difference to SGD, the final weight sparsity (exact zeros over all
parameters, biases included) and wall time; the plot shows sparsity and training loss over
training and test accuracy against final sparsity.

Setups (:data:`SETUPS`): ``mlp-digits`` (MLP 256-256 on the 8×8 digits), ``cnn-digits`` (the
small CNN on the digits as images), and for accelerators ``vgg16-cifar10`` (VGG-16 without
BatchNorm, as the paper's "vanilla" VGG16), ``wrn28x10-cifar10`` and ``wrn28x10-cifar100``.
The zoo has no wide ResNet: ``wrn28x10-*`` is the zoo's ``resnet`` with WRN-28×10's stages
(4 basic blocks per stage at widths 160, 320, 640; 26 weight layers, 36M parameters), but with
post-activation blocks, parameter-free option-A shortcuts instead of WRN's 1×1 projections, a
160-channel stem instead of 16, and no dropout: a WRN-28×10-sized stand-in, not WRN itself.
No data augmentation is applied (the paper uses Garipov et al.'s random crops and flips).

The ``paper`` preset is VGG16 on CIFAR-10 (Table 4): batch 128, base rate 0.1 with Garipov et
al.'s schedule (``lr_schedule="swa"``: constant for the first 50% of training, linear down to
1% at 90%, then 1%; applied per step rather than per epoch), 600 epochs (234,000 steps of 390
batches), ``c = 0.0005`` (the paper states this ``c`` for its VGG16 runs in Appendix C.2;
Table 4 does not repeat it) and ``μ ∈ {0.4, 0.51, 0.6, 0.7}``, 10 seeds.  Table 6 (WRN28x10 on
CIFAR-100, 200 epochs = 78,000 steps, ``c = 0.001``, ``μ ∈ {0.501, 0.55, 0.6, 0.65}``) is

    jaxprune experiment grda_sparsity --preset paper --set setups=wrn28x10-cifar100 \
        --set cs=0.001 --set mus=0.501,0.55,0.6,0.65 --set num_steps=78000 \
        --set eval_every=3900

and Table 5 the same with ``setups=wrn28x10-cifar10``. Chao et al. (2020)'s headline run,
ResNet-50 on ImageNet (Sec. 4.1, App. C.1: batch 256, SGD and gRDA without momentum or weight
decay, ``γ = 0.1`` constant until epoch 140 then 0.01, ``c = 0.005``, ``μ ∈ {0.501, 0.51, 0.55,
0.6}``, about 150 epochs; 92% sparsity at 73% top-1 with ``μ = 0.55``) is not available here:
the zoo has no ResNet-50 and the registry no ImageNet.

References:
  Chao et al. (2020), "Directional pruning of deep neural networks", Sec. 4.1 (Figure 3:
  accuracy and sparsity over training), Appendix C.1 (ResNet-50 on ImageNet, Table 1), Appendix
  C.2 (CIFAR settings, Table 2, learning-rate schedule), Tables 4-6; reading DP-3 (no momentum
  or weight decay) in docs/readings.md.  Garipov et al. (2018), the schedule of their code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_choice, check_positive_int, check_real
from jaxprune.data import DataConfig, load_dataset
from jaxprune.data.registry import Splits
from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import mean_std, run_comparison, write_results
from jaxprune.experiments.settings import (
    check_positive_values,
    check_seeds,
    check_subset,
    deprecated_names,
)
from jaxprune.optim.grda import grda
from jaxprune.train import Bound, TrainConfig, build_model
from jaxprune.train.logging import STEP_LABEL, y_scale

__all__ = [
    "EXPERIMENT",
    "LR_SCHEDULES",
    "SETUPS",
    "GRDASparsitySettings",
    "Setup",
    "learning_rate_schedule",
    "load_setup",
    "method_name",
    "run_grda_sparsity",
    "sparsity_table",
]


class Setup(NamedTuple):
    """A model on a dataset: ``build_model(model, preset=preset, overrides=overrides)`` on
    ``load_dataset(dataset)``."""

    model: str
    preset: str
    dataset: str
    overrides: tuple[tuple[str, Any], ...] = ()


_WRN28X10 = (("blocks_per_stage", 4), ("widths", (160, 320, 640)))

#: Setup name -> :class:`Setup`.
SETUPS: dict[str, Setup] = {
    "mlp-digits": Setup("mlp", "256,256", "digits"),
    "cnn-digits": Setup("cnn", "small", "digits_image"),
    "vgg16-cifar10": Setup("vgg", "vgg16", "tfds:cifar10"),
    "wrn28x10-cifar10": Setup("resnet", "resnet20", "tfds:cifar10", _WRN28X10),
    "wrn28x10-cifar100": Setup("resnet", "resnet20", "tfds:cifar100", _WRN28X10),
}

LR_SCHEDULES = ("constant", "swa")


def learning_rate_schedule(
    base: float, kind: str, num_steps: int
) -> float | Callable[[jax.Array], jax.Array]:
    """The learning rate of both optimizers.

    Args:
      base: base rate ``γ``.
      kind: ``"constant"`` (``γ`` throughout) or ``"swa"`` (Garipov et al.'s schedule used by
        Chao et al. (2020) on CIFAR: ``γ`` for the first half of the steps, then linearly down to
        ``0.01 γ`` at 90%, then ``0.01 γ``).
      num_steps: length of training ``n`` (the schedule is a function of ``step / n``).

    Returns:
      A float, or an optax schedule ``count -> rate``.

    References:
      Chao et al. (2020), App. C.2 (the three phases of the schedule).
    """
    check_choice(kind, LR_SCHEDULES, "lr_schedule")
    if kind == "constant":
        return base

    def schedule(count: jax.Array) -> jax.Array:
        t = jnp.asarray(count, jnp.float32) / num_steps
        decay = 1.0 - (t - 0.5) * 0.99 / 0.4
        return base * jnp.where(t < 0.5, 1.0, jnp.where(t < 0.9, decay, 0.01))

    return schedule


def method_name(c: float, mu: float) -> str:
    """The name of a gRDA run in tables and run directories: ``"gRDA_c0.005_mu0.6"``."""
    return f"gRDA_c{c:g}_mu{mu:g}"


def load_setup(name: str) -> tuple[Bound, Splits]:
    """The model and data of setup ``name`` (see :data:`SETUPS`)."""
    setup = SETUPS[name]
    splits = load_dataset(DataConfig(name=setup.dataset))
    model = build_model(
        setup.model,
        num_outputs=splits.num_outputs,
        input_shape=splits.train["x"].shape[1:],
        preset=setup.preset,
        overrides=dict(setup.overrides),
    )
    return model, splits


@dataclasses.dataclass(frozen=True)
class GRDASparsitySettings:
    """Settings of the experiment (each is ``--set field=value`` on the command line).

    Attributes:
      setups: names of :data:`SETUPS`.
      cs: gRDA's threshold scales ``c > 0``; the grid is every ``(c, μ)``.
      mus: gRDA's threshold exponents ``μ > 0``.
      learning_rate: base rate of SGD and gRDA.
      lr_schedule: ``"constant"`` or ``"swa"`` (see :func:`learning_rate_schedule`).
      num_steps, batch_size: training length and minibatch size.
      eval_every: steps between test evaluations and sparsity measurements (a divisor of
        ``num_steps``).
      seeds: one run per seed and method (same seed: same initialization and minibatches for
        every method).
    """

    setups: tuple[str, ...] = ("mlp-digits", "cnn-digits")
    cs: tuple[float, ...] = (0.005, 0.02)
    mus: tuple[float, ...] = (0.51, 0.7)
    learning_rate: float = 0.1
    lr_schedule: str = "constant"
    num_steps: int = 2000
    batch_size: int = 64
    eval_every: int = 250
    seeds: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        check_subset(self.setups, tuple(SETUPS), "setups")
        check_positive_values(self.cs, "cs")
        check_positive_values(self.mus, "mus")
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)
        check_choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        for field in ("num_steps", "batch_size", "eval_every"):
            check_positive_int(getattr(self, field), field)
        if self.num_steps % self.eval_every:
            raise ValueError(
                f"eval_every: expected a divisor of num_steps={self.num_steps}, got "
                f"{self.eval_every}"
            )
        check_seeds(self.seeds)

    def optimizers(self) -> dict[str, Callable[[], optax.GradientTransformation]]:
        """Method name -> optimizer factory: ``"SGD"`` first, then the gRDA grid."""
        rate = learning_rate_schedule(self.learning_rate, self.lr_schedule, self.num_steps)
        methods = {"SGD": lambda: optax.sgd(rate)}
        for c in self.cs:
            for mu in self.mus:
                methods[method_name(c, mu)] = lambda c=c, mu=mu: grda(rate, c, mu)
        return methods


def sparsity_table(results: dict[str, dict[str, list[float]]], num_steps: int) -> str:
    """Markdown table, one row per method: final training loss, test accuracy (%), its
    difference to SGD, weight sparsity (%) and wall time; mean ± std over seeds."""
    header = "| method | train loss | test acc. (%) | Δ acc. vs SGD | sparsity (%) | wall s |"
    lines = [header, "|---|---|---|---|---|---|"]
    sgd = np.mean(results["SGD"]["test_accuracy"])
    for method, figures in results.items():
        delta = 100 * (np.mean(figures["test_accuracy"]) - sgd)
        cells = [
            method,
            mean_std(figures[f"train_loss@{num_steps}"], 4),
            mean_std(figures["test_accuracy"], 2, scale=100),
            f"{delta:+.2f}",
            mean_std(figures["weight_sparsity"], 1, scale=100),
            mean_std(figures["wall_seconds"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _method_labels(config: GRDASparsitySettings) -> dict[str, str]:
    """Method name -> its legend label: ``"SGD"``, ``"gRDA (c = 0.005, μ = 0.6)"``."""
    labels = {"SGD": "SGD"}
    for c in config.cs:
        for mu in config.mus:
            labels[method_name(c, mu)] = f"gRDA (c = {c:g}, μ = {mu:g})"
    return labels


def _plot(
    curves: dict[str, list[list[dict]]],
    results: dict[str, dict[str, list[float]]],
    labels: dict[str, str],
    title: str,
    path: Path,
) -> None:
    """Weight sparsity and training loss over training (first seed) and final test accuracy
    against final sparsity (mean ± sample standard deviation over seeds), one colour per
    method (legend entries ``labels[method]``); ``title`` heads the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for method, runs in curves.items():
        for ax, key, scale in ((axes[0], "weight_sparsity", 100.0), (axes[1], "train_loss", 1.0)):
            steps, values = zip(*[(r["step"], scale * r[key]) for r in runs[0] if key in r])
            ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=labels[method])
        sparsity, accuracy = (
            100 * np.asarray(results[method][k]) for k in ("weight_sparsity", "test_accuracy")
        )
        axes[2].errorbar(
            sparsity.mean(),
            accuracy.mean(),
            xerr=sparsity.std(ddof=1) if len(sparsity) > 1 else 0.0,
            yerr=accuracy.std(ddof=1) if len(accuracy) > 1 else 0.0,
            marker="o",
            capsize=4,
            label=labels[method],
        )
    seeds = len(next(iter(curves.values())))
    sparsity_label = "weights exactly zero (%)"
    axes[0].set(xlabel=STEP_LABEL, ylabel=sparsity_label, title="Weight sparsity (first seed)")
    axes[1].set(
        xlabel=STEP_LABEL,
        ylabel="training loss (cross-entropy, nats)",
        title="Training loss (first seed)",
        yscale=y_scale([v for line in axes[1].get_lines() for v in line.get_ydata()]),
    )
    axes[2].set(
        xlabel=f"final {sparsity_label}",
        ylabel="test accuracy (% correct)",
        title="Test accuracy against final sparsity\n"
        + (f"(mean ± sd over {seeds} seeds)" if seeds > 1 else "(1 seed)"),
    )
    axes[2].margins(0.15)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)


def run_grda_sparsity(config: GRDASparsitySettings, out_dir: Path, progress: bool = True) -> dict:
    """Train every setup with SGD and the gRDA grid; write ``table.md``, ``results.json`` and
    ``sparsity_<setup>.png`` (runs under ``<setup>/runs/``).

    Returns:
      ``{"table": str, "results": {setup: {method: {figure: [value per seed]}}}}``; figures
      as in :func:`jaxprune.experiments.compare.run_comparison` (``train_loss@<num_steps>``,
      ``test_accuracy``, ``weight_sparsity``, ...).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_config = TrainConfig(
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        log_every=config.eval_every,
        eval_every=config.eval_every,
    )
    all_results, sections = {}, []
    for setup in config.setups:
        model, splits = load_setup(setup)
        results, curves = {}, {}
        for method, optimizer in config.optimizers().items():
            method_results, method_curves = run_comparison(
                model,
                splits,
                {method: lambda: None},
                optimizer=optimizer,
                config=train_config,
                seeds=config.seeds,
                report_steps=(config.num_steps,),
                out_dir=out_dir / setup,
                progress=progress,
                settings={**dataclasses.asdict(config), "setup": setup},
            )
            results.update(method_results)
            curves.update(method_curves)
        all_results[setup] = results
        s = SETUPS[setup]
        _plot(
            curves,
            results,
            _method_labels(config),
            f"{s.model} ({s.preset}) on {s.dataset}: gRDA against SGD",
            out_dir / f"sparsity_{setup}.png",
        )
        sections.append(
            f"### {setup}\n\n{sparsity_table(results, config.num_steps)}\n\n"
            f"{s.model} ({s.preset}) on {s.dataset}, {config.num_steps} steps of batch "
            f"{config.batch_size}, rate {config.learning_rate:g} ({config.lr_schedule}), no "
            f"momentum or weight decay, same initialization and minibatches per seed (seeds "
            f"{', '.join(map(str, config.seeds))}); sparsity = exact zeros over all parameters."
        )
    table = "\n\n".join(sections)
    write_results(out_dir, dataclasses.asdict(config), all_results, table)
    return {"table": table, "results": all_results}


EXPERIMENT = Experiment(
    name="grda_sparsity",
    description=(
        "Chao et al. (2020) (gRDA): sparsity vs accuracy of gRDA over a (c, μ) grid against SGD "
        "with the same initialization and minibatches; table of training loss, test accuracy and "
        "weight sparsity, plots of sparsity over training and accuracy vs sparsity."
    ),
    presets={
        "smoke": GRDASparsitySettings(
            setups=("mlp-digits",),
            cs=(0.01,),
            mus=(0.6,),
            num_steps=200,
            eval_every=50,
            seeds=(0,),
        ),
        "small": GRDASparsitySettings(),
        "paper": GRDASparsitySettings(
            setups=("vgg16-cifar10",),
            cs=(0.0005,),
            mus=(0.4, 0.51, 0.6, 0.7),
            lr_schedule="swa",
            num_steps=234_000,
            batch_size=128,
            eval_every=3_900,
            seeds=tuple(range(10)),
        ),
    },
    run=run_grda_sparsity,
)


__getattr__ = deprecated_names(__name__, {"SparsityConfig": GRDASparsitySettings})
