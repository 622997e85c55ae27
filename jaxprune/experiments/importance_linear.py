"""``jaxprune experiment importance_linear``: Figure 1 of Li et al. (2020), the test risk of pruned
min-norm least squares and the covariance bias.

Features ``x ~ N(0, I_p)`` observed as ``Λx`` with ``Λ_ii = λ`` on the first 10% of the
coordinates (eq. 3.5), labels ``y = xᵀθ̄ + z``, ``θ̄_i ∝ 1/(1 + 4i/p)²`` of unit norm, ``n < p``
examples.  For each ``λ`` and each kept fraction ``s/p`` of the grid, the experiment reports

- (Fig. 1a, 1b) the test risk of magnitude pruning (MP) and Hessian pruning (HP) of the
  min-norm solution ``θ̂^Λ``: the analytic prediction of Def. 3.2 (the lines: the auxiliary
  distribution, averaged over ``num_draws`` draws) and the simulated risk (the markers: the
  exact population loss of the pruned least-squares fit, averaged over ``num_trials``
  datasets), with the largest |predicted − empirical| gap;
- (Fig. 1c) the natural importance of the first ``s`` weights: test NI of ``θ̄^Λ`` w.r.t. the
  population loss (``Σ_{i<=s} θ̄_i²``, the same for every ``λ``) and training NI of ``θ̂^Λ``
  w.r.t. the training loss, per ``λ`` (reading HB-9).

It writes ``table.md``, ``results.json`` and ``figure1.png`` (three panels as Fig. 1a–c).  The
grid, the numbers of draws and trials and the seed are jaxprune's choices (reading HB-9).

References:
  Li et al. (2020), "Exploring Weight Importance and Hessian Bias in Model Pruning", Sec. 3.1
  (Def. 3.2, eq. 3.5, the MP/HP loss formulas, Figure 1), Def. 2.1 (NI), Lemma 3.1; readings
  HB-1 to HB-4, HB-8, HB-9 (docs/readings.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxprune._validation import check_int, check_positive_int, check_real
from jaxprune.data.linear import decaying_theta, scaling_diagonal
from jaxprune.experiments import Experiment
from jaxprune.experiments.settings import check_positive_values
from jaxprune.methods.importance.linear import (
    METHODS,
    empirical_risk,
    leading_test_importance,
    leading_training_importance,
    predicted_risk,
)

__all__ = [
    "EXPERIMENT",
    "ImportanceLinearSettings",
    "importance_linear_tables",
    "plot_importance_linear",
    "run_importance_linear",
    "run_risk_curves",
]

_SHORT = {"magnitude": "MP", "hessian": "HP"}


@dataclasses.dataclass(frozen=True)
class ImportanceLinearSettings:
    """One Figure 1 run (each field is ``--set field=value``).

    Attributes:
      p: number of features.
      n: number of examples, ``n < p`` (``κ = p/n``; the paper: p = 1000, κ = 5/3).
      sigma: label-noise standard deviation ``σ >= 0``.
      lams: the scalings ``λ > 0`` of eq. 3.5 (the paper: 1/2, 1, 5).
      fraction: share of scaled (leading) features, in ``[0, 1]`` (the paper: 10%).
      num_points: the kept fractions are ``s/p = k/num_points``, ``k = 0..num_points``.
      num_draws: auxiliary draws per prediction (>= 2).
      num_trials: simulated datasets per ``λ`` (>= 2); MP, HP and the training NI see the same
        datasets.
      seed: seed of the draws and datasets.
    """

    p: int
    n: int
    sigma: float = 0.1
    lams: tuple[float, ...] = (0.5, 1.0, 5.0)
    fraction: float = 0.1
    num_points: int = 20
    num_draws: int = 2000
    num_trials: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.p, "p")
        if check_positive_int(self.n, "n") >= self.p:
            raise ValueError(
                f"n: expected fewer examples than p={self.p} (κ = p/n > 1), got {self.n}"
            )
        check_real(self.sigma, "sigma", minimum=0.0)
        check_positive_values(self.lams, "lams")
        check_real(self.fraction, "fraction", minimum=0.0, maximum=1.0)
        check_positive_int(self.num_points, "num_points")
        check_int(self.num_draws, "num_draws", minimum=2)
        check_int(self.num_trials, "num_trials", minimum=2)
        check_int(self.seed, "seed", minimum=0)


def run_risk_curves(config: ImportanceLinearSettings, progress: bool = False) -> dict[str, Any]:
    """Predicted and simulated MP/HP risks and the test/training NI of Figure 1.

    Args:
      config: an :class:`ImportanceLinearSettings`.
      progress: print one line per ``λ``.

    Returns:
      A dict with ``config``; ``keep`` (the sizes ``s``) and ``kept_fraction`` (``s/p``);
      ``curves[str(λ)][method]`` with lists ``predicted``, ``predicted_stderr``,
      ``empirical``, ``empirical_stderr``; ``test_importance`` (list over ``s``);
      ``training_importance[str(λ)]`` with ``importance``, ``stderr``; ``max_gap`` (the
      largest |predicted − empirical| over ``λ``, methods and ``s``) and where it occurs
      (``max_gap_at``), ``max_gap_z`` (the largest gap in combined standard errors; both over
      ``s > 0``, as ``s = 0`` is exact); and
      ``seconds`` (wall time).

    References: Li et al. (2020), Sec. 3.1 and Figure 1; reading HB-9 (docs/readings.md).
    """
    if not isinstance(config, ImportanceLinearSettings):
        raise TypeError(
            f"config: expected an ImportanceLinearSettings, got {type(config).__name__}"
        )
    start = time.perf_counter()
    theta_bar = decaying_theta(config.p)
    keep = np.round(np.arange(config.num_points + 1) * config.p / config.num_points).astype(int)
    common = dict(n=config.n, sigma=config.sigma, keep=keep)
    curves, training = {}, {}
    gaps = []  # (gap, z, λ, method, s/p)
    root = jax.random.key(config.seed)
    for index, lam in enumerate(config.lams):
        lam_diag = scaling_diagonal(config.p, lam, config.fraction)
        draw_key, data_key = jax.random.split(jax.random.fold_in(root, index))
        curves[str(lam)] = {}
        for method in METHODS:
            predicted = predicted_risk(
                lam_diag,
                theta_bar,
                method=method,
                key=draw_key,
                num_draws=config.num_draws,
                **common,
            )
            empirical = empirical_risk(
                lam_diag,
                theta_bar,
                method=method,
                key=data_key,
                num_trials=config.num_trials,
                **common,
            )
            curves[str(lam)][method] = {
                "predicted": predicted.risk.tolist(),
                "predicted_stderr": predicted.stderr.tolist(),
                "empirical": empirical.risk.tolist(),
                "empirical_stderr": empirical.stderr.tolist(),
            }
            gap = np.abs(predicted.risk - empirical.risk)
            combined = np.hypot(predicted.stderr, empirical.stderr)
            # s = 0 is exact in both (‖θ̄‖² + σ²): its "standard error" is rounding.
            for k in np.flatnonzero(keep > 0):
                z = gap[k] / combined[k]
                gaps.append((float(gap[k]), float(z), lam, method, float(keep[k] / config.p)))
        estimate = leading_training_importance(
            lam_diag,
            theta_bar,
            n=config.n,
            sigma=config.sigma,
            leading=keep,
            key=data_key,
            num_trials=config.num_trials,
        )
        training[str(lam)] = {
            "importance": estimate.importance.tolist(),
            "stderr": estimate.stderr.tolist(),
        }
        if progress:
            print(f"λ = {lam:g}: done ({time.perf_counter() - start:.1f} s elapsed)", flush=True)
    test_importance = leading_test_importance(
        np.ones(config.p), theta_bar, sigma=config.sigma, leading=keep
    )
    largest = max(gaps, key=lambda g: g[0])
    return {
        "config": dataclasses.asdict(config),
        "keep": keep.tolist(),
        "kept_fraction": (keep / config.p).tolist(),
        "curves": curves,
        "test_importance": test_importance.tolist(),
        "training_importance": training,
        "max_gap": largest[0],
        "max_gap_at": {"lam": largest[2], "method": largest[3], "kept_fraction": largest[4]},
        "max_gap_z": max(g[1] for g in gaps),
        "seconds": time.perf_counter() - start,
    }


def importance_linear_tables(results: dict[str, Any]) -> str:
    """Markdown: the risk table (predicted / empirical per ``λ`` and method), the NI table of
    Figure 1c, and the largest predicted − empirical gap, with a caption of the setting."""
    lams = list(results["curves"])
    header = ["s/p"] + [f"{_SHORT[m]} λ={lam}" for lam in lams for m in METHODS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, fraction in enumerate(results["kept_fraction"]):
        cells = [f"{fraction:.2f}"]
        for lam in lams:
            for method in METHODS:
                curve = results["curves"][lam][method]
                cells.append(f"{curve['predicted'][k]:.4f} / {curve['empirical'][k]:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    c = results["config"]
    lines.append(
        f"\nTest risk (predicted by Def. 3.2 / simulated) of the s-sparse MP and HP models: "
        f"p = {c['p']}, n = {c['n']} (κ = {c['p'] / c['n']:.4g}), σ = {c['sigma']}, λ on the "
        f"first {c['fraction']:.0%} of the features; {c['num_draws']} auxiliary draws and "
        f"{c['num_trials']} datasets per λ (seed {c['seed']})."
    )
    at = results["max_gap_at"]
    lines.append(
        f"\nLargest |predicted − empirical| = {results['max_gap']:.4g} "
        f"({_SHORT[at['method']]}, λ = {at['lam']}, s/p = {at['kept_fraction']:.2f}); largest "
        f"gap in combined standard errors: {results['max_gap_z']:.2f}.\n"
    )
    header = ["s/p", "test NI (θ̄)"] + [f"train NI λ={lam}" for lam in lams]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for k, fraction in enumerate(results["kept_fraction"]):
        cells = [f"{fraction:.2f}", f"{results['test_importance'][k]:.4f}"]
        for lam in lams:
            train = results["training_importance"][lam]
            cells.append(f"{train['importance'][k]:.4f} ± {train['stderr'][k]:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nNatural importance of the first s weights (Fig. 1c): test NI of θ̄^Λ w.r.t. the "
        "population loss (independent of λ, Lemma 3.1) and training NI of the min-norm θ̂^Λ "
        "w.r.t. the training loss (mean ± standard error over datasets; reading HB-9)."
    )
    return "\n".join(lines)


def plot_importance_linear(results: dict[str, Any], path: Path) -> None:
    """Save Figure 1a–c: (a) MP/HP risk for λ >= 1, (b) every λ with the smallest highlighted,
    lines predicted (Def. 3.2) and markers simulated (± standard error over datasets); (c) test
    and training NI of the first s weights (training NI ± standard error, shaded).

    References: Li et al. (2020), Sec. 3.1, Figure 1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fraction = np.asarray(results["kept_fraction"])
    lams = sorted(results["curves"], key=float)
    figure = Figure(figsize=(16, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    colors = {lam: f"C{i}" for i, lam in enumerate(lams)}
    styles = {"magnitude": ("-", "o"), "hessian": ("--", "x")}
    panel_a = [lam for lam in lams if float(lam) >= 1.0]
    for axis, shown, highlight in ((axes[0], panel_a, None), (axes[1], lams, lams[0])):
        for lam in shown:
            for method in METHODS:
                curve = results["curves"][lam][method]
                line, marker = styles[method]
                axis.plot(
                    fraction,
                    curve["predicted"],
                    line,
                    color=colors[lam],
                    linewidth=2.5 if lam == highlight else 1.2,
                    label=f"{_SHORT[method]}, λ = {lam}",
                )
                axis.errorbar(
                    fraction,
                    curve["empirical"],
                    yerr=curve["empirical_stderr"],
                    fmt=marker,
                    color=colors[lam],
                    markersize=5,
                    capsize=2,
                )
        axis.plot([], [], "k-", label="lines: predicted (Def. 3.2)")
        for method in METHODS:
            axis.plot(
                [], [], "k" + styles[method][1], ls="none", label=f"{_SHORT[method]} simulated"
            )
        axis.set(
            xlabel="kept fraction of the weights s/p",
            ylabel="test risk E(y − xᵀΛθ)² (squared error)",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_title("(a) Test risk of the pruned model, λ ≥ 1")
    axes[1].set_title(f"(b) Test risk, every λ (λ = {lams[0]} in bold)")
    axes[2].plot(
        fraction,
        results["test_importance"],
        "k-",
        linewidth=2.0,
        label=r"test NI of $\bar\theta^\Lambda$",
    )
    for lam in lams:
        train = results["training_importance"][lam]
        mean, error = np.asarray(train["importance"]), np.asarray(train["stderr"])
        axes[2].plot(
            fraction,
            mean,
            "--",
            color=colors[lam],
            label=r"training NI of $\hat\theta^\Lambda$" + f", λ = {lam}",
        )
        axes[2].fill_between(fraction, mean - error, mean + error, color=colors[lam], alpha=0.2)
    axes[2].set(
        xlabel="fraction of leading weights zeroed s/p",
        ylabel="loss increase when zeroed (squared error)",
        title="(c) Natural importance of the first s weights",
    )
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    c = results["config"]
    figure.suptitle(
        f"Pruned min-norm least squares, p = {c['p']}, n = {c['n']}, σ = {c['sigma']}, "
        f"first {c['fraction']:.0%} of the features scaled by λ (Li et al. 2020, Fig. 1)"
    )
    figure.savefig(path, dpi=120)


def run_importance_linear(
    config: ImportanceLinearSettings, out_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Run :func:`run_risk_curves`; write ``table.md``, ``results.json`` and ``figure1.png``.

    Returns:
      The results of :func:`run_risk_curves` plus ``"table"`` (markdown).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run_risk_curves(config, progress=progress)
    table = importance_linear_tables(results)
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot_importance_linear(results, out_dir / "figure1.png")
    return {**results, "table": table}


EXPERIMENT = Experiment(
    name="importance_linear",
    description=(
        "Figure 1 of Li et al. (2020): test risk of magnitude- and Hessian-pruned min-norm least "
        "squares with the leading 10% of features scaled by λ, predicted by the auxiliary "
        "distribution (Def. 3.2) and simulated, and the test vs training natural importance of "
        "the first s weights."
    ),
    presets={
        # Seconds on a CPU.
        "smoke": ImportanceLinearSettings(p=60, n=36, num_points=6, num_draws=1000, num_trials=40),
        # The paper's sizes with fewer datasets.
        "small": ImportanceLinearSettings(p=1000, n=600, num_trials=40),
        # Figure 1: p = 1000, κ = 5/3, σ = 0.1, λ ∈ {1/2, 1, 5}.
        "paper": ImportanceLinearSettings(p=1000, n=600, num_draws=5000, num_trials=200),
    },
    run=run_importance_linear,
)
