"""empirical_ntk against brute-force jax.jacobian contraction and neural-tangents."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import brute_force_group_kernels, head_group_ids, make_cnn, make_heads, make_mlp

from jaxprune._compat.neural_tangents import import_neural_tangents
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.spectra import empirical_ntk


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == jnp.float32 else {"rtol": 1e-10, "atol": 1e-12}


def _filter_ids(params):
    """Each conv filter (kernel slice and bias entry) and each input row of the head."""
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    p = ids["params"]
    p["Conv_0"]["kernel"] = np.arange(3, dtype=np.int32)[None, None, None, :]
    p["Conv_0"]["bias"] = np.arange(3, dtype=np.int32)
    p["Conv_1"]["kernel"] = np.arange(3, 7, dtype=np.int32)[None, None, None, :]
    p["Conv_1"]["bias"] = np.arange(3, 7, dtype=np.int32)
    p["Dense_0"]["kernel"] = np.arange(3, 7, dtype=np.int32)[:, None]  # next layer's rows
    return ids


def all_neurons(params):
    """One group per output unit of every Dense layer."""
    return build_group_ids(params, neurons(r"Dense_\d+$"))[0]


CASES = {
    "mlp": (make_mlp, lambda params: all_neurons(params)),
    "cnn": (make_cnn, _filter_ids),
    "heads": (make_heads, head_group_ids),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", ["structured", "jacobian", "auto"])
def test_group_kernels_match_brute_force(case, backend, dtype):
    make, grouping = CASES[case]
    model, params, x = make(dtype)
    ids = grouping(params)
    expected = brute_force_group_kernels(model.apply, params, x, x, ids)
    kernels = empirical_ntk(model.apply, params, x, group_ids=ids, backend=backend)
    assert kernels.shape == expected.shape
    assert kernels.dtype == dtype
    np.testing.assert_allclose(kernels, expected, **_tol(dtype))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", ["structured", "jacobian", "ntvp", "neural_tangents"])
def test_whole_kernel_matches_brute_force(case, backend, dtype):
    model, params, x = CASES[case][0](dtype)
    expected = brute_force_group_kernels(model.apply, params, x, x)
    kernel = empirical_ntk(model.apply, params, x, backend=backend)
    np.testing.assert_allclose(kernel, expected, **_tol(dtype))


def test_whole_kernel_agrees_with_neural_tangents_directly(dtype):
    nt = import_neural_tangents()
    model, params, x = make_cnn(dtype)
    reference = nt.empirical_ntk_fn(
        model.apply,
        trace_axes=(-1,),
        implementation=nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    )(x, None, params)
    np.testing.assert_allclose(empirical_ntk(model.apply, params, x), reference, **_tol(dtype))


@pytest.mark.parametrize("case", sorted(CASES))
def test_groups_covering_every_weight_sum_to_whole_kernel(case, dtype):
    model, params, x = CASES[case][0](dtype)
    ids = one_group_per_leaf(params)
    kernels = empirical_ntk(model.apply, params, x, group_ids=ids)
    np.testing.assert_allclose(kernels.sum(0), empirical_ntk(model.apply, params, x), **_tol(dtype))


def one_group_per_leaf(params):
    """Every parameter in a group: one group per leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    ids = [np.full((1,) * np.ndim(w), i, np.int32) for i, w in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, ids)


@pytest.mark.parametrize("backend", ["structured", "jacobian", "neural_tangents"])
def test_cross_kernel(backend, dtype):
    model, params, x = make_mlp(dtype)
    x2 = jax.random.normal(jax.random.PRNGKey(9), (3, 4), dtype)
    ids = all_neurons(params)
    expected = brute_force_group_kernels(model.apply, params, x, x2, ids)
    kernels = empirical_ntk(model.apply, params, x, x2, group_ids=ids, backend=backend)
    assert kernels.shape == (expected.shape[0], 6, 3)
    np.testing.assert_allclose(kernels, expected, **_tol(dtype))


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_chunking_gives_the_same_kernel(chunk_size):
    model, params, x = make_cnn(jnp.float32, n=5)
    ids = _filter_ids(params)
    full = empirical_ntk(model.apply, params, x, group_ids=ids)
    chunked = empirical_ntk(model.apply, params, x, group_ids=ids, chunk_size=chunk_size)
    np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)
    x2 = x[:3] + 1.0
    np.testing.assert_allclose(
        empirical_ntk(model.apply, params, x, x2, chunk_size=chunk_size),
        empirical_ntk(model.apply, params, x, x2),
        rtol=1e-5,
        atol=1e-6,
    )


def test_cell_chunks_give_the_same_group_kernels(monkeypatch):
    """The Jacobian path's scan over chunks of cells (too many cell kernels at once), with a
    padded last chunk, cells sharing a group and dropped (-1) cells, on and off the diagonal."""
    from jaxprune.spectra import _cells, ntk

    model, params, x = make_mlp(jnp.float32)
    x2 = jax.random.normal(jax.random.PRNGKey(9), (3, 4))
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    ids["params"]["Dense_0"]["kernel"] = np.array([[0, 1, 1, -1, 2, 0, 3]], np.int32)
    ids["params"]["Dense_1"]["kernel"] = np.arange(7, dtype=np.int32)[:, None] % 4  # input rows
    monkeypatch.setattr(_cells, "CELL_KERNEL_BUDGET", 2 * 6 * 6)  # chunks of 2 (1 off-diagonal)
    ntk._build_block.cache_clear()
    try:
        for second in (None, x2):
            expected = brute_force_group_kernels(
                model.apply, params, x, x if second is None else second, ids
            )
            kernels = empirical_ntk(
                model.apply, params, x, second, group_ids=ids, backend="jacobian"
            )
            np.testing.assert_allclose(kernels, expected, rtol=1e-4, atol=1e-6)
    finally:
        ntk._build_block.cache_clear()


def test_unstructured_and_input_row_groups():
    """Ids varying along both kernel axes, along input rows, and one id for a whole bias."""
    model, params, x = make_mlp(jnp.float32)
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    p = ids["params"]
    p["Dense_0"]["kernel"] = np.arange(28, dtype=np.int32).reshape(4, 7)  # one per weight
    p["Dense_1"]["kernel"] = np.arange(28, 35, dtype=np.int32)[:, None]  # input rows
    p["Dense_2"]["bias"] = np.array([35], np.int32)  # the whole bias
    expected = brute_force_group_kernels(model.apply, params, x, x, ids)
    for backend in ("structured", "jacobian"):
        kernels = empirical_ntk(model.apply, params, x, group_ids=ids, backend=backend)
        np.testing.assert_allclose(kernels, expected, rtol=1e-4, atol=1e-6)


def test_plain_jax_function_uses_the_jacobian_path():
    w = {"a": jnp.arange(6.0).reshape(3, 2) / 5, "b": jnp.array([0.3, -0.2])}

    def apply_fn(params, x):
        return jnp.sin(x @ params["a"]) * params["b"]

    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    np.testing.assert_allclose(
        empirical_ntk(apply_fn, w, x), brute_force_group_kernels(apply_fn, w, x, x), rtol=1e-5
    )


def test_is_jittable_and_differentiable_in_inputs():
    model, params, x = make_mlp(jnp.float32)
    kernel = jax.jit(lambda p, x: empirical_ntk(model.apply, p, x))(params, x)
    np.testing.assert_allclose(kernel, empirical_ntk(model.apply, params, x), rtol=1e-5)
    trace = jax.grad(lambda s: jnp.trace(empirical_ntk(model.apply, params, s * x)))(1.0)
    eps = 1e-2
    fd = (
        jnp.trace(empirical_ntk(model.apply, params, (1 + eps) * x))
        - jnp.trace(empirical_ntk(model.apply, params, (1 - eps) * x))
    ) / (2 * eps)
    np.testing.assert_allclose(trace, fd, rtol=1e-2)


class TestBadInput:
    def test_mismatched_structure_names_the_path(self):
        model, params, x = make_mlp(jnp.float32)
        ids = all_neurons(params)
        del ids["params"]["Dense_1"]
        with pytest.raises(ValueError, match=r"Dense_1"):
            empirical_ntk(model.apply, params, x, group_ids=ids)

    def test_ids_not_broadcastable(self):
        model, params, x = make_mlp(jnp.float32)
        ids = all_neurons(params)
        ids["params"]["Dense_0"]["kernel"] = np.zeros((3, 3), np.int32)
        with pytest.raises(ValueError, match=r"Dense_0.*kernel.*does not broadcast"):
            empirical_ntk(model.apply, params, x, group_ids=ids)

    def test_out_of_range_ids(self):
        model, params, x = make_mlp(jnp.float32)
        ids = all_neurons(params)
        ids["params"]["Dense_0"]["bias"] = np.full(7, -2, np.int32)
        with pytest.raises(ValueError, match=r"Dense_0.*bias.*-2"):
            empirical_ntk(model.apply, params, x, group_ids=ids)

    def test_empty_groups(self):
        model, params, x = make_mlp(jnp.float32)
        ids = all_neurons(params)
        ids["params"]["Dense_2"]["kernel"] = ids["params"]["Dense_2"]["kernel"] + 100
        with pytest.raises(ValueError, match=r"contain no weight"):
            empirical_ntk(model.apply, params, x, group_ids=ids)

    def test_float_ids(self):
        model, params, x = make_mlp(jnp.float32)
        ids = jax.tree_util.tree_map(lambda a: np.zeros((1,) * a.ndim), params)
        with pytest.raises(TypeError, match=r"integer"):
            empirical_ntk(model.apply, params, x, group_ids=ids)

    def test_non_finite_params(self):
        model, params, x = make_mlp(jnp.float32)
        params["params"]["Dense_1"]["bias"] = params["params"]["Dense_1"]["bias"].at[0].set(jnp.nan)
        with pytest.raises(ValueError, match=r"Dense_1.*bias.*non-finite"):
            empirical_ntk(model.apply, params, x)

    def test_unknown_backend_and_bad_chunk(self):
        model, params, x = make_mlp(jnp.float32)
        with pytest.raises(ValueError, match=r"backend must be one of"):
            empirical_ntk(model.apply, params, x, backend="fast")
        with pytest.raises(ValueError, match=r"chunk_size: expected a positive int, got 0"):
            empirical_ntk(model.apply, params, x, chunk_size=0)

    def test_ntvp_refuses_groups(self):
        model, params, x = make_mlp(jnp.float32)
        with pytest.raises(ValueError, match=r"whole-model kernels only"):
            empirical_ntk(model.apply, params, x, group_ids=all_neurons(params), backend="ntvp")

    def test_x2_shape_mismatch(self):
        model, params, x = make_mlp(jnp.float32)
        with pytest.raises(ValueError, match=r"x2: expected examples of shape"):
            empirical_ntk(model.apply, params, x, jnp.ones((2, 5)))
