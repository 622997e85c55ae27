"""The gating objective carries signal: the output-Hessian trace of eq. 36 (Chen et al. (2023),
App. E.2) is identically zero on piecewise-linear networks, the default target is the loss
Hessian there, and the normalized objective makes ``α`` change the gradient's direction.

References are ``jax.hessian`` on tiny models and central differences in float64.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import explicit_hessian, make_cnn
from pl_problem import apply_fn, loss_fn, problem, random_v

from jaxprune.masks import one_shot
from jaxprune.methods.pl_gating import (
    GatingObjective,
    GatingParams,
    features,
    gating_loss,
    init_gating,
    normalize_features,
    output_hessian_vanishes,
    resolve_hessian,
    train_gating,
)
from jaxprune.models import MLP
from jaxprune.spectra import SplitLoss, sample_output_hessian_diagonal
from jaxprune.train import make_pruner


class _PoolNet(nn.Module):
    """Conv + eval-mode BatchNorm + ReLU + max-pooling + Dense: piecewise linear in every weight."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.max_pool(jax.nn.relu(x), (2, 2), strides=(2, 2))
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


def _relu_mlp():
    model = MLP(hidden=(4, 3), num_outputs=2, activation=jax.nn.relu)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    return model.apply, model.init(jax.random.PRNGKey(1), x), x


def _relu_cnn():
    model, params, x = make_cnn(jnp.float32)
    return model.apply, params, x


def _pool_net():
    model = _PoolNet()
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 6, 6, 2))
    variables = model.init(jax.random.PRNGKey(3), x)
    # Non-trivial running statistics: BatchNorm is then a fixed affine map of its input.
    stats = jax.tree_util.tree_map(lambda a: a + 0.3, variables["batch_stats"])
    apply = lambda p, x: model.apply({"params": p, "batch_stats": stats}, x)  # noqa: E731
    return apply, variables["params"], x


def _smooth_mlp(activation):
    def build():
        model = MLP(hidden=(4, 3), num_outputs=2, activation=activation)
        x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
        return model.apply, model.init(jax.random.PRNGKey(1), x), x

    return build


PIECEWISE_LINEAR = {"relu_mlp": _relu_mlp, "relu_cnn": _relu_cnn, "pool_bn_cnn": _pool_net}
SMOOTH = {"tanh_mlp": _smooth_mlp(jnp.tanh), "gelu_mlp": _smooth_mlp(jax.nn.gelu)}


def _output_hessian(apply, params, x):
    return explicit_hessian(lambda p: jnp.sum(apply(p, x)), params)


@pytest.mark.parametrize("name", PIECEWISE_LINEAR)
def test_output_hessian_diagonal_and_trace_vanish_on_piecewise_linear_networks(name):
    apply, params, x = PIECEWISE_LINEAR[name]()
    hessian = _output_hessian(apply, params, x)
    assert np.abs(hessian).max() > 1e-2  # off-diagonal entries are there: H_f is not zero
    np.testing.assert_allclose(np.diag(hessian), 0.0, atol=1e-6)
    assert abs(np.trace(hessian)) < 1e-5
    sample = sample_output_hessian_diagonal(apply, params, x, jax.random.PRNGKey(4))
    np.testing.assert_allclose(sample.entries, np.diag(hessian)[sample.indices], atol=1e-6)
    assert output_hessian_vanishes(apply, params, x, jax.random.PRNGKey(4))
    with pytest.warns(UserWarning, match="identically zero"):
        assert resolve_hessian("outputs", apply, params, x, jax.random.PRNGKey(4)) == "outputs"
    assert resolve_hessian("auto", apply, params, x, jax.random.PRNGKey(4)) == "loss"
    split = SplitLoss(apply, lambda outputs, batch: jnp.sum(outputs))
    auto = resolve_hessian("auto", apply, params, x, jax.random.PRNGKey(4), split_loss=split)
    assert auto == "gauss_newton"  # the same trace here, estimated without H_f's noise


@pytest.mark.parametrize("name", SMOOTH)
def test_output_hessian_trace_is_nonzero_on_smooth_networks_and_no_warning(name):
    apply, params, x = SMOOTH[name]()
    hessian = _output_hessian(apply, params, x)
    assert abs(np.trace(hessian)) > 1e-3
    sample = sample_output_hessian_diagonal(apply, params, x, jax.random.PRNGKey(4), per_leaf=3)
    np.testing.assert_allclose(
        sample.entries, np.diag(hessian)[sample.indices], rtol=1e-4, atol=1e-6
    )
    assert not sample.vanishes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_hessian("outputs", apply, params, x, jax.random.PRNGKey(4)) == "outputs"
        assert resolve_hessian("auto", apply, params, x, jax.random.PRNGKey(4)) == "outputs"
        split = SplitLoss(apply, lambda outputs, batch: jnp.sum(outputs))
        auto = resolve_hessian("auto", apply, params, x, jax.random.PRNGKey(4), split_loss=split)
        assert auto == "outputs"
    with pytest.raises(ValueError, match="hessian"):
        resolve_hessian("fisher", apply, params, x, jax.random.PRNGKey(4))


# ---------------------------------------------------------------------------------------------
# Normalized objective


def _training(alpha, v=None, **options):
    params, ids, _, x, y = problem()
    normalized = normalize_features(features(apply_fn, params, x, ids))
    return train_gating(
        init_gating(jax.random.PRNGKey(0), 5) if v is None else v,
        loss_fn,
        apply_fn,
        params,
        ids,
        normalized,
        [(x, y)] * 2,
        jax.random.PRNGKey(1),
        alpha=alpha,
        num_probes=4,
        **options,
    )


def test_normalization_divides_by_the_dense_loss_and_trace():
    # A fresh v has uniform gates (mean one): the scales are the dense weights' loss and trace.
    params, _, _, x, y = problem()
    trained = _training(1.0, scale_probes=400)
    objective = trained.objective
    np.testing.assert_allclose(objective.loss_scale, loss_fn(params, (x, y)), rtol=1e-6)
    hessian = explicit_hessian(lambda u: loss_fn(u, (x, y)), params)
    # Rademacher probes: Var(zᵀ H z) = 2 Σ_{i≠j} H_ij²; within 5 standard errors.
    off_diagonal = hessian - np.diag(np.diag(hessian))
    sigma = np.sqrt(2 * np.sum(off_diagonal**2) / 400)
    assert abs(objective.trace_scale - abs(np.trace(hessian))) <= 5 * sigma
    history = trained.history
    np.testing.assert_allclose(
        history.total,
        history.loss / objective.loss_scale + history.trace / objective.trace_scale,
        rtol=1e-5,
    )
    assert np.all(np.isfinite(history.trace_stderr)) and np.all(history.trace_stderr > 0)
    plain = _training(1.0, normalize=False)
    assert plain.objective.loss_scale == plain.objective.trace_scale == 1.0


def test_alpha_changes_the_direction_of_the_gradient_under_normalization():
    params, ids, _, x, y = problem()
    normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2))
    scaled = _training(1.0, v=random_v()).objective
    assert scaled.trace_scale != 1.0 and scaled.loss_scale != 1.0

    def grad(alpha):
        objective = GatingObjective(
            alpha=alpha,
            num_probes=4,
            loss_scale=scaled.loss_scale,
            trace_scale=scaled.trace_scale,
        )
        g = jax.grad(gating_loss)(
            random_v(), loss_fn, apply_fn, params, ids, normalized, (x, y),
            jax.random.PRNGKey(5), objective=objective,
        )  # fmt: skip
        return np.concatenate([np.ravel(a) for a in g])

    loss_part, trace_part = grad(0.0), grad(1.0) - grad(0.0)
    for alpha in (0.1, 10.0):  # linear in α: loss gradient + α · trace gradient
        np.testing.assert_allclose(
            grad(alpha), loss_part + alpha * trace_part, rtol=1e-4, atol=1e-6
        )
    # Normalized, the two parts are of comparable size and not parallel, so α turns the
    # gradient (Adam's update depends on its direction, not on its overall scale).
    ratio = np.linalg.norm(trace_part) / np.linalg.norm(loss_part)
    assert 1e-2 < ratio < 1e2
    cosine = lambda a, b: a @ b / np.linalg.norm(a) / np.linalg.norm(b)  # noqa: E731
    assert cosine(grad(0.1), grad(10.0)) < 0.95


def test_default_objective_gradient_matches_central_differences():
    with jax.enable_x64(True):
        params, ids, _, x, y = problem(jnp.float64)
        normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2), jnp.float64)
        v = random_v(jnp.float64)
        objective = GatingObjective(loss_scale=0.8, trace_scale=3.0, num_probes=3)
        assert objective.hessian == "loss" and objective.distribution == "rademacher"

        @jax.jit
        def value(v):
            return gating_loss(
                v, loss_fn, apply_fn, params, ids, normalized, (x, y), jax.random.PRNGKey(11),
                objective=objective,
            )  # fmt: skip

        grad = jax.grad(value)(v)
        keys = jax.random.split(jax.random.PRNGKey(20), 3)
        direction = GatingParams(*(jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, v)))
        eps = 1e-5
        plus = jax.tree_util.tree_map(lambda a, d: a + eps * d, v, direction)
        minus = jax.tree_util.tree_map(lambda a, d: a - eps * d, v, direction)
        numeric = (value(plus) - value(minus)) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(grad, direction))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The gating network's initialization follows the run


def test_gating_initialization_follows_the_run_key_unless_a_seed_is_fixed():
    schedule = one_shot(1, 0.5)
    pruner = make_pruner("pl", schedule, hidden=4)
    a = pruner.initial_state(jax.random.key(0))
    again = make_pruner("pl", schedule, hidden=4).initial_state(jax.random.key(0))
    b = pruner.initial_state(jax.random.key(1))
    for left, right in zip(a, again):
        np.testing.assert_array_equal(left, right)
    assert not np.allclose(a.w1, b.w1)
    fixed = make_pruner("pl", schedule, hidden=4, seed=3)
    for left, right in zip(
        fixed.initial_state(jax.random.key(0)), fixed.initial_state(jax.random.key(1))
    ):
        np.testing.assert_array_equal(left, right)
