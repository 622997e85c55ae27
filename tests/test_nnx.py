"""Flax NNX models as inputs: the structured NTK fast path, group constructors and masks on
``nnx.State``, against brute-force Jacobians and the equivalent Linen models."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import brute_force_group_kernels
from flax import nnx

from jaxprune.masks import apply_group_mask, build_group_ids, filters, neurons
from jaxprune.spectra import empirical_ntk
from jaxprune.spectra.structured import find_linear_calls


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(3, 5, rngs=rngs)
        self.l2 = nnx.Linear(5, 4, rngs=rngs)
        self.l3 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):  # (n, 3) -> (n, 2)
        return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(5, name="l1")(x))
        return nn.Dense(2, name="l3")(jnp.tanh(nn.Dense(4, name="l2")(h)))


class NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.c1 = nnx.Conv(2, 3, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(3, 4, (3, 3), strides=2, padding="VALID", rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):  # (n, 6, 6, 2) -> (n, 2)
        h = jnp.tanh(self.c2(jnp.tanh(self.c1(x))))
        return self.head(h.mean(axis=(1, 2)))


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Conv(3, (3, 3), name="c1")(x))
        h = jnp.tanh(nn.Conv(4, (3, 3), strides=2, padding="VALID", name="c2")(h))
        return nn.Dense(2, name="head")(h.mean(axis=(1, 2)))


CASES = {
    # model classes, input shape, specs of one group per neuron / filter (with the next layer)
    "mlp": (
        NnxMLP,
        LinenMLP,
        (4, 3),
        (neurons(r"l1$", next_layer=r"l2$"), neurons(r"l3$")),
    ),
    "cnn": (
        NnxCNN,
        LinenCNN,
        (3, 6, 6, 2),
        (filters(r"c1$", next_layer=r"c2$"), neurons(r"head$")),
    ),
}


def _nnx_case(case, dtype=jnp.float32):
    make, _, shape, specs = CASES[case]
    graphdef, state = nnx.split(make(nnx.Rngs(0)))
    state = jax.tree_util.tree_map(lambda a: a.astype(dtype), state)
    x = jax.random.normal(jax.random.PRNGKey(1), shape, dtype)

    def apply_fn(state, x):
        return nnx.merge(graphdef, state)(x)

    return apply_fn, state, x, specs


@pytest.mark.parametrize("case", sorted(CASES))
def test_structured_group_kernels_match_brute_force(case):
    """In float64, so that "to round-off" means 1e-10 (float32 is compared with the Jacobian
    backend and Linen below)."""
    with jax.enable_x64(True):
        apply_fn, state, x, specs = _nnx_case(case, jnp.float64)
        ids, layout = build_group_ids(state, specs)
        calls = find_linear_calls(apply_fn, state, x)
        assert len(calls) == 3  # every layer found: the fast path, not the Jacobian fallback
        original = nnx.Linear.__call__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kernels = empirical_ntk(apply_fn, state, x, group_ids=ids, backend="structured")
        assert nnx.Linear.__call__ is original  # the interception is undone
        expected = brute_force_group_kernels(apply_fn, state, x, x, ids)
        assert kernels.shape == (layout.num_groups, x.shape[0], x.shape[0])
        assert kernels.dtype == jnp.float64
        np.testing.assert_allclose(kernels, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_nnx_kernel_equals_linen_and_jacobian(case):
    apply_fn, state, x, specs = _nnx_case(case)
    linen = CASES[case][1]()
    variables = {"params": nnx.to_pure_dict(state)}
    ids, _ = build_group_ids(state, specs)
    linen_ids, _ = build_group_ids(variables, specs)
    nnx_kernels = empirical_ntk(apply_fn, state, x, group_ids=ids, backend="structured")
    linen_kernels = empirical_ntk(
        linen.apply, variables, x, group_ids=linen_ids, backend="structured"
    )
    jacobian = empirical_ntk(apply_fn, state, x, group_ids=ids, backend="jacobian")
    np.testing.assert_allclose(nnx_kernels, linen_kernels, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nnx_kernels, jacobian, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        empirical_ntk(apply_fn, state, x, backend="structured"),
        empirical_ntk(linen.apply, variables, x, backend="structured"),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_build_group_ids_on_state_equals_linen(case):
    _, state, x, specs = _nnx_case(case)
    ids, layout = build_group_ids(state, specs)
    linen_params = CASES[case][1]().init(jax.random.PRNGKey(0), x)["params"]
    linen_ids, linen_layout = build_group_ids(linen_params, specs)
    assert layout.layer_names == linen_layout.layer_names
    np.testing.assert_array_equal(layout.layer_of_group, linen_layout.layer_of_group)
    assert jax.tree_util.tree_structure(ids) == jax.tree_util.tree_structure(state)
    for got, want in zip(jax.tree_util.tree_leaves(ids), jax.tree_util.tree_leaves(linen_ids)):
        np.testing.assert_array_equal(got, want)
    # Independent check of one layer: neuron/filter o of the first layer is its output column
    # o, its bias entry o and (next_layer) the input row o of the second layer's kernel.
    first, second = ("l1", "l2") if case == "mlp" else ("c1", "c2")
    kernel_ids = np.broadcast_to(ids[first]["kernel"][...], state[first]["kernel"].shape)
    width = kernel_ids.shape[-1]
    assert (kernel_ids == np.arange(width)).all()
    np.testing.assert_array_equal(ids[first]["bias"][...], np.arange(width))
    next_ids = np.broadcast_to(ids[second]["kernel"][...], state[second]["kernel"].shape)
    assert (np.moveaxis(next_ids, -2, -1) == np.arange(width)).all()


def test_masks_apply_to_nnx_state():
    apply_fn, state, x, specs = _nnx_case("mlp")
    ids, _ = build_group_ids(state, specs[:1])  # l1's neurons with l2's input rows
    mask = jnp.array([1, 0, 1, 1, 0], jnp.float32)
    masked = apply_group_mask(state, ids, mask)
    assert jax.tree_util.tree_structure(masked) == jax.tree_util.tree_structure(state)
    # Reference: the same units zeroed by hand on the pure-dict parameters.
    pure = nnx.to_pure_dict(state)
    keep = np.asarray(mask)
    pure["l1"]["kernel"] = pure["l1"]["kernel"] * keep[None, :]
    pure["l1"]["bias"] = pure["l1"]["bias"] * keep
    pure["l2"]["kernel"] = pure["l2"]["kernel"] * keep[:, None]
    for got, want in zip(jax.tree_util.tree_leaves(masked), jax.tree_util.tree_leaves(pure)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
        apply_fn(masked, x), LinenMLP().apply({"params": pure}, x), rtol=1e-6, atol=1e-7
    )


def test_general_layers_with_unsorted_axes_match_brute_force():
    """DenseGeneral/LinearGeneral contract the sorted ``axis`` against the kernel's leading
    axes; listing the axes in another order must not permute the activations.  Groups of
    kernel inputs (one per input weight row) see such a permutation; output groups do not."""
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 4))

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x):  # (n, 2, 4) -> (n, 3)
            return jnp.tanh(nn.DenseGeneral(3, axis=(-1, -2), name="proj")(x))

    graphdef, state = nnx.split(nnx.LinearGeneral((2, 4), 3, axis=(-1, -2), rngs=nnx.Rngs(0)))

    def nnx_apply(state, x):
        return jnp.tanh(nnx.merge(graphdef, state)(x))

    linen = Linen()
    row_ids = [np.full((1,), -1, np.int32), np.arange(8, dtype=np.int32).reshape(2, 4, 1)]
    for apply_fn, params in (
        (nnx_apply, state),
        (linen.apply, linen.init(jax.random.PRNGKey(0), x)),
    ):
        treedef = jax.tree_util.tree_structure(params)  # leaves: bias (3,), kernel (2, 4, 3)
        ids = jax.tree_util.tree_unflatten(treedef, row_ids)
        assert len(find_linear_calls(apply_fn, params, x)) == 1
        kernels = empirical_ntk(apply_fn, params, x, group_ids=ids, backend="structured")
        expected = brute_force_group_kernels(apply_fn, params, x, x, ids)
        np.testing.assert_allclose(kernels, expected, rtol=1e-4, atol=1e-5)


def test_explicit_structured_warns_when_no_layer_qualifies():
    """A grouped convolution is not factorized (NNX and Linen alike): asked for explicitly,
    the structured backend says that everything takes the Jacobian path, and is still exact."""
    graphdef, state = nnx.split(nnx.Conv(2, 4, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 2))

    def nnx_apply(state, x):
        return nnx.merge(graphdef, state)(x).mean(axis=(1, 2))

    linen = nn.Conv(4, (3, 3), feature_group_count=2)

    def linen_apply(params, x):
        return linen.apply(params, x).mean(axis=(1, 2))

    for apply_fn, params in (
        (nnx_apply, state),
        (linen_apply, linen.init(jax.random.PRNGKey(0), x)),
    ):
        ids, _ = build_group_ids(params, filters(""))  # every layer: the one convolution
        with pytest.warns(UserWarning, match=r"backend='structured'.*Jacobian path"):
            kernels = empirical_ntk(apply_fn, params, x, group_ids=ids, backend="structured")
        np.testing.assert_allclose(
            kernels, brute_force_group_kernels(apply_fn, params, x, x, ids), rtol=1e-4, atol=1e-5
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            empirical_ntk(apply_fn, params, x, group_ids=ids)  # "auto" chooses silently


def test_readme_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "nnx.split" in b]
    namespace = {"x": jax.random.normal(jax.random.PRNGKey(4), (5, 4))}
    exec(snippet, namespace)
    apply_fn, state, x = namespace["apply_fn"], namespace["state"], namespace["x"]
    kernels, groups = namespace["kernels"], namespace["groups"]
    assert kernels.shape == (8, 5, 5)
    np.testing.assert_allclose(
        kernels, brute_force_group_kernels(apply_fn, state, x, x, groups), rtol=1e-4, atol=1e-5
    )
    pruned = namespace["pruned"]
    kernel = np.asarray(pruned["layers"][0]["kernel"][...])
    assert (kernel[:, 6:] == 0).all() and (kernel[:, :6] != 0).all()
