"""``jaxprune experiment importance_lambda``: weight importance of a two-layer ReLU net under the
λ-rescaled initialization ``θ^λ_init = (λW_init, V_init/λ)`` (Li et al. (2020), Sec. 4, Figs. 2–4).

For each ``λ`` of a grid and each seed, the zoo's bias-free ``two_layer`` net ``f = V·ReLU(Wx)``
(He-normal ``θ^1_init``, :func:`jaxprune.models.two_layer.rescale`) is trained with mean
cross-entropy by minibatch SGD until it interpolates (train accuracy 100% or train loss
``<= loss_tol``) or ``max_epochs``.  Reported per layer (``W`` = input/hidden, ``V`` = output):

* Figure 2: MI ``Σθ²`` and HI ``Σ ½H_jj θ²`` at initialization and at the end, and the
  init-pruning NI (Def. 2.1 with ``θ^R = θ_init``: the layer reset to its initialization) for
  the train loss (relative to ``L(θ_init)``, the scale of Theorem 4.3), the test loss and the
  test error; next to it the PPLS constants ``(μ_i, L_i)`` of Def. 4.2 at initialization
  (:func:`jaxprune.methods.importance.ppls_constants`: the squared-loss constants of the
  linearized net on ``ppls_examples`` training examples) and ``κ_i = L_i/μ`` of Theorem 4.3, and
  the log-log slopes of NI against ``λ`` that the theorem predicts (reading HB-5: for ``λ >= 1``
  ``NI_W ≲ λ⁻⁸`` and ``NI_V ≥ 1 − O(λ⁻⁴)``, roles swapped for ``λ <= 1``).
* Figure 3: magnitude pruning (MP, score ``θ_j²``) vs Hessian pruning (HP, ``½ H_jj θ_j²``) of
  the final weights to each nonzero fraction of ``keep_fractions`` (unstructured, global top-k
  over both layers), retrained from the lottery initialization ``θ^λ_init`` on the kept support
  (Frankle & Carbin), and the fraction of each layer left ("layer death").
* Figure 4 (App. D): the same with layer-wise pruning (each layer keeps the same fraction).

The Hessian diagonal is exact and cheap here: ``f`` is linear in ``V`` and ``ReLU'' = 0`` almost
everywhere, so the diagonal of ``∇²L`` equals that of the Gauss–Newton matrix
(:func:`jaxprune.spectra.gauss_newton_diagonal` with the softmax Hessian, summed over example
chunks).  Choices the paper does not state (reading HB-7) are readings HB-12 (SGD without
momentum, ``η_λ = η_0 / max(λ², λ⁻²)``), HB-13 (batch, epochs, interpolation test) and HB-14
(λ grid, seeds, fractions) of docs/readings.md.

References:
  Li et al. (2020), "Exploring Weight Importance and Hessian Bias in Model Pruning", Sec. 4
  (Figures 2–4, Lemma 4.1, Def. 4.2, Theorem 4.3), Def. 2.1–2.3, App. D (layer-wise pruning),
  readings HB-3, HB-5, HB-7, HB-12 to HB-14 (docs/readings.md).  Frankle & Carbin (2019), the
  lottery-ticket rewinding to the initialization.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxprune._validation import check_choice, check_int, check_positive_int, check_real
from jaxprune.data import DataConfig, load_dataset
from jaxprune.experiments import Experiment
from jaxprune.experiments.settings import check_positive_values, check_seeds
from jaxprune.methods.importance.scores import prune_mask
from jaxprune.methods.importance.two_layer import (
    LAYERS,
    layer_group_ids,
    ppls_constants,
    theorem43_bounds,
)
from jaxprune.models.two_layer import TwoLayer, TwoLayerConfig, rescale
from jaxprune.spectra.hessian import gauss_newton_diagonal

__all__ = [
    "EXPERIMENT",
    "ImportanceLambdaSettings",
    "curvature_diagonal",
    "learning_rate_for",
    "prune_masks",
    "run_importance_lambda",
]

METHODS = ("MP", "HP")
SCOPES = ("global", "layer")


@dataclasses.dataclass(frozen=True)
class ImportanceLambdaSettings:
    """Settings of the experiment (each field is ``--set field=value``).

    Attributes:
      dataset: registry name (``digits``, ``tfds:mnist``, ...; images are flattened).
      width: hidden width ``m``.
      lambdas: the λ grid, numbers ``> 0``.
      seeds: one run per seed and λ (initialization ``θ^1_init``, data order).
      learning_rate: ``η_0``; the rate at ``λ`` is ``η_0 / max(λ², λ⁻²)`` (reading HB-12).
      batch_size: SGD minibatch size (the last incomplete batch of an epoch is dropped).
      max_epochs: training cap of the dense runs.
      loss_tol: the dense run stops once train accuracy is 100% or train loss ``<= loss_tol``
        (checked after every epoch).
      retrain_epochs: epochs of the lottery retraining of each pruned net (no early stop).
      keep_fractions: nonzero fractions ``s/p`` of the pruned nets, in ``(0, 1)``.
      ppls_examples: training examples of the PPLS constants at initialization.
      curvature_chunk: examples per chunk of the Gauss–Newton diagonal (memory
        ``chunk · K · p`` floats).
      data_dir: TFDS data directory (``tfds:*`` datasets).
    """

    dataset: str = "digits"
    width: int = 256
    lambdas: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    learning_rate: float = 1.0
    batch_size: int = 128
    max_epochs: int = 40
    loss_tol: float = 1e-3
    retrain_epochs: int = 20
    keep_fractions: tuple[float, ...] = (0.1, 0.03, 0.01)
    ppls_examples: int = 64
    curvature_chunk: int = 128
    data_dir: str | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.width, "width")
        object.__setattr__(self, "lambdas", check_positive_values(self.lambdas, "lambdas"))
        check_seeds(self.seeds)
        for seed in self.seeds:
            check_int(seed, "seeds", minimum=0)
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)
        for name in (
            "batch_size",
            "max_epochs",
            "retrain_epochs",
            "ppls_examples",
            "curvature_chunk",
        ):
            check_positive_int(getattr(self, name), name)
        check_real(self.loss_tol, "loss_tol", minimum=0.0)
        if not self.keep_fractions:
            raise ValueError("keep_fractions: expected at least one fraction in (0, 1), got ()")
        for fraction in self.keep_fractions:
            check_real(fraction, "keep_fractions", minimum=0.0, maximum=1.0, strict=True)


def learning_rate_for(base: float, lam: float) -> float:
    """SGD rate at ``λ``: ``η_0 / max(λ², λ⁻²)``.

    By Lemma 4.1 the partial Hessians scale as ``λ⁻²`` (``W``) and ``λ²`` (``V``), so the
    smoothness ``L`` grows as ``max(λ², λ⁻²)``; this keeps ``η·L`` fixed across λ, as Theorem
    4.3's ``η <= 1/L`` asks (reading HB-12).
    """
    base = check_real(base, "base", minimum=0.0, strict=True)
    lam = check_real(lam, "lam", minimum=0.0, strict=True)
    return base / max(lam**2, lam**-2)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def curvature_diagonal(apply_fn, params, x: np.ndarray, chunk: int) -> dict:
    """Diagonal of the Hessian of the mean cross-entropy of a two-layer ReLU net on ``x``.

    Computed as the Gauss–Newton diagonal with the softmax Hessian ``(diag(p) − ppᵀ)/n`` per
    example, summed over chunks of ``chunk`` examples (the last one zero-padded); for this net
    it equals the exact Hessian diagonal almost everywhere (``f`` is linear in ``V`` and
    ``ReLU'' = 0``), and the labels do not enter it.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, K)`` logits.
      params: the two-layer params.
      x: ``(n, d)`` inputs.
      chunk: examples per chunk, ``>= 1``.

    Returns:
      Pytree like ``params`` with ``H_jj``.

    References:
      Li et al. (2020), Def. 2.2 (HI uses ``H_jj``); Schraudolph (2002) (Gauss–Newton).
    """
    chunk = check_positive_int(chunk, "chunk")
    n = x.shape[0]
    count = -(-n // chunk)
    padded = np.zeros((count * chunk, *x.shape[1:]), x.dtype)
    padded[:n] = x
    weights = (np.arange(count * chunk) < n).astype(x.dtype) / n
    piece = _curvature_piece(apply_fn)
    total = jax.tree_util.tree_map(jnp.zeros_like, params)
    for i in range(count):
        part = piece(
            params, padded[i * chunk : (i + 1) * chunk], weights[i * chunk : (i + 1) * chunk]
        )
        total = jax.tree_util.tree_map(jnp.add, total, part)
    return total


@functools.lru_cache(maxsize=8)
def _curvature_piece(apply_fn):
    """Jit-compiled Gauss–Newton diagonal of one weighted chunk (cached per ``apply_fn``)."""

    @jax.jit
    def piece(params, xs, ws):
        probs = jax.nn.softmax(apply_fn(params, xs))
        hessian = jax.vmap(jnp.diag)(probs) - probs[:, :, None] * probs[:, None, :]
        return gauss_newton_diagonal(apply_fn, params, xs, loss_hessian=hessian * ws[:, None, None])

    return piece


def prune_masks(scores: dict, fraction: float, scope: str) -> dict:
    """Keep the top ``fraction`` of the weights by ``scores`` (Def. 2.3's ``Π_s``).

    The selection is :func:`jaxprune.methods.importance.prune_mask` with one group per weight
    (ties: the earlier weight in flattening order, reading HB-11).

    Args:
      scores: per-weight scores, a pytree of the two layers' kernels.
      fraction: nonzero fraction ``s/p`` in ``(0, 1)``; ``s = max(1, round(fraction · p))``.
      scope: ``"global"`` (top-``s`` over both layers together) or ``"layer"`` (the same
        fraction of each layer, largest-remainder quotas; App. D).

    Returns:
      Float 0/1 masks like ``scores``.

    Raises:
      ValueError: ``fraction`` outside ``(0, 1)``, unknown ``scope``, NaN scores.
    """
    fraction = check_real(fraction, "fraction", minimum=0.0, maximum=1.0, strict=True)
    check_choice(scope, SCOPES, "scope")
    flat, unravel = ravel_pytree(scores)
    keep = max(1, round(fraction * flat.size))
    kept = prune_mask(scores, scores, keep, per_layer=scope == "layer")
    return unravel(jnp.asarray(kept, flat.dtype))


class _Trainer:
    """Jit-compiled minibatch SGD (masked) and evaluation of one two-layer net on one dataset."""

    def __init__(self, model: TwoLayer, train: dict, test: dict, batch_size: int):
        self.apply = lambda params, x: model.apply({"params": params}, x)
        model64 = TwoLayer(dataclasses.replace(model.config, dtype=jnp.float64))
        self.apply64 = lambda params, x: model64.apply({"params": params}, x)
        self.train, self.test = train, test
        self.data = (train["x"], train["y"])
        self.steps = max(1, train["x"].shape[0] // batch_size)
        self.batch_size = min(batch_size, train["x"].shape[0])
        apply = self.apply

        def loss(params, x, y):
            return _cross_entropy(apply(params, x), y)

        def epoch(params, mask, order, lr, x, y):
            def step(p, idx):
                grads = jax.grad(loss)(p, x[idx], y[idx])
                return jax.tree_util.tree_map(
                    lambda a, g, m: (a - lr * g) * m, p, grads, mask
                ), None

            return jax.lax.scan(step, params, order)[0]

        def metrics(params, x, y):
            logits = apply(params, x)
            return _cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) != y)

        self.epoch = jax.jit(epoch)
        self.epochs_of_many = jax.jit(jax.vmap(epoch, in_axes=(0, 0, None, None, None, None)))
        self.metrics = jax.jit(metrics)
        self.metrics_of_many = jax.jit(jax.vmap(metrics, in_axes=(0, None, None)))

    def order(self, rng: np.random.Generator) -> np.ndarray:
        permutation = rng.permutation(self.train["x"].shape[0])
        return permutation[: self.steps * self.batch_size].reshape(self.steps, self.batch_size)

    def evaluate(self, params) -> dict[str, float]:
        train_loss, train_error = self.metrics(params, self.train["x"], self.train["y"])
        test_loss, test_error = self.metrics(params, self.test["x"], self.test["y"])
        values = {"train_loss": train_loss, "train_error": train_error}
        values |= {"test_loss": test_loss, "test_error": test_error}
        values = {k: float(v) for k, v in values.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise ValueError(f"training diverged (non-finite loss {values}); lower learning_rate")
        return values


def _dense_run(trainer: _Trainer, init: dict, lr: float, settings, rng) -> tuple[dict, int]:
    ones = jax.tree_util.tree_map(jnp.ones_like, init)
    params = init
    for epoch in range(1, settings.max_epochs + 1):
        params = trainer.epoch(params, ones, trainer.order(rng), lr, *trainer.data)
        values = trainer.evaluate(params)
        if values["train_error"] == 0.0 or values["train_loss"] <= settings.loss_tol:
            return params, epoch
    return params, settings.max_epochs


def _layer_sums(tree: dict) -> np.ndarray:
    return np.array([float(jnp.sum(tree[layer]["kernel"])) for layer in LAYERS])


def _one_run(settings, lam: float, seed: int, trainer: _Trainer, model: TwoLayer) -> dict:
    x_train = trainer.train["x"]
    variables = model.init(jax.random.key(seed), x_train[:1])
    init = rescale(variables, lam)["params"]
    lr = learning_rate_for(settings.learning_rate, lam)
    rng = np.random.default_rng(seed)
    final, epochs = _dense_run(trainer, init, lr, settings, rng)
    record: dict[str, Any] = {"lam": lam, "seed": seed, "epochs": epochs, "learning_rate": lr}
    record["init"], record["final"] = trainer.evaluate(init), trainer.evaluate(final)

    squares = {
        name: jax.tree_util.tree_map(jnp.square, p)
        for name, p in (("init", init), ("final", final))
    }
    curvature = {
        name: curvature_diagonal(trainer.apply, p, np.asarray(x_train), settings.curvature_chunk)
        for name, p in (("init", init), ("final", final))
    }
    hp_scores = jax.tree_util.tree_map(
        lambda h, s: 0.5 * h * s, curvature["final"], squares["final"]
    )
    for name in ("init", "final"):
        record[f"mi_{name}"] = _layer_sums(squares[name]).tolist()
        half_h = jax.tree_util.tree_map(lambda h, s: 0.5 * h * s, curvature[name], squares[name])
        record[f"hi_{name}"] = _layer_sums(half_h).tolist()

    # Init-pruning NI (Def. 2.1, θ^R = θ_init): one layer reset to its initialization.
    loss0 = record["init"]["train_loss"]
    for layer in LAYERS:
        reset = trainer.evaluate({**final, layer: init[layer]})
        record[f"ni_{layer}"] = {k: reset[k] - record["final"][k] for k in reset}
        record[f"ni_{layer}"]["train_loss_relative"] = record[f"ni_{layer}"]["train_loss"] / loss0

    # PPLS constants at initialization (squared loss of the linearized net) and Thm. 4.3's κ_i.
    # In float64: in float32, λ_min of the (nK, nK) Gram sits at the round-off tolerance.
    with jax.enable_x64(True):
        init64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), init)
        subset = jnp.asarray(x_train[: settings.ppls_examples], jnp.float64)
        constants = ppls_constants(trainer.apply64, init64, subset, layer_group_ids(init64))
        mu = np.asarray(constants.mu, np.float64)
        smooth = np.asarray(constants.smoothness, np.float64)
    record["ppls_mu"], record["ppls_smoothness"] = mu.tolist(), smooth.tolist()
    if mu.sum() > 0:
        bounds = theorem43_bounds(mu, smooth, 1.0 / smooth.sum(), math.inf, 1.0)
        record["kappa"] = bounds.kappa.tolist()
        record["ni_bound_relative"] = bounds.ni_upper.tolist()
    else:
        record["kappa"] = record["ni_bound_relative"] = [math.nan, math.nan]

    # Figures 3-4: MP / HP masks, retrained from the lottery initialization, all at once.
    scores = {"MP": squares["final"], "HP": hp_scores}
    keys = [(m, s, f) for m in METHODS for s in SCOPES for f in settings.keep_fractions]
    masks = [prune_masks(scores[m], f, s) for m, s, f in keys]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *masks)
    params = jax.tree_util.tree_map(lambda p, m: p[None] * m, init, stacked)
    for _ in range(settings.retrain_epochs):
        params = trainer.epochs_of_many(params, stacked, trainer.order(rng), lr, *trainer.data)
    _, test_errors = trainer.metrics_of_many(params, trainer.test["x"], trainer.test["y"])
    record["pruning"] = [
        {
            "method": m,
            "scope": s,
            "fraction": f,
            "test_accuracy": 1.0 - float(err),
            "kept": [float(np.mean(mask[layer]["kernel"])) for layer in LAYERS],
        }
        for (m, s, f), mask, err in zip(keys, masks, np.asarray(test_errors))
    ]
    return record


def _load(settings: ImportanceLambdaSettings) -> tuple[dict, dict, int]:
    splits = load_dataset(DataConfig(name=settings.dataset, data_dir=settings.data_dir))
    if splits.task != "classification":
        raise ValueError(f"dataset: expected a classification dataset, got {splits.task!r}")

    def flat(split: dict) -> dict:
        return {
            "x": jnp.asarray(split["x"].reshape(len(split["x"]), -1), jnp.float32),
            "y": jnp.asarray(split["y"], jnp.int32),
        }

    return flat(splits.train), flat(splits.test), splits.num_outputs


def _mean_std(values) -> tuple[float, float]:
    array = np.asarray(values, np.float64)
    return float(np.mean(array, axis=0)), float(np.std(array, axis=0))


def _slope(lams, values) -> float:
    """Least-squares slope of ``log values`` against ``log λ`` (NaN with < 2 positive points)."""
    lams, values = np.asarray(lams, np.float64), np.asarray(values, np.float64)
    good = values > 0
    if good.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(lams[good]), np.log(values[good]), 1)[0])


def _summaries(records: list[dict], settings) -> dict:
    by_lam = {lam: [r for r in records if r["lam"] == lam] for lam in settings.lambdas}
    rows = []
    for lam, runs in by_lam.items():
        row: dict[str, Any] = {"lam": lam}
        for key in (
            "mi_init",
            "mi_final",
            "hi_init",
            "hi_final",
            "ppls_mu",
            "ppls_smoothness",
            "kappa",
        ):
            array = np.asarray([r[key] for r in runs], np.float64)
            row[key] = np.mean(array, axis=0).tolist()
        for layer in LAYERS:
            for metric in ("train_loss_relative", "test_loss", "test_error"):
                row[f"ni_{layer}_{metric}"] = _mean_std([r[f"ni_{layer}"][metric] for r in runs])
        row["train_error"] = _mean_std([r["final"]["train_error"] for r in runs])
        row["test_error"] = _mean_std([r["final"]["test_error"] for r in runs])
        row["epochs"] = _mean_std([r["epochs"] for r in runs])
        pruning = {}
        for method in METHODS:
            for scope in SCOPES:
                for fraction in settings.keep_fractions:
                    hits = [
                        p
                        for r in runs
                        for p in r["pruning"]
                        if (p["method"], p["scope"], p["fraction"]) == (method, scope, fraction)
                    ]
                    pruning[f"{method}/{scope}/{fraction:g}"] = {
                        "test_accuracy": _mean_std([p["test_accuracy"] for p in hits]),
                        "kept": np.mean([p["kept"] for p in hits], axis=0).tolist(),
                    }
        row["pruning"] = pruning
        rows.append(row)
    lams = np.asarray(settings.lambdas)
    high, low = lams >= 1, lams <= 1
    ni_w = [row["ni_hidden_train_loss_relative"][0] for row in rows]
    ni_v = [row["ni_output_train_loss_relative"][0] for row in rows]
    slopes = {
        "ni_W_vs_lambda_ge_1": _slope(lams[high], np.asarray(ni_w)[high]),
        "ni_V_vs_lambda_le_1": _slope(lams[low], np.asarray(ni_v)[low]),
        "one_minus_ni_V_vs_lambda_ge_1": _slope(lams[high], 1.0 - np.asarray(ni_v)[high]),
        "mu_W_vs_lambda": _slope(lams, [row["ppls_mu"][0] for row in rows]),
        "mu_V_vs_lambda": _slope(lams, [row["ppls_mu"][1] for row in rows]),
    }
    return {"rows": rows, "slopes": slopes}


def _fmt(pair) -> str:
    mean, std = pair
    return f"{mean:.3g} ± {std:.2g}"


def _tables(summary: dict, settings, info: dict) -> str:
    rows, slopes = summary["rows"], summary["slopes"]
    lines = [
        "### Figure 2: importance per layer (mean over seeds; W = input layer, V = output layer)",
        "",
        "| λ | epochs | train err | test err | MI W init→final | MI V init→final | HI W init→final "
        "| HI V init→final | NI_W train/L0 | NI_V train/L0 | NI_W test loss | NI_V test loss "
        "| NI_W test err | NI_V test err | μ_W | μ_V | κ_W | κ_V |",
        "|" + "---|" * 18,
    ]
    for row in rows:
        mi0, mi1, hi0, hi1 = row["mi_init"], row["mi_final"], row["hi_init"], row["hi_final"]
        lines.append(
            f"| {row['lam']:g} | {row['epochs'][0]:.3g} | {_fmt(row['train_error'])} "
            f"| {_fmt(row['test_error'])} | {mi0[0]:.3g}→{mi1[0]:.3g} | {mi0[1]:.3g}→{mi1[1]:.3g} "
            f"| {hi0[0]:.3g}→{hi1[0]:.3g} | {hi0[1]:.3g}→{hi1[1]:.3g} "
            f"| {_fmt(row['ni_hidden_train_loss_relative'])} | {_fmt(row['ni_output_train_loss_relative'])} "
            f"| {_fmt(row['ni_hidden_test_loss'])} | {_fmt(row['ni_output_test_loss'])} "
            f"| {_fmt(row['ni_hidden_test_error'])} | {_fmt(row['ni_output_test_error'])} "
            f"| {row['ppls_mu'][0]:.3g} | {row['ppls_mu'][1]:.3g} "
            f"| {row['kappa'][0]:.3g} | {row['kappa'][1]:.3g} |"
        )
    lines += [
        "",
        "Log-log slopes against λ (Theorem 4.3 with Lemma 4.1 predicts μ_W ∝ λ⁻², μ_V ∝ λ², "
        "NI_W ≲ λ⁻⁸ and 1 − NI_V = O(λ⁻⁴) for λ ≥ 1, NI_V ≲ λ⁸ for λ ≤ 1; reading HB-5): "
        + ", ".join(f"{k} = {v:.3g}" for k, v in slopes.items())
        + ".",
        "",
        "### Figures 3–4: test accuracy after pruning and lottery retraining (mean ± std)",
        "",
        "| λ | method | scope | "
        + " | ".join(f"keep {f:g}" for f in settings.keep_fractions)
        + f" | W kept at {min(settings.keep_fractions):g} | V kept at {min(settings.keep_fractions):g} |",
        "|" + "---|" * (5 + len(settings.keep_fractions)),
    ]
    smallest = min(settings.keep_fractions)
    for row in rows:
        for method in METHODS:
            for scope in SCOPES:
                cells = [
                    _fmt(row["pruning"][f"{method}/{scope}/{f:g}"]["test_accuracy"])
                    for f in settings.keep_fractions
                ]
                kept = row["pruning"][f"{method}/{scope}/{smallest:g}"]["kept"]
                lines.append(
                    f"| {row['lam']:g} | {method} | {scope} | "
                    + " | ".join(cells)
                    + f" | {kept[0]:.3g} | {kept[1]:.3g} |"
                )
    lines.append(
        f"\n{info['dataset']}: n_train = {info['n_train']}, n_test = {info['n_test']}, d = "
        f"{info['d']}, K = {info['k']}, m = {settings.width}; seeds {list(settings.seeds)}; SGD "
        f"η_λ = {settings.learning_rate:g}/max(λ², λ⁻²), batch {settings.batch_size}, ≤ "
        f"{settings.max_epochs} epochs (stop at 100% train accuracy or loss ≤ {settings.loss_tol:g}), "
        f"retraining {settings.retrain_epochs} epochs from θ^λ_init on the kept weights; NI: "
        "init-pruning (layer reset to θ_init); HI with OBD's ½ (reading HB-3); μ_i, κ_i = L_i/μ at "
        f"θ_init on {settings.ppls_examples} training examples (squared-loss PPLS constants of the "
        f"linearized net). Wall time {info['wall_s']:.0f} s."
    )
    return "\n".join(lines)


#: Layer key -> its name in the plots.
_LAYER_NAMES = {"hidden": "W (input layer)", "output": "V (output layer)"}

#: The x-axis label of every plot against λ.
_LAMBDA_LABEL = "λ of the initialization (λW, V/λ)"


def _grid_axis(ax, values) -> None:
    """Label a logarithmic x axis at the grid's ``values`` only."""
    ax.set_xticks(values, [f"{value:g}" for value in values])
    ax.minorticks_off()


def _positive(xs, ys) -> tuple[list, list, int]:
    """The points of ``(xs, ys)`` with ``y > 0`` (drawable on a log axis) and how many are not."""
    kept = [(x, y) for x, y in zip(xs, ys) if y > 0]
    return [x for x, _ in kept], [y for _, y in kept], len(xs) - len(kept)


def _plot_importance(rows: list[dict], title: str, path: Path) -> None:
    """Figure 2: per layer, MI, HI (at initialization and the end) and the init-pruning NI of
    the training loss against λ; the init-pruning NI of the test loss and error."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lams = [row["lam"] for row in rows]
    figure = Figure(figsize=(16, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    for index, (ax, layer) in enumerate(zip(axes, LAYERS)):
        for key, style, label in (
            ("mi_init", "o--", "MI Σθ² at init"),
            ("mi_final", "o-", "MI Σθ² final"),
            ("hi_init", "s--", "HI Σ½H_jjθ² at init (nats)"),
            ("hi_final", "s-", "HI Σ½H_jjθ² final (nats)"),
        ):
            ax.loglog(*_positive(lams, [r[key][index] for r in rows])[:2], style, label=label)
        ni = [r[f"ni_{layer}_train_loss_relative"][0] for r in rows]
        xs, ys, dropped = _positive(lams, ni)
        ax.loglog(xs, ys, "^-", label="NI of the training loss / L(θ_init)")
        note = f"\n({dropped} NI ≤ 0 not drawn)" if dropped else ""
        ax.set(
            xlabel=_LAMBDA_LABEL,
            ylabel="importance of the layer (log scale)",
            title=f"({'ab'[index]}) {_LAYER_NAMES[layer]}{note}",
        )
        _grid_axis(ax, lams)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[2]
    for layer, marker in zip(LAYERS, ("o", "s")):
        name = _LAYER_NAMES[layer].split()[0]
        for metric, style, label in (
            ("test_loss", "-", "test loss (nats)"),
            ("test_error", "--", "test error (fraction)"),
        ):
            mean, std = zip(*[r[f"ni_{layer}_{metric}"] for r in rows])
            ax.errorbar(
                lams, mean, yerr=std, fmt=marker + style, capsize=3, label=f"{name}: {label}"
            )
    ax.set(
        xscale="log",
        xlabel=_LAMBDA_LABEL,
        ylabel="increase when the layer is reset to θ_init",
        title="(c) Init-pruning NI on the test set (mean ± sd over seeds)",
    )
    _grid_axis(ax, lams)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)


def _accuracy(row: dict, method: str, scope: str, fraction: float) -> tuple[float, float]:
    """Mean and std over seeds of the test accuracy of ``method``/``scope`` at ``fraction``."""
    return tuple(row["pruning"][f"{method}/{scope}/{fraction:g}"]["test_accuracy"])


def _plot_pruning(rows: list[dict], fractions: list[float], title: str, path: Path) -> None:
    """Figure 3: test accuracy after global MP and HP and retraining against the kept fraction,
    one curve per λ; the share of each layer kept at the smallest fraction against λ."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lams = [row["lam"] for row in rows]
    figure = Figure(figsize=(16, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    names = {"MP": "magnitude pruning (MP)", "HP": "Hessian pruning (HP)"}
    markers = "os^Dv<>p*h"
    for index, (ax, method) in enumerate(zip(axes, METHODS)):
        for i, row in enumerate(rows):
            mean, std = zip(*[_accuracy(row, method, "global", f) for f in fractions])
            ax.errorbar(
                fractions,
                mean,
                yerr=std,
                fmt="-" + markers[i % len(markers)],
                mfc="none",
                ms=8 - 5 * i / max(len(rows), 1),
                capsize=3,
                label=f"λ = {row['lam']:g}",
            )
        ax.set(
            xscale="log",
            xlabel="kept (nonzero) fraction of the weights s/p",
            ylabel="test accuracy after retraining (fraction correct)",
            title=f"({'ab'[index]}) {names[method]}, global top-k",
        )
        _grid_axis(ax, sorted(fractions))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    smallest = min(fractions)
    ax = axes[2]
    for method, style in zip(METHODS, (":", "-")):
        for index, (layer, color) in enumerate(zip(LAYERS, ("tab:red", "tab:blue"))):
            kept = [row["pruning"][f"{method}/global/{smallest:g}"]["kept"][index] for row in rows]
            name = _LAYER_NAMES[layer].split()[0]
            ax.semilogx(lams, kept, style, color=color, marker="o", label=f"{method}, {name}")
    ax.set(
        xlabel=_LAMBDA_LABEL,
        ylabel="fraction of the layer's weights kept",
        title=f"(c) Layers left at {smallest:.0%} nonzeros (global top-k)",
    )
    _grid_axis(ax, lams)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)


def _plot_layerwise(rows: list[dict], fractions: list[float], title: str, path: Path) -> None:
    """Figure 4: test accuracy after pruning and retraining against λ, one panel per kept
    fraction: MP and HP (colours), global and layer-wise top-k (solid, dashed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lams = [row["lam"] for row in rows]
    figure = Figure(figsize=(5.2 * len(fractions), 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(fractions), squeeze=False)[0]
    scopes = {"global": ("-", "global top-k"), "layer": ("--", "layer-wise top-k")}
    for ax, fraction in zip(axes, fractions):
        for method, color in zip(METHODS, ("tab:orange", "tab:green")):
            for scope in SCOPES:
                style, name = scopes[scope]
                mean, std = zip(*[_accuracy(row, method, scope, fraction) for row in rows])
                ax.errorbar(
                    lams,
                    mean,
                    yerr=std,
                    fmt="o" + style,
                    color=color,
                    capsize=3,
                    label=f"{method}, {name}",
                )
        ax.set(
            xscale="log",
            xlabel=_LAMBDA_LABEL,
            ylabel="test accuracy after retraining (fraction correct)",
            title=f"{fraction:.0%} of the weights kept",
        )
        _grid_axis(ax, lams)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title)
    figure.savefig(path, dpi=110)


def _plots(summary: dict, settings, out_dir: Path) -> list[str]:
    """Write Figures 2-4 of :func:`run_importance_lambda`'s ``summary`` to ``out_dir``; their
    file names."""
    rows, fractions = summary["rows"], list(settings.keep_fractions)
    seeds = len(settings.seeds)
    net = (
        f"Two-layer ReLU net (m = {settings.width}) on {settings.dataset}, {seeds} "
        f"seed{'s' if seeds > 1 else ''}"
    )
    _plot_importance(
        rows,
        f"{net}: layer importance against λ (Li et al. 2020, Fig. 2)",
        out_dir / "fig2_importance.png",
    )
    _plot_pruning(
        rows,
        fractions,
        f"{net}: pruning and lottery retraining (Li et al. 2020, Fig. 3; mean ± sd)",
        out_dir / "fig3_pruning.png",
    )
    _plot_layerwise(
        rows,
        fractions,
        f"{net}: global against layer-wise pruning (Li et al. 2020, Fig. 4; mean ± sd)",
        out_dir / "fig4_layerwise.png",
    )
    return ["fig2_importance.png", "fig3_pruning.png", "fig4_layerwise.png"]


def run_importance_lambda(
    settings: ImportanceLambdaSettings, out_dir: Path, progress: bool = True
) -> dict:
    """Run every (λ, seed); write ``table.md``, ``results.json`` and three PNGs to ``out_dir``.

    Returns:
      ``{"rows": per-λ means, "slopes": log-log slopes, "runs": per-run records, "table": markdown,
      "plots": file names, "info": data sizes and wall time}``.

    Raises:
      ValueError: a non-classification dataset, or a diverging run (non-finite loss).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test, k = _load(settings)
    d = int(train["x"].shape[1])
    model = TwoLayer(TwoLayerConfig(input_dim=d, width=settings.width, num_outputs=k))
    trainer = _Trainer(model, train, test, settings.batch_size)
    records = []
    for lam in settings.lambdas:
        for seed in settings.seeds:
            records.append(_one_run(settings, lam, seed, trainer, model))
            if progress:
                r = records[-1]
                print(
                    f"λ = {lam:g}, seed {seed}: {r['epochs']} epochs, train err "
                    f"{r['final']['train_error']:.3g}, test err {r['final']['test_error']:.3g}",
                    flush=True,
                )
    summary = _summaries(records, settings)
    info = {
        "dataset": settings.dataset,
        "n_train": int(train["x"].shape[0]),
        "n_test": int(test["x"].shape[0]),
        "d": d,
        "k": k,
        "wall_s": time.perf_counter() - start,
    }
    table = _tables(summary, settings, info)
    plots = _plots(summary, settings, out_dir)
    results = {"settings": dataclasses.asdict(settings), "info": info, **summary, "runs": records}
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return {**results, "table": table, "plots": plots}


EXPERIMENT = Experiment(
    name="importance_lambda",
    description=(
        "Li et al. (2020), Sec. 4, Figs. 2-4: a two-layer ReLU net trained from λ-rescaled He "
        "initializations (λW, V/λ); per-layer MI, HI and init-pruning NI (train/test), PPLS "
        "constants and Thm. 4.3's κ; MP vs HP with lottery retraining, layer death, global vs "
        "layer-wise pruning."
    ),
    presets={
        "smoke": ImportanceLambdaSettings(
            width=32,
            lambdas=(0.25, 1.0, 4.0),
            seeds=(0,),
            max_epochs=3,
            retrain_epochs=2,
            keep_fractions=(0.1, 0.02),
            ppls_examples=8,
            batch_size=256,
        ),
        "small": ImportanceLambdaSettings(),
        "paper": ImportanceLambdaSettings(
            dataset="tfds:mnist",
            width=1024,
            max_epochs=150,
            retrain_epochs=150,
            keep_fractions=(0.5, 0.2, 0.1, 0.05, 0.02, 0.01),
            ppls_examples=128,
            curvature_chunk=16,
        ),
    },
    run=run_importance_lambda,
)
