"""The gating objective carries signal: the output-Hessian trace of eq. 36 (Chen et al. (2023),
App. E.2) is identically zero on piecewise-linear networks, the default target is the loss
Hessian there, and the normalized objective makes ``α`` change the gradient's direction.
Also: the seed fixes the mask; ``hessian="auto"`` on the zoo's transformers (``"outputs"``) and
ReLU MLP (``"gauss_newton"``); direct ``gating_loss``/``train_gating`` calls with
``hessian="outputs"`` warn where ``Tr(H_f)`` vanishes.

References are ``jax.hessian`` on tiny models, second derivatives along one coordinate and
central differences in float64.
"""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.flatten_util
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
from jaxprune.models.mlp import group_ids as mlp_groups
from jaxprune.spectra import SplitLoss, sample_output_hessian_diagonal
from jaxprune.train import PruneContext, build_model, make_pruner


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


def _dict_loss(params, batch):
    return loss_fn(params, (batch["x"], batch["y"]))


_DICT_SPLIT = SplitLoss(
    lambda params, batch: apply_fn(params, batch["x"]),
    lambda outputs, batch: 0.5 * jnp.mean(jnp.sum((outputs - batch["y"]) ** 2, axis=-1)),
)


def _pl_event(seed):
    """One PL-gating event of the registry's ``"pl"`` pruner (the engine's path: ``v`` from
    ``initial_state`` of the run's method key, then ``select``) on the tiny tanh MLP, keeping 4
    of its 7 neurons after 2 gating steps of 4 probes (the Gauss-Newton trace: the cheapest to
    compile); everything drawn follows ``seed``."""
    params, ids, layout, x, y = problem(n=8)
    keys = jax.random.split(jax.random.key(seed), 3)
    order = jax.random.permutation(keys[0], 8)

    def batches(n):  # the event's data, in an order of the seed
        return [{"x": x[order], "y": y[order]} for _ in range(n)]

    context = PruneContext(
        step=2, ratio=3 / 7, num_keep=4, params=params, collections={},
        gates=np.ones(7, np.float32), group_ids=ids, layout=layout, key=keys[1],
        loss_fn=_dict_loss, apply_fn=apply_fn, batches=batches, split_loss=_DICT_SPLIT,
    )  # fmt: skip
    pruner = make_pruner(
        "pl", one_shot(2, 3 / 7), gating_steps=2, feature_batch_size=6, hidden=4,
        hessian="gauss_newton",
    )  # fmt: skip
    v0 = pruner.initial_state(keys[2])
    mask, v, record = pruner.select(context, v0)
    return mask, v0, v, record


def test_same_seed_gives_the_same_pl_mask_and_another_seed_other_gates():
    """The seed fixes everything PL gating draws (v's initialization, the batches' order, the
    probes): two events of seed 0 agree bit for bit; seed 1 starts from another v and trains
    other gates."""
    mask, v0, v, record = _pl_event(0)
    mask_again, v0_again, v_again, record_again = _pl_event(0)
    assert mask.sum() == 4 and set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask, mask_again)
    for name in ("gates", "history_total", "history_trace", "history_trace_stderr"):
        np.testing.assert_array_equal(record[name], record_again[name], err_msg=name)
    for left, right in zip((*v0, *v), (*v0_again, *v_again)):
        np.testing.assert_array_equal(left, right)
    # Another seed: another v to start from and other probes, so other soft gates (the mask
    # itself may agree: 4 of 7 neurons).
    _, v0_other, _, record_other = _pl_event(1)
    assert not np.allclose(v0.w1, v0_other.w1)
    assert not np.allclose(record["gates"], record_other["gates"])
    assert record["history_trace"][0] != record_other["history_trace"][0]


# ---------------------------------------------------------------------------------------------
# hessian="auto" on the zoo's models


def _zoo(name):
    """``(apply, params, x)`` of the zoo's smallest ``name`` (the default ``"tiny"`` preset for
    BERT and Switch, a 3-8-2 ReLU MLP) in evaluation mode, as the engine's events see it."""
    if name == "mlp":
        model = build_model("mlp", num_outputs=2, input_shape=(3,), preset="8")
        x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    else:
        model = build_model(name, num_outputs=32, input_shape=(6,))
        x = jax.random.randint(jax.random.PRNGKey(0), (2, 6), 0, 32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x)["params"]  # one compilation

    def apply(params, x):
        return model.apply({"params": params}, x, train=False)[0]

    return apply, params, x


def _second_derivative(apply, params, x, leaf, index):
    """``∂² Σ f / ∂w_i²`` at one coordinate ``index`` of the leaf at path ``leaf``: the second
    derivative of a function of one real variable (forward over forward mode), a reference
    apart from the Hessian-vector products of the sampled diagonal."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    offsets = {}
    position = 0
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        offsets[jax.tree_util.keystr(path)] = position
        position += value.size
    coordinate = offsets[leaf] + index

    def along(t):
        return jnp.sum(apply(unravel(flat.at[coordinate].add(t)), x))

    return float(jax.jit(jax.jacfwd(jax.jacfwd(along)))(0.0))


def _leaf_path(params, *parts):
    """The ``keystr`` of the first leaf whose path contains every string of ``parts``."""
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        text = jax.tree_util.keystr(path)
        if all(part in text for part in parts):
            return text
    raise AssertionError(f"no leaf with {parts} in {jax.tree_util.tree_structure(params)}")


@pytest.mark.parametrize("name", ["bert", "switch"])
def test_auto_resolves_to_the_output_hessian_on_the_zoo_transformers(name):
    apply, params, x = _zoo(name)
    # The reference: a query-kernel coordinate has a nonzero second derivative (softmax
    # attention, GELU and LayerNorm are smooth), so Tr(H_f) is not identically zero.
    query = _leaf_path(params, "query", "kernel")
    assert abs(_second_derivative(apply, params, x, query, 0)) > 1e-6
    split = SplitLoss(apply, lambda outputs, batch: jnp.mean(outputs**2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "identically zero" warning either
        assert resolve_hessian("auto", apply, params, x, jax.random.PRNGKey(4)) == "outputs"
        auto = resolve_hessian("auto", apply, params, x, jax.random.PRNGKey(4), split_loss=split)
        assert auto == "outputs"
        assert resolve_hessian("outputs", apply, params, x, jax.random.PRNGKey(4)) == "outputs"


def test_auto_resolves_to_gauss_newton_on_the_zoo_relu_mlp_with_a_split_loss():
    apply, params, x = _zoo("mlp")
    # The reference: every coordinate's second derivative is exactly 0 (piecewise linear).
    for leaf in (_leaf_path(params, "kernel"), _leaf_path(params, "bias")):
        assert _second_derivative(apply, params, x, leaf, 1) == 0.0
    split = SplitLoss(apply, lambda outputs, batch: jnp.mean(outputs**2))
    key = jax.random.PRNGKey(4)
    assert resolve_hessian("auto", apply, params, x, key, split_loss=split) == "gauss_newton"
    assert resolve_hessian("auto", apply, params, x, key) == "loss"  # no split loss
    with pytest.warns(UserWarning, match="identically zero"):
        assert resolve_hessian("outputs", apply, params, x, key, split_loss=split) == "outputs"


# ---------------------------------------------------------------------------------------------
# Direct calls with hessian="outputs" check for a vanishing Tr(H_f)


def _direct_problem(activation):
    """A 3-4-3-2 MLP with ``activation``, its 7 neuron groups, features and a regression batch."""
    model = MLP(hidden=(4, 3), num_outputs=2, activation=activation)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
    y = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    params = model.init(jax.random.PRNGKey(2), x)
    ids, _ = mlp_groups(params, model)

    def apply(params, x):
        return model.apply(params, x)

    def loss(params, batch):
        return 0.5 * jnp.mean(jnp.sum((apply(params, batch[0]) - batch[1]) ** 2, axis=-1))

    normalized = jax.random.normal(jax.random.PRNGKey(8), (7, 2))
    return apply, loss, params, ids, normalized, (x, y)


def _vanishing_warnings(record):
    return [w for w in record if "Tr(H_f) is identically zero" in str(w.message)]


def test_direct_calls_with_output_hessian_warn_once_on_relu_and_not_on_tanh():
    for activation, expected in ((jax.nn.relu, 1), (jnp.tanh, 0)):
        apply, loss, params, ids, normalized, batch = _direct_problem(activation)
        args = (loss, apply, params, ids, normalized)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            value = gating_loss(
                random_v(), *args, batch, jax.random.PRNGKey(5), hessian="outputs", num_probes=2
            )
        assert np.isfinite(value)
        assert len(_vanishing_warnings(record)) == expected, activation
        # train_gating: the check runs once per call (before the first step), not per step.
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            trained = train_gating(
                init_gating(jax.random.PRNGKey(0), 5), *args, [batch] * 3,
                jax.random.PRNGKey(1), hessian="outputs", num_probes=2, normalize=False,
            )  # fmt: skip
        assert trained.history.trace.shape == (3,)
        vanishing = _vanishing_warnings(record)
        assert len(vanishing) == expected, activation
        assert all(w.filename == __file__ for w in vanishing)  # points at the caller
        # Other targets are not checked; nor is prune's call (resolve_hessian checked there).
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            gating_loss(random_v(), *args, batch, jax.random.PRNGKey(5), num_probes=2)
            train_gating(
                init_gating(jax.random.PRNGKey(0), 5), *args, [batch], jax.random.PRNGKey(1),
                hessian="outputs", num_probes=2, normalize=False, check_hessian=False,
            )  # fmt: skip
        assert not _vanishing_warnings(record)


def test_the_direct_check_runs_under_a_jit_over_v_skips_a_jit_over_params_and_validates():
    apply, loss, params, ids, normalized, batch = _direct_problem(jax.nn.relu)

    def value(v, params):
        return gating_loss(
            v, loss, apply, params, ids, normalized, batch, jax.random.PRNGKey(5),
            hessian="outputs", num_probes=2,
        )  # fmt: skip

    # The model closed over, v traced: the check runs on concrete values while tracing.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert np.isfinite(jax.jit(lambda v: value(v, params))(random_v()))
    assert len(_vanishing_warnings(record)) == 1
    # params traced: the exact diagonal needs concrete values, so no check (and no error).
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert np.isfinite(jax.jit(value)(random_v(), params))
    assert not _vanishing_warnings(record)
    with pytest.raises(TypeError, match="check_hessian: expected a bool"):
        train_gating(
            init_gating(jax.random.PRNGKey(0), 5), loss, apply, params, ids, normalized,
            [batch], jax.random.PRNGKey(1), check_hessian="yes",
        )  # fmt: skip
