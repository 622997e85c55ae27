"""``jaxprune experiment greedy_pretraining``: how much pre-training greedy forward selection needs,
as a function of the dataset size (Wolfe et al. (2023), Sec. 6.1, Figure 1; App. C, Figures 2–3).

A two-layer ReLU net ``f(x) = Σ_i b_i σ(a_iᵀx)`` (:class:`jaxprune.models.TwoLayer`, one output:
the logit of a sigmoid) learns binarized labels (class ``< 5`` → 0, ``≥ 5`` → 1).  For each width
``N``, seed and class-balanced sub-dataset of ``m`` training examples (nested per seed), the
dense net is pre-trained on the sub-dataset by full-batch gradient descent (eq. 5) on the mean
binary cross-entropy.  At initialization and at every prune point, the neuron outputs ``Φ`` over
the sub-dataset (:func:`~jaxprune.methods.greedy.neuron_outputs`) feed greedy forward selection
(:func:`~jaxprune.methods.greedy.greedy_forward_selection`, ``k`` steps, binary cross-entropy,
no fine-tuning), and the pruned net's accuracy is recorded on the sub-dataset (the heatmap,
reading GS-15) and on the whole training split, with the dense accuracy and the greedy loss.

Figure 1's **red line** (:func:`red_line`) is, for each size, the first prune point whose mean
pruned accuracy reaches the best mean pruned accuracy of the largest size over all prune points;
the **dashed line** (:func:`dashed_line`) is Sec. 4.2's ``t*(m) ∝ −log k / log(1 − λ_min²/λ_max²)``
with ``λ_max/λ_min`` the condition number of an ``N × m`` standard Gaussian matrix
(:func:`gaussian_inverse_condition`), its constant fitted to the red line (reading GS-17).
Appendix C: Figure 2 is ``σ_min(Ψ)`` against ``N`` for ``Ψ_ij = σ_+(a_iᵀx_j)`` at initialization
(:func:`random_psi`, reading GS-16) with a fitted ``c·√N``; Figure 3 is ``1/κ`` of the Gaussian
``N × m`` matrices against ``m``.  The table states, from the data, which of Sec. 6.1's claims
hold on the run: (a) the red line does not decrease with ``m``, (b) no good subnetwork at
initialization, (c) pruned accuracy against pre-training is not monotone (reading GS-6).

Outputs: ``table.md``, ``results.json``, ``figure1.png`` (one panel per width; top row the
sub-dataset accuracy, bottom row the whole training split) and ``appendix_c.png``.  Choices the
paper leaves open are readings GS-14 to GS-17 of docs/readings.md.

References:
  Wolfe et al. (2023), "How Much Pre-training Is Enough to Discover a Good Subnetwork?", Sec. 2
  (eqs. 1–5), Sec. 3 (eqs. 9–11), Sec. 4.2 (Definition 1, Theorems 2–3 and the estimate of
  ``t*`` after them), Sec. 6.1 (Figure 1), App. C (Figures 2–3); readings GS-2, GS-6 and GS-14
  to GS-17 (docs/readings.md).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_choice, check_int, check_positive_int, check_real
from jaxprune.data import DataConfig, load_dataset
from jaxprune.experiments import Experiment
from jaxprune.experiments.settings import check_seeds, check_subset
from jaxprune.methods.greedy import greedy_forward_selection, neuron_outputs
from jaxprune.models.two_layer import ACTIVATIONS, TwoLayer, TwoLayerConfig

__all__ = [
    "EXPERIMENT",
    "WEIGHT_SCALES",
    "DashedLine",
    "GreedyPretrainingSettings",
    "PruningScore",
    "RedLine",
    "binary_labels",
    "dashed_line",
    "extreme_singular_values",
    "gaussian_inverse_condition",
    "prune_and_score",
    "random_psi",
    "red_line",
    "run_greedy_pretraining",
    "sqrt_fit",
    "stratified_subsets",
]

#: How App. C's ``a_i ~ N(0, (1/√d) I_d)`` is read (reading GS-16): ``1/√d`` is the variance
#: (as printed in ``N(mean, covariance)`` notation) or the standard deviation.
WEIGHT_SCALES = ("variance", "std")


def _positive_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    if not values:
        raise ValueError(f"{name}: expected a non-empty tuple of positive ints, got {values!r}")
    return tuple(check_positive_int(v, name) for v in values)


@dataclasses.dataclass(frozen=True)
class GreedyPretrainingSettings:
    """Settings of the experiment (each field is ``--set field=value``).

    Attributes:
      dataset: registry name of a classification dataset (``digits``, ``tfds:mnist``; images
        are flattened); labels ``< 5`` become 0, the others 1.
      widths: hidden widths ``N`` (one panel each).
      subset_sizes: sub-dataset sizes ``m``, strictly increasing (the last is Figure 1's "full
        dataset"); class-balanced, nested per seed (reading GS-14).
      num_iterations: gradient-descent pre-training iterations.
      prune_every: iterations between prune points; the prune points are ``0, prune_every, ...,
        num_iterations``.
      num_selected: greedy steps ``k`` (at most ``k`` distinct hidden neurons kept), ``>= 2``.
      learning_rate: full-batch gradient-descent step on the mean binary cross-entropy.
      seeds: one trial per seed (sub-datasets and initialization).
      condition_draws: Gaussian matrices per ``(N, m)`` for ``1/κ`` (dashed line, Figure 3).
      psi_neurons: the ``N`` grid of Figure 2.
      psi_dims, psi_points: the ``(d, m)`` pairs of Figure 2 (zipped; equal lengths).
      psi_activations: ``σ_+`` of Figure 2, names of ``two_layer.ACTIVATIONS``.
      psi_weight_scale: one of :data:`WEIGHT_SCALES` (reading GS-16).
      psi_draws: ``Ψ`` matrices per point of Figure 2 (the paper: 10), ``>= 2``.
      data_dir: TFDS data directory (``tfds:*`` datasets).
    """

    dataset: str = "digits"
    widths: tuple[int, ...] = (600, 1200, 2400)
    subset_sizes: tuple[int, ...] = (50, 100, 200, 300, 400, 500)
    num_iterations: int = 400
    prune_every: int = 50
    num_selected: int = 40
    learning_rate: float = 0.2
    seeds: tuple[int, ...] = (0, 1, 2)
    condition_draws: int = 5
    psi_neurons: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    psi_dims: tuple[int, ...] = (10, 100, 100)
    psi_points: tuple[int, ...] = (10, 10, 100)
    psi_activations: tuple[str, ...] = ("relu", "tanh")
    psi_weight_scale: str = "variance"
    psi_draws: int = 10
    data_dir: str | None = None

    def __post_init__(self) -> None:
        _positive_ints(self.widths, "widths")
        sizes = _positive_ints(self.subset_sizes, "subset_sizes")
        if any(b <= a for a, b in itertools.pairwise(sizes)):
            raise ValueError(
                f"subset_sizes: expected strictly increasing sizes (the last is the full "
                f"dataset), got {sizes}"
            )
        check_positive_int(self.num_iterations, "num_iterations")
        check_positive_int(self.prune_every, "prune_every")
        if self.num_iterations % self.prune_every:
            raise ValueError(
                f"prune_every: expected a divisor of num_iterations={self.num_iterations}, got "
                f"{self.prune_every}"
            )
        check_int(self.num_selected, "num_selected", minimum=2)
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)
        check_seeds(self.seeds)
        for seed in self.seeds:
            check_int(seed, "seeds", minimum=0)
        check_positive_int(self.condition_draws, "condition_draws")
        _positive_ints(self.psi_neurons, "psi_neurons")
        _positive_ints(self.psi_dims, "psi_dims")
        _positive_ints(self.psi_points, "psi_points")
        if len(self.psi_dims) != len(self.psi_points):
            raise ValueError(
                f"psi_points: expected one m per d of psi_dims ({len(self.psi_dims)}), got "
                f"{len(self.psi_points)}"
            )
        check_subset(self.psi_activations, tuple(ACTIVATIONS), "psi_activations")
        check_choice(self.psi_weight_scale, WEIGHT_SCALES, "psi_weight_scale")
        check_int(self.psi_draws, "psi_draws", minimum=2)

    @property
    def iterations(self) -> tuple[int, ...]:
        """The prune points ``0, prune_every, ..., num_iterations``."""
        return tuple(range(0, self.num_iterations + 1, self.prune_every))


def binary_labels(labels: Any) -> np.ndarray:
    """Sec. 6.1's binarized labels: ``0`` for classes ``< 5``, ``1`` for the others.

    Args:
      labels: ``(n,)`` non-negative integer class labels.

    Returns:
      ``(n,)`` float32 targets in ``{0, 1}``.

    Raises:
      ValueError: labels not a 1-D array of non-negative integers.

    References:
      Wolfe et al. (2023), Sec. 6.1 ("all labels less than five as zero and vice versa").
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError(
            f"labels: expected a 1-D array of non-negative integer classes, got dtype "
            f"{labels.dtype} and shape {labels.shape}"
        )
    return (labels >= 5).astype(np.float32)


def stratified_subsets(
    labels: Any, sizes: Sequence[int], rng: np.random.Generator
) -> list[np.ndarray]:
    """Nested class-balanced sub-datasets: the examples of each size, drawn without replacement.

    Each class (the distinct values of ``labels``) is shuffled once; a size ``m`` takes the first
    ``q_c(m)`` examples of class ``c``, ``q_c(m) = ⌊m/C⌋ + [r_c < m mod C]`` with ``r_c`` a random
    rank of the class, so classes differ by at most one example, every ``q_c`` grows with ``m``
    and the sub-datasets are nested.

    Args:
      labels: ``(n,)`` integer class labels.
      sizes: strictly increasing sizes, each ``>= 1``.
      rng: the draw's generator.

    Returns:
      One sorted ``(m,)`` int array of example indices per size.

    Raises:
      ValueError: sizes not increasing or not positive, a size above ``n``, or a class with
        fewer examples than its quota (the message names the class).

    References:
      Wolfe et al. (2023), Sec. 6.1 ("uniformly sampling examples from the ten original
      classes"); reading GS-14 (docs/readings.md).
    """
    labels = np.asarray(labels)
    sizes = _positive_ints(sizes, "sizes")
    if any(b <= a for a, b in itertools.pairwise(sizes)):
        raise ValueError(f"sizes: expected strictly increasing sizes, got {sizes}")
    if sizes[-1] > labels.shape[0]:
        raise ValueError(
            f"subset_sizes: {sizes[-1]} exceeds the {labels.shape[0]} training examples"
        )
    classes = np.unique(labels)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    ranks = rng.permutation(len(classes))
    subsets = []
    for size in sizes:
        quotas = size // len(classes) + (ranks < size % len(classes))
        for c, quota, pool in zip(classes, quotas, members):
            if quota > len(pool):
                raise ValueError(
                    f"subset_sizes: a class-balanced sub-dataset of {size} examples needs "
                    f"{quota} of class {c}, but the training set has only {len(pool)}"
                )
        subsets.append(np.sort(np.concatenate([p[:q] for p, q in zip(members, quotas)])))
    return subsets


class PruningScore(NamedTuple):
    """One prune point (:func:`prune_and_score`).

    Attributes:
      counts: ``(N,)`` int32 greedy multiplicities ``c`` (``Σ c = k``).
      greedy_loss: the pruned net's binary cross-entropy on the sub-dataset, per example.
      pruned_accuracy: pruned net's accuracy on the sub-dataset.
      dense_accuracy: dense net's accuracy on the sub-dataset.
      pruned_accuracy_full: pruned net's accuracy on the whole training split.
      dense_accuracy_full: dense net's accuracy on the whole training split.
      distinct: hidden neurons kept (``c_i > 0``).
    """

    counts: np.ndarray
    greedy_loss: float
    pruned_accuracy: float
    dense_accuracy: float
    pruned_accuracy_full: float
    dense_accuracy_full: float
    distinct: int


class _Compiled(NamedTuple):
    init: Any
    segment: Any
    full_accuracies: Any


@functools.lru_cache(maxsize=8)
def _compiled(config: TwoLayerConfig) -> _Compiled:
    """Jit-compiled functions of one width: the initialization of every seed (one program per
    width), a pre-training segment vmapped over seeds, and the whole-split accuracies."""
    model = TwoLayer(config)

    def loss(params, x, y):
        u = model.apply({"params": params}, x)[:, 0]
        return jnp.mean(jax.nn.softplus(u) - y * u)

    @jax.jit
    def init(keys):
        example = jnp.zeros((1, config.input_dim), config.dtype)
        return jax.vmap(lambda key: model.init(key, example)["params"])(keys)

    @functools.partial(jax.jit, static_argnames="steps")
    def segment(params, x, y, learning_rate, steps):
        """``steps`` GD iterations per seed; the params and the losses before and after."""

        def one(p, x, y):
            def step(p, _):
                grads = jax.grad(loss)(p, x, y)
                return jax.tree_util.tree_map(lambda a, g: a - learning_rate * g, p, grads), None

            trained = jax.lax.scan(step, p, None, length=steps)[0]
            return trained, loss(p, x, y), loss(trained, x, y)

        return jax.vmap(one)(params, x, y)

    @jax.jit
    def full_accuracies(params, counts, x, y):
        labels = y > 0.5
        dense = model.apply({"params": params}, x)[:, 0]
        pruned = model.apply({"params": params}, x, counts=counts)[:, 0]
        return jnp.sum((dense > 0) == labels), jnp.sum((pruned > 0) == labels)

    return _Compiled(init, segment, full_accuracies)


@jax.jit
def _subset_accuracies(phi, counts, y):
    """Correct predictions of the pruned (``u_k = c·Φ/k``) and the dense (``(1/N) Σ Φ_i``) net on
    the sub-dataset."""
    labels = y > 0.5
    pruned = counts.astype(phi.dtype) @ phi / jnp.sum(counts)
    dense = jnp.mean(phi, axis=0)
    return jnp.sum((pruned > 0) == labels), jnp.sum((dense > 0) == labels)


def prune_and_score(
    params: dict, x: Any, y: Any, x_full: Any, y_full: Any, num_selected: int
) -> PruningScore:
    """Greedy forward selection of a pre-trained two-layer net on its sub-dataset, scored.

    ``Φ`` over the sub-dataset (eq. 1), ``k = num_selected`` greedy steps with the binary
    cross-entropy of logits (eqs. 9–11, no fine-tuning); the pruned outputs on the sub-dataset
    are ``u_k = (1/k) Σ_i c_i Φ_i``, on the whole training split the model with ``counts``
    (eq. 3, reading GS-2).  A logit ``> 0`` predicts class 1.

    Args:
      params: :class:`~jaxprune.models.TwoLayer` params (one output, ReLU hidden layer).
      x, y: ``(m, d)`` sub-dataset and its ``(m,)`` targets in ``{0, 1}``.
      x_full, y_full: the whole training split, ``(n, d)`` and ``(n,)``.
      num_selected: greedy steps ``k >= 1``.

    Returns:
      :class:`PruningScore`.

    Raises:
      ValueError: from :func:`~jaxprune.methods.greedy.greedy_forward_selection` (shapes,
        non-finite values, targets outside ``[0, 1]``).

    References:
      Wolfe et al. (2023), eqs. (1)–(3), (9)–(11); Sec. 6.1; reading GS-15 (docs/readings.md).
    """
    phi = neuron_outputs(params, x)
    selection = greedy_forward_selection(phi, y, num_selected, loss="binary_cross_entropy")
    pruned, dense = _subset_accuracies(phi, selection.counts, jnp.asarray(y))
    hidden = params["hidden"]["kernel"]
    config = TwoLayerConfig(input_dim=hidden.shape[0], width=hidden.shape[1])
    dense_full, pruned_full = _compiled(config).full_accuracies(
        params, selection.counts, x_full, y_full
    )
    return PruningScore(
        counts=np.asarray(selection.counts),
        greedy_loss=float(selection.losses[-1]) / phi.shape[1],
        pruned_accuracy=int(pruned) / phi.shape[1],
        dense_accuracy=int(dense) / phi.shape[1],
        pruned_accuracy_full=int(pruned_full) / len(y_full),
        dense_accuracy_full=int(dense_full) / len(y_full),
        distinct=int(np.count_nonzero(np.asarray(selection.counts))),
    )


class RedLine(NamedTuple):
    """Figure 1's red line (:func:`red_line`).

    Attributes:
      threshold: best accuracy of the largest size over the prune points.
      iterations: per size, the first prune point reaching ``threshold`` (``None``: never).
    """

    threshold: float
    iterations: list[int | None]


def red_line(accuracy: Any, iterations: Sequence[int]) -> RedLine:
    """For each size, the first pre-training iteration whose pruned accuracy reaches the best
    pruned accuracy of the largest size over all iterations.

    Args:
      accuracy: ``(sizes, prune points)`` accuracies (means over seeds), the last row the
        largest size.
      iterations: ``(prune points,)`` iteration of each column.

    Returns:
      :class:`RedLine` (the last size always reaches its own best).

    Raises:
      ValueError: shapes that do not match, or NaN accuracies.

    References:
      Wolfe et al. (2023), Sec. 6.1 and Figure 1 (the red line); reading GS-17.
    """
    accuracy = np.asarray(accuracy, np.float64)
    iterations = list(iterations)
    if accuracy.ndim != 2 or accuracy.shape[1] != len(iterations) or accuracy.size == 0:
        raise ValueError(
            f"accuracy: expected (sizes, {len(iterations)}) accuracies, got shape {accuracy.shape}"
        )
    if np.isnan(accuracy).any():
        raise ValueError("accuracy: expected numbers, got NaN")
    threshold = float(accuracy[-1].max())
    first = []
    for row in accuracy:
        reached = np.flatnonzero(row >= threshold)
        first.append(int(iterations[reached[0]]) if reached.size else None)
    return RedLine(threshold, first)


def extreme_singular_values(matrices: Any) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest singular values of each ``(N, m)`` matrix of a batch.

    Computed in float64 from the eigenvalues of the smaller Gram matrix (``MᵀM`` when
    ``N >= m``, else ``MMᵀ``): ``σ = √λ``; the smallest is the ``min(N, m)``-th singular value.
    One compiled program per shape (an accelerator takes the paper's sizes).

    Args:
      matrices: ``(..., N, m)`` finite real matrices.

    Returns:
      ``(σ_min, σ_max)``, each of shape ``matrices.shape[:-2]``.

    Raises:
      ValueError: fewer than two dimensions, an empty matrix or non-finite entries.

    References:
      Wolfe et al. (2023), Definition 1 (``λ_min, λ_max`` from ``σ_min(Ψ), σ_max(Ψ)``), App. C.
    """
    matrices = np.asarray(matrices, np.float64)
    if matrices.ndim < 2 or 0 in matrices.shape[-2:]:
        raise ValueError(f"matrices: expected (..., N, m) matrices, got shape {matrices.shape}")
    if not np.all(np.isfinite(matrices)):
        raise ValueError("matrices: expected finite entries, got NaN or Inf")
    with jax.enable_x64(True):
        low, high = _extreme_singular_values(jnp.asarray(matrices))
        return np.asarray(low), np.asarray(high)


@jax.jit
def _extreme_singular_values(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    if matrices.shape[-2] < matrices.shape[-1]:
        matrices = jnp.swapaxes(matrices, -1, -2)
    eigenvalues = jnp.linalg.eigvalsh(jnp.swapaxes(matrices, -1, -2) @ matrices)
    # A Gram eigenvalue of a rank-deficient matrix can round to a tiny negative number.
    return jnp.sqrt(jnp.maximum(eigenvalues[..., 0], 0.0)), jnp.sqrt(eigenvalues[..., -1])


def gaussian_inverse_condition(
    rng: np.random.Generator, num_rows: int, num_cols: int, num_draws: int
) -> np.ndarray:
    """``1/κ = σ_min/σ_max`` of ``num_draws`` standard Gaussian ``num_rows × num_cols`` matrices.

    Args:
      rng: the draws' generator.
      num_rows, num_cols: ``N`` and ``m``.
      num_draws: matrices drawn, ``>= 1``.

    Returns:
      ``(num_draws,)`` float64 array.

    References:
      Wolfe et al. (2023), Sec. 4.2 (``λ_max/λ_min`` as the condition number of a Gaussian
      matrix) and App. C, Figure 3.
    """
    shape = tuple(
        check_positive_int(v, n)
        for v, n in ((num_draws, "num_draws"), (num_rows, "num_rows"), (num_cols, "num_cols"))
    )
    low, high = extreme_singular_values(rng.standard_normal(shape))
    return low / high


def random_psi(
    rng: np.random.Generator,
    num_neurons: int,
    dim: int,
    num_points: int,
    *,
    activation: str = "relu",
    weight_scale: str = "variance",
    num_draws: int = 1,
) -> np.ndarray:
    """App. C's first-layer outputs at initialization, ``Ψ_ij = σ_+(a_iᵀx_j)``.

    ``a_i ~ N(0, s² I_d)`` with ``s² = 1/√d`` (``weight_scale="variance"``, as printed) or
    ``s = 1/√d`` (``"std"``), ``x_j = g_j/‖g_j‖`` with ``g_j ~ N(0, I_d)``; float64.

    Args:
      rng: the draws' generator.
      num_neurons, dim, num_points: ``N``, ``d`` and ``m``.
      activation: ``σ_+``, a name of ``two_layer.ACTIVATIONS``.
      weight_scale: one of :data:`WEIGHT_SCALES` (reading GS-16).
      num_draws: independent matrices.

    Returns:
      ``(num_draws, N, m)`` float64 array.

    References:
      Wolfe et al. (2023), Definition 1 and App. C (Figure 2); reading GS-16.
    """
    for value, name in (
        (num_neurons, "num_neurons"),
        (dim, "dim"),
        (num_points, "num_points"),
        (num_draws, "num_draws"),
    ):
        check_positive_int(value, name)
    check_choice(activation, tuple(ACTIVATIONS), "activation")
    check_choice(weight_scale, WEIGHT_SCALES, "weight_scale")
    std = dim**-0.25 if weight_scale == "variance" else dim**-0.5
    a = std * rng.standard_normal((num_draws, num_neurons, dim))
    g = rng.standard_normal((num_draws, num_points, dim))
    x = g / np.linalg.norm(g, axis=-1, keepdims=True)
    pre_activations = a @ np.swapaxes(x, -1, -2)
    return np.maximum(pre_activations, 0.0) if activation == "relu" else np.tanh(pre_activations)


def sqrt_fit(num_neurons: Sequence[int], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``c`` of ``values ≈ c·√N`` and the log-log slope of ``values`` against ``N``.

    Args:
      num_neurons: the ``N`` grid (``>= 2`` points for the slope).
      values: positive values, one per ``N``.

    Returns:
      ``(c, slope)``: ``c = Σ v√N / Σ N``; slope NaN unless every value is ``> 0``.

    References:
      Wolfe et al. (2023), App. C, Figure 2 (``σ_min(Ψ) = Θ(√N)``).
    """
    widths = np.asarray(num_neurons, np.float64)
    values = np.asarray(values, np.float64)
    constant = float(np.sum(values * np.sqrt(widths)) / np.sum(widths))
    if len(widths) < 2 or (values <= 0).any():
        return constant, math.nan
    return constant, float(np.polyfit(np.log(widths), np.log(values), 1)[0])


class DashedLine(NamedTuple):
    """Figure 1's theoretical line (:func:`dashed_line`).

    Attributes:
      constant: the fitted proportionality constant ``C``.
      shape: ``g(m) = −log k / log(1 − (1/κ_m)²)`` per size.
      iterations: ``C·g(m)`` per size.
    """

    constant: float
    shape: list[float]
    iterations: list[float]


def dashed_line(
    inverse_condition: Sequence[float], num_selected: int, red_iterations: Sequence[int | None]
) -> DashedLine:
    """Sec. 4.2's threshold ``t*(m) = C · (−log k) / log(1 − λ_min²/λ_max²)`` per size.

    ``λ_min/λ_max = 1/κ_m`` is the inverse condition number of a Gaussian ``N × m`` matrix;
    ``C`` (not given by the paper) is the least-squares fit ``Σ r g / Σ g²`` of ``C·g(m)`` to the
    red-line iterations ``r`` of the sizes that reach the threshold (0 when none does).

    Args:
      inverse_condition: ``1/κ_m`` in ``(0, 1)`` per size (means over draws).
      num_selected: greedy steps ``k >= 2``.
      red_iterations: :attr:`RedLine.iterations` (``None``: never reached).

    Returns:
      :class:`DashedLine`.

    Raises:
      ValueError: ``1/κ`` outside ``(0, 1)``, ``k < 2`` or lengths that differ.

    References:
      Wolfe et al. (2023), Sec. 4.2, Theorem 3 (eq. 18) and the estimate of ``t*`` after it;
      reading GS-17 (docs/readings.md).
    """
    k = check_int(num_selected, "num_selected", minimum=2)
    inverse = [
        check_real(v, "inverse_condition", minimum=0.0, maximum=1.0, strict=True)
        for v in inverse_condition
    ]
    if len(inverse) != len(red_iterations):
        raise ValueError(
            f"red_iterations: expected {len(inverse)} entries (one per size), got "
            f"{len(red_iterations)}"
        )
    shape = np.asarray([-math.log(k) / math.log1p(-(v * v)) for v in inverse])
    reached = [i for i, r in enumerate(red_iterations) if r is not None]
    red = np.asarray([red_iterations[i] for i in reached], np.float64)
    denominator = float(np.sum(shape[reached] ** 2)) if reached else 0.0
    constant = float(np.sum(red * shape[reached]) / denominator) if denominator else 0.0
    return DashedLine(constant, shape.tolist(), (constant * shape).tolist())


def _load(settings: GreedyPretrainingSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    splits = load_dataset(DataConfig(name=settings.dataset, data_dir=settings.data_dir))
    if splits.task != "classification":
        raise ValueError(f"dataset: expected a classification dataset, got {splits.task!r}")
    x = np.asarray(splits.train["x"], np.float32).reshape(len(splits.train["x"]), -1)
    labels = np.asarray(splits.train["y"])
    return x, labels, binary_labels(labels)


def _pretrain_and_prune(settings, width: int, m_index: int, data: dict, progress, start):
    """Every seed of one ``(N, m)``: pre-training with a prune point every ``prune_every``."""
    x_full, y_full = data["x"], data["y"]
    d = x_full.shape[1]
    config = TwoLayerConfig(input_dim=d, width=width)
    compiled = _compiled(config)
    subsets = [data["subsets"][seed][m_index] for seed in settings.seeds]
    xs = jnp.asarray(np.stack([x_full[s] for s in subsets]))
    ys = jnp.asarray(np.stack([y_full[s] for s in subsets]))
    params = compiled.init(jnp.stack([jax.random.key(seed) for seed in settings.seeds]))
    runs = [{"scores": [], "dense_loss": []} for _ in settings.seeds]
    for iteration in settings.iterations:
        if iteration:
            params, before, after = compiled.segment(
                params, xs, ys, settings.learning_rate, steps=settings.prune_every
            )
            if iteration == settings.prune_every:
                for run, value in zip(runs, np.asarray(before)):
                    run["dense_loss"].append(float(value))
            for run, value in zip(runs, np.asarray(after)):
                run["dense_loss"].append(float(value))
            if not all(math.isfinite(run["dense_loss"][-1]) for run in runs):
                raise ValueError(
                    f"pre-training diverged (non-finite loss at iteration {iteration}, N = "
                    f"{width}); lower learning_rate"
                )
        for index, run in enumerate(runs):
            one = jax.tree_util.tree_map(lambda leaf, i=index: leaf[i], params)
            run["scores"].append(
                prune_and_score(one, xs[index], ys[index], x_full, y_full, settings.num_selected)
            )
    records = []
    for seed, run in zip(settings.seeds, runs):
        scores = run["scores"]
        record = {
            "width": width,
            "seed": seed,
            "size": int(xs.shape[1]),
            "dense_loss": run["dense_loss"],
            **{
                field: [getattr(s, field) for s in scores]
                for field in PruningScore._fields
                if field != "counts"
            },
        }
        records.append(record)
        if progress:
            pruned = record["pruned_accuracy"]
            best = int(np.argmax(pruned))
            print(
                f"N = {width}, seed {seed}, m = {record['size']}: dense acc "
                f"{record['dense_accuracy'][0]:.3f}→{record['dense_accuracy'][-1]:.3f}, pruned "
                f"acc {pruned[0]:.3f} at init, best {pruned[best]:.3f} at t = "
                f"{settings.iterations[best]}, {pruned[-1]:.3f} at t = {settings.num_iterations} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return records


def _mean_sd(records: list[dict], field: str, sizes) -> dict[str, list]:
    stacked = np.asarray([[r[field] for r in records if r["size"] == m] for m in sizes])
    return {"mean": stacked.mean(axis=1).tolist(), "sd": stacked.std(axis=1).tolist()}


def _non_decreasing(values: Sequence[int | None]) -> bool:
    """``values`` never decrease, ``None`` (never reached) counting as +∞."""
    numbers = [math.inf if v is None else v for v in values]
    return all(b >= a for a, b in itertools.pairwise(numbers))


def _claims(accuracy: np.ndarray, red: RedLine, iterations: Sequence[int]) -> dict:
    """Sec. 6.1's claims (a)–(c) on one heatmap, computed from the data."""
    drops = np.maximum(accuracy[:, :-1] - accuracy[:, 1:], 0.0)
    best = accuracy.max(axis=1)
    return {
        "a_red_line": red.iterations,
        "a_non_decreasing": _non_decreasing(red.iterations),
        "b_init_accuracy": accuracy[:, 0].tolist(),
        "b_best_accuracy": best.tolist(),
        "b_init_below_best": int(np.sum(accuracy[:, 0] < best)),
        "b_init_reaches_threshold": [bool(a >= red.threshold) for a in accuracy[:, 0]],
        "c_non_monotone": int(np.sum(drops.max(axis=1) > 0)),
        "c_largest_drop": float(drops.max()),
        "c_best_iteration": [int(iterations[i]) for i in np.argmax(accuracy, axis=1)],
    }


def _appendix_c(settings: GreedyPretrainingSettings, seed: int) -> dict:
    """Figures 2 (``σ_min(Ψ)`` vs ``N``) and 3 (Gaussian ``1/κ`` vs ``m``, per width)."""
    rng = np.random.default_rng(seed)
    figure2 = []
    for activation in settings.psi_activations:
        for d, m in zip(settings.psi_dims, settings.psi_points):
            means, sds = [], []
            for n in settings.psi_neurons:
                psi = random_psi(
                    rng,
                    n,
                    d,
                    m,
                    activation=activation,
                    weight_scale=settings.psi_weight_scale,
                    num_draws=settings.psi_draws,
                )
                low, _ = extreme_singular_values(psi)
                means.append(float(low.mean()))
                sds.append(float(low.std()))
            constant, slope = sqrt_fit(settings.psi_neurons, means)
            fitted = constant * np.sqrt(np.asarray(settings.psi_neurons, np.float64))
            figure2.append(
                {
                    "activation": activation,
                    "d": d,
                    "m": m,
                    "sigma_min": {"mean": means, "sd": sds},
                    "sqrt_constant": constant,
                    "loglog_slope": slope,
                    "max_relative_deviation": float(np.max(np.abs(np.asarray(means) / fitted - 1))),
                }
            )
    figure3 = {}
    for width in settings.widths:
        means, sds, edges = [], [], []
        for m in settings.subset_sizes:
            inverse = gaussian_inverse_condition(rng, width, m, settings.condition_draws)
            means.append(float(inverse.mean()))
            sds.append(float(inverse.std()))
            # Bai–Yin edges: σ ≈ √max(N, m) ± √min(N, m).
            edges.append(abs(math.sqrt(width) - math.sqrt(m)) / (math.sqrt(width) + math.sqrt(m)))
        figure3[str(width)] = {"mean": means, "sd": sds, "bai_yin": edges}
    return {"figure2": figure2, "figure3": figure3}


def _summaries(records: list[dict], settings, appendix: dict) -> dict:
    sizes, iterations = settings.subset_sizes, settings.iterations
    widths = {}
    for width in settings.widths:
        mine = [r for r in records if r["width"] == width]
        row: dict[str, Any] = {
            field: _mean_sd(mine, field, sizes)
            for field in (
                "pruned_accuracy",
                "pruned_accuracy_full",
                "dense_accuracy",
                "dense_accuracy_full",
                "greedy_loss",
                "dense_loss",
                "distinct",
            )
        }
        inverse = appendix["figure3"][str(width)]["mean"]
        for suffix in ("", "_full"):
            accuracy = np.asarray(row[f"pruned_accuracy{suffix}"]["mean"])
            red = red_line(accuracy, iterations)
            row[f"red_line{suffix}"] = red._asdict()
            row[f"dashed_line{suffix}"] = dashed_line(
                inverse, settings.num_selected, red.iterations
            )._asdict()
            row[f"claims{suffix}"] = _claims(accuracy, red, iterations)
        widths[str(width)] = row
    return widths


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def _iteration(value: int | None) -> str:
    return "never" if value is None else str(value)


def _claim_lines(claims: dict, label: str, iterations) -> list[str]:
    sizes = len(claims["a_red_line"])
    at_zero = [i for i, reached in enumerate(claims["b_init_reaches_threshold"]) if reached]
    return [
        f"- ({label}) (a) larger sub-datasets need more pre-training: red line "
        f"{[_iteration(v) for v in claims['a_red_line']]} is "
        + (
            "non-decreasing in m — holds."
            if claims["a_non_decreasing"]
            else "not non-decreasing in m — does not hold."
        ),
        f"- ({label}) (b) no good subnetwork at initialization: pruned accuracy at t = 0 is below "
        f"its best over pre-training for {claims['b_init_below_best']}/{sizes} sizes, and reaches "
        f"the red-line threshold at t = 0 for {len(at_zero)}/{sizes} sizes — "
        + (
            "holds."
            if claims["b_init_below_best"] == sizes and not at_zero
            else "does not hold for every size."
        ),
        f"- ({label}) (c) pruned accuracy is not necessarily monotone in pre-training: "
        f"{claims['c_non_monotone']}/{sizes} sizes decrease between some consecutive prune points "
        f"(largest drop {claims['c_largest_drop']:.3f}; best at t = {claims['c_best_iteration']})"
        + (" — holds (non-monotone)." if claims["c_non_monotone"] else " — monotone on this run."),
    ]


def _tables(widths: dict, appendix: dict, settings, info: dict) -> str:
    sizes, iterations = settings.subset_sizes, settings.iterations
    lines = []
    for width, row in widths.items():
        inverse = appendix["figure3"][width]["mean"]
        for suffix, what in (("", "the sub-dataset"), ("_full", "the whole training split")):
            red, dashed = row[f"red_line{suffix}"], row[f"dashed_line{suffix}"]
            lines += [
                f"### N = {width}: pruned accuracy on {what} (mean ± sd over seeds)",
                "",
                "| m \\ t | "
                + " | ".join(str(t) for t in iterations)
                + " | red line | dashed line | 1/κ | dense acc (last) |",
                "|" + "---|" * (len(iterations) + 5),
            ]
            accuracy = row[f"pruned_accuracy{suffix}"]
            dense = row[f"dense_accuracy{suffix}"]
            for s, size in enumerate(sizes):
                cells = [
                    _cell(accuracy["mean"][s][t], accuracy["sd"][s][t])
                    for t in range(len(iterations))
                ]
                lines.append(
                    f"| {size} | "
                    + " | ".join(cells)
                    + f" | {_iteration(red['iterations'][s])} | {dashed['iterations'][s]:.0f} "
                    f"| {inverse[s]:.3g} | {_cell(dense['mean'][s][-1], dense['sd'][s][-1])} |"
                )
            lines += [
                "",
                f"Red-line threshold (best pruned accuracy of m = {sizes[-1]}): "
                f"{red['threshold']:.4f}; dashed line t*(m) = C·(−log k)/log(1 − 1/κ²) with C = "
                f"{dashed['constant']:.4g} (least squares on the red line, reading GS-17).",
                "",
                *_claim_lines(row[f"claims{suffix}"], what, iterations),
                "",
            ]
        loss, distinct = row["greedy_loss"], row["distinct"]
        lines += [
            f"Greedy loss per example (k = {settings.num_selected}) / distinct neurons kept, at "
            f"t = 0 and t = {settings.num_iterations}: "
            + "; ".join(
                f"m = {size}: {loss['mean'][s][0]:.3f}→{loss['mean'][s][-1]:.3f} / "
                f"{distinct['mean'][s][0]:.0f}→{distinct['mean'][s][-1]:.0f}"
                for s, size in enumerate(sizes)
            ),
            "",
        ]
    lines += [
        "### App. C, Figure 2: σ_min(Ψ) against N (mean ± sd over draws) and the fit c·√N",
        "",
        "| σ_+ | d | m | "
        + " | ".join(f"N = {n}" for n in settings.psi_neurons)
        + " | c | log-log slope | max rel. dev. from c√N |",
        "|" + "---|" * (len(settings.psi_neurons) + 6),
    ]
    for entry in appendix["figure2"]:
        cells = [_cell(a, b) for a, b in zip(entry["sigma_min"]["mean"], entry["sigma_min"]["sd"])]
        lines.append(
            f"| {entry['activation']} | {entry['d']} | {entry['m']} | "
            + " | ".join(cells)
            + f" | {entry['sqrt_constant']:.4g} | {entry['loglog_slope']:.3f} "
            f"| {entry['max_relative_deviation']:.3f} |"
        )
    lines += [
        "",
        f"a_i ~ N(0, s² I_d) with {'s² = 1/√d (as printed)' if settings.psi_weight_scale == 'variance' else 's = 1/√d'}"
        f", x_j ~ N(0, I_d) normalized, {settings.psi_draws} draws (reading GS-16).",
        "",
        "### App. C, Figure 3: 1/κ of a standard Gaussian N × m matrix (mean ± sd; Bai–Yin "
        "|√N − √m|/(√N + √m))",
        "",
        "| N \\ m | " + " | ".join(str(m) for m in sizes) + " |",
        "|" + "---|" * (len(sizes) + 1),
    ]
    for width, entry in appendix["figure3"].items():
        cells = [
            f"{a:.3g} ± {b:.2g} ({c:.3g})"
            for a, b, c in zip(entry["mean"], entry["sd"], entry["bai_yin"])
        ]
        lines.append(f"| {width} | " + " | ".join(cells) + " |")
    lines.append(
        f"\n{info['dataset']}: {info['n_train']} training examples, d = {info['d']}, labels "
        f"binarized (class ≥ 5 → 1; {info['positive_fraction']:.3f} positive); class-balanced "
        f"nested sub-datasets per seed; seeds {list(settings.seeds)}; full-batch gradient descent "
        f"on the mean binary cross-entropy, learning rate {settings.learning_rate:g}, "
        f"{settings.num_iterations} iterations, prune points every {settings.prune_every}; "
        f"greedy forward selection with replacement, k = {settings.num_selected} steps, binary "
        f"cross-entropy, no fine-tuning (readings GS-2, GS-14, GS-15); {settings.condition_draws} "
        f"Gaussian draws per (N, m). Wall time {info['wall_s']:.0f} s."
    )
    return "\n".join(lines)


def _plot_figure1(widths: dict, settings, path: Path) -> None:
    """Figure 1: per width (columns), the mean pruned accuracy over (prune point, size ``m``)
    on the sub-dataset (top) and the whole training split (bottom), one colour scale per row,
    with the red line and the fitted ``t*(m)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes, iterations = settings.subset_sizes, settings.iterations
    figure = Figure(figsize=(5.5 * len(widths), 8.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.asarray(figure.subplots(2, len(widths), squeeze=False))
    rotation = 45 if len(iterations) > 8 else 0
    for line, (suffix, what) in enumerate((("", "sub-dataset"), ("_full", "whole training split"))):
        # One colour scale per row, so that the widths compare.
        heatmaps = [np.asarray(row[f"pruned_accuracy{suffix}"]["mean"]) for row in widths.values()]
        low, high = min(h.min() for h in heatmaps), max(h.max() for h in heatmaps)
        for column, (width, row) in enumerate(widths.items()):
            ax = axes[line, column]
            image = ax.imshow(
                heatmaps[column], origin="lower", aspect="auto", cmap="viridis", vmin=low, vmax=high
            )
            figure.colorbar(image, ax=ax, label="pruned net's accuracy (fraction correct)")
            red = row[f"red_line{suffix}"]["iterations"]
            shown = [(iterations.index(t), s) for s, t in enumerate(red) if t is not None]
            if shown:
                ax.plot(
                    *zip(*shown),
                    "r-o",
                    linewidth=2,
                    label="red line: first at the largest m's best",
                )
            dashed = np.asarray(row[f"dashed_line{suffix}"]["iterations"]) / settings.prune_every
            ax.plot(
                dashed, range(len(sizes)), "w--", linewidth=2, label="t*(m) of Sec. 4.2 (fitted)"
            )
            ax.set_xlim(-0.5, len(iterations) - 0.5)
            ax.set_xticks(range(len(iterations)), [str(t) for t in iterations], rotation=rotation)
            ax.set_yticks(range(len(sizes)), [str(m) for m in sizes])
            ax.set(
                xlabel="pre-training iterations (full-batch GD steps)",
                ylabel="sub-dataset size m (examples)",
                title=f"N = {width} neurons: accuracy on the {what}",
            )
            ax.legend(fontsize=7, loc="lower right")
    seeds = len(settings.seeds)
    figure.suptitle(
        f"Greedy forward selection (k = {settings.num_selected}) after pre-training on "
        f"{settings.dataset} (binary labels), mean over {seeds} seed{'s' if seeds > 1 else ''} "
        "(Wolfe et al. 2023, Fig. 1)"
    )
    figure.savefig(path, dpi=110)


def _plot_appendix(appendix: dict, settings, path: Path) -> None:
    """Appendix C: ``σ_min(Ψ)`` at initialization against ``N`` with the fitted ``c·√N``
    (Figure 2), and ``1/κ`` of Gaussian ``N × m`` matrices against ``m`` with the Bai–Yin limit
    (Figure 3); mean ± sd over the draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter, NullLocator

    figure = Figure(figsize=(13, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    neurons = np.asarray(settings.psi_neurons, np.float64)
    for index, entry in enumerate(appendix["figure2"]):
        color = f"C{index % 10}"
        left.errorbar(
            neurons,
            entry["sigma_min"]["mean"],
            yerr=entry["sigma_min"]["sd"],
            fmt="o-",
            color=color,
            capsize=2,
            label=f"{entry['activation']}, d = {entry['d']}, m = {entry['m']}",
        )
        left.plot(neurons, entry["sqrt_constant"] * np.sqrt(neurons), ":", color=color)
    left.plot([], [], "k:", label="fitted c·√N")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="hidden neurons N",
        ylabel="σ_min(Ψ) (smallest singular value)",
        title=f"(Fig. 2) σ_min(Ψ) at initialization, {settings.psi_draws} draws",
    )
    left.set_xticks(neurons, [f"{n:g}" for n in neurons])
    left.xaxis.set_minor_locator(NullLocator())
    right.set_xticks(settings.subset_sizes, [str(m) for m in settings.subset_sizes])
    for index, (width, entry) in enumerate(appendix["figure3"].items()):
        right.errorbar(
            settings.subset_sizes,
            entry["mean"],
            yerr=entry["sd"],
            fmt="o-",
            color=f"C{index}",
            capsize=2,
            label=f"N = {width}",
        )
        right.plot(settings.subset_sizes, entry["bai_yin"], ":", color=f"C{index}")
    right.plot([], [], "k:", label="Bai–Yin limit")
    right.set(
        yscale="log",
        xlabel="columns m (sub-dataset size)",
        ylabel="1/κ = σ_min / σ_max",
        title=f"(Fig. 3) 1/κ of a Gaussian N × m matrix, {settings.condition_draws} draws",
    )
    for ax in (left, right):  # plain numbers at 1, 2 and 5 of every decade on the log axes
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    figure.suptitle("Conditioning at initialization, mean ± sd (Wolfe et al. 2023, App. C)")
    figure.savefig(path, dpi=110)


def _plots(widths: dict, appendix: dict, settings, out_dir: Path) -> list[str]:
    """Write ``figure1.png`` and ``appendix_c.png`` to ``out_dir``; their file names."""
    _plot_figure1(widths, settings, out_dir / "figure1.png")
    _plot_appendix(appendix, settings, out_dir / "appendix_c.png")
    return ["figure1.png", "appendix_c.png"]


def run_greedy_pretraining(
    settings: GreedyPretrainingSettings, out_dir: Path, progress: bool = True
) -> dict:
    """Run every (width, seed, size); write ``table.md``, ``results.json``, ``figure1.png`` and
    ``appendix_c.png`` to ``out_dir``.

    Returns:
      ``{"settings", "info", "iterations", "sizes", "widths": per-width heatmaps (mean and sd
      over seeds), red and dashed lines and claims, "appendix_c", "runs": per-run records,
      "table": markdown, "plots": file names}``.

    Raises:
      ValueError: a non-classification dataset, sub-dataset sizes the training split cannot
        fill class-balanced (before any training), or diverging pre-training.

    References:
      Wolfe et al. (2023), Sec. 6.1 (Figure 1) and App. C (Figures 2–3).
    """
    if not isinstance(settings, GreedyPretrainingSettings):
        raise TypeError(
            f"settings: expected a GreedyPretrainingSettings, got {type(settings).__name__}"
        )
    start = time.perf_counter()
    out_dir = Path(out_dir)
    x_full, labels, y_full = _load(settings)
    data = {
        "x": x_full,
        "y": y_full,
        "subsets": {
            seed: stratified_subsets(labels, settings.subset_sizes, np.random.default_rng(seed))
            for seed in settings.seeds
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for width in settings.widths:
        for m_index in range(len(settings.subset_sizes)):
            records += _pretrain_and_prune(settings, width, m_index, data, progress, start)
    appendix = _appendix_c(settings, min(settings.seeds))
    widths = _summaries(records, settings, appendix)
    info = {
        "dataset": settings.dataset,
        "n_train": int(x_full.shape[0]),
        "d": int(x_full.shape[1]),
        "positive_fraction": float(y_full.mean()),
        "wall_s": time.perf_counter() - start,
    }
    table = _tables(widths, appendix, settings, info)
    plots = _plots(widths, appendix, settings, out_dir)
    results = {
        "settings": dataclasses.asdict(settings),
        "info": info,
        "iterations": list(settings.iterations),
        "sizes": list(settings.subset_sizes),
        "widths": widths,
        "appendix_c": appendix,
        "runs": records,
    }
    (out_dir / "table.md").write_text(table + "\n")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return {**results, "table": table, "plots": plots}


EXPERIMENT = Experiment(
    name="greedy_pretraining",
    description=(
        "Wolfe et al. (2023), Sec. 6.1, Figure 1 and App. C, Figures 2-3: a two-layer ReLU net "
        "on binarized digits is pre-trained by gradient descent on class-balanced sub-datasets "
        "and pruned by greedy forward selection at every prune point; heatmaps of pruned "
        "training accuracy over iterations x sub-dataset size, the red line (first iteration "
        "reaching the largest dataset's best) and the condition-number theory line; sigma_min "
        "of the initial features vs N and 1/kappa of Gaussian matrices."
    ),
    presets={
        "smoke": GreedyPretrainingSettings(
            widths=(16, 32),
            subset_sizes=(20, 40),
            num_iterations=4,
            prune_every=2,
            num_selected=4,
            seeds=(0,),
            condition_draws=2,
            psi_neurons=(16, 64),
            psi_dims=(8,),
            psi_points=(4,),
            psi_draws=2,
        ),
        # Minutes on a CPU: digits, every width above every m (Sec. 4.2's N ≫ m; reading GS-17).
        "small": GreedyPretrainingSettings(),
        # Sec. 6.1: MNIST, N ∈ {5K, 10K, 20K}, m = 1K, 5K, ..., 50K, 8K iterations pruned every
        # 1K to 200 neurons, 3 trials; App. C: 10 draws.
        "paper": GreedyPretrainingSettings(
            dataset="tfds:mnist",
            widths=(5000, 10000, 20000),
            subset_sizes=(1000, *range(5000, 50001, 5000)),
            num_iterations=8000,
            prune_every=1000,
            num_selected=200,
            condition_draws=10,
            psi_neurons=(500, 1000, 2000, 4000, 8000, 16000),
            psi_dims=(10, 100, 784),
            psi_points=(10, 100, 100),
        ),
    },
    run=run_greedy_pretraining,
)
