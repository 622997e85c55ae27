"""``jaxprune experiment grda_valley``: do gRDA and SGD reach the same valley of minima?

SGD and gRDA (one ``c``, several ``μ``) are trained from the same initialization with the same
minibatches (one ``TrainConfig.seed``).  For each gRDA minimum ``w^gRDA`` a quadratic Bézier
curve ``(1 − t)² w^SGD + 2t(1 − t) θ + t² w^gRDA`` is fitted to the SGD minimum by training its
control point ``θ`` on minibatches of the training set (:func:`fit_bezier_midpoint`, one
``t ~ U(0, 1)`` per step, from the straight line's midpoint).  The training loss and the test
error are then evaluated on the whole training / test set along the curve and along the straight
segment.  "Same valley" (Section 4.2) means no barrier along the curve: its highest training
loss is about the endpoints'; the straight line usually has one.  The table reports, per ``μ``,
the endpoints, the barriers ``max_t ℓ(t) − max(ℓ(0), ℓ(1))`` of curve and line, the test error
along them, and two cheap diagnostics: the fraction ``‖P Δ‖/‖Δ‖`` of ``Δ = w^gRDA − w^SGD`` in
the span of the top-``k`` Hessian eigenvectors of the training loss at ``w^SGD`` (eq. 9, by
Lanczos on the whole training set) and ``‖w‖₂/‖w‖₁`` of both minima (Remark 3.3).

Only models without BatchNorm are supported (a point on the curve would need its own batch
statistics): ``mlp-digits``, ``cnn-digits`` and, for the ``paper`` preset, VGG16 on CIFAR-10
(Section 4.2, Figure 5: ``c = 0.0005``, ``μ ∈ {0.4, 0.51, 0.6, 0.7}``, 600 epochs at base
rate 0.1 with Garipov et al.'s schedule, batch 128; the paper trains the curve for 300 epochs at
rate 0.1 with momentum 0.9 (its Table 3), here plain SGD on θ).  WRN28x10 on CIFAR-100 (the
paper's other panel) has BatchNorm and is not supported.  The setups and the learning-rate
schedule are those of :mod:`jaxprune.experiments.grda_sparsity`.

References:
  Chao et al. (2020), "Directional pruning of deep neural networks", Sec. 4.2 and Figure 5
  (minimal-loss Bézier curve between the SGD and gRDA minima), Appendix C.3 (curve training,
  Table 3), Section 4.3 (eq. 9, Figure 6), Remark 3.3 (Figure 2). Garipov, Izmailov,
  Podoprikhin, Vetrov & Wilson (2018), "Loss surfaces, mode connectivity, and fast ensembling of
  DNNs", Section 3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_choice, check_int, check_positive_int, check_real
from jaxprune.data.batches import iterate_batches
from jaxprune.experiments import Experiment
from jaxprune.experiments.compare import write_results
from jaxprune.experiments.grda_sparsity import (
    LR_SCHEDULES,
    SETUPS,
    learning_rate_schedule,
    load_setup,
    method_name,
)
from jaxprune.experiments.settings import check_positive_values, deprecated_names
from jaxprune.methods.directional import (
    curve_losses,
    fit_bezier_midpoint,
    line_losses,
    sign_alignment_ratio,
    top_eigenspace_fraction,
)
from jaxprune.optim import grda
from jaxprune.spectra.lanczos import hessian_eigenvalues
from jaxprune.train import Bound, TrainConfig, train
from jaxprune.train.logging import y_scale
from jaxprune.train.tasks import Task, make_task
from jaxprune.typing import PyTree

__all__ = ["EXPERIMENT", "GRDAValleySettings", "dataset_metric", "run_grda_valley", "valley_table"]


@dataclasses.dataclass(frozen=True)
class GRDAValleySettings:
    """Settings of the experiment (each is ``--set field=value`` on the command line).

    Attributes:
      setup: a name of :data:`~jaxprune.experiments.grda_sparsity.SETUPS` whose model has no
        BatchNorm.
      c: gRDA's threshold scale ``c > 0``.
      mus: one gRDA run (and one curve) per threshold exponent ``μ > 0``.
      learning_rate, lr_schedule: base rate and schedule of SGD and gRDA (``"constant"`` or
        ``"swa"``).
      num_steps, batch_size: training of the endpoints.
      seed: initialization and minibatches of every endpoint, and the curve's ``t`` samples.
      curve_steps, curve_learning_rate, curve_batch_size: plain SGD on the control point.
      num_points: evaluation points ``t`` along curve and line (evenly spaced in ``[0, 1]``).
      eval_batch_size: chunk size of the whole-dataset evaluations.
      top_k: Hessian eigenvectors of the eq. 9 fraction (0: skip it).
    """

    setup: str = "mlp-digits"
    c: float = 0.005
    mus: tuple[float, ...] = (0.51, 0.7)
    learning_rate: float = 0.1
    lr_schedule: str = "constant"
    num_steps: int = 3000
    batch_size: int = 64
    seed: int = 0
    curve_steps: int = 1000
    curve_learning_rate: float = 0.05
    curve_batch_size: int = 128
    num_points: int = 21
    eval_batch_size: int = 512
    top_k: int = 10

    def __post_init__(self) -> None:
        check_choice(self.setup, SETUPS, "setup")
        if SETUPS[self.setup].model in ("resnet",) or "bn" in SETUPS[self.setup].preset:
            raise ValueError(
                f"setup {self.setup!r} has BatchNorm; expected a model without it (points on "
                "the curve would need their own batch statistics)"
            )
        for field in ("c", "learning_rate", "curve_learning_rate"):
            check_real(getattr(self, field), field, minimum=0.0, strict=True)
        check_positive_values(self.mus, "mus")
        check_choice(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        positive = ("num_steps", "batch_size", "curve_steps", "curve_batch_size")
        for field in (*positive, "eval_batch_size"):
            check_positive_int(getattr(self, field), field)
        check_int(self.num_points, "num_points", minimum=3)
        check_int(self.top_k, "top_k", minimum=0)


def _apply(model: Bound, params: PyTree, x: jax.Array) -> jax.Array:
    return model.apply({"params": params}, x, train=False)[0]


def dataset_metric(
    model: Bound, task: Task, data: dict[str, np.ndarray], metric: str, batch_size: int
) -> Callable[[PyTree], jax.Array]:
    """``f(params) -> scalar``: the mean ``metric`` of ``task`` (``"loss"`` or ``"accuracy"``)
    over every example of ``data``.

    The data, ``x`` of shape ``(n, ...)`` and ``y`` of shape ``(n,)``, is padded to a multiple
    of ``batch_size`` (padding rows weigh 0) and summed chunk by chunk with ``jax.lax.map``, so
    ``f`` is traceable (usable inside :func:`curve_losses` and for Hessian-vector products).
    """
    n = len(data["y"])
    chunks = -(-n // batch_size)
    index = np.arange(chunks * batch_size)
    valid = (index < n).astype(np.float32)
    index = np.where(index < n, index, 0)

    def reshape(a: np.ndarray) -> jax.Array:
        return jnp.asarray(a).reshape(chunks, batch_size, *a.shape[1:])

    stacked = {
        "x": reshape(data["x"][index]),
        "y": reshape(data["y"][index]),
        "valid": reshape(valid),
    }

    def f(params: PyTree) -> jax.Array:
        def chunk(batch: dict) -> tuple[jax.Array, jax.Array]:
            return task.loss(_apply(model, params, batch["x"]), batch)[1][metric]

        totals, weights = jax.lax.map(chunk, stacked)
        return jnp.sum(totals) / jnp.sum(weights)

    return f


def _curve_batches(data: dict[str, np.ndarray], batch_size: int, seed: int) -> Iterator[dict]:
    for indices, _ in iterate_batches(len(data["y"]), batch_size, seed=seed):
        yield {k: jnp.asarray(v[indices]) for k, v in data.items()}


def _barrier(values: np.ndarray) -> float:
    """``max_t v(t) − max(v(0), v(1))``: how far the path rises above its endpoints."""
    return float(np.max(values) - max(values[0], values[-1]))


def valley_table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown table, one row per gRDA run (see :func:`run_grda_valley` for the figures)."""
    header = (
        "| μ | gRDA sparsity (%) | train loss SGD / gRDA | train-loss barrier curve / line "
        "| test err. SGD / gRDA (%) | max test err. curve / line (%) | min test err. curve (%) "
        "| eq. 9 ‖PΔ‖/‖Δ‖ | ‖w‖₂/‖w‖₁ SGD / gRDA |"
    )
    lines = [header, "|" + "---|" * 9]
    for mu, s in summary.items():
        cells = [
            mu,
            f"{100 * s['sparsity']:.1f}",
            f"{s['train_loss_sgd']:.4f} / {s['train_loss_grda']:.4f}",
            f"{s['train_barrier_curve']:.4f} / {s['train_barrier_line']:.4f}",
            f"{100 * s['test_error_sgd']:.2f} / {100 * s['test_error_grda']:.2f}",
            f"{100 * s['max_test_error_curve']:.2f} / {100 * s['max_test_error_line']:.2f}",
            f"{100 * s['min_test_error_curve']:.2f}",
            f"{s['top_eigenspace_fraction']:.4f}",
            f"{s['l2_l1_sgd']:.2e} / {s['l2_l1_grda']:.2e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Means of ``values`` ``(n,)`` over the ``window`` steps ending at each step from
    ``window - 1`` on, ``(n - window + 1,)``."""
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _plot(ts: np.ndarray, paths: dict[str, dict[str, np.ndarray]], title: str, path: Path) -> None:
    """Training loss and test error along each fitted Bézier curve (solid) and straight line
    (dashed) from ``w^SGD`` (``t = 0``) to ``w^gRDA`` (``t = 1``), one colour per ``μ``; the
    curve fit's minibatch loss per step with its moving average; ``title`` heads the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    marker = "." if len(ts) < 50 else None
    for i, (mu, p) in enumerate(paths.items()):
        color, name = f"C{i}", f"gRDA μ = {mu}"
        for ax, key, scale in ((axes[0], "train_loss", 1.0), (axes[1], "test_error", 100.0)):
            ax.plot(ts, scale * p[f"{key}_curve"], color=color, marker=marker, label=name)
            ax.plot(ts, scale * p[f"{key}_line"], color=color, marker=marker, ls="--")
        losses = p["bezier_fit_losses"]
        window = min(len(losses), max(10, len(losses) // 20))
        steps = np.arange(1, len(losses) + 1)
        axes[2].plot(steps, losses, color=color, lw=0.8, alpha=0.35)
        axes[2].plot(steps[window - 1 :], _moving_average(losses, window), color=color, label=name)
    for ax in axes[:2]:
        ax.plot([], [], "k-", label="Bézier curve (trained)")
        ax.plot([], [], "k--", label="straight line")
        ax.set_xlabel("t along the path (0: SGD minimum, 1: gRDA minimum)")
    axes[0].set(
        ylabel="training loss (cross-entropy, nats)",
        title="Training loss along the path (whole training set)",
        yscale=y_scale([v for line in axes[0].get_lines() for v in line.get_ydata()]),
    )
    axes[1].set(ylabel="test error (% wrong)", title="Test error along the path")
    axes[2].plot([], [], "k-", lw=0.8, alpha=0.35, label="per step (minibatch, random t)")
    axes[2].plot([], [], "k-", label=f"moving average ({window} steps)")
    axes[2].set(
        xlabel="step of the control point's SGD",
        ylabel="training loss (cross-entropy, nats)",
        title="Fit of the Bézier control point",
        yscale=y_scale([v for line in axes[2].get_lines() for v in line.get_ydata()]),
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)


def run_grda_valley(config: GRDAValleySettings, out_dir: Path, progress: bool = True) -> dict:
    """Train the endpoints, fit one Bézier curve per ``μ``, evaluate curves and lines; write
    ``table.md``, ``results.json`` and ``valley.png`` (endpoint runs under ``runs/``).

    Returns:
      ``{"table": str, "ts": (num_points,) array, "summary": {μ: figures}, "paths": {μ:
      {name: (num_points,) array}}}``.  ``summary`` figures: ``sparsity`` of ``w^gRDA``;
      ``train_loss_sgd``/``_grda`` and ``test_error_sgd``/``_grda`` at the endpoints;
      ``train_barrier_curve``/``_line`` (see :func:`_barrier`); ``max_test_error_curve``/
      ``_line``, ``min_test_error_curve``; ``top_eigenspace_fraction`` (NaN when
      ``top_k = 0``); ``l2_l1_sgd``/``_grda``.  ``paths``: ``train_loss_curve``/``_line``,
      ``test_error_curve``/``_line`` and ``bezier_fit_losses`` (``(curve_steps,)``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, splits = load_setup(config.setup)
    task = make_task(splits.task, num_outputs=splits.num_outputs, info=splits.info)
    rate = learning_rate_schedule(config.learning_rate, config.lr_schedule, config.num_steps)
    train_config = TrainConfig(
        num_steps=config.num_steps,
        batch_size=config.batch_size,
        log_every=config.num_steps,
        seed=config.seed,
        progress=progress,
    )

    def endpoint(name: str, optimizer: optax.GradientTransformation) -> PyTree:
        if progress:
            print(name, flush=True)
        result = train(
            model, splits, optimizer, train_config, run_dir=out_dir / "runs" / name, resume=False
        )
        return jax.tree_util.tree_map(jnp.asarray, result.state.params)

    eval_size = config.eval_batch_size
    train_loss = jax.jit(dataset_metric(model, task, splits.train, "loss", eval_size))
    test_accuracy = jax.jit(dataset_metric(model, task, splits.test, "accuracy", eval_size))

    def test_error(params: PyTree) -> jax.Array:
        return 1.0 - test_accuracy(params)

    def batch_loss(params: PyTree, batch: dict) -> jax.Array:
        return task.loss(_apply(model, params, batch["x"]), batch)[0]

    w_sgd = endpoint("SGD", optax.sgd(rate))
    key = jax.random.key(config.seed)
    fraction = None
    if config.top_k:
        eigen = hessian_eigenvalues(
            train_loss, w_sgd, key, k=config.top_k, return_eigenvectors=True
        )
        fraction = lambda delta: float(top_eigenspace_fraction(delta, eigen.eigenvectors))  # noqa: E731
    ts = np.linspace(0.0, 1.0, config.num_points)
    summary, paths = {}, {}
    for mu in config.mus:
        w_grda = endpoint(method_name(config.c, mu), grda(rate, config.c, mu))
        fit = fit_bezier_midpoint(
            batch_loss,
            w_sgd,
            w_grda,
            jax.random.fold_in(key, 1),
            num_steps=config.curve_steps,
            learning_rate=config.curve_learning_rate,
            batches=_curve_batches(splits.train, config.curve_batch_size, config.seed),
        )
        p = {
            "train_loss_curve": curve_losses(train_loss, w_sgd, fit.theta, w_grda, ts),
            "train_loss_line": line_losses(train_loss, w_sgd, w_grda, ts),
            "test_error_curve": curve_losses(test_error, w_sgd, fit.theta, w_grda, ts),
            "test_error_line": line_losses(test_error, w_sgd, w_grda, ts),
            "bezier_fit_losses": fit.losses,
        }
        p = {k: np.asarray(v, np.float64) for k, v in p.items()}
        delta = jax.tree_util.tree_map(jnp.subtract, w_grda, w_sgd)
        leaves = jax.tree_util.tree_leaves(w_grda)
        summary[f"{mu:g}"] = {
            "sparsity": sum(int(jnp.sum(x == 0)) for x in leaves) / sum(x.size for x in leaves),
            "train_loss_sgd": float(train_loss(w_sgd)),
            "train_loss_grda": float(train_loss(w_grda)),
            "test_error_sgd": float(test_error(w_sgd)),
            "test_error_grda": float(test_error(w_grda)),
            "train_barrier_curve": _barrier(p["train_loss_curve"]),
            "train_barrier_line": _barrier(p["train_loss_line"]),
            "max_test_error_curve": float(np.max(p["test_error_curve"])),
            "max_test_error_line": float(np.max(p["test_error_line"])),
            "min_test_error_curve": float(np.min(p["test_error_curve"])),
            "top_eigenspace_fraction": np.nan if fraction is None else fraction(delta),
            "l2_l1_sgd": float(sign_alignment_ratio(w_sgd)),
            "l2_l1_grda": float(sign_alignment_ratio(w_grda)),
        }
        paths[f"{mu:g}"] = p
    s = SETUPS[config.setup]
    table = valley_table(summary) + (
        f"\n\n{s.model} ({s.preset}) on {s.dataset}: SGD and gRDA (c = {config.c:g}) from one "
        f"initialization and minibatch order (seed {config.seed}), {config.num_steps} steps of "
        f"batch {config.batch_size} at rate {config.learning_rate:g} ({config.lr_schedule}); "
        f"Bézier control point: {config.curve_steps} SGD steps at rate "
        f"{config.curve_learning_rate:g}, batch {config.curve_batch_size}; losses and errors "
        f"on the whole training / test set at {config.num_points} points; barrier = max along "
        f"the path − max of its endpoints; eq. 9 with the top {config.top_k} Hessian "
        "eigenvectors of the training loss at w^SGD."
    )
    write_results(
        out_dir,
        dataclasses.asdict(config),
        {"summary": summary, "ts": ts.tolist(), "paths": paths},
        table,
    )
    _plot(
        ts,
        paths,
        f"{s.model} ({s.preset}) on {s.dataset}: SGD and gRDA minima (c = {config.c:g})",
        out_dir / "valley.png",
    )
    return {"table": table, "ts": ts, "summary": summary, "paths": paths}


EXPERIMENT = Experiment(
    name="grda_valley",
    description=(
        "Chao et al. (2020) (gRDA), Sec. 4.2: SGD and gRDA minima from one initialization, joined "
        "by a trained quadratic Bézier curve; training loss and test error along curve and "
        "straight line (barriers), eq. 9 fraction in the top Hessian eigenspace, ‖w‖₂/‖w‖₁."
    ),
    presets={
        "smoke": GRDAValleySettings(
            c=0.01,
            mus=(0.6,),
            num_steps=200,
            curve_steps=50,
            num_points=5,
            top_k=2,
        ),
        "small": GRDAValleySettings(),
        "paper": GRDAValleySettings(
            setup="vgg16-cifar10",
            c=0.0005,
            mus=(0.4, 0.51, 0.6, 0.7),
            lr_schedule="swa",
            num_steps=234_000,
            batch_size=128,
            curve_steps=117_000,
            curve_learning_rate=0.01,
            curve_batch_size=128,
            num_points=61,
            eval_batch_size=1000,
        ),
    },
    run=run_grda_valley,
)


__getattr__ = deprecated_names(__name__, {"ValleyConfig": GRDAValleySettings})
