"""Parameter features of Chen et al. (2023), Sec. 3.2.2: per-group NTK ``λ_min`` and entropy.

:func:`features` computes ``d_w[i] = [λ_min(K(w_[i])), ρ(K(w_[i]))]`` (eq. 7) for all ``p``
groups from one :func:`jaxprune.spectra.empirical_ntk` pass; :func:`normalize_features` turns
them into the gating network's ``(p, 2)`` input.

References:
  Chen et al. (2023), Sec. 3.2.2 (features, eq. 7), App. E.2, Algorithm 2 line 5; reading PL-6
  (docs/readings.md: per-group ``λ_min`` is zero by construction).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_batch, check_choice, check_positive_int
from jaxprune.group_ids import group_sizes, validate_group_ids
from jaxprune.masks.layout import GroupLayout
from jaxprune.spectra.ntk import BACKENDS, empirical_ntk
from jaxprune.spectra.sketch import example_output_shape, output_sketch
from jaxprune.spectra.spectrum import group_rank_bound, spectrum_features
from jaxprune.spectra.static import unbind_partial
from jaxprune.typing import ApplyFn, PyTree

__all__ = [
    "FEATURE_NORMALIZATIONS",
    "LAMBDA_MINS",
    "GroupFeatures",
    "LambdaMin",
    "features",
    "normalize_features",
]

LambdaMin = Literal["nonzero", "bound", "literal"]
LAMBDA_MINS: tuple[str, ...] = ("nonzero", "bound", "literal")
FEATURE_NORMALIZATIONS: tuple[str, ...] = ("global", "layer")


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
      dead: ``(p,)`` bools: the group's kernel is zero on the feature batch (``λ_max`` at most
        ``n · eps`` times the largest ``λ_max`` of all groups): the group does not move the
        outputs there (a ReLU neuron inactive on every example, a pruned group).

    References:
      Chen et al. (2023), Sec. 3.2.2 (``d_w[i] = [λ_min, ρ]``, eq. 7); reading PL-6
      (docs/readings.md: the rank of group kernels).
    """

    lambda_min: jax.Array
    entropy: jax.Array
    lambda_max: jax.Array
    rank: jax.Array
    rank_bound: np.ndarray
    tolerance: jax.Array
    dead: jax.Array


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
    random sketch of :func:`jaxprune.spectra.sketch_outputs` (``s`` values per example, e.g.
    16-64; its factors are an argument of one compiled kernel per model, so new keys do not
    recompile).  To trace a subset instead (masked positions, the label logits) pass an
    ``apply_fn`` that returns it.  The kernel is compiled once per ``apply_fn`` object and
    shapes; an ``apply_fn`` that is a :class:`jax.tree_util.Partial` (e.g. binding model state)
    is compiled once per function, its bound arrays being arguments of the compiled kernel.

    ``lambda_min`` (reading PL-6, docs/readings.md: per-group ``λ_min`` is zero by construction
    when the batch has more rows than the group kernel's rank):

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
      Chen et al. (2023), Sec. 3.2.2 (features, eq. 7), App. E.2, Algorithm 2 line 5; reading
      PL-6 (docs/readings.md: the rank bound).
    """
    check_batch(x, "x")
    n = int(x.shape[0])
    if n < 2:
        raise ValueError(
            f"x: the feature batch needs at least 2 examples (a 1 x 1 kernel has no spectrum "
            f"to summarize), got shape {tuple(x.shape)}"
        )
    check_choice(backend, BACKENDS, "backend")
    check_choice(lambda_min, LAMBDA_MINS, "lambda_min")
    p = validate_group_ids(params, group_ids)
    sizes = group_sizes(params, group_ids)
    if isinstance(apply_fn, jax.tree_util.Partial):
        apply_fn, params, group_ids = unbind_partial(apply_fn, params, group_ids)
    out = example_output_shape(apply_fn, params, x)
    k = int(np.prod(out.shape))
    if output_projections is not None:
        s = check_positive_int(output_projections, "output_projections")
        if key is None:
            raise ValueError("key: required with output_projections, got None")
        if k > 1:
            # The factors travel as ungrouped (-1) parameters: in no group kernel, and not baked
            # into a new function, so every key reuses the model's compiled kernel.
            sketch = output_sketch(apply_fn, out, key, s)
            apply_fn = sketch.apply_fn
            params = (params, sketch.factors)
            group_ids = (group_ids, [np.full((1, 1), -1, np.int32) for _ in sketch.factors])
            k = s
    kernels = empirical_ntk(apply_fn, params, x, group_ids=group_ids, backend=backend)
    if lambda_min == "literal":
        bound = np.full(p, n, np.int64)
    else:
        bound = group_rank_bound(sizes, k, n)
    spectrum = spectrum_features(kernels, max_rank=bound, dtype=dtype)
    lambda_max = spectrum.lambda_max
    eps = jnp.finfo(jnp.result_type(lambda_max)).eps
    return GroupFeatures(
        lambda_min=spectrum.lambda_min_nonzero if lambda_min == "nonzero" else spectrum.lambda_min,
        entropy=spectrum.entropy,
        lambda_max=spectrum.lambda_max,
        rank=spectrum.rank,
        rank_bound=bound,
        tolerance=spectrum.tolerance,
        dead=lambda_max <= n * eps * jnp.max(lambda_max),
    )


def _standardize(column: jax.Array, members: jax.Array) -> jax.Array:
    """``column`` standardized over the entries where ``members`` holds (zero mean, unit
    population std), zero elsewhere; a constant column maps to zeros.

    A spread within ``√eps`` of the column's magnitude is round-off of equal values (identical
    kernels decomposed separately), not a feature: it is not amplified to ±1.
    """
    count = jnp.maximum(jnp.sum(members), 1)
    mean = jnp.sum(jnp.where(members, column, 0.0)) / count
    std = jnp.sqrt(jnp.sum(jnp.where(members, (column - mean) ** 2, 0.0)) / count)
    eps = jnp.finfo(column.dtype).eps
    constant = std <= jnp.sqrt(eps) * jnp.max(jnp.where(members, jnp.abs(column), 0.0))
    scaled = jnp.where(constant, 0.0, (column - mean) / jnp.where(constant, 1.0, std))
    return jnp.where(members, scaled, 0.0)


def normalize_features(
    feats: GroupFeatures, layout: GroupLayout | None = None, *, within: str = "global"
) -> jax.Array:
    """The gating network's input: ``(p, 2)`` standardized ``[log λ_min, ρ]``.

    ``λ_min`` spans orders of magnitude across groups, so the first column is
    ``log(λ_min + tolerance + eps · max_j λ_max,j)``: ``tolerance`` (``spectrum_features``'
    zero threshold, ``n · eps · λ_max``) is the smallest eigenvalue the decomposition resolves,
    so a zero ``λ_min`` maps to the log of that resolution limit (finite) and a resolved one is
    changed by a relative ``O(n eps)``; the global ``eps · max λ_max`` keeps zero kernels finite.
    The second column is the entropy ρ (eq. 7).  Each column is then standardized (zero mean,
    unit std; a constant column, e.g. one group, gives zeros) over the live groups: across all of
    them (``within="global"``, default) or within each layer of ``layout`` (``within="layer"``:
    layers whose kernels differ in scale, e.g. a wide and a narrow one, then compete on their
    within-layer ranking).  Dead groups (``feats.dead``: a zero kernel on the feature batch) take
    no part in the statistics and get the row ``[0, 0]``, the live groups' mean; their score is
    set apart by :func:`~jaxprune.methods.pl_gating.prune` (pruned first), not by these inputs.

    Every term scales with the kernel, so the result is invariant to scaling all kernels by a
    constant (the output scale, ``empirical_ntk``'s ``1/k``, a sketch's scale).

    Args:
      feats: :class:`GroupFeatures` from :func:`features`.
      layout: the groups' :class:`~jaxprune.masks.GroupLayout`; required with
        ``within="layer"``.
      within: ``"global"`` or ``"layer"``.

    Returns:
      ``(p, 2)`` finite array.

    Raises:
      TypeError / ValueError: ``feats`` not :class:`GroupFeatures`, an unknown ``within``, or
        a missing or mismatched ``layout``.

    References:
      Chen et al. (2023), Sec. 3.2.2 (features) and Sec. 3.2.3, eq. 8 (their gating network);
      reading PL-11 (docs/readings.md: dead groups, the normalization's scope).
    """
    if not isinstance(feats, GroupFeatures):
        raise TypeError(f"feats: expected GroupFeatures (from features()), got {type(feats)}")
    check_choice(within, FEATURE_NORMALIZATIONS, "within")
    lambda_min = jnp.asarray(feats.lambda_min)
    p = lambda_min.shape[0]
    if within == "layer":
        if not isinstance(layout, GroupLayout):
            raise TypeError(
                f"layout: expected a GroupLayout with within='layer', got {type(layout).__name__}"
            )
        if layout.num_groups != p:
            raise ValueError(f"layout: has {layout.num_groups} groups, expected {p}")
        segments = [np.asarray(layout.layer_of_group) == i for i in range(layout.num_layers)]
    else:
        segments = [np.ones(p, bool)]
    dtype = jnp.promote_types(lambda_min.dtype, jnp.float32)
    lambda_min = lambda_min.astype(dtype)
    lambda_max = jnp.asarray(feats.lambda_max, dtype)
    scale = jnp.max(lambda_max)
    floor = jnp.asarray(feats.tolerance, dtype) + jnp.finfo(dtype).eps * scale
    log_lambda = jnp.log(jnp.where(scale > 0, lambda_min + floor, 1.0))
    entropy = jnp.asarray(feats.entropy, dtype)
    live = ~jnp.asarray(feats.dead, bool)
    columns = []
    for column in (log_lambda, entropy):
        parts = [_standardize(column, live & jnp.asarray(seg)) for seg in segments]
        columns.append(sum(parts))
    return jnp.stack(columns, axis=-1)
