"""Tests of jaxprune.methods.pl_gating.gating, the gating network of Chen et al. (2023), eq. 8."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pl_problem import random_v

from jaxprune.methods.pl_gating import (
    gate,
    init_gating,
)

# ---------------------------------------------------------------------------------------------
# Gating network


def test_gates_are_a_distribution_over_groups():
    d = jax.random.normal(jax.random.PRNGKey(0), (7, 2))
    uniform = init_gating(jax.random.PRNGKey(1), 5)
    np.testing.assert_allclose(gate(uniform, d), np.ones(7), rtol=1e-6)
    np.testing.assert_allclose(gate(uniform, d, scaling="softmax"), np.full(7, 1 / 7), rtol=1e-6)
    v = random_v()
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
