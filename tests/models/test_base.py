"""The model protocol: every registered spec has the same call shapes, gates ≡ compaction
through the spec alone, the registry, and the deprecated aliases of the former names."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_vgg_resnet import _random_variables

from jaxprune.models import (
    MLP,
    ModelSpec,
    bert,
    cnn,
    mlp,
    model_names,
    model_spec,
    register_model,
    resnet,
    switch,
    two_layer,
    vgg,
)
from jaxprune.models import base as models_base
from jaxprune.train import build_model

BUILT_IN = ("mlp", "two_layer", "cnn", "vgg", "resnet", "bert", "switch")


NUM_OUTPUTS = 7  # classes, or the vocabulary of the token models


def _example(spec: ModelSpec, n: int = 2) -> jax.Array:
    shape = (n, *spec.example_input_shape)
    if spec.mlm:
        return jax.random.randint(jax.random.key(3), shape, 0, NUM_OUTPUTS)
    return jax.random.normal(jax.random.key(3), shape)


def _without_first_group_of_each_layer(layout) -> np.ndarray:
    keep = np.ones(layout.num_groups, bool)
    for layer in np.unique(layout.layer_of_group):
        keep[np.flatnonzero(layout.layer_of_group == layer)[0]] = False
    return keep


def test_built_in_models_are_registered_in_order():
    assert model_names()[: len(BUILT_IN)] == BUILT_IN
    for name in BUILT_IN:
        assert model_spec(name).name == name


@pytest.mark.parametrize("name", model_names())
def test_protocol_functions_have_one_call_shape(name):
    spec = model_spec(name)
    first = {
        spec.group_ids: ["variables", "config", "kind"],
        spec.flops: ["config", "input_shape"],
        spec.make_config: ["preset", "num_outputs", "input_shape"],
    }
    if spec.compact is not None:
        first[spec.compact] = ["variables", "config", "keep", "kind"]
    for fn, names in first.items():
        parameters = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in parameters[: len(names)]] == names, fn
    config_parameters = inspect.signature(spec.make_config).parameters
    assert config_parameters["num_outputs"].kind is inspect.Parameter.KEYWORD_ONLY
    assert spec.default_preset in spec.presets and spec.default_kind == spec.group_kinds[0]


@pytest.mark.parametrize("name", model_names())
def test_every_spec_groups_counts_flops_and_compacts_like_its_gates(name):
    spec = model_spec(name)
    config = spec.make_config(
        spec.default_preset, num_outputs=NUM_OUTPUTS, input_shape=spec.example_input_shape
    )
    module = spec.module(config)
    x = _example(spec)
    variables = _random_variables(module, x, seed=1)
    _, layout = spec.group_ids(variables, config, spec.default_kind)
    _, from_params = spec.group_ids(variables["params"], config, spec.default_kind)
    assert from_params.num_groups == layout.num_groups > 0
    full_flops = spec.flops(config, spec.example_input_shape)
    assert isinstance(full_flops, int) and full_flops > 0
    if spec.compact is None:
        return

    def outputs(module, variables, keep=None):
        gates = None if keep is None else jnp.asarray(keep, jnp.float32)
        return np.asarray(
            module.apply(variables, x, **spec.gate_kwargs(config, gates, spec.default_kind))
        )

    dense = outputs(module, variables)
    scale = max(1.0, float(np.abs(dense).max()))
    everything = np.ones(layout.num_groups, bool)
    same_variables, same_config = spec.compact(variables, config, everything, spec.default_kind)
    np.testing.assert_allclose(
        outputs(spec.module(same_config), same_variables), dense, rtol=1e-5, atol=1e-5 * scale
    )
    assert spec.flops(same_config, spec.example_input_shape) == full_flops

    keep = _without_first_group_of_each_layer(layout)
    gated = outputs(module, variables, keep)
    small_variables, small_config = spec.compact(variables, config, keep, spec.default_kind)
    small = spec.module(small_config)
    np.testing.assert_allclose(outputs(small, small_variables), gated, rtol=1e-4, atol=1e-5 * scale)
    assert not np.allclose(gated, dense)
    _, small_layout = spec.group_ids(small_variables, small_config, spec.default_kind)
    assert small_layout.num_groups == int(keep.sum())
    assert spec.flops(small_config, spec.example_input_shape) < full_flops


def _toy_config(preset, *, num_outputs, input_shape, **overrides):
    return MLP(hidden=(3,), num_outputs=num_outputs, **overrides)


def test_a_registered_spec_is_a_buildable_model(monkeypatch):
    monkeypatch.setattr(models_base, "_MODELS", dict(models_base._MODELS))
    toy = dataclasses.replace(
        mlp.SPEC, name="toy", presets={"three": {}}, default_preset="three", make_config=_toy_config
    )
    assert register_model(toy) is toy
    assert model_names()[-1] == "toy"
    with pytest.raises(ValueError, match="'toy' is already registered"):
        register_model(toy)
    register_model(toy, overwrite=True)
    model = build_model("toy", num_outputs=2, input_shape=(4,))
    assert (model.name, model.kind, model.config.hidden) == ("toy", "neurons", (3,))
    x = jax.random.normal(jax.random.key(0), (5, 4))
    variables = model.init(jax.random.key(1), x)
    _, layout = model.group_ids(variables["params"])
    keep = np.array([True, False, True])
    gated = model.apply(variables, x, train=False, gates=jnp.asarray(keep, jnp.float32))[0]
    small, small_variables = model.compact(variables, keep)
    assert layout.num_groups == 3 and small.config.hidden == (2,)
    np.testing.assert_allclose(small.apply(small_variables, x, train=False)[0], gated, atol=1e-6)
    assert model.flops((4,)) == 2 * (4 * 3 + 3 * 2)


def test_unknown_names_list_the_registered_ones():
    names = ", ".join(model_names())
    for call in (
        lambda: model_spec("gpt"),
        lambda: build_model("gpt", num_outputs=2, input_shape=(3,)),
    ):
        with pytest.raises(ValueError, match="unknown model 'gpt'") as error:
            call()
        assert names in str(error.value)
    with pytest.raises(TypeError, match="expected a ModelSpec"):
        register_model("mlp")
    with pytest.raises(ValueError, match="default_preset"):
        dataclasses.replace(mlp.SPEC, default_preset="nope")
    with pytest.raises(ValueError, match="not both"):
        dataclasses.replace(switch.SPEC, gate_keyword="gates")


def test_cnn_flops_by_hand():
    # SAME 3×3 convolutions, the first with stride 2: 8×8 → 4×4, then the Dense head.
    config = cnn.SmallCNN(channels=(8, 16), num_outputs=10)
    macs = 4 * 4 * 9 * 1 * 8 + 4 * 4 * 9 * 8 * 16 + 16 * 10
    assert cnn.flops(config, (8, 8, 1)) == 2 * macs
    assert cnn.flops(config, (7, 7, 1)) == 2 * macs  # ceil(7 / 2) = 4


def test_sequence_and_image_shapes_are_checked():
    config = bert.PRESETS["tiny"]
    assert bert.flops(config, (9,)) == bert.flops(config, 9)
    with pytest.raises(ValueError, match=r"input_shape: expected \(seq_len,\)"):
        switch.flops(switch.PRESETS["tiny"], (9, 2))
    with pytest.raises(ValueError, match="seq_len: expected a positive int, got 0"):
        bert.flops(config, (0,))
    with pytest.raises(ValueError, match=r"input_shape: expected \(height, width, channels\)"):
        vgg.flops(vgg.PRESETS["vgg16-tiny"], (32, 32))
    with pytest.raises(ValueError, match="input_shape: expected 4 features"):
        two_layer.flops(two_layer.PRESETS["tiny"], (5,))
    assert resnet.flops(resnet.PRESETS["resnet-tiny"], (8, 6, 3)) < resnet.flops(
        resnet.PRESETS["resnet-tiny"], (8, 8, 3)
    )


def _mlp_setup():
    model = MLP(hidden=(3, 2), num_outputs=2)
    return model, model.init(jax.random.key(0), jnp.ones((1, 4)))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            lambda: mlp.mlp_group_ids(*_mlp_setup()[::-1]),
            lambda: mlp.group_ids(*_mlp_setup()[::-1]),
        ),
        (
            lambda: mlp.compact_mlp(
                _mlp_setup()[1], _mlp_setup()[0], np.array([1, 0, 1, 1, 1], bool)
            ),
            lambda: mlp.compact(_mlp_setup()[1], _mlp_setup()[0], np.array([1, 0, 1, 1, 1], bool)),
        ),
        (
            lambda: mlp.mlp_flops(MLP(hidden=(3,), num_outputs=2), 4),
            lambda: mlp.flops(MLP(hidden=(3,), num_outputs=2), (4,)),
        ),
        (
            lambda: two_layer.two_layer_flops(two_layer.PRESETS["tiny"]),
            lambda: two_layer.flops(two_layer.PRESETS["tiny"]),
        ),
        (
            lambda: vgg.vgg_flops(vgg.PRESETS["vgg16-tiny"], image_size=64, in_channels=1),
            lambda: vgg.flops(vgg.PRESETS["vgg16-tiny"], (64, 64, 1)),
        ),
        (
            lambda: resnet.resnet_flops(resnet.PRESETS["resnet-tiny"], image_size=8),
            lambda: resnet.flops(resnet.PRESETS["resnet-tiny"], (8, 8, 3)),
        ),
        (lambda: bert.GROUP_KINDS, lambda: bert.KINDS),
    ],
)
def test_deprecated_aliases_warn_and_forward(old, new):
    with pytest.warns(DeprecationWarning, match="deprecated"):
        result = old()
    expected = new()
    assert jax.tree_util.tree_structure(result) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(result), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_former_call_shapes_of_bert_and_switch_warn_and_forward():
    config = bert.PRESETS["tiny"]
    shapes = jax.eval_shape(bert.Bert(config).init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    with pytest.warns(DeprecationWarning, match="bert.group_ids"):
        _, old = bert.group_ids(shapes, "heads")
    new = bert.group_ids(shapes, config, "heads")[1]
    np.testing.assert_array_equal(old.layer_of_group, new.layer_of_group)
    keep = np.array([True, False, True, True] * 2)
    variables = bert.Bert(config).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    with pytest.warns(DeprecationWarning, match="compact_heads"):
        assert (
            bert.compact_heads(variables, config, keep)[1]
            == bert.compact(variables, config, keep)[1]
        )

    config = switch.PRESETS["tiny"]
    variables = switch.Switch(config).init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))
    expert_keep = [np.array([True, False, True, True])]
    with pytest.warns(DeprecationWarning, match="compact_per_layer"):
        _, old_config = switch.compact(variables, config, expert_keep=expert_keep)
    _, new_config = switch.compact(variables, config, expert_keep[0], "experts")
    assert (
        old_config
        == new_config
        == switch.compact_per_layer(variables, config, expert_keep=expert_keep)[1]
    )
