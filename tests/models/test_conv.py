"""The zoo's convolution equals ``lax.conv_general_dilated`` (values and gradients), takes the
matmul path exactly on small output maps and the shifted-sum path exactly on depthwise ones."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxprune.models.conv import MAX_MATMUL_PIXELS, conv_general_dilated

LAYOUT = ("NHWC", "HWIO", "NHWC")

# (input H×W, kernel, strides, padding, output pixels)
CASES = [
    ((2, 2), (3, 3), (1, 1), "SAME", 4),
    ((2, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), 4),
    ((1, 1), (3, 3), (1, 1), "SAME", 1),
    ((3, 3), (3, 3), (2, 2), "SAME", 4),
    ((4, 4), (3, 3), (2, 2), ((1, 1), (1, 1)), 4),
    ((3, 3), (3, 3), (1, 1), "VALID", 1),
    ((2, 3), (1, 1), (1, 1), "VALID", 6),
    ((2, 2), (1, 1), (1, 1), "SAME", 4),
    ((4, 1), (3, 3), (1, 1), "SAME_LOWER", 4),
    ((4, 4), (3, 3), (1, 1), "SAME", 16),
    ((5, 5), (3, 3), (2, 2), ((0, 2), (1, 0)), 6),
]


def _inputs(spatial, kernel, seed=0):
    rng = np.random.default_rng(seed)
    lhs = jnp.asarray(rng.normal(size=(3, *spatial, 5)), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=(*kernel, 5, 7)), jnp.float32)
    return lhs, rhs


def _primitives(fn, *args):
    return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


@pytest.mark.parametrize("spatial, kernel, strides, padding, pixels", CASES)
def test_values_and_gradients_equal_lax(spatial, kernel, strides, padding, pixels):
    lhs, rhs = _inputs(spatial, kernel)

    def ours(a, b):
        return conv_general_dilated(a, b, strides, padding, dimension_numbers=LAYOUT)

    def reference(a, b):
        return lax.conv_general_dilated(
            a, b, strides, padding, dimension_numbers=LAYOUT, precision=lax.Precision.HIGHEST
        )

    np.testing.assert_allclose(ours(lhs, rhs), reference(lhs, rhs), rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=reference(lhs, rhs).shape))
    grads = jax.vjp(ours, lhs, rhs)[1](cotangent.astype(jnp.float32))
    expected = jax.vjp(reference, lhs, rhs)[1](cotangent.astype(jnp.float32))
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    used = _primitives(ours, lhs, rhs)
    assert ("conv_general_dilated" not in used) == (pixels <= MAX_MATMUL_PIXELS)


def test_flax_layout_and_vmap():
    """Flax's ``nn.Conv`` passes its ``ConvDimensionNumbers``; under ``vmap`` over a leading
    axis the result equals the per-slice convolutions."""
    lhs, _ = _inputs((2, 2), (3, 3))
    layer = nn.Conv(4, (3, 3), padding="SAME", conv_general_dilated=conv_general_dilated)
    plain = nn.Conv(4, (3, 3), padding="SAME")
    variables = plain.init(jax.random.key(0), lhs)
    np.testing.assert_allclose(
        layer.apply(variables, lhs), plain.apply(variables, lhs), rtol=1e-5, atol=1e-5
    )
    stacked = jnp.stack([lhs, 2.0 * lhs + 1.0])
    batched = jax.vmap(lambda x: layer.apply(variables, x))(stacked)
    for i in range(2):
        np.testing.assert_allclose(
            batched[i], plain.apply(variables, stacked[i]), rtol=1e-5, atol=1e-5
        )


DEPTHWISE_CASES = [
    ((8, 8), (1, 1), ((1, 1), (1, 1))),
    ((8, 8), (2, 2), ((1, 1), (1, 1))),
    ((7, 5), (2, 2), "SAME"),
    ((4, 4), (1, 1), "VALID"),
    ((2, 2), (1, 1), "SAME"),
]


@pytest.mark.parametrize("spatial, strides, padding", DEPTHWISE_CASES)
def test_depthwise_values_and_gradients_equal_lax(spatial, strides, padding):
    rng = np.random.default_rng(3)
    lhs = jnp.asarray(rng.normal(size=(2, *spatial, 6)), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=(3, 3, 1, 6)), jnp.float32)

    def ours(a, b):
        return conv_general_dilated(
            a, b, strides, padding, dimension_numbers=LAYOUT, feature_group_count=6
        )

    def reference(a, b):
        return lax.conv_general_dilated(
            a,
            b,
            strides,
            padding,
            dimension_numbers=LAYOUT,
            feature_group_count=6,
            precision=lax.Precision.HIGHEST,
        )

    np.testing.assert_allclose(ours(lhs, rhs), reference(lhs, rhs), rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=reference(lhs, rhs).shape), jnp.float32)
    for got, want in zip(
        jax.vjp(ours, lhs, rhs)[1](cotangent), jax.vjp(reference, lhs, rhs)[1](cotangent)
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert "conv_general_dilated" not in _primitives(ours, lhs, rhs)


def test_depthwise_in_bfloat16_accumulates_in_float32():
    rng = np.random.default_rng(4)
    lhs = jnp.asarray(rng.normal(size=(2, 6, 6, 8)), jnp.bfloat16)
    rhs = jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.bfloat16)
    got = conv_general_dilated(
        lhs, rhs, (1, 1), "SAME", dimension_numbers=LAYOUT, feature_group_count=8
    )
    exact = lax.conv_general_dilated(
        lhs.astype(jnp.float32),
        rhs.astype(jnp.float32),
        (1, 1),
        "SAME",
        dimension_numbers=LAYOUT,
        feature_group_count=8,
        precision=lax.Precision.HIGHEST,
    )
    assert got.dtype == jnp.bfloat16
    # one rounding of the float32 sum to bfloat16 (8 bits of mantissa): within 2^-8 relative
    np.testing.assert_allclose(
        got.astype(jnp.float32), exact, rtol=2.0**-8, atol=2.0**-8 * float(jnp.abs(exact).max())
    )


def test_grouped_and_dilated_convolutions_stay_on_lax():
    rng = np.random.default_rng(2)
    lhs = jnp.asarray(rng.normal(size=(2, 2, 2, 4)), jnp.float32)

    def grouped(a, b):
        return conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=LAYOUT, feature_group_count=2
        )

    def dilated(a, b):
        return conv_general_dilated(
            a, b, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=LAYOUT
        )

    def multiplier(a, b):  # depthwise with two filters per channel
        return conv_general_dilated(
            a, b, (1, 1), "SAME", dimension_numbers=LAYOUT, feature_group_count=4
        )

    two_groups = jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)
    np.testing.assert_allclose(
        grouped(lhs, two_groups),
        lax.conv_general_dilated(
            lhs, two_groups, (1, 1), "SAME", dimension_numbers=LAYOUT, feature_group_count=2
        ),
        rtol=1e-6,
    )
    assert "conv_general_dilated" in _primitives(grouped, lhs, two_groups)
    full = jnp.asarray(rng.normal(size=(3, 3, 4, 3)), jnp.float32)
    assert "conv_general_dilated" in _primitives(dilated, lhs, full)
    doubled = jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32)
    assert "conv_general_dilated" in _primitives(multiplier, lhs, doubled)
