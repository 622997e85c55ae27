"""The neural-tangents compat layer: import, both empirical implementations, stax kernels."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune._compat.neural_tangents import applied_restorations, import_neural_tangents


@pytest.fixture(scope="module")
def nt():
    return import_neural_tangents()


def test_import_restores_only_what_is_missing(nt):
    assert nt.__version__ == "0.6.5"
    restored = applied_restorations()
    for name in restored:
        if name.startswith("jax.core."):
            import jax.extend.core as extend_core

            attr = name.rsplit(".", 1)[1]
            assert getattr(jax.core, attr) is getattr(extend_core, attr)
    assert "jax.util" in sys.modules


def test_tensorflow_bridge_is_deferred_with_a_clear_error(nt):
    pytest.importorskip("neural_tangents")
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"jaxprune\[tf\]"):
            nt.experimental.empirical_ntk_fn_tf  # noqa: B018
    else:  # pragma: no cover - only with the optional tf extra
        assert callable(nt.experimental.empirical_ntk_fn_tf)


def _stax_net(nt):
    stax = nt.stax
    return stax.serial(stax.Dense(16), stax.Relu(), stax.Dense(16), stax.Erf(), stax.Dense(2))


@pytest.mark.parametrize("implementation", ["JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS"])
def test_empirical_implementations_equal_brute_force(nt, implementation):
    init_fn, apply_fn, _ = _stax_net(nt)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    kernel_fn = nt.empirical_ntk_fn(
        apply_fn, trace_axes=(-1,), implementation=getattr(nt.NtkImplementation, implementation)
    )
    jac = jax.jacobian(lambda p: apply_fn(p, x))(params)
    flat = jnp.concatenate([j.reshape(5, 2, -1) for j in jax.tree_util.tree_leaves(jac)], -1)
    expected = jnp.einsum("xcw,ycw->xy", flat, flat) / 2
    np.testing.assert_allclose(kernel_fn(x, None, params), expected, rtol=1e-4, atol=1e-6)


def test_stax_analytic_kernels_match_wide_finite_networks(nt):
    """Infinite-width NNGP/NTK of stax vs averages over random wide networks: the output
    covariance (NNGP) and jaxprune's empirical NTK (independent of neural-tangents)."""
    from jaxprune.spectra import empirical_ntk

    stax = nt.stax
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(2048), stax.Relu(), stax.Dense(1))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    analytic = kernel_fn(x, x, ("nngp", "ntk"))
    keys = jax.random.split(jax.random.PRNGKey(1), 256)
    outputs = jax.vmap(lambda key: apply_fn(init_fn(key, x.shape)[1], x)[:, 0])(keys)
    nngp = outputs.T @ outputs / len(keys)
    scale = float(jnp.max(analytic.nngp))
    # 256 samples: standard error of a covariance entry ~ scale * sqrt(2/256) ~ 0.09 scale.
    np.testing.assert_allclose(nngp, analytic.nngp, atol=0.3 * scale)
    ntks = [empirical_ntk(apply_fn, init_fn(k, x.shape)[1], x) for k in keys[:8]]
    # Width 2048: relative fluctuation of the empirical NTK ~ 1/sqrt(width) per network.
    np.testing.assert_allclose(
        np.mean(ntks, 0), analytic.ntk, atol=0.03 * float(jnp.max(analytic.ntk))
    )


def test_stax_relu_nngp_closed_form(nt):
    """One ReLU layer: the arc-cosine kernel of Cho & Saul (2009)."""
    stax = nt.stax
    _, _, kernel_fn = stax.serial(
        stax.Dense(1, W_std=1.0, b_std=0.0), stax.Relu(), stax.Dense(1, W_std=1.0, b_std=0.0)
    )
    x = np.array([[1.0, 0.0], [0.6, 0.8]])
    cos = 0.6
    theta = np.arccos(cos)
    # Dense with W_std=1 gives the input kernel xᵀy/d (d = 2); ReLU maps it to the arc-cosine form.
    q = 1.0 / 2
    expected = q / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * cos)
    nngp = kernel_fn(x, x, "nngp")
    np.testing.assert_allclose(nngp[0, 1], expected, rtol=1e-5)
    np.testing.assert_allclose(nngp[0, 0], q / 2, rtol=1e-5)


def test_structured_derivatives_is_documented_as_broken(nt):
    """Not a promise it fails forever: if it starts working, update the compat docs."""
    from jaxprune._compat import neural_tangents as compat

    assert "STRUCTURED_DERIVATIVES" not in compat.WORKING_IMPLEMENTATIONS
    init_fn, apply_fn, _ = _stax_net(nt)
    x = jnp.ones((2, 3))
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    fn = nt.empirical_ntk_fn(apply_fn, implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)
    with pytest.raises(TypeError):
        fn(x, None, params)
