"""Li et al. (2020), Section 4: Lemma 4.1's λ-scalings against brute-force ``jax.hessian`` (float64),
the PPLS constants of Def. 4.2 against exact eigen-decompositions, and Theorem 4.3's bounds
along real gradient-descent iterates on least squares with D feature blocks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxprune.methods.importance.two_layer import (
    LEMMA41_EXPONENTS,
    layer_group_ids,
    layer_quantities,
    lemma41_factors,
    ppls_constants,
    theorem43_bounds,
)
from jaxprune.models.two_layer import TwoLayer, TwoLayerConfig, rescale

LAMBDAS = (0.25, 2.0, 3.0)


def _net(d=3, m=5, k=2, n=6, seed=0):
    """A float64 two-layer ReLU net (the zoo's model), inputs and labels."""
    config = TwoLayerConfig(input_dim=d, width=m, num_outputs=k, dtype=jnp.float64)
    model = TwoLayer(config)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)))
    variables = model.init(jax.random.key(seed), x)
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    labels = jnp.asarray(rng.integers(0, k, size=n))

    def apply(params, inputs):
        return model.apply({"params": params}, inputs)

    def cross_entropy(params):
        logits = apply(params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return variables, apply, cross_entropy, x


def _blocks(loss_fn, params):
    """Brute force: the full Hessian and its diagonal, split into the W and V blocks."""
    flat, unravel = ravel_pytree(params)
    hessian = np.asarray(jax.hessian(lambda v: loss_fn(unravel(v)))(flat))
    sizes = [params["hidden"]["kernel"].size, params["output"]["kernel"].size]
    w, v = slice(0, sizes[0]), slice(sizes[0], sum(sizes))
    theta = np.asarray(flat)
    half_hi = [0.5 * np.sum(np.diag(hessian)[s] * theta[s] ** 2) for s in (w, v)]
    return hessian[w, w], hessian[v, v], np.array(half_hi), theta[w], theta[v]


@pytest.fixture(scope="module")
def lemma_setup():
    with jax.enable_x64(True):
        variables, _, loss_fn, _ = _net()
        base = _blocks(loss_fn, variables["params"])
        scaled = {lam: _blocks(loss_fn, rescale(variables, lam)["params"]) for lam in LAMBDAS}
        key = jax.random.key(3)
        measured = {
            lam: layer_quantities(
                loss_fn, rescale(variables, lam)["params"], key, num_probes=8, lanczos_iterations=10
            )
            for lam in (1.0, *LAMBDAS)
        }
        yield base, scaled, measured


@pytest.mark.parametrize("lam", LAMBDAS)
def test_lemma41_scalings_hold_for_brute_force_hessians(lemma_setup, lam):
    base, scaled, _ = lemma_setup
    h_w1, h_v1, hi1, w1, v1 = base
    h_w, h_v, hi, w, v = scaled[lam]
    factors = lemma41_factors(lam)
    # (4.3): the partial Hessians scale as λ⁻² (W) and λ² (V), entry by entry.
    np.testing.assert_allclose(h_w, factors.hessian_trace[0] * h_w1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_v, factors.hessian_trace[1] * h_v1, rtol=1e-12, atol=1e-14)
    # (4.2): MI scales as λ², λ⁻²; HI is invariant.
    mi, mi1 = np.array([w @ w, v @ v]), np.array([w1 @ w1, v1 @ v1])
    np.testing.assert_allclose(mi, factors.magnitude * mi1, rtol=1e-13)
    np.testing.assert_allclose(hi, hi1, rtol=1e-11)
    np.testing.assert_allclose(factors.hessian, [1.0, 1.0])
    assert np.linalg.norm(h_w1) > 0 and np.linalg.norm(h_v1) > 0  # non-trivial blocks


def test_lemma41_factors_are_powers_of_lambda():
    factors = lemma41_factors(2.0)
    np.testing.assert_array_equal(factors.magnitude, [4.0, 0.25])
    np.testing.assert_array_equal(factors.hessian_top, [0.25, 4.0])
    for exponent, factor in zip(LEMMA41_EXPONENTS, lemma41_factors(0.5)):
        np.testing.assert_allclose(factor, 0.5**exponent)


@pytest.mark.parametrize("lam", LAMBDAS)
def test_layer_quantities_measure_the_lemma(lemma_setup, lam):
    _, scaled, measured = lemma_setup
    one, at_lam = measured[1.0], measured[lam]
    h_w, h_v, hi, w, v = scaled[lam]
    # Measured MI and HI equal the brute-force ones (HI with OBD's ½, reading HB-3) ...
    np.testing.assert_allclose(at_lam.magnitude, [w @ w, v @ v], rtol=1e-12)
    np.testing.assert_allclose(at_lam.hessian, hi, rtol=1e-10)
    # ... the top eigenvalue of each partial Hessian is that of the brute-force block ...
    tops = [np.linalg.eigvalsh(h_w)[-1], np.linalg.eigvalsh(h_v)[-1]]
    np.testing.assert_allclose(at_lam.hessian_top, tops, rtol=1e-8)
    # ... and measured ratios match Lemma 4.1's factors to round-off (same probes for traces).
    factors = lemma41_factors(lam)
    for name in ("magnitude", "hessian", "hessian_trace", "hessian_top"):
        ratio = np.asarray(getattr(at_lam, name)) / np.asarray(getattr(one, name))
        np.testing.assert_allclose(ratio, getattr(factors, name), rtol=1e-8, err_msg=name)


def _least_squares(sizes, n, scales, seed=0):
    rng = np.random.default_rng(seed)
    blocks = [scale * rng.normal(size=(n, p)) for p, scale in zip(sizes, scales)]
    y = rng.normal(size=n)
    bounds = np.cumsum([0, *sizes])

    def apply(params, x):
        parts = [x[:, bounds[i] : bounds[i + 1]] @ params[f"theta{i}"] for i in range(len(sizes))]
        return sum(parts)[:, None]

    params = {f"theta{i}": jnp.asarray(rng.normal(size=p)) for i, p in enumerate(sizes)}
    set_ids = {f"theta{i}": np.full(p, i, np.int32) for i, p in enumerate(sizes)}
    return (
        blocks,
        jnp.asarray(np.concatenate(blocks, axis=1)),
        jnp.asarray(y),
        apply,
        params,
        set_ids,
    )


def test_ppls_constants_of_least_squares_are_singular_values():
    with jax.enable_x64(True):
        blocks, x, y, apply, params, set_ids = _least_squares((5, 6, 7), 4, (1.0, 0.3, 2.0))
        constants = ppls_constants(apply, params, x, set_ids, loss_scale=1.0)
        singular = [np.linalg.svd(b, compute_uv=False) for b in blocks]
        # Li et al. (2020), eq. 4.4: μ_i = σ_min(X_i)², L_i = ‖X_i‖².
        np.testing.assert_allclose(constants.mu, [s[-1] ** 2 for s in singular], rtol=1e-10)
        np.testing.assert_allclose(constants.smoothness, [s[0] ** 2 for s in singular], rtol=1e-10)
        assert not np.any(constants.rank_deficient)

        # Brute force: the exact partial Hessians of ½‖y − Xθ‖²; L_i is their top eigenvalue and
        # μ_i their smallest nonzero one (rank n).
        def loss(p):
            return 0.5 * jnp.sum((apply(p, x)[:, 0] - y) ** 2)

        hessian = jax.hessian(loss)(params)
        for i in range(3):
            block = np.asarray(hessian[f"theta{i}"][f"theta{i}"])
            values = np.linalg.eigvalsh(block)[::-1]
            assert float(constants.smoothness[i]) == pytest.approx(values[0], rel=1e-10)
            assert float(constants.mu[i]) == pytest.approx(values[x.shape[0] - 1], rel=1e-8)


def test_ppls_constants_of_a_two_layer_net_match_its_jacobian_gram():
    with jax.enable_x64(True):
        variables, apply, _, x = _net(d=3, m=5, k=2, n=3, seed=1)
        params = variables["params"]
        ids = layer_group_ids(params)
        constants = ppls_constants(apply, params, x, ids)
        n, k = x.shape[0], 2
        rng = np.random.default_rng(5)
        targets = jnp.asarray(rng.normal(size=(n, k)))
        for g, layer in enumerate(("hidden", "output")):
            jac = jax.jacrev(lambda kernel: apply({**params, layer: {"kernel": kernel}}, x))(
                params[layer]["kernel"]
            )
            jac = np.asarray(jac).reshape(n * k, -1)  # rows (example, output), example-major
            np.testing.assert_allclose(constants.gram[g], jac @ jac.T, rtol=1e-10, atol=1e-12)
            values = np.linalg.eigvalsh(jac @ jac.T)
            assert float(constants.mu[g]) == pytest.approx(values[0] / n, rel=1e-8)
            assert float(constants.smoothness[g]) == pytest.approx(values[-1] / n, rel=1e-10)

            # Def. 4.2 at the linearization point, mean squared loss (4.1) with ℓ = ½‖·‖²:
            # ‖∂L/∂θ_Δ‖² ≥ 2 μ_Δ L, and ∂L/∂θ_Δ is L_Δ-Lipschitz for the linearized model.
            def loss(kernel):
                out = apply({**params, layer: {"kernel": kernel}}, x)
                return 0.5 * jnp.sum((out - targets) ** 2) / n

            value, grad = jax.value_and_grad(loss)(params[layer]["kernel"])
            assert float(jnp.sum(grad**2)) >= 2 * float(constants.mu[g]) * float(value) * (
                1 - 1e-10
            )
            gauss_newton = jac.T @ jac / n
            assert np.linalg.eigvalsh(gauss_newton)[-1] == pytest.approx(
                float(constants.smoothness[g]), rel=1e-9
            )


@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.05, 1.0)])
def test_theorem43_bounds_hold_along_gradient_descent(scales):
    with jax.enable_x64(True):
        _, x, y, apply, params0, set_ids = _least_squares((6, 8), 4, scales, seed=2)
        constants = ppls_constants(apply, params0, x, set_ids, loss_scale=1.0)
        eta = 1.0 / float(np.sum(constants.smoothness))

        def loss(p):
            return 0.5 * jnp.sum((apply(p, x)[:, 0] - y) ** 2)

        num_steps = 300

        def step(p, _):
            new = jax.tree_util.tree_map(lambda a, g: a - eta * g, p, jax.grad(loss)(p))
            return new, p

        _, iterates = jax.lax.scan(step, params0, length=num_steps)
        taus = np.arange(num_steps)
        loss0 = float(loss(params0))
        bounds = theorem43_bounds(constants.mu, constants.smoothness, eta, taus, loss0)
        names = ("theta0", "theta1")
        losses = jax.vmap(loss)(iterates)
        assert np.all(np.asarray(losses) <= bounds.loss * (1 + 1e-9) + 1e-15)  # (B.1)
        for i, name in enumerate(names):
            other = names[1 - i]
            distance = np.sum((np.asarray(iterates[name]) - np.asarray(params0[name])) ** 2, axis=1)
            assert np.all(distance <= bounds.distance_sq[i])  # (4.5)
            reset_i = jax.vmap(lambda p: loss({**p, name: params0[name]}))(iterates)
            reset_other = jax.vmap(lambda p: loss({**p, other: params0[other]}))(iterates)
            ni = np.asarray(reset_i - losses)  # I^N_{Δ_i}(θ_τ, θ_0)
            ni_complement = np.asarray(reset_other - losses)  # I^N_{Δ̄_i}(θ_τ, θ_0)
            assert np.all(ni <= bounds.ni_upper[:, i] + 1e-12)  # (4.6)
            assert np.all(ni_complement >= bounds.ni_complement_lower[:, i] - 1e-12)  # (4.7)
        if scales[0] < 1:
            # The down-scaled block has κ ≪ 1 ("larger Hessian wins more"): its own NI is
            # bounded by a small share of L(θ_0), and resetting everything else loses most of it.
            assert bounds.kappa[0] < 0.05
            assert bounds.ni_upper[-1, 0] < 0.05 * loss0
            assert bounds.ni_complement_lower[-1, 0] > 0.7 * loss0


def test_theorem43_limit_and_shapes():
    bounds = theorem43_bounds([1.0, 3.0], [2.0, 4.0], 1.0 / 6.0, math.inf, 2.0)
    assert bounds.mu == 4.0 and bounds.smoothness == 6.0
    np.testing.assert_allclose(bounds.kappa, [0.5, 1.0])
    assert bounds.loss == 0.0
    np.testing.assert_allclose(bounds.distance_sq, 8 * bounds.kappa * 2.0 / 4.0)
    np.testing.assert_allclose(bounds.ni_upper, 2.0 * 8 * bounds.kappa**2)
    np.testing.assert_allclose(
        bounds.ni_complement_lower, 2.0 * (1 - 8 * bounds.kappa**2 - 4 * bounds.kappa)
    )
    series = theorem43_bounds([1.0, 3.0], [2.0, 4.0], 1.0 / 6.0, [0, 1, 2], 2.0)
    assert series.ni_upper.shape == (3, 2) and series.loss.shape == (3,)
    np.testing.assert_allclose(series.loss, 2.0 * (1 - 4.0 / 6.0) ** np.arange(3))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([1.0], [2.0], 1.0, 0, 1.0), "eta"),
        (([1.0], [2.0], 0.0, 0, 1.0), "eta"),
        (([0.0, 0.0], [1.0, 1.0], 0.1, 0, 1.0), "sum"),
        (([2.0], [1.0], 0.1, 0, 1.0), "L_i >= mu_i"),
        (([1.0], [2.0, 3.0], 0.1, 0, 1.0), "shape"),
        (([-1.0], [2.0], 0.1, 0, 1.0), "mu"),
        (([1.0], [2.0], 0.1, -1, 1.0), "tau"),
        (([1.0], [2.0], 0.1, 1.5, 1.0), "tau"),
        (([1.0], [2.0], 0.1, 0, -1.0), "loss0"),
        (([float("nan")], [2.0], 0.1, 0, 1.0), "mu"),
    ],
)
def test_theorem43_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        theorem43_bounds(*args)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="lam"):
        lemma41_factors(0.0)
    with pytest.raises(ValueError, match="lam"):
        lemma41_factors(float("nan"))
    with pytest.raises(TypeError, match="lam"):
        lemma41_factors("2")
    with pytest.raises(ValueError, match="params"):
        layer_group_ids({"dense": {"kernel": np.ones(3)}})
    variables, apply, loss_fn, x = _net()
    params = variables["params"]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="method"):
        layer_quantities(loss_fn, params, key, method="diagonal")
    with pytest.raises(ValueError, match="num_probes"):
        layer_quantities(loss_fn, params, key, num_probes=0)
    bad = jax.tree_util.tree_map(lambda a: a.at[0, 0].set(jnp.nan), params)
    with pytest.raises(ValueError, match="non-finite"):
        layer_quantities(loss_fn, bad, key)
    ids = layer_group_ids(params)
    with pytest.raises(ValueError, match="loss_scale"):
        ppls_constants(apply, params, x, ids, loss_scale=0.0)
    with pytest.raises(ValueError, match="backend"):
        ppls_constants(apply, params, x, ids, backend="dense")
    with pytest.raises(TypeError, match="x"):
        ppls_constants(apply, params, [1.0, 2.0], ids)
