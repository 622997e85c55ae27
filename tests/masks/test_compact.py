"""Compacted networks compute what the masked ones do, with fewer parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.masks.compact import Link, compact, keep_along
from jaxprune.models import MLP


def _count(tree):
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def _zero_units(variables, path, keep, *, batchnorm=None):
    """Reference masking by hand: zero the pruned units' kernel slices, biases and BN affine."""
    out = jax.tree_util.tree_map(lambda a: a, variables)
    layer = out["params"][path]
    layer["kernel"] = layer["kernel"] * keep
    layer["bias"] = layer["bias"] * keep
    if batchnorm is not None:
        for name in ("scale", "bias"):
            out["params"][batchnorm][name] = out["params"][batchnorm][name] * keep
    return out


def test_mlp_compaction_equals_masking():
    model = MLP(hidden=(6, 5), num_outputs=3)
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 4))
    variables = model.init(jax.random.PRNGKey(1), x)
    keep = {
        "params/Dense_0": np.array([1, 0, 1, 1, 0, 1], bool),
        "params/Dense_1": np.array([0, 1, 1, 0, 1], bool),
    }
    masked = variables
    for path, mask in keep.items():
        masked = _zero_units(masked, path.split("/")[1], mask)
    links = [
        Link("params/Dense_0", next_layer="params/Dense_1"),
        Link("params/Dense_1", next_layer="params/Dense_2"),
    ]
    small = compact(variables, links, keep)
    small_model = MLP(hidden=(4, 3), num_outputs=3)
    np.testing.assert_allclose(
        small_model.apply(small, x), model.apply(masked, x), rtol=1e-6, atol=1e-6
    )
    # Dense_0 loses 2 columns of 4 + 2 biases; Dense_1 loses 2 rows of 5 (from Dense_0) and then
    # 2 of its 5 columns (of the 4 remaining rows) + 2 biases; Dense_2 loses 2 rows of 3.
    expected = _count(variables) - (2 * 4 + 2) - (2 * 5 + 2 * 4 + 2) - 2 * 3
    assert _count(small) == expected


class ConvBN(nn.Module):
    """Conv-BatchNorm-ReLU, strided Conv-ReLU, flatten, Dense."""

    widths: tuple[int, int] = (4, 5)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.widths[0], (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = jax.nn.relu(x)
        x = nn.Conv(self.widths[1], (3, 3), strides=(2, 2))(x)
        x = jax.nn.relu(x)
        return nn.Dense(2)(x.reshape(x.shape[0], -1))


def test_heads_hook_slices_every_leaf_of_a_head():
    from conftest import make_heads

    model, params, x = make_heads(jnp.float32)
    keep = np.array([False, True])
    targets = [
        ("params/query/kernel", 1),
        ("params/query/bias", 0),
        ("params/value/kernel", 1),
        ("params/value/bias", 0),
        ("params/out/kernel", 0),
    ]
    small = keep_along(params, targets, keep)
    masked = jax.tree_util.tree_map(lambda a: a, params)
    for name in ("query", "value"):
        masked["params"][name]["kernel"] = masked["params"][name]["kernel"] * keep[None, :, None]
        masked["params"][name]["bias"] = masked["params"][name]["bias"] * keep[:, None]
    masked["params"]["out"]["kernel"] = masked["params"]["out"]["kernel"] * keep[:, None, None]
    smaller = type(model)(heads=1)
    np.testing.assert_allclose(
        smaller.apply(small, x), model.apply(masked, x), rtol=1e-5, atol=1e-6
    )


def test_cnn_with_batchnorm_and_flatten_compaction_equals_masking():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 2))
    variables = ConvBN().init(jax.random.PRNGKey(1), x)
    # Non-trivial running statistics, so that BatchNorm really shifts and scales.
    variables["batch_stats"]["BatchNorm_0"]["mean"] = jnp.linspace(-0.5, 0.5, 4)
    variables["batch_stats"]["BatchNorm_0"]["var"] = jnp.linspace(0.5, 2.0, 4)
    keep = {
        "params/Conv_0": np.array([1, 0, 1, 1], bool),
        "params/Conv_1": np.array([0, 1, 1, 0, 1], bool),
    }
    masked = _zero_units(variables, "Conv_0", keep["params/Conv_0"], batchnorm="BatchNorm_0")
    masked = _zero_units(masked, "Conv_1", keep["params/Conv_1"])
    links = [
        Link("params/Conv_0", next_layer="params/Conv_1", batchnorm="BatchNorm_0"),
        Link("params/Conv_1", next_layer="params/Dense_0", positions=3 * 3),
    ]
    small = compact(variables, links, keep)
    out = ConvBN((3, 3)).apply(small, x)
    np.testing.assert_allclose(out, ConvBN().apply(masked, x), rtol=1e-5, atol=1e-6)
    assert small["batch_stats"]["BatchNorm_0"]["mean"].shape == (3,)
    assert small["params"]["Dense_0"]["kernel"].shape == (9 * 3, 2)


class TestErrors:
    def setup_method(self):
        model = MLP(hidden=(3,), num_outputs=2)
        self.variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 2)))
        self.links = [Link("params/Dense_0", next_layer="params/Dense_1")]

    def test_wrong_length(self):
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            compact(self.variables, self.links, {"params/Dense_0": np.ones(4, bool)})

    def test_keeps_nothing(self):
        with pytest.raises(ValueError, match="keeps no unit"):
            compact(self.variables, self.links, {"params/Dense_0": np.zeros(3, bool)})

    def test_unknown_layer(self):
        with pytest.raises(ValueError, match="not in links"):
            compact(self.variables, self.links, {"params/Dense_9": np.ones(3, bool)})

    def test_missing_path(self):
        with pytest.raises(ValueError, match="Dense_7"):
            compact(self.variables, [Link("params/Dense_7")], {"params/Dense_7": np.ones(3, bool)})

    def test_missing_batchnorm(self):
        links = [Link("params/Dense_0", batchnorm="block/bn")]
        with pytest.raises(ValueError, match="block/bn"):
            compact(self.variables, links, {"params/Dense_0": np.ones(3, bool)})

    def test_positions_mismatch(self):
        links = [Link("params/Dense_0", next_layer="params/Dense_1", positions=2)]
        with pytest.raises(
            ValueError,
            match=r"Dense_1/kernel: axis -2 has length 3, expected 3 units x 2 positions",
        ):
            compact(self.variables, links, {"params/Dense_0": np.ones(3, bool)})
