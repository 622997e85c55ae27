"""Tests of jaxprune.methods.pl_gating.objective (Chen et al. (2023), App. E.2, eq. 36).

The gradient of the gating objective is checked against central differences in float64 with
fixed Hutchinson probes; its trace term against explicit Hessians within 5 theoretical standard
deviations (``Var(vᵀ H v) = 2 ‖H‖_F²`` for Gaussian probes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import explicit_hessian
from pl_problem import MODEL, SPLIT_LOSS, apply_fn, loss_fn, problem, random_v

from jaxprune.masks.mask import apply_group_mask
from jaxprune.methods.pl_gating import (
    GatingObjective,
    GatingParams,
    PLGatingConfig,
    features,
    gate,
    gating_loss,
    init_gating,
    normalize_features,
    train_gating,
)
from jaxprune.methods.pl_gating import objective as pl_objective

SIGMAS = 5.0


# ---------------------------------------------------------------------------------------------
# Objective (eq. 36)


@pytest.mark.parametrize(
    ("scaling", "hessian", "trace_wrt"),
    [
        ("mean_one", "outputs", "gated"),
        ("softmax", "loss", "weights"),
        ("mean_one", "gauss_newton", "gated"),
    ],
)
def test_gating_loss_gradient_matches_central_differences(scaling, hessian, trace_wrt):
    with jax.enable_x64(True):
        params, ids, _, x, y = problem(jnp.float64)
        normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2), jnp.float64)
        v = random_v(jnp.float64)
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
                split_loss=SPLIT_LOSS,
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
    ("hessian", "trace_wrt"),
    [
        ("outputs", "gated"),
        ("outputs", "weights"),
        ("loss", "gated"),
        ("gauss_newton", "gated"),
        ("gauss_newton", "weights"),
    ],
)
def test_gating_loss_trace_term_estimates_the_exact_trace(hessian, trace_wrt):
    params, ids, _, x, y = problem()
    normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2))
    v = random_v()
    gates = gate(v, normalized)
    gated = apply_group_mask(params, ids, gates)
    if hessian == "outputs" and trace_wrt == "gated":
        matrix = explicit_hessian(lambda u: jnp.sum(apply_fn(u, x)), gated)
    elif hessian == "outputs":
        matrix = explicit_hessian(
            lambda w: jnp.sum(apply_fn(apply_group_mask(w, ids, gates), x)), params
        )
    elif hessian == "loss":
        matrix = explicit_hessian(lambda u: loss_fn(u, (x, y)), gated)
    else:  # the Hessian of the loss of the network linearized at the evaluation point
        point = gated if trace_wrt == "gated" else params
        mask = (
            (lambda u: u) if trace_wrt == "gated" else (lambda w: apply_group_mask(w, ids, gates))
        )
        outputs, tangent_outputs = jax.linearize(lambda u: apply_fn(mask(u), x), point)

        def linearized_loss(u):
            shift = jax.tree_util.tree_map(jnp.subtract, u, point)
            return SPLIT_LOSS.output_loss(outputs + tangent_outputs(shift), (x, y))

        matrix = explicit_hessian(linearized_loss, point)
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
            split_loss=SPLIT_LOSS,
        )
    )(v)
    estimate = float(value - loss_fn(gated, (x, y)))
    sym = (matrix + matrix.T) / 2
    sigma = np.sqrt(2 * np.sum(sym**2) / num_probes)
    assert abs(estimate - np.trace(matrix)) <= SIGMAS * sigma + 1e-4 * abs(np.trace(matrix))


def test_gating_loss_rejects_bad_arguments():
    params, ids, _, x, y = problem()
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
    with pytest.raises(ValueError, match="split_loss: required when hessian='gauss_newton'"):
        gating_loss(*args, normalized, (x, y), key, num_probes=1, hessian="gauss_newton")
    with pytest.raises(
        TypeError, match=r"split_loss: expected a SplitLoss\(forward, output_loss\) or None"
    ):
        gating_loss(*args, normalized, (x, y), key, hessian="gauss_newton", split_loss=loss_fn)


# ---------------------------------------------------------------------------------------------
# Training of v


def test_train_gating_descends_and_continues():
    params, ids, _, x, y = problem()
    normalized = normalize_features(features(apply_fn, params, x, ids))
    v = init_gating(jax.random.PRNGKey(0), 4)
    key = jax.random.PRNGKey(1)
    run = lambda v, batches, **kw: train_gating(  # noqa: E731
        v, loss_fn, apply_fn, params, ids, normalized, batches, key, alpha=0.0, num_probes=2, **kw
    )
    whole = run(v, [(x, y)] * 25, optimizer=optax.adam(0.1))
    history = whole.history
    assert history.total.shape == history.loss.shape == history.trace.shape == (25,)
    assert history.trace_stderr.shape == (25,)
    # α = 0: the loss term alone, divided by the dense weights' loss.
    np.testing.assert_allclose(whole.objective.loss_scale, loss_fn(params, (x, y)), rtol=1e-6)
    np.testing.assert_allclose(history.total, history.loss / whole.objective.loss_scale, rtol=1e-6)
    assert history.loss[-1] < 0.9 * history.loss[0]
    assert np.all(np.isfinite(history.trace))
    # 20 steps, then 5 more from the returned state and objective (its scales kept): the same
    # iterates as 25 steps at once (with α = 0 the probes do not matter).
    first = run(v, iter([(x, y)] * 30), num_steps=20, optimizer=optax.adam(0.1))
    rest = train_gating(
        first.v, loss_fn, apply_fn, params, ids, normalized, [(x, y)] * 5, key,
        objective=first.objective, normalize=False, optimizer=optax.adam(0.1),
        opt_state=first.opt_state,
    )  # fmt: skip
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

    params, ids, _, x, y = problem()
    key = jax.random.PRNGKey(1)
    v = random_v(hidden=4)
    objective_before = pl_objective._objective_value_and_grad._cache_size()
    kernels_before = ntk._build_block.cache_info().misses  # currsize stops at maxsize
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
    assert ntk._build_block.cache_info().misses == kernels_before + 3


# ---------------------------------------------------------------------------------------------
# The objective's options as one object


def test_gating_objective_is_validated_once_and_equals_its_keywords():
    params, ids, _, x, y = problem()
    normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2))
    v = random_v()
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
    assert config.objective == GatingObjective(
        alpha=2.0, num_probes=3, scaling="softmax", hessian="loss", trace_wrt="weights"
    )
    assert PLGatingConfig(hessian="outputs").objective.hessian == "outputs"
    assert isinstance(config.objective.alpha, float)
    with pytest.raises(ValueError, match="trace_scale"):
        GatingObjective(trace_scale=0.0)
    with pytest.raises(ValueError, match="distribution"):
        GatingObjective(distribution="uniform")


def test_alpha_is_traced_the_other_options_are_static():
    params, ids, _, x, y = problem()
    normalized = normalize_features(features(apply_fn, params, x, ids))
    v = init_gating(jax.random.PRNGKey(0), 3)
    objective = GatingObjective(alpha=0.5, num_probes=3, trace_scale=2.0)
    leaves, treedef = jax.tree_util.tree_flatten(objective)
    assert leaves == [0.5, 1.0, 2.0]
    assert jax.tree_util.tree_unflatten(treedef, leaves) == objective
    before = pl_objective._objective_value_and_grad._cache_size()
    for alpha in (0.5, 2.0):
        train_gating(
            v, loss_fn, apply_fn, params, ids, normalized, [(x, y)], jax.random.PRNGKey(1),
            objective=GatingObjective(alpha=alpha, num_probes=3),
        )  # fmt: skip
    assert pl_objective._objective_value_and_grad._cache_size() == before + 1
