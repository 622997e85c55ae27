"""The ``jaxprune analyze`` job: NTK, per-neuron and Hessian spectra of a trained model.

Trains a built-in MLP on a built-in dataset for a few Adam steps with the training engine
(:func:`jaxprune.train.train`), then on a fixed probe batch computes the empirical NTK spectrum
and PL condition number, the per-neuron kernel features (λ_min and spectral entropy, Chen et
al. (2023), Sec. 3.2.2), the Hutchinson trace of the loss Hessian and of the output Hessian
(Chen et al. (2023), Algorithm 1; reading PL-1, docs/readings.md), and the top Hessian
eigenvalues; prints a table and writes ``summary.json`` and plots into the run directory.

References:
  Chen et al. (2023), Sec. 3.2.2 and Algorithm 1.
  Hutchinson (1990) (stochastic trace estimation).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune._validation import (
    check_bool,
    check_choice,
    check_int,
    check_positive_int,
    check_real,
)
from jaxprune.data import DATASETS, Splits, load_builtin
from jaxprune.group_ids import group_sizes
from jaxprune.masks import GroupLayout, build_group_ids, neurons
from jaxprune.spectra import (
    empirical_ntk,
    group_rank_bound,
    hessian_eigenvalues,
    hessian_trace,
    output_hessian_trace,
    pl_condition,
    spectrum_features,
)
from jaxprune.train import Bound, TrainConfig, build_model, make_task, train
from jaxprune.typing import PyTree

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
        check_choice(self.dataset, DATASETS, "dataset")
        check_choice(self.activation, ACTIVATIONS, "activation")
        if isinstance(self.hidden, str) or not isinstance(self.hidden, Sequence):
            raise TypeError(
                f"hidden: expected a sequence of widths >= 1 (e.g. (64, 64)), got {self.hidden!r}"
            )
        if not self.hidden:
            raise ValueError(f"hidden: expected one or more widths >= 1, got {self.hidden!r}")
        for width in self.hidden:
            check_positive_int(width, "hidden")
        for name in ("batch_size", "probe_examples", "num_probes", "top_k"):
            check_positive_int(getattr(self, name), name)
        check_int(self.train_steps, "train_steps", minimum=0)
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)
        check_int(self.seed, "seed", minimum=0)
        check_bool(self.float64, "float64")
        if not isinstance(self.out, str | os.PathLike):
            raise TypeError(f"out: expected a directory path, got {self.out!r}")


def _model(config: AnalyzeConfig, data_shape: tuple[int, ...], num_outputs: int) -> Bound:
    return build_model(
        "mlp",
        num_outputs=num_outputs,
        input_shape=data_shape,
        preset=",".join(str(width) for width in config.hidden),
        overrides={"activation": ACTIVATIONS[config.activation]},
    )


def _train(
    model: Bound, splits: Splits, config: AnalyzeConfig, key_init: jax.Array, progress: bool
) -> tuple[PyTree, float]:
    """``(variables, final training loss)`` after ``config.train_steps`` Adam steps of the
    training engine (seeded by ``config.seed``; the loss is that of the last batch).  With 0
    steps: the variables initialized from ``key_init`` and a NaN loss."""
    if config.train_steps == 0:
        return model.init(key_init, splits.train["x"][:1]), float("nan")
    n = len(splits.train["x"])
    train_config = TrainConfig(
        num_steps=config.train_steps,
        batch_size=min(config.batch_size, n),
        eval_batch_size=len(splits.test["x"]),
        log_every=1,
        seed=config.seed,
        num_devices=1,
        progress=progress,
    )
    result = train(model, splits, optax.adam(config.learning_rate), train_config)
    return {"params": result.state.params}, result.summary["train_loss"]


def run_analyze(config: AnalyzeConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run the analysis and write its outputs; returns the summary (also ``summary.json``).

    Raises:
      TypeError: ``config`` not an :class:`AnalyzeConfig`.
      ValueError: ``config.probe_examples`` above the dataset's size.
    """
    if not isinstance(config, AnalyzeConfig):
        raise TypeError(f"config: expected an AnalyzeConfig, got {type(config).__name__}")
    check_bool(progress, "progress")
    previous_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", config.float64)
    try:
        return _run(config, progress)
    finally:
        jax.config.update("jax_enable_x64", previous_x64)


def _run(config: AnalyzeConfig, progress: bool) -> dict[str, Any]:
    dtype = jnp.float64 if config.float64 else jnp.float32
    # The five keys of earlier versions (data, initialization for 0 steps, the data order of
    # analyze's former training loop, Hessian probes, Lanczos start), so that data and probes
    # stay the same; training by the engine draws initialization and order from config.seed.
    key_data, key_init, _, key_trace, key_eig = jax.random.split(jax.random.PRNGKey(config.seed), 5)
    data = load_builtin(config.dataset, key_data)
    n = config.probe_examples
    if n > data.x.shape[0]:
        raise ValueError(
            f"probe_examples: expected at most the {data.x.shape[0]} examples of dataset "
            f"{config.dataset!r}, got {n}"
        )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    x_all, y_all = np.asarray(data.x, dtype), np.asarray(data.y)
    splits = Splits(
        train={"x": x_all, "y": y_all},
        test={"x": x_all[:n], "y": y_all[:n]},
        task=data.task,
        num_outputs=data.num_outputs,
        info={},
    )
    model = _model(config, x_all.shape[1:], data.num_outputs)

    timings: dict[str, float] = {}
    stages = tqdm(total=5, desc="analyze", disable=not progress)

    def stage(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 3)
        stages.set_postfix_str(name)
        stages.update()

    start = time.perf_counter()
    params, final_loss = _train(model, splits, config, key_init, progress)
    params = jax.tree_util.tree_map(lambda w: jnp.asarray(w, dtype), params)
    stage("train", start)

    apply_fn = model.module.apply
    task = make_task(data.task, num_outputs=data.num_outputs, info={})
    x, y = jnp.asarray(x_all[:n]), jnp.asarray(y_all[:n])
    start = time.perf_counter()
    kernel = empirical_ntk(apply_fn, params, x)
    whole = spectrum_features(kernel, dtype=np.float64)
    pl = pl_condition(kernel, dtype=np.float64)
    stage("ntk", start)

    start = time.perf_counter()
    hidden_layers = "|".join(str(i) for i in range(len(config.hidden)))
    hidden_only, layout = build_group_ids(params, neurons(rf"Dense_(?:{hidden_layers})$"))
    group_kernels = empirical_ntk(apply_fn, params, x, group_ids=hidden_only)
    bound = group_rank_bound(group_sizes(params, hidden_only), data.num_outputs, n)
    groups = spectrum_features(group_kernels, max_rank=bound, dtype=np.float64)
    stage("groups", start)

    def batch_loss(p: PyTree) -> jax.Array:
        return task.loss(apply_fn(p, x), {"x": x, "y": y})[0]

    start = time.perf_counter()
    trace = hessian_trace(batch_loss, params, key_trace, num_probes=config.num_probes)
    output_trace = output_hessian_trace(
        apply_fn, params, x, key_trace, num_probes=config.num_probes
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
