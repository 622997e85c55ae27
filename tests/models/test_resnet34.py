"""ResNet-34 / ResNet-18 with projection shortcuts: torchvision's parameter counts and He et al.'s
FLOPs by hand, a NumPy forward reference for both stems, gates ≡ zeroed weights (brute force
over every channel) ≡ compaction, and config and input validation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_vgg_resnet import _assert_close, _images, _keep, _np_bn, _random_variables, _to_np

from jaxprune.group_ids import group_sizes
from jaxprune.masks.mask import apply_group_mask
from jaxprune.models import model_spec, resnet34
from jaxprune.models.resnet34 import ResNet34, ResNet34Config

TINY_WIDTHS = (4, 8, 16, 32)  # resnet34-tiny: one block per stage, strides 1, 2, 2, 2
SIDES = {"cifar": 8, "imagenet": 15}  # an odd side checks the ceil(H / 2) of every stride 2


# ---------------------------------------------------------------------------------------------
# NumPy reference of the tiny model and shared fixtures.


def _np_conv(x, kernel, stride, pad):
    """``k×k`` convolution, zero padding ``pad`` on each side, stride ``stride`` (NHWC, HWIO)."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (x.shape[1] + 2 * pad - k) // stride + 1
    wo = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
    for dy in range(k):
        for dx in range(k):
            patch = xp[
                :,
                dy : dy + stride * (ho - 1) + 1 : stride,
                dx : dx + stride * (wo - 1) + 1 : stride,
            ]
            out += patch @ kernel[dy, dx]
    return out


def _np_max_pool(x):
    """3×3 max pooling, stride 2, padding 1 (padded entries never win)."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    windows = [
        xp[:, dy : dy + 2 * (ho - 1) + 1 : 2, dx : dx + 2 * (wo - 1) + 1 : 2]
        for dy in range(3)
        for dx in range(3)
    ]
    return np.max(windows, axis=0)


def _np_resnet34_tiny(variables, x, stem):
    """Eval-mode resnet34-tiny, written out from He et al.'s description: the stem, four basic
    blocks (strides 1, 2, 2, 2), projections (1×1 conv + BN) where the shape changes."""
    v = _to_np(variables)
    p, s = v["params"], v["batch_stats"]

    def bn(y, name):
        return _np_bn(y, p[name], s[name])

    x = np.asarray(x, np.float64)
    if stem == "imagenet":
        x = _np_max_pool(np.maximum(bn(_np_conv(x, p["stem_conv"]["kernel"], 2, 3), "stem_bn"), 0))
    else:
        x = np.maximum(bn(_np_conv(x, p["stem_conv"]["kernel"], 1, 1), "stem_bn"), 0)
    for j, stride in enumerate((1, 2, 2, 2)):
        y = np.maximum(
            bn(_np_conv(x, p[f"block_{j}_conv1"]["kernel"], stride, 1), f"block_{j}_bn1"), 0
        )
        y = bn(_np_conv(y, p[f"block_{j}_conv2"]["kernel"], 1, 1), f"block_{j}_bn2")
        if j > 0:
            x = bn(
                _np_conv(x, p[f"block_{j}_proj_conv"]["kernel"], stride, 0), f"block_{j}_proj_bn"
            )
        x = np.maximum(y + x, 0)
    return x.mean(axis=(1, 2)) @ p["classifier"]["kernel"] + p["classifier"]["bias"]


def _with_trained_statistics(model, variables, x):
    """``variables`` after one train-mode apply, so the running statistics are the momentum
    average of random ones and of the batch's (not the init's 0 and 1)."""
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return {**variables, **updates}


@pytest.fixture(scope="module", params=["cifar", "imagenet"])
def tiny(request):
    config = resnet34.from_preset("resnet34-tiny", stem=request.param)
    model = ResNet34(config)
    x = _images(3, SIDES[request.param], seed=1)
    variables = _with_trained_statistics(model, _random_variables(model, x, seed=2), x)
    apply = jax.jit(lambda v, g: model.apply(v, x, filter_gates=g))
    return config, model, variables, x, apply


def _param_count(config, side):
    shapes = jax.eval_shape(
        ResNet34(config).init, jax.random.PRNGKey(0), jnp.zeros((1, side, side, 3))
    )
    return shapes, sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes["params"]))


# ---------------------------------------------------------------------------------------------
# Published counts.


def _hand_params(blocks, num_classes, stem_kernel):
    conv = lambda k, c_in, c_out: k * k * c_in * c_out  # noqa: E731  (no bias)
    bn = lambda c: 2 * c  # noqa: E731  (scale and bias)
    total = conv(stem_kernel, 3, 64) + bn(64)
    c_in = 64
    for width, count in zip((64, 128, 256, 512), blocks):
        for _ in range(count):
            total += conv(3, c_in, width) + conv(3, width, width) + 2 * bn(width)
            if c_in != width:  # option B projection
                total += conv(1, c_in, width) + bn(width)
            c_in = width
    return total + 512 * num_classes + num_classes


def test_parameter_counts_match_torchvision():
    assert _hand_params((3, 4, 6, 3), 1000, 7) == 21_797_672  # torchvision resnet34
    assert _hand_params((2, 2, 2, 2), 1000, 7) == 11_689_512  # torchvision resnet18
    for name, side in (("resnet34", 224), ("resnet18", 224), ("resnet34-cifar", 32)):
        config = resnet34.from_preset(name)
        shapes, count = _param_count(config, side)
        stem_kernel = 7 if config.stem == "imagenet" else 3
        assert count == _hand_params(config.blocks_per_stage, config.num_classes, stem_kernel)
        _, layout = resnet34.group_ids(shapes, config)
        assert (
            layout.num_groups
            == config.num_filters
            == sum(w * n for w, n in zip((64, 128, 256, 512), config.blocks_per_stage))
        )
    assert resnet34.from_preset("resnet34").depth == 34
    assert resnet34.from_preset("resnet18").depth == 18


def test_flops_match_he_et_al_table_1():
    # ResNet-34 at 224×224: stem at 112², max pool to 56², stages at 56², 28², 14², 7².
    stages = [(56, 64, 3), (28, 128, 4), (14, 256, 6), (7, 512, 3)]
    macs = 112 * 112 * 49 * 3 * 64 + 512 * 1000
    c_in = 64
    for side, width, count in stages:
        macs += side * side * 9 * (c_in * width + width * width)  # first block
        if c_in != width:
            macs += side * side * c_in * width  # projection
        macs += (count - 1) * side * side * 9 * 2 * width * width
        c_in = width
    config = resnet34.from_preset("resnet34")
    assert resnet34.flops(config, (224, 224, 3)) == 2 * macs == 2 * 3_663_761_408
    assert abs(macs / 3.6e9 - 1) < 0.02  # He et al. 2016, Table 1: 3.6e9 multiply-adds
    resnet18_macs = resnet34.flops(resnet34.from_preset("resnet18"), (224, 224, 3)) / 2
    assert abs(resnet18_macs / 1.8e9 - 1) < 0.02  # Table 1: 1.8e9


def test_tiny_flops_by_hand():
    cifar = resnet34.from_preset("resnet34-tiny")
    macs = (
        8 * 8 * 9 * 3 * 4  # 3×3 stem at 8×8
        + 8 * 8 * 9 * (4 * 4 + 4 * 4)  # block 0, identity shortcut
        + 4 * 4 * (9 * (4 * 8 + 8 * 8) + 4 * 8)  # blocks 1-3: stride 2 and a projection
        + 2 * 2 * (9 * (8 * 16 + 16 * 16) + 8 * 16)
        + 1 * 1 * (9 * (16 * 32 + 32 * 32) + 16 * 32)
        + 32 * 10
    )
    assert resnet34.flops(cifar, (8, 8, 3)) == 2 * macs
    imagenet = dataclasses.replace(cifar, stem="imagenet")
    macs = (
        8 * 8 * 49 * 3 * 4  # 7×7/2 stem: 15 → 8, max pool 8 → 4
        + 4 * 4 * 9 * (4 * 4 + 4 * 4)
        + 2 * 2 * (9 * (4 * 8 + 8 * 8) + 4 * 8)
        + 1 * 1 * (9 * (8 * 16 + 16 * 16) + 8 * 16)
        + 1 * 1 * (9 * (16 * 32 + 32 * 32) + 16 * 32)
        + 32 * 10
    )
    assert resnet34.flops(imagenet, (15, 15, 3)) == 2 * macs


# ---------------------------------------------------------------------------------------------
# Forward pass, gates and compaction.


def test_forward_matches_numpy(tiny):
    config, model, variables, x, _ = tiny
    assert {k for k in variables["params"] if "proj" in k} == {
        f"block_{j}_proj_{layer}" for j in (1, 2, 3) for layer in ("conv", "bn")
    }
    out = model.apply(variables, x)
    assert out.shape == (3, 10)
    _assert_close(out, _np_resnet34_tiny(variables, x, config.stem))


@pytest.mark.parametrize(
    "name, side",
    [("resnet34", 64), ("resnet34-cifar", 32), ("resnet18", 33), ("resnet18-cifar", 16)],
)
def test_output_shapes_per_preset(name, side):
    config = resnet34.from_preset(name, num_classes=7)
    model = ResNet34(config)
    x = jnp.zeros((2, side, side, 3))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(
        lambda v: model.apply(v, x, filter_gates=jnp.ones(config.num_filters)), shapes
    )
    assert out.shape == (2, 7)
    for j, (c_in, inner, c_out, _) in enumerate(config.block_plan()):
        assert shapes["params"][f"block_{j}_conv1"]["kernel"].shape == (3, 3, c_in, inner)
        assert shapes["params"][f"block_{j}_conv2"]["kernel"].shape == (3, 3, inner, c_out)


def test_gates_of_one_are_no_gates(tiny):
    config, model, variables, x, apply = tiny
    _assert_close(apply(variables, jnp.ones(config.num_filters)), model.apply(variables, x), 1e-6)


def _zero_channel(variables, j, o, side):
    """``variables`` with inner channel ``o`` of block ``j`` zeroed on its output side (``conv1``
    kernel slice, ``bn1`` scale and bias) or on its input side (``conv2`` input slice)."""
    params = jax.tree_util.tree_map(np.array, variables["params"])
    if side == "output":
        params[f"block_{j}_conv1"]["kernel"][..., o] = 0
        params[f"block_{j}_bn1"]["scale"][o] = 0
        params[f"block_{j}_bn1"]["bias"][o] = 0
    else:
        params[f"block_{j}_conv2"]["kernel"][..., o, :] = 0
    return {**variables, "params": params}


def test_a_zero_gate_removes_exactly_that_channel(tiny):
    """Brute force over every inner channel: gate 0 ≡ its weights zeroed on either side."""
    config, _, variables, _, apply = tiny
    ones = np.ones(config.num_filters, np.float32)
    dense = np.asarray(apply(variables, ones))
    g = 0
    for j, width in enumerate(config.inner):
        changes = []
        for o in range(width):
            gates = ones.copy()
            gates[g] = 0
            gated = apply(variables, gates)
            for side in ("output", "input"):
                _assert_close(gated, apply(_zero_channel(variables, j, o, side), ones), 1e-5)
            changes.append(np.abs(np.asarray(gated) - dense).max())
            g += 1
        assert max(changes) > 1e-3  # a channel inactive on all 3 images may change nothing
    assert g == config.num_filters == sum(TINY_WIDTHS)


def test_group_ids_are_the_inner_channels(tiny):
    config, _, variables, _, _ = tiny
    ids, layout = resnet34.group_ids(variables, config)
    assert layout.num_groups == config.num_filters == sum(config.inner) == 60
    assert layout.layer_names == tuple(f"params/block_{j}_conv1" for j in range(4))
    # An inner channel: its 3×3×C_in slice of conv1 and bn1's scale and bias.
    sizes = np.repeat([9 * c_in + 2 for c_in in (4, 4, 8, 16)], TINY_WIDTHS)
    np.testing.assert_array_equal(group_sizes(variables, ids), sizes)
    _, from_params = resnet34.group_ids(variables["params"], config)
    assert from_params.num_groups == 60


def test_compaction_equals_gates_and_group_mask(tiny):
    config, _, variables, x, apply = tiny
    keep = _keep(config.inner, seed=3)
    mask = keep.astype(np.float32)
    gated = apply(variables, mask)
    ids, _ = resnet34.group_ids(variables, config)
    _assert_close(apply(apply_group_mask(variables, ids, mask), np.ones_like(mask)), gated, 1e-5)
    small_variables, small_config = resnet34.compact(variables, config, keep)
    widths = tuple(int(part.sum()) for part in np.split(keep, np.cumsum(config.inner)[:-1]))
    assert small_config == dataclasses.replace(config, inner_channels=widths)
    for j, width in enumerate(widths):
        assert small_variables["params"][f"block_{j}_conv1"]["kernel"].shape[-1] == width
        assert small_variables["batch_stats"][f"block_{j}_bn1"]["var"].shape == (width,)
        assert small_variables["params"][f"block_{j}_conv2"]["kernel"].shape[-2] == width
    _assert_close(jax.jit(ResNet34(small_config).apply)(small_variables, x), gated, 1e-5)
    assert np.abs(np.asarray(gated - apply(variables, np.ones_like(mask)))).max() > 1e-2
    _, small_layout = resnet34.group_ids(small_variables, small_config)
    assert small_layout.num_groups == int(keep.sum())


def test_compacted_flops_drop_by_one_blocks_channels(tiny):
    """Removing ``k`` inner channels of block ``j`` at ``H_j × W_j`` saves
    ``H_j·W_j·9·k·(C_in + C_out)`` multiply-accumulates, nothing else."""
    config, _, variables, x, _ = tiny
    side = x.shape[1]
    full = resnet34.flops(config, (side, side, 3))
    block, removed = 2, 5  # block 2: C_in 8, C_out 16, at ceil(ceil(side / 2) / 2) per stride
    resolution = {"cifar": 2, "imagenet": 1}[config.stem]
    keep = np.ones(config.num_filters, bool)
    start = sum(config.inner[:block])
    keep[start : start + removed] = False
    _, small_config = resnet34.compact(variables, config, keep)
    assert small_config.inner == (4, 8, 16 - removed, 32)
    saved = resolution**2 * 9 * removed * (8 + 16)
    assert resnet34.flops(small_config, (side, side, 3)) == full - 2 * saved


def test_bfloat16_compute_with_float32_params():
    """Shape-only: the compute dtype reaches every layer (bfloat16 logits), parameters and
    BatchNorm statistics stay float32."""
    model = ResNet34(resnet34.from_preset("resnet34-tiny", dtype=jnp.bfloat16, stem="imagenet"))
    x = jnp.zeros((2, 16, 16, 3))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(model.apply, shapes, x).dtype == jnp.bfloat16


def test_spec_is_registered():
    spec = model_spec("resnet34")
    assert spec is resnet34.SPEC
    assert (spec.default_preset, spec.gate_keyword, spec.stateful) == (
        "resnet34-tiny",
        "filter_gates",
        True,
    )
    config = spec.make_config("resnet34-cifar", num_outputs=100, input_shape=(32, 32, 3))
    assert (config.num_classes, config.stem) == (100, "cifar")


# ---------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: ResNet34Config(blocks_per_stage=(3, 4, 0, 3)),
            r"blocks_per_stage\[2\]: expected a positive int, got 0",
        ),
        (
            lambda: ResNet34Config(blocks_per_stage=()),
            r"blocks_per_stage: expected a non-empty tuple",
        ),
        (lambda: ResNet34Config(widths=(64, 128, 256)), r"widths: expected 4 stage widths"),
        (
            lambda: ResNet34Config(widths=(64, 128, 256, -1)),
            r"widths\[3\]: expected a positive int, got -1",
        ),
        (
            lambda: ResNet34Config(stem="tiny"),
            r"stem: expected one of \('imagenet', 'cifar'\), got 'tiny'",
        ),
        (lambda: ResNet34Config(inner_channels=(64,) * 15), r"inner_channels: expected 16 entries"),
        (lambda: ResNet34Config(num_classes=0), r"num_classes: expected a positive int, got 0"),
        (lambda: ResNet34Config(dtype=jnp.int32), r"dtype: expected a floating compute dtype"),
        (lambda: resnet34.from_preset("resnet50"), r"'resnet50'.*'resnet18', 'resnet18-cifar'"),
        (
            lambda: resnet34.make_config("resnet34", num_outputs=10, input_shape=(784,)),
            r"input_shape: expected \(height, width, channels\)",
        ),
        (
            lambda: resnet34.flops(resnet34.from_preset("resnet34"), (224, 0, 3)),
            r"input_shape\[1\]: expected a positive int, got 0",
        ),
    ],
)
def test_bad_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_gates_keep_and_kind_raise(tiny):
    config, model, variables, x, _ = tiny
    with pytest.raises(TypeError, match=r"stem: expected one of"):
        ResNet34Config(stem=None)
    with pytest.raises(ValueError, match=r"x: expected \(n, height, width, channels\) images"):
        model.apply(variables, x[0])
    with pytest.raises(ValueError, match=r"filter_gates: expected shape \(60,\)"):
        model.apply(variables, x, filter_gates=jnp.ones(59))
    with pytest.raises(ValueError, match=r"keep: expected shape \(60,\)"):
        resnet34.compact(variables, config, np.ones(4, bool))
    keep = np.ones(60, bool)
    keep[4:12] = False  # block 1 would keep nothing
    with pytest.raises(ValueError, match=r"keeps no unit"):
        resnet34.compact(variables, config, keep)
    with pytest.raises(ValueError, match=r"kind: expected one of \('filters',\), got 'heads'"):
        resnet34.group_ids(variables, config, kind="heads")
    with pytest.raises(ValueError, match=r"kind: expected one of \('filters',\), got 'heads'"):
        resnet34.compact(variables, config, np.ones(60, bool), kind="heads")
