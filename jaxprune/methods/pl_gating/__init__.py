"""PL-regularization-driven structured pruning (Chen et al. 2023): NTK features, gating, TopK.

One pruning event of Algorithm 2 (App. E.2), as pure functions in four modules:

- :mod:`~jaxprune.methods.pl_gating.features`: :func:`features`, the per-group parameter
  features ``d_w[i] = [λ_min(K(w_[i])), ρ(K(w_[i]))]`` (Sec. 3.2.2, eq. 7) from all ``p`` group
  kernels of one :func:`~jaxprune.spectra.empirical_ntk` pass; :func:`normalize_features` turns
  them into the gating network's ``(p, 2)`` input.
- :mod:`~jaxprune.methods.pl_gating.gating`: the gating network of eq. 8 (Sec. 3.2.3),
  :func:`gate`, a two-layer feed-forward net ``FN_v`` applied to every group's features, then
  a softmax over the ``p`` groups.
- :mod:`~jaxprune.methods.pl_gating.objective`: the objective of eq. 36,
  ``L_S(g ∗ w) + α Tr(H_f(g ∗ w))`` with ``w`` fixed (:func:`gating_loss`, Hutchinson's trace
  of Algorithm 1), its options as one validated :class:`GatingObjective`, and
  :func:`train_gating`, which trains ``v`` on it with any optax optimizer.
- :mod:`~jaxprune.methods.pl_gating.event`: :func:`select`, the binary TopK mask keeping
  ``k = (1 - r) p`` groups, at least one per layer; :func:`prune` chains the steps under a
  :class:`PLGatingConfig` (whose :attr:`~PLGatingConfig.objective` is the
  :class:`GatingObjective`).

Each module imports only those above it.  Training ``w`` under the mask (Algorithm 2, lines
11-13, ``α = 0``) is :func:`jaxprune.optim.masked` with ``param_mask(params, group_ids,
event.mask)``.  Output sketching (:func:`jaxprune.spectra.sketch_outputs`) and the compile-cache
plumbing (:mod:`jaxprune.spectra.static`) are general and live in :mod:`jaxprune.spectra`.

Conventions: ``apply_fn(params, x) -> (n, ...)`` model outputs (logits) for inputs ``x``;
``loss_fn(params, batch) -> scalar`` the training loss on a batch; ``inputs_of(batch) -> x``
extracts the inputs of a batch for the output-Hessian trace (default ``batch[0]``, e.g. the
tokens of ``(tokens, labels, weights)``; pass ``operator.itemgetter("x")`` for dict batches).

Readings where the paper is wrong or silent (docs/readings.md), all configurable:
  * PL-4, gate scale: eq. 8's softmax sums to 1, so ``g ∗ w`` shrinks every group by about
    ``1/p``.  ``scaling="mean_one"`` (default) uses ``p · softmax`` (mean gate 1: uniform gates
    are the dense network); ``scaling="softmax"`` is the literal eq. 8.  Both rank groups
    identically, so they differ only in how ``v`` is trained.
  * PL-5, loss term: Algorithm 2 line 7 evaluates ``L_S`` at the binary mask, which carries no
    gradient to ``v``; here it is evaluated at the soft gates, ``L_S(g ∗ w)``.
  * PL-6, per-group ``λ_min``: ``K(w_[i]) = J_[i] J_[i]ᵀ`` is rank deficient by construction
    when the feature batch has more rows than its rank (at most ``k m_i``: ``m_i`` parameters,
    ``k`` traced outputs; less when the group reaches the outputs through one scalar, e.g.
    neurons of the last hidden layer: ``m_i``).  ``lambda_min="nonzero"`` (default) is the
    smallest eigenvalue above the rank tolerance, ``λ_min`` of the nonzero spectrum of
    ``J_[i]ᵀ J_[i]``; ``"bound"`` the ``min(n, k m_i)``-th eigenvalue
    (:func:`jaxprune.spectra.group_rank_bound`); ``"literal"`` the smallest of all ``n``.
  * PL-1 and PL-2, Hessian: ``Tr(H_f)`` sums the per-output Hessians over examples *and* every
    output axis (classes, tokens × vocabulary), Hutchinson on the summed outputs.  On
    piecewise-linear networks (ReLU, max-pooling, eval-mode BatchNorm) it is identically zero:
    the output is linear in each single weight on each linear piece, so every diagonal entry of
    ``∇²_w f`` vanishes.  ``hessian="auto"`` (the default of :class:`PLGatingConfig`) therefore
    uses the Gauss-Newton trace ``Tr(Jᵀ H_ℓ J)`` there (exactly the loss Hessian's trace on such
    a network; the loss Hessian itself when no ``split_loss`` is given) and eq. 36's output
    Hessian on smooth models; :func:`resolve_hessian` decides from the exact diagonal at
    sampled coordinates and warns when ``"outputs"`` is asked for where it vanishes.
    ``trace_wrt="gated"`` (default, eq. 36's notation) differentiates in the
    parameters at the point ``u = g ∗ w``; ``trace_wrt="weights"`` differentiates
    ``w ↦ f(g ∗ w)``, i.e. ``diag(g) H_f diag(g)``: for a binary mask, the pruned model's own
    Hessian (pruned weights do not count).

References:
  Chen et al. (2023), Sec. 3.2 (eqs. 6-8, TopK mask), App. E.1-E.2 (eq. 36, Algorithms 1 and
  2), App. E.3 (at least one head/expert per layer); readings PL-1 to PL-9 (docs/readings.md).
  Hutchinson (1990) (the trace estimator).
"""

from __future__ import annotations

import warnings

import jax

from jaxprune.methods.pl_gating.event import GatingEvent, PLGatingConfig, prune, select
from jaxprune.methods.pl_gating.features import (
    FEATURE_NORMALIZATIONS,
    LAMBDA_MINS,
    GroupFeatures,
    LambdaMin,
    features,
    normalize_features,
)
from jaxprune.methods.pl_gating.gating import (
    SCALINGS,
    GatingParams,
    Scaling,
    gate,
    gate_logits,
    init_gating,
)
from jaxprune.methods.pl_gating.objective import (
    HESSIANS,
    TRACE_WRT,
    GatingHistory,
    GatingObjective,
    GatingTraining,
    Hessian,
    TraceWrt,
    gating_loss,
    output_hessian_vanishes,
    resolve_hessian,
    train_gating,
)
from jaxprune.spectra import sketch as _sketch
from jaxprune.typing import ApplyFn, PyTree

__all__ = [
    "FEATURE_NORMALIZATIONS",
    "HESSIANS",
    "LAMBDA_MINS",
    "SCALINGS",
    "TRACE_WRT",
    "GatingEvent",
    "GatingHistory",
    "GatingObjective",
    "GatingParams",
    "GatingTraining",
    "GroupFeatures",
    "Hessian",
    "LambdaMin",
    "PLGatingConfig",
    "Scaling",
    "TraceWrt",
    "features",
    "gate",
    "gate_logits",
    "gating_loss",
    "init_gating",
    "normalize_features",
    "output_hessian_vanishes",
    "prune",
    "resolve_hessian",
    "select",
    "sketch_outputs",
    "train_gating",
]


def sketch_outputs(
    apply_fn: ApplyFn, params: PyTree, x: jax.Array, key: jax.Array, num_projections: int
) -> ApplyFn:
    """Deprecated alias of :func:`jaxprune.spectra.sketch_outputs` (removed in the next release)."""
    warnings.warn(
        "jaxprune.methods.pl_gating.sketch_outputs is deprecated; use "
        "jaxprune.spectra.sketch_outputs",
        DeprecationWarning,
        stacklevel=2,
    )
    return _sketch.sketch_outputs(apply_fn, params, x, key, num_projections)
