"""Directional pruning: its closed form, flat-direction scores, and the paper's diagnostics.

Directional pruning (Chao et al. (2020), Definition 1.1) shrinks a trained minimizer ``w^SGD`` along
the flat directions of the loss: with the scores ``s_j = sign(w_j)·(Π_0 sign(w))_j``, ``Π_0``
the projection onto the (near-)null space ``P_0`` of the Hessian, it solves

    argmin_w ½‖w^SGD − w‖² + λ Σ_j s_j |w_j|                                      (3)

whose solution is elementwise (:func:`directional_pruning_solution`).  gRDA
(:func:`jaxprune.optim.grda`) reaches it without any Hessian (Theorem 3.1); the functions here
compute it explicitly on models small enough for Hessian eigenvectors, and the paper's
diagnostics: the fraction of ``w^gRDA − w^SGD`` in the top Hessian eigenspace (eq. 9), the
ratio ``‖w‖₂/‖w‖₁`` (Remark 3.3, Figure 2), and quadratic Bézier curves connecting two minima
(Section 4.2, after Garipov et al.).  All are pure functions of explicit arguments, on pytrees.

References:
  Chao et al. (2020), "Directional pruning of deep neural networks", Section 1.1 (eqs. 2–3,
  Definition 1.1, Remark 1.2), Appendix A Proposition A.1, Section 3 (Theorem 3.1, Remark 3.3),
  Section 4.2–4.3 (eq. 9), and readings DP-1 to DP-4 (docs/readings.md). Garipov, Izmailov,
  Podoprikhin, Vetrov & Wilson (2018), "Loss surfaces, mode connectivity, and fast ensembling of
  DNNs" (quadratic Bézier curves).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxprune._validation import (
    check_finite_tree,
    check_positive_int,
    check_real,
    check_tree_like,
    is_traced,
)
from jaxprune.spectra.lanczos import hessian_eigenvalues
from jaxprune.typing import PyTree

__all__ = [
    "BezierFit",
    "bezier_point",
    "curve_losses",
    "directional_pruning_solution",
    "fit_bezier_midpoint",
    "flat_direction_scores",
    "line_losses",
    "projection_scores",
    "sign_alignment_ratio",
    "top_eigenspace_fraction",
]

# Largest |V Vᵀ − I| entry accepted for "orthonormal" eigenvectors.
_ORTHONORMAL_TOL = 1e-3


def _check_scalar(value: Any, name: str, *, positive: bool) -> None:
    """A finite real ``> 0`` (``positive``) or ``>= 0``; traced values are not inspected."""
    if not isinstance(value, jax.core.Tracer):
        check_real(value, name, minimum=0.0, strict=positive)


def directional_pruning_solution(
    w_sgd: PyTree, scores: PyTree, lam: jax.typing.ArrayLike
) -> PyTree:
    """The solution of the directional-pruning problem (3), elementwise.

    Problem (3), ``argmin_w ½‖w^SGD − w‖² + λ Σ_j s_j|w_j|``, separates into one-dimensional
    problems ``f(w) = ½(a − w)² + λs|w|`` with ``a = w_j^SGD``, ``s = s_j``.  For ``s >= 0`` it is
    convex and its minimizer is the ℓ1 proximal step (soft thresholding) ``sign(a)[|a| − λs]_+``.
    For ``s < 0`` (the penalty rewards magnitude) ``f`` is strongly convex on each half-line:
    the stationary point on ``a``'s side is ``a − λs·sign(a)`` with value ``λs|a| − ½(λs)²``,
    the one on the other side (if it exists) has value ``−λs|a| − ½(λs)²``, and ``f(0) = ½a²``;
    as ``λs|a| < 0`` the first is the global minimizer, ``sign(a)(|a| + λ|s|)``.  Both cases are

        ŵ_j = sign(w_j^SGD)·max(|w_j^SGD| − λ s_j, 0).

    Coordinates with ``s_j > 0`` shrink and are pruned once ``λ s_j >= |w_j^SGD|``; those with
    ``s_j < 0`` grow, and ``s_j = 0`` leaves ``w_j^SGD`` unchanged.  At ``w_j^SGD = 0`` with
    ``s_j < 0`` the problem has the two minimizers ``±λ|s_j|`` (the proposition assumes
    ``w_j^SGD ≠ 0``); the formula then returns 0, which is not one of them.

    Args:
      w_sgd: pytree of float arrays, the minimizer ``w^SGD`` being pruned.
      scores: pytree like ``w_sgd`` (same structure and shapes) of scores ``s_j`` of either
        sign, e.g. from :func:`projection_scores`.
      lam: scalar ``λ >= 0`` (checked when concrete); ``λ = 0`` returns ``w_sgd``.

    Returns:
      A pytree like ``w_sgd``; pruned entries are exactly 0.

    Raises:
      ValueError: ``scores`` of another structure or shapes, a negative or non-finite ``lam``,
        or NaN/inf in ``w_sgd`` or ``scores`` (values are checked when concrete).

    References:
      Chao et al. (2020), eq. (3), Remark 1.2 and Proposition A.1 (eq. A.2); reading DP-4
      (docs/readings.md: valid for scores of either sign).
    """
    check_tree_like(scores, w_sgd, "scores", "w_sgd")
    _check_scalar(lam, "lam", positive=False)
    check_finite_tree(w_sgd, "w_sgd")
    check_finite_tree(scores, "scores")

    def one(w: jax.Array, s: jax.Array) -> jax.Array:
        w = jnp.asarray(w)
        return jnp.sign(w) * jnp.maximum(jnp.abs(w) - jnp.asarray(lam, w.dtype) * s, 0)

    return jax.tree_util.tree_map(one, w_sgd, scores)


def _eigen_rows(eigenvectors: PyTree, reference: PyTree, name: str) -> jax.Array:
    """The eigenvectors as a ``(k, P)`` matrix of flat vectors (checked against ``reference``
    and, when concrete, for orthonormality)."""
    ref_def = jax.tree_util.tree_structure(reference)
    vec_def = jax.tree_util.tree_structure(eigenvectors)
    if ref_def != vec_def:
        raise ValueError(
            f"{name} must have the pytree structure of the parameters, {ref_def}; got {vec_def}"
        )
    ks = set()
    for (path, ref), leaf in zip(
        jax.tree_util.tree_flatten_with_path(reference)[0], jax.tree_util.tree_leaves(eigenvectors)
    ):
        shape = np.shape(leaf)
        if len(shape) < 1 or tuple(shape[1:]) != tuple(np.shape(ref)):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: expected shape (k, *{np.shape(ref)}) "
                f"(a leading axis of k eigenvectors), got {shape}"
            )
        ks.add(shape[0])
    if len(ks) != 1:
        raise ValueError(f"{name}: leaves disagree on the number of eigenvectors k: {sorted(ks)}")
    k = ks.pop()
    if k < 1:
        raise ValueError(f"{name}: expected at least one eigenvector, got k = 0")
    rows = jax.vmap(lambda tree: ravel_pytree(tree)[0])(eigenvectors)
    if not isinstance(rows, jax.core.Tracer):
        gram = np.asarray(rows, np.float64) @ np.asarray(rows, np.float64).T
        err = float(np.max(np.abs(gram - np.eye(k))))
        if not err <= _ORTHONORMAL_TOL:
            raise ValueError(
                f"{name}: the eigenvectors must be orthonormal (as flat vectors); "
                f"max |V Vᵀ − I| = {err:.3g} > {_ORTHONORMAL_TOL}"
            )
    return rows


def projection_scores(params: PyTree, eigenvectors: PyTree) -> PyTree:
    """The directional-pruning scores ``s = sign(w) ⊙ Π_0 sign(w)`` for given top eigenvectors.

    ``Π_0 = I − V Vᵀ`` projects onto the orthogonal complement of the span of the ``k`` given
    orthonormal eigenvectors (the rows of ``V``): the flat directions ``P_0`` when they are the
    Hessian's eigenvectors of non-zero (or non-negligible) eigenvalue.  As ``sign(w_j)² = 1``,
    ``s_j = 1 − sign(w_j)(V Vᵀ sign(w))_j`` for ``w_j ≠ 0``, and ``s_j = 0`` at ``w_j = 0``.

    Args:
      params: the parameter pytree ``w`` (``P`` entries in all).
      eigenvectors: pytree like ``params`` whose leaves have a leading axis ``k``: ``k``
        orthonormal vectors as flat vectors (checked when concrete), e.g. the ``eigenvectors``
        of :func:`jaxprune.spectra.hessian_eigenvalues` or of an explicit eigendecomposition.

    Returns:
      A pytree like ``params`` (in the flattened parameters' dtype) of scores of either sign,
      summing to ``‖Π_0 sign(w)‖² >= 0``; positive scores mark the coordinates that problem
      (3) shrinks, negative ones those it grows.

    References:
      Chao et al. (2020), eq. (2) and the projection ``Π_0`` of Section 1.1; Theorem 3.1 (``P_0`` as
      the null space of the limiting Hessian).
    """
    flat, unravel = ravel_pytree(params)
    rows = _eigen_rows(eigenvectors, params, "eigenvectors").astype(flat.dtype)
    signs = jnp.sign(flat)
    projected = signs - rows.T @ (rows @ signs)
    return unravel(signs * projected)


def flat_direction_scores(
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: jax.Array,
    *,
    k: int,
    num_iterations: int | None = None,
) -> PyTree:
    """Scores ``s = sign(w) ⊙ Π_0 sign(w)``, ``Π_0`` the projection off the top-``k`` Hessian
    eigenvectors of ``loss_fn`` at ``params`` (found by Lanczos).

    The top-``k`` eigenvectors stand in for the non-flat directions: this is exact when the
    Hessian has rank ``k`` (e.g. least squares with ``k`` = the number of examples) and an
    approximation otherwise (the paper's Section 4.3 uses the top 10).  Use
    :func:`projection_scores` with eigenvectors of your own.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` (close over the data).
      params: parameter pytree (finite values), e.g. the SGD minimizer ``w^SGD``.
      key: PRNG key for Lanczos' starting vector.
      k: number of top eigenvectors removed, ``1 <= k <= P``.
      num_iterations: Lanczos' Krylov dimension (see
        :func:`jaxprune.spectra.hessian_eigenvalues`).

    Returns:
      A pytree like ``params`` of scores (see :func:`projection_scores`).

    References:
      Chao et al. (2020), eq. (2) and Section 4.3 (top Hessian eigenvectors by Lanczos).
    """
    result = hessian_eigenvalues(
        loss_fn, params, key, k=k, num_iterations=num_iterations, return_eigenvectors=True
    )
    return projection_scores(params, result.eigenvectors)


def top_eigenspace_fraction(delta: PyTree, eigenvectors: PyTree) -> jax.Array:
    """``‖P Δ‖ / ‖Δ‖``: the fraction of ``Δ`` in the span of the given orthonormal eigenvectors.

    With ``P`` the ``(k, P)`` matrix whose rows are the eigenvectors (eq. 9), ``‖P Δ‖`` is the
    norm of the orthogonal projection of ``Δ`` on their span.  The paper applies it to
    ``Δ = w^gRDA − w^SGD`` and the top 10 Hessian eigenvectors at ``w^SGD``: small values
    mean gRDA departs from SGD along flat directions.

    Args:
      delta: a pytree, e.g. ``w^gRDA − w^SGD``.
      eigenvectors: pytree like ``delta`` with a leading axis ``k`` on every leaf, orthonormal
        as flat vectors (checked when concrete).

    Returns:
      A scalar in ``[0, 1]``; NaN when ``Δ = 0``.

    References:
      Chao et al. (2020), Section 4.3, eq. (9) and Figure 6.
    """
    flat, _ = ravel_pytree(delta)
    rows = _eigen_rows(eigenvectors, delta, "eigenvectors").astype(flat.dtype)
    return jnp.linalg.norm(rows @ flat) / jnp.linalg.norm(flat)


def sign_alignment_ratio(w: PyTree) -> jax.Array:
    """``‖w‖₂ / ‖w‖₁`` over all entries of a pytree.

    It lies in ``[d^{-1/2}, 1]`` for ``d`` non-zero entries: ``d^{-1/2}`` exactly when all
    magnitudes are equal, i.e. when ``w`` points along ``sign(w)`` (the cosine of ``w`` and
    ``sign(w)`` is ``‖w‖₁ / (√d ‖w‖₂)``), and 1 for a single non-zero entry.

    Args:
      w: a pytree of arrays.

    Returns:
      A scalar; NaN when ``w = 0``.

    References:
      Chao et al. (2020), Remark 3.3 and Figure 2.
    """
    flat, _ = ravel_pytree(w)
    return jnp.linalg.norm(flat) / jnp.sum(jnp.abs(flat))


def bezier_point(w0: PyTree, theta: PyTree, w1: PyTree, t: jax.typing.ArrayLike) -> PyTree:
    """The quadratic Bézier curve ``(1 − t)² w0 + 2t(1 − t) θ + t² w1`` at ``t``.

    Args:
      w0, theta, w1: pytrees of one structure and shapes (the endpoints and the control point).
      t: scalar in ``[0, 1]`` (``t = 0`` gives ``w0``, ``t = 1`` gives ``w1``; checked when
        concrete).

    Returns:
      A pytree like ``w0``.

    References:
      Garipov et al. (2018), Section 3 (quadratic Bézier curve); Chao et al. (2020), Section 4.2.
    """
    check_tree_like(theta, w0, "theta", "w0")
    check_tree_like(w1, w0, "w1", "w0")
    if not is_traced(t):
        check_real(t, "t", minimum=0.0, maximum=1.0)

    def one(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
        tt = jnp.asarray(t, jnp.result_type(a))
        return (1 - tt) ** 2 * a + 2 * tt * (1 - tt) * b + tt**2 * c

    return jax.tree_util.tree_map(one, w0, theta, w1)


class BezierFit(NamedTuple):
    """Result of :func:`fit_bezier_midpoint`.

    Attributes:
      theta: the trained control point, a pytree like ``w0``.
      losses: ``(num_steps,)`` the loss at each step's sampled point of the curve (before that
        step's update).
    """

    theta: PyTree
    losses: jax.Array


def fit_bezier_midpoint(
    loss_fn: Callable[..., jax.Array],
    w0: PyTree,
    w1: PyTree,
    key: jax.Array,
    *,
    num_steps: int,
    learning_rate: float,
    batches: Iterable[Any] | None = None,
) -> BezierFit:
    """Train the control point ``θ`` of a quadratic Bézier curve from ``w0`` to ``w1`` to
    minimize the loss averaged along the curve.

    Minimizes ``E_{t~U(0,1)} loss(bezier_point(w0, θ, w1, t))`` by plain SGD on ``θ``, from
    the midpoint ``θ = (w0 + w1)/2`` (the straight line), one ``t`` drawn per step from
    ``jax.random.fold_in(key, step)``.  The endpoints are fixed.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch) -> scalar`` when
        ``batches`` are given.
      w0, w1: the endpoints (pytrees of one structure and shapes), e.g. ``w^SGD`` and
        ``w^gRDA``.
      key: PRNG key for the ``t`` samples.
      num_steps: number of SGD steps, ``>= 1``.
      learning_rate: SGD step size, ``> 0``.
      batches: optional iterable of batches, one per step: a sequence (list, tuple) is cycled
        through, any other iterable must yield at least ``num_steps`` batches.

    Returns:
      :class:`BezierFit` ``(theta, losses)``.

    Raises:
      TypeError / ValueError: bad ``num_steps`` or ``learning_rate``, endpoints of different
        structures, too few batches, a loss that is not a scalar, or a NaN or inf loss at the
        first step (the curve starts as the straight line).

    References:
      Garipov et al. (2018), Section 3.2 (training the curve by sampling ``t ~ U(0, 1)`` per
      step); Chao et al. (2020), Section 4.2 and Appendix C.3.
    """
    num_steps = check_positive_int(num_steps, "num_steps")
    _check_scalar(learning_rate, "learning_rate", positive=True)
    check_tree_like(w1, w0, "w1", "w0")
    theta = jax.tree_util.tree_map(lambda a, b: (jnp.asarray(a) + jnp.asarray(b)) / 2, w0, w1)

    @jax.jit
    def step(theta: PyTree, t: jax.Array, *batch: Any) -> tuple[PyTree, jax.Array]:
        def objective(th: PyTree) -> jax.Array:
            loss = loss_fn(bezier_point(w0, th, w1, t), *batch)
            if jnp.shape(loss) != ():
                raise ValueError(
                    "loss_fn: expected a scalar loss (shape ()), got an output of shape "
                    f"{jnp.shape(loss)}"
                )
            return loss

        loss, grad = jax.value_and_grad(objective)(theta)
        new = jax.tree_util.tree_map(
            lambda p, g: p - jnp.asarray(learning_rate, p.dtype) * g, theta, grad
        )
        return new, loss

    if batches is None:
        stream: Iterable[tuple[Any, ...]] = itertools.repeat(())
    elif isinstance(batches, Sequence):
        if len(batches) == 0:
            raise ValueError("batches is empty; expected at least one batch")
        stream = ((b,) for b in itertools.cycle(batches))
    else:
        stream = ((b,) for b in batches)
    losses = []
    for i, batch in zip(range(num_steps), stream):
        t = jax.random.uniform(jax.random.fold_in(key, i))
        theta, loss = step(theta, t, *batch)
        if i == 0 and not np.isfinite(float(loss)):
            raise ValueError(
                f"loss_fn: expected a finite loss on the straight line, got {float(loss)}"
            )
        losses.append(loss)
    if len(losses) < num_steps:
        raise ValueError(
            f"batches ran out after {len(losses)} batches; expected num_steps = {num_steps}"
        )
    return BezierFit(theta, jnp.stack(losses))


def _check_points(ts: jax.typing.ArrayLike) -> jax.Array:
    """``ts`` as a 1-D array of points in ``[0, 1]`` (values checked when concrete)."""
    ts = jnp.asarray(ts)
    if ts.ndim != 1:
        raise ValueError(f"ts must be a 1-D array of points in [0, 1], got shape {ts.shape}")
    if not is_traced(ts):
        values = np.asarray(ts, np.float64)
        if values.size and not (np.all(values >= 0.0) and np.all(values <= 1.0)):
            bad = values[~((values >= 0.0) & (values <= 1.0))]
            raise ValueError(f"ts: expected points in [0, 1], got {bad[:5].tolist()}")
    return ts


def curve_losses(
    loss_fn: Callable[[PyTree], jax.Array],
    w0: PyTree,
    theta: PyTree,
    w1: PyTree,
    ts: jax.typing.ArrayLike,
) -> jax.Array:
    """The loss along the Bézier curve ``bezier_point(w0, theta, w1, t)`` at each ``t`` in ``ts``.

    Evaluated with ``jax.lax.map`` (one point at a time, compiled once).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      w0, theta, w1: the curve's endpoints and control point.
      ts: ``(m,)`` points in ``[0, 1]``.

    Returns:
      ``(m,)`` losses.

    References:
      Garipov et al. (2018); Chao et al. (2020), Section 4.2 and Figure 5 (loss on the curve).
    """
    check_tree_like(theta, w0, "theta", "w0")
    check_tree_like(w1, w0, "w1", "w0")
    ts = _check_points(ts)
    return jax.lax.map(lambda t: loss_fn(bezier_point(w0, theta, w1, t)), ts)


def line_losses(
    loss_fn: Callable[[PyTree], jax.Array], w0: PyTree, w1: PyTree, ts: jax.typing.ArrayLike
) -> jax.Array:
    """The loss on the segment ``(1 − t) w0 + t w1`` at each ``t`` in ``ts``.

    The straight line is the Bézier curve with the midpoint as control point.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      w0, w1: the endpoints.
      ts: ``(m,)`` points in ``[0, 1]``.

    Returns:
      ``(m,)`` losses.

    References:
      Garipov et al. (2018) (linear interpolation as the baseline path); Chao et al. (2020), Section
      4.2.
    """
    check_tree_like(w1, w0, "w1", "w0")
    ts = _check_points(ts)

    def at(t: jax.Array) -> jax.Array:
        point = jax.tree_util.tree_map(
            lambda a, b: (1 - t.astype(jnp.result_type(a))) * a + t.astype(jnp.result_type(a)) * b,
            w0,
            w1,
        )
        return loss_fn(point)

    return jax.lax.map(at, ts)
