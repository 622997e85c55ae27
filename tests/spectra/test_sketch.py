"""Tests of jaxprune.spectra.sketch: random Khatri–Rao projections of a model's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.methods import pl_gating
from jaxprune.spectra import sketch_outputs
from jaxprune.spectra.sketch import example_output_shape, output_sketch


def test_output_sketch_is_an_isotropic_khatri_rao_projection():
    # The sketch of the identity map on (2, 3)-shaped outputs, fed the 6 basis tensors, is the
    # projection matrix R itself: k R Rᵀ / s -> I (E[R_cj R_c'j] = δ_cc' / k).
    basis = jnp.eye(6).reshape(6, 2, 3)
    s = 20000
    sketched = sketch_outputs(lambda p, x: x, {}, basis, jax.random.PRNGKey(0), s)
    r = np.asarray(sketched({}, basis), np.float64)
    assert r.shape == (6, s)
    np.testing.assert_allclose(6 * r @ r.T / s, np.eye(6), atol=0.1)
    again = sketch_outputs(lambda p, x: x, {}, basis, jax.random.PRNGKey(0), s)({}, basis)
    np.testing.assert_array_equal(again, r.astype(np.float32))


def test_factors_are_an_argument_of_one_function_per_model():
    # New keys give new factors but the same function object: one compiled kernel serves all.
    def identity(params, x):
        return x

    basis = jnp.eye(6).reshape(6, 2, 3)
    output = example_output_shape(identity, {}, basis)
    assert output.shape == (2, 3) and output.dtype == basis.dtype
    first = output_sketch(identity, output, jax.random.PRNGKey(0), 4)
    second = output_sketch(identity, output, jax.random.PRNGKey(1), 4)
    assert first.apply_fn is second.apply_fn
    assert [f.shape for f in first.factors] == [(2, 4), (3, 4)]
    direct = sketch_outputs(identity, {}, basis, jax.random.PRNGKey(0), 4)({}, basis)
    np.testing.assert_array_equal(first.apply_fn(({}, first.factors), basis), direct)


def test_single_outputs_are_returned_unchanged_and_arguments_are_checked():
    def scalar(params, x):
        return jnp.sum(x, axis=-1, keepdims=True)

    x = jnp.ones((3, 2))
    assert sketch_outputs(scalar, {}, x, jax.random.PRNGKey(0), 8) is scalar
    with pytest.raises(ValueError, match="num_projections"):
        sketch_outputs(scalar, {}, x, jax.random.PRNGKey(0), 0)
    with pytest.raises(TypeError, match="x"):
        sketch_outputs(scalar, {}, [1.0], jax.random.PRNGKey(0), 8)


def test_deprecated_sketch_outputs_alias_forwards_to_spectra():
    basis = jnp.eye(6).reshape(6, 2, 3)
    key = jax.random.PRNGKey(0)
    with pytest.warns(DeprecationWarning, match=r"jaxprune\.spectra\.sketch_outputs"):
        old = pl_gating.sketch_outputs(lambda p, x: x, {}, basis, key, 8)
    new = sketch_outputs(lambda p, x: x, {}, basis, key, 8)
    np.testing.assert_array_equal(old({}, basis), new({}, basis))
