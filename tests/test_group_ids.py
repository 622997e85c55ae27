"""The group-id format: validation and group sizes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_mlp

from jaxprune.group_ids import group_sizes, num_groups, validate_group_ids
from jaxprune.masks.groups import build_group_ids, neurons


def test_sizes_of_neuron_groups():
    _, params, _ = make_mlp(jnp.float32)
    ids, _ = build_group_ids(params, neurons(r"Dense_\d+$"))
    assert validate_group_ids(params, ids) == 7 + 5 + 3 == num_groups(ids)
    # A neuron's group holds its kernel column (fan-in) and its bias.
    np.testing.assert_array_equal(group_sizes(params, ids), [4 + 1] * 7 + [7 + 1] * 5 + [5 + 1] * 3)


def test_all_ungrouped_is_an_error():
    _, params, _ = make_mlp(jnp.float32)
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    with pytest.raises(ValueError, match="every weight is ungrouped"):
        validate_group_ids(params, ids)


def test_traced_ids_are_rejected():
    _, params, _ = make_mlp(jnp.float32)
    ids, _ = build_group_ids(params, neurons(r"Dense_\d+$"))

    @jax.jit
    def traced(ids):
        return validate_group_ids(params, ids)

    with pytest.raises(TypeError, match="concrete"):
        traced(ids)
