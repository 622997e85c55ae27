"""Tests of Chen et al. (2023)'s PL gating (jaxprune.methods.pl_gating) on tiny tanh MLPs.

Features are checked against brute-force per-group kernels (``jax.jacobian``); the gradient of
the gating objective against central differences in float64 with fixed Hutchinson probes; its
trace term against explicit Hessians within 5 theoretical standard deviations
(``Var(vᵀ H v) = 2 ‖H‖_F²`` for Gaussian probes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import brute_force_group_kernels, explicit_hessian

from jaxprune.masks.groups import build_group_ids, heads
from jaxprune.masks.layout import GroupLayout
from jaxprune.masks.mask import apply_group_mask, param_mask, ratio_to_k
from jaxprune.methods import pl_gating
from jaxprune.methods.pl_gating import (
    GatingObjective,
    GatingParams,
    GroupFeatures,
    PLGatingConfig,
    features,
    gate,
    gating_loss,
    init_gating,
    normalize_features,
    prune,
    select,
    train_gating,
)
from jaxprune.methods.pl_gating import objective as pl_objective
from jaxprune.models import MLP
from jaxprune.models.mlp import mlp_group_ids
from jaxprune.optim.masked import masked
from jaxprune.spectra import sketch_outputs
from jaxprune.spectra.spectrum import spectrum_features

SIGMAS = 5.0
MODEL = MLP(hidden=(4, 3), num_outputs=2, activation=jnp.tanh)  # 7 neuron groups, 2 layers


def apply_fn(params, x):
    return MODEL.apply(params, x)


def loss_fn(params, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((apply_fn(params, x) - y) ** 2, axis=-1))


def _problem(dtype=jnp.float32, n=6):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 3), dtype)
    y = jax.random.normal(jax.random.PRNGKey(1), (n, 2), dtype)
    params = MODEL.init(jax.random.PRNGKey(2), x)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    ids, layout = mlp_group_ids(params, MODEL)
    return params, ids, layout, x, y


def _random_v(dtype=jnp.float32, hidden=5):
    """Gating parameters away from the symmetric initialization (``w2 = 0``)."""
    v = init_gating(jax.random.PRNGKey(3), hidden, dtype=dtype)
    w2 = jax.random.normal(jax.random.PRNGKey(4), (hidden,), dtype)
    b1 = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (hidden,), dtype)
    return v._replace(w2=w2, b1=b1)


# ---------------------------------------------------------------------------------------------
# Features


def test_features_match_brute_force_group_kernels():
    # A 2-3-3-2 net, n = 8 examples, k = 2 outputs.  First-layer neurons (m_i = 3 weights) have
    # kernels of rank k m_i = 6 < n; second-layer neurons (m_i = 4) reach the outputs through
    # one scalar, so their rank is m_i = 4 although group_rank_bound allows 8.  float64 for a
    # tight comparison with kernels from full Jacobians; other tests run the float32 path.
    model = MLP(hidden=(3, 3), num_outputs=2, activation=jnp.tanh)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(0), (8, 2), jnp.float64)
        params = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64), model.init(jax.random.PRNGKey(1), x)
        )
        ids, _ = mlp_group_ids(params, model)
        got = {
            kind: features(model.apply, params, x, ids, lambda_min=kind)
            for kind in ("nonzero", "bound", "literal")
        }
        kernels = brute_force_group_kernels(model.apply, params, x, x, ids)
        eigenvalues = np.linalg.eigvalsh(kernels)[:, ::-1]
        bound = np.array([6, 6, 6, 8, 8, 8])
        rank = np.array([6, 6, 6, 4, 4, 4])
        smallest = eigenvalues[np.arange(6), rank - 1]
        assert np.all(smallest > 1e-8 * eigenvalues[:, 0])
        want = spectrum_features(kernels, max_rank=bound)
        np.testing.assert_array_equal(want.rank, rank)
        np.testing.assert_allclose(got["nonzero"].lambda_min, smallest, rtol=1e-8)
        np.testing.assert_allclose(got["bound"].lambda_min[:3], smallest[:3], rtol=1e-8)
        np.testing.assert_array_equal(got["bound"].lambda_min[3:], 0.0)
        np.testing.assert_array_equal(got["literal"].lambda_min, 0.0)
        np.testing.assert_array_equal(got["nonzero"].rank_bound, bound)
        np.testing.assert_array_equal(got["literal"].rank_bound, np.full(6, 8))
        for feats in got.values():
            np.testing.assert_array_equal(feats.rank, rank)
            np.testing.assert_allclose(feats.lambda_max, eigenvalues[:, 0], rtol=1e-12)
            np.testing.assert_allclose(feats.entropy, want.entropy, rtol=0, atol=1e-10)
            assert np.all(np.isfinite(normalize_features(feats)))


def test_features_need_two_examples_and_a_key_for_projections():
    params, ids, _, x, _ = _problem()
    with pytest.raises(ValueError, match="at least 2 examples"):
        features(apply_fn, params, x[:1], ids)
    with pytest.raises(ValueError, match="key: required"):
        features(apply_fn, params, x, ids, output_projections=8)
    with pytest.raises(ValueError, match="backend"):
        features(apply_fn, params, x, ids, backend="magic")
    with pytest.raises(ValueError, match="lambda_min"):
        features(apply_fn, params, x, ids, lambda_min="min")


def test_sketched_features_approximate_exact_ones():
    params, ids, _, x, _ = _problem()
    exact = features(apply_fn, params, x, ids)
    sketched = features(
        apply_fn, params, x, ids, output_projections=4096, key=jax.random.PRNGKey(7)
    )
    np.testing.assert_allclose(sketched.lambda_min, exact.lambda_min, rtol=0.15)
    np.testing.assert_allclose(sketched.entropy, exact.entropy, rtol=0.05)
    np.testing.assert_array_equal(sketched.rank_bound, exact.rank_bound)  # min(n, s m_i) = n


# ---------------------------------------------------------------------------------------------
# Normalization


def test_normalized_features_are_standardized_and_scale_invariant():
    # Scaling the output layer by c scales every hidden-neuron group kernel of this one-hidden-
    # layer net by c² exactly; the normalized features must not change.
    model = MLP(hidden=(5,), num_outputs=2, activation=jnp.tanh)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    params = model.init(jax.random.PRNGKey(1), x)
    ids, _ = mlp_group_ids(params, model)
    base = normalize_features(features(model.apply, params, x, ids))
    scaled_params = jax.tree_util.tree_map(lambda a: a, params)
    scaled_params["params"]["Dense_1"] = jax.tree_util.tree_map(
        lambda a: 10.0 * a, params["params"]["Dense_1"]
    )
    scaled = normalize_features(features(model.apply, scaled_params, x, ids))
    assert base.shape == (5, 2)
    np.testing.assert_allclose(jnp.mean(base, axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(base, axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(scaled, base, atol=2e-4)


def _synthetic(lambda_min, lambda_max, entropy):
    lambda_min, lambda_max = np.asarray(lambda_min), np.asarray(lambda_max)
    p = lambda_min.size
    return GroupFeatures(
        lambda_min=lambda_min,
        entropy=np.asarray(entropy),
        lambda_max=lambda_max,
        rank=np.full(p, 4),
        rank_bound=np.full(p, 4),
        tolerance=4 * np.finfo(np.float32).eps * lambda_max,
    )


def test_normalized_features_are_finite_for_zero_and_constant_features():
    zero_group = _synthetic([1e-3, 0.0, 2e-2, 0.0], [1.0, 2.0, 3.0, 0.0], [0.5, 0.7, 0.9, 0.0])
    out = np.asarray(normalize_features(zero_group))
    assert np.all(np.isfinite(out))
    assert out[3, 0] < out[1, 0] < out[0, 0] < out[2, 0]  # no kernel < unresolved < resolved
    constant = _synthetic([0.3] * 3, [1.0] * 3, [0.8] * 3)
    np.testing.assert_array_equal(normalize_features(constant), 0.0)
    all_zero = _synthetic([0.0] * 3, [0.0] * 3, [0.0] * 3)
    np.testing.assert_array_equal(normalize_features(all_zero), 0.0)
    single = _synthetic([0.3], [1.0], [0.8])
    np.testing.assert_array_equal(normalize_features(single), 0.0)
    with pytest.raises(TypeError, match="GroupFeatures"):
        normalize_features((1.0, 2.0))


# ---------------------------------------------------------------------------------------------
# Gating network


def test_gates_are_a_distribution_over_groups():
    d = jax.random.normal(jax.random.PRNGKey(0), (7, 2))
    uniform = init_gating(jax.random.PRNGKey(1), 5)
    np.testing.assert_allclose(gate(uniform, d), np.ones(7), rtol=1e-6)
    np.testing.assert_allclose(gate(uniform, d, scaling="softmax"), np.full(7, 1 / 7), rtol=1e-6)
    v = _random_v()
    soft = np.asarray(gate(v, d, scaling="softmax"))
    mean_one = np.asarray(gate(v, d, scaling="mean_one"))
    assert np.all(soft > 0) and np.all(soft < 1)
    np.testing.assert_allclose(soft.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(mean_one.sum(), 7.0, rtol=1e-6)
    np.testing.assert_allclose(mean_one, 7 * soft, rtol=1e-6)
    assert np.ptp(soft) > 0
    np.testing.assert_array_equal(np.argsort(soft), np.argsort(mean_one))
    with pytest.raises(ValueError, match="scaling"):
        gate(v, d, scaling="sigmoid")
    with pytest.raises(ValueError, match=r"normalized_features: expected shape \(p, 2\)"):
        gate(v, jnp.ones((7, 3)))
    with pytest.raises(ValueError, match="hidden"):
        init_gating(jax.random.PRNGKey(0), 0)


# ---------------------------------------------------------------------------------------------
# Objective (eq. 36)


@pytest.mark.parametrize(
    ("scaling", "hessian", "trace_wrt"),
    [("mean_one", "outputs", "gated"), ("softmax", "loss", "weights")],
)
def test_gating_loss_gradient_matches_central_differences(scaling, hessian, trace_wrt):
    with jax.enable_x64(True):
        params, ids, _, x, y = _problem(jnp.float64)
        normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2), jnp.float64)
        v = _random_v(jnp.float64)
        key = jax.random.PRNGKey(11)

        @jax.jit
        def objective(v):
            return gating_loss(
                v,
                loss_fn,
                apply_fn,
                params,
                ids,
                normalized,
                (x, y),
                key,
                alpha=0.7,
                num_probes=2,
                scaling=scaling,
                hessian=hessian,
                trace_wrt=trace_wrt,
            )

        grad = jax.jit(jax.grad(objective))(v)
        for seed in range(2):
            keys = jax.random.split(jax.random.PRNGKey(20 + seed), 3)
            direction = GatingParams(
                *(jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, v))
            )
            eps = 1e-5
            plus = jax.tree_util.tree_map(lambda a, d: a + eps * d, v, direction)
            minus = jax.tree_util.tree_map(lambda a, d: a - eps * d, v, direction)
            numeric = (objective(plus) - objective(minus)) / (2 * eps)
            analytic = sum(
                jnp.vdot(g, d)
                for g, d in zip(
                    jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction)
                )
            )
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("hessian", "trace_wrt"), [("outputs", "gated"), ("outputs", "weights"), ("loss", "gated")]
)
def test_gating_loss_trace_term_estimates_the_exact_trace(hessian, trace_wrt):
    params, ids, _, x, y = _problem()
    normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2))
    v = _random_v()
    gates = gate(v, normalized)
    gated = apply_group_mask(params, ids, gates)
    if hessian == "outputs" and trace_wrt == "gated":
        matrix = explicit_hessian(lambda u: jnp.sum(apply_fn(u, x)), gated)
    elif hessian == "outputs":
        matrix = explicit_hessian(
            lambda w: jnp.sum(apply_fn(apply_group_mask(w, ids, gates), x)), params
        )
    else:
        matrix = explicit_hessian(lambda u: loss_fn(u, (x, y)), gated)
    num_probes = 1000
    value = jax.jit(
        lambda v: gating_loss(
            v,
            loss_fn,
            apply_fn,
            params,
            ids,
            normalized,
            (x, y),
            jax.random.PRNGKey(5),
            alpha=1.0,
            num_probes=num_probes,
            hessian=hessian,
            trace_wrt=trace_wrt,
        )
    )(v)
    estimate = float(value - loss_fn(gated, (x, y)))
    sym = (matrix + matrix.T) / 2
    sigma = np.sqrt(2 * np.sum(sym**2) / num_probes)
    assert abs(estimate - np.trace(matrix)) <= SIGMAS * sigma + 1e-4 * abs(np.trace(matrix))


def test_gating_loss_rejects_bad_arguments():
    params, ids, _, x, y = _problem()
    normalized = normalize_features(features(apply_fn, params, x, ids))
    v = init_gating(jax.random.PRNGKey(0), 4)
    key = jax.random.PRNGKey(0)
    args = (v, loss_fn, apply_fn, params, ids)
    with pytest.raises(ValueError, match="6 rows, expected one per group"):
        gating_loss(*args, normalized[:6], (x, y), key, alpha=1.0, num_probes=1)
    with pytest.raises(ValueError, match="alpha"):
        gating_loss(*args, normalized, (x, y), key, alpha=-1.0, num_probes=1)
    with pytest.raises(ValueError, match="num_probes"):
        gating_loss(*args, normalized, (x, y), key, alpha=1.0, num_probes=0)
    with pytest.raises(ValueError, match="hessian"):
        gating_loss(*args, normalized, (x, y), key, alpha=1.0, num_probes=1, hessian="fisher")
    with pytest.raises(ValueError, match="trace_wrt"):
        gating_loss(*args, normalized, (x, y), key, alpha=1.0, num_probes=1, trace_wrt="both")


# ---------------------------------------------------------------------------------------------
# Training of v


def test_train_gating_descends_and_continues():
    params, ids, _, x, y = _problem()
    normalized = normalize_features(features(apply_fn, params, x, ids))
    v = init_gating(jax.random.PRNGKey(0), 4)
    key = jax.random.PRNGKey(1)
    run = lambda v, batches, **kw: train_gating(  # noqa: E731
        v, loss_fn, apply_fn, params, ids, normalized, batches, key, alpha=0.0, num_probes=2, **kw
    )
    whole = run(v, [(x, y)] * 25, optimizer=optax.adam(0.1))
    history = whole.history
    assert history.total.shape == history.loss.shape == history.trace.shape == (25,)
    np.testing.assert_array_equal(history.total, history.loss)  # α = 0
    assert history.loss[-1] < 0.9 * history.loss[0]
    assert np.all(np.isfinite(history.trace))
    # 20 steps, then 5 more from the returned state: the same iterates as 25 steps at once
    # (with α = 0 the probes do not matter).
    first = run(v, iter([(x, y)] * 30), num_steps=20, optimizer=optax.adam(0.1))
    rest = run(first.v, [(x, y)] * 5, optimizer=optax.adam(0.1), opt_state=first.opt_state)
    np.testing.assert_allclose(rest.history.loss, history.loss[20:], rtol=1e-6)
    for a, b in zip(rest.v, whole.v):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="yielded 2 batches, expected 5"):
        run(v, [(x, y)] * 2, num_steps=5)
    with pytest.raises(ValueError, match="yielded 0 batches"):
        run(v, [])


def _scaled_apply(scale, params, x):
    return scale * MODEL.apply(params, x)


def _scaled_loss(scale, params, batch):
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((_scaled_apply(scale, params, x) - y) ** 2, axis=-1))


def test_bound_state_is_traced_not_baked_into_compiled_code():
    # The engine binds model state (BatchNorm statistics, gates) with jax.tree_util.Partial so
    # that one compilation serves every event.  A second call with other bound values must
    # compute with those values (not reuse the first call's as constants) and not recompile;
    # reference: plain closures over each value, compiled afresh.
    from jax.tree_util import Partial

    from jaxprune.spectra import ntk

    params, ids, _, x, y = _problem()
    key = jax.random.PRNGKey(1)
    v = _random_v(hidden=4)
    objective_before = pl_objective._objective_value_and_grad._cache_size()
    kernels_before = ntk._build_block.cache_info().currsize
    for scale in (1.0, 3.0):
        bound = jnp.float32(scale)
        got = features(Partial(_scaled_apply, bound), params, x, ids)
        want = features(lambda p, x, s=bound: _scaled_apply(s, p, x), params, x, ids)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-5)
        normalized = normalize_features(got)
        trained = train_gating(
            v, Partial(_scaled_loss, bound), Partial(_scaled_apply, bound),
            params, ids, normalized, [(x, y)] * 3, key, num_probes=2,
        )  # fmt: skip
        reference = train_gating(
            v, lambda p, b, s=bound: _scaled_loss(s, p, b),
            lambda p, x, s=bound: _scaled_apply(s, p, x),
            params, ids, normalized, [(x, y)] * 3, key, num_probes=2,
        )  # fmt: skip
        np.testing.assert_allclose(trained.history.total, reference.history.total, rtol=1e-5)
        for a, b in zip(trained.v, reference.v):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # One compilation each for the Partial (both scales) and one per closure.
    assert pl_objective._objective_value_and_grad._cache_size() == objective_before + 3
    assert ntk._build_block.cache_info().currsize == kernels_before + 3


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
    params, ids, layout, x, y = _problem()
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
    params, ids, layout, x, _ = _problem()
    with pytest.raises(ValueError, match="ratio"):
        prune(jax.random.PRNGKey(0), loss_fn, apply_fn, params, ids, layout, x, [], ratio, CONFIG)


def test_prune_rejects_bad_setups_before_any_work():
    params, ids, layout, x, y = _problem()
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
    params, *_ = _problem()
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


# ---------------------------------------------------------------------------------------------
# The objective's options as one object; the deprecated sketch alias


def test_gating_objective_is_validated_once_and_equals_its_keywords():
    params, ids, _, x, y = _problem()
    normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2))
    v = _random_v()
    args = (v, loss_fn, apply_fn, params, ids, normalized, (x, y), jax.random.PRNGKey(5))
    options = {"alpha": 0.7, "num_probes": 2, "scaling": "softmax", "hessian": "loss"}
    objective = GatingObjective(**options)
    np.testing.assert_array_equal(
        gating_loss(*args, objective=objective), gating_loss(*args, **options)
    )
    with pytest.raises(TypeError, match="objective: pass either"):
        gating_loss(*args, objective=objective, alpha=1.0)
    with pytest.raises(TypeError, match="objective: expected a GatingObjective"):
        gating_loss(*args, objective=options)
    with pytest.raises(ValueError, match="alpha"):
        GatingObjective(alpha=-1.0)
    with pytest.raises(TypeError, match="inputs_of"):
        GatingObjective(inputs_of=0)
    config = PLGatingConfig(alpha=2, num_probes=3, scaling="softmax", trace_wrt="weights")
    assert config.objective == GatingObjective(2.0, 3, "softmax", "outputs", "weights")
    assert isinstance(config.objective.alpha, float)


def test_alpha_is_traced_the_other_options_are_static():
    params, ids, _, x, y = _problem()
    normalized = normalize_features(features(apply_fn, params, x, ids))
    v = init_gating(jax.random.PRNGKey(0), 3)
    objective = GatingObjective(alpha=0.5, num_probes=3)
    leaves, treedef = jax.tree_util.tree_flatten(objective)
    assert leaves == [0.5]
    assert jax.tree_util.tree_unflatten(treedef, leaves) == objective
    before = pl_objective._objective_value_and_grad._cache_size()
    for alpha in (0.5, 2.0):
        train_gating(
            v, loss_fn, apply_fn, params, ids, normalized, [(x, y)], jax.random.PRNGKey(1),
            objective=GatingObjective(alpha=alpha, num_probes=3),
        )  # fmt: skip
    assert pl_objective._objective_value_and_grad._cache_size() == before + 1


def test_deprecated_sketch_outputs_alias_forwards_to_spectra():
    basis = jnp.eye(6).reshape(6, 2, 3)
    key = jax.random.PRNGKey(0)
    with pytest.warns(DeprecationWarning, match=r"jaxprune\.spectra\.sketch_outputs"):
        old = pl_gating.sketch_outputs(lambda p, x: x, {}, basis, key, 8)
    new = sketch_outputs(lambda p, x: x, {}, basis, key, 8)
    np.testing.assert_array_equal(old({}, basis), new({}, basis))
