"""Group-id constructors: each group holds exactly the intended slices, layouts, errors."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import head_group_ids, make_cnn, make_heads, make_mlp

from jaxprune.group_ids import group_sizes, leaf_group_ids, validate_group_ids
from jaxprune.masks.groups import (
    build_group_ids,
    experts,
    filters,
    heads,
    neurons,
    unstructured,
)
from jaxprune.masks.mask import apply_group_mask

F32 = jnp.float32


# ---------------------------------------------------------------------------------------------
# Helpers and tiny models.


def _paths(tree):
    return [
        "/".join(str(k.key) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def members(params, group_ids, g):
    """{leaf path: boolean array of the weights in group g} for the leaves that hold some."""
    out = {}
    for path, ids in zip(_paths(params), leaf_group_ids(params, group_ids)):
        if (ids == g).any():
            out[path] = ids == g
    return out


def selection(params, slices):
    """{leaf path: boolean array} with True at ``params[path][index]`` for (path, index)."""
    shapes = dict(zip(_paths(params), (np.shape(a) for a in jax.tree_util.tree_leaves(params))))
    out = {}
    for path, index in slices:
        out.setdefault(path, np.zeros(shapes[path], bool))[index] = True
    return out


def assert_members(params, group_ids, g, slices):
    got, want = members(params, group_ids, g), selection(params, slices)
    assert sorted(got) == sorted(want), (g, sorted(got), sorted(want))
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=f"group {g} at {path}")


def random_params(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: rng.standard_normal(s).astype(np.float32),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )


def zero_grads_of_group(loss, params, group_ids, mask, g):
    """Gradient of loss at m * w, restricted to the weights of group g."""
    grads = jax.jit(jax.grad(loss))(apply_group_mask(params, group_ids, mask))
    return [
        np.asarray(d)[ids == g]
        for d, ids in zip(jax.tree_util.tree_leaves(grads), leaf_group_ids(params, group_ids))
    ]


def one_off(p, g):
    mask = np.ones(p, np.float32)
    mask[g] = 0
    return mask


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jax.nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(3, (3, 3))(x)))
        return nn.Conv(2, (3, 3))(x).mean(axis=(1, 2))


class FlaxAttention(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")(x)


class DenseAttention(nn.Module):
    """BERT-style attention: Dense q/k/v of width 6 split into 2 heads, Dense output."""

    @nn.compact
    def __call__(self, x):
        n, t, _ = x.shape

        def split(a):
            return a.reshape(n, t, 2, 3)

        q, k, v = (split(nn.Dense(6, name=name)(x)) for name in ("query", "key", "value"))
        weights = jax.nn.softmax(jnp.einsum("nthd,nshd->nhts", q, k) / np.sqrt(3.0), axis=-1)
        mixed = jnp.einsum("nhts,nshd->nthd", weights, v).reshape(n, t, 6)
        return nn.Dense(5, name="out")(mixed)


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(DenseAttention(name="attention")(x))


def moe_shapes(axis=0):
    def put(shape):
        shape = list(shape)
        shape.insert(axis, 3)
        return tuple(shape)

    return {
        "params": {
            "router": {"kernel": (4, 3)},
            "moe": {
                "wi": {"kernel": put((4, 5)), "bias": put((5,))},
                "wo": {"kernel": put((5, 4)), "bias": put((4,))},
            },
            "head": {"kernel": (4, 2), "bias": (2,)},
        }
    }


def block_shapes():
    attn = {name: {"kernel": (6, 2, 3), "bias": (2, 3)} for name in ("query", "key", "value")}
    attn["out"] = {"kernel": (2, 3, 6), "bias": (6,)}
    return {"attn": attn, "moe": {"wi": {"kernel": (4, 6, 5)}, "wo": {"kernel": (4, 5, 6)}}}


# ---------------------------------------------------------------------------------------------
# Neurons.


def test_neurons_mlp_columns_and_biases():
    _, params, _ = make_mlp(F32)
    ids, layout = build_group_ids(params, [neurons(r"Dense_[01]$")])
    assert validate_group_ids(params, ids) == 12
    assert layout.layer_names == ("params/Dense_0", "params/Dense_1")
    np.testing.assert_array_equal(layout.layer_of_group, [0] * 7 + [1] * 5)
    for o in range(7):
        assert_members(
            params,
            ids,
            o,
            [("params/Dense_0/kernel", (slice(None), o)), ("params/Dense_0/bias", o)],
        )
    for o in range(5):
        assert_members(
            params,
            ids,
            7 + o,
            [("params/Dense_1/kernel", (slice(None), o)), ("params/Dense_1/bias", o)],
        )
    np.testing.assert_array_equal(group_sizes(params, ids), [5] * 7 + [8] * 5)
    assert (np.asarray(ids["params"]["Dense_2"]["kernel"]) == -1).all()
    assert ids["params"]["Dense_0"]["kernel"].shape == (1, 7)  # compact, broadcastable
    # Only shapes are read: abstract parameters give the same ids.
    model, _, x = make_mlp(F32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(1), x)
    abstract_ids, abstract_layout = build_group_ids(abstract, [neurons(r"Dense_[01]$")])
    assert abstract_layout.layer_names == layout.layer_names
    for a, b in zip(jax.tree_util.tree_leaves(abstract_ids), jax.tree_util.tree_leaves(ids)):
        np.testing.assert_array_equal(a, b)


def test_neurons_next_layer_rows_and_dead_group():
    _, params, x = make_mlp(F32)
    model, _, _ = make_mlp(F32)
    ids, layout = build_group_ids(params, neurons("Dense_0$", next_layer="Dense_1$"))
    assert layout.layer_names == ("params/Dense_0",)
    for o in range(7):
        assert_members(
            params,
            ids,
            o,
            [
                ("params/Dense_0/kernel", (slice(None), o)),
                ("params/Dense_0/bias", o),
                ("params/Dense_1/kernel", (o, slice(None))),
            ],
        )

    # The unit removed from both sides: every weight of the group has zero gradient.
    def loss(p):
        return jnp.sum(model.apply(p, x) ** 2)

    for part in zero_grads_of_group(loss, params, ids, one_off(7, 3), 3):
        assert (part == 0).all()


# ---------------------------------------------------------------------------------------------
# Filters.


def test_filters_cnn_all_convs():
    _, params, _ = make_cnn(F32)
    ids, layout = build_group_ids(params, filters("Conv"))
    assert layout.layer_names == ("params/Conv_0", "params/Conv_1")
    np.testing.assert_array_equal(layout.layer_of_group, [0, 0, 0, 1, 1, 1, 1])
    for c in range(3):
        assert_members(
            params,
            ids,
            c,
            [("params/Conv_0/kernel", (..., c)), ("params/Conv_0/bias", c)],
        )
    for c in range(4):
        assert_members(
            params,
            ids,
            3 + c,
            [("params/Conv_1/kernel", (..., c)), ("params/Conv_1/bias", c)],
        )


def test_filters_next_layer_conv_and_dense():
    model, params, x = make_cnn(F32)
    ids, _ = build_group_ids(params, filters("Conv_0$", next_layer="Conv_1$"))
    for c in range(3):
        assert_members(
            params,
            ids,
            c,
            [
                ("params/Conv_0/kernel", (..., c)),
                ("params/Conv_0/bias", c),
                ("params/Conv_1/kernel", (..., c, slice(None))),
            ],
        )
    ids, _ = build_group_ids(params, filters("Conv_1$", next_layer="Dense_0$"))
    for c in range(4):
        assert_members(
            params,
            ids,
            c,
            [
                ("params/Conv_1/kernel", (..., c)),
                ("params/Conv_1/bias", c),
                ("params/Dense_0/kernel", (c, slice(None))),
            ],
        )

    def loss(p):
        return jnp.sum(model.apply(p, x) ** 2)

    for part in zero_grads_of_group(loss, params, ids, one_off(4, 2), 2):
        assert (part == 0).all()


def test_filters_batchnorm():
    model = ConvBN()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 2))
    variables = model.init(jax.random.PRNGKey(1), x)
    stats = jax.tree_util.tree_map(
        lambda a: a + jax.random.uniform(jax.random.PRNGKey(2), a.shape), variables["batch_stats"]
    )
    params = variables["params"]
    params = {
        **params,
        "BatchNorm_0": {
            "scale": params["BatchNorm_0"]["scale"] + 0.5,
            "bias": params["BatchNorm_0"]["bias"] + 0.3,
        },
    }
    ids, layout = build_group_ids(
        params, filters("Conv_0$", batchnorm="BatchNorm_0$", next_layer="Conv_1$")
    )
    assert layout.layer_names == ("Conv_0",)
    for c in range(3):
        assert_members(
            params,
            ids,
            c,
            [
                ("Conv_0/kernel", (..., c)),
                ("Conv_0/bias", c),
                ("BatchNorm_0/scale", c),
                ("BatchNorm_0/bias", c),
                ("Conv_1/kernel", (..., c, slice(None))),
            ],
        )

    def apply(p):
        return model.apply({"params": p, "batch_stats": stats}, x)

    # Masking filter 1 equals cutting only its input rows of the next conv, by hand.
    cut = jax.tree_util.tree_map(lambda a: a, params)
    cut["Conv_1"] = {**params["Conv_1"], "kernel": params["Conv_1"]["kernel"].at[:, :, 1, :].set(0)}
    masked = apply(apply_group_mask(params, ids, one_off(3, 1)))
    np.testing.assert_allclose(masked, apply(cut), rtol=1e-6, atol=1e-6)
    assert not np.allclose(masked, apply(params))
    for part in zero_grads_of_group(
        lambda p: jnp.sum(apply(p) ** 2), params, ids, one_off(3, 1), 1
    ):
        assert (part == 0).all()


# ---------------------------------------------------------------------------------------------
# Heads.


def test_heads_conftest_model_matches_reference_ids():
    _, params, _ = make_heads(F32)
    ids, layout = build_group_ids(params, heads("^params$", 2, qkv=("query", "value")))
    reference = head_group_ids(params)
    for got, want in zip(leaf_group_ids(params, ids), leaf_group_ids(params, reference)):
        np.testing.assert_array_equal(got, want)
    assert layout.layer_names == ("params",)
    np.testing.assert_array_equal(layout.layer_of_group, [0, 0])


def mha_numpy(p, x, keep):
    """Multi-head self-attention written out per head, summing only the heads in ``keep``."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    out = np.broadcast_to(p["out"]["bias"], x.shape[:2] + p["out"]["bias"].shape).copy()
    for h in keep:
        q, k, v = (x @ p[n]["kernel"][:, h, :] + p[n]["bias"][h] for n in ("query", "key", "value"))
        logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out += (weights @ v) @ p["out"]["kernel"][h]
    return out


def test_heads_flax_mha_zeroing_a_head_removes_it():
    model = FlaxAttention()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8))
    params = model.init(jax.random.PRNGKey(1), x)
    ids, layout = build_group_ids(params, heads("attn", 2))
    assert layout.layer_names == ("params/attn",)
    for h in range(2):
        slices = [(f"params/attn/{n}/kernel", (slice(None), h)) for n in ("query", "key", "value")]
        slices += [(f"params/attn/{n}/bias", h) for n in ("query", "key", "value")]
        slices += [("params/attn/out/kernel", h)]
        assert_members(params, ids, h, slices)
    attn = params["params"]["attn"]
    np.testing.assert_allclose(model.apply(params, x), mha_numpy(attn, x, [0, 1]), atol=1e-5)
    for h in range(2):
        masked = model.apply(apply_group_mask(params, ids, one_off(2, h)), x)
        np.testing.assert_allclose(masked, mha_numpy(attn, x, [1 - h]), atol=1e-5)

    def loss(p):
        return jnp.sum(model.apply(p, x) ** 2)

    for part in zero_grads_of_group(loss, params, ids, one_off(2, 0), 0):
        assert (part == 0).all()
    alive = zero_grads_of_group(loss, params, ids, one_off(2, 0), 1)
    assert any((part != 0).any() for part in alive)


def test_heads_dense_layout_blocks():
    model = Encoder()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5))
    params = model.init(jax.random.PRNGKey(1), x)
    ids, layout = build_group_ids(params, heads("attention$", 2, layout="dense"))
    assert layout.layer_names == ("params/attention",)
    for h in range(2):
        block = slice(3 * h, 3 * h + 3)
        slices = [
            (f"params/attention/{n}/kernel", (slice(None), block))
            for n in ("query", "key", "value")
        ]
        slices += [(f"params/attention/{n}/bias", block) for n in ("query", "key", "value")]
        slices += [("params/attention/out/kernel", (block, slice(None)))]
        assert_members(params, ids, h, slices)
    # Masking head 1 = zeroing only its rows of the output projection.
    out_kernel = params["params"]["attention"]["out"]["kernel"]
    rows_cut = jax.tree_util.tree_map(lambda a: a, params)
    rows_cut["params"]["attention"]["out"] = {
        **params["params"]["attention"]["out"],
        "kernel": out_kernel.at[3:].set(0),
    }
    masked = model.apply(apply_group_mask(params, ids, one_off(2, 1)), x)
    np.testing.assert_allclose(masked, model.apply(rows_cut, x), rtol=1e-6, atol=1e-6)

    def loss(p):
        return jnp.sum(model.apply(p, x) ** 2)

    for part in zero_grads_of_group(loss, params, ids, one_off(2, 1), 1):
        assert (part == 0).all()


# ---------------------------------------------------------------------------------------------
# Experts.


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_experts_slices_along_axis(axis):
    real_axis = {0: 0, 1: 1, -1: None}[axis]
    shapes = moe_shapes(0 if axis == 0 else 1)
    if axis == -1:  # expert axis last everywhere
        shapes["params"]["moe"] = {
            "wi": {"kernel": (4, 5, 3), "bias": (5, 3)},
            "wo": {"kernel": (5, 4, 3), "bias": (4, 3)},
        }
    params = random_params(shapes)
    ids, layout = build_group_ids(params, experts("moe", 3, axis=axis))
    assert layout.layer_names == ("params/moe",)
    for e in range(3):
        slices = []
        for leaf in ("wi/kernel", "wi/bias", "wo/kernel", "wo/bias"):
            if real_axis is None:
                index = (..., e)
            else:
                index = (slice(None),) * real_axis + (e,)
            slices.append((f"params/moe/{leaf}", index))
        assert_members(params, ids, e, slices)


def test_experts_masking_removes_the_expert_output():
    params = random_params(moe_shapes())
    ids, _ = build_group_ids(params, experts("moe", 3))
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (6, 4)), np.float64)

    def forward(p):
        p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p["params"])
        gates = np.exp(x @ p["router"]["kernel"])
        gates /= gates.sum(-1, keepdims=True)
        outs = [
            np.maximum(x @ p["moe"]["wi"]["kernel"][e] + p["moe"]["wi"]["bias"][e], 0)
            @ p["moe"]["wo"]["kernel"][e]
            + p["moe"]["wo"]["bias"][e]
            for e in range(3)
        ]
        return gates, outs

    gates, outs = forward(params)
    masked_gates, masked_outs = forward(apply_group_mask(params, ids, one_off(3, 1)))
    np.testing.assert_array_equal(masked_gates, gates)  # the router is not an expert
    assert (masked_outs[1] == 0).all()
    for e in (0, 2):
        np.testing.assert_allclose(masked_outs[e], outs[e], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Unstructured, combinations and numbering.


def test_unstructured_every_weight_its_own_group():
    _, params, _ = make_mlp(F32)
    ids, layout = build_group_ids(params, unstructured("Dense_2$"))
    # Flattening order: bias (3,) before kernel (5, 3); row-major within a leaf.
    np.testing.assert_array_equal(ids["params"]["Dense_2"]["bias"], np.arange(3))
    np.testing.assert_array_equal(
        ids["params"]["Dense_2"]["kernel"], np.arange(3, 18).reshape(5, 3)
    )
    np.testing.assert_array_equal(group_sizes(params, ids), np.ones(18))
    assert layout.layer_names == ("params/Dense_2",)

    ids, layout = build_group_ids(
        params, [neurons("Dense_0$"), unstructured("Dense_[12]$", leaves=("kernel",))]
    )
    assert validate_group_ids(params, ids) == 7 + 35 + 15
    assert layout.layer_names == ("params/Dense_0", "params/Dense_1", "params/Dense_2")
    np.testing.assert_array_equal(np.bincount(layout.layer_of_group), [7, 35, 15])
    np.testing.assert_array_equal(
        ids["params"]["Dense_1"]["kernel"], 7 + np.arange(35).reshape(7, 5)
    )
    assert (np.asarray(ids["params"]["Dense_1"]["bias"]) == -1).all()


def test_combined_heads_and_experts_one_numbering():
    params = random_params({"params": {"layers_0": block_shapes(), "layers_1": block_shapes()}})
    specs = [heads(r"layers_\d+/attn$", 2), experts(r"layers_\d+/moe$", 4)]
    ids, layout = build_group_ids(params, specs)
    assert validate_group_ids(params, ids) == 12
    assert layout.layer_names == (
        "params/layers_0/attn",
        "params/layers_1/attn",
        "params/layers_0/moe",
        "params/layers_1/moe",
    )
    np.testing.assert_array_equal(layout.layer_of_group, [0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    # Every group lies inside its layer's module, and each module's groups are consecutive.
    for g in range(12):
        module = layout.layer_names[layout.layer_of_group[g]]
        assert all(path.startswith(module + "/") for path in members(params, ids, g))
    np.testing.assert_array_equal(
        ids["params"]["layers_1"]["attn"]["out"]["kernel"].reshape(-1), [2, 3]
    )
    np.testing.assert_array_equal(
        ids["params"]["layers_1"]["moe"]["wo"]["kernel"].reshape(-1), [8, 9, 10, 11]
    )
    # The outermost matches are the modules, however loosely the pattern is written.
    loose, loose_layout = build_group_ids(params, [heads("attn", 2), experts("moe", 4)])
    assert loose_layout.layer_names == layout.layer_names
    for a, b in zip(jax.tree_util.tree_leaves(loose), jax.tree_util.tree_leaves(ids)):
        np.testing.assert_array_equal(a, b)
    # Spec order sets the numbering: experts first.
    _, swapped = build_group_ids(params, specs[::-1])
    assert swapped.layer_names == layout.layer_names[2:] + layout.layer_names[:2]


# ---------------------------------------------------------------------------------------------
# Errors.


def _raises(match, params, specs, error=ValueError):
    with pytest.raises(error, match=re.escape(match)):
        build_group_ids(params, specs)


def test_error_pattern_matches_nothing():
    _, params, _ = make_mlp(F32)
    _raises(
        "pattern 'Conv' matches no layer path; layer paths are ['params/Dense_0'",
        params,
        neurons("Conv"),
    )
    _raises("pattern 'attn' matches no module path", params, heads("attn", 2))


def test_error_axis_out_of_range_and_expert_count():
    params = random_params(moe_shapes())
    _raises(
        "axis 2 is out of range for params/moe/wi/bias of shape (3, 5)",
        params,
        experts("moe", 3, axis=2),
    )
    _raises(
        "num_experts=4 does not match params/moe/wi/bias of shape (3, 5)", params, experts("moe", 4)
    )
    # A router inside the matched module has no expert axis there: match the experts instead.
    nested = {"params": {"moe": {"experts": params["params"]["moe"], "router": np.ones((4, 3))}}}
    _raises(
        "num_experts=3 does not match params/moe/router of shape (4, 3)",
        nested,
        experts("moe$", 3),
    )
    _, layout = build_group_ids(nested, experts("moe/experts", 3))
    assert layout.layer_names == ("params/moe/experts",)


def test_error_head_count():
    model = Encoder()
    x = jnp.ones((1, 2, 5))
    params = model.init(jax.random.PRNGKey(0), x)
    _raises(
        "num_heads=4 does not divide the width of params/attention/query/kernel of shape (5, 6)",
        params,
        heads("attention$", 4, layout="dense"),
    )
    flax_params = FlaxAttention().init(jax.random.PRNGKey(0), jnp.ones((1, 2, 8)))
    _raises(
        "num_heads=3 does not match params/attn/query/kernel of shape (8, 2, 4)",
        flax_params,
        heads("attn", 3),
    )
    _, heads_params, _ = make_heads(F32)
    _raises("attention module 'params' has no projection 'key'", heads_params, heads("^params$", 2))


def test_error_overlapping_specs():
    _, params, _ = make_mlp(F32)
    _raises(
        "overlapping specs: params/Dense_1/kernel is claimed by "
        "NeuronSpec(pattern='Dense_0$', next_layer='Dense_1$') and by "
        "NeuronSpec(pattern='Dense_1$', next_layer=None)",
        params,
        [neurons("Dense_0$", next_layer="Dense_1$"), neurons("Dense_1$")],
    )
    _raises(
        "overlapping specs: params/Dense_2/kernel",
        params,
        [unstructured("Dense_2"), neurons("Dense_2")],
    )


def test_error_next_layer():
    _, params, _ = make_mlp(F32)
    _raises(
        "next_layer 'Nope' matches no layer path", params, neurons("Dense_0$", next_layer="Nope")
    )
    _raises(
        "next_layer 'Dense_[12]$' must match exactly one layer, matches "
        "['params/Dense_1', 'params/Dense_2']",
        params,
        neurons("Dense_0$", next_layer="Dense_[12]$"),
    )
    _raises(
        "next_layer params/Dense_2/kernel has 5 inputs (axis 0 of shape (5, 3)); expected 7",
        params,
        neurons("Dense_0$", next_layer="Dense_2$"),
    )
    _raises(
        "with next_layer the pattern must match exactly one layer",
        params,
        neurons("Dense_[01]$", next_layer="Dense_2$"),
    )


def test_error_layer_kinds_and_batchnorm():
    _, cnn, _ = make_cnn(F32)
    _, mlp, _ = make_mlp(F32)
    _raises(
        "params/Conv_0/kernel has shape (3, 3, 2, 3); expected 2 dimensions", cnn, neurons("Conv_0")
    )
    _raises(
        "params/Dense_0/kernel has shape (4, 7); expected at least 3 dimensions",
        mlp,
        filters("Dense_0"),
    )
    _raises(
        "params/Conv_1/bias has shape (4,); expected (3,)",
        cnn,
        filters("Conv_0$", batchnorm="Conv_1$"),
    )
    _raises(
        "batchnorm layer 'params/Dense_0' has no 'scale' or 'bias'",
        {"params": {"Conv_0": cnn["params"]["Conv_0"], "Dense_0": {"kernel": np.ones((3, 3))}}},
        filters("Conv_0$", batchnorm="Dense_0$"),
    )
    _raises(
        "layer 'params/Dense_9' has no 'kernel' leaf",
        {"params": {"Dense_9": {"bias": np.ones(3)}}},
        neurons("Dense_9"),
    )
    _raises(
        "has no weight to group",
        {"params": {"Dense_0": {"kernel": np.ones((3, 0))}}},
        neurons("Dense_0"),
    )
    _raises(
        "no layer matched by 'Dense' has a leaf named in ('scale',)",
        mlp,
        unstructured("Dense", leaves=("scale",)),
    )


def test_error_bad_arguments():
    _, params, _ = make_mlp(F32)
    with pytest.raises(TypeError, match="pattern: expected a regular expression string, got 3"):
        neurons(3)
    with pytest.raises(
        ValueError, match=re.escape("next_layer: '(' is not a valid regular expression")
    ):
        neurons("Dense", next_layer="(")
    with pytest.raises(ValueError, match="num_heads: expected a positive int, got 0"):
        heads("attn", 0)
    with pytest.raises(TypeError, match="num_experts: expected a positive int, got True"):
        experts("moe", True)
    with pytest.raises(
        ValueError, match=re.escape("layout: expected one of ('flax', 'dense'), got 'bert'")
    ):
        heads("attn", 2, layout="bert")
    with pytest.raises(TypeError, match=re.escape("axis: expected an int, got 1.0")):
        experts("moe", 2, axis=1.0)
    with pytest.raises(TypeError, match="leaves: expected a non-empty sequence of strings"):
        unstructured("Dense", leaves="kernel")
    with pytest.raises(ValueError, match="qkv: expected a non-empty sequence"):
        heads("attn", 2, qkv=())
    _raises("specs: expected a non-empty sequence of group specs, got []", params, [])
    _raises("specs: expected specs made by", params, ["Dense_0"], error=TypeError)
