"""MLP: gates ≡ group masks ≡ compaction, FLOPs, presets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.masks.mask import apply_group_mask
from jaxprune.models.mlp import MLP, compact, flops, from_preset, group_ids


@pytest.fixture
def setup():
    model = MLP(hidden=(6, 5, 4), num_outputs=3, activation=jnp.tanh)
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 2, 2))
    variables = model.init(jax.random.PRNGKey(1), x)
    return model, variables, x


def test_gate_zero_equals_group_mask_equals_compaction(setup):
    model, variables, x = setup
    ids, layout = group_ids(variables, model)
    assert layout.num_groups == 15 and layout.num_layers == 3
    keep = np.ones(15, bool)
    keep[[0, 3, 7, 8, 14]] = False
    gates = jnp.asarray(keep, jnp.float32)
    gated = model.apply(variables, x, neuron_gates=gates)
    masked = model.apply(apply_group_mask(variables, ids, gates), x)
    small, small_model = compact(variables, model, keep)
    assert small_model.hidden == (4, 3, 3)
    np.testing.assert_allclose(gated, masked, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(small_model.apply(small, x), gated, rtol=1e-5, atol=1e-6)
    assert not np.allclose(gated, model.apply(variables, x))


def test_gates_are_differentiable(setup):
    model, variables, x = setup

    def total(g):
        return jnp.sum(model.apply(variables, x, neuron_gates=g) ** 2)

    g = jnp.full(15, 0.7)
    grad = jax.grad(total)(g)
    e = np.zeros(15)
    e[4] = 1e-3
    fd = (total(g + e) - total(g - e)) / 2e-3
    np.testing.assert_allclose(grad[4], fd, rtol=1e-2)


def test_flops_and_presets():
    assert flops(MLP(hidden=(300, 100), num_outputs=10), (784,)) == 2 * (
        784 * 300 + 300 * 100 + 100 * 10
    )
    assert from_preset("lenet-300-100").hidden == (300, 100)
    with pytest.raises(ValueError, match="digits"):
        from_preset("nope")


def test_bad_arguments(setup):
    model, variables, x = setup
    with pytest.raises(ValueError, match="neuron_gates"):
        model.apply(variables, x, neuron_gates=jnp.ones(3))
    with pytest.raises(ValueError, match="keep"):
        compact(variables, model, np.ones(4, bool))
    with pytest.raises(ValueError, match="widths must be >= 1"):
        MLP(hidden=(0,), num_outputs=2).init(jax.random.PRNGKey(0), x)


def test_bfloat16_compute(setup):
    model, variables, x = setup
    out = MLP(hidden=(6, 5, 4), num_outputs=3, activation=jnp.tanh, dtype=jnp.bfloat16).apply(
        variables, x
    )
    assert out.dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits (relative round-off 2^-8 ≈ 0.4 % per operation); four layers of
    # sums stay within a few percent, while a wrong computation would be off by O(1).
    np.testing.assert_allclose(
        np.asarray(out, np.float32), model.apply(variables, x), rtol=0.05, atol=0.02
    )
