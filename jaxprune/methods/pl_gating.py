"""PL-regularization-driven structured pruning (paper 000): NTK features, gating network, TopK.

One pruning event of Algorithm 2, as pure functions:

1. :func:`features`: per-group parameter features ``d_w[i] = [λ_min(K(w_[i])), ρ(K(w_[i]))]``
   (Section 3.2.2, eq. 7) from all ``p`` group kernels of one :func:`empirical_ntk` pass;
   :func:`normalize_features` turns them into the gating network's ``(p, 2)`` input.
2. :func:`gate`: the gating network of eq. 8, a two-layer feed-forward net ``FN_v`` applied to
   every group's features, then a softmax over the ``p`` groups.
3. :func:`gating_loss` / :func:`train_gating`: ``v`` trained on eq. 36,
   ``L_S(g ∗ w) + α Tr(H_f(g ∗ w))``, with ``w`` fixed, by any optax optimizer.
4. :func:`select`: the binary TopK mask keeping ``k = (1 - r) p`` groups, at least one per layer.

:func:`prune` chains them under a :class:`PLGatingConfig`.  Training ``w`` under the mask
(Algorithm 2, lines 11-13, ``α = 0``) is :func:`jaxprune.optim.masked` with
``param_mask(params, group_ids, event.mask)``.

Conventions: ``apply_fn(params, x) -> (n, ...)`` model outputs (logits) for inputs ``x``;
``loss_fn(params, batch) -> scalar`` the training loss on a batch; ``inputs_of(batch) -> x``
extracts the inputs of a batch for the output-Hessian trace (default ``batch[0]``, e.g. the
tokens of ``(tokens, labels, weights)``; pass ``operator.itemgetter("x")`` for dict batches).

Readings of the paper (ERRATA, paper 000), all configurable:
  * Gates: eq. 8's softmax sums to 1, so ``g ∗ w`` shrinks every group by about ``1/p``.
    ``scaling="mean_one"`` (default) uses ``p · softmax`` (mean gate 1: uniform gates are the
    dense network); ``scaling="softmax"`` is the literal eq. 8.  Both rank groups identically,
    so they differ only in how ``v`` is trained.
  * Loss term: Algorithm 2 line 7 evaluates ``L_S`` at the binary mask, which carries no gradient
    to ``v``; here it is evaluated at the soft gates, ``L_S(g ∗ w)``.
  * Per-group ``λ_min``: ``K(w_[i]) = J_[i] J_[i]ᵀ`` is rank deficient by construction when the
    feature batch has more rows than its rank (at most ``k m_i``: ``m_i`` parameters, ``k``
    traced outputs; less when the group reaches the outputs through one scalar, e.g. neurons of
    the last hidden layer: ``m_i``).  ``lambda_min="nonzero"`` (default) is the smallest
    eigenvalue above the rank tolerance, ``λ_min`` of the nonzero spectrum of ``J_[i]ᵀ J_[i]``;
    ``"bound"`` the ``min(n, k m_i)``-th eigenvalue (:func:`jaxprune.spectra.group_rank_bound`);
    ``"literal"`` the smallest of all ``n``.
  * Hessian: ``Tr(H_f)`` sums the per-output Hessians over examples *and* every output axis
    (classes, tokens × vocabulary), Hutchinson on the summed outputs; ``hessian="loss"`` uses the
    loss Hessian instead.  ``trace_wrt="gated"`` (default, eq. 36's notation) differentiates in
    the parameters at the point ``u = g ∗ w``; ``trace_wrt="weights"`` differentiates
    ``w ↦ f(g ∗ w)``, i.e. ``diag(g) H_f diag(g)``: for a binary mask, the pruned model's own
    Hessian (pruned weights do not count).

References:
  Paper 000, Section 3.2 (eqs. 6-8, TopK mask), Appendix E.1-E.2 (eq. 36, Algorithms 1 and 2),
  Appendix E.3 (at least one head/expert per layer); ERRATA for paper 000.  Rakhshan &
  Rabusseau (2020), "Tensorized random projections" (the output sketch of
  :func:`sketch_outputs`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.group_ids import group_sizes, validate_group_ids
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import apply_group_mask, ratio_to_k, topk_mask
from jaxprune.spectra._checks import check_batch, check_positive_int
from jaxprune.spectra.hessian import hessian_trace, output_hessian_trace
from jaxprune.spectra.ntk import BACKENDS, empirical_ntk
from jaxprune.spectra.spectrum import group_rank_bound, spectrum_features

__all__ = [
    "HESSIANS",
    "LAMBDA_MINS",
    "SCALINGS",
    "TRACE_WRT",
    "GatingEvent",
    "GatingHistory",
    "GatingParams",
    "GatingTraining",
    "GroupFeatures",
    "PLGatingConfig",
    "features",
    "gate",
    "gate_logits",
    "gating_loss",
    "init_gating",
    "normalize_features",
    "prune",
    "select",
    "sketch_outputs",
    "train_gating",
]

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
LossFn = Callable[[PyTree, Any], jax.Array]
Scaling = Literal["mean_one", "softmax"]
Hessian = Literal["outputs", "loss"]
TraceWrt = Literal["gated", "weights"]
LambdaMin = Literal["nonzero", "bound", "literal"]

SCALINGS: tuple[str, ...] = ("mean_one", "softmax")
HESSIANS: tuple[str, ...] = ("outputs", "loss")
TRACE_WRT: tuple[str, ...] = ("gated", "weights")
LAMBDA_MINS: tuple[str, ...] = ("nonzero", "bound", "literal")


def _first(batch: Any) -> Any:
    """The default ``inputs_of``: ``batch[0]``."""
    return batch[0]


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.integer | np.floating):
        raise TypeError(f"alpha: expected a finite real number >= 0, got {alpha!r}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha: expected a finite real number >= 0, got {alpha}")
    return float(alpha)


# ---------------------------------------------------------------------------------------------
# Parameter features (Section 3.2.2).


class GroupFeatures(NamedTuple):
    """Spectral features of the ``p`` group kernels ``K(w_[i])``.

    Attributes:
      lambda_min: ``(p,)`` the feature ``λ_min(K(w_[i]))`` under the chosen convention (see
        :func:`features`).
      entropy: ``(p,)`` spectral entropy ρ of eq. 7.
      lambda_max: ``(p,)`` largest eigenvalue.
      rank: ``(p,)`` number of eigenvalues above ``tolerance``.
      rank_bound: ``(p,)`` ints, the number of eigenvalues considered: ``min(n, k m_i)``, or
        ``n`` for ``lambda_min="literal"``.
      tolerance: ``(p,)`` zero threshold of the eigenvalues (relative to ``lambda_max``).

    References:
      Paper 000, Section 3.2.2 (``d_w[i] = [λ_min, ρ]``, eq. 7); ERRATA (rank of group kernels).
    """

    lambda_min: jax.Array
    entropy: jax.Array
    lambda_max: jax.Array
    rank: jax.Array
    rank_bound: np.ndarray
    tolerance: jax.Array


def _sketch_factors(
    key: jax.Array, shape: tuple[int, ...], num_projections: int, dtype: Any
) -> list[jax.Array]:
    """Independent standard normal ``(d_a, s)`` factors, the first scaled by ``1/√k``."""
    keys = jax.random.split(key, len(shape))
    factors = [jax.random.normal(k, (d, num_projections), dtype) for k, d in zip(keys, shape)]
    factors[0] = factors[0] / np.sqrt(float(np.prod(shape)))
    return factors


@functools.lru_cache(maxsize=32)
def _sketched(apply_fn: ApplyFn, num_axes: int) -> ApplyFn:
    """``((params, factors), x) -> (n, s)``: one function object per model, so kernels of
    sketches with different factors share one compilation (the factors are an argument)."""
    axes = list(range(1, num_axes + 1))

    def sketched(packed: tuple[PyTree, list[jax.Array]], x: jax.Array) -> jax.Array:
        params, factors = packed
        operands: list[Any] = []
        for axis, factor in zip(axes, factors):
            operands += [factor, [axis, num_axes + 1]]
        return jnp.einsum(apply_fn(params, x), [0, *axes], *operands, [0, num_axes + 1])

    return sketched


@functools.lru_cache(maxsize=32)
def _calling_bound(func: Callable) -> ApplyFn:
    """``((params, (args, keywords)), x) -> func(*args, params, x, **keywords)``."""

    def call(packed: tuple[PyTree, tuple[tuple, dict]], x: jax.Array) -> jax.Array:
        params, (args, keywords) = packed
        return func(*args, params, x, **keywords)

    return call


def _unbind(
    apply_fn: jax.tree_util.Partial, params: PyTree, group_ids: PyTree
) -> tuple[ApplyFn, PyTree, PyTree]:
    """A :class:`jax.tree_util.Partial`'s bound arrays moved into the parameters, in no group
    (id ``-1``): one compiled kernel then serves every value of them."""
    bound = (tuple(apply_fn.args), dict(apply_fn.keywords))
    ungrouped = jax.tree_util.tree_map(lambda a: np.full((1,) * np.ndim(a), -1, np.int32), bound)
    return _calling_bound(apply_fn.func), (params, bound), (group_ids, ungrouped)


def _output_shape(apply_fn: ApplyFn, params: PyTree, x: jax.Array) -> jax.ShapeDtypeStruct:
    """Shape and dtype of one example's outputs."""
    out = jax.eval_shape(apply_fn, params, x[:1])
    return jax.ShapeDtypeStruct(tuple(out.shape[1:]), out.dtype)


def sketch_outputs(
    apply_fn: ApplyFn, params: PyTree, x: jax.Array, key: jax.Array, num_projections: int
) -> ApplyFn:
    """``apply_fn`` with its per-example outputs randomly projected to ``num_projections`` values.

    For outputs ``(n, d_1, ..., d_r)`` (``k = Π d_a`` values per example) the sketch is
    ``f̃_j(x) = Σ_c R_cj f_c(x)`` with ``R_cj = Π_a A_a[c_a, j] / √k`` and independent standard
    normal factors ``A_a`` of shape ``(d_a, s)``: memory ``s Σ d_a`` instead of ``s k``.  Since
    ``E[R_cj R_c'j] = δ_cc' / k``, the traced kernel of the sketch (:func:`empirical_ntk`
    divides by its ``s`` outputs) is an unbiased estimate of the kernel traced over all ``k``
    outputs, whole or per group, at the cost of ``s`` outputs instead of ``k``.  Outputs with a
    single value per example are returned unchanged.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: parameter pytree (shapes and dtypes are used).
      x: ``(n, ...)`` example inputs (shapes and dtypes are used).
      key: PRNG key of the projection.
      num_projections: ``s >= 1``.

    Returns:
      ``sketched(params, x) -> (n, s)``, deterministic given ``key``.

    References:
      Rakhshan & Rabusseau (2020), "Tensorized random projections" (Khatri–Rao Gaussian
      sketches); paper 000, Section 3.1 (the NTK of the logits).
    """
    s = check_positive_int(num_projections, "num_projections")
    check_batch(x, "x")
    out = _output_shape(apply_fn, params, x)
    if int(np.prod(out.shape)) == 1:
        return apply_fn
    factors = _sketch_factors(key, out.shape, s, out.dtype)
    sketched = _sketched(apply_fn, len(out.shape))
    return lambda params, x: sketched((params, factors), x)


def features(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    group_ids: PyTree,
    *,
    lambda_min: LambdaMin = "nonzero",
    output_projections: int | None = None,
    key: jax.Array | None = None,
    dtype: Any = None,
    backend: str = "auto",
) -> GroupFeatures:
    """Parameter features ``[λ_min(K(w_[i])), ρ(K(w_[i]))]`` of all ``p`` groups.

    All group kernels come from one :func:`jaxprune.spectra.empirical_ntk` pass, which traces
    the kernel over every non-batch output axis and divides by their size ``k``.  For MLM logits
    ``(n, T, V)`` that is all ``T·V`` token × vocabulary logits of every position (masked or
    not), and time and memory grow with ``k`` (per-example Jacobians of ``k`` outputs): on a
    2-core CPU the ``(8, 8, 8)`` head kernels of the tiny BERT preset at ``n = 8, T = 16``
    (``k = 16000``) take about 3 minutes exactly, 0.03 s (after a one-off compilation of a few
    seconds) with ``output_projections = 16``.  That option replaces the outputs by the unbiased
    random sketch of :func:`sketch_outputs` (``s`` values per example, e.g. 16-64; its factors
    are an argument of one compiled kernel per model, so new keys do not recompile).  To trace a
    subset instead (masked positions, the label logits) pass an ``apply_fn`` that returns it.
    The kernel is compiled once per ``apply_fn`` object and shapes; an ``apply_fn`` that is a
    :class:`jax.tree_util.Partial` (e.g. binding model state) is compiled once per function,
    its bound arrays being arguments of the compiled kernel.

    ``lambda_min`` (ERRATA, paper 000: per-group ``λ_min`` is zero by construction when the
    batch has more rows than the group kernel's rank):

    * ``"nonzero"``: the smallest eigenvalue above the rank tolerance (``n · eps · λ_max``),
      ``λ_min`` of the nonzero spectrum of ``J_[i]ᵀ J_[i]``, whatever limits the rank;
    * ``"bound"``: the ``min(n, k m_i)``-th eigenvalue (:func:`jaxprune.spectra.group_rank_bound`),
      0 when the rank is below that bound, which is loose when the group reaches the outputs
      through a single scalar (a neuron of the last hidden layer has rank ``<= m_i``);
    * ``"literal"``: the smallest of the ``n`` eigenvalues, 0 whenever ``n`` exceeds the rank.

    The entropy (zero eigenvalues contribute nothing) is the same for all three.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` model outputs.
      params: parameter pytree (finite values), the weights ``w`` at the pruning time.
      x: ``(n, ...)`` feature batch inputs, ``n >= 2``.
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      lambda_min: ``"nonzero"``, ``"bound"`` or ``"literal"``, see above.
      output_projections: optional number of random output projections ``s``.
      key: PRNG key of the projections (required with ``output_projections``).
      dtype: eigen-decomposition dtype (e.g. ``np.float64``), see
        :func:`jaxprune.spectra.spectrum_features`.
      backend: :func:`jaxprune.spectra.empirical_ntk` backend.

    Returns:
      :class:`GroupFeatures` of ``(p,)`` arrays.

    Raises:
      ValueError / TypeError: fewer than 2 examples, malformed ``group_ids``, bad
        ``output_projections`` or missing ``key``, unknown ``backend``.

    References:
      Paper 000, Section 3.2.2 (features, eq. 7), Algorithm 2 line 5; ERRATA (rank bound).
    """
    check_batch(x, "x")
    n = int(x.shape[0])
    if n < 2:
        raise ValueError(
            f"x: the feature batch needs at least 2 examples (a 1 x 1 kernel has no spectrum "
            f"to summarize), got shape {tuple(x.shape)}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    _check_choice(lambda_min, LAMBDA_MINS, "lambda_min")
    p = validate_group_ids(params, group_ids)
    sizes = group_sizes(params, group_ids)
    if isinstance(apply_fn, jax.tree_util.Partial):
        apply_fn, params, group_ids = _unbind(apply_fn, params, group_ids)
    out = _output_shape(apply_fn, params, x)
    k = int(np.prod(out.shape))
    if output_projections is not None:
        s = check_positive_int(output_projections, "output_projections")
        if key is None:
            raise ValueError("key: required with output_projections, got None")
        if k > 1:
            # The factors travel as ungrouped (-1) parameters: in no group kernel, and not baked
            # into a new function, so every key reuses the model's compiled kernel.
            factors = _sketch_factors(key, out.shape, s, out.dtype)
            apply_fn = _sketched(apply_fn, len(out.shape))
            params = (params, factors)
            group_ids = (group_ids, [np.full((1, 1), -1, np.int32) for _ in factors])
            k = s
    kernels = empirical_ntk(apply_fn, params, x, group_ids=group_ids, backend=backend)
    if lambda_min == "literal":
        bound = np.full(p, n, np.int64)
    else:
        bound = group_rank_bound(sizes, k, n)
    spectrum = spectrum_features(kernels, max_rank=bound, dtype=dtype)
    return GroupFeatures(
        lambda_min=spectrum.lambda_min_nonzero if lambda_min == "nonzero" else spectrum.lambda_min,
        entropy=spectrum.entropy,
        lambda_max=spectrum.lambda_max,
        rank=spectrum.rank,
        rank_bound=bound,
        tolerance=spectrum.tolerance,
    )


def _standardize(column: jax.Array) -> jax.Array:
    """Zero mean, unit (population) std across groups; a constant column maps to zeros.

    A spread within ``√eps`` of the column's magnitude is round-off of equal values (identical
    kernels decomposed separately), not a feature: it is not amplified to ±1.
    """
    mean = jnp.mean(column)
    std = jnp.std(column)
    eps = jnp.finfo(column.dtype).eps
    constant = std <= jnp.sqrt(eps) * jnp.max(jnp.abs(column))
    return jnp.where(constant, 0.0, (column - mean) / jnp.where(constant, 1.0, std))


def normalize_features(feats: GroupFeatures) -> jax.Array:
    """The gating network's input: ``(p, 2)`` standardized ``[log λ_min, ρ]``.

    ``λ_min`` spans orders of magnitude across groups, so the first column is
    ``log(λ_min + tolerance + eps · max_j λ_max,j)``: ``tolerance`` (``spectrum_features``'
    zero threshold, ``n · eps · λ_max``) is the smallest eigenvalue the decomposition resolves,
    so a zero ``λ_min`` maps to the log of that resolution limit (finite) and a resolved one is
    changed by a relative ``O(n eps)``; the global ``eps · max λ_max`` keeps zero kernels finite.
    The second column is the entropy ρ (eq. 7).  Each column is then standardized across the
    ``p`` groups (zero mean, unit std; a constant column, e.g. one group, gives zeros).

    Every term scales with the kernel, so the result is invariant to scaling all kernels by a
    constant (the output scale, ``empirical_ntk``'s ``1/k``, a sketch's scale); all-zero kernels
    give zeros.

    Args:
      feats: :class:`GroupFeatures` from :func:`features`.

    Returns:
      ``(p, 2)`` finite array.

    References:
      Paper 000, Section 3.2.2 (features) and eq. 8 (their gating network).
    """
    if not isinstance(feats, GroupFeatures):
        raise TypeError(f"feats: expected GroupFeatures (from features()), got {type(feats)}")
    lambda_min = jnp.asarray(feats.lambda_min)
    dtype = jnp.promote_types(lambda_min.dtype, jnp.float32)
    lambda_min = lambda_min.astype(dtype)
    lambda_max = jnp.asarray(feats.lambda_max, dtype)
    scale = jnp.max(lambda_max)
    floor = jnp.asarray(feats.tolerance, dtype) + jnp.finfo(dtype).eps * scale
    log_lambda = jnp.log(jnp.where(scale > 0, lambda_min + floor, 1.0))
    entropy = jnp.asarray(feats.entropy, dtype)
    return jnp.stack([_standardize(log_lambda), _standardize(entropy)], axis=-1)


# ---------------------------------------------------------------------------------------------
# Gating network (Section 3.2.3, eq. 8).


class GatingParams(NamedTuple):
    """Parameters ``v`` of the two-layer gating network ``FN_v: R² -> R``.

    ``FN_v(d) = w2 · tanh(d W1 + b1)``.  An output bias would cancel in eq. 8's softmax, so
    there is none.

    Attributes:
      w1: ``(2, h)`` first-layer weights.
      b1: ``(h,)`` first-layer bias.
      w2: ``(h,)`` output weights.
    """

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array


def init_gating(key: jax.Array, hidden: int = 16, *, dtype: Any = jnp.float32) -> GatingParams:
    """Initial gating parameters: LeCun-normal ``W1``, zero ``b1`` and zero ``w2``.

    With ``w2 = 0`` every logit is 0, so the gates start uniform (``1/p``, or 1 under
    ``"mean_one"``: the gated model is the dense one) and training breaks the symmetry.

    Args:
      key: PRNG key.
      hidden: width ``h >= 1`` of the hidden layer.
      dtype: parameter dtype.

    Returns:
      :class:`GatingParams`.

    References:
      Paper 000, Section 3.2.3 (two-layer feed-forward ``FN_v``).
    """
    hidden = check_positive_int(hidden, "hidden")
    w1 = jax.random.normal(key, (2, hidden), dtype) / np.sqrt(2.0)
    return GatingParams(w1=w1, b1=jnp.zeros((hidden,), dtype), w2=jnp.zeros((hidden,), dtype))


def _check_features_matrix(normalized_features: Any) -> jax.Array:
    normalized_features = jnp.asarray(normalized_features)
    shape = normalized_features.shape
    if len(shape) != 2 or shape[1] != 2 or shape[0] < 1:
        raise ValueError(
            f"normalized_features: expected shape (p, 2) with p >= 1 (from normalize_features), "
            f"got {shape}"
        )
    return normalized_features


def gate_logits(v: GatingParams, normalized_features: jax.Array) -> jax.Array:
    """``[FN_v(d_1), ..., FN_v(d_p)]``: the same network applied to every group's features.

    Args:
      v: :class:`GatingParams`.
      normalized_features: ``(p, 2)`` from :func:`normalize_features`.

    Returns:
      ``(p,)`` logits.

    References:
      Paper 000, Section 3.2.3, eq. 8 (the argument of the softmax).
    """
    d = _check_features_matrix(normalized_features).astype(v.w1.dtype)
    return jnp.tanh(d @ v.w1 + v.b1) @ v.w2


def gate(
    v: GatingParams, normalized_features: jax.Array, *, scaling: Scaling = "mean_one"
) -> jax.Array:
    """Soft gates ``g(d_w; v)`` of the ``p`` groups: a softmax over all groups.

    ``scaling="softmax"`` is eq. 8 literally (gates in ``[0, 1]`` summing to 1);
    ``"mean_one"`` is ``p · softmax`` (gates summing to ``p``, mean 1), the practical reading of
    the ERRATA: multiplying weights by gates that sum to 1 shrinks every group by about ``1/p``.
    The ranking of the groups, hence the TopK mask, is the same for both.

    Args:
      v: :class:`GatingParams`.
      normalized_features: ``(p, 2)`` from :func:`normalize_features`.
      scaling: ``"mean_one"`` or ``"softmax"``.

    Returns:
      ``(p,)`` positive gates.

    References:
      Paper 000, Section 3.2.3, eq. 8; ERRATA for paper 000 (p·softmax).
    """
    _check_choice(scaling, SCALINGS, "scaling")
    logits = gate_logits(v, normalized_features)
    gates = jax.nn.softmax(logits)
    return gates * logits.shape[0] if scaling == "mean_one" else gates


# ---------------------------------------------------------------------------------------------
# Training objective (eq. 36) and the training of v.


def _gating_objective(
    v: GatingParams,
    params: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    *,
    loss_fn: LossFn,
    apply_fn: ApplyFn,
    group_ids: PyTree,
    alpha: float,
    num_probes: int,
    scaling: str,
    hessian: str,
    trace_wrt: str,
    inputs_of: Callable[[Any], jax.Array],
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """``(L + α T, (L, T))`` with ``L = L_S(g ∗ w)`` and ``T`` the Hutchinson trace."""
    gates = gate(v, normalized_features, scaling=scaling)
    gated = apply_group_mask(params, group_ids, gates)
    loss = loss_fn(gated, batch)

    if trace_wrt == "gated":
        point = gated

        def reparameterize(u: PyTree) -> PyTree:
            return u
    else:
        point = params

        def reparameterize(u: PyTree) -> PyTree:
            return apply_group_mask(u, group_ids, gates)

    if hessian == "outputs":
        trace = output_hessian_trace(
            lambda u, x: apply_fn(reparameterize(u), x),
            point,
            inputs_of(batch),
            key,
            num_probes=num_probes,
        ).estimate
    else:
        trace = hessian_trace(
            lambda u: loss_fn(reparameterize(u), batch),
            point,
            key,
            num_probes=num_probes,
            distribution="gaussian",
        ).estimate
    return loss + alpha * trace, (loss, trace)


class _StaticIds:
    """A group-id pytree hashable by content: a static argument of the compiled objective."""

    def __init__(self, group_ids: PyTree):
        leaves, treedef = jax.tree_util.tree_flatten(group_ids)
        leaves = [np.asarray(leaf) for leaf in leaves]
        self.group_ids = jax.tree_util.tree_unflatten(treedef, leaves)
        self._key = (treedef, tuple((a.shape, a.dtype.str, a.tobytes()) for a in leaves))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StaticIds) and self._key == other._key


def _as_partial(fn: Callable) -> jax.tree_util.Partial:
    """``fn`` as a pytree: a :class:`jax.tree_util.Partial`'s bound arrays become traced
    arguments of compiled functions, its function (compared by identity) part of the cache key."""
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


@functools.partial(
    jax.jit, static_argnames=("ids", "num_probes", "scaling", "hessian", "trace_wrt", "inputs_of")
)
def _objective_value_and_grad(
    v: GatingParams,
    params: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    alpha: jax.Array,
    loss_fn: jax.tree_util.Partial,
    apply_fn: jax.tree_util.Partial,
    *,
    ids: _StaticIds,
    num_probes: int,
    scaling: str,
    hessian: str,
    trace_wrt: str,
    inputs_of: Callable[[Any], jax.Array],
) -> tuple[tuple[jax.Array, tuple[jax.Array, jax.Array]], GatingParams]:
    """Value and ``v``-gradient of :func:`_gating_objective`, compiled once per model and
    options: ``alpha`` and the arrays bound in ``loss_fn``/``apply_fn`` are traced."""
    return jax.value_and_grad(_gating_objective, has_aux=True)(
        v,
        params,
        normalized_features,
        batch,
        key,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        group_ids=ids.group_ids,
        alpha=alpha,
        num_probes=num_probes,
        scaling=scaling,
        hessian=hessian,
        trace_wrt=trace_wrt,
        inputs_of=inputs_of,
    )


def _check_objective_args(
    params: PyTree,
    group_ids: PyTree,
    normalized_features: Any,
    alpha: Any,
    num_probes: Any,
    scaling: Any,
    hessian: Any,
    trace_wrt: Any,
) -> tuple[float, int]:
    p = validate_group_ids(params, group_ids)
    rows = _check_features_matrix(normalized_features).shape[0]
    if rows != p:
        raise ValueError(
            f"normalized_features: has {rows} rows, expected one per group ({p} groups)"
        )
    _check_choice(scaling, SCALINGS, "scaling")
    _check_choice(hessian, HESSIANS, "hessian")
    _check_choice(trace_wrt, TRACE_WRT, "trace_wrt")
    return _check_alpha(alpha), check_positive_int(num_probes, "num_probes")


def gating_loss(
    v: GatingParams,
    loss_fn: LossFn,
    apply_fn: ApplyFn,
    params: PyTree,
    group_ids: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    *,
    alpha: float = 1.0,
    num_probes: int = 1,
    scaling: Scaling = "mean_one",
    hessian: Hessian = "outputs",
    trace_wrt: TraceWrt = "gated",
    inputs_of: Callable[[Any], jax.Array] = _first,
) -> jax.Array:
    """Eq. 36 for the gating parameters: ``L_S(g ∗ w) + α Tr(H_f(g ∗ w))``, ``w`` fixed.

    ``g = gate(v, normalized_features, scaling=scaling)``; ``g ∗ w`` is
    :func:`jaxprune.masks.apply_group_mask` with the soft gates (ERRATA: the loss at the soft
    gates, so both terms train ``v``).  ``Tr(H_f)`` is Hutchinson's estimate with
    ``num_probes`` Gaussian probes drawn from ``key`` (Algorithm 1):

    * ``hessian="outputs"``: :func:`jaxprune.spectra.output_hessian_trace` of ``apply_fn`` on
      ``inputs_of(batch)``, the Hessian of the sum of all outputs over examples and output axes
      (classes; tokens × vocabulary for MLM logits);
    * ``hessian="loss"``: :func:`jaxprune.spectra.hessian_trace` of ``loss_fn(·, batch)``;

    in the parameters at ``g ∗ w`` (``trace_wrt="gated"``) or of ``w ↦ f(g ∗ w)``
    (``trace_wrt="weights"``, ``diag(g) H diag(g)``).  The estimate is unbiased for fixed
    ``v``; differentiable in ``v`` (and jit-able) for a fixed key.

    The output Hessian is indefinite, so ``Tr(H_f)`` can be negative and lowering it is not
    lowering ``‖H_f‖₂`` (Appendix E.2 replaces the norm by the trace); it is a sum over all
    ``n k`` outputs, so at ``α = 1`` it can dwarf a mean loss (MLM logits: ``k = T V``).  Choose
    ``α`` (and ``num_probes``: one probe's spread exceeds its mean on BERT) accordingly.

    Args:
      v: :class:`GatingParams`.
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: the weights ``w`` (fixed).
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      normalized_features: ``(p, 2)`` from :func:`normalize_features`.
      batch: a training batch, passed to ``loss_fn`` as is.
      key: PRNG key of the probes.
      alpha: trade-off ``α >= 0`` (Algorithm 2 trains ``v`` with ``α = 1``).
      num_probes: Hutchinson probes, ``>= 1``.
      scaling: gate scaling, see :func:`gate`.
      hessian: ``"outputs"`` or ``"loss"``.
      trace_wrt: ``"gated"`` or ``"weights"``.
      inputs_of: ``inputs_of(batch) -> x`` for ``apply_fn`` (default ``batch[0]``).

    Returns:
      Scalar objective.

    References:
      Paper 000, Appendix E.2, eq. 36 and Algorithm 1; Algorithm 2 line 7; ERRATA (soft gates).
    """
    alpha, num_probes = _check_objective_args(
        params, group_ids, normalized_features, alpha, num_probes, scaling, hessian, trace_wrt
    )
    total, _ = _gating_objective(
        v,
        params,
        normalized_features,
        batch,
        key,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        group_ids=group_ids,
        alpha=alpha,
        num_probes=num_probes,
        scaling=scaling,
        hessian=hessian,
        trace_wrt=trace_wrt,
        inputs_of=inputs_of,
    )
    return total


class GatingHistory(NamedTuple):
    """Per-step values of the gating objective (before each step's update).

    Attributes:
      total: ``(steps,)`` ``L + α T``.
      loss: ``(steps,)`` ``L_S(g ∗ w)``.
      trace: ``(steps,)`` Hutchinson estimate ``T`` of the Hessian trace.
    """

    total: np.ndarray
    loss: np.ndarray
    trace: np.ndarray


class GatingTraining(NamedTuple):
    """Result of :func:`train_gating`.

    Attributes:
      v: trained :class:`GatingParams`.
      opt_state: the optimizer state (pass it back to continue training).
      history: :class:`GatingHistory`.
    """

    v: GatingParams
    opt_state: optax.OptState
    history: GatingHistory


def train_gating(
    v: GatingParams,
    loss_fn: LossFn,
    apply_fn: ApplyFn,
    params: PyTree,
    group_ids: PyTree,
    normalized_features: jax.Array,
    batches: Iterable[Any],
    key: jax.Array,
    *,
    num_steps: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    opt_state: optax.OptState | None = None,
    alpha: float = 1.0,
    num_probes: int = 1,
    scaling: Scaling = "mean_one",
    hessian: Hessian = "outputs",
    trace_wrt: TraceWrt = "gated",
    inputs_of: Callable[[Any], jax.Array] = _first,
) -> GatingTraining:
    """Train ``v`` on :func:`gating_loss` with an optax optimizer, ``w`` fixed.

    One jit-compiled gradient of :func:`gating_loss` and one optimizer update per batch; step
    ``t`` draws its probes from ``fold_in(key, t)``.  The gradient is compiled once per
    ``(loss_fn, apply_fn, group_ids, num_probes, scaling, hessian, trace_wrt, inputs_of)`` and
    shapes, and reused by later calls (pruning events) with the same function objects.  To
    reuse it when the functions depend on arrays that change between calls (model state,
    gates), pass them as :class:`jax.tree_util.Partial` of one function: the bound arrays are
    traced arguments, not constants of the compiled code.

    Args:
      v: initial :class:`GatingParams`.
      loss_fn, apply_fn, params, group_ids, normalized_features: as in :func:`gating_loss`.
      batches: iterable of batches; one step per batch.
      key: PRNG key of the probes.
      num_steps: steps to take (the first ``num_steps`` batches); ``None`` uses every batch.
      optimizer: any optax optimizer on ``v``; default ``optax.adam(1e-2)``.
      opt_state: optimizer state to continue from; default ``optimizer.init(v)``.
      alpha, num_probes, scaling, hessian, trace_wrt, inputs_of: as in :func:`gating_loss`.

    Returns:
      :class:`GatingTraining`.

    Raises:
      ValueError: no batch, or fewer batches than ``num_steps``; invalid options as in
        :func:`gating_loss`.

    References:
      Paper 000, Algorithm 2, lines 6-8 (``v ← v − η ∇_v L_total`` with ``α = 1``).
    """
    alpha, num_probes = _check_objective_args(
        params, group_ids, normalized_features, alpha, num_probes, scaling, hessian, trace_wrt
    )
    if num_steps is not None:
        num_steps = check_positive_int(num_steps, "num_steps")
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    opt_state = optimizer.init(v) if opt_state is None else opt_state
    sharding = jax.tree_util.tree_leaves(params)[0].sharding
    if sharding.is_fully_replicated:
        # Place v as the updates will leave it (on the weights' devices): otherwise the second
        # step sees committed arrays where the first saw uncommitted ones and compiles again.
        v, opt_state = jax.device_put((v, opt_state), sharding)

    value_and_grad = functools.partial(
        _objective_value_and_grad,
        loss_fn=_as_partial(loss_fn),
        apply_fn=_as_partial(apply_fn),
        ids=_StaticIds(group_ids),
        num_probes=num_probes,
        scaling=scaling,
        hessian=hessian,
        trace_wrt=trace_wrt,
        inputs_of=inputs_of,
    )

    @jax.jit
    def update(grads, opt_state, v):
        updates, opt_state = optimizer.update(grads, opt_state, v)
        return optax.apply_updates(v, updates), opt_state

    values = []
    for batch in itertools.islice(batches, num_steps):
        step_key = jax.random.fold_in(key, len(values))
        (total, (loss, trace)), grads = value_and_grad(
            v, params, normalized_features, batch, step_key, alpha
        )
        v, opt_state = update(grads, opt_state, v)
        values.append((total, loss, trace))
    if not values or (num_steps is not None and len(values) < num_steps):
        raise ValueError(
            f"batches: yielded {len(values)} batches, expected "
            f"{'at least one' if num_steps is None else num_steps}"
        )
    table = np.asarray(jax.device_get(values))
    return GatingTraining(v, opt_state, GatingHistory(table[:, 0], table[:, 1], table[:, 2]))


# ---------------------------------------------------------------------------------------------
# Selection (TopK with layer protection) and one pruning event.


def select(
    gates: Any,
    k: int,
    layout: GroupLayout | None = None,
    *,
    min_per_layer: int = 1,
    per_layer: bool = False,
    current_mask: Any = None,
) -> np.ndarray:
    """Binary mask keeping the ``k`` groups with the largest gates, ``min_per_layer`` per layer.

    :func:`jaxprune.masks.topk_mask` with ``min_per_layer`` (first the best ``min_per_layer``
    groups of every layer of ``layout``, then the best of the rest); ties rank the lower group
    index first.  With ``current_mask``, groups it prunes (entry 0) stay pruned: schedules
    prune cumulatively.

    Args:
      gates: ``(p,)`` concrete gates (or any scores).
      k: groups to keep, ``0 <= k <= p``.
      layout: the groups' :class:`GroupLayout`; required when ``min_per_layer > 0``.
      min_per_layer: groups kept in every layer (paper: 1).
      per_layer: keep the same fraction of every layer (TopK within layers) instead of the
        paper's global TopK; global TopK can leave a layer with only its protected group.
      current_mask: optional ``(p,)`` 0/1 mask of an earlier pruning event.

    Returns:
      ``(p,)`` float32 NumPy array in ``{0, 1}`` with exactly ``k`` ones.

    Raises:
      ValueError: ``k`` above the groups ``current_mask`` keeps, a malformed ``current_mask``,
        and the errors of :func:`jaxprune.masks.topk_mask`.

    References:
      Paper 000, Section 3.2.3 (``m = TopK(g, k)``), Appendix E.3 (one head/expert per layer).
    """
    scores = np.asarray(gates, np.float64)
    if current_mask is not None:
        kept = _check_binary_mask(current_mask, scores.shape, "current_mask")
        if isinstance(k, int | np.integer) and not isinstance(k, bool) and k > kept.sum():
            raise ValueError(
                f"k: {k} exceeds the {int(kept.sum())} groups current_mask keeps; pruned groups "
                "stay pruned"
            )
        scores = np.where(kept, scores, -np.inf)
    return topk_mask(scores, k, layout=layout, per_layer=per_layer, min_per_layer=min_per_layer)


def _check_binary_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    values = np.asarray(mask)
    if values.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, one entry per group, got {values.shape}")
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"{name}: expected entries 0 or 1, got {np.unique(values)[:5]}")
    return values != 0


@dataclasses.dataclass(frozen=True)
class PLGatingConfig:
    """Hyperparameters of one PL-gating pruning event (:func:`prune`).

    Attributes:
      hidden: width of the gating network's hidden layer.
      scaling: gate scaling, ``"mean_one"`` (``p·softmax``) or ``"softmax"`` (eq. 8).
      alpha: ``α`` of eq. 36 while training ``v`` (Algorithm 2: 1).
      num_probes: Hutchinson probes per gating step.
      gating_steps: gating steps (batches) per pruning event.
      learning_rate: Adam learning rate of ``v``.
      feature_batch_size: examples ``n >= 2`` of the feature kernels.
      lambda_min: ``λ_min`` convention, ``"nonzero"``, ``"bound"`` or ``"literal"`` (see
        :func:`features`).
      output_projections: random output projections of the feature kernels (``None``: exact).
      feature_dtype: eigen-decomposition dtype of the features (``None``: the kernel's).
      hessian: ``"outputs"`` (eq. 36) or ``"loss"``.
      trace_wrt: ``"gated"`` (eq. 36's ``H_f(g ∗ w)``) or ``"weights"``.
      min_per_layer: groups every layer keeps (Appendix E.3: 1).
      per_layer: TopK within each layer (same fraction everywhere) instead of the paper's
        global TopK, which on an MLP was seen to keep 127 and 1 neurons of two 128-wide layers.

    References:
      Paper 000, Section 3.2 and Appendix E (Algorithm 2, eq. 36, Table 4); ERRATA.
    """

    hidden: int = 16
    scaling: str = "mean_one"
    alpha: float = 1.0
    num_probes: int = 1
    gating_steps: int = 100
    learning_rate: float = 1e-2
    feature_batch_size: int = 32
    lambda_min: str = "nonzero"
    output_projections: int | None = None
    feature_dtype: Any = None
    hessian: str = "outputs"
    trace_wrt: str = "gated"
    min_per_layer: int = 1
    per_layer: bool = False

    def __post_init__(self):
        for name in ("hidden", "num_probes", "gating_steps"):
            check_positive_int(getattr(self, name), name)
        check_positive_int(self.feature_batch_size, "feature_batch_size")
        if self.feature_batch_size < 2:
            raise ValueError(
                f"feature_batch_size: expected >= 2 examples, got {self.feature_batch_size}"
            )
        if self.output_projections is not None:
            check_positive_int(self.output_projections, "output_projections")
        _check_choice(self.scaling, SCALINGS, "scaling")
        _check_choice(self.hessian, HESSIANS, "hessian")
        _check_choice(self.trace_wrt, TRACE_WRT, "trace_wrt")
        _check_alpha(self.alpha)
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float | np.floating):
            raise TypeError(f"learning_rate: expected a positive real number, got {rate!r}")
        if not (np.isfinite(rate) and rate > 0):
            raise ValueError(f"learning_rate: expected a positive real number, got {rate}")
        _check_choice(self.lambda_min, LAMBDA_MINS, "lambda_min")
        count = self.min_per_layer
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ValueError(f"min_per_layer: expected an int >= 0, got {count!r}")


class GatingEvent(NamedTuple):
    """Record of one pruning event of Algorithm 2 (:func:`prune`).

    Attributes:
      mask: ``(p,)`` float32 NumPy 0/1 group mask with ``k`` ones.
      gates: ``(p,)`` soft gates of the trained gating network.
      features: raw :class:`GroupFeatures`.
      normalized_features: ``(p, 2)`` gating input.
      v: trained :class:`GatingParams` (pass to the next event to continue).
      history: :class:`GatingHistory` of the gating training.
    """

    mask: np.ndarray
    gates: jax.Array
    features: GroupFeatures
    normalized_features: jax.Array
    v: GatingParams
    history: GatingHistory


def prune(
    key: jax.Array,
    loss_fn: LossFn,
    apply_fn: ApplyFn,
    params: PyTree,
    group_ids: PyTree,
    layout: GroupLayout | None,
    feature_inputs: jax.Array,
    batches: Iterable[Any],
    ratio: float,
    config: PLGatingConfig | None = None,
    *,
    v: GatingParams | None = None,
    current_mask: Any = None,
    optimizer: optax.GradientTransformation | None = None,
    inputs_of: Callable[[Any], jax.Array] = _first,
) -> GatingEvent:
    """One pruning event ``(t_j, r_j)`` of Algorithm 2: features, gating training, TopK.

    1. :func:`features` of the first ``config.feature_batch_size`` rows of ``feature_inputs``
       and :func:`normalize_features` (line 5);
    2. ``v`` (from :func:`init_gating` unless given) trained by :func:`train_gating` on
       ``config.gating_steps`` batches with ``α = config.alpha`` (lines 6-8);
    3. :func:`select` with ``k = ratio_to_k(p, ratio)`` (``(1 - r) p`` rounded to nearest,
       ties kept) and ``config.min_per_layer`` (line 9).

    The weights are not changed: apply the mask with :func:`jaxprune.masks.apply_group_mask`
    (line 10) and train ``w`` under it with :func:`jaxprune.optim.masked` (lines 11-13).  With
    ``current_mask`` (an earlier event's mask) the weights are taken as ``current_mask ∗ w``,
    groups it prunes stay pruned, and ``ratio`` is the cumulative fraction of all ``p`` groups.

    Args:
      key: PRNG key (output projections, ``v``'s initialization, Hutchinson probes).
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: the weights ``w`` at the pruning time.
      group_ids: group-id pytree with ``p`` groups.
      layout: their :class:`GroupLayout` (may be ``None`` when ``min_per_layer == 0``).
      feature_inputs: ``(N, ...)`` inputs with ``N >= config.feature_batch_size``.
      batches: iterable of at least ``config.gating_steps`` training batches.
      ratio: pruning ratio ``r`` in ``[0, 1)``.
      config: :class:`PLGatingConfig` (default: its defaults).
      v: gating parameters to continue from.
      current_mask: ``(p,)`` 0/1 mask of an earlier event.
      optimizer: optax optimizer of ``v``; default ``optax.adam(config.learning_rate)``.
      inputs_of: ``inputs_of(batch) -> x`` (default ``batch[0]``).

    Returns:
      :class:`GatingEvent`.

    Raises:
      ValueError / TypeError: ``ratio`` outside ``[0, 1)`` (or keeping no group), a layout of the
        wrong size, too few feature rows or batches, ``k`` below ``min_per_layer`` × layers or
        above the groups ``current_mask`` keeps.

    References:
      Paper 000, Appendix E.2, Algorithm 2 (lines 4-10) and eq. 36; Section 3.2.3 (``k = (1 -
      r_j) p``); Appendix E.3 (layer protection); ERRATA for paper 000.
    """
    config = PLGatingConfig() if config is None else config
    if not isinstance(config, PLGatingConfig):
        raise TypeError(f"config: expected a PLGatingConfig, got {type(config).__name__}")
    p = validate_group_ids(params, group_ids)
    k = ratio_to_k(p, ratio)
    if layout is not None and not isinstance(layout, GroupLayout):
        raise TypeError(f"layout: expected a GroupLayout or None, got {type(layout).__name__}")
    if layout is None and config.min_per_layer > 0:
        raise ValueError(
            f"layout: required when config.min_per_layer > 0 (got {config.min_per_layer}), got None"
        )
    if layout is not None:
        if layout.num_groups != p:
            raise ValueError(f"layout: has {layout.num_groups} groups, expected {p}")
        if k < config.min_per_layer * layout.num_layers:
            raise ValueError(
                f"ratio: {ratio} keeps {k} of {p} groups, fewer than config.min_per_layer "
                f"({config.min_per_layer}) x {layout.num_layers} layers"
            )
    if current_mask is not None:
        kept = _check_binary_mask(current_mask, (p,), "current_mask")
        if k > kept.sum():
            raise ValueError(
                f"ratio: {ratio} keeps {k} of {p} groups, more than the {int(kept.sum())} that "
                "current_mask keeps; pass the cumulative ratio of the schedule"
            )
        params = apply_group_mask(params, group_ids, kept.astype(np.float32))
    check_batch(feature_inputs, "feature_inputs")
    n = config.feature_batch_size
    if feature_inputs.shape[0] < n:
        raise ValueError(
            f"feature_inputs: has {feature_inputs.shape[0]} examples, fewer than "
            f"config.feature_batch_size = {n}"
        )
    sketch_key, init_key, probe_key = jax.random.split(key, 3)
    feats = features(
        apply_fn,
        params,
        feature_inputs[:n],
        group_ids,
        lambda_min=config.lambda_min,
        output_projections=config.output_projections,
        key=sketch_key,
        dtype=config.feature_dtype,
    )
    normalized = normalize_features(feats)
    if v is None:
        v = init_gating(init_key, config.hidden)
    training = train_gating(
        v,
        loss_fn,
        apply_fn,
        params,
        group_ids,
        normalized,
        batches,
        probe_key,
        num_steps=config.gating_steps,
        optimizer=optax.adam(config.learning_rate) if optimizer is None else optimizer,
        alpha=config.alpha,
        num_probes=config.num_probes,
        scaling=config.scaling,
        hessian=config.hessian,
        trace_wrt=config.trace_wrt,
        inputs_of=inputs_of,
    )
    gates = gate(training.v, normalized, scaling=config.scaling)
    mask = select(
        gates,
        k,
        layout,
        min_per_layer=config.min_per_layer,
        per_layer=config.per_layer,
        current_mask=current_mask,
    )
    return GatingEvent(mask, gates, feats, normalized, training.v, training.history)
