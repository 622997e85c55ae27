"""Two-layer networks of Li et al. (2020) and Wolfe et al. (2023): NumPy references of Wolfe et
al. (2023), eqs. 1–3 (counts, multisets), λ-rescaling (Li et al. (2020), Lemma 4.1), neuron gates ≡ group masks ≡ compaction, FLOPs and validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune.group_ids import group_sizes
from jaxprune.masks.mask import apply_group_mask
from jaxprune.models import two_layer
from jaxprune.models.two_layer import (
    TwoLayer,
    TwoLayerConfig,
    compact,
    compact_counts,
    counts_to_gates,
    flops,
    group_ids,
    rescale,
)

SIGMA = {"relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh}


def _setup(preset, n=5, seed=0):
    config = two_layer.from_preset(preset)
    model = TwoLayer(config)
    x = np.random.default_rng(seed).normal(size=(n, config.input_dim)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(seed), x)
    return config, model, variables, x


def _neurons(variables):
    """``a_i`` (rows of ``(N, d)``) and ``b_i`` (rows of ``(N, K)``) in float64."""
    p = variables["params"]
    return np.asarray(p["hidden"]["kernel"], np.float64).T, np.asarray(
        p["output"]["kernel"], np.float64
    )


def _wolfe_f(a, b, x, sigma):
    """Eq. (2): f(x) = (1/N) Σ_{i=1}^N σ(x, θ_i) with σ(x, θ_i) = N b_i σ_+(a_iᵀx), eq. (1)."""
    n_neurons = a.shape[0]
    return sum(n_neurons * b[i] * sigma(x @ a[i])[:, None] for i in range(n_neurons)) / n_neurons


def _wolfe_f_s(a, b, x, sigma, multiset):
    """Eq. (3) over a multiset S (repeated indices count repeatedly):
    f_S(x) = (1/|S|) Σ_{i∈S} N b_i σ_+(a_iᵀx)."""
    n_neurons = a.shape[0]
    return sum(n_neurons * b[i] * sigma(x @ a[i])[:, None] for i in multiset) / len(multiset)


@pytest.mark.parametrize("preset", ["tiny", "tiny-tanh"])
def test_dense_net_is_wolfe_eq2_and_counts_of_one(preset):
    config, model, variables, x = _setup(preset)
    a, b = _neurons(variables)
    reference = _wolfe_f(a, b, x.astype(np.float64), SIGMA[config.activation])
    out = model.apply(variables, x)
    assert out.shape == (5, config.num_outputs)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
    ones = np.ones(config.width, np.int32)
    np.testing.assert_allclose(
        model.apply(variables, x, counts=ones), reference, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("preset", ["tiny", "tiny-tanh"])
def test_multiset_counts_match_eq3_and_compacted_subnetwork(preset):
    config, model, variables, x = _setup(preset, seed=1)
    multiset = [0, 2, 2, 5, 5, 5, 7]  # neurons chosen with repetition by greedy selection
    counts = np.bincount(multiset, minlength=config.width)
    a, b = _neurons(variables)
    reference = _wolfe_f_s(a, b, x.astype(np.float64), SIGMA[config.activation], multiset)
    np.testing.assert_allclose(
        model.apply(variables, x, counts=counts), reference, rtol=1e-5, atol=1e-6
    )
    small_variables, small_config = compact_counts(variables, config, counts)
    assert small_config.width == 4  # neurons 0, 2, 5, 7
    # Reading GS-2 (docs/readings.md): the pruned net's output weights are N c_i b_i / k (N = 8, k = 7).
    expected_b = np.stack([8 * c * b[i] / 7 for i, c in [(0, 1), (2, 2), (5, 3), (7, 1)]])
    np.testing.assert_allclose(small_variables["params"]["output"]["kernel"], expected_b, rtol=1e-6)
    np.testing.assert_allclose(
        small_variables["params"]["hidden"]["kernel"], a[[0, 2, 5, 7]].T, rtol=1e-7
    )
    out = TwoLayer(small_config).apply(small_variables, x)
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(counts_to_gates(counts), 8 * counts / 7, rtol=1e-6)


def test_counts_and_gates_are_traceable():
    config, model, variables, x = _setup("tiny", seed=2)
    counts = jnp.asarray([1, 0, 2, 0, 0, 1, 0, 3])
    jitted = jax.jit(lambda c: model.apply(variables, x, counts=c))
    np.testing.assert_allclose(jitted(counts), model.apply(variables, x, counts=counts), rtol=1e-6)
    grad = jax.grad(lambda g: model.apply(variables, x, neuron_gates=g).sum())(
        jnp.ones(config.width)
    )
    a, b = _neurons(variables)
    # ∂/∂g_i Σ_{n,k} g_i b_ik σ(a_iᵀx_n) = Σ_n σ(a_iᵀx_n) Σ_k b_ik
    expected = np.maximum(x.astype(np.float64) @ a.T, 0).sum(axis=0) * b.sum(axis=1)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_neuron_gate_zero_equals_group_mask_and_compaction():
    config, model, variables, x = _setup("tiny", seed=3)
    keep = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    ids, layout = group_ids(variables, config)
    assert layout.num_groups == config.width == 8
    # θ_i = (a_i, b_i): d hidden weights and K output weights per neuron.
    np.testing.assert_array_equal(group_sizes(variables, ids), np.full(8, 4 + 2))
    masked = model.apply(apply_group_mask(variables, ids, keep.astype(np.float32)), x)
    gated = model.apply(variables, x, neuron_gates=keep.astype(np.float32))
    small_variables, small_config = compact(variables, config, keep)
    assert small_config.width == 4
    compacted = TwoLayer(small_config).apply(small_variables, x)
    a, b = _neurons(variables)
    reference = sum(b[i] * np.maximum(x @ a[i], 0)[:, None] for i in np.flatnonzero(keep))
    for out in (masked, gated, compacted):
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_relu():
    return _setup("tiny", seed=4)


@settings(max_examples=15, deadline=None)
@given(st.floats(min_value=1e-2, max_value=1e2))
def test_lambda_rescaling_preserves_the_relu_network(tiny_relu, lam):
    _, model, variables, x = tiny_relu
    scaled = rescale(variables, lam)
    p, q = variables["params"], scaled["params"]
    np.testing.assert_allclose(
        q["hidden"]["kernel"], lam * np.asarray(p["hidden"]["kernel"]), rtol=1e-6
    )
    np.testing.assert_allclose(
        q["output"]["kernel"], np.asarray(p["output"]["kernel"]) / lam, rtol=1e-6
    )
    np.testing.assert_allclose(
        model.apply(scaled, x), model.apply(variables, x), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("lam", [0.5, 2.0, 5.0])
def test_lambda_rescaling_scales_layer_hessians_as_lemma_4_1(lam):
    """Lemma 4.1, eq. (4.3): ∂²L/∂W² scales by λ⁻², ∂²L/∂V² by λ², for L = mean squared error."""
    config, model, variables, x = _setup("tiny", seed=5)
    y = np.random.default_rng(6).normal(size=(x.shape[0], config.num_outputs))

    def layer_hessian(v, layer):
        def loss(kernel):
            params = {**v["params"], layer: {"kernel": kernel}}
            return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

        kernel = v["params"][layer]["kernel"]
        return np.asarray(jax.hessian(loss)(kernel)).reshape(kernel.size, kernel.size)

    scaled = rescale(variables, lam)
    for layer, factor in (("hidden", lam**-2), ("output", lam**2)):
        base = layer_hessian(variables, layer)
        assert np.abs(base).max() > 1e-3
        np.testing.assert_allclose(
            layer_hessian(scaled, layer), factor * base, rtol=1e-4, atol=1e-6 * factor
        )


def test_flops_and_presets():
    assert flops(two_layer.from_preset("tiny")) == 2 * (4 * 8 + 8 * 2)
    assert flops(two_layer.from_preset("paper002-mnist")) == 2 * (784 * 1024 + 1024 * 10)
    assert flops(TwoLayerConfig(input_dim=784, width=200)) == 2 * (784 * 200 + 200)
    assert two_layer.from_preset("paper004-mnist").width == 5000
    with pytest.raises(ValueError, match=r"'mlp'.*'paper002-mnist', 'paper004-mnist', 'tiny'"):
        two_layer.from_preset("mlp")


def test_bfloat16_compute_with_float32_params():
    config = two_layer.from_preset("tiny", dtype=jnp.bfloat16)
    model = TwoLayer(config)
    x = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = model.apply(variables, x)
    assert out.dtype == jnp.bfloat16
    reference = TwoLayer(two_layer.from_preset("tiny")).apply(variables, x)
    np.testing.assert_allclose(
        np.asarray(out, np.float32), reference, atol=0.05 * np.abs(reference).max()
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: TwoLayerConfig(input_dim=0, width=4),
            r"input_dim: expected a positive int, got 0",
        ),
        (
            lambda: TwoLayerConfig(input_dim=3, width=4, num_outputs=0),
            r"num_outputs: expected a positive int",
        ),
        (
            lambda: TwoLayerConfig(input_dim=3, width=4, activation="gelu"),
            r"activation: expected one of \['relu', 'tanh'\], got 'gelu'",
        ),
        (
            lambda: TwoLayerConfig(input_dim=3, width=4, dtype=jnp.int8),
            r"dtype: expected a floating",
        ),
        (lambda: counts_to_gates(np.array([1, -1, 2])), r"counts: expected non-negative integers"),
        (lambda: counts_to_gates(np.array([0.5, 1.0])), r"counts: expected non-negative integers"),
        (lambda: counts_to_gates(np.zeros(3)), r"counts: every count is 0"),
        (lambda: counts_to_gates(np.ones((2, 2))), r"counts: expected a 1-D array"),
    ],
)
def test_bad_configs_and_counts_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_float_width_is_a_type_error():
    with pytest.raises(TypeError, match=r"width: expected a positive int, got 2.5"):
        TwoLayerConfig(input_dim=3, width=2.5)


def test_bad_arguments_raise():
    config, model, variables, x = _setup("tiny", seed=8)
    with pytest.raises(ValueError, match=r"lam: expected a finite scalar > 0, got -1.0"):
        rescale(variables, -1.0)
    with pytest.raises(ValueError, match=r"counts: expected shape \(8,\)"):
        model.apply(variables, x, counts=np.ones(7))
    with pytest.raises(ValueError, match=r"neuron_gates: expected shape \(8,\)"):
        model.apply(variables, x, neuron_gates=np.ones(9))
    with pytest.raises(ValueError, match=r"x: expected 4 input features"):
        model.apply(variables, x[:, :3])
    with pytest.raises(ValueError, match=r"keep: expected shape \(8,\)"):
        compact(variables, config, np.ones(3, bool))
    with pytest.raises(ValueError, match=r"keeps no unit"):
        compact(variables, config, np.zeros(8, bool))
    with pytest.raises(ValueError, match=r"config: width 16 does not match the 8 hidden units"):
        group_ids(variables, two_layer.from_preset("tiny", width=16))
