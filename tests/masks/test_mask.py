"""Group masks: m * w against brute force, TopK properties, ratio rounding, sparsity counts."""

from __future__ import annotations

import re
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mlp
from hypothesis import given, settings

from jaxprune.group_ids import leaf_group_ids
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import (
    apply_group_mask,
    group_mask_from_param_mask,
    param_mask,
    ratio_to_k,
    sparsity,
    topk_mask,
    topk_mask_jax,
)

FAST = settings(max_examples=50, deadline=None)
JAX_FAST = settings(max_examples=25, deadline=None)

SHAPES = {"a": {"bias": (4,), "kernel": (3, 4)}, "b": {"kernel": (2, 3, 2)}, "c": (5,)}


# ---------------------------------------------------------------------------------------------
# Strategies and brute-force references.


@st.composite
def grouped_params(draw):
    """(params, group_ids, p): random compact id shapes, random ids relabelled 0..p-1."""
    shapes, treedef = jax.tree_util.tree_flatten(SHAPES, is_leaf=lambda s: isinstance(s, tuple))
    raw = []
    for shape in shapes:
        compact = tuple(draw(st.sampled_from([1, n])) for n in shape)
        raw.append(draw(hnp.arrays(np.int32, compact, elements=st.integers(-1, 5))))
    if all((r < 0).all() for r in raw):
        raw[0].flat[0] = 0
    used = np.unique(np.concatenate([r[r >= 0] for r in raw]))
    relabel = {int(g): i for i, g in enumerate(used)}
    ids = [np.vectorize(lambda g: relabel.get(int(g), -1), otypes=[np.int32])(r) for r in raw]
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in shapes]
    return (
        jax.tree_util.tree_unflatten(treedef, params),
        jax.tree_util.tree_unflatten(treedef, ids),
        len(used),
    )


def brute_masked(params, group_ids, mask):
    """Weight by weight: multiply by mask[id] where id >= 0."""
    out = []
    for w, ids in zip(jax.tree_util.tree_leaves(params), leaf_group_ids(params, group_ids)):
        w = np.asarray(w, np.float64).copy()
        for index in np.ndindex(w.shape):
            if ids[index] >= 0:
                w[index] *= mask[ids[index]]
        out.append(w)
    return out


def brute_topk(scores, k):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def as_mask(p, kept):
    mask = np.zeros(p, np.float32)
    mask[list(kept)] = 1
    return mask


# XLA on CPU flushes subnormal results to zero, so gates stay clear of the subnormal range.
GATES = st.one_of(st.just(0.0), st.floats(1e-6, 1))


def layouts(min_layers=1, max_layers=4, max_size=5):
    return st.lists(st.integers(1, max_size), min_size=min_layers, max_size=max_layers).map(
        lambda sizes: GroupLayout.from_sizes(
            tuple(f"l{i}" for i in range(len(sizes))), tuple(sizes)
        )
    )


def scores_for(p):
    # Small integers make ties common; the tie-breaking rule is part of the contract.
    return st.lists(
        # float32-exact normal numbers: XLA flushes subnormals to zero inside jit, so a
        # subnormal score ties with 0 in topk_mask_jax (documented there).
        st.one_of(
            st.integers(-3, 3).map(float),
            st.floats(-10, 10, allow_nan=False, width=32, allow_subnormal=False),
        ),
        min_size=p,
        max_size=p,
    ).map(np.array)


# ---------------------------------------------------------------------------------------------
# apply_group_mask / param_mask / group_mask_from_param_mask.


@JAX_FAST
@given(grouped_params(), st.data())
def test_apply_matches_brute_force_and_param_mask(case, data):
    params, group_ids, p = case
    mask = data.draw(hnp.arrays(np.float64, p, elements=GATES))
    with jax.enable_x64(True):
        masked = apply_group_mask(params, group_ids, mask)
        multipliers = param_mask(params, group_ids, mask)
        for got, want, w, m in zip(
            jax.tree_util.tree_leaves(masked),
            brute_masked(params, group_ids, mask),
            jax.tree_util.tree_leaves(params),
            jax.tree_util.tree_leaves(multipliers),
        ):
            np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
            assert m.shape == np.shape(w)
            np.testing.assert_allclose(got, np.asarray(w) * np.asarray(m), rtol=1e-15, atol=0)


@JAX_FAST
@given(grouped_params(), st.data())
def test_binary_mask_idempotent_and_roundtrip(case, data):
    params, group_ids, p = case
    mask = data.draw(hnp.arrays(np.float32, p, elements=st.sampled_from([0.0, 1.0])))
    once = apply_group_mask(params, group_ids, mask)
    twice = apply_group_mask(once, group_ids, mask)
    for a, b in zip(jax.tree_util.tree_leaves(once), jax.tree_util.tree_leaves(twice)):
        np.testing.assert_array_equal(a, b)
    pmask = param_mask(params, group_ids, mask)
    np.testing.assert_array_equal(group_mask_from_param_mask(params, group_ids, pmask), mask)


@JAX_FAST
@given(grouped_params(), st.data())
def test_soft_gate_gradient_is_per_group_sum(case, data):
    params, group_ids, p = case
    gates = data.draw(hnp.arrays(np.float64, p, elements=GATES))
    with jax.enable_x64(True):
        coeffs = jax.tree_util.tree_map(
            lambda w: jnp.linspace(-1.0, 2.0, np.size(w)).reshape(np.shape(w)), params
        )

        def loss_w(w):
            terms = jax.tree_util.tree_map(lambda a, c: jnp.sum(c * jnp.sin(a) + a**2), w, coeffs)
            return sum(jax.tree_util.tree_leaves(terms))

        grad_m = jax.grad(lambda m: loss_w(apply_group_mask(params, group_ids, m)))(gates)
        grad_w = jax.grad(loss_w)(apply_group_mask(params, group_ids, gates))
        want = np.zeros(p)
        for w, d, ids in zip(
            jax.tree_util.tree_leaves(params),
            jax.tree_util.tree_leaves(grad_w),
            leaf_group_ids(params, group_ids),
        ):
            for index in np.ndindex(ids.shape):
                if ids[index] >= 0:
                    want[ids[index]] += np.asarray(w)[index] * np.asarray(d)[index]
        np.testing.assert_allclose(grad_m, want, rtol=1e-12, atol=1e-12)


def test_apply_on_mlp_neurons_and_jit():
    _, params, _ = make_mlp(jnp.float32)
    ids, _ = build_group_ids(params, neurons(r"Dense_[01]$"))
    mask = np.ones(12, np.float32)
    mask[[2, 9]] = 0
    masked = apply_group_mask(params, ids, mask)
    want = jax.tree_util.tree_map(np.array, params)
    want["params"]["Dense_0"]["kernel"][:, 2] = 0
    want["params"]["Dense_0"]["bias"][2] = 0
    want["params"]["Dense_1"]["kernel"][:, 2] = 0
    want["params"]["Dense_1"]["bias"][2] = 0
    for got, ref in zip(jax.tree_util.tree_leaves(masked), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(got, ref)
    jitted = jax.jit(lambda m: apply_group_mask(params, ids, m))(jnp.asarray(mask))
    for got, ref in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(got, ref)
    # Per leaf one gather of the compact ids' size: no per-weight index or one-hot.
    jaxpr = jax.make_jaxpr(lambda m: apply_group_mask(params, ids, m))(jnp.asarray(mask))
    gathered = [eqn.outvars[0].aval.shape for eqn in jaxpr.eqns if eqn.primitive.name == "gather"]
    assert sorted(gathered) == sorted([(1, 5), (5,), (1, 7), (7,)])
    # Boolean masks and the leaf dtype are kept.
    assert masked["params"]["Dense_0"]["kernel"].dtype == jnp.float32
    as_bool = apply_group_mask(params, ids, mask.astype(bool))
    np.testing.assert_array_equal(
        as_bool["params"]["Dense_0"]["kernel"], want["params"]["Dense_0"]["kernel"]
    )


def test_group_mask_from_partial_param_mask():
    _, params, _ = make_mlp(jnp.float32)
    ids, _ = build_group_ids(params, neurons(r"Dense_[01]$"))
    pmask = jax.tree_util.tree_map(lambda w: np.zeros(np.shape(w), np.float32), params)
    pmask["params"]["Dense_0"]["kernel"][3, 4] = 1  # one surviving weight keeps unit 4
    pmask["params"]["Dense_1"]["bias"][0] = 0.5  # so does a soft value
    pmask["params"]["Dense_2"]["kernel"][:] = 1  # ungrouped weights are ignored
    want = np.zeros(12, np.float32)
    want[[4, 7]] = 1
    np.testing.assert_array_equal(group_mask_from_param_mask(params, ids, pmask), want)
    jitted = jax.jit(lambda m: group_mask_from_param_mask(params, ids, m))(pmask)
    np.testing.assert_array_equal(jitted, want)


def test_apply_errors():
    _, params, _ = make_mlp(jnp.float32)
    ids, _ = build_group_ids(params, neurons(r"Dense_[01]$"))
    with pytest.raises(
        ValueError, match=re.escape("mask: expected shape (12,), one entry per group, got (11,)")
    ):
        apply_group_mask(params, ids, np.ones(11))
    with pytest.raises(
        TypeError, match="mask: expected a real or boolean array, got dtype complex64"
    ):
        apply_group_mask(params, ids, np.ones(12, np.complex64))
    with pytest.raises(ValueError, match="pmask: expected the pytree structure of params"):
        group_mask_from_param_mask(params, ids, {"params": {}})
    bad = jax.tree_util.tree_map(lambda w: np.ones(np.shape(w)), params)
    bad["params"]["Dense_0"]["kernel"] = np.ones((2, 2))
    with pytest.raises(
        ValueError, match=re.escape("pmask: a leaf of shape (2, 2) does not broadcast")
    ):
        group_mask_from_param_mask(params, ids, bad)
    int_params = jax.tree_util.tree_map(lambda w: np.ones(np.shape(w), np.int32), params)
    with pytest.raises(
        TypeError,
        match=re.escape(
            "params['params']['Dense_0']['bias']: grouped weights must be floating point"
        ),
    ):
        apply_group_mask(int_params, ids, np.ones(12))


# ---------------------------------------------------------------------------------------------
# ratio_to_k.


@pytest.mark.parametrize(
    ("p", "ratio", "k"),
    [(10, 0.3, 7), (5, 0.3, 4), (5, 0.5, 3), (4, 0.125, 4), (3, 0.5, 2), (8, 0.0, 8), (7, 0.9, 1)],
)
def test_ratio_to_k_table(p, ratio, k):
    # 5 * 0.7 = 3.5 and 4 * 0.875 = 3.5: ties round up; 7 * 0.1 = 0.7 rounds to 1.
    assert ratio_to_k(p, ratio) == k


@FAST
@given(st.integers(1, 300), st.floats(0, 1, exclude_max=True))
def test_ratio_to_k_nearest(p, ratio):
    exact = (1 - Fraction(repr(ratio))) * p
    if exact < Fraction(1, 2):
        with pytest.raises(ValueError, match="rounds to 0 groups"):
            ratio_to_k(p, ratio)
        return
    k = ratio_to_k(p, ratio)
    assert abs(k - exact) <= Fraction(1, 2)
    if abs(k - exact) == Fraction(1, 2):
        assert k > exact  # ties keep more


def test_ratio_to_k_errors():
    with pytest.raises(ValueError, match=r"ratio: expected a fraction in \[0, 1\), got 1"):
        ratio_to_k(10, 1)
    with pytest.raises(
        ValueError, match=re.escape("ratio: expected a fraction in [0, 1), got -0.1")
    ):
        ratio_to_k(10, -0.1)
    with pytest.raises(ValueError, match="ratio: expected a finite number, got nan"):
        ratio_to_k(10, float("nan"))
    with pytest.raises(ValueError, match="num_groups: expected a positive int, got 0"):
        ratio_to_k(0, 0.5)
    with pytest.raises(TypeError, match="ratio: expected a real number"):
        ratio_to_k(10, "0.5")
    with pytest.raises(
        ValueError, match=re.escape("pruning 0.9 of 3 groups keeps 0.3, which rounds to 0 groups")
    ):
        ratio_to_k(3, 0.9)


# ---------------------------------------------------------------------------------------------
# topk_mask.


@FAST
@given(st.integers(1, 12).flatmap(lambda p: st.tuples(scores_for(p), st.integers(0, p))))
def test_topk_global_equals_sort(case):
    scores, k = case
    mask = topk_mask(scores, k)
    assert mask.dtype == np.float32 and mask.sum() == k
    np.testing.assert_array_equal(mask, as_mask(scores.size, brute_topk(scores.tolist(), k)))
    np.testing.assert_array_equal(topk_mask(scores, int(mask.sum())), mask)  # idempotent
    jitted = jax.jit(topk_mask_jax, static_argnums=1)(jnp.asarray(scores, jnp.float32), k)
    np.testing.assert_array_equal(jitted, topk_mask(scores.astype(np.float32), k))


@FAST
@given(
    layouts().flatmap(lambda lay: st.tuples(st.just(lay), scores_for(lay.num_groups), st.data()))
)
def test_topk_min_per_layer(case):
    layout, scores, data = case
    counts = np.bincount(layout.layer_of_group)
    m = data.draw(st.integers(0, int(counts.min())))
    k = data.draw(st.integers(m * layout.num_layers, layout.num_groups))
    mask = topk_mask(scores, k, layout=layout, min_per_layer=m)
    assert mask.sum() == k
    assert (np.bincount(layout.layer_of_group, weights=mask) >= m).all()
    protected = []
    for layer in range(layout.num_layers):
        groups = np.flatnonzero(layout.layer_of_group == layer).tolist()
        protected += sorted(groups, key=lambda i: (-scores[i], i))[:m]
    rest = [i for i in brute_topk(scores.tolist(), scores.size) if i not in protected]
    np.testing.assert_array_equal(
        mask, as_mask(scores.size, protected + rest[: k - len(protected)])
    )


@FAST
@given(
    layouts().flatmap(lambda lay: st.tuples(st.just(lay), scores_for(lay.num_groups), st.data()))
)
def test_topk_per_layer_same_fraction(case):
    layout, scores, data = case
    counts = np.bincount(layout.layer_of_group)
    m = data.draw(st.integers(0, int(counts.min())))
    k = data.draw(st.integers(m * layout.num_layers, layout.num_groups))
    mask = topk_mask(scores, k, layout=layout, per_layer=True, min_per_layer=m)
    assert mask.sum() == k
    kept = np.bincount(layout.layer_of_group, weights=mask, minlength=layout.num_layers)
    budget, capacity = k - m * layout.num_layers, counts - m
    share = budget * capacity / max(capacity.sum(), 1)
    assert (kept >= m).all()
    assert (np.abs(kept - m - share) < 1).all()
    for layer in range(layout.num_layers):  # within a layer: its best groups
        groups = np.flatnonzero(layout.layer_of_group == layer).tolist()
        best = sorted(groups, key=lambda i: (-scores[i], i))[: int(kept[layer])]
        np.testing.assert_array_equal(
            np.flatnonzero(mask[groups]), sorted(groups.index(g) for g in best)
        )


def test_topk_hand_cases():
    layout = GroupLayout.from_sizes(("a", "b"), (3, 2))
    scores = np.array([5.0, 4.0, 3.0, 1.0, 1.0])
    np.testing.assert_array_equal(topk_mask(scores, 2), [1, 1, 0, 0, 0])
    # Keep the best of each layer first (the tie in layer b goes to the lower index 3).
    np.testing.assert_array_equal(
        topk_mask(scores, 2, layout=layout, min_per_layer=1), [1, 0, 0, 1, 0]
    )
    # Per layer: k n_l / p = 1.8 and 1.2 -> floors 1, 1 and the larger remainder (layer a) gets 1.
    np.testing.assert_array_equal(
        topk_mask(scores, 3, layout=layout, per_layer=True), [1, 1, 0, 1, 0]
    )
    np.testing.assert_array_equal(topk_mask(np.zeros(4), 2), [1, 1, 0, 0])
    np.testing.assert_array_equal(topk_mask(np.array([-np.inf, np.inf, 0.0]), 1), [0, 1, 0])


@JAX_FAST
@given(
    layouts().flatmap(lambda lay: st.tuples(st.just(lay), scores_for(lay.num_groups), st.data()))
)
def test_topk_jax_layer_rules_equal_topk_mask(case):
    layout, scores, data = case
    counts = np.bincount(layout.layer_of_group)
    m = data.draw(st.integers(0, int(counts.min())))
    k = data.draw(st.integers(m * layout.num_layers, layout.num_groups))
    options = {"layout": layout, "per_layer": data.draw(st.booleans()), "min_per_layer": m}
    same = topk_mask_jax(jnp.asarray(scores, jnp.float32), k, **options)
    np.testing.assert_array_equal(same, topk_mask(scores.astype(np.float32), k, **options))


def test_topk_jax_per_layer_and_protected_inside_jit_equal_topk_mask():
    """The jit-able rules with ties, -inf (pruned groups) and layers interleaved."""
    layout = GroupLayout(("a", "b", "c"), np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 0]))
    scores = np.array([1.0, 3.0, -np.inf, 3.0, 0.0, 2.0, -np.inf, 1.0, 2.0, 1.0], np.float32)
    for k in (3, 5, 7):
        for options in ({"min_per_layer": 1}, {"per_layer": True}, {"per_layer": True,
                        "min_per_layer": 1}):  # fmt: skip
            jitted = jax.jit(lambda s: topk_mask_jax(s, k, layout=layout, **options))
            want = topk_mask(scores, k, layout=layout, **options)
            np.testing.assert_array_equal(jitted(jnp.asarray(scores)), want)


def test_topk_jax_zero_signs_and_nan():
    scores = jnp.array([-0.0, 0.0, -0.0, 1.0])
    np.testing.assert_array_equal(topk_mask_jax(scores, 2), [1, 0, 0, 1])
    np.testing.assert_array_equal(topk_mask(np.asarray(scores), 2), [1, 0, 0, 1])
    with pytest.raises(ValueError, match=re.escape("scores: NaN at groups [1]")):
        topk_mask_jax(jnp.array([1.0, jnp.nan]), 1)
    traced = jax.jit(topk_mask_jax, static_argnums=1)(jnp.array([1.0, jnp.nan, 2.0]), 1)
    assert np.isnan(traced).all()
    np.testing.assert_array_equal(topk_mask_jax(jnp.array([3, 1, 2]), 2), [1, 0, 1])


def test_topk_errors():
    layout = GroupLayout.from_sizes(("a", "b"), (3, 2))
    scores = np.arange(5.0)
    with pytest.raises(ValueError, match=re.escape("scores: NaN at groups [2]")):
        topk_mask(np.array([1.0, 2.0, np.nan]), 1)
    with pytest.raises(
        ValueError, match=re.escape("k: expected an int in [0, 5] (the number of groups), got 6")
    ):
        topk_mask(scores, 6)
    with pytest.raises(TypeError, match=re.escape("k: expected an int >= 0, got 2.0")):
        topk_mask(scores, 2.0)
    with pytest.raises(
        ValueError, match="layout: required when per_layer=True or min_per_layer > 0"
    ):
        topk_mask(scores, 2, per_layer=True)
    with pytest.raises(ValueError, match=re.escape("layout: has 5 groups, expected 4")):
        topk_mask(scores[:4], 2, layout=layout, min_per_layer=1)
    with pytest.raises(
        ValueError,
        match=re.escape("k: 1 is less than min_per_layer (1) × number of layers (2) = 2"),
    ):
        topk_mask(scores, 1, layout=layout, min_per_layer=1)
    with pytest.raises(ValueError, match="min_per_layer: 3 exceeds the 2 groups of layer 'b'"):
        topk_mask(scores, 5, layout=layout, min_per_layer=3)
    with pytest.raises(ValueError, match="min_per_layer: expected an int >= 0, got -1"):
        topk_mask(scores, 2, layout=layout, min_per_layer=-1)
    with pytest.raises(
        ValueError, match=re.escape("scores: expected shape (p,) with p >= 1, got (2, 2)")
    ):
        topk_mask(np.ones((2, 2)), 1)
    with pytest.raises(TypeError, match="inside jit use topk_mask_jax"):
        jax.jit(lambda s: topk_mask(s, 1))(jnp.ones(3))
    with pytest.raises(TypeError, match="scores: expected a real array, got dtype bool"):
        topk_mask(np.ones(3, bool), 1)


# ---------------------------------------------------------------------------------------------
# sparsity.


def test_sparsity_hand_counts():
    _, params, _ = make_mlp(jnp.float32)
    ids, layout = build_group_ids(params, neurons(r"Dense_[01]$"))
    mask = np.ones(12)
    mask[[0, 5, 8]] = 0  # two units of Dense_0 (5 weights each), one of Dense_1 (8 weights)
    mask[9] = 0.3  # a soft gate is not pruned
    flops = np.arange(12.0)
    report = sparsity(params, ids, mask, layout=layout, group_flops=flops)
    assert report.num_groups_pruned == 3
    assert report.groups_pruned == pytest.approx(3 / 12)
    assert report.num_params_pruned == 2 * 5 + 8
    assert report.grouped_params_pruned == pytest.approx(18 / (7 * 5 + 5 * 8))
    total = (4 * 7 + 7) + (7 * 5 + 5) + (5 * 3 + 3)
    assert report.params_pruned == pytest.approx(18 / total)
    np.testing.assert_allclose(report.layer_groups_pruned, [2 / 7, 1 / 5])
    np.testing.assert_allclose(report.layer_params_pruned, [10 / 35, 8 / 40])
    assert report.flops_removed == 0 + 5 + 8
    plain = sparsity(params, ids, mask)
    assert plain.layer_groups_pruned is None and plain.flops_removed is None
    with pytest.raises(
        ValueError, match=re.escape("group_flops: expected (12,) finite non-negative FLOPs")
    ):
        sparsity(params, ids, mask, group_flops=-flops)
    with pytest.raises(ValueError, match="mask: contains NaN"):
        sparsity(params, ids, np.full(12, np.nan))
