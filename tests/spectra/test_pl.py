"""PL quantities on a linear model, where they have closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.spectra import empirical_ntk, empirical_pl_ratio, pl_condition, proposition8_bound


@pytest.fixture
def linear():
    """f(x) = x·w: DF = X, K = X Xᵀ, square loss ½‖Xw − y‖² (over-parameterized: d > n)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(5, 12)))
        w = {"w": jnp.asarray(rng.normal(size=(12, 1)))}
        yield x, w


def apply_fn(params, x):
    return x @ params["w"]


def test_pl_constant_and_lipschitz_are_kernel_eigenvalues(linear):
    x, w = linear
    kernel = empirical_ntk(apply_fn, w, x)
    np.testing.assert_allclose(kernel, x @ x.T, rtol=1e-12)
    eig = np.linalg.eigvalsh(np.asarray(x @ x.T))
    pl = pl_condition(kernel)
    assert pl.pl_constant == pytest.approx(eig.min(), rel=1e-10)
    assert pl.lipschitz == pytest.approx(np.sqrt(eig.max()), rel=1e-10)
    # ‖DF‖₂ is the largest singular value of X.
    assert pl.lipschitz == pytest.approx(
        np.linalg.svd(np.asarray(x), compute_uv=False)[0], rel=1e-10
    )
    assert pl.condition_number == pytest.approx(np.sqrt(eig.max()) / eig.min(), rel=1e-10)
    assert pl.kernel_condition_number == pytest.approx(eig.max() / eig.min(), rel=1e-8)
    mean = pl_condition(kernel, loss_scale=5.0)
    assert mean.pl_constant == pytest.approx(eig.min() / 5, rel=1e-10)


def test_empirical_pl_ratio_is_a_rayleigh_quotient(linear):
    """‖∇L‖²/(2L) = rᵀKr/‖r‖²: equal to the eigenvalue when r is an eigenvector, and
    between λ_min and λ_max for any residual."""
    x, w = linear
    kernel = np.asarray(x @ x.T)
    eig, vec = np.linalg.eigh(kernel)
    prediction = apply_fn(w, x)[:, 0]
    for i in (0, 2, 4):
        y = prediction - vec[:, i]  # residual r = eigenvector i

        def loss(params, y=y):
            return 0.5 * jnp.sum((apply_fn(params, x)[:, 0] - y) ** 2)

        assert empirical_pl_ratio(loss, w) == pytest.approx(eig[i], rel=1e-9)
    y = jnp.asarray(np.random.default_rng(1).normal(size=5))
    ratio = empirical_pl_ratio(lambda p: 0.5 * jnp.sum((apply_fn(p, x)[:, 0] - y) ** 2), w)
    assert eig.min() - 1e-9 <= ratio <= eig.max() + 1e-9


def test_pl_ratio_at_the_minimum_is_infinite(linear):
    x, w = linear
    y = apply_fn(w, x)[:, 0]
    ratio = empirical_pl_ratio(lambda p: 0.5 * jnp.sum((apply_fn(p, x)[:, 0] - y) ** 2), w)
    assert np.isinf(ratio)


def test_rank_deficient_kernel_has_no_pl_constant():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3)))  # n > d: K has rank 3
    pl = pl_condition(x @ x.T)
    assert bool(pl.rank_deficient)
    assert float(pl.pl_constant) == 0.0
    assert np.isinf(pl.condition_number)


def test_proposition8_bound(linear):
    """A linear model has H_f = 0, so the bound is ‖DF(w₀)‖₂ / λ_min = the condition number."""
    x, _ = linear
    kernel = x @ x.T
    bound = proposition8_bound(kernel, hessian_norm=0.0, radius=2.0)
    assert bound == pytest.approx(float(pl_condition(kernel).condition_number), rel=1e-10)
    eig = np.linalg.eigvalsh(np.asarray(kernel))
    with_hessian = proposition8_bound(kernel, hessian_norm=0.5, radius=2.0, lambda_min_inf=0.1)
    assert with_hessian == pytest.approx((np.sqrt(eig.max()) + np.sqrt(5) * 2.0 * 0.5) / 0.1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="loss_scale"):
        pl_condition(np.eye(2), loss_scale=0.0)
    with pytest.raises(ValueError, match="radius"):
        proposition8_bound(np.eye(2), hessian_norm=1.0, radius=-1.0)
