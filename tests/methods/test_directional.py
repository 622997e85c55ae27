"""Tests of jaxprune.methods.directional: Proposition A.1 by brute force, flat-direction scores
against an explicit Hessian eigendecomposition, eq. 9, Remark 3.3 and Bézier curves."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import explicit_hessian, tiny_mlp_apply, tiny_mlp_problem
from jax.flatten_util import ravel_pytree

from jaxprune.methods.directional import (
    bezier_point,
    curve_losses,
    directional_pruning_solution,
    fit_bezier_midpoint,
    flat_direction_scores,
    line_losses,
    projection_scores,
    sign_alignment_ratio,
    top_eigenspace_fraction,
)


def _objective(w, a, s, lam):
    """The separable objective of problem (3), ``½(a − w)² + λ s |w|``, per coordinate."""
    return 0.5 * (a - w) ** 2 + lam * s * np.abs(w)


@pytest.mark.parametrize("sign", ["positive", "negative", "mixed"])
def test_closed_form_matches_brute_force(sign):
    rng = np.random.default_rng({"positive": 0, "negative": 1, "mixed": 2}[sign])
    a = rng.normal(size=40) * 2
    a[np.abs(a) < 0.05] = 0.3  # w^SGD ≠ 0 (Proposition A.1's assumption)
    s = np.abs(rng.normal(size=40))
    if sign == "negative":
        s = -s
    elif sign == "mixed":
        s = s * rng.choice([-1.0, 1.0], size=40)
        s[:3] = 0.0
    lam = 0.8
    with jax.enable_x64(True):
        got = np.asarray(directional_pruning_solution(a, s, lam))
    # Grid search per coordinate (the problem is separable), then a fine grid around the best.
    span = np.abs(a) + lam * np.abs(s) + 1.0
    grid = np.linspace(-1, 1, 40_001)[None, :] * span[:, None]
    best = grid[np.arange(40), np.argmin(_objective(grid, a[:, None], s[:, None], lam), axis=1)]
    fine = best[:, None] + np.linspace(-1e-4, 1e-4, 2001)[None, :] * span[:, None]
    fine = np.concatenate([fine, np.zeros((40, 1))], axis=1)  # 0 exactly (kink of |w|)
    values = _objective(fine, a[:, None], s[:, None], lam)
    brute = fine[np.arange(40), np.argmin(values, axis=1)]
    np.testing.assert_allclose(got, brute, atol=1e-6)
    # And the closed form is no worse than the grid's best value.
    assert np.all(_objective(got, a, s, lam) <= values.min(axis=1) + 1e-12)
    if sign == "positive":
        assert np.any(got == 0) and np.all(np.abs(got) <= np.abs(a))
    if sign == "negative":
        assert np.all(np.abs(got) > np.abs(a)) and np.all(np.sign(got) == np.sign(a))


def test_closed_form_on_pytrees_and_edge_cases():
    w = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[3.0]])}
    s = {"a": jnp.array([0.5, 1.0, -1.0]), "b": jnp.array([[0.0]])}
    out = directional_pruning_solution(w, s, 2.0)
    np.testing.assert_array_equal(np.asarray(out["a"]), np.array([0.0, 0.0, 2.5]))
    np.testing.assert_array_equal(np.asarray(out["b"]), np.array([[3.0]]))
    same = directional_pruning_solution(w, s, 0.0)
    np.testing.assert_array_equal(np.asarray(same["a"]), np.asarray(w["a"]))
    # w^SGD = 0 with s < 0: two minimizers ±λ|s|; the formula returns 0 (documented).
    assert float(directional_pruning_solution(jnp.zeros(1), -jnp.ones(1), 1.0)[0]) == 0.0
    with pytest.raises(ValueError, match=r"lam: expected a number in \[0, inf\], got -1"):
        directional_pruning_solution(w, s, -1.0)
    with pytest.raises(ValueError, match="structure"):
        directional_pruning_solution(w, {"a": s["a"]}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        directional_pruning_solution({"a": jnp.ones(3)}, {"a": jnp.ones(2)}, 1.0)
    jitted = jax.jit(directional_pruning_solution)(w, s, 2.0)
    np.testing.assert_array_equal(np.asarray(jitted["a"]), np.asarray(out["a"]))


def _tiny_problem():
    params, x, y = tiny_mlp_problem(np.random.default_rng(3))
    params = jax.tree.map(jnp.asarray, params)

    def loss_fn(p):
        return 0.5 * jnp.mean(jnp.sum((tiny_mlp_apply(p, x) - y) ** 2, axis=-1))

    return params, loss_fn


def test_projection_scores_match_explicit_eigendecomposition():
    k = 3
    with jax.enable_x64(True):
        params, loss_fn = _tiny_problem()
        flat, unravel = ravel_pytree(params)
        eigenvalues, vectors = np.linalg.eigh(explicit_hessian(loss_fn, params))
        assert eigenvalues[-k] - eigenvalues[-k - 1] > 1e-3 * eigenvalues[-1]  # a clear gap
        top = vectors[:, -k:]  # (P, k)
        signs = np.sign(np.asarray(flat))
        expected = signs * ((np.eye(len(flat)) - top @ top.T) @ signs)

        as_tree = jax.vmap(unravel)(jnp.asarray(top.T))
        explicit = ravel_pytree(projection_scores(params, as_tree))[0]
        np.testing.assert_allclose(np.asarray(explicit), expected, atol=1e-10)

        lanczos = flat_direction_scores(
            loss_fn, params, jax.random.PRNGKey(0), k=k, num_iterations=flat.size
        )
        np.testing.assert_allclose(np.asarray(ravel_pytree(lanczos)[0]), expected, atol=1e-6)
        # Σ_j s_j = ‖Π_0 sign(w)‖² ≥ 0.
        assert np.sum(expected) == pytest.approx(
            np.sum(((np.eye(len(flat)) - top @ top.T) @ signs) ** 2)
        )


def test_projection_scores_validation():
    params = {"w": jnp.ones(4)}
    with pytest.raises(ValueError, match="orthonormal"):
        projection_scores(params, {"w": jnp.ones((2, 4))})
    with pytest.raises(ValueError, match="leading axis"):
        projection_scores(params, {"w": jnp.ones(4)})
    with pytest.raises(ValueError, match="structure"):
        projection_scores(params, {"v": jnp.eye(4)[:1]})
    # Under jit (traced eigenvectors) the check is skipped and the result is the same.
    e = {"w": jnp.eye(4)[:2]}
    np.testing.assert_allclose(
        np.asarray(jax.jit(projection_scores)(params, e)["w"]),
        np.asarray(projection_scores(params, e)["w"]),
    )
    np.testing.assert_allclose(np.asarray(projection_scores(params, e)["w"]), [0, 0, 1, 1])


def test_top_eigenspace_fraction_matches_explicit():
    rng = np.random.default_rng(4)
    delta = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=5)}
    q, _ = np.linalg.qr(rng.normal(size=(11, 4)))  # orthonormal columns
    flat = np.concatenate([delta["a"].ravel(), delta["b"]])
    expected = np.linalg.norm(q.T @ flat) / np.linalg.norm(flat)
    eigvecs = {"a": q.T[:, :6].reshape(4, 3, 2), "b": q.T[:, 6:]}
    with jax.enable_x64(True):
        got = float(top_eigenspace_fraction(delta, eigvecs))
    assert got == pytest.approx(expected, rel=1e-10)
    # In the span: 1; orthogonal to it: 0.
    inside = {"a": q[:6, 0].reshape(3, 2), "b": q[6:, 0]}
    assert float(top_eigenspace_fraction(inside, eigvecs)) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="leaves disagree"):
        top_eigenspace_fraction(delta, {"a": eigvecs["a"], "b": eigvecs["b"][:3]})


def test_top_eigenspace_fraction_accepts_lanczos_output():
    from jaxprune.spectra import hessian_eigenvalues

    params, loss_fn = _tiny_problem()
    result = hessian_eigenvalues(
        loss_fn, params, jax.random.PRNGKey(1), k=2, return_eigenvectors=True
    )
    first = jax.tree.map(lambda e: e[0], result.eigenvectors)
    assert float(top_eigenspace_fraction(first, result.eigenvectors)) == pytest.approx(1, rel=1e-4)


def test_sign_alignment_ratio():
    d = 16
    equal = {"a": jnp.full((2, 4), -0.3), "b": jnp.full(8, 0.3)}
    assert float(sign_alignment_ratio(equal)) == pytest.approx(d**-0.5, rel=1e-6)
    single = {"a": jnp.zeros(5).at[2].set(-4.0)}
    assert float(sign_alignment_ratio(single)) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    w = {"a": rng.normal(size=(3, 3)), "b": rng.normal(size=4)}
    flat = np.concatenate([w["a"].ravel(), w["b"]])
    expected = np.linalg.norm(flat) / np.sum(np.abs(flat))
    assert float(sign_alignment_ratio(w)) == pytest.approx(expected, rel=1e-6)
    assert d**-0.5 <= expected <= 1


def _valley_loss(p, target=1.0):
    """Two distinct minima ``(2, 0.5)`` and ``(0.5, 2)`` in the valley ``a·b = 1``: the segment
    between them leaves the valley, a curve along the hyperbola does not."""
    return (p["a"] * p["b"] - target) ** 2


W0 = {"a": jnp.array(2.0), "b": jnp.array(0.5)}
W1 = {"a": jnp.array(0.5), "b": jnp.array(2.0)}


def test_bezier_endpoints_and_midpoint():
    theta = {"a": jnp.array(3.0), "b": jnp.array(-1.0)}
    for t, expected in [(0.0, W0), (1.0, W1)]:
        point = bezier_point(W0, theta, W1, t)
        for k in expected:
            assert float(point[k]) == float(expected[k])
    mid = bezier_point(W0, theta, W1, 0.5)
    assert float(mid["a"]) == pytest.approx(0.25 * 2 + 0.5 * 3 + 0.25 * 0.5)
    # With the midpoint as control point the curve is the straight line (uniformly in t).
    ts = jnp.linspace(0, 1, 7)
    straight = jax.tree.map(lambda a, b: (a + b) / 2, W0, W1)
    np.testing.assert_allclose(
        np.asarray(curve_losses(_valley_loss, W0, straight, W1, ts)),
        np.asarray(line_losses(_valley_loss, W0, W1, ts)),
        rtol=1e-6,
    )


def test_fit_bezier_midpoint_lowers_curve_loss():
    ts = jnp.linspace(0, 1, 41)
    before = float(jnp.mean(line_losses(_valley_loss, W0, W1, ts)))
    fit = fit_bezier_midpoint(
        _valley_loss, W0, W1, jax.random.PRNGKey(0), num_steps=300, learning_rate=0.05
    )
    assert fit.losses.shape == (300,)
    after = float(jnp.mean(curve_losses(_valley_loss, W0, fit.theta, W1, ts)))
    assert before > 0.1
    assert after < 0.25 * before
    # The endpoints did not move.
    assert float(_valley_loss(bezier_point(W0, fit.theta, W1, 0.0))) == 0.0


def test_fit_bezier_midpoint_with_batches():
    batches = [jnp.array(1.0), jnp.array(1.0)]  # a sequence is cycled through
    fit = fit_bezier_midpoint(
        _valley_loss,
        W0,
        W1,
        jax.random.PRNGKey(0),
        num_steps=50,
        learning_rate=0.05,
        batches=batches,
    )
    plain = fit_bezier_midpoint(
        _valley_loss, W0, W1, jax.random.PRNGKey(0), num_steps=50, learning_rate=0.05
    )
    for k in W0:
        np.testing.assert_allclose(np.asarray(fit.theta[k]), np.asarray(plain.theta[k]), rtol=1e-6)
    with pytest.raises(ValueError, match="ran out"):
        fit_bezier_midpoint(
            _valley_loss,
            W0,
            W1,
            jax.random.PRNGKey(0),
            num_steps=5,
            learning_rate=0.05,
            batches=iter(itertools.repeat(jnp.array(1.0), 3)),
        )
    with pytest.raises(ValueError, match="num_steps"):
        fit_bezier_midpoint(
            _valley_loss, W0, W1, jax.random.PRNGKey(0), num_steps=0, learning_rate=0.1
        )
    with pytest.raises(ValueError, match="learning_rate"):
        fit_bezier_midpoint(
            _valley_loss, W0, W1, jax.random.PRNGKey(0), num_steps=1, learning_rate=0.0
        )
    with pytest.raises(ValueError, match="ts must be a 1-D"):
        line_losses(_valley_loss, W0, W1, jnp.zeros((2, 2)))
