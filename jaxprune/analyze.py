"""The ``jaxprune analyze`` job: NTK, per-neuron and Hessian spectra of a trained model.

Trains a built-in MLP on a built-in dataset for a few steps, then on a fixed probe batch
computes the empirical NTK spectrum and PL condition number, the per-neuron kernel features
(λ_min and spectral entropy, paper 000 Section 3.2.2), the Hutchinson trace of the loss
Hessian and of the output Hessian (Algorithm 1), and the top Hessian eigenvalues; prints a
table and writes ``summary.json`` and plots into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune.data import DATASETS, load_builtin
from jaxprune.group_ids import group_sizes
from jaxprune.masks import GroupLayout, build_group_ids, neurons
from jaxprune.models import MLP
from jaxprune.spectra import (
    empirical_ntk,
    group_rank_bound,
    hessian_eigenvalues,
    hessian_trace,
    output_hessian_trace,
    pl_condition,
    spectrum_features,
)

__all__ = ["ACTIVATIONS", "AnalyzeConfig", "format_table", "run_analyze"]

#: Hidden-layer nonlinearities of the analyzed MLP.  With ReLU a neuron's own kernel has a zero
#: row for every probe example on which it is inactive, so its λ_min is 0 (reported as rank
#: deficient); tanh neurons are active everywhere.
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu}


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """Settings of ``jaxprune analyze`` (each is a command-line flag of the same name)."""

    dataset: str = "digits"
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    train_steps: int = 300
    batch_size: int = 128
    learning_rate: float = 1e-2
    probe_examples: int = 128
    num_probes: int = 64
    top_k: int = 8
    seed: int = 0
    float64: bool = False
    out: str = "runs/analyze"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        if not self.hidden or any(w < 1 for w in self.hidden):
            raise ValueError(f"hidden must be one or more widths >= 1, got {self.hidden!r}")
        for name in ("batch_size", "probe_examples", "num_probes", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0, got {self.train_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def _loss(apply_fn, task: str):
    if task == "classification":

        def loss(params, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()
    else:

        def loss(params, x, y):
            return 0.5 * jnp.mean(jnp.sum((apply_fn(params, x) - y) ** 2, axis=-1))

    return loss


def _train(loss, params, data, config: AnalyzeConfig, key, progress: bool):
    optimizer = optax.adam(config.learning_rate)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    n = data.x.shape[0]
    value = jnp.nan
    for _ in tqdm(range(config.train_steps), desc="train", disable=not progress):
        key, sub = jax.random.split(key)
        index = jax.random.choice(sub, n, (min(config.batch_size, n),), replace=False)
        params, state, value = step(params, state, data.x[index], data.y[index])
    return params, float(value)


def run_analyze(config: AnalyzeConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the analysis and write its outputs; returns the summary (also ``summary.json``)."""
    previous_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", config.float64)
    try:
        return _run(config, progress)
    finally:
        jax.config.update("jax_enable_x64", previous_x64)


def _run(config: AnalyzeConfig, progress: bool) -> dict[str, Any]:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = jnp.float64 if config.float64 else jnp.float32
    key_data, key_init, key_train, key_trace, key_eig = jax.random.split(
        jax.random.PRNGKey(config.seed), 5
    )
    data = load_builtin(config.dataset, key_data)
    model = MLP(
        hidden=config.hidden,
        num_outputs=data.num_outputs,
        activation=ACTIVATIONS[config.activation],
    )
    x_all = jnp.asarray(data.x, dtype)
    params = model.init(key_init, x_all[:1])
    params = jax.tree_util.tree_map(lambda w: w.astype(dtype), params)
    loss = _loss(model.apply, data.task)
    data = data._replace(x=x_all)

    timings: dict[str, float] = {}
    stages = tqdm(total=5, desc="analyze", disable=not progress)

    def stage(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 3)
        stages.set_postfix_str(name)
        stages.update()

    start = time.perf_counter()
    params, final_loss = _train(loss, params, data, config, key_train, progress)
    stage("train", start)

    n = min(config.probe_examples, data.x.shape[0])
    x, y = data.x[:n], data.y[:n]
    start = time.perf_counter()
    kernel = empirical_ntk(model.apply, params, x)
    whole = spectrum_features(kernel, dtype=np.float64)
    pl = pl_condition(kernel, dtype=np.float64)
    stage("ntk", start)

    start = time.perf_counter()
    hidden_layers = "|".join(str(i) for i in range(len(config.hidden)))
    hidden_only, layout = build_group_ids(params, neurons(rf"Dense_(?:{hidden_layers})$"))
    group_kernels = empirical_ntk(model.apply, params, x, group_ids=hidden_only)
    bound = group_rank_bound(group_sizes(params, hidden_only), data.num_outputs, n)
    groups = spectrum_features(group_kernels, max_rank=bound, dtype=np.float64)
    stage("groups", start)

    batch_loss = lambda p: loss(p, x, y)  # noqa: E731
    start = time.perf_counter()
    trace = hessian_trace(batch_loss, params, key_trace, num_probes=config.num_probes)
    output_trace = output_hessian_trace(
        model.apply, params, x, key_trace, num_probes=config.num_probes
    )
    stage("hessian trace", start)
    start = time.perf_counter()
    top = hessian_eigenvalues(batch_loss, params, key_eig, k=config.top_k)
    stage("hessian eigenvalues", start)
    stages.close()

    summary = {
        "config": dataclasses.asdict(config),
        "train_loss": final_loss,
        "probe_examples": n,
        "ntk": {
            "lambda_max": float(whole.lambda_max),
            "lambda_min": float(whole.lambda_min),
            "condition_number": float(whole.condition_number),
            "entropy": float(whole.entropy),
            "effective_rank": float(whole.effective_rank),
            "rank": int(whole.rank),
        },
        "pl": {
            "pl_constant": float(pl.pl_constant),
            "lipschitz": float(pl.lipschitz),
            "condition_number_Lf_over_mu": float(pl.condition_number),
        },
        "groups": {
            "count": int(group_kernels.shape[0]),
            "layers": list(layout.layer_names),
            "layer_of_group": layout.layer_of_group.tolist(),
            "lambda_min": np.asarray(groups.lambda_min).tolist(),
            "lambda_min_nonzero": np.asarray(groups.lambda_min_nonzero).tolist(),
            "rank": np.asarray(groups.rank).tolist(),
            "entropy": np.asarray(groups.entropy).tolist(),
            "condition_number": np.asarray(groups.condition_number).tolist(),
            "rank_deficient": int(np.sum(groups.rank_deficient)),
        },
        "hessian": {
            "trace": float(trace.estimate),
            "trace_stderr": float(trace.stderr),
            "output_trace": float(output_trace.estimate),
            "output_trace_stderr": float(output_trace.stderr),
            "top_eigenvalues": np.asarray(top.eigenvalues).tolist(),
        },
        "seconds": timings,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(out, whole.eigenvalues, np.asarray(top.eigenvalues), groups, layout)
    return summary


def _plot(out: Path, ntk_eigenvalues, hessian_top, groups, layout: GroupLayout) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    values = np.asarray(ntk_eigenvalues)
    positive = values[values > 0]
    axes[0].semilogy(np.arange(1, positive.size + 1), positive, ".-")
    axes[0].set(title="Empirical NTK spectrum", xlabel="index", ylabel="eigenvalue")
    axes[1].plot(np.arange(1, hessian_top.size + 1), hessian_top, "o-")
    axes[1].set(title="Top Hessian eigenvalues (Lanczos)", xlabel="index", ylabel="eigenvalue")
    fig.tight_layout()
    fig.savefig(out / "spectrum.png", dpi=120)
    plt.close(fig)

    rows = [layout.groups_in_layer(layer) for layer in range(layout.num_layers)]
    fig, axes = plt.subplots(2, 1, figsize=(10, 1.2 + 2.2 * len(rows)))
    for ax, field, label in (
        (
            axes[0],
            np.log10(np.maximum(np.asarray(groups.lambda_min_nonzero), 1e-30)),
            "log10 smallest nonzero eigenvalue",
        ),
        (axes[1], np.asarray(groups.entropy), "spectral entropy ρ"),
    ):
        grid = np.full((len(rows), max(len(r) for r in rows)), np.nan)
        for row, members in enumerate(rows):
            grid[row, : len(members)] = field[members]
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set(title=f"Per-neuron NTK feature: {label}", xlabel="neuron", ylabel="layer")
        ax.set_yticks(range(len(rows)), [name.split("/")[-1] for name in layout.layer_names])
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "groups.png", dpi=120)
    plt.close(fig)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as an aligned text table."""
    ntk, pl, hess, grp = summary["ntk"], summary["pl"], summary["hessian"], summary["groups"]
    lmin = np.asarray(grp["lambda_min"])
    lnz = np.asarray(grp["lambda_min_nonzero"])
    rank = np.asarray(grp["rank"])
    ent = np.asarray(grp["entropy"])
    rows = [
        ("probe examples", f"{summary['probe_examples']}"),
        ("final train loss", f"{summary['train_loss']:.4g}"),
        ("NTK λ_max", f"{ntk['lambda_max']:.4g}"),
        ("NTK λ_min", f"{ntk['lambda_min']:.4g}"),
        ("NTK condition λ_max/λ_min", f"{ntk['condition_number']:.4g}"),
        ("NTK spectral entropy ρ", f"{ntk['entropy']:.4g}"),
        ("NTK rank / effective rank", f"{ntk['rank']} / {ntk['effective_rank']:.1f}"),
        ("PL constant μ = λ_min", f"{pl['pl_constant']:.4g}"),
        ("Lipschitz L_f = √λ_max", f"{pl['lipschitz']:.4g}"),
        ("condition L_f/μ", f"{pl['condition_number_Lf_over_mu']:.4g}"),
        ("neuron groups", f"{grp['count']} ({grp['rank_deficient']} rank deficient)"),
        (
            "group λ_min median [min, max]",
            f"{np.median(lmin):.3g} [{lmin.min():.3g}, {lmin.max():.3g}]",
        ),
        (
            "group nonzero λ_min median [min, max]",
            f"{np.median(lnz):.3g} [{lnz.min():.3g}, {lnz.max():.3g}]",
        ),
        (
            "group kernel rank median [min, max]",
            f"{np.median(rank):.0f} [{rank.min()}, {rank.max()}]",
        ),
        (
            "group entropy median [min, max]",
            f"{np.median(ent):.3g} [{ent.min():.3g}, {ent.max():.3g}]",
        ),
        ("loss Hessian trace", f"{hess['trace']:.4g} ± {hess['trace_stderr']:.2g}"),
        ("output Hessian trace", f"{hess['output_trace']:.4g} ± {hess['output_trace_stderr']:.2g}"),
        ("top Hessian eigenvalues", ", ".join(f"{v:.3g}" for v in hess["top_eigenvalues"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
