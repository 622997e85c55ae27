"""The group-id format: validation, sizes, the Dense-neuron constructor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mlp

from jaxprune.group_ids import (
    dense_neuron_group_ids,
    group_sizes,
    num_groups,
    validate_group_ids,
)


def test_dense_neurons_number_units_layer_by_layer():
    _, params, _ = make_mlp(jnp.float32)
    ids = dense_neuron_group_ids(params)
    assert validate_group_ids(params, ids) == 7 + 5 + 3 == num_groups(ids)
    p = ids["params"]
    np.testing.assert_array_equal(p["Dense_1"]["kernel"], np.arange(7, 12)[None, :])
    np.testing.assert_array_equal(p["Dense_1"]["bias"], np.arange(7, 12))
    # A neuron's group holds its kernel column (fan-in) and its bias.
    np.testing.assert_array_equal(group_sizes(params, ids), [4 + 1] * 7 + [7 + 1] * 5 + [5 + 1] * 3)


def test_include_selects_layers():
    _, params, _ = make_mlp(jnp.float32)
    ids = dense_neuron_group_ids(params, include=lambda layer: "Dense_2" not in layer)
    assert num_groups(ids) == 12
    assert np.all(ids["params"]["Dense_2"]["kernel"] == -1)


def test_no_dense_layers_is_an_error():
    with pytest.raises(ValueError, match="no 2-D 'kernel'"):
        dense_neuron_group_ids({"w": jnp.ones(3)})


def test_all_ungrouped_is_an_error():
    _, params, _ = make_mlp(jnp.float32)
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    with pytest.raises(ValueError, match="every weight is ungrouped"):
        validate_group_ids(params, ids)


def test_traced_ids_are_rejected():
    _, params, _ = make_mlp(jnp.float32)
    ids = dense_neuron_group_ids(params)

    @jax.jit
    def traced(ids):
        return validate_group_ids(params, ids)

    with pytest.raises(TypeError, match="concrete"):
        traced(ids)
