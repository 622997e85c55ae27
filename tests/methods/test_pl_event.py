"""Tests of jaxprune.methods.pl_gating.event: TopK selection and one pruning event of
Chen et al. (2023), Algorithm 2, then masked training."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from pl_problem import apply_fn, loss_fn, problem

from jaxprune.masks.groups import build_group_ids, heads
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import apply_group_mask, param_mask, ratio_to_k
from jaxprune.methods.pl_gating import (
    GatingParams,
    PLGatingConfig,
    prune,
    select,
)
from jaxprune.optim.masked import masked

# ---------------------------------------------------------------------------------------------
# Selection


LAYOUT = GroupLayout.from_sizes(("a", "b"), (3, 2))


def test_select_is_topk_with_layer_protection():
    gates = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    np.testing.assert_array_equal(select(gates, 2, LAYOUT, min_per_layer=0), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(select(gates, 2, LAYOUT), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(select(gates, 3, LAYOUT), [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(select(gates, 5, LAYOUT), [1, 1, 1, 1, 1])
    earlier = np.array([0, 1, 1, 1, 1])
    np.testing.assert_array_equal(select(gates, 2, LAYOUT, current_mask=earlier), [0, 1, 0, 0, 1])
    with pytest.raises(ValueError, match="exceeds the 4 groups current_mask keeps"):
        select(gates, 5, LAYOUT, current_mask=earlier)
    with pytest.raises(ValueError, match="current_mask: expected entries 0 or 1"):
        select(gates, 2, LAYOUT, current_mask=[0.5, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="min_per_layer"):
        select(gates, 1, LAYOUT)


# ---------------------------------------------------------------------------------------------
# One pruning event, then masked training


CONFIG = PLGatingConfig(hidden=4, gating_steps=3, num_probes=2, feature_batch_size=6)


def test_prune_event_then_masked_training_keeps_pruned_groups_at_zero():
    params, ids, layout, x, y = problem()
    batches = [(x, y)] * 3
    event = prune(
        jax.random.PRNGKey(0), loss_fn, apply_fn, params, ids, layout, x, batches, 0.5, CONFIG
    )
    k = ratio_to_k(7, 0.5)
    assert k == 4  # (1 - 0.5) · 7 = 3.5 rounds up
    assert event.mask.shape == (7,) and event.mask.sum() == k
    assert event.mask[:4].sum() >= 1 and event.mask[4:].sum() >= 1
    np.testing.assert_allclose(np.sum(event.gates), 7.0, rtol=1e-5)
    assert event.normalized_features.shape == (7, 2)
    assert event.features.lambda_min.shape == (7,)
    assert event.history.total.shape == (3,)
    assert isinstance(event.v, GatingParams)

    weights_mask = param_mask(params, ids, event.mask)
    pruned = apply_group_mask(params, ids, event.mask)
    for w, m in zip(jax.tree_util.tree_leaves(pruned), jax.tree_util.tree_leaves(weights_mask)):
        assert np.all(np.asarray(w)[np.asarray(m) == 0] == 0.0)
    optimizer = masked(optax.sgd(0.1), weights_mask)
    state = optimizer.init(pruned)
    trained = pruned
    for _ in range(3):
        grads = jax.grad(loss_fn)(trained, (x, y))
        updates, state = optimizer.update(grads, state, trained)
        trained = optax.apply_updates(trained, updates)
    for w0, w, m in zip(
        jax.tree_util.tree_leaves(pruned),
        jax.tree_util.tree_leaves(trained),
        jax.tree_util.tree_leaves(weights_mask),
    ):
        w0, w, m = np.asarray(w0), np.asarray(w), np.asarray(m)
        assert np.all(w[m == 0] == 0.0)
        assert np.any(w[m == 1] != w0[m == 1])

    # A later event of a cumulative schedule: pruned groups stay pruned, one per layer left.
    later = prune(
        jax.random.PRNGKey(1),
        loss_fn,
        apply_fn,
        trained,
        ids,
        layout,
        x,
        batches,
        0.75,
        CONFIG,
        v=event.v,
        current_mask=event.mask,
    )
    assert later.mask.sum() == ratio_to_k(7, 0.75) == 2
    assert np.all(later.mask <= event.mask)
    assert later.mask[:4].sum() == 1 and later.mask[4:].sum() == 1


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, float("nan")])
def test_prune_rejects_ratios_outside_unit_interval(ratio):
    params, ids, layout, x, _ = problem()
    with pytest.raises(ValueError, match="ratio"):
        prune(jax.random.PRNGKey(0), loss_fn, apply_fn, params, ids, layout, x, [], ratio, CONFIG)


def test_prune_rejects_bad_setups_before_any_work():
    params, ids, layout, x, y = problem()
    key = jax.random.PRNGKey(0)
    run = lambda *a, **kw: prune(key, loss_fn, apply_fn, params, ids, *a, **kw)  # noqa: E731
    with pytest.raises(TypeError, match="ratio"):
        run(layout, x, [], "0.5", CONFIG)
    with pytest.raises(ValueError, match=r"fewer than config\.min_per_layer"):
        run(layout, x, [], 0.9, CONFIG)  # keeps 1 group of 2 layers
    with pytest.raises(ValueError, match="layout: has 5 groups, expected 7"):
        run(LAYOUT, x, [], 0.5, CONFIG)
    with pytest.raises(ValueError, match="layout: required"):
        run(None, x, [], 0.5, CONFIG)
    with pytest.raises(ValueError, match="feature_inputs: has 4 examples"):
        run(layout, x[:4], [], 0.5, CONFIG)
    with pytest.raises(ValueError, match="yielded 1 batches, expected 3"):
        run(layout, x, [(x, y)], 0.5, CONFIG)
    with pytest.raises(ValueError, match="current_mask: expected shape"):
        run(layout, x, [], 0.5, CONFIG, current_mask=np.ones(5))
    with pytest.raises(ValueError, match="more than the 3 that current_mask keeps"):
        run(layout, x, [], 0.2, CONFIG, current_mask=np.array([1, 0, 0, 1, 0, 1, 0]))
    with pytest.raises(TypeError, match="config"):
        run(layout, x, [], 0.5, {"hidden": 4})


def test_group_kind_absent_from_the_model_is_rejected_by_the_group_builder():
    params, *_ = problem()
    with pytest.raises(ValueError, match="matches no module path"):
        build_group_ids(params, [heads("attention", 2)])


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("hidden", 0, ValueError),
        ("scaling", "sigmoid", ValueError),
        ("alpha", -1.0, ValueError),
        ("alpha", float("inf"), ValueError),
        ("num_probes", 0, ValueError),
        ("gating_steps", 1.5, TypeError),
        ("learning_rate", 0.0, ValueError),
        ("feature_batch_size", 1, ValueError),
        ("output_projections", 0, ValueError),
        ("hessian", "fisher", ValueError),
        ("trace_wrt", "both", ValueError),
        ("min_per_layer", -1, ValueError),
        ("lambda_min", "smallest", ValueError),
    ],
)
def test_config_validation(field, value, error):
    with pytest.raises(error, match=field):
        PLGatingConfig(**{field: value})


def test_select_per_layer_keeps_the_same_fraction_of_every_layer():
    layout = GroupLayout.from_sizes(("a", "b"), (4, 8))
    gates = np.asarray([9.0, 8.0, 7.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5, 0.4, 0.3])
    global_mask = select(gates, 6, layout)
    assert global_mask[:4].sum() == 4 and global_mask[4:].sum() == 2  # global TopK
    per_layer = select(gates, 6, layout, per_layer=True)
    assert per_layer[:4].tolist() == [1, 1, 0, 0]  # 2 of 4
    assert per_layer[4:].tolist() == [0, 1, 1, 1, 1, 0, 0, 0]  # 4 of 8
