"""MobileNetV2: Sandler et al.'s parameter and multiply-add counts by hand, a NumPy forward
reference of the tiny preset, gates ≡ zeroed channel weights (brute force) ≡ compaction, FLOPs
by hand, the zoo binding, and config and input validation."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_vgg_resnet import _assert_close, _images, _keep, _np_bn, _random_variables, _to_np

from jaxprune.group_ids import group_sizes
from jaxprune.masks.mask import apply_group_mask
from jaxprune.models import mobilenet_v2
from jaxprune.models.mobilenet_v2 import MobileNetV2, MobileNetV2Config, make_divisible
from jaxprune.train import build_model

# mobilenet_v2-tiny, written out: (in, hidden, out, stride, expand) per block; stem 8 channels
# at stride 1, head 1280 (width 0.25 of the CIFAR variant's first five stages, one block each).
TINY_BLOCKS = [
    (8, 8, 8, 1, False),
    (8, 48, 8, 1, True),
    (8, 48, 8, 2, True),
    (8, 48, 16, 2, True),
    (16, 96, 24, 1, True),
]
TINY_PRUNABLE = [j for j, block in enumerate(TINY_BLOCKS) if block[4]]
TINY_WIDTHS = [TINY_BLOCKS[j][1] for j in TINY_PRUNABLE]
# Agreement of two float64 computations of the same function (the tiny model runs in float64).
RTOL = 1e-9


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------------------------
# NumPy reference and shared fixtures.


def _np_depthwise(x, kernel, stride):
    """3×3 depthwise convolution (kernel ``(3, 3, 1, C)``), zero padding 1, stride ``stride``."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = np.zeros((n, ho, wo, c))
    for dy in range(3):
        for dx in range(3):
            patch = xp[
                :,
                dy : dy + stride * (ho - 1) + 1 : stride,
                dx : dx + stride * (wo - 1) + 1 : stride,
            ]
            out += patch * kernel[dy, dx, 0]
    return out


def _np_stem(x, kernel):
    """3×3 convolution, stride 1, zero padding 1 (NHWC, HWIO)."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += xp[:, dy : dy + h, dx : dx + w] @ kernel[dy, dx]
    return out


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


def _np_mobilenet(variables, x, gates=None):
    """Eval-mode tiny MobileNetV2 from :data:`TINY_BLOCKS`, in NumPy float64; ``gates`` maps a
    block index to its ``(hidden,)`` channel gates."""
    v = _to_np(variables)
    p, s = v["params"], v["batch_stats"]

    def bn(y, name):
        return _np_bn(y, p[name], s[name])

    x = _relu6(bn(_np_stem(np.asarray(x, np.float64), p["stem_conv"]["kernel"]), "stem_bn"))
    for j, (c_in, hidden, c_out, stride, expand) in enumerate(TINY_BLOCKS):
        y = x
        if expand:
            y = _relu6(bn(y @ p[f"block_{j}_expand"]["kernel"][0, 0], f"block_{j}_expand_bn"))
        assert y.shape[-1] == hidden
        y = _np_depthwise(y, p[f"block_{j}_depthwise"]["kernel"], stride)
        y = _relu6(bn(y, f"block_{j}_depthwise_bn"))
        if gates is not None and j in gates:
            y = y * gates[j]
        y = bn(y @ p[f"block_{j}_project"]["kernel"][0, 0], f"block_{j}_project_bn")
        x = y + x if stride == 1 and c_in == c_out else y
    x = _relu6(bn(x @ p["head_conv"]["kernel"][0, 0], "head_bn")).mean(axis=(1, 2))
    return x @ p["classifier"]["kernel"] + p["classifier"]["bias"]


@functools.cache
def _forward(config, train=False):
    """Jitted ``(variables, x, gates) -> logits`` of ``MobileNetV2(config)`` (``gates`` may be
    ``None``); in train mode ``(logits, updated batch statistics)``."""
    model = MobileNetV2(config)

    def run(variables, x, gates):
        kwargs = {} if gates is None else {"channel_gates": gates}
        if not train:
            return model.apply(variables, x, **kwargs)
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], **kwargs)
        return logits, updates["batch_stats"]

    return jax.jit(run)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model computing in float64, with random float64 variables whose BatchNorm
    statistics were then updated by one train-mode pass (so they are non-trivial)."""
    config = mobilenet_v2.from_preset("mobilenet_v2-tiny", dtype=jnp.float64)
    model = MobileNetV2(config)
    x = _images(3, 8, seed=11).astype(np.float64)
    variables = _to_np(_random_variables(model, x, seed=12))
    ones = np.ones(config.num_channels)
    _, stats = _forward(config, train=True)(variables, x[::-1] + 0.5, ones)
    stats = _to_np(stats)
    moved = jax.tree_util.tree_map(
        lambda a, b: np.abs(a - b).max(), stats, variables["batch_stats"]
    )
    assert min(jax.tree_util.tree_leaves(moved)) > 0
    return config, model, {"params": variables["params"], "batch_stats": stats}, x


def _gates(keep):
    return jnp.asarray(keep, jnp.float32)


# ---------------------------------------------------------------------------------------------
# Published counts (Sandler et al. (2018), Tables 2 and 3).

TABLE2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1)]
TABLE2 += [(6, 160, 3, 2), (6, 320, 1, 1)]


def _hand_counts(side, stem_stride, strides, classes):
    """Parameters (kernels, BatchNorm scales and biases, classifier) and multiply-adds of width
    1.0 MobileNetV2, from Table 2 with the given per-stage strides."""
    height = -(-side // stem_stride)
    params = 9 * 3 * 32 + 2 * 32
    macs = height * height * 9 * 3 * 32
    c_in = 32
    for (t, c, n, _), stage_stride in zip(TABLE2, strides):
        for b in range(n):
            stride = stage_stride if b == 0 else 1
            hidden = t * c_in
            if t > 1:
                params += c_in * hidden + 2 * hidden
                macs += height * height * c_in * hidden
            height = -(-height // stride)
            params += 9 * hidden + 2 * hidden + hidden * c + 2 * c
            macs += height * height * (9 * hidden + hidden * c)
            c_in = c
    params += 320 * 1280 + 2 * 1280 + 1280 * classes + classes
    macs += height * height * 320 * 1280 + 1280 * classes
    return params, macs


@functools.cache
def _shapes(preset, side):
    """Shapes of the variables of ``preset`` on ``side × side`` images (never run)."""
    model = MobileNetV2(mobilenet_v2.from_preset(preset))
    x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def _param_count(preset, side):
    return sum(
        int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(_shapes(preset, side)["params"])
    )


def test_imagenet_model_matches_sandler_table3():
    params, macs = _hand_counts(224, 2, [s for *_, s in TABLE2], 1000)
    # Sandler et al. (2018), Table 3: 3.4M parameters, 300M multiply-adds.  Counting the
    # BatchNorm scales and biases gives torchvision's 3,504,872.
    assert params == 3_504_872
    assert 3.4e6 <= params <= 3.51e6
    assert abs(macs / 300e6 - 1) < 0.005
    config = mobilenet_v2.from_preset("mobilenet_v2")
    assert _param_count("mobilenet_v2", 224) == params
    assert mobilenet_v2.flops(config, (224, 224, 3)) == 2 * macs
    _, layout = mobilenet_v2.group_ids(_shapes("mobilenet_v2", 224), config)
    # The 16 blocks with t = 6: 6 × their input widths.
    expected = 6 * (16 + 24 + 24 + 32 * 2 + 32 + 64 * 3 + 64 + 96 * 2 + 96 + 160 * 2 + 160)
    assert layout.num_groups == config.num_channels == expected == 7104


def test_cifar_variant_counts():
    config = mobilenet_v2.from_preset("mobilenet_v2-cifar")
    params, macs = _hand_counts(32, 1, [1, 1, 2, 2, 1, 2, 1], 10)
    assert _param_count("mobilenet_v2-cifar", 32) == params
    assert mobilenet_v2.flops(config, (32, 32, 3)) == 2 * macs


def test_output_shapes_of_every_preset(tiny):
    config, _, variables, _ = tiny
    assert _forward(config)(variables, _images(2, 8), None).shape == (2, 10)
    # Shapes only for the rest; 32×32 reaches the head at 4×4 (three stride-2 stages),
    # 224×224 at 7×7 (five), the tiny preset's 16×16 at 4×4 (two).
    for preset, side, head_side, classes in (
        ("mobilenet_v2-tiny", 16, 4, 10),
        ("mobilenet_v2-cifar", 32, 4, 10),
        ("mobilenet_v2", 224, 7, 1000),
    ):
        model = MobileNetV2(mobilenet_v2.from_preset(preset))
        x = jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32)
        logits, state = jax.eval_shape(
            lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
            _shapes(preset, side),
            x,
        )
        head = state["intermediates"]["head_conv"]["__call__"][0]
        assert (logits.shape, head.shape) == ((2, classes), (2, head_side, head_side, 1280))


def test_width_multiplier_rounds_like_the_reference():
    # _make_divisible: nearest multiple of 8, at least 8, at most 10% below.
    assert [make_divisible(v) for v in (4.0, 11.2, 12.0, 33.6, 56.0, 1792.0)] == [
        8,
        16,
        16,
        32,
        56,
        1792,
    ]
    config = MobileNetV2Config(width_multiplier=0.35)
    outs = sorted({block.out_channels for block in config.block_plan()})
    assert (config.stem_channels, outs, config.head_channels) == (
        16,
        [8, 16, 24, 32, 56, 112],
        1280,  # kept for w < 1 (Sandler et al. (2018), Sec. 4)
    )
    assert MobileNetV2Config(width_multiplier=1.4).head_channels == 1792


# ---------------------------------------------------------------------------------------------
# Forward pass, gates and group ids.


def test_tiny_forward_matches_numpy(tiny):
    config, _, variables, x = tiny
    plan = [
        (b.in_channels, b.hidden, b.out_channels, b.stride, b.expand) for b in config.block_plan()
    ]
    assert plan == TINY_BLOCKS
    assert [b.residual for b in config.block_plan()] == [True, True, False, False, False]
    _assert_close(_forward(config)(variables, x, None), _np_mobilenet(variables, x), rtol=RTOL)


def test_all_one_gates_equal_no_gates(tiny):
    config, _, variables, x = tiny
    forward = _forward(config)
    ones = jnp.ones(config.num_channels)
    _assert_close(forward(variables, x, ones), forward(variables, x, None), rtol=RTOL)


def _zero_channel(variables, j, o):
    """The variables with every weight of hidden channel ``o`` of block ``j`` set to 0."""
    v = jax.tree_util.tree_map(lambda a: np.array(a, np.float64), variables)
    p = v["params"]
    p[f"block_{j}_expand"]["kernel"][..., o] = 0
    p[f"block_{j}_depthwise"]["kernel"][..., o] = 0
    for bn in (f"block_{j}_expand_bn", f"block_{j}_depthwise_bn"):
        p[bn]["scale"][o] = p[bn]["bias"][o] = 0
    p[f"block_{j}_project"]["kernel"][..., o, :] = 0
    return v


def test_zero_gate_equals_zeroing_the_channel_weights(tiny):
    """One random channel of every prunable block: its gate at 0 ≡ its weights at 0 (by hand and
    by the group mask) ≡ the NumPy reference with that channel gated, in eval and train mode."""
    config, _, variables, x = tiny
    ids, _ = mobilenet_v2.group_ids(variables, config)
    offsets = np.concatenate([[0], np.cumsum(TINY_WIDTHS)[:-1]])
    dense = np.asarray(_forward(config)(variables, x, None))
    change = 0.0
    for j, offset, width in zip(TINY_PRUNABLE, offsets, TINY_WIDTHS):
        o = int(np.random.default_rng(14 + j).integers(width))
        gates = np.ones(config.num_channels)
        gates[offset + o] = 0
        zeroed = _zero_channel(variables, j, o)
        masked = apply_group_mask(variables, ids, gates)
        # Eval mode, then train mode (all-one gates ≡ no gates); in train mode the logits agree
        # but not the running statistics of the zeroed channel's own BatchNorms (they see zeros
        # instead of its activations).
        forward = _forward(config)
        gated = forward(variables, x, gates)
        _assert_close(gated, forward(zeroed, x, None), rtol=RTOL)
        _assert_close(gated, forward(masked, x, None), rtol=RTOL)
        train = _forward(config, train=True)
        gated_train = train(variables, x, gates)[0]
        _assert_close(gated_train, train(zeroed, x, np.ones_like(gates))[0], rtol=RTOL)
        _assert_close(gated_train, train(masked, x, np.ones_like(gates))[0], rtol=RTOL)
        gated = _forward(config)(variables, x, gates)
        reference = _np_mobilenet(variables, x, {j: gates[offset : offset + width]})
        _assert_close(gated, reference, rtol=RTOL)
        change = max(change, float(np.abs(np.asarray(gated) - dense).max()))
    assert change > 1e-3


def test_group_ids_cover_exactly_the_channel_weights(tiny):
    config, _, variables, _ = tiny
    ids, layout = mobilenet_v2.group_ids(variables, config)
    assert layout.num_groups == config.num_channels == sum(TINY_WIDTHS) == 240
    assert layout.layer_names == tuple(f"params/block_{j}_expand" for j in TINY_PRUNABLE)
    np.testing.assert_array_equal(layout.layer_of_group, np.repeat(np.arange(4), TINY_WIDTHS))
    # A channel: expand column (C_in) + 2 BN, depthwise 3×3 + 2 BN, projection row (C_out).
    per_channel = [TINY_BLOCKS[j][0] + 2 + 9 + 2 + TINY_BLOCKS[j][2] for j in TINY_PRUNABLE]
    np.testing.assert_array_equal(group_sizes(variables, ids), np.repeat(per_channel, TINY_WIDTHS))
    # Brute force: the leaves of group g are exactly the weights _zero_channel zeroes.
    offsets = np.concatenate([[0], np.cumsum(TINY_WIDTHS)[:-1]])
    flat_ids = jax.tree_util.tree_leaves(ids)
    shapes = [np.shape(a) for a in jax.tree_util.tree_leaves(variables)]
    for j, offset in zip(TINY_PRUNABLE, offsets):
        o = 1
        ones = jax.tree_util.tree_map(lambda a: np.ones(np.shape(a), np.float32), variables)
        expected = jax.tree_util.tree_leaves(_zero_channel(ones, j, o))
        for leaf_ids, shape, leaf in zip(flat_ids, shapes, expected):
            in_group = np.broadcast_to(np.asarray(leaf_ids) == offset + o, shape)
            np.testing.assert_array_equal(in_group, leaf == 0)
    _, from_params = mobilenet_v2.group_ids(variables["params"], config)
    assert from_params.layer_names == tuple(f"block_{j}_expand" for j in TINY_PRUNABLE)


# ---------------------------------------------------------------------------------------------
# Compaction and FLOPs.


def _tiny_macs(side, hidden):
    """Multiply-adds of the tiny model on ``side × side`` images with the given hidden widths."""
    h, macs = side, side * side * 9 * 3 * 8
    for (c_in, _, c_out, stride, expand), width in zip(TINY_BLOCKS, hidden):
        if expand:
            macs += h * h * c_in * width
        h = -(-h // stride)
        macs += h * h * (9 * width + width * c_out)
    return macs + h * h * TINY_BLOCKS[-1][2] * 1280 + 1280 * 10


def test_compact_equals_gated_model_in_eval_mode(tiny):
    config, _, variables, x = tiny
    keep = _keep(TINY_WIDTHS, seed=15)
    gated = _forward(config)(variables, x, _gates(keep))
    small_variables, small_config = mobilenet_v2.compact(variables, config, keep)
    kept = [int(part.sum()) for part in np.split(keep, np.cumsum(TINY_WIDTHS)[:-1])]
    hidden = [8, *kept]
    assert small_config.hidden_channels == tuple(hidden)
    p, s = small_variables["params"], small_variables["batch_stats"]
    for j in TINY_PRUNABLE:
        c_in, _, c_out, _, _ = TINY_BLOCKS[j]
        h = hidden[j]
        assert p[f"block_{j}_expand"]["kernel"].shape == (1, 1, c_in, h)
        assert p[f"block_{j}_depthwise"]["kernel"].shape == (3, 3, 1, h)
        assert p[f"block_{j}_project"]["kernel"].shape == (1, 1, h, c_out)
        assert s[f"block_{j}_expand_bn"]["var"].shape == (h,)
        assert s[f"block_{j}_depthwise_bn"]["mean"].shape == (h,)
    compacted = _forward(small_config)(small_variables, x, None)
    _assert_close(compacted, gated, rtol=RTOL)
    assert np.abs(np.asarray(_forward(config)(variables, x, None) - gated)).max() > 1e-2
    _, small_layout = mobilenet_v2.group_ids(small_variables, small_config)
    assert small_layout.num_groups == int(keep.sum())
    small_flops = mobilenet_v2.flops(small_config, (8, 8, 3))
    assert small_flops < mobilenet_v2.flops(config, (8, 8, 3))
    assert small_flops == 2 * _tiny_macs(8, small_config.hidden)
    everything, same_config = mobilenet_v2.compact(variables, config, np.ones(240, bool))
    assert same_config.hidden == config.hidden
    jax.tree_util.tree_map(np.testing.assert_array_equal, everything, variables)


def test_flops_by_hand():
    config = mobilenet_v2.from_preset("mobilenet_v2-tiny")
    full = [block[1] for block in TINY_BLOCKS]
    assert mobilenet_v2.flops(config, (8, 8, 3)) == 2 * _tiny_macs(8, full)
    assert mobilenet_v2.flops(config, (7, 7, 3)) == 2 * _tiny_macs(7, full)
    # Removing 20 of block 4's 96 channels at 2×2 (16 → 24 channels, stride 1): the expand
    # conv loses 2·2·16·20, the depthwise 2·2·9·20, the projection 2·2·20·24 multiply-adds.
    pruned = dataclasses.replace(config, hidden_channels=(8, 48, 48, 48, 76))
    saved = 2 * 2 * 16 * 20 + 2 * 2 * 9 * 20 + 2 * 2 * 20 * 24
    assert (
        mobilenet_v2.flops(config, (8, 8, 3)) - mobilenet_v2.flops(pruned, (8, 8, 3)) == 2 * saved
    )
    assert mobilenet_v2.flops(pruned, (8, 8, 3)) == 2 * _tiny_macs(8, pruned.hidden)


# ---------------------------------------------------------------------------------------------
# The zoo, compute dtype and validation.


def test_build_model_binds_the_tiny_preset():
    model = build_model("mobilenet_v2", num_outputs=5, input_shape=(16, 16, 3))
    assert (model.kind, model.stateful, model.gate_keyword) == ("channels", True, "channel_gates")
    assert model.config == mobilenet_v2.from_preset("mobilenet_v2-tiny", num_classes=5)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(shapes) == {"params", "batch_stats"}
    gates = jax.ShapeDtypeStruct((240,), jnp.float32)
    outputs, updates, _ = jax.eval_shape(
        lambda v, x, g: model.apply(v, x, train=True, gates=g), shapes, x, gates
    )
    assert outputs.shape == (2, 5) and set(updates) == {"batch_stats"}
    variables = _random_variables(model.module, np.zeros((2, 16, 16, 3), np.float32), seed=18)
    _, layout = model.group_ids(variables["params"])
    small, small_variables = model.compact(variables, _keep(TINY_WIDTHS, seed=19))
    assert layout.num_groups == 240
    assert small.config.hidden_channels != model.config.hidden
    assert small.flops((16, 16, 3)) < model.flops((16, 16, 3))
    _, small_layout = small.group_ids(small_variables["params"])
    assert small_layout.num_groups == small.config.num_channels


def test_bfloat16_compute_with_float32_params(tiny):
    config, _, _, x = tiny
    model = MobileNetV2(dataclasses.replace(config, dtype=jnp.bfloat16))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(model.apply, shapes, x).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "make, error, match",
    [
        (
            lambda: mobilenet_v2.from_preset("mobilenet_v3"),
            ValueError,
            r"unknown MobileNetV2 preset 'mobilenet_v3'.*'mobilenet_v2', 'mobilenet_v2-cifar'",
        ),
        (
            lambda: MobileNetV2Config(width_multiplier=0.0),
            ValueError,
            r"width_multiplier: expected a number in \(0, inf\), got 0",
        ),
        (
            lambda: MobileNetV2Config(width_multiplier=float("nan")),
            ValueError,
            r"width_multiplier: expected a finite number, got nan",
        ),
        (
            lambda: MobileNetV2Config(stages=((6, 24, 2),)),
            ValueError,
            r"stages\[0\]: expected \(expansion, channels, repeats, stride\)",
        ),
        (
            lambda: MobileNetV2Config(stages=((6, 24, 0, 1),)),
            ValueError,
            r"stages\[0\].repeats: expected a positive int, got 0",
        ),
        (lambda: MobileNetV2Config(stages=()), ValueError, r"stages: expected a non-empty tuple"),
        (
            lambda: MobileNetV2Config(hidden_channels=(32,) * 16),
            ValueError,
            r"hidden_channels: expected 17 entries \(one per block\), got 16",
        ),
        (
            lambda: MobileNetV2Config(hidden_channels=(16, *(96,) * 16)),
            ValueError,
            r"hidden_channels\[0\]: block 0 has expansion 1 .* input width 32, got 16",
        ),
        (
            lambda: MobileNetV2Config(hidden_channels=(32, 0, *(96,) * 15)),
            ValueError,
            r"hidden_channels\[1\]: expected a positive int, got 0",
        ),
        (lambda: MobileNetV2Config(stem_stride=0), ValueError, r"stem_stride: expected a positive"),
        (lambda: MobileNetV2Config(num_classes=0), ValueError, r"num_classes: expected a positive"),
        (lambda: MobileNetV2Config(dtype=jnp.int8), ValueError, r"dtype: expected a floating"),
        (lambda: make_divisible(-1.0), ValueError, r"value: expected a number in \(0, inf\)"),
        (
            lambda: mobilenet_v2.flops(mobilenet_v2.PRESETS["mobilenet_v2-tiny"], (8, 8)),
            ValueError,
            r"input_shape: expected \(height, width, channels\)",
        ),
        (
            lambda: mobilenet_v2.make_config("mobilenet_v2-tiny", num_outputs=3, input_shape=(64,)),
            ValueError,
            r"input_shape: expected \(height, width, channels\)",
        ),
    ],
)
def test_bad_configs_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_gates_keep_and_kind_raise(tiny):
    config, model, variables, x = tiny
    with pytest.raises(ValueError, match=r"channel_gates: expected shape \(240,\)"):
        model.apply(variables, x, channel_gates=jnp.ones(239))
    with pytest.raises(ValueError, match=r"keep: expected shape \(240,\)"):
        mobilenet_v2.compact(variables, config, np.ones(5, bool))
    keep = np.ones(240, bool)
    keep[48:96] = False  # every channel of block 2
    with pytest.raises(ValueError, match=r"keep\['params/block_2_expand'\] keeps no unit"):
        mobilenet_v2.compact(variables, config, keep)
    with pytest.raises(ValueError, match=r"kind: expected one of \('channels',\), got 'filters'"):
        mobilenet_v2.group_ids(variables, config, kind="filters")
    wider = dataclasses.replace(config, hidden_channels=(8, 40, 48, 48, 96))
    with pytest.raises(ValueError, match=r"232 hidden channels .* do not match the 240"):
        mobilenet_v2.group_ids(variables, wider)
