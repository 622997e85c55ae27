"""Tests of jaxprune.methods.pl_gating.features (Chen et al. (2023), Sec. 3.2.2, eq. 7).

Features are checked against brute-force per-group kernels (``jax.jacobian``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import brute_force_group_kernels
from pl_problem import apply_fn, problem

from jaxprune.methods.pl_gating import (
    GroupFeatures,
    features,
    normalize_features,
)
from jaxprune.models import MLP, mlp
from jaxprune.spectra.spectrum import spectrum_features

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
        ids, _ = mlp.group_ids(params, model)
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
    params, ids, _, x, _ = problem()
    with pytest.raises(ValueError, match="at least 2 examples"):
        features(apply_fn, params, x[:1], ids)
    with pytest.raises(ValueError, match="key: required"):
        features(apply_fn, params, x, ids, output_projections=8)
    with pytest.raises(ValueError, match="backend"):
        features(apply_fn, params, x, ids, backend="magic")
    with pytest.raises(ValueError, match="lambda_min"):
        features(apply_fn, params, x, ids, lambda_min="min")


def test_sketched_features_approximate_exact_ones():
    params, ids, _, x, _ = problem()
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
    ids, _ = mlp.group_ids(params, model)
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
        dead=lambda_max <= 4 * np.finfo(np.float32).eps * lambda_max.max(),
    )


def test_normalized_features_are_finite_for_zero_and_constant_features():
    zero_group = _synthetic([1e-3, 0.0, 2e-2, 0.0], [1.0, 2.0, 3.0, 0.0], [0.5, 0.7, 0.9, 0.0])
    out = np.asarray(normalize_features(zero_group))
    assert np.all(np.isfinite(out))
    # The dead group (no kernel) is left out of the statistics and gets the live groups' mean.
    np.testing.assert_array_equal(out[3], 0.0)
    np.testing.assert_allclose(out[:3].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(out[:3].std(axis=0), 1.0, rtol=1e-5)
    assert out[1, 0] < out[0, 0] < out[2, 0]  # unresolved < resolved
    constant = _synthetic([0.3] * 3, [1.0] * 3, [0.8] * 3)
    np.testing.assert_array_equal(normalize_features(constant), 0.0)
    all_zero = _synthetic([0.0] * 3, [0.0] * 3, [0.0] * 3)
    np.testing.assert_array_equal(normalize_features(all_zero), 0.0)
    single = _synthetic([0.3], [1.0], [0.8])
    np.testing.assert_array_equal(normalize_features(single), 0.0)
    with pytest.raises(TypeError, match="GroupFeatures"):
        normalize_features((1.0, 2.0))


def test_normalization_within_layers_standardizes_each_layer_on_its_own():
    from jaxprune.masks.layout import GroupLayout

    layout = GroupLayout.from_sizes(("a", "b"), (3, 2))
    # Layer b's kernels are 100x layer a's: globally it dominates the λ_min column.
    feats = _synthetic(
        [1e-3, 2e-3, 4e-3, 0.1, 0.3], [1.0, 1.0, 1.0, 100.0, 100.0], [0.2, 0.4, 0.9, 0.5, 0.6]
    )
    within = np.asarray(normalize_features(feats, layout, within="layer"))
    for rows in (slice(0, 3), slice(3, 5)):
        np.testing.assert_allclose(within[rows].mean(axis=0), 0.0, atol=1e-6)
        np.testing.assert_allclose(within[rows].std(axis=0), 1.0, rtol=1e-5)
    across = np.asarray(normalize_features(feats))
    assert np.all(across[3:, 0] > across[:3, 0].max())
    assert not np.allclose(within, across)
    with pytest.raises(TypeError, match="layout"):
        normalize_features(feats, within="layer")
    with pytest.raises(ValueError, match="within"):
        normalize_features(feats, layout, within="model")


def test_a_dead_neuron_is_flagged_and_pruned_first():
    from jaxprune.methods.pl_gating import PLGatingConfig, prune

    model = MLP(hidden=(4, 3), num_outputs=2)  # ReLU
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    y = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    params = model.init(jax.random.PRNGKey(2), x)
    first = params["params"]["Dense_0"]
    # Neuron 1 of the first layer never activates on these inputs: its kernel is zero.
    first["kernel"] = first["kernel"].at[:, 1].set(0.0)
    first["bias"] = first["bias"].at[1].set(-1.0)
    ids, layout = mlp.group_ids(params, model)
    feats = features(model.apply, params, x, ids)
    np.testing.assert_array_equal(feats.dead, [False, True, False, False, False, False, False])

    def loss(p, batch):
        return 0.5 * jnp.mean(jnp.sum((model.apply(p, batch[0]) - batch[1]) ** 2, axis=-1))

    config = PLGatingConfig(hidden=3, gating_steps=2, num_probes=2, feature_batch_size=8)
    event = prune(
        jax.random.PRNGKey(3), loss, model.apply, params, ids, layout, x, [(x, y)] * 2, 2 / 7,
        config,
    )  # fmt: skip
    assert event.mask[1] == 0 and event.mask.sum() == 5
    assert event.objective.hessian == "loss"  # ReLU, no split_loss: "auto" takes the loss Hessian
