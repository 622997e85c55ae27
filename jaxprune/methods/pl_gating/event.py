"""One pruning event of Chen et al. (2023), Algorithm 2: features, gating training, TopK.

:class:`PLGatingConfig` holds the event's settings (its objective options as
:attr:`PLGatingConfig.objective`), :func:`select` the TopK mask with layer protection and
:func:`prune` one event, recorded as a :class:`GatingEvent`.

References:
  Chen et al. (2023), Sec. 3.2.3 (``m = TopK(g, k)``, ``k = (1 - r) p``), App. E.2
  (Algorithm 2, eq. 36, Table 4), App. E.3 (at least one head/expert per layer); readings PL-4,
  PL-5, PL-6, PL-9, PL-11 and PL-12 (docs/readings.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sized
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from jaxprune._validation import (
    check_batch,
    check_choice,
    check_int,
    check_iterable,
    check_optimizer,
    check_positive_int,
    check_real,
)
from jaxprune.group_ids import validate_group_ids
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import apply_group_mask, ratio_to_k, topk_mask
from jaxprune.methods.pl_gating.features import (
    FEATURE_NORMALIZATIONS,
    LAMBDA_MINS,
    GroupFeatures,
    features,
    normalize_features,
)
from jaxprune.methods.pl_gating.gating import (
    GatingParams,
    check_gating_params,
    gate,
    init_gating,
)
from jaxprune.methods.pl_gating.objective import (
    HESSIANS,
    GatingHistory,
    GatingObjective,
    _first,
    resolve_hessian,
    train_gating,
)
from jaxprune.models.base import check_float_dtype
from jaxprune.spectra.gauss_newton import SplitLoss
from jaxprune.typing import ApplyFn, BatchLossFn, PyTree

__all__ = ["GatingEvent", "PLGatingConfig", "prune", "select"]


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
      min_per_layer: groups kept in every layer (the paper: 1).
      per_layer: keep the same fraction of every layer (TopK within layers) instead of the
        paper's global TopK; global TopK can leave a layer with only its protected group.
      current_mask: optional ``(p,)`` 0/1 mask of an earlier pruning event.

    Returns:
      ``(p,)`` float32 NumPy array in ``{0, 1}`` with exactly ``k`` ones.

    Raises:
      ValueError: ``k`` above the groups ``current_mask`` keeps, a malformed ``current_mask``,
        and the errors of :func:`jaxprune.masks.topk_mask`.

    References:
      Chen et al. (2023), Sec. 3.2.3 (``m = TopK(g, k)``), App. E.3 (one head/expert per
      layer; reading PL-9, docs/readings.md).
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

    The fields ``alpha``, ``num_probes``, ``scaling``, ``hessian``, ``trace_wrt`` and
    ``distribution`` are the gating objective's: :attr:`objective` is them as one
    :class:`GatingObjective`, which validates them.

    Attributes:
      hidden: width of the gating network's hidden layer.
      scaling: gate scaling, ``"mean_one"`` (``p·softmax``, reading PL-4) or ``"softmax"``
        (eq. 8).
      alpha: ``α`` of eq. 36 while training ``v`` (Algorithm 2: 1); with ``normalize`` the
        weight of a relative change of the trace against a relative change of the loss.
      num_probes: Hutchinson probes per gating step (``>= 2`` for the standard error recorded
        in the history).
      normalize: divide the loss and trace terms by their values at the initial gates (the
        dense weights for a fresh ``v``; :func:`train_gating`, reading PL-10); ``False`` is
        eq. 36 as printed.
      gating_steps: gating steps (batches) per pruning event.
      learning_rate: Adam learning rate of ``v``.
      feature_batch_size: examples ``n >= 2`` of the feature kernels.
      lambda_min: ``λ_min`` convention, ``"nonzero"``, ``"bound"`` or ``"literal"`` (see
        :func:`features`; reading PL-6).
      output_projections: random output projections of the feature kernels (``None``: exact).
      feature_dtype: eigen-decomposition dtype of the features (``None``: the kernel's).
      hessian: ``"auto"`` (default: on piecewise-linear networks, where eq. 36's ``H_f`` is
        identically zero, the Gauss-Newton trace when :func:`prune` has a ``split_loss`` — the
        engine always passes one — and the loss Hessian otherwise; the output Hessian on
        smooth models; see :func:`resolve_hessian`), ``"outputs"`` (eq. 36, with a warning where it vanishes),
        ``"loss"``, or ``"gauss_newton"`` (the loss's Gauss-Newton trace ``Tr(Jᵀ H_ℓ J)``, equal
        to the loss Hessian's on piecewise-linear networks, cheaper to differentiate; needs
        :func:`prune`'s ``split_loss``).
      trace_wrt: ``"gated"`` (eq. 36's ``H_f(g ∗ w)``) or ``"weights"``.
      distribution: Hutchinson probes, ``"rademacher"`` or ``"gaussian"`` (Algorithm 1).
      feature_normalization: standardize the features across all groups (``"global"``) or
        within each layer (``"layer"``), see :func:`normalize_features`.
      min_per_layer: groups every layer keeps (App. E.3: 1).
      per_layer: TopK within each layer (same fraction everywhere; default) instead of the
        paper's global TopK (``False``), which on an MLP was seen to keep 127 and 1 neurons of
        two 128-wide layers.

    References:
      Chen et al. (2023), Sec. 3.2 and App. E (Algorithm 2, eq. 36, Table 4); readings PL-4,
      PL-5, PL-6 (docs/readings.md).
    """

    hidden: int = 16
    scaling: str = "mean_one"
    alpha: float = 1.0
    num_probes: int = 4
    normalize: bool = True
    gating_steps: int = 100
    learning_rate: float = 1e-2
    feature_batch_size: int = 32
    lambda_min: str = "nonzero"
    output_projections: int | None = None
    feature_dtype: Any = None
    hessian: str = "auto"
    trace_wrt: str = "gated"
    distribution: str = "rademacher"
    feature_normalization: str = "global"
    min_per_layer: int = 1
    per_layer: bool = True

    def __post_init__(self):
        check_positive_int(self.hidden, "hidden")
        check_positive_int(self.gating_steps, "gating_steps")
        check_int(self.feature_batch_size, "feature_batch_size", minimum=2)
        if self.output_projections is not None:
            check_positive_int(self.output_projections, "output_projections")
        if self.feature_dtype is not None:
            check_float_dtype(self.feature_dtype, "feature_dtype")
        check_real(self.learning_rate, "learning_rate", minimum=0.0, strict=True)
        check_choice(self.lambda_min, LAMBDA_MINS, "lambda_min")
        check_int(self.min_per_layer, "min_per_layer", minimum=0)
        check_choice(self.hessian, ("auto", *HESSIANS), "hessian")
        check_choice(self.feature_normalization, FEATURE_NORMALIZATIONS, "feature_normalization")
        for name in ("normalize", "per_layer"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        _ = self.objective  # validates alpha, num_probes, scaling, trace_wrt and distribution

    @property
    def objective(self) -> GatingObjective:
        """The gating objective's options (with the default ``inputs_of``; ``hessian="auto"``
        appears as ``"loss"``, the target that needs nothing beyond ``loss_fn``: :func:`prune`
        resolves it per model with :func:`resolve_hessian`)."""
        return GatingObjective(
            alpha=self.alpha,
            num_probes=self.num_probes,
            scaling=self.scaling,
            hessian="loss" if self.hessian == "auto" else self.hessian,
            trace_wrt=self.trace_wrt,
            distribution=self.distribution,
        )


class GatingEvent(NamedTuple):
    """Record of one pruning event of Algorithm 2 (:func:`prune`).

    Attributes:
      mask: ``(p,)`` float32 NumPy 0/1 group mask with ``k`` ones.
      gates: ``(p,)`` soft gates of the trained gating network.
      features: raw :class:`GroupFeatures`.
      normalized_features: ``(p, 2)`` gating input.
      v: trained :class:`GatingParams` (pass to the next event to continue).
      history: :class:`GatingHistory` of the gating training.
      objective: the :class:`GatingObjective` trained on (Hessian target resolved, the
        normalization's scales).
    """

    mask: np.ndarray
    gates: jax.Array
    features: GroupFeatures
    normalized_features: jax.Array
    v: GatingParams
    history: GatingHistory
    objective: GatingObjective


def prune(
    key: jax.Array,
    loss_fn: BatchLossFn,
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
    split_loss: SplitLoss | None = None,
) -> GatingEvent:
    """One pruning event ``(t_j, r_j)`` of Algorithm 2: features, gating training, TopK.

    1. :func:`features` of the first ``config.feature_batch_size`` rows of ``feature_inputs``
       and :func:`normalize_features` within ``config.feature_normalization`` (line 5);
    2. the Hessian target resolved (:func:`resolve_hessian` on the feature rows), then ``v``
       (from :func:`init_gating` unless given) trained by :func:`train_gating` on
       ``config.gating_steps`` batches with ``config.objective`` (lines 6-8);
    3. :func:`select` with ``k = ratio_to_k(p, ratio)`` (``(1 - r) p`` rounded to nearest,
       ties kept), ``config.min_per_layer`` and ``config.per_layer`` (line 9), dead groups
       (``features.dead``, a zero kernel on the feature batch) ranked below every live one:
       they do not move the outputs there, so they are pruned first (reading PL-11).

    The weights are not changed: apply the mask with :func:`jaxprune.masks.apply_group_mask`
    (line 10) and train ``w`` under it with :func:`jaxprune.optim.masked` (lines 11-13,
    ``α = 0``).  With ``current_mask`` (an earlier event's mask) the weights are taken as
    ``current_mask ∗ w``, groups it prunes stay pruned, and ``ratio`` is the cumulative
    fraction of all ``p`` groups.

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
      inputs_of: ``inputs_of(batch) -> x`` (default ``batch[0]``), see
        :attr:`GatingObjective.inputs_of`.
      split_loss: :class:`~jaxprune.spectra.SplitLoss` of ``loss_fn`` (``forward(params,
        batch)`` and ``output_loss(outputs, batch)``); required for
        ``config.hessian="gauss_newton"``.

    Returns:
      :class:`GatingEvent`.

    Raises:
      ValueError / TypeError: ``ratio`` outside ``[0, 1)`` (or keeping no group), a layout of the
        wrong size, too few feature rows or batches (a sized ``batches`` before any work),
        ``k`` below ``min_per_layer`` × layers or above the groups ``current_mask`` keeps,
        ``v`` not :class:`GatingParams`, ``optimizer`` not an optax transformation.

    References:
      Chen et al. (2023), App. E.2, Algorithm 2 (lines 4-10) and eq. 36; Sec. 3.2.3 (``k = (1 -
      r_j) p``); App. E.3 (layer protection); readings PL-4 to PL-6 (docs/readings.md).
    """
    config = PLGatingConfig() if config is None else config
    if not isinstance(config, PLGatingConfig):
        raise TypeError(f"config: expected a PLGatingConfig, got {type(config).__name__}")
    if v is not None:
        check_gating_params(v)
    if optimizer is not None:
        check_optimizer(optimizer)
    objective = dataclasses.replace(config.objective, inputs_of=inputs_of)
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
    if config.feature_normalization == "layer" and layout is None:
        raise ValueError("layout: required when config.feature_normalization='layer', got None")
    check_iterable(batches, "batches", "an iterable of training batches")
    if isinstance(batches, Sized) and len(batches) < config.gating_steps:
        raise ValueError(f"batches: yielded {len(batches)} batches, expected {config.gating_steps}")
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
    normalized = normalize_features(feats, layout, within=config.feature_normalization)
    hessian = resolve_hessian(
        config.hessian,
        apply_fn,
        params,
        feature_inputs[:n],
        jax.random.fold_in(probe_key, 1),
        split_loss=split_loss,
    )
    objective = dataclasses.replace(objective, hessian=hessian)
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
        objective=objective,
        num_steps=config.gating_steps,
        optimizer=optax.adam(config.learning_rate) if optimizer is None else optimizer,
        normalize=config.normalize,
        split_loss=split_loss,
        check_hessian=False,  # resolve_hessian checked (and warned) above
    )
    gates = gate(training.v, normalized, scaling=objective.scaling)
    scores = np.where(np.asarray(feats.dead), -np.inf, np.asarray(gates, np.float64))
    mask = select(
        scores,
        k,
        layout,
        min_per_layer=config.min_per_layer,
        per_layer=config.per_layer,
        current_mask=current_mask,
    )
    return GatingEvent(
        mask, gates, feats, normalized, training.v, training.history, training.objective
    )
