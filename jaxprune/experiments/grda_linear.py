"""``jaxprune experiment grda_linear``: Theorem 3.1 where everything is exact, over-parameterized
least squares.

With ``ℓ(w) = ‖Xw − y‖² / (2n)``, ``X`` of shape ``(n, d)`` and ``d > n``, the Hessian
``H = XᵀX / n`` is constant with rank ``n``: its null space (dimension ``d − n``) is exactly the
valley of minimizers, the flat directions ``P_0`` of Chao et al. (2020).
:func:`run_linear_regression` trains gRDA and SGD (full batch, so the two see the same
"minibatches") from the same initialization, computes the directional-pruning solution of the
SGD iterate with the exact ``Π_0`` (from an eigendecomposition of ``H``) and ``λ`` equal to
gRDA's threshold, and reports how close gRDA lands to it. The experiment writes ``table.md``,
``results.json`` and ``grda_linear.png``.

The correspondence (Theorem 3.1, eq. 8): after ``N`` steps at rate ``γ`` (time ``t = Nγ``),
``w^gRDA ≈ argmin_w ½‖w^SGD − w‖² + λ_{γ,t} Σ_j s̄_j |w_j|`` with ``λ_{γ,t} = c√γ t^μ =
c·γ^{1/2}(Nγ)^μ``, which is gRDA's own soft threshold ``g(N, γ)`` after those steps, and
``s̄_j → s_j = sign(w_j^SGD)(Π_0 sign(w^SGD))_j``.  So ``λ`` is the threshold in gRDA's final
state; the scores use the SGD iterate's signs (the theorem assumes they agree with the gradient
flow's, (A5)).

References:
  Chao et al. (2020), "Directional pruning of deep neural networks", Sec. 3 (Theorem 3.1, eq. 8,
  assumption (A3): the zero-eigenvalue eigenspace of the limiting Hessian is ``P_0``), Appendix
  B.2 (``λ_{γ,t} = c√γ t^μ``), Definition 1.1 and Proposition A.1, Section 4.3 (the fraction of
  ``Δ`` in the top eigenspace).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_int, check_positive_int, check_real
from jaxprune.experiments import Experiment
from jaxprune.experiments.settings import deprecated_names
from jaxprune.methods.directional import (
    directional_pruning_solution,
    projection_scores,
    top_eigenspace_fraction,
)
from jaxprune.optim.grda import grda

__all__ = [
    "EXPERIMENT",
    "GRDALinearSettings",
    "linear_regression_table",
    "plot_linear_regression",
    "run_grda_linear",
    "run_linear_regression",
]


@dataclasses.dataclass(frozen=True)
class GRDALinearSettings:
    """One over-parameterized least-squares run (each field is ``--set field=value``).

    Attributes:
      n: number of examples (the rank of the Hessian).
      d: number of parameters, ``d > n``.
      noise: standard deviation of the label noise (``y = X w* + noise·ε``, ``X``, ``w*``,
        ``ε`` standard Gaussian).
      c: gRDA's threshold scale ``c >= 0``.
      mu: gRDA's threshold exponent ``μ > 0`` (theory: ``0.5 < μ < 1``).
      learning_rate: the constant rate ``γ`` of both optimizers, below ``2 / λ_max(H)``.
      num_steps: number of full-batch steps ``N``.
      seed: seed of the data and of the initialization.
      init_scale: standard deviation of the Gaussian initialization ``w_0``.
    """

    n: int
    d: int
    noise: float
    c: float
    mu: float
    learning_rate: float
    num_steps: int
    seed: int = 0
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int(self.n, "n")
        check_positive_int(self.num_steps, "num_steps")
        check_int(self.seed, "seed", minimum=0)
        if check_int(self.d, "d") <= self.n:
            raise ValueError(
                f"d: expected more parameters than n={self.n} (over-parameterized, so the "
                f"Hessian has a null space), got {self.d}"
            )
        for name in ("noise", "c", "init_scale"):
            check_real(getattr(self, name), name, minimum=0.0)
        for name in ("mu", "learning_rate"):
            check_real(getattr(self, name), name, minimum=0.0, strict=True)


def _data(config: GRDALinearSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(config.seed)
    x = rng.normal(size=(config.n, config.d)).astype(np.float32)
    w_true = rng.normal(size=config.d)
    y = (x @ w_true + config.noise * rng.normal(size=config.n)).astype(np.float32)
    w0 = (config.init_scale * rng.normal(size=config.d)).astype(np.float32)
    return x, y, w0


def _train(tx: optax.GradientTransformation, x, y, w0, num_steps: int):
    """Full-batch training; returns the final weights, the per-step losses (before each step)
    and sparsities (after each step), and the final optimizer state."""

    def loss(w):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    def step(carry, _):
        w, state = carry
        value, grads = jax.value_and_grad(loss)(w)
        updates, state = tx.update(grads, state, w)
        w = optax.apply_updates(w, updates)
        return (w, state), (value, jnp.mean(w == 0))

    @jax.jit
    def run(w):
        (w, state), (losses, sparsity) = jax.lax.scan(step, (w, tx.init(w)), length=num_steps)
        return w, losses, sparsity, state

    return run(jnp.asarray(w0))


def _ratio(a: float, b: float) -> float:
    """``a / b`` as a float, NaN when ``b = 0`` (e.g. ``c = 0``: gRDA is SGD)."""
    return float(a / b) if b > 0 else math.nan


def run_linear_regression(config: GRDALinearSettings) -> dict[str, Any]:
    """Train gRDA and SGD on over-parameterized least squares and compare gRDA with the
    directional-pruning solution of the SGD iterate.

    Both start from the same ``w_0`` and take ``num_steps`` full-batch steps at the same rate
    (float32).  The analysis is in float64: ``Π_0 = I − U Uᵀ``, ``U`` the eigenvectors of
    ``H = XᵀX/n`` with eigenvalue above ``1e-6·λ_max`` (the row space of ``X``); scores
    ``s = sign(w^SGD) ⊙ Π_0 sign(w^SGD)``; ``w^DP`` solves problem (3) with ``λ`` = gRDA's
    final threshold ``c·γ^{1/2}(Nγ)^μ`` (see the module docstring for why).

    Args:
      config: a :class:`GRDALinearSettings` (e.g. ``EXPERIMENT.presets["smoke"]``).

    Returns:
      A dict with

      - ``lam``: the threshold λ;
      - ``dp_distance``: ``‖w^gRDA − w^DP‖ / ‖w^SGD‖``;
      - ``sgd_dp_distance``: ``‖w^SGD − w^DP‖ / ‖w^SGD‖`` (gRDA's distance if it did nothing);
      - ``dp_relative_error``: their ratio ``‖w^gRDA − w^DP‖ / ‖w^SGD − w^DP‖``;
      - ``null_space_fraction``, ``row_space_fraction``: ``‖Π_0 Δ‖/‖Δ‖`` and
        ``‖(I − Π_0) Δ‖/‖Δ‖`` for ``Δ = w^gRDA − w^SGD`` (eq. 9 with the whole row space as
        the top eigenspace; their squares sum to 1; NaN when ``Δ = 0``);
      - ``support_agreement``: fraction of coordinates zero in both or non-zero in both of
        ``w^gRDA`` and ``w^DP``;
      - ``sparsity_grda``, ``sparsity_sgd``, ``sparsity_dp``: fractions of exact zeros;
      - ``loss_init``, ``loss_grda``, ``loss_sgd``, ``loss_dp``: training losses;
      - ``config``: the config as a dict;
      - ``history``: ``(num_steps,)`` arrays ``loss_grda``, ``loss_sgd`` (before each step)
        and ``sparsity_grda`` (after each step);
      - ``weights``: ``(d,)`` arrays ``w0``, ``grda``, ``sgd``, ``dp``.

    Raises:
      ValueError: ``learning_rate >= 2/λ_max(H)`` (gradient descent would diverge).

    References:
      Chao et al. (2020), Theorem 3.1 (eq. 8, ``λ_{γ,t} = c√γ t^μ``), Definition 1.1,
      Proposition A.1, Section 4.3 (eq. 9).
    """
    if not isinstance(config, GRDALinearSettings):
        raise TypeError(f"config: expected a GRDALinearSettings, got {type(config).__name__}")
    x, y, w0 = _data(config)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    eigenvalues, eigenvectors = np.linalg.eigh(x64.T @ x64 / config.n)
    top = eigenvalues[-1]
    if config.learning_rate * top >= 2:
        raise ValueError(
            f"learning_rate must be below 2/λ_max(H) = {2 / top:.4g} for this data, got "
            f"{config.learning_rate}"
        )
    rows = eigenvectors[:, eigenvalues > 1e-6 * top].T  # (rank, d): the row space of X

    w_grda, loss_grda, sparsity_grda, state = _train(
        grda(config.learning_rate, config.c, config.mu), x, y, w0, config.num_steps
    )
    w_sgd, loss_sgd, _, _ = _train(optax.sgd(config.learning_rate), x, y, w0, config.num_steps)
    lam = float(state.threshold)

    w_grda = np.asarray(w_grda, np.float64)
    w_sgd = np.asarray(w_sgd, np.float64)
    delta = w_grda - w_sgd
    with jax.enable_x64(True):
        scores = projection_scores(w_sgd, rows)
        w_dp = np.asarray(directional_pruning_solution(w_sgd, scores, lam), np.float64)
        row_fraction = float(top_eigenspace_fraction(delta, rows))
    null_part = delta - rows.T @ (rows @ delta)

    def loss(w: np.ndarray) -> float:
        return float(0.5 * np.mean((x64 @ w - y64) ** 2))

    norm_sgd = np.linalg.norm(w_sgd)
    return {
        "config": dataclasses.asdict(config),
        "lam": lam,
        "dp_distance": float(np.linalg.norm(w_grda - w_dp) / norm_sgd),
        "sgd_dp_distance": float(np.linalg.norm(w_sgd - w_dp) / norm_sgd),
        "dp_relative_error": _ratio(np.linalg.norm(w_grda - w_dp), np.linalg.norm(w_sgd - w_dp)),
        "null_space_fraction": _ratio(np.linalg.norm(null_part), np.linalg.norm(delta)),
        "row_space_fraction": row_fraction,
        "support_agreement": float(np.mean((w_grda == 0) == (w_dp == 0))),
        "sparsity_grda": float(np.mean(w_grda == 0)),
        "sparsity_sgd": float(np.mean(w_sgd == 0)),
        "sparsity_dp": float(np.mean(w_dp == 0)),
        "loss_init": loss(w0.astype(np.float64)),
        "loss_grda": loss(w_grda),
        "loss_sgd": loss(w_sgd),
        "loss_dp": loss(w_dp),
        "history": {
            "loss_grda": np.asarray(loss_grda),
            "loss_sgd": np.asarray(loss_sgd),
            "sparsity_grda": np.asarray(sparsity_grda),
        },
        "weights": {"w0": w0, "grda": w_grda, "sgd": w_sgd, "dp": w_dp},
    }


def plot_linear_regression(results: dict[str, Any], path: Path) -> None:
    """Save a three-panel figure of :func:`run_linear_regression`'s results to ``path``.

    Left: training loss per step of SGD and gRDA.  Middle: gRDA's sparsity per step.  Right:
    each coordinate of ``w^gRDA`` and of the directional-pruning solution ``w^DP`` against
    ``w^SGD`` (gRDA performing directional pruning puts the two marks on top of each other).

    References:
      Chao et al. (2020), Theorem 3.1 and Figure 1 (left: the directional-pruning path).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history, weights = results["history"], results["weights"]
    steps = np.arange(1, len(history["loss_sgd"]) + 1)
    figure = Figure(figsize=(14, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    axes[0].semilogy(steps, history["loss_sgd"], label="SGD")
    axes[0].semilogy(steps, history["loss_grda"], label="gRDA")
    axes[0].set(
        xlabel="step (full batch)",
        ylabel=r"training loss $\|Xw - y\|^2 / (2n)$",
        title="Training loss",
    )
    axes[0].legend()
    axes[1].plot(steps, history["sparsity_grda"], color="tab:orange", label="gRDA")
    axes[1].set(
        xlabel="step (full batch)",
        ylabel="weights exactly zero (fraction)",
        title="Sparsity of gRDA's iterate",
    )
    axes[1].legend()
    w_sgd = weights["sgd"]
    axes[2].scatter(
        w_sgd,
        weights["dp"],
        marker="x",
        s=30,
        color="tab:green",
        label=r"directional pruning $w^{\rm DP}$",
    )
    axes[2].scatter(
        w_sgd, weights["grda"], marker="o", s=10, color="tab:orange", label=r"gRDA $w^{\rm gRDA}$"
    )
    lim = float(np.max(np.abs(w_sgd))) * 1.1
    axes[2].plot([-lim, lim], [-lim, lim], color="gray", linewidth=0.5, label=r"$w = w^{\rm SGD}$")
    axes[2].set(
        xlabel=r"$w_j^{\rm SGD}$ (final SGD weight)",
        ylabel=r"$w_j$ (final weight)",
        title=(
            f"Final weights against SGD's (λ = {results['lam']:.3g})\n"
            r"$\|w^{\rm gRDA} - w^{\rm DP}\| \,/\, \|w^{\rm SGD}\|$"
            f" = {results['dp_distance']:.3f}"
        ),
    )
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    figure.savefig(path, dpi=120)


_TABLE_ROWS = (
    ("lam", "λ = c·γ^{1/2}(Nγ)^μ (gRDA's final threshold)"),
    ("dp_distance", "‖w^gRDA − w^DP‖ / ‖w^SGD‖"),
    ("sgd_dp_distance", "‖w^SGD − w^DP‖ / ‖w^SGD‖"),
    ("dp_relative_error", "‖w^gRDA − w^DP‖ / ‖w^SGD − w^DP‖"),
    ("null_space_fraction", "‖Π_0 Δ‖ / ‖Δ‖, Δ = w^gRDA − w^SGD"),
    ("row_space_fraction", "‖(I − Π_0) Δ‖ / ‖Δ‖ (eq. 9)"),
    ("support_agreement", "zero pattern of w^gRDA = that of w^DP"),
    ("sparsity_grda", "sparsity of w^gRDA"),
    ("sparsity_dp", "sparsity of w^DP"),
    ("sparsity_sgd", "sparsity of w^SGD"),
    ("loss_init", "training loss at w_0"),
    ("loss_sgd", "training loss of w^SGD"),
    ("loss_grda", "training loss of w^gRDA"),
    ("loss_dp", "training loss of w^DP"),
)


def linear_regression_table(results: dict[str, Any]) -> str:
    """Markdown table of the scalar figures of :func:`run_linear_regression`, with a caption
    line naming the configuration."""
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {label} | {results[key]:.4g} |" for key, label in _TABLE_ROWS]
    c = results["config"]
    lines.append(
        f"\nLeast squares with n = {c['n']} examples, d = {c['d']} parameters, noise "
        f"{c['noise']}; gRDA (c = {c['c']}, μ = {c['mu']}) and SGD, γ = {c['learning_rate']}, "
        f"{c['num_steps']} full-batch steps from one initialization (seed {c['seed']}); w^DP: "
        "the directional-pruning solution of w^SGD with the exact Π_0."
    )
    return "\n".join(lines)


def run_grda_linear(
    config: GRDALinearSettings, out_dir: Path, progress: bool = True
) -> dict[str, Any]:
    """Run :func:`run_linear_regression`; write ``table.md``, ``results.json`` (the scalar
    figures) and ``grda_linear.png`` to ``out_dir``.

    Returns:
      The scalar figures of :func:`run_linear_regression` plus ``"table"`` (markdown).
    """
    del progress  # one jitted scan per optimizer: nothing to report along the way
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run_linear_regression(config)
    table = linear_regression_table(results)
    figures = {k: v for k, v in results.items() if k not in ("history", "weights")}
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps(figures, indent=1))
    plot_linear_regression(results, out_dir / "grda_linear.png")
    return {**figures, "table": table}


EXPERIMENT = Experiment(
    name="grda_linear",
    description=(
        "Theorem 3.1 of Chao et al. (2020) on over-parameterized least squares: gRDA and SGD from "
        "one initialization; distance of gRDA to the directional-pruning solution of SGD (exact "
        "Hessian null space), the share of gRDA − SGD in flat directions, sparsity and losses."
    ),
    presets={
        # < 5 s on a CPU, compilation included.
        "smoke": GRDALinearSettings(
            n=20, d=60, noise=0.1, c=0.2, mu=0.6, learning_rate=0.05, num_steps=2000
        ),
        "small": GRDALinearSettings(
            n=50, d=200, noise=0.1, c=0.3, mu=0.6, learning_rate=0.02, num_steps=5000
        ),
        # Theorem 3.1's regime: small γ, long time, μ in (0.5, 1).
        "paper": GRDALinearSettings(
            n=200, d=1000, noise=0.1, c=0.1, mu=0.6, learning_rate=0.005, num_steps=40_000
        ),
    },
    run=run_grda_linear,
)


__getattr__ = deprecated_names(__name__, {"LinearRegressionConfig": GRDALinearSettings})
