"""gRDA: generalized regularized dual averaging with a growing ℓ1 soft threshold.

The optimizer of the directional-pruning paper.  It keeps the dual average of the gradients,

    v_n = w_0 − Σ_{k=1..n} γ_k ∇f(w_{k−1}; Z_k),

and sets the parameters to its soft-thresholding ``w_n = S_{g_n}(v_n)``, ``S_g(v) =
sign(v)·max(|v| − g, 0)``, with a threshold that grows like ``c·γ^{1/2}(nγ)^μ``.  Weights whose
accumulated gradient mass stays below the threshold are exactly zero, and come back when it
grows past it: sparsity appears during training, with no pruning schedule and no retraining.
With ``c = 0`` it is plain SGD.  Section 3 of the paper shows that, for a small learning rate,
the gRDA iterate is the directional-pruning solution (problem (3)) of the SGD iterate with the
same minibatches; :mod:`jaxprune.methods.directional` computes that solution.

References:
  Chao et al. (2020), "Directional pruning of deep neural networks", Section 2, eqs. (gRDA) and
  (5), Appendix C Algorithms 1–2, and readings DP-1 (sign of the accumulator update) and DP-2
  (threshold indexing) in docs/readings.md.  Chao & Cheng (2019), "A
  generalization of regularized dual averaging and its dynamics"; Xiao (2010), "Dual averaging
  methods for regularized stochastic learning and online optimization".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_int, check_real, is_traced
from jaxprune.optim.masked import check_structure
from jaxprune.typing import PyTree

__all__ = ["GrdaState", "grda", "grda_threshold", "soft_threshold"]

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


class GrdaState(NamedTuple):
    """State of :func:`grda` (plain arrays: checkpoint it like any optax state).

    Attributes:
      count: int32 scalar, the number of updates done ``n``.
      accumulator: pytree like ``params`` (same shapes and dtypes), the dual average
        ``v_n = w_0 − Σ_k γ_k g_k``; ``init`` sets it to the initial parameters ``w_0``.
      threshold: scalar, the soft threshold ``g̃(n)`` of the last update (Algorithm 2's
        accumulated threshold; ``c·γ^{1/2}(nγ)^μ`` at a constant rate).  float32, or float64
        when some parameter is float64.
      threshold_compensation: scalar of the dtype of ``threshold``, the Kahan compensation of
        its running sum: the increments shrink like ``n^{μ−1}`` relative to the sum, and a plain
        float32 sum drifts (``4e-5`` relative after ``10^6`` steps) and then stalls.
    """

    count: jax.Array
    accumulator: PyTree
    threshold: jax.Array
    threshold_compensation: jax.Array


def soft_threshold(v: PyTree, threshold: jax.typing.ArrayLike) -> PyTree:
    """The soft-thresholding operator ``S_g(v) = sign(v)·max(|v| − g, 0)``, leafwise.

    Args:
      v: a pytree of float arrays.
      threshold: scalar ``g >= 0`` (or an array broadcasting against every leaf).

    Returns:
      A pytree like ``v`` (same shapes and dtypes); entries with ``|v| <= g`` are exactly 0.

    Raises:
      TypeError / ValueError: a ``threshold`` that is not real, or negative or not finite
        (values are checked when concrete: a negative ``g`` would grow every entry).

    References:
      Chao et al. (2020), Section 2, the operator ``S_g`` below eq. (gRDA).
    """
    _check_threshold(threshold)
    return _soft_threshold(v, threshold)


def _soft_threshold(v: PyTree, threshold: jax.typing.ArrayLike) -> PyTree:
    def one(x: jax.Array) -> jax.Array:
        g = jnp.asarray(threshold, x.dtype)
        return jnp.sign(x) * jnp.maximum(jnp.abs(x) - g, 0)

    return jax.tree_util.tree_map(one, v)


def _check_threshold(threshold: Any) -> None:
    """Raise unless the concrete ``threshold`` is real, finite and ``>= 0`` (entrywise)."""
    if is_traced(threshold):
        return
    values = np.asarray(threshold)
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.number):
        raise TypeError(f"threshold: expected a real number or array, got {threshold!r}")
    if np.iscomplexobj(values) or not np.all(np.isfinite(values) & (values >= 0)):
        raise ValueError(f"threshold: expected finite values >= 0, got {threshold!r}")


def grda_threshold(c: float, mu: float, learning_rate: float, n: int) -> float:
    """The tuning function ``g(n, γ) = c·γ^{1/2}(nγ)^μ``: the threshold after ``n`` updates at a
    constant learning rate ``γ`` (what :class:`GrdaState` ``.threshold`` holds then).

    This is also the ``λ_{γ,t} = c√γ t^μ`` (``t = nγ``) of the directional-pruning problem that
    gRDA solves asymptotically (Theorem 3.1).

    Args:
      c: ``c >= 0``.
      mu: ``μ > 0``.
      learning_rate: ``γ > 0``.
      n: number of updates ``n >= 0``.

    Returns:
      The threshold as a Python float.

    References:
      Chao et al. (2020), eq. (5) and Theorem 3.1 (``λ_{γ,t} = c√γ t^μ``).
    """
    if callable(learning_rate):
        raise TypeError("learning_rate must be a constant here (a schedule has no closed form)")
    c, mu, lr = _check_hyper(c, mu, learning_rate)
    n = check_int(n, "n", minimum=0)
    return c * math.sqrt(lr) * (n * lr) ** mu


def _check_hyper(c: Any, mu: Any, learning_rate: Any) -> tuple[float, float, Any]:
    """``c >= 0`` (0 gives plain SGD), ``mu > 0`` and a constant ``learning_rate > 0`` as floats.

    The theory of Chao et al. (2020), Theorem 3.1, needs ``0.5 < mu < 1``; smaller values are
    accepted, as several of its reported runs use them (reading DP-3, docs/readings.md).
    """
    c = check_real(c, "c", minimum=0.0)
    mu = check_real(mu, "mu", minimum=0.0, strict=True)
    if not callable(learning_rate):
        learning_rate = check_real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    return c, mu, learning_rate


def _leaf_selection(mask: Any, params: PyTree) -> list[bool]:
    """One Python bool per parameter leaf: whether that leaf is thresholded."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if mask is None:
        return [True] * len(leaves)
    given = mask(params) if callable(mask) else mask
    try:
        full = jax.tree_util.tree_map(
            lambda m, sub: jax.tree_util.tree_map(lambda _: m, sub), given, params
        )
    except ValueError as err:
        raise ValueError(
            f"mask must be a pytree of bools with the structure of the parameters (or a prefix "
            f"of it), {treedef}; got {jax.tree_util.tree_structure(given)}"
        ) from err
    return _check_mask_leaves(full, "mask")


def _check_mask_leaves(tree: PyTree, name: str) -> list[bool]:
    out = []
    for path, m in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if isinstance(m, jax.core.Tracer):
            raise TypeError(f"{where}: expected a concrete bool (one per leaf), got a traced value")
        if not (np.ndim(m) == 0 and np.asarray(m).dtype == np.bool_):
            raise TypeError(f"{where}: expected a bool (one per parameter leaf), got {m!r}")
        out.append(bool(m))
    return out


def grda(
    learning_rate: ScalarOrSchedule,
    c: float,
    mu: float,
    *,
    mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """gRDA (Chao et al. (2020), Algorithm 2) as an optax transformation.

    At update ``n = 1, 2, …`` with gradients ``g`` and ``γ_n = learning_rate(n − 1)`` (the optax
    convention: a schedule sees the number of updates done so far):

        v ← v − γ_n g,
        g̃ ← g̃ + c·γ_n^{1/2+μ}·(n^μ − (n−1)^μ),
        w_n = S_g̃(v) = sign(v)·max(|v| − g̃, 0),

    with ``v = w_0`` (the initial parameters) and ``g̃ = 0`` at ``init``.  The returned updates
    are ``w_n − params``, so ``optax.apply_updates(params, updates)`` gives ``w_n`` (entries set
    to zero are exactly 0.0; others within one rounding of ``w_n``, which does not accumulate:
    the state ``v``, not the parameters, carries the iteration).  At a constant rate ``γ`` the
    threshold after ``n`` updates is ``c·γ^{1/2}(nγ)^μ`` (:func:`grda_threshold`), and the first
    update already thresholds by ``c·γ^{1/2+μ}``; a schedule (constant-and-drop, decays)
    accumulates the increments at each step's own rate, as in Algorithm 2.  ``c = 0`` is exactly
    ``optax.sgd(learning_rate)``: the updates are ``−γ_n g``, bit for bit.

    **Place it last.**  Its updates are absolute positions in disguise (``w_n − params``):
    anything after it in a chain (a learning-rate scaling, clipping, ``optax.masked`` of a later
    transform) would corrupt them.  Transformations before it act on the gradients it averages:
    gradient clipping is fine, ``optax.add_decayed_weights(wd)`` adds ``wd·params`` to the
    gradient (an ℓ2 term in the averaged loss) and ``optax.trace`` feeds momentum-averaged
    gradients into the dual average.  The paper uses neither weight decay nor momentum
    (reading DP-3, docs/readings.md), and its theory covers neither.

    **With** :func:`jaxprune.optim.masked`: ``masked(grda(...), initial_mask=m)`` works:
    ``masked`` hands gRDA zero gradients and zero parameters at pruned entries, so their
    accumulator stays at its ``init`` value (0 there, since ``init`` sees the masked
    parameters) and ``masked`` lands them on exactly zero; kept entries follow gRDA, whose own
    soft-thresholded zeros can still come back.  ``set_mask(state, new_mask)`` zeros the
    accumulator of newly pruned entries (it is a parameter-shaped statistic) and keeps
    ``count`` and the threshold, so a weight revived later restarts from ``v = 0`` and stays
    zero until its accumulated gradient exceeds the (by then large) threshold; with
    ``reset=False`` its frozen accumulator is kept.  Wrap gRDA in ``masked`` rather than
    chaining the two: each needs to be last.

    Jit-able; the state is plain arrays, so it checkpoints like any optax state and works under
    ``jax.pmap``/``shard_map`` (average the gradients across devices before ``update``, as for
    SGD; replicate or shard the accumulator like the parameters).  The accumulator has the
    parameters' dtype (keep float32 master weights for mixed precision).

    Args:
      learning_rate: constant ``γ > 0`` or an optax schedule ``count -> γ`` (its values must be
        >= 0: ``γ^{1/2+μ}`` of a negative rate is NaN).
      c: ``c >= 0``, the threshold's scale (paper: 1e-4 to 5e-3); 0 gives plain SGD.
      mu: ``μ > 0``, the threshold's growth exponent (theory: ``0.5 < μ < 1``; the paper also
        runs 0.4).
      mask: optional pytree of bools with the structure of the parameters (or a prefix of it),
        or a function ``params -> such a pytree`` (as in ``optax.masked``): leaves marked
        ``True`` are thresholded; ``False`` leaves (e.g. biases, normalization scales) get plain
        SGD, ``w_n = v_n``.  Default: every leaf is thresholded.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`GrdaState`; ``update``
      requires ``params`` (ValueError without them) and ignores extra arguments.

    Raises:
      TypeError / ValueError: ``c < 0``, ``mu <= 0``, a non-positive or non-finite constant
        ``learning_rate``, or a mask that is not one bool per leaf.

    References:
      Chao et al. (2020), Section 2 (eqs. (gRDA), (5), (SGD)), Appendix C Algorithms 1–2
      (accumulator ``G_0 = w_0``; ``G_n = G_{n−1} − γ_n ∇f`` with the sign of reading DP-1), and
      reading DP-2 in docs/readings.md (threshold increment ``c·γ_n^{1/2+μ}(n^μ − (n−1)^μ)`` from
      the first step).
    """
    c, mu, learning_rate = _check_hyper(c, mu, learning_rate)
    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
    if mask is not None and not callable(mask):
        _check_mask_leaves(mask, "mask")  # its structure is checked against params in init

    def threshold_dtype(params: PyTree) -> Any:
        dtypes = [jnp.result_type(x) for x in jax.tree_util.tree_leaves(params)]
        floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
        return jnp.result_type(jnp.float32, *floats)

    def init_fn(params: PyTree) -> GrdaState:
        _leaf_selection(mask, params)
        dtype = threshold_dtype(params)
        return GrdaState(
            count=jnp.zeros([], jnp.int32),
            # A copy, never an alias of the parameters: trainers donate both to the step.
            accumulator=jax.tree_util.tree_map(jnp.array, params),
            threshold=jnp.zeros([], dtype),
            threshold_compensation=jnp.zeros([], dtype),
        )

    def update_fn(
        updates: PyTree, state: GrdaState, params: PyTree | None = None, **extra_args: Any
    ) -> tuple[PyTree, GrdaState]:
        del extra_args
        if params is None:
            raise ValueError(
                "grda: update needs params (call update(grads, state, params)): its updates are "
                "the soft-thresholded dual average minus the current parameters"
            )
        for name, tree in (("updates", updates), ("params", params)):
            check_structure(tree, state.accumulator, name)
        selected = _leaf_selection(mask, params) if c > 0 else None
        dtype = state.threshold.dtype
        gamma = jnp.asarray(schedule(state.count), dtype)
        n = (state.count + 1).astype(dtype)
        # n^μ − (n−1)^μ without cancellation: n^μ·(1 − (1 − 1/n)^μ); equals 1 at n = 1.
        growth = n**mu * -jnp.expm1(mu * jnp.log1p(-1.0 / n))
        increment = c * gamma ** (0.5 + mu) * growth
        # Kahan summation of the threshold.
        y = increment - state.threshold_compensation
        threshold = state.threshold + y
        compensation = (threshold - state.threshold) - y

        sgd = jax.tree_util.tree_map(lambda g: jnp.asarray(-gamma, g.dtype) * g, updates)
        accumulator = jax.tree_util.tree_map(lambda v, u: v + u, state.accumulator, sgd)
        if selected is None:  # c == 0: exactly SGD
            out = sgd
        else:
            acc_leaves, treedef = jax.tree_util.tree_flatten(accumulator)
            out_leaves = [
                (_soft_threshold(v, threshold) - p) if keep else u
                for keep, v, p, u in zip(
                    selected,
                    acc_leaves,
                    treedef.flatten_up_to(params),
                    treedef.flatten_up_to(sgd),
                )
            ]
            out = treedef.unflatten(out_leaves)
        new_state = GrdaState(
            count=optax.safe_int32_increment(state.count),
            accumulator=accumulator,
            threshold=threshold,
            threshold_compensation=compensation,
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
