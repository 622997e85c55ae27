"""Hessian quantities from Hessian-vector products: the Hessian itself is never formed.

Every estimator here is a pure function of explicit arguments built on :func:`hvp`
(forward-over-reverse differentiation) or, where only ``vᵀ H v`` is needed (traces), on
:func:`hessian_quadratic_form` (forward-over-forward), so it can be jit-compiled (with the integer
and string options static) and differentiated.  Stochastic estimators split ``num_probes`` keys from
the key they are given, draw each probe (a pytree like ``params``) from one of them, and return a
:class:`TraceEstimate`: the mean over probes, its standard error and the per-probe samples.

References:
  Pearlmutter (1994), "Fast exact multiplication by the Hessian".  Hutchinson (1990), "A
  stochastic estimator of the trace of the influence matrix"; Avron & Toledo (2011), "Randomized
  algorithms for estimating the trace of an implicit symmetric positive semi-definite matrix".
  Bekas, Kokiopoulou & Saad (2007), "An estimator for the diagonal of a matrix".  Chen et al.
  (2023), Appendix E.2, Algorithm 1 (trace of the output Hessian).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxprune._validation import (
    check_batch,
    check_choice,
    check_finite_tree,
    check_int,
    check_positive_int,
    is_traced,
)
from jaxprune.group_ids import leaf_group_ids, validate_group_ids
from jaxprune.spectra.static import as_partial
from jaxprune.typing import ApplyFn, LossFn, PyTree

__all__ = [
    "DISTRIBUTIONS",
    "DiagonalSample",
    "TraceEstimate",
    "gauss_newton_diagonal",
    "group_hessian_traces",
    "hessian_diagonal",
    "hessian_quadratic_form",
    "hessian_trace",
    "hvp",
    "output_hessian_trace",
    "output_hvp",
    "rademacher_signs",
    "sample_output_hessian_diagonal",
]

Distribution = Literal["rademacher", "gaussian"]
DISTRIBUTIONS: tuple[str, ...] = ("rademacher", "gaussian")

# The default of ``batch_size`` (:func:`_default_probe_batch`): one probe at a time on CPU; on an
# accelerator, vectorized blocks of at most _ACCELERATOR_MAX_BATCH probes whose parameter-sized
# arrays (_ARRAYS_PER_PROBE each: the probe, the tangent of the gradient, the product) fit
# _ACCELERATOR_MEMORY_FRACTION of the device memory (_FALLBACK_MEMORY_BYTES if not reported).
_ACCELERATOR_MAX_BATCH = 16
_ACCELERATOR_MEMORY_FRACTION = 0.125
_ARRAYS_PER_PROBE = 3
_FALLBACK_MEMORY_BYTES = 16 * 2**30


class TraceEstimate(NamedTuple):
    """A Monte Carlo estimate: the mean of per-probe samples and its standard error.

    Attributes:
      estimate: mean of ``samples`` over the probe axis (a scalar, a ``(p,)`` array, or a pytree
        like ``params``, depending on the estimator).
      stderr: sample standard deviation (``ddof=1``) over probes divided by
        ``sqrt(num_probes)``, same shape as ``estimate``; ``inf`` when ``num_probes == 1``,
        where the spread cannot be estimated.
      num_probes: number of probes.
      samples: per-probe values with a leading ``num_probes`` axis (``vᵀ H v`` for a trace).
    """

    estimate: Any
    stderr: Any
    num_probes: int
    samples: Any

    @classmethod
    def from_samples(cls, samples: jax.Array, num_probes: int) -> TraceEstimate:
        """Mean over the leading probe axis of ``samples``, its standard error, the samples."""
        estimate = jnp.mean(samples, axis=0)
        return cls(estimate, _standard_error(samples, num_probes), num_probes, samples)


def hvp(loss_fn: LossFn, params: PyTree, tangent: PyTree) -> PyTree:
    """Hessian-vector product ``∇²loss(params) · tangent`` by forward-over-reverse.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree.
      tangent: pytree with the structure, shapes and dtypes of ``params``.

    Returns:
      ``H v`` as a pytree like ``params``; costs about one gradient evaluation.

    References:
      Pearlmutter (1994), "Fast exact multiplication by the Hessian".
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (tangent,))[1]


def hessian_quadratic_form(loss_fn: LossFn, params: PyTree, tangent: PyTree) -> jax.Array:
    """``vᵀ ∇²loss(params) v`` by forward-over-forward differentiation (two nested jvps).

    The same number as ``vdot(v, hvp(loss_fn, params, v))`` without a reverse pass: cheaper to
    run, and much cheaper to differentiate again.  The PL gating objective differentiates a
    Hutchinson trace with respect to the gates; through this form that is second-order reverse
    mode instead of third-order (XLA compiles it in about half the time on BERT).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``; another output shape is a ``ValueError``.
      params: parameter pytree.
      tangent: pytree with the structure, shapes and dtypes of ``params``.

    Returns:
      Scalar ``vᵀ H v``.

    References:
      Griewank & Walther (2008), "Evaluating Derivatives", ch. 13 (higher-order forward mode).
    """
    return _quadratic_form_and_loss(loss_fn, params, tangent)[0]


def _quadratic_form_and_loss(
    loss_fn: LossFn, params: PyTree, tangent: PyTree
) -> tuple[jax.Array, jax.Array]:
    """``(vᵀ H v, loss_fn(params))``: the loss is the primal value the nested jvps compute anyway.

    The output shape is static, so the scalar check costs nothing, traced or not.
    """

    def directional_derivative(point: PyTree) -> tuple[jax.Array, jax.Array]:
        loss, derivative = jax.jvp(loss_fn, (point,), (tangent,))
        if jnp.shape(loss) != ():
            raise ValueError(
                "loss_fn: expected a scalar loss (shape ()), got an output of shape "
                f"{jnp.shape(loss)}"
            )
        return derivative, loss

    _, form, loss = jax.jvp(directional_derivative, (params,), (tangent,), has_aux=True)
    return form, loss


def output_hvp(apply_fn: ApplyFn, params: PyTree, x: jax.Array, tangent: PyTree) -> PyTree:
    """Hessian-vector product of the scalar ``sum(apply_fn(params, x))``.

    The sum runs over the batch and every output axis, so by linearity the result is
    ``sum_i H_{f_i} v``, the sum of the per-output Hessians applied to ``v``.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: parameter pytree.
      x: ``(n, ...)`` inputs.
      tangent: pytree like ``params``.

    Returns:
      Pytree like ``params``.

    References:
      Chen et al. (2023), Appendix E.2, Algorithm 1.
    """
    return hvp(_summed_outputs(apply_fn, x), params, tangent)


def hessian_trace(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: Distribution = "rademacher",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson estimate of ``Tr(∇²loss(params))``.

    Each probe ``v`` (a pytree like ``params`` with i.i.d. Rademacher ±1 or standard Gaussian
    entries, drawn from ``key``) gives the unbiased sample ``vᵀ H v``; the variance per probe is
    ``2 sum_{i≠j} H_ij²`` for Rademacher and ``2 ‖H‖_F²`` for Gaussian probes.  Differentiable
    with respect to ``params`` and to anything ``loss_fn`` closes over (for a fixed key).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, finite at ``params``.
      params: parameter pytree (finite values).
      key: PRNG key.
      num_probes: number of probes, an int >= 1.
      distribution: ``"rademacher"`` or ``"gaussian"``.
      batch_size: probes evaluated together (vectorized), an int >= 1.  Default by the device
        of ``params`` (the default device when traced): 1, one probe after another, on CPU; on
        GPU/TPU blocks of as many probes as fit, at three parameter-sized arrays each, in an
        eighth of the device memory, at most 16.

    Returns:
      :class:`TraceEstimate` with scalar ``estimate``/``stderr`` and ``(num_probes,)`` samples.

    Raises:
      ValueError: bad probe arguments, non-finite ``params``, a ``loss_fn`` output that is not
        a scalar, or a loss that is NaN or inf at ``params``.  The values of ``params`` and of
        the loss are checked when concrete only (the loss after the estimate is computed, from
        the same evaluation): inside ``jit`` or ``grad`` a NaN loss gives a NaN estimate.

    References:
      Hutchinson (1990); Avron & Toledo (2011).
    """
    estimate, loss = _hutchinson_trace(loss_fn, params, key, num_probes, distribution, batch_size)
    _check_finite_loss(loss, "loss_fn: expected a finite loss at params, got")
    return estimate


def output_hessian_trace(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: Distribution = "gaussian",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson estimate of the output-Hessian trace ``Tr(H_f)`` of Chen et al. (2023), eq. 36.

    ``Tr(H_f) = sum_i Tr(∇²_w f_i(w))`` where the sum runs over examples and all output axes
    (classes/tokens).  Algorithm 1 of Chen et al. (2023) has inconsistent shapes (reading PL-1,
    docs/readings.md); by linearity ``sum_i Tr(H_{f_i}) = Tr(∇²_w sum_i f_i)``, so this is
    Hutchinson on the scalar ``sum(apply_fn(params, x))``.  For the Hessian of a loss use
    :func:`hessian_trace`. Gaussian probes by default, as in Algorithm 1.  Differentiable with
    respect to ``params`` (the PL gating objective differentiates through it).

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs, finite at ``params`` and ``x``.
      params: parameter pytree (finite values).
      x: ``(n, ...)`` inputs (finite values when floating).
      key: PRNG key.
      num_probes: number of probes, an int >= 1.
      distribution: ``"gaussian"`` (default) or ``"rademacher"``.
      batch_size: probes evaluated together (vectorized); default as :func:`hessian_trace`
        (1 on CPU, blocks of up to 16 that fit an eighth of the memory on GPU/TPU).

    Returns:
      :class:`TraceEstimate` with scalar ``estimate``/``stderr`` and ``(num_probes,)`` samples.

    Raises:
      ValueError: as :func:`hessian_trace`; non-finite ``x``; outputs summing to NaN or inf.
        Values are checked when concrete only.

    References:
      Chen et al. (2023), Appendix E.2, Algorithm 1; Hutchinson (1990); Avron & Toledo (2011).
    """
    check_batch(x, "x")
    check_finite_tree(x, "x")
    estimate, total = _hutchinson_trace(
        _summed_outputs(apply_fn, x), params, key, num_probes, distribution, batch_size
    )
    _check_finite_loss(total, "apply_fn: expected finite outputs at params and x, got a sum of")
    return estimate


def group_hessian_traces(
    loss_fn: LossFn,
    params: PyTree,
    group_ids: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: Distribution = "rademacher",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson estimates of the trace of the Hessian restricted to each group.

    For a probe ``v`` with independent zero-mean unit-variance entries,
    ``E[sum_{j in g} v_j (H v)_j] = sum_{j in g} H_jj``: only diagonal terms survive in
    expectation.  One HVP per probe serves all ``p`` groups; weights with id ``-1`` count in
    no group.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values).
      group_ids: group-id pytree with ``p`` groups (see :mod:`jaxprune.group_ids`).
      key: PRNG key.
      num_probes: number of probes, an int >= 1.
      distribution: ``"rademacher"`` or ``"gaussian"``.
      batch_size: probes evaluated together (vectorized); default as :func:`hessian_trace`
        (1 on CPU, blocks of up to 16 that fit an eighth of the memory on GPU/TPU).

    Returns:
      :class:`TraceEstimate` with ``(p,)`` ``estimate``/``stderr`` and ``(num_probes, p)``
      samples.

    References:
      Hutchinson (1990); Bekas, Kokiopoulou & Saad (2007).
    """
    num_probes, batch_size = _check_probe_args(params, num_probes, distribution, batch_size)
    p = validate_group_ids(params, group_ids)
    ids = tuple(jnp.asarray(np.ravel(leaf)) for leaf in leaf_group_ids(params, group_ids))
    samples = _group_trace_samples(
        as_partial(loss_fn),
        params,
        ids,
        key,
        num_groups=p,
        num_probes=num_probes,
        distribution=distribution,
        batch_size=batch_size,
    )
    return TraceEstimate.from_samples(samples, num_probes)


@functools.partial(
    jax.jit, static_argnames=("num_groups", "num_probes", "distribution", "batch_size")
)
def _group_trace_samples(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    ids: tuple[jax.Array, ...],
    key: jax.Array,
    *,
    num_groups: int,
    num_probes: int,
    distribution: str,
    batch_size: int,
) -> jax.Array:
    """``(num_probes, p)`` per-group samples ``sum_{j in g} v_j (H v)_j`` for the flat per-leaf
    group ids ``ids``, compiled with ``params`` as an argument (see :func:`_hutchinson_samples`)."""

    def sample(probe_key: jax.Array) -> jax.Array:
        probe = _draw_probe(probe_key, params, distribution)
        products = jax.tree_util.tree_leaves(_tree_mul(probe, hvp(loss_fn, params, probe)))
        # segment_sum drops the ungrouped id -1 (out of [0, p)).
        per_leaf = [
            jax.ops.segment_sum(jnp.ravel(prod), leaf_ids, num_segments=num_groups)
            for prod, leaf_ids in zip(products, ids, strict=True)
        ]
        return sum(per_leaf[1:], per_leaf[0])

    return _map_probes(sample, key, num_probes, batch_size)


def hessian_diagonal(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: Distribution = "rademacher",
    batch_size: int | None = None,
) -> TraceEstimate:
    """Hutchinson estimate of the Hessian diagonal ``E[v ⊙ H v]``.

    With Rademacher probes entry ``j`` has variance ``sum_{i≠j} H_ij²`` per probe.  The samples
    are kept, so memory is ``num_probes × P``.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: parameter pytree (finite values).
      key: PRNG key.
      num_probes: number of probes, an int >= 1.
      distribution: ``"rademacher"`` or ``"gaussian"``.
      batch_size: probes evaluated together (vectorized); default as :func:`hessian_trace`
        (1 on CPU, blocks of up to 16 that fit an eighth of the memory on GPU/TPU).

    Returns:
      :class:`TraceEstimate` whose ``estimate`` and ``stderr`` are pytrees like ``params`` and
      whose ``samples`` is a pytree of ``(num_probes, *leaf.shape)`` arrays.

    References:
      Bekas, Kokiopoulou & Saad (2007); Hutchinson (1990).
    """
    num_probes, batch_size = _check_probe_args(params, num_probes, distribution, batch_size)
    samples = _diagonal_samples(
        as_partial(loss_fn),
        params,
        key,
        num_probes=num_probes,
        distribution=distribution,
        batch_size=batch_size,
    )
    return TraceEstimate(
        jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), samples),
        jax.tree_util.tree_map(lambda s: _standard_error(s, num_probes), samples),
        num_probes,
        samples,
    )


@functools.partial(jax.jit, static_argnames=("num_probes", "distribution", "batch_size"))
def _diagonal_samples(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: str,
    batch_size: int,
) -> PyTree:
    """Samples ``v ⊙ H v``, a pytree of ``(num_probes, *leaf.shape)`` arrays, compiled with
    ``params`` as an argument (see :func:`_hutchinson_samples`)."""

    def sample(probe_key: jax.Array) -> PyTree:
        probe = _draw_probe(probe_key, params, distribution)
        return _tree_mul(probe, hvp(loss_fn, params, probe))

    return _map_probes(sample, key, num_probes, batch_size)


def gauss_newton_diagonal(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    *,
    loss_hessian: jax.Array | None = None,
) -> PyTree:
    """Exact diagonal of the Gauss–Newton matrix ``G = sum_x J_xᵀ H_out J_x``.

    ``J_x`` is the ``(k, P)`` Jacobian of the ``k`` flattened outputs of example ``x``; the
    output-loss Hessian ``H_out`` defaults to the identity, the Gauss–Newton matrix of the
    squared loss ``½ sum_x ‖f(x) − y‖²`` (summed, not averaged, over examples).  Per-example
    Jacobians are formed with ``vmap(jacrev)``, so memory is ``n · k · P``: meant for small
    models (tests, toy studies).  Examples are fed to ``apply_fn`` one at a time as batches of 1.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs.
      params: parameter pytree (finite values).
      x: ``(n, ...)`` inputs.
      loss_hessian: ``(k, k)`` output-loss Hessian shared by all examples, or ``(n, k, k)`` one
        per example; ``k`` is the number of outputs per example.  Default: identity.

    Returns:
      Pytree like ``params`` holding ``diag(G)``.

    References:
      Schraudolph (2002), "Fast curvature matrix-vector products for second-order gradient
      descent"; Martens (2020), "New insights and perspectives on the natural gradient method".
    """
    check_finite_tree(params, "params")
    check_batch(x, "x")

    def single(p: PyTree, example: jax.Array) -> jax.Array:
        return jnp.ravel(apply_fn(p, example[None]))

    n = x.shape[0]
    k = int(np.prod(jax.eval_shape(single, params, x[0]).shape))
    hess = None if loss_hessian is None else _check_loss_hessian(loss_hessian, n, k)
    jacobians = jax.vmap(jax.jacrev(single), in_axes=(None, 0))(params, x)

    def leaf_diagonal(jac: jax.Array, param: jax.Array) -> jax.Array:
        jac = jnp.reshape(jac, (n, k, -1))
        if hess is None:
            diag = jnp.sum(jac * jac, axis=(0, 1))
        else:
            diag = jnp.einsum("nam,nab,nbm->m", jac, hess, jac)
        return jnp.reshape(diag, jnp.shape(param))

    return jax.tree_util.tree_map(leaf_diagonal, jacobians, params)


def _check_loss_hessian(loss_hessian: jax.Array, n: int, k: int) -> jax.Array:
    """``loss_hessian`` as an ``(n, k, k)`` array, or ``ValueError`` naming its shape."""
    shape = jnp.shape(loss_hessian)
    if shape not in ((k, k), (n, k, k)):
        raise ValueError(
            f"loss_hessian: expected shape ({k}, {k}) or ({n}, {k}, {k}) for {n} examples with "
            f"{k} outputs each, got {shape}"
        )
    return jnp.broadcast_to(loss_hessian, (n, k, k))


class DiagonalSample(NamedTuple):
    """Exact entries of a Hessian's diagonal at sampled coordinates.

    Attributes:
      entries: ``(s,)`` the diagonal entries ``H_ii`` at the ``s`` sampled coordinates.
      column_norms: ``(s,)`` the norms ``‖H e_i‖`` of the same columns, the scale against which
        an entry counts as zero.
      indices: ``(s,)`` the sampled coordinates of the flattened parameters
        (``jax.flatten_util.ravel_pytree`` order).
    """

    entries: jax.Array
    column_norms: jax.Array
    indices: np.ndarray

    def vanishes(self, rtol: float = 1e-5) -> bool:
        """Every sampled entry is zero to round-off: ``max |H_ii| <= rtol · max ‖H e_i‖``
        (also true when the sampled columns are zero, e.g. a model linear in its parameters)."""
        entries, norms = np.abs(np.asarray(self.entries)), np.asarray(self.column_norms)
        return bool(entries.max(initial=0.0) <= rtol * norms.max(initial=0.0))


def _sampled_indices(params: PyTree, per_leaf: int, key: jax.Array) -> np.ndarray:
    """Up to ``per_leaf`` distinct coordinates of every leaf, as indices of the flat vector."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    indices, offset = [], 0
    for leaf in jax.tree_util.tree_leaves(params):
        size = int(np.size(leaf))
        chosen = rng.choice(size, size=min(per_leaf, size), replace=False)
        indices.append(offset + np.sort(chosen))
        offset += size
    return np.concatenate(indices).astype(np.int32)


@jax.jit
def _diagonal_columns(
    apply_fn: jax.tree_util.Partial, params: PyTree, x: jax.Array, indices: jax.Array
) -> tuple[jax.Array, jax.Array]:
    flat, unravel = ravel_pytree(params)
    summed = lambda f: jnp.sum(apply_fn(unravel(f), x))  # noqa: E731

    def column(i: jax.Array) -> tuple[jax.Array, jax.Array]:
        tangent = jnp.zeros_like(flat).at[i].set(1)
        hv = jax.jvp(jax.grad(summed), (flat,), (tangent,))[1]
        return hv[i], jnp.linalg.norm(hv)

    return jax.lax.map(column, indices)


def sample_output_hessian_diagonal(
    apply_fn: ApplyFn,
    params: PyTree,
    x: jax.Array,
    key: jax.Array,
    *,
    per_leaf: int = 4,
) -> DiagonalSample:
    """Exact diagonal entries of the output Hessian ``∇²_w sum(f(w, x))`` at sampled coordinates.

    ``per_leaf`` coordinates of every parameter leaf (all of a smaller leaf), chosen from
    ``key``; each entry is one exact Hessian-vector product with a unit vector (evaluated one
    after another: memory of one gradient).  The use: on a piecewise-linear network (ReLU,
    max-pooling, BatchNorm in eval mode) the output is linear in each single weight on each
    linear piece, so every diagonal entry, and ``Tr(H_f)``, is exactly zero;
    :meth:`DiagonalSample.vanishes` detects it without the full diagonal.

    Args:
      apply_fn: ``apply_fn(params, x) -> (n, ...)`` outputs (a
        :class:`jax.tree_util.Partial` is compiled once per function, its bound arrays traced).
      params: parameter pytree (finite values).
      x: ``(n, ...)`` inputs.
      key: PRNG key of the coordinates.
      per_leaf: coordinates sampled per leaf, an int >= 1.

    Returns:
      :class:`DiagonalSample` of ``s = sum_leaves min(per_leaf, leaf size)`` entries.

    References:
      Pearlmutter (1994) (exact Hessian-vector products); Chen et al. (2023), App. E.2, eq. 36
      (``Tr(H_f)``); reading PL-2 (docs/readings.md).
    """
    per_leaf = check_positive_int(per_leaf, "per_leaf")
    check_batch(x, "x")
    check_finite_tree(params, "params")
    indices = _sampled_indices(params, per_leaf, key)
    entries, norms = _diagonal_columns(as_partial(apply_fn), params, x, jnp.asarray(indices))
    return DiagonalSample(entries, norms, indices)


def _summed_outputs(apply_fn: ApplyFn, x: jax.Array) -> jax.tree_util.Partial:
    """The scalar ``params -> sum(apply_fn(params, x))`` over the batch and all output axes,
    as a :class:`jax.tree_util.Partial` (``x`` and the arrays bound in ``apply_fn`` stay
    arguments of compiled code, see :func:`_hutchinson_samples`)."""
    return jax.tree_util.Partial(_sum_of_outputs, as_partial(apply_fn), x)


def _sum_of_outputs(apply_fn: ApplyFn, x: jax.Array, params: PyTree) -> jax.Array:
    return jnp.sum(apply_fn(params, x))


def _check_probe_args(
    params: PyTree, num_probes: Any, distribution: Any, batch_size: Any
) -> tuple[int, int]:
    """Validate the shared estimator arguments; return ``(num_probes, batch_size)``."""
    num_probes = check_positive_int(num_probes, "num_probes")
    check_choice(distribution, DISTRIBUTIONS, "distribution")
    batch_size = _probe_batch_size(params, num_probes, batch_size)
    check_finite_tree(params, "params")
    return num_probes, batch_size


def _default_probe_batch(
    num_probes: int, param_bytes: int, platform: str, memory_bytes: int | None = None
) -> int:
    """The default ``batch_size`` of the probe estimators: how many probes to vectorize.

    On CPU probes run one after another (``1``): vectorizing them only adds memory traffic
    (experiments/benchmarks/bench_trace.py measures both).  On any other platform a block holds
    as many probes as fit, at three parameter-sized arrays each (the probe, the tangent of the
    gradient and the product), in an eighth of the device memory, at most 16 and at least 1.
    Activations are not counted: the block size bounds the tangents, not the whole working set.

    Args:
      num_probes: probes to evaluate, an int >= 1.
      param_bytes: bytes of the parameters (all leaves).
      platform: the device's platform, ``"cpu"``, ``"gpu"``, ``"tpu"``, ...
      memory_bytes: device memory in bytes; default (``None``) 16 GiB.

    Returns:
      An int in ``[1, min(num_probes, 16)]``.
    """
    if platform == "cpu":
        return 1
    memory = _FALLBACK_MEMORY_BYTES if memory_bytes is None else memory_bytes
    fit = int(_ACCELERATOR_MEMORY_FRACTION * memory) // (_ARRAYS_PER_PROBE * max(param_bytes, 1))
    return max(1, min(num_probes, _ACCELERATOR_MAX_BATCH, fit))


def _probe_batch_size(params: PyTree, num_probes: int, batch_size: Any) -> int:
    """``batch_size`` checked and clipped to ``num_probes``, or the default for the device of
    ``params`` (the default backend's first device when ``params`` are traced)."""
    if batch_size is not None:
        return min(check_positive_int(batch_size, "batch_size"), num_probes)
    leaves = jax.tree_util.tree_leaves(params)
    concrete = [leaf for leaf in leaves if isinstance(leaf, jax.Array) and not is_traced(leaf)]
    device = next(iter(concrete[0].devices())) if concrete else jax.devices()[0]
    memory = None
    if device.platform != "cpu":
        memory = (device.memory_stats() or {}).get("bytes_limit")
    param_bytes = sum(int(np.size(leaf)) * jnp.result_type(leaf).itemsize for leaf in leaves)
    return _default_probe_batch(num_probes, param_bytes, device.platform, memory)


def _hutchinson_trace(
    loss_fn: LossFn,
    params: PyTree,
    key: jax.Array,
    num_probes: Any,
    distribution: Any,
    batch_size: Any,
) -> tuple[TraceEstimate, jax.Array]:
    """Hutchinson's estimate of ``Tr(∇²loss_fn(params))`` and ``loss_fn(params)``."""
    num_probes, batch_size = _check_probe_args(params, num_probes, distribution, batch_size)
    samples, losses = _hutchinson_samples(
        as_partial(loss_fn),
        params,
        key,
        num_probes=num_probes,
        distribution=distribution,
        batch_size=batch_size,
    )
    return TraceEstimate.from_samples(samples, num_probes), losses[0]


@functools.partial(jax.jit, static_argnames=("num_probes", "distribution", "batch_size"))
def _hutchinson_samples(
    loss_fn: jax.tree_util.Partial,
    params: PyTree,
    key: jax.Array,
    *,
    num_probes: int,
    distribution: str,
    batch_size: int,
) -> tuple[jax.Array, jax.Array]:
    """``(num_probes,)`` samples ``vᵀ H v`` and losses, compiled with ``params`` (and the arrays
    bound in ``loss_fn``) as arguments: arrays captured as constants of the compiled probe loop
    make each product several times slower on CPU."""

    def sample(probe_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        probe = _draw_probe(probe_key, params, distribution)
        return _quadratic_form_and_loss(loss_fn, params, probe)

    return _map_probes(sample, key, num_probes, batch_size)


def _check_finite_loss(loss: jax.Array, message: str) -> None:
    """Raise ``ValueError(f"{message} {loss}")`` if the concrete ``loss`` is NaN or inf."""
    if not is_traced(loss) and not np.isfinite(float(loss)):
        raise ValueError(f"{message} {float(loss)}")


def _draw_probe(key: jax.Array, params: PyTree, distribution: str) -> PyTree:
    """A probe like ``params`` with i.i.d. Rademacher or standard Gaussian entries.

    One draw for the flattened parameters (one random-number kernel to compile, however many
    leaves), split back into leaves and materialized (``optimization_barrier``): XLA would
    otherwise fuse the slices of the draw into the products' operands, several times slower on
    CPU (see :func:`jaxprune.spectra.lanczos._flat_hvp`).
    """
    flat, unravel = ravel_pytree(params)
    draw = rademacher_signs if distribution == "rademacher" else jax.random.normal
    return jax.lax.optimization_barrier(unravel(draw(key, flat.shape, flat.dtype)))


def rademacher_signs(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """I.i.d. signs ``±1`` with probability 1/2 each, one random bit per sign.

    ``jax.random.rademacher`` spends a 32-bit draw on every sign; here each 32-bit word of
    ``jax.random.bits`` gives 32 signs (bit ``s`` of word ``w`` is entry ``s · W + w`` of the
    flattened result, ``W`` the number of words).  On CPU the draw was as dear as a gradient of
    the 300k-parameter MLP of experiments/benchmarks/bench_trace.py (1.8 ms) and is 0.6 ms
    this way, which takes a Hutchinson probe from 1.66x to 1.14x a gradient.

    Args:
      key: a PRNG key (any implementation).
      shape: shape of the result.
      dtype: floating dtype of the result.

    Returns:
      ``shape`` array of ``dtype`` with entries in ``{-1, 1}``.

    Raises:
      TypeError / ValueError: ``shape`` not a tuple of ints >= 0, or ``dtype`` not floating.
    """
    if not isinstance(shape, tuple):
        raise TypeError(f"shape: expected a tuple of ints >= 0, got {shape!r}")
    shape = tuple(check_int(n, "shape", minimum=0) for n in shape)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype: expected a floating dtype, got {dtype!r}")
    size = int(np.prod(shape, dtype=np.int64))
    words = jax.random.bits(key, (-(-size // 32),), jnp.uint32)
    shifts = jnp.arange(32, dtype=jnp.uint32)[:, None]
    bits = (words[None, :] >> shifts) & 1
    return (1 - 2 * bits.astype(dtype)).reshape(-1)[:size].reshape(shape)


def _map_probes(
    sample: Callable[[jax.Array], Any], key: jax.Array, num_probes: int, batch_size: int
) -> Any:
    """``sample`` applied to ``num_probes`` keys split from ``key``, stacked on axis 0."""
    return jax.lax.map(sample, jax.random.split(key, num_probes), batch_size=batch_size)


def _standard_error(samples: jax.Array, num_probes: int) -> jax.Array:
    """Standard error of the mean over axis 0 (``ddof=1``); ``inf`` for a single probe."""
    if num_probes == 1:
        return jnp.full(jnp.shape(samples)[1:], jnp.inf, jnp.result_type(samples))
    return jnp.std(samples, axis=0, ddof=1) / np.sqrt(num_probes)


def _tree_mul(a: PyTree, b: PyTree) -> PyTree:
    """Elementwise product of two pytrees of the same structure."""
    return jax.tree_util.tree_map(jnp.multiply, a, b)
