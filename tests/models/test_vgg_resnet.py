"""VGG-16 (CIFAR) and ResNet-56: NumPy forward references, gates ≡ group masks ≡ compaction,
published parameter and FLOP counts derived by hand, and config validation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.group_ids import group_sizes
from jaxprune.masks.mask import apply_group_mask
from jaxprune.models import resnet, vgg
from jaxprune.models.resnet import ResNet, ResNetConfig
from jaxprune.models.vgg import VGG, VGGConfig

EPS = 1e-5  # BatchNorm epsilon of both models


# ---------------------------------------------------------------------------------------------
# Helpers: random variables (so BatchNorm statistics and biases matter) and NumPy layers.


def _random_variables(model, x, seed):
    """Variables of ``model`` (shapes from ``jax.eval_shape`` of its init) drawn at random so that
    biases and BatchNorm statistics matter: kernels He-scaled normals, running variances in
    [0.5, 2], BatchNorm scales around 1, biases and running means around 0."""
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(seed)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    leaves = []
    for path, leaf in flat:
        name = str(path[-1].key)
        shape = np.shape(leaf)
        if name == "kernel":
            value = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif name == "var":
            value = rng.uniform(0.5, 2.0, size=shape)
        elif name == "scale":
            value = 1.0 + 0.3 * rng.normal(size=shape)
        else:  # bias, mean
            value = 0.3 * rng.normal(size=shape)
        leaves.append(jnp.asarray(value, jnp.float32))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(variables), leaves)


def _images(n, side, seed=0):
    return np.random.default_rng(seed).normal(size=(n, side, side, 3)).astype(np.float32)


def _keep(widths, seed):
    """A random boolean keep mask per layer (about half), at least one kept per layer."""
    rng = np.random.default_rng(seed)
    parts = []
    for w in widths:
        part = rng.random(w) < 0.5
        part[rng.integers(w)] = True
        parts.append(part)
    return np.concatenate(parts)


def _np_conv(x, kernel, stride=1):
    """3×3 convolution, zero padding 1 on each side, stride ``stride`` (NHWC, HWIO)."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((n, ho, wo, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            patch = xp[
                :,
                dy : dy + stride * (ho - 1) + 1 : stride,
                dx : dx + stride * (wo - 1) + 1 : stride,
            ]
            out += patch @ kernel[dy, dx]
    return out


def _np_bn(x, params, stats):
    return (x - stats["mean"]) / np.sqrt(stats["var"] + EPS) * params["scale"] + params["bias"]


def _to_np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _assert_close(actual, expected, rtol=1e-4):
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), expected, rtol=rtol, atol=rtol * np.abs(expected).max()
    )


# ---------------------------------------------------------------------------------------------
# VGG.

TINY_PLAN = [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"]


def _np_vgg(variables, x, batch_norm):
    """Eval-mode VGG-16 (CIFAR) forward pass from the channel plan, in NumPy float64."""
    v = _to_np(variables)
    p = v["params"]
    x = np.asarray(x, np.float64)
    i = 0
    for item in TINY_PLAN:
        if item == "M":
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
            continue
        x = _np_conv(x, p[f"conv_{i}"]["kernel"])
        assert p[f"conv_{i}"]["kernel"].shape[-1] == item
        if batch_norm:
            x = _np_bn(x, p[f"bn_{i}"], v["batch_stats"][f"bn_{i}"])
        else:
            x = x + p[f"conv_{i}"]["bias"]
        x = np.maximum(x, 0.0)
        i += 1
    x = x.reshape(x.shape[0], -1)
    return x @ p["classifier"]["kernel"] + p["classifier"]["bias"]


@pytest.fixture(scope="module", params=["vgg16-tiny", "vgg16-bn-tiny"])
def tiny_vgg(request):
    config = vgg.from_preset(request.param)
    model = VGG(config)
    x = _images(2, 32)
    variables = _random_variables(model, x, seed=1)
    return config, model, variables, x


def test_vgg_forward_matches_numpy(tiny_vgg):
    config, model, variables, x = tiny_vgg
    assert config.channels == (8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64)
    out = model.apply(variables, x)
    assert out.shape == (2, 10)
    _assert_close(out, _np_vgg(variables, x, config.batch_norm))


def test_vgg_gates_group_mask_and_compaction_agree(tiny_vgg):
    config, model, variables, x = tiny_vgg
    keep = _keep(config.channels, seed=2)
    mask = keep.astype(np.float32)
    ids, layout = vgg.group_ids(variables, config)
    assert layout.num_groups == config.num_filters == sum(config.channels)
    masked = model.apply(apply_group_mask(variables, ids, mask), x)
    gated = model.apply(variables, x, filter_gates=mask)
    small_variables, small_config = vgg.compact(variables, config, keep)
    compacted = VGG(small_config).apply(small_variables, x)
    widths = [int(part.sum()) for part in np.split(keep, np.cumsum(config.channels)[:-1])]
    assert small_config.channels == tuple(widths)
    _assert_close(gated, masked, rtol=1e-5)
    _assert_close(compacted, masked, rtol=1e-5)
    # The masked model is a different function from the full one, and the reference agrees.
    assert np.abs(np.asarray(model.apply(variables, x) - masked)).max() > 1e-2
    masked_np = _np_vgg(apply_group_mask(variables, ids, mask), x, config.batch_norm)
    _assert_close(masked, masked_np)
    if config.batch_norm:  # with batch statistics too
        train_gated, _ = model.apply(
            variables, x, train=True, filter_gates=mask, mutable=["batch_stats"]
        )
        train_masked, _ = model.apply(
            apply_group_mask(variables, ids, mask), x, train=True, mutable=["batch_stats"]
        )
        _assert_close(train_gated, train_masked, rtol=1e-5)


def test_vgg_filter_groups_by_hand(tiny_vgg):
    config, _, variables, _ = tiny_vgg
    ids, layout = vgg.group_ids(variables, config)
    inputs = (3, *config.channels[:-1])
    # A filter of conv_i: a 3×3×C_in kernel slice plus its bias, or BatchNorm scale and bias.
    per_filter = [9 * c_in + (2 if config.batch_norm else 1) for c_in in inputs]
    expected = np.repeat(per_filter, config.channels)
    np.testing.assert_array_equal(group_sizes(variables, ids), expected)
    assert layout.layer_names == tuple(f"params/conv_{i}" for i in range(13))


def test_vgg_gate_gradient_equals_group_mask_gradient():
    """Without BatchNorm, gating a filter's output equals scaling its kernel slice and bias."""
    config = vgg.from_preset("vgg16-tiny")
    model = VGG(config)
    x = _images(2, 32, seed=3)
    variables = _random_variables(model, x, seed=4)
    ids, _ = vgg.group_ids(variables, config)
    weights = jnp.asarray(np.random.default_rng(5).normal(size=(2, 10)), jnp.float32)
    ones = jnp.ones(config.num_filters)

    def via_gates(g):
        return jnp.sum(model.apply(variables, x, filter_gates=g) * weights)

    def via_mask(m):
        return jnp.sum(model.apply(apply_group_mask(variables, ids, m), x) * weights)

    gate_grad = jax.jit(jax.grad(via_gates))(ones)
    mask_grad = jax.jit(jax.grad(via_mask))(ones)
    assert np.abs(np.asarray(gate_grad)).max() > 0
    _assert_close(gate_grad, mask_grad, rtol=1e-4)


def test_vgg16_parameter_counts_by_hand():
    # Kernels: 3×3 × (C_in × C_out) summed over the 13 convolutions of the plan.
    kernels = 9 * (
        3 * 64
        + 64 * 64  # 32×32 stage
        + 64 * 128
        + 128 * 128  # 16×16
        + 128 * 256
        + 2 * 256 * 256  # 8×8
        + 256 * 512
        + 2 * 512 * 512  # 4×4
        + 3 * 512 * 512  # 2×2
    )
    assert kernels == 14_710_464
    channels = 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512  # one bias (or BN scale, bias) per channel
    classifier = 512 * 10 + 10
    expected = {
        "vgg16": kernels + channels + classifier,
        "vgg16-bn": kernels + 2 * channels + classifier,
    }
    assert expected == {"vgg16": 14_719_818, "vgg16-bn": 14_724_042}
    for name, count in expected.items():
        model = VGG(vgg.from_preset(name))
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
        assert sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes["params"])) == count


def test_vgg_flops_by_hand():
    tiny = vgg.from_preset("vgg16-tiny")
    macs = (
        32 * 32 * 9 * (3 * 8 + 8 * 8)
        + 16 * 16 * 9 * (8 * 16 + 16 * 16)
        + 8 * 8 * 9 * (16 * 32 + 2 * 32 * 32)
        + 4 * 4 * 9 * (32 * 64 + 2 * 64 * 64)
        + 2 * 2 * 9 * (3 * 64 * 64)
        + 64 * 10
    )
    assert vgg.flops(tiny) == 2 * macs
    # Full VGG-16: Li et al. 2017 report 3.13e8 multiply-accumulates.
    full_macs = (
        1024 * 9 * (3 * 64 + 64 * 64)
        + 256 * 9 * (64 * 128 + 128 * 128)
        + 64 * 9 * (128 * 256 + 2 * 256 * 256)
        + 16 * 9 * (256 * 512 + 2 * 512 * 512)
        + 4 * 9 * (3 * 512 * 512)
        + 512 * 10
    )
    assert vgg.flops(vgg.from_preset("vgg16-bn")) == 2 * full_macs == 2 * 313_201_664
    assert round(full_macs / 1e8, 2) == 3.13


# ---------------------------------------------------------------------------------------------
# ResNet.


def _np_resnet(variables, x):
    """Eval-mode CIFAR ResNet, one block per stage (4, 8, 16 channels), option-A shortcuts."""
    v = _to_np(variables)
    p, s = v["params"], v["batch_stats"]
    x = np.maximum(
        _np_bn(
            _np_conv(np.asarray(x, np.float64), p["stem_conv"]["kernel"]),
            p["stem_bn"],
            s["stem_bn"],
        ),
        0,
    )
    for j, (stride, width) in enumerate([(1, 4), (2, 8), (2, 16)]):
        y = _np_conv(x, p[f"block_{j}_conv1"]["kernel"], stride)
        y = np.maximum(_np_bn(y, p[f"block_{j}_bn1"], s[f"block_{j}_bn1"]), 0)
        y = _np_bn(
            _np_conv(y, p[f"block_{j}_conv2"]["kernel"]), p[f"block_{j}_bn2"], s[f"block_{j}_bn2"]
        )
        shortcut = x[:, ::stride, ::stride, :]
        pad = width - shortcut.shape[-1]
        shortcut = np.concatenate(
            [
                np.zeros((*shortcut.shape[:3], pad // 2)),
                shortcut,
                np.zeros((*shortcut.shape[:3], pad - pad // 2)),
            ],
            axis=-1,
        )
        x = np.maximum(y + shortcut, 0)
    return x.mean(axis=(1, 2)) @ p["classifier"]["kernel"] + p["classifier"]["bias"]


@pytest.fixture(scope="module")
def tiny_resnet():
    config = resnet.from_preset("resnet-tiny")
    model = ResNet(config)
    x = _images(3, 8, seed=6)
    variables = _random_variables(model, x, seed=7)
    return config, model, variables, x


def test_resnet_forward_matches_numpy(tiny_resnet):
    config, model, variables, x = tiny_resnet
    assert (config.depth, config.inner) == (8, (4, 8, 16))
    out = model.apply(variables, x)
    assert out.shape == (3, 10)
    _assert_close(out, _np_resnet(variables, x))


def test_resnet_gates_group_mask_and_compaction_agree(tiny_resnet):
    config, model, variables, x = tiny_resnet
    keep = _keep(config.inner, seed=8)
    mask = keep.astype(np.float32)
    ids, layout = resnet.group_ids(variables, config)
    assert layout.layer_names == (
        "params/block_0_conv1",
        "params/block_1_conv1",
        "params/block_2_conv1",
    )
    # An inner filter: its 3×3×C_in kernel slice and bn1's scale and bias.
    expected_sizes = np.repeat([9 * 4 + 2, 9 * 4 + 2, 9 * 8 + 2], [4, 8, 16])
    np.testing.assert_array_equal(group_sizes(variables, ids), expected_sizes)
    masked = model.apply(apply_group_mask(variables, ids, mask), x)
    gated = model.apply(variables, x, filter_gates=mask)
    small_variables, small_config = resnet.compact(variables, config, keep)
    compacted = ResNet(small_config).apply(small_variables, x)
    widths = [int(part.sum()) for part in np.split(keep, np.cumsum(config.inner)[:-1])]
    assert small_config.inner_channels == tuple(widths)
    assert small_variables["params"]["block_2_conv2"]["kernel"].shape == (3, 3, widths[2], 16)
    _assert_close(gated, masked, rtol=1e-5)
    _assert_close(compacted, masked, rtol=1e-5)
    assert np.abs(np.asarray(model.apply(variables, x) - masked)).max() > 1e-2
    _assert_close(masked, _np_resnet(apply_group_mask(variables, ids, mask), x))


def test_resnet56_parameter_count_by_hand():
    conv = lambda c_in, c_out: 9 * c_in * c_out  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731  (scale and bias)
    stem = conv(3, 16) + bn(16)
    stage1 = 9 * (2 * conv(16, 16) + 2 * bn(16))
    stage2 = conv(16, 32) + conv(32, 32) + 2 * bn(32) + 8 * (2 * conv(32, 32) + 2 * bn(32))
    stage3 = conv(32, 64) + conv(64, 64) + 2 * bn(64) + 8 * (2 * conv(64, 64) + 2 * bn(64))
    classifier = 64 * 10 + 10
    expected = stem + stage1 + stage2 + stage3 + classifier  # option A shortcuts: no parameters
    assert expected == 853_018  # He et al. 2016, Table 6: 0.85M
    config = resnet.from_preset("resnet56")
    assert config.depth == 56
    shapes = jax.eval_shape(ResNet(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(shapes["params"])) == expected
    _, layout = resnet.group_ids(shapes, config)
    assert layout.num_groups == 9 * (16 + 32 + 64)


def test_resnet_flops_by_hand():
    tiny = resnet.from_preset("resnet-tiny")
    macs = (
        8 * 8 * 9 * 3 * 4  # stem at 8×8
        + 8 * 8 * 9 * (4 * 4 + 4 * 4)  # block 0, stride 1
        + 4 * 4 * 9 * (4 * 8 + 8 * 8)  # block 1, stride 2
        + 2 * 2 * 9 * (8 * 16 + 16 * 16)  # block 2, stride 2
        + 16 * 10
    )
    assert resnet.flops(tiny, (8, 8, 3)) == 2 * macs
    pruned = dataclasses.replace(tiny, inner_channels=(2, 3, 5))
    pruned_macs = (
        8 * 8 * 9 * 3 * 4
        + 8 * 8 * 9 * (4 * 2 + 2 * 4)
        + 4 * 4 * 9 * (4 * 3 + 3 * 8)
        + 2 * 2 * 9 * (8 * 5 + 5 * 16)
        + 160
    )
    assert resnet.flops(pruned, (8, 8, 3)) == 2 * pruned_macs
    # ResNet-56: Li et al. 2017 report 1.25e8 multiply-accumulates.
    full = 1024 * 9 * 3 * 16 + 18 * 1024 * 9 * 16 * 16
    full += 256 * 9 * 16 * 32 + 17 * 256 * 9 * 32 * 32
    full += 64 * 9 * 32 * 64 + 17 * 64 * 9 * 64 * 64 + 64 * 10
    assert resnet.flops(resnet.from_preset("resnet56")) == 2 * full == 2 * 125_485_696
    assert round(full / 1e8, 2) == 1.25


# ---------------------------------------------------------------------------------------------
# Compute dtype, presets and validation.


@pytest.mark.parametrize(
    "model, side",
    [
        (VGG(vgg.from_preset("vgg16-bn-tiny", dtype=jnp.bfloat16)), 32),
        (ResNet(resnet.from_preset("resnet-tiny", dtype=jnp.bfloat16)), 8),
    ],
    ids=["vgg", "resnet"],
)
def test_bfloat16_compute_with_float32_params(model, side):
    x = _images(2, side, seed=9)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
    variables = _random_variables(model, x, seed=10)
    out = model.apply(variables, x)
    assert out.dtype == jnp.bfloat16
    reference = model.clone(config=dataclasses.replace(model.config, dtype=jnp.float32)).apply(
        variables, x
    )
    np.testing.assert_allclose(
        np.asarray(out, np.float32), reference, atol=0.1 * np.abs(reference).max()
    )


def test_vgg_width_multiplier_and_presets():
    assert vgg.vgg16_channels(0.5) == (32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256)
    assert vgg.from_preset("vgg16", num_classes=100).num_classes == 100
    with pytest.raises(ValueError, match=r"'vgg19'.*'vgg16', 'vgg16-bn'"):
        vgg.from_preset("vgg19")
    with pytest.raises(ValueError, match=r"'resnet110'.*'resnet-tiny', 'resnet20', 'resnet56'"):
        resnet.from_preset("resnet110")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VGGConfig(channels=(64,) * 12), r"channels: expected 13 channel counts"),
        (
            lambda: VGGConfig(channels=(64,) * 12 + (0,)),
            r"channels\[12\]: expected a positive int, got 0",
        ),
        (lambda: VGGConfig(num_classes=0), r"num_classes: expected a positive int, got 0"),
        (lambda: VGGConfig(batch_norm="yes"), r"batch_norm: expected a bool, got 'yes'"),
        (lambda: VGGConfig(dtype=jnp.int32), r"dtype: expected a floating compute dtype"),
        (
            lambda: vgg.vgg16_channels(0.0),
            r"width_multiplier: expected a finite number > 0, got 0.0",
        ),
        (
            lambda: ResNetConfig(blocks_per_stage=0),
            r"blocks_per_stage: expected a positive int, got 0",
        ),
        (lambda: ResNetConfig(widths=(16, 8)), r"widths: expected non-decreasing"),
        (
            lambda: ResNetConfig(blocks_per_stage=1, inner_channels=(4, 4)),
            r"inner_channels: expected 3 entries",
        ),
        (lambda: ResNetConfig(num_classes=-1), r"num_classes: expected a positive int, got -1"),
        (
            lambda: vgg.flops(vgg.from_preset("vgg16"), (16, 16, 3)),
            r"input_shape: \(16, 16, 3\) is too small",
        ),
    ],
)
def test_bad_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_gates_keep_and_kind_raise(tiny_resnet):
    config, model, variables, x = tiny_resnet
    with pytest.raises(ValueError, match=r"filter_gates: expected shape \(28,\)"):
        model.apply(variables, x, filter_gates=jnp.ones(27))
    with pytest.raises(ValueError, match=r"keep: expected shape \(28,\)"):
        resnet.compact(variables, config, np.ones(5, bool))
    keep = np.ones(28, bool)
    keep[:4] = False  # block 0 would keep nothing
    with pytest.raises(ValueError, match=r"keeps no unit"):
        resnet.compact(variables, config, keep)
    with pytest.raises(ValueError, match=r"kind: expected one of \('filters',\), got 'neurons'"):
        resnet.group_ids(variables, config, kind="neurons")
