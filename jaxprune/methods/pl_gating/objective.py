"""The gating objective of Chen et al. (2023), App. E.2, eq. 36, and the training of ``v``.

``L_total(v) = L_S(g ∗ w) / L_0 + α Tr(H(g ∗ w)) / T_0`` with ``w`` fixed and ``g = gate(v,
d_w)``; the trace is Hutchinson's estimate (Algorithm 1).  ``L_0 = T_0 = 1`` is eq. 36 as
printed; :func:`train_gating` by default sets them to the loss and trace at the initial gates
(the dense weights for a fresh ``v``), so both terms start near 1 and ``α`` weighs a relative
change of the trace against a relative change of the loss (reading PL-10).  The options of the objective are one validated
:class:`GatingObjective`; :func:`gating_loss` evaluates it and :func:`train_gating` trains ``v``
on it with any optax optimizer (Algorithm 2, lines 6-8).

Which Hessian (reading PL-2, docs/readings.md): eq. 36's ``H_f`` (``hessian="outputs"``) is
identically zero on piecewise-linear networks (ReLU MLPs and CNNs, max-pooling, BatchNorm in
eval mode): the output is linear in each single weight on each linear piece, so every diagonal
entry of ``∇²_w f`` vanishes, and so does the trace; its Hutchinson estimate is then pure noise
from the off-diagonal entries, and ``v`` would be trained on that noise.  The loss Hessian
(``hessian="loss"``, the default here) carries signal on every model: ``Tr ∇²_w L = Tr(Jᵀ H_ℓ
J) + Σ ∂ℓ/∂f · Tr(H_f)``, on a piecewise-linear network exactly the (positive) Gauss-Newton
trace ``Tr(Jᵀ H_ℓ J)`` (``hessian="gauss_newton"``), whose estimate is cheaper and has lower
variance.  :func:`resolve_hessian` picks the target for a model (``"auto"``: the Gauss-Newton
trace where the output Hessian's diagonal vanishes and the loss comes split at the outputs, the
loss Hessian where it vanishes and the loss is not split, eq. 36's output Hessian otherwise)
and warns when the output Hessian is asked for where it is zero.

References:
  Chen et al. (2023), App. E.2 (eq. 36, Algorithms 1 and 2); Hutchinson (1990); readings PL-1,
  PL-2, PL-4, PL-5 and PL-10 (docs/readings.md).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import jax
import numpy as np
import optax

from jaxprune._validation import (
    check_choice,
    check_finite_tree,
    check_iterable,
    check_optimizer,
    check_positive_int,
    check_real,
)
from jaxprune.group_ids import validate_group_ids
from jaxprune.masks.mask import apply_group_mask
from jaxprune.methods.pl_gating.gating import (
    SCALINGS,
    GatingParams,
    Scaling,
    check_features_matrix,
    check_gating_params,
    gate,
)
from jaxprune.spectra.gauss_newton import SplitLoss, gauss_newton_trace, validate_split_loss
from jaxprune.spectra.hessian import (
    DISTRIBUTIONS,
    TraceEstimate,
    hessian_trace,
    output_hessian_trace,
    sample_output_hessian_diagonal,
)
from jaxprune.spectra.static import FrozenGroupIds, as_partial
from jaxprune.typing import ApplyFn, BatchLossFn, PyTree

__all__ = [
    "HESSIANS",
    "TRACE_WRT",
    "GatingHistory",
    "GatingObjective",
    "GatingTraining",
    "Hessian",
    "TraceWrt",
    "gating_loss",
    "output_hessian_vanishes",
    "resolve_hessian",
    "train_gating",
]

Hessian = Literal["outputs", "loss", "gauss_newton"]
TraceWrt = Literal["gated", "weights"]
HESSIANS: tuple[str, ...] = ("outputs", "loss", "gauss_newton")
TRACE_WRT: tuple[str, ...] = ("gated", "weights")

# fold_in data of the dense-scale probes, apart from the steps' fold_in(key, t).
_SCALE_STREAM = 2**31 - 1

_LEAF_FIELDS = ("alpha", "loss_scale", "trace_scale")
_STATIC_FIELDS = ("num_probes", "scaling", "hessian", "trace_wrt", "distribution", "inputs_of")


def _first(batch: Any) -> Any:
    """The default ``inputs_of``: ``batch[0]``."""
    return batch[0]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class GatingObjective:
    """The options of eq. 36's gating objective, validated once when constructed.

    A pytree whose leaves are ``alpha``, ``loss_scale`` and ``trace_scale``: passed to a
    compiled function they are traced (new values do not recompile); the other fields are
    static.  The objective is ``L / loss_scale + alpha · T / trace_scale``.

    Attributes:
      alpha: trade-off ``α >= 0`` of the trace term (Algorithm 2 trains ``v`` with ``α = 1``).
      num_probes: Hutchinson probes per evaluation, ``>= 1`` (``>= 2`` for a standard error).
      scaling: gate scaling, ``"mean_one"`` (``p·softmax``, reading PL-4) or ``"softmax"``
        (eq. 8), see :func:`jaxprune.methods.pl_gating.gate`.
      hessian: ``"loss"`` (default: the training loss's Hessian, which has signal on every
        model, reading PL-2) or ``"outputs"`` (eq. 36's ``H_f``, the Hessian of the summed
        outputs, reading PL-1; identically zero on piecewise-linear networks) or
        ``"gauss_newton"`` (the trace of the loss's Gauss-Newton matrix ``Jᵀ H_ℓ J``, from a
        :class:`~jaxprune.spectra.SplitLoss`: on piecewise-linear networks equal to the loss
        Hessian's trace, with lower variance and one derivative order less to differentiate,
        :mod:`jaxprune.spectra.gauss_newton`).
      trace_wrt: ``"gated"`` (eq. 36's notation: the Hessian in the parameters at
        ``u = g ∗ w``) or ``"weights"`` (the Hessian of ``w ↦ f(g ∗ w)``, ``diag(g) H
        diag(g)``: for a binary mask, the pruned model's own Hessian).
      distribution: Hutchinson probes, ``"rademacher"`` (default: the diagonal adds no variance,
        ``Var = 2 Σ_{i≠j} H_ij²``) or ``"gaussian"`` (Algorithm 1, ``Var = 2 ‖H‖_F²``).
      loss_scale, trace_scale: positive divisors of the two terms (``1``: eq. 36 as printed);
        :func:`train_gating` with ``normalize=True`` sets them to the values at the initial
        gates (the dense weights for a fresh ``v``).
      inputs_of: ``inputs_of(batch) -> x``, the model inputs of a batch for the output Hessian
        (default ``batch[0]``; e.g. ``operator.itemgetter("x")`` for dict batches).  Part of
        compile-cache keys: pass one function object.

    Raises:
      TypeError / ValueError: a field of the wrong type or value.

    References:
      Chen et al. (2023), App. E.2, eq. 36 and Algorithm 1; readings PL-1, PL-2, PL-4
      (docs/readings.md).
    """

    alpha: float = 1.0
    num_probes: int = 1
    scaling: Scaling = "mean_one"
    hessian: Hessian = "loss"
    trace_wrt: TraceWrt = "gated"
    inputs_of: Callable[[Any], jax.Array] = _first
    distribution: str = "rademacher"
    loss_scale: float = 1.0
    trace_scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", check_real(self.alpha, "alpha", minimum=0.0))
        for name in ("loss_scale", "trace_scale"):
            value = check_real(getattr(self, name), name, minimum=0.0, strict=True)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "num_probes", check_positive_int(self.num_probes, "num_probes"))
        check_choice(self.scaling, SCALINGS, "scaling")
        check_choice(self.hessian, HESSIANS, "hessian")
        check_choice(self.trace_wrt, TRACE_WRT, "trace_wrt")
        check_choice(self.distribution, DISTRIBUTIONS, "distribution")
        if not callable(self.inputs_of):
            raise TypeError(f"inputs_of: expected a callable, got {self.inputs_of!r}")

    def tree_flatten(self) -> tuple[tuple[Any, ...], tuple]:
        leaves = tuple(getattr(self, name) for name in _LEAF_FIELDS)
        return leaves, tuple(getattr(self, name) for name in _STATIC_FIELDS)

    @classmethod
    def tree_unflatten(cls, static: tuple, children: tuple[Any, ...]) -> GatingObjective:
        # Without __init__: the leaves may be tracers, and the fields were validated already.
        objective = object.__new__(cls)
        for name, value in (*zip(_LEAF_FIELDS, children), *zip(_STATIC_FIELDS, static)):
            object.__setattr__(objective, name, value)
        return objective


def _as_objective(objective: GatingObjective | None, options: dict[str, Any]) -> GatingObjective:
    """``objective``, or one built from its fields given as keywords (not both)."""
    if objective is None:
        return GatingObjective(**options)
    if not isinstance(objective, GatingObjective):
        raise TypeError(f"objective: expected a GatingObjective, got {type(objective).__name__}")
    if options:
        raise TypeError(
            f"objective: pass either a GatingObjective or its fields, got both {options}"
        )
    return objective


def _trace_estimate(
    point: PyTree,
    reparameterize: Callable[[PyTree], PyTree],
    batch: Any,
    key: jax.Array,
    num_probes: int,
    *,
    loss_fn: BatchLossFn,
    apply_fn: ApplyFn,
    split_loss: SplitLoss | None,
    objective: GatingObjective,
) -> TraceEstimate:
    """Hutchinson estimate of ``Tr ∇²_u h(reparameterize(u))`` at ``u = point``, ``h`` the
    summed outputs on ``inputs_of(batch)`` or the loss on ``batch`` (its Gauss-Newton part for
    ``"gauss_newton"``)."""
    if objective.hessian == "gauss_newton":
        return gauss_newton_trace(
            SplitLoss(
                lambda u, b: split_loss.forward(reparameterize(u), b), split_loss.output_loss
            ),
            point,
            batch,
            key,
            num_probes=num_probes,
            distribution=objective.distribution,
        )
    if objective.hessian == "outputs":
        return output_hessian_trace(
            lambda u, x: apply_fn(reparameterize(u), x),
            point,
            objective.inputs_of(batch),
            key,
            num_probes=num_probes,
            distribution=objective.distribution,
        )
    return hessian_trace(
        lambda u: loss_fn(reparameterize(u), batch),
        point,
        key,
        num_probes=num_probes,
        distribution=objective.distribution,
    )


def _gating_objective(
    v: GatingParams,
    params: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    *,
    loss_fn: BatchLossFn,
    apply_fn: ApplyFn,
    split_loss: SplitLoss | None,
    group_ids: PyTree,
    objective: GatingObjective,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """``(L / L_0 + α T / T_0, (L, T, stderr of T))``: ``L = L_S(g ∗ w)``, ``T`` Hutchinson's
    trace."""
    gates = gate(v, normalized_features, scaling=objective.scaling)
    gated = apply_group_mask(params, group_ids, gates)
    loss = loss_fn(gated, batch)

    if objective.trace_wrt == "gated":
        point = gated

        def reparameterize(u: PyTree) -> PyTree:
            return u
    else:
        point = params

        def reparameterize(u: PyTree) -> PyTree:
            return apply_group_mask(u, group_ids, gates)

    trace = _trace_estimate(
        point,
        reparameterize,
        batch,
        key,
        objective.num_probes,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        split_loss=split_loss,
        objective=objective,
    )
    total = loss / objective.loss_scale + objective.alpha * trace.estimate / objective.trace_scale
    return total, (loss, trace.estimate, trace.stderr)


def _initial_scales(
    value_and_grad: Callable[..., Any],
    v: GatingParams,
    params: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    objective: GatingObjective,
    scale_probes: int,
) -> GatingObjective:
    """``objective`` with ``loss_scale = L`` and ``trace_scale = max(|T|, stderr)`` at the gates
    of ``v`` on ``batch`` (each 1 where it is 0: nothing to normalize).

    Evaluated with the compiled objective itself (the scales are traced leaves: no new
    compilation), ``ceil(scale_probes / num_probes)`` times with fresh probes.
    """
    unscaled = dataclasses.replace(objective, loss_scale=1.0, trace_scale=1.0)
    rounds = -(-scale_probes // objective.num_probes)
    stream = jax.random.fold_in(key, _SCALE_STREAM)
    values = [
        value_and_grad(
            v, params, normalized_features, batch, jax.random.fold_in(stream, r), unscaled
        )[0][1]
        for r in range(rounds)
    ]
    losses, traces, stderrs = (np.asarray(a, np.float64) for a in zip(*jax.device_get(values)))
    loss, estimate = float(losses[0]), float(traces.mean())
    if not np.isfinite(loss):
        raise ValueError(
            f"loss_fn: expected a finite loss at the initial gates on the first batch, got {loss}"
        )
    stderr = float(traces.std(ddof=1) / np.sqrt(rounds)) if rounds > 1 else float(stderrs[0])
    probes = rounds * objective.num_probes
    if not abs(estimate) > 2 * stderr:
        warnings.warn(
            f"the Hessian trace ({objective.hessian}) at the initial gates is {estimate:.4g} ± "
            f"{stderr:.4g} over {probes} probes, not resolved from zero: its scale "
            "normalizes the trace term; check the Hessian target (see resolve_hessian)",
            UserWarning,
            stacklevel=3,
        )
    trace_scale = max(abs(estimate), stderr)
    return dataclasses.replace(
        objective,
        loss_scale=abs(loss) if loss != 0 else 1.0,
        trace_scale=trace_scale if 0 < trace_scale < np.inf else 1.0,
    )


@functools.partial(jax.jit, static_argnames=("ids",))
def _objective_value_and_grad(
    v: GatingParams,
    params: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    objective: GatingObjective,
    loss_fn: jax.tree_util.Partial,
    apply_fn: jax.tree_util.Partial,
    split_loss: SplitLoss | None,
    *,
    ids: FrozenGroupIds,
) -> tuple[tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]], GatingParams]:
    """Value and ``v``-gradient of :func:`_gating_objective`, compiled once per model and
    objective options: ``objective``'s leaves (``alpha``, the scales) and the arrays bound in
    ``loss_fn``/``apply_fn``/``split_loss`` are traced."""
    return jax.value_and_grad(_gating_objective, has_aux=True)(
        v,
        params,
        normalized_features,
        batch,
        key,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        split_loss=split_loss,
        group_ids=ids.group_ids,
        objective=objective,
    )


def _split_loss_for(objective: GatingObjective, split_loss: Any) -> SplitLoss | None:
    """``split_loss`` with its functions as ``Partial`` pytrees; required for
    ``hessian="gauss_newton"``, ignored otherwise."""
    split_loss = validate_split_loss(split_loss, allow_none=True)
    if split_loss is None:
        if objective.hessian == "gauss_newton":
            raise ValueError(
                "split_loss: required when hessian='gauss_newton' (a SplitLoss(forward, "
                "output_loss) with loss(params, batch) = output_loss(forward(params, batch), "
                "batch)), got None"
            )
        return None
    return SplitLoss(*(as_partial(fn) for fn in split_loss))


def _check_features_rows(params: PyTree, group_ids: PyTree, normalized_features: Any) -> None:
    """Finite ``params`` (when concrete), matching ``group_ids`` and one feature row per group."""
    check_finite_tree(params, "params")
    p = validate_group_ids(params, group_ids)
    rows = check_features_matrix(normalized_features).shape[0]
    if rows != p:
        raise ValueError(
            f"normalized_features: has {rows} rows, expected one per group ({p} groups)"
        )


def gating_loss(
    v: GatingParams,
    loss_fn: BatchLossFn,
    apply_fn: ApplyFn,
    params: PyTree,
    group_ids: PyTree,
    normalized_features: jax.Array,
    batch: Any,
    key: jax.Array,
    *,
    objective: GatingObjective | None = None,
    split_loss: SplitLoss | None = None,
    **options: Any,
) -> jax.Array:
    """Eq. 36 for the gating parameters: ``L_S(g ∗ w) / L_0 + α Tr(H(g ∗ w)) / T_0``, ``w``
    fixed (``L_0 = objective.loss_scale``, ``T_0 = objective.trace_scale``; 1 and 1 is eq. 36 as
    printed).

    ``g = gate(v, normalized_features, scaling=objective.scaling)``; ``g ∗ w`` is
    :func:`jaxprune.masks.apply_group_mask` with the soft gates (reading PL-5: the loss at the
    soft gates, so both terms train ``v``).  The trace is Hutchinson's estimate with
    ``objective.num_probes`` probes (``objective.distribution``) drawn from ``key``
    (Algorithm 1):

    * ``hessian="loss"`` (default): :func:`jaxprune.spectra.hessian_trace` of
      ``loss_fn(·, batch)``, the Gauss-Newton trace on a piecewise-linear network;
    * ``hessian="gauss_newton"``: :func:`jaxprune.spectra.gauss_newton_trace` of
      ``split_loss``, that trace directly (equal in expectation on a piecewise-linear network,
      without the off-diagonal output-Hessian noise, and a second- instead of third-order
      gradient in ``v``);
    * ``hessian="outputs"``: :func:`jaxprune.spectra.output_hessian_trace` of ``apply_fn`` on
      ``inputs_of(batch)``, the Hessian of the sum of all outputs over examples and output axes
      (classes; tokens × vocabulary for MLM logits; reading PL-1), zero on piecewise-linear
      networks (reading PL-2, :func:`resolve_hessian`);

    in the parameters at ``g ∗ w`` (``trace_wrt="gated"``) or of ``w ↦ f(g ∗ w)``
    (``trace_wrt="weights"``, ``diag(g) H diag(g)``).  The estimate is unbiased for fixed
    ``v``; differentiable in ``v`` (and jit-able) for a fixed key.

    With ``hessian="outputs"`` each call first runs :func:`resolve_hessian`'s zero-diagonal
    check (the exact output-Hessian diagonal at sampled coordinates of ``params`` on
    ``inputs_of(batch)``, remembered per model function and shapes) and warns where
    ``Tr(H_f)`` is identically zero; the check is skipped when ``params``, the inputs or the
    arrays bound in ``apply_fn`` are traced (a ``jit`` over them).

    The output Hessian is indefinite, so ``Tr(H_f)`` can be negative and lowering it is not
    lowering ``‖H_f‖₂`` (App. E.2 replaces the norm by the trace); it is a sum over all
    ``n k`` outputs, so unnormalized at ``α = 1`` it can dwarf a mean loss (MLM logits: ``k = T
    V``): :func:`train_gating` normalizes both terms by default (reading PL-10).

    Args:
      v: :class:`GatingParams`.
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: the weights ``w`` (fixed).
      group_ids: group-id pytree of ``params`` with ``p`` groups.
      normalized_features: ``(p, 2)`` from :func:`normalize_features`.
      batch: a training batch, passed to ``loss_fn`` as is.
      key: PRNG key of the probes.
      objective: the :class:`GatingObjective` (default: its defaults).
      split_loss: :class:`~jaxprune.spectra.SplitLoss` of the loss (``forward(params, batch)``
        and ``output_loss(outputs, batch)``); required for ``hessian="gauss_newton"``.
      **options: instead of ``objective``, its fields as keywords (``alpha``, ``num_probes``,
        ``scaling``, ``hessian``, ``trace_wrt``, ``distribution``, ``loss_scale``,
        ``trace_scale``, ``inputs_of``).

    Returns:
      Scalar objective.

    Warns:
      UserWarning: ``hessian="outputs"`` on a model whose output-Hessian diagonal is zero to
        round-off (a piecewise-linear network: ``Tr(H_f) ≡ 0``).

    Raises:
      TypeError / ValueError: ``normalized_features`` without one row per group, invalid
        objective fields, both ``objective`` and fields, or ``hessian="gauss_newton"`` without
        ``split_loss``.

    References:
      Chen et al. (2023), App. E.2, eq. 36 and Algorithm 1; Algorithm 2 line 7; reading PL-5
      (docs/readings.md: soft gates).
    """
    objective = _as_objective(objective, options)
    split_loss = _split_loss_for(objective, split_loss)
    _check_features_rows(params, group_ids, normalized_features)
    _check_output_hessian(objective, apply_fn, params, batch, stacklevel=2)
    total, _ = _gating_objective(
        v,
        params,
        normalized_features,
        batch,
        key,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        split_loss=split_loss,
        group_ids=group_ids,
        objective=objective,
    )
    return total


class GatingHistory(NamedTuple):
    """Per-step values of the gating objective (before each step's update).

    Attributes:
      total: ``(steps,)`` ``L / L_0 + α T / T_0``.
      loss: ``(steps,)`` ``L_S(g ∗ w)``.
      trace: ``(steps,)`` Hutchinson estimate ``T`` of the Hessian trace.
      trace_stderr: ``(steps,)`` its standard error over the step's probes (``inf`` for one).
    """

    total: np.ndarray
    loss: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray


class GatingTraining(NamedTuple):
    """Result of :func:`train_gating`.

    Attributes:
      v: trained :class:`GatingParams`.
      opt_state: the optimizer state (pass it back to continue training).
      history: :class:`GatingHistory`.
      objective: the :class:`GatingObjective` trained on (with the normalization's scales).
    """

    v: GatingParams
    opt_state: optax.OptState
    history: GatingHistory
    objective: GatingObjective


def output_hessian_vanishes(
    apply_fn: ApplyFn, params: PyTree, x: jax.Array, key: jax.Array, *, per_leaf: int = 4
) -> bool:
    """Whether ``Tr(H_f)`` is identically zero here: the exact diagonal of the output Hessian
    at ``per_leaf`` sampled coordinates of every leaf is zero to round-off
    (:func:`jaxprune.spectra.sample_output_hessian_diagonal`), on the first example of ``x``.

    True on piecewise-linear networks (ReLU, max-pooling, eval-mode BatchNorm: linear in each
    single weight on each piece), false on smooth ones (tanh, GELU, softmax attention,
    LayerNorm).  Being a property of the network's structure, not of the data, one example
    decides it; it costs ``per_leaf × leaves`` Hessian-vector products on that example (a
    VGG-16-bn width/8, 41 leaves: 36 s on 8 examples, 15 s on one, mostly compilation, on a
    loaded 2-core CPU).

    References:
      Chen et al. (2023), App. E.2, eq. 36; reading PL-2 (docs/readings.md).
    """
    sample = sample_output_hessian_diagonal(apply_fn, params, x[:1], key, per_leaf=per_leaf)
    return sample.vanishes()


# resolve_hessian's answers by model function and shapes.
_VANISHING: dict[tuple, bool] = {}


def _model_key(apply_fn: ApplyFn, params: PyTree, x: jax.Array) -> tuple:
    function = apply_fn.func if isinstance(apply_fn, jax.tree_util.Partial) else apply_fn
    leaves, treedef = jax.tree_util.tree_flatten(params)
    shapes = tuple((np.shape(leaf), str(jax.numpy.result_type(leaf))) for leaf in leaves)
    return function, treedef, shapes, np.shape(x), str(jax.numpy.result_type(x))


def resolve_hessian(
    hessian: str,
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    key: jax.Array,
    *,
    split_loss: SplitLoss | None = None,
) -> Hessian:
    """The Hessian target of the gating objective for this model.

    * ``"auto"``: where :func:`output_hessian_vanishes` (piecewise-linear networks: the MLP,
      CNN, VGG, ResNet and two-layer families of the zoo), ``"gauss_newton"`` when a
      ``split_loss`` is given (the engine always gives one) and ``"loss"`` otherwise; on such a
      network the two have the same trace, but the Gauss-Newton estimate has no off-diagonal
      output-Hessian noise per probe and is one derivative order cheaper to train the gates on.
      Elsewhere ``"outputs"`` (eq. 36's ``H_f``: the transformer families, BERT and Switch,
      whose GELU, softmax and LayerNorm make it nonzero);
    * ``"outputs"``: returned as asked, with a ``UserWarning`` where it vanishes (the trace term
      would then train ``v`` on Hutchinson noise alone);
    * ``"loss"`` and ``"gauss_newton"``: returned without a check.

    Whether the output Hessian vanishes is a property of the model's structure (its
    nonlinearities), so it is decided once per model function and parameter and input shapes
    (for a :class:`jax.tree_util.Partial`, per wrapped function) and remembered.
    :func:`gating_loss` and :func:`train_gating` run the same check (and warning) when called
    directly with ``hessian="outputs"``.

    Args:
      hessian: ``"auto"``, ``"outputs"``, ``"loss"`` or ``"gauss_newton"``.
      apply_fn, params, x: the model, its weights and a probe batch of inputs.
      key: PRNG key of the sampled coordinates.
      split_loss: the loss split at the model outputs, if the caller has one (it makes
        ``"auto"`` choose the Gauss-Newton target on piecewise-linear networks).

    Returns:
      ``"outputs"``, ``"loss"`` or ``"gauss_newton"``.

    References:
      Chen et al. (2023), App. E.2, eq. 36; reading PL-2 (docs/readings.md).
    """
    check_choice(hessian, ("auto", *HESSIANS), "hessian")
    if hessian in ("loss", "gauss_newton"):
        return hessian
    model = _model_key(apply_fn, params, x)
    vanishes = _VANISHING.get(model)
    if vanishes is None:
        vanishes = _VANISHING[model] = output_hessian_vanishes(apply_fn, params, x, key)
    if hessian == "auto":
        if not vanishes:
            return "outputs"
        return "loss" if split_loss is None else "gauss_newton"
    if vanishes:
        _warn_vanishing(stacklevel=3)
    return "outputs"


def _warn_vanishing(stacklevel: int) -> None:
    """The ``UserWarning`` that eq. 36's ``Tr(H_f)`` is identically zero on the model."""
    warnings.warn(
        "hessian='outputs': the output Hessian's diagonal is zero to round-off on this "
        "model (a piecewise-linear network), so Tr(H_f) is identically zero and the trace "
        "term trains the gates on Hutchinson noise; use hessian='loss' or 'auto'",
        UserWarning,
        stacklevel=stacklevel,
    )


# Seed of the direct calls' zero-diagonal check (its coordinates; a structural property, so a
# fixed choice: the caller's key may be traced where the model is not).
_CHECK_SEED = 13


def _check_output_hessian(
    objective: GatingObjective,
    apply_fn: ApplyFn,
    params: PyTree,
    batch: Any,
    *,
    stacklevel: int,
) -> None:
    """For ``objective.hessian == "outputs"``: :func:`resolve_hessian`'s zero-diagonal check of
    ``apply_fn`` at ``params`` on ``inputs_of(batch)`` (coordinates of a fixed seed), warning
    where ``Tr(H_f)`` vanishes.

    Skipped for the other targets and when the model's arrays are traced (``gating_loss``
    under ``jit``/``vmap`` with ``params``, the inputs or ``apply_fn``'s bound arrays as
    arguments: the exact diagonal needs concrete values; a ``jit`` over ``v`` alone, the
    model closed over, still checks); the answer is remembered per model function and shapes,
    so repeated calls cost one dictionary look-up.
    """
    if objective.hessian != "outputs":
        return
    x = objective.inputs_of(batch)
    arrays = jax.tree_util.tree_leaves((params, x, apply_fn))
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        return
    model = _model_key(apply_fn, params, x)
    vanishes = _VANISHING.get(model)
    if vanishes is None:
        # Concrete values, also while a caller's jit traces gating_loss over v alone.
        with jax.ensure_compile_time_eval():
            check_key = jax.random.PRNGKey(_CHECK_SEED)
            vanishes = output_hessian_vanishes(apply_fn, params, x, check_key)
        _VANISHING[model] = vanishes
    if vanishes:
        _warn_vanishing(stacklevel=stacklevel + 2)


def train_gating(
    v: GatingParams,
    loss_fn: BatchLossFn,
    apply_fn: ApplyFn,
    params: PyTree,
    group_ids: PyTree,
    normalized_features: jax.Array,
    batches: Iterable[Any],
    key: jax.Array,
    *,
    objective: GatingObjective | None = None,
    num_steps: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    opt_state: optax.OptState | None = None,
    normalize: bool = True,
    scale_probes: int = 16,
    split_loss: SplitLoss | None = None,
    check_hessian: bool = True,
    **options: Any,
) -> GatingTraining:
    """Train ``v`` on :func:`gating_loss` with an optax optimizer, ``w`` fixed.

    With ``normalize`` (default), the objective's ``loss_scale`` and ``trace_scale`` are first
    set to the loss ``L`` and the trace magnitude ``|T|`` at the initial gates on the first batch
    (the dense weights for a fresh ``v`` under ``"mean_one"`` scaling, whose gates are all 1;
    about ``scale_probes`` probes from a stream apart from the steps'; the standard error
    instead when it is larger, with a warning that the trace is not resolved from zero): both
    terms start near 1, ``α`` weighs a relative change of the trace against a relative change of the loss,
    and the gradient's composition (not only its scale, which Adam ignores) depends on ``α``
    (reading PL-10, docs/readings.md).  ``normalize=False`` keeps the objective's scales (1:
    eq. 36 as printed); to continue a training exactly, pass the returned ``objective`` and
    ``opt_state`` with ``normalize=False``.

    One jit-compiled gradient of :func:`gating_loss` and one optimizer update per batch; step
    ``t`` draws its probes from ``fold_in(key, t)``.  The gradient is compiled once per
    ``(loss_fn, apply_fn, group_ids)``, objective options other than ``alpha``, and shapes, and
    reused by later calls (pruning events) with the same function objects.  To reuse it when
    the functions depend on arrays that change between calls (model state, gates), pass them as
    :class:`jax.tree_util.Partial` of one function: the bound arrays are traced arguments, not
    constants of the compiled code.

    Args:
      v: initial :class:`GatingParams`.
      loss_fn, apply_fn, params, group_ids, normalized_features: as in :func:`gating_loss`.
      batches: iterable of batches; one step per batch.
      key: PRNG key of the probes.
      objective: the :class:`GatingObjective` (default: its defaults).
      num_steps: steps to take (the first ``num_steps`` batches); ``None`` uses every batch.
      optimizer: any optax optimizer on ``v``; default ``optax.adam(1e-2)``.
      opt_state: optimizer state to continue from; default ``optimizer.init(v)``.
      normalize: normalize both terms by their values at the initial gates (see above).
      scale_probes: probes of the initial trace when normalizing (rounded up to a multiple of
        ``objective.num_probes``).
      split_loss: as in :func:`gating_loss` (required for ``hessian="gauss_newton"``).
      check_hessian: with ``hessian="outputs"``, run :func:`resolve_hessian`'s zero-diagonal
        check once, on the first batch, before the first step (not per step), and warn where
        ``Tr(H_f)`` vanishes; :func:`~jaxprune.methods.pl_gating.prune` passes ``False``, as it
        resolved the target already.
      **options: instead of ``objective``, its fields as keywords, as in :func:`gating_loss`.

    Returns:
      :class:`GatingTraining`.

    Warns:
      UserWarning: as in :func:`gating_loss`, once per call.

    Raises:
      ValueError: no batch, or fewer batches than ``num_steps``; a loss that is not finite at
        the initial gates on the first batch (with ``normalize``); invalid arguments as in
        :func:`gating_loss`.
      TypeError: ``v`` not a :class:`GatingParams`, ``batches`` not an iterable,
        ``optimizer`` not an optax ``GradientTransformation``, or ``check_hessian`` not a bool.

    References:
      Chen et al. (2023), App. E.2, Algorithm 2, lines 6-8 (``v ← v − η ∇_v L_total`` with
      ``α = 1``).
    """
    objective = _as_objective(objective, options)
    split_loss = _split_loss_for(objective, split_loss)
    _check_features_rows(params, group_ids, normalized_features)
    if num_steps is not None:
        num_steps = check_positive_int(num_steps, "num_steps")
    scale_probes = check_positive_int(scale_probes, "scale_probes")
    check_gating_params(v)
    if not isinstance(check_hessian, bool):
        raise TypeError(f"check_hessian: expected a bool, got {check_hessian!r}")
    check_iterable(batches, "batches", "an iterable of batches")
    optimizer = optax.adam(1e-2) if optimizer is None else check_optimizer(optimizer)
    opt_state = optimizer.init(v) if opt_state is None else opt_state
    sharding = jax.tree_util.tree_leaves(params)[0].sharding
    if sharding.is_fully_replicated:
        # Place v as the updates will leave it (on the weights' devices): otherwise the second
        # step sees committed arrays where the first saw uncommitted ones and compiles again.
        v, opt_state = jax.device_put((v, opt_state), sharding)

    loss_fn, apply_fn = as_partial(loss_fn), as_partial(apply_fn)
    value_and_grad = functools.partial(
        _objective_value_and_grad,
        loss_fn=loss_fn,
        apply_fn=apply_fn,
        split_loss=split_loss,
        ids=FrozenGroupIds(group_ids),
    )
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError(
            "batches: yielded 0 batches, expected "
            f"{'at least one' if num_steps is None else num_steps}"
        )
    if check_hessian:
        _check_output_hessian(objective, apply_fn, params, first, stacklevel=2)
    if normalize:
        objective = _initial_scales(
            value_and_grad, v, params, normalized_features, first, key, objective, scale_probes
        )

    @jax.jit
    def update(grads, opt_state, v):
        updates, opt_state = optimizer.update(grads, opt_state, v)
        return optax.apply_updates(v, updates), opt_state

    values = []
    for batch in itertools.islice(itertools.chain([first], batches), num_steps):
        step_key = jax.random.fold_in(key, len(values))
        (total, (loss, trace, stderr)), grads = value_and_grad(
            v, params, normalized_features, batch, step_key, objective
        )
        v, opt_state = update(grads, opt_state, v)
        values.append((total, loss, trace, stderr))
    if num_steps is not None and len(values) < num_steps:
        raise ValueError(f"batches: yielded {len(values)} batches, expected {num_steps}")
    table = np.asarray(jax.device_get(values))
    history = GatingHistory(*(table[:, i] for i in range(4)))
    return GatingTraining(v, opt_state, history, objective)
