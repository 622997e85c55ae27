"""Two-layer ReLU networks under the λ-rescaling of Li et al. (2020), Section 4.

The network is ``f(x) = V·ReLU(Wx)`` (:class:`jaxprune.models.two_layer.TwoLayer`: ``W`` is the
``"hidden"`` kernel, stored transposed as ``(d, m)``, ``V`` the ``"output"`` kernel ``(m, K)``),
and ``θ^λ = (λW, V/λ)`` (:func:`jaxprune.models.two_layer.rescale`) computes the same function
for every ``λ > 0``.  Two parts:

* **Lemma 4.1** as a checkable statement: :data:`LEMMA41_EXPONENTS` and :func:`lemma41_factors`
  give the predicted factors ``q(θ^λ) = λ^e q(θ^1)`` of each layer's magnitude importance (MI),
  Hessian importance (HI) and partial Hessian ``∇²_W L``, ``∇²_V L``; :func:`layer_quantities`
  measures the same quantities of any net and loss, so that measured ratios can be put next to
  the predicted factors.
* **Theorem 4.3** ("larger Hessian wins more"): :func:`ppls_constants` estimates the partial PL
  and smoothness constants ``(μ_i, L_i)`` of Def. 4.2 of each parameter set ``Δ_i`` from the
  linearized features (the Jacobian ``J_i`` of the outputs w.r.t. ``θ_{Δ_i}``), and
  :func:`theorem43_bounds` evaluates the bounds (B.1) and (4.5)–(4.7) from them.

The 1/n of ``μ_i`` and ``L_i`` (Def. 4.2 for the squared loss).  Let
``L(θ) = (1/(2s)) ‖f(θ) − y‖²`` over the ``n`` examples and ``K`` outputs (``s = n`` for the
mean (4.1) with ``ℓ = ½‖·‖²``, ``s = 1`` for the sum (4.4)), ``r = f − y ∈ R^{nK}`` and
``J_i ∈ R^{nK × |Δ_i|}``.  For the model linearized at ``θ`` the partial gradient is
``J_iᵀ r / s``, so ``‖∂L/∂θ_{Δ_i}‖² = rᵀ J_i J_iᵀ r / s² ≥ λ_min(J_i J_iᵀ) ‖r‖² / s²
= 2 (λ_min(J_i J_iᵀ)/s) L``, and the partial Hessian is ``J_iᵀ J_i / s``, whose largest
eigenvalue is ``λ_max(J_i J_iᵀ)/s``.  Hence ``μ_i = λ_min(J_i J_iᵀ)/s`` and
``L_i = λ_max(J_i J_iᵀ)/s``: exact for a linear model (Li et al. (2020), eq. 4.4, where
``μ_i = σ_min(X_i)²`` and ``L_i = ‖X_i‖²`` with ``s = 1``), a local estimate at ``θ`` for a
network.  ``μ_i = 0`` when ``|Δ_i| < nK`` or ``J_i`` is rank deficient (no partial PL).

References:
  Li et al. (2020), "Exploring Weight Importance and Hessian Bias in Model Pruning", Sec. 4
  (eq. 4.1, Lemma 4.1 with (4.2)–(4.3), Def. 4.2, eq. 4.4, Theorem 4.3 with (4.5)–(4.7)),
  App. B.1 (eq. B.1 and the proof of Theorem 4.3), App. C.2 (proof of Lemma 4.1), with
  readings HB-3 (Hessian importance carries OBD's ½), HB-5 (which layer carries the accuracy)
  and HB-6 (κ = L_i/μ) of docs/readings.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import (
    check_batch,
    check_choice,
    check_finite_tree,
    check_positive_int,
    check_real,
)
from jaxprune.methods.importance.scores import (
    HESSIAN_METHODS,
    hessian_importance,
    magnitude_importance,
)
from jaxprune.spectra.hessian import hessian_trace
from jaxprune.spectra.lanczos import hessian_eigenvalues
from jaxprune.spectra.ntk import BACKENDS, empirical_ntk
from jaxprune.spectra.spectrum import spectrum_features
from jaxprune.typing import LossFn, PyTree

__all__ = [
    "LAYERS",
    "LEMMA41_EXPONENTS",
    "LayerQuantities",
    "PPLSConstants",
    "Theorem43Bounds",
    "layer_group_ids",
    "layer_quantities",
    "lemma41_factors",
    "ppls_constants",
    "theorem43_bounds",
]

#: The two layers, in the order of every ``(2,)`` array here: ``W`` (input layer, the
#: ``"hidden"`` kernel) then ``V`` (output layer, the ``"output"`` kernel).
LAYERS = ("hidden", "output")


class LayerQuantities(NamedTuple):
    """Per-layer quantities of a two-layer network; each field is ``(2,)`` = ``(W, V)``.

    Attributes:
      magnitude: MI ``Σ_{j∈Δ} θ_j²`` (Def. 2.2).
      hessian: HI ``Σ_{j∈Δ} ½ H_jj θ_j²`` (Def. 2.2 with OBD's ½, reading HB-3).
      hessian_trace: ``Tr ∇²_Δ L``, the trace of the partial Hessian of the layer (Hutchinson
        estimate with probes on that layer only, drawn from ``key``).
      hessian_top: the largest eigenvalue of the partial Hessian ``∇²_Δ L`` (Lanczos from
        ``key``), its spectral norm when it is positive semi-definite.
    """

    magnitude: Any
    hessian: Any
    hessian_trace: Any
    hessian_top: Any


#: Lemma 4.1's exponents ``e`` in ``q(θ^λ) = λ^e q(θ^1)``, per layer ``(W, V)``: MI scales as
#: ``λ^{±2}`` (4.2), HI is invariant (4.2) and the partial Hessians (so their traces and top
#: eigenvalues) scale as ``λ^{∓2}`` (4.3).
LEMMA41_EXPONENTS = LayerQuantities(
    magnitude=np.array([2, -2]),
    hessian=np.array([0, 0]),
    hessian_trace=np.array([-2, 2]),
    hessian_top=np.array([-2, 2]),
)


def lemma41_factors(lam: Any) -> LayerQuantities:
    """Lemma 4.1's predicted factors ``q(θ^λ) / q(θ^1)`` of each layer quantity.

    Args:
      lam: ``λ > 0``, a finite scalar.

    Returns:
      :class:`LayerQuantities` of ``(2,)`` float64 NumPy arrays ``λ^e`` (``e`` from
      :data:`LEMMA41_EXPONENTS`): ``(λ², λ⁻²)`` for MI, ``(1, 1)`` for HI, ``(λ⁻², λ²)`` for the
      partial Hessian trace and top eigenvalue.

    Raises:
      TypeError / ValueError: ``lam`` is not a finite real number ``> 0``.

    References:
      Li et al. (2020), Lemma 4.1, eqs. (4.2)–(4.3); App. C.2.
    """
    lam = check_real(lam, "lam", minimum=0.0, strict=True)
    return LayerQuantities(
        *(np.power(lam, exponent.astype(np.float64)) for exponent in LEMMA41_EXPONENTS)
    )


def _check_two_layer(params: PyTree) -> None:
    if not isinstance(params, dict) or set(params) != set(LAYERS):
        keys = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"params: expected a two-layer network's params {{'hidden': ..., 'output': ...}} "
            f"(the 'params' entry of TwoLayer's variables), got {keys}"
        )
    for layer in LAYERS:
        if not isinstance(params[layer], dict) or "kernel" not in params[layer]:
            raise ValueError(
                f"params[{layer!r}]: expected a dict with a 'kernel', got {params[layer]!r}"
            )


def layer_group_ids(params: PyTree) -> PyTree:
    """Group ids of the two layers: every weight of ``W`` in group 0, of ``V`` in group 1.

    Args:
      params: the two-layer params ``{"hidden": {"kernel": ...}, "output": {"kernel": ...}}``
        (other leaves of a layer, e.g. a bias, join their layer's group).

    Returns:
      Group-id pytree like ``params`` (int32 arrays, 2 groups), see :mod:`jaxprune.group_ids`.

    Raises:
      ValueError: ``params`` is not a two-layer network's params.
    """
    _check_two_layer(params)
    return {
        layer: jax.tree_util.tree_map(
            lambda leaf, g=g: np.full(np.shape(leaf), g, np.int32), params[layer]
        )
        for g, layer in enumerate(LAYERS)
    }


def _layer_loss(loss_fn: LossFn, params: PyTree, layer: str) -> LossFn:
    """``loss_fn`` as a function of one layer's parameters, the other layer held fixed."""
    return lambda values: loss_fn({**params, layer: values})


def layer_quantities(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int = 64,
    method: str = "exact",
    lanczos_iterations: int | None = None,
) -> LayerQuantities:
    """Measure each layer's MI, HI and partial Hessian trace and top eigenvalue.

    MI and HI come from :func:`~jaxprune.methods.importance.scores.magnitude_importance` and
    :func:`~jaxprune.methods.importance.scores.hessian_importance` on the two layers
    (:func:`layer_group_ids`); the partial Hessian's trace (Hutchinson, :func:`jaxprune.spectra.hessian_trace`)
    and top eigenvalue (Lanczos, :func:`jaxprune.spectra.hessian_eigenvalues`) are those of the
    loss as a function of that layer alone, the other layer held fixed.  Both use the probes / start vector drawn from ``key``; with the same key at ``θ^1``
    and ``θ^λ`` they scale exactly as the partial Hessians do, so measured ratios can be
    checked against :func:`lemma41_factors` to round-off.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, e.g. the mean loss (4.1) on a batch.
      params: the two-layer params (see :func:`layer_group_ids`), finite.
      key: PRNG key of the trace probes and the Lanczos start vectors (also the Hutchinson
        probes of HI when ``method="hutchinson"``).
      num_probes: Hutchinson probes of the traces (and of HI with ``"hutchinson"``), ``>= 1``.
      method: ``"exact"`` or ``"hutchinson"`` Hessian diagonal for HI.
      lanczos_iterations: Krylov dimension of the top eigenvalue (default: Lanczos' default,
        clipped to the layer size; the layer size gives the exact value).

    Returns:
      :class:`LayerQuantities` of ``(2,)`` arrays ``(W, V)``.

    Raises:
      ValueError / TypeError: malformed ``params`` or non-finite values, ``num_probes < 1``,
        unknown ``method``, a non-finite loss.

    References:
      Li et al. (2020), Def. 2.2 (MI, HI), Lemma 4.1; reading HB-3 (docs/readings.md).
    """
    ids = layer_group_ids(params)
    check_finite_tree(params)
    num_probes = check_positive_int(num_probes, "num_probes")
    method = check_choice(method, HESSIAN_METHODS, "method")
    loss = loss_fn(params)
    if not np.isfinite(np.asarray(loss)):
        raise ValueError(f"loss_fn(params): expected a finite loss, got {loss}")
    trace_key, hi_key, *top_keys = jax.random.split(key, 2 + len(LAYERS))
    if method == "exact":
        hi = hessian_importance(loss_fn, params, ids, method="exact")
    else:
        hi = hessian_importance(
            loss_fn, params, ids, method="hutchinson", key=hi_key, num_probes=num_probes
        )
    layer_losses = [_layer_loss(loss_fn, params, layer) for layer in LAYERS]
    traces = [
        hessian_trace(layer_loss, params[layer], trace_key, num_probes=num_probes).estimate
        for layer_loss, layer in zip(layer_losses, LAYERS)
    ]
    tops = [
        hessian_eigenvalues(
            layer_loss, params[layer], top_key, k=1, num_iterations=lanczos_iterations
        ).eigenvalues[0]
        for layer_loss, layer, top_key in zip(layer_losses, LAYERS, top_keys)
    ]
    return LayerQuantities(
        magnitude=magnitude_importance(params, ids),
        hessian=jnp.asarray(hi),
        hessian_trace=jnp.stack(traces),
        hessian_top=jnp.stack(tops),
    )


class PPLSConstants(NamedTuple):
    """Partial PL and smoothness constants (Def. 4.2) of ``D`` parameter sets.

    Attributes:
      mu: ``(D,)`` ``μ_i = λ_min(J_i J_iᵀ)/s`` (0 when ``J_i J_iᵀ`` is singular).
      smoothness: ``(D,)`` ``L_i = λ_max(J_i J_iᵀ)/s``.
      rank_deficient: ``(D,)`` whether ``J_i J_iᵀ`` is singular (no partial PL on ``Δ_i``).
      gram: ``(D, nK, nK)`` Gram matrices ``J_i J_iᵀ`` of the linearized features (rows are
        ``(example, output)`` pairs, example-major).
    """

    mu: jax.Array
    smoothness: jax.Array
    rank_deficient: jax.Array
    gram: jax.Array


@functools.lru_cache(maxsize=32)
def _one_output_per_row(apply_fn: Callable, example_shape: tuple[int, ...], k: int) -> Callable:
    """``apply_fn`` on rows ``(x, e_c)`` returning the scalar output ``f_c(x)``: its empirical
    NTK (one traced output) is the full ``(nK, nK)`` Gram matrix ``J Jᵀ``.  Cached so that
    repeated calls reuse :func:`jaxprune.spectra.empirical_ntk`'s compiled kernel."""
    size = int(np.prod(example_shape, dtype=np.int64))

    def rows(params: PyTree, augmented: jax.Array) -> jax.Array:
        x = augmented[:, :size].reshape(augmented.shape[0], *example_shape)
        outputs = apply_fn(params, x).reshape(augmented.shape[0], k)
        return jnp.sum(outputs * augmented[:, size:], axis=-1, keepdims=True)

    return rows


def ppls_constants(
    apply_fn: Callable[[PyTree, jax.Array], jax.Array],
    params: PyTree,
    x: jax.Array,
    set_ids: PyTree,
    *,
    loss_scale: float | None = None,
    backend: str = "auto",
) -> PPLSConstants:
    """Partial PL / smoothness constants ``(μ_i, L_i)`` of each parameter set from ``J_i J_iᵀ``.

    For the squared loss ``L = (1/(2s)) Σ_x ‖f(x) − y(x)‖²`` of the model linearized at
    ``params``, ``μ_i = λ_min(J_i J_iᵀ)/s`` and ``L_i = λ_max(J_i J_iᵀ)/s`` (derivation in the
    module docstring), with ``J_i`` the ``(nK, |Δ_i|)`` Jacobian of all outputs on ``x`` w.r.t.
    the set ``Δ_i``.  The Gram matrices come from :func:`jaxprune.spectra.empirical_ntk` (one
    output per row, so nothing is traced away) and their spectra from
    :func:`jaxprune.spectra.spectrum_features` (float64 when 64-bit mode is on).

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, K)`` outputs (``(n,)`` or ``(n, ...)`` are
        flattened per example).
      params: parameter pytree (finite).
      x: ``(n, ...)`` training inputs.
      set_ids: group-id pytree with ``D`` groups, the sets ``Δ_i`` (e.g. :func:`layer_group_ids`).
      loss_scale: ``s``: default ``n``, the mean loss (4.1); ``1`` for the summed loss (4.4).
      backend: :func:`~jaxprune.spectra.empirical_ntk` backend.

    Returns:
      :class:`PPLSConstants` with ``(D,)`` constants.

    Raises:
      ValueError / TypeError: non-finite params, ``x`` without a batch axis, malformed
        ``set_ids``, ``loss_scale <= 0``, unknown backend.

    References:
      Li et al. (2020), Def. 4.2, eq. (4.4) and the linearized features ``X_W`` below it.
    """
    check_batch(x, "x")
    check_finite_tree(params)
    check_choice(backend, BACKENDS, "backend")
    n = x.shape[0]
    scale = (
        n if loss_scale is None else check_real(loss_scale, "loss_scale", minimum=0.0, strict=True)
    )
    example_shape = tuple(x.shape[1:])
    k = int(np.prod(jax.eval_shape(apply_fn, params, x[:1]).shape[1:], dtype=np.int64))
    flat = jnp.reshape(x, (n, -1))
    eye = jnp.eye(k, dtype=flat.dtype)
    augmented = jnp.concatenate([jnp.repeat(flat, k, axis=0), jnp.tile(eye, (n, 1))], axis=1)
    rows = _one_output_per_row(apply_fn, example_shape, k)
    gram = empirical_ntk(rows, params, augmented, group_ids=set_ids, backend=backend)
    features = spectrum_features(gram, dtype=np.float64)
    return PPLSConstants(
        mu=features.lambda_min / scale,
        smoothness=features.lambda_max / scale,
        rank_deficient=features.rank_deficient,
        gram=gram,
    )


class Theorem43Bounds(NamedTuple):
    """The bounds of Theorem 4.3 for ``D`` sets at iterations ``τ``.

    With ``T`` iterations asked for, fields with a ``τ`` axis have shape ``(T, ...)``
    (no axis for a scalar ``tau``).

    Attributes:
      mu: ``μ = Σ μ_i``, the PL constant of the whole loss.
      smoothness: ``L = Σ L_i``.
      kappa: ``(D,)`` ``κ_i = L_i / μ`` (reading HB-6).
      loss: ``(T,)`` (B.1): ``L(θ_τ) ≤ (1 − ημ)^τ L(θ_0)``.
      distance_sq: ``(D,)`` (4.5): ``‖θ_{Δ_i,τ} − θ_{Δ_i,0}‖² ≤ 8 κ_i L(θ_0)/μ``.
      ni_upper: ``(T, D)`` (4.6) times ``L(θ_0)``: ``I^N_{Δ_i}(θ_τ, θ_0) ≤
        L(θ_0)(8κ_i² + 4κ_i(1 − ημ)^{τ/2})``.
      ni_complement_lower: ``(T, D)`` (4.7) times ``L(θ_0)``: ``I^N_{Δ̄_i}(θ_τ, θ_0) ≥
        L(θ_0)(1 − 8κ_i² − 4κ_i − (1 − ημ)^τ)`` (informative only when ``κ_i`` is small).
    """

    mu: jax.Array
    smoothness: jax.Array
    kappa: jax.Array
    loss: jax.Array
    distance_sq: jax.Array
    ni_upper: jax.Array
    ni_complement_lower: jax.Array


def _nonnegative_vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size < 1:
        raise ValueError(
            f"{name}: expected a 1-D array with one entry per set, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: expected finite values >= 0, got {array.tolist()}")
    return array


def theorem43_bounds(
    mu: Any, smoothness: Any, eta: float, tau: Any, loss0: float
) -> Theorem43Bounds:
    """Theorem 4.3's bounds (B.1), (4.5), (4.6) and (4.7) from the PPLS constants.

    Args:
      mu: ``(D,)`` partial PL constants ``μ_i >= 0`` (e.g. :attr:`PPLSConstants.mu`), with
        ``μ = Σ μ_i > 0``.
      smoothness: ``(D,)`` partial smoothness constants ``L_i >= μ_i``.
      eta: gradient-descent step ``0 < η <= 1/L`` (the theorem's assumption).
      tau: iteration ``τ >= 0``: an int, ``math.inf`` (the limit), or a 1-D array of them.
      loss0: ``L(θ_0) >= 0``.

    Returns:
      :class:`Theorem43Bounds` (float64 NumPy arrays).

    Raises:
      ValueError: shapes differ, negative or non-finite constants, ``L_i < μ_i``, ``μ = 0``,
        ``η`` outside ``(0, 1/L]``, ``τ`` negative or not an integer, ``loss0 < 0``.

    References:
      Li et al. (2020), Theorem 4.3 and App. B.1 (eq. B.1, proof of (4.5)–(4.7)); reading HB-6
      (docs/readings.md: κ = L_i/μ).
    """
    mu_i = _nonnegative_vector(mu, "mu")
    l_i = _nonnegative_vector(smoothness, "smoothness")
    if mu_i.shape != l_i.shape:
        raise ValueError(f"smoothness: expected shape {mu_i.shape} like mu, got {l_i.shape}")
    if np.any(l_i < mu_i):
        raise ValueError(
            f"smoothness: expected L_i >= mu_i for every set, got L={l_i.tolist()}, mu={mu_i.tolist()}"
        )
    total_mu, total_l = float(mu_i.sum()), float(l_i.sum())
    if total_mu <= 0:
        raise ValueError("mu: expected sum(mu) > 0 (the whole loss must satisfy PL), got 0")
    eta = check_real(eta, "eta", minimum=0.0, strict=True)
    if eta * total_l > 1.0 + 1e-12:
        raise ValueError(
            f"eta: expected 0 < eta <= 1/L = {1.0 / total_l:.6g} (L = sum(smoothness)), got {eta:g}"
        )
    loss0 = check_real(loss0, "loss0", minimum=0.0)
    steps = np.asarray(tau, dtype=np.float64)
    if steps.ndim > 1 or np.any(np.isnan(steps)) or np.any(steps < 0):
        raise ValueError(f"tau: expected an iteration >= 0 or a 1-D array of them, got {tau!r}")
    finite = steps[np.isfinite(steps)]
    if np.any(finite != np.round(finite)):
        raise ValueError(f"tau: expected integer iterations (or inf), got {tau!r}")
    rate = 1.0 - eta * total_mu
    decay = np.where(np.isinf(steps), 0.0, rate ** np.where(np.isinf(steps), 0.0, steps))
    half = np.sqrt(decay)
    kappa = l_i / total_mu
    return Theorem43Bounds(
        mu=np.float64(total_mu),
        smoothness=np.float64(total_l),
        kappa=kappa,
        loss=decay * loss0,
        distance_sq=8.0 * kappa * loss0 / total_mu,
        ni_upper=loss0 * (8.0 * kappa**2 + 4.0 * kappa * half[..., None]),
        ni_complement_lower=loss0 * (1.0 - 8.0 * kappa**2 - 4.0 * kappa - decay[..., None]),
    )
