"""The exact risk of pruned min-norm linear models (Li et al. 2020, Sec. 3.1): the root of eq. 3.3
and Def. 3.2's identities, the identity-covariance closed form, the auxiliary prediction against
simulated least squares (within Monte-Carlo error), MP = HP for Λ = I, brute-force pruning and
fitting references, and argument errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxprune.data.linear import decaying_theta
from jaxprune.methods.importance.linear import (
    AuxiliaryDistribution,
    auxiliary_distribution,
    empirical_risk,
    identity_auxiliary,
    identity_risk,
    leading_test_importance,
    leading_training_importance,
    min_norm_solution,
    population_loss,
    predicted_risk,
    pruning_masks,
    sample_auxiliary,
)

# The small problem of the brief: p = 200, κ = 5/3.
P, N, SIGMA = 200, 120, 0.1
KEEP = np.array([0, 10, 20, 50, 100, 150, 200])
NUM_DRAWS, NUM_TRIALS = 4000, 200
# Agreement within this many (combined) standard errors.
Z_MAX = 4.0


def scaled(lam: float, p: int = P) -> np.ndarray:
    """Eq. 3.5: ``λ`` on the first 10% of the features."""
    diag = np.ones(p)
    diag[: p // 10] = lam
    return diag


def xi_residual(xi: float, lam_diag: np.ndarray, kappa: float) -> float:
    """Right side minus left side of eq. 3.3, written independently of the library."""
    return kappa * np.mean(1.0 / (1.0 + 1.0 / (xi * lam_diag**2))) - 1.0


@pytest.fixture(scope="module")
def theta_bar():
    return decaying_theta(P)


@pytest.fixture(scope="module")
def risks(theta_bar):
    """Predicted and empirical risks for λ in {1/2, 1, 5} and both methods."""
    out = {}
    for lam in (0.5, 1.0, 5.0):
        for method in ("magnitude", "hessian"):
            common = dict(n=N, sigma=SIGMA, keep=KEEP, method=method)
            out[lam, method] = (
                predicted_risk(
                    scaled(lam), theta_bar, key=jax.random.key(0), num_draws=NUM_DRAWS, **common
                ),
                empirical_risk(
                    scaled(lam), theta_bar, key=jax.random.key(1), num_trials=NUM_TRIALS, **common
                ),
            )
    return out


@pytest.mark.parametrize("case", ["scaled5", "scaled_half", "random", "one_huge"])
def test_xi_solves_equation_3_3_and_def_3_2_identities(case, theta_bar):
    rng = np.random.default_rng(3)
    lam_diag = {
        "scaled5": scaled(5.0),
        "scaled_half": scaled(0.5),
        "random": np.exp(rng.normal(size=P)),
        "one_huge": np.r_[1e3, np.ones(P - 1)],
    }[case]
    kappa = P / N
    aux = auxiliary_distribution(lam_diag, theta_bar, n=N, sigma=SIGMA)
    assert aux.xi > 0
    assert abs(xi_residual(aux.xi, lam_diag, kappa)) < 1e-12
    # The right side increases in Ξ, so the sign flips across a 1e-12 relative neighbourhood.
    assert xi_residual(aux.xi * (1 - 1e-12), lam_diag, kappa) < 0
    assert xi_residual(aux.xi * (1 + 1e-12), lam_diag, kappa) > 0
    # Def. 3.2 / App. A.3: ζ (A.24), √Γ = mean γ (A.25) and complementary slackness (A.27).
    np.testing.assert_allclose(aux.zeta, 1 / (1 + aux.xi * lam_diag**2), rtol=1e-14)
    assert np.mean(aux.gamma) == pytest.approx(np.sqrt(aux.gamma_cap), rel=1e-12)
    slack = SIGMA**2 + np.sum(aux.gamma**2) / P + np.sum(aux.zeta**2 * theta_bar**2)
    assert slack == pytest.approx(kappa * aux.gamma_cap, rel=1e-12)


def test_identity_closed_form_matches_def_3_2(theta_bar):
    closed = identity_auxiliary(theta_bar, n=N, sigma=SIGMA)
    general = auxiliary_distribution(np.ones(P), theta_bar, n=N, sigma=SIGMA)
    assert isinstance(closed, AuxiliaryDistribution)
    assert closed.xi == pytest.approx(general.xi, rel=1e-12)
    assert closed.gamma_cap == pytest.approx(general.gamma_cap, rel=1e-12)
    np.testing.assert_allclose(closed.zeta, general.zeta, rtol=1e-12)
    np.testing.assert_allclose(closed.gamma, general.gamma, rtol=1e-12)
    # θ_aux = θ̄/κ + √(σ²/(κ−1) + (κ−1)‖θ̄‖²/κ²) h.
    kappa = P / N
    np.testing.assert_allclose(1 - closed.zeta, 1 / kappa, rtol=1e-14)
    expected_scale = np.sqrt(SIGMA**2 / (kappa - 1) + (kappa - 1) / kappa**2)
    np.testing.assert_allclose(closed.gamma, expected_scale, rtol=1e-12)


def test_identity_risk_matches_predicted_and_empirical(risks, theta_bar):
    closed = identity_risk(theta_bar, n=N, sigma=SIGMA)
    predicted, empirical = risks[1.0, "magnitude"]
    dense = KEEP == P
    for estimate in (predicted, empirical):
        gap = abs(estimate.risk[dense][0] - closed)
        assert gap < Z_MAX * estimate.stderr[dense][0]
    # Pruning draws of the closed-form θ_aux by magnitude reproduces the simulated risks.
    draws = sample_auxiliary(
        identity_auxiliary(theta_bar, n=N, sigma=SIGMA), jax.random.key(9), NUM_DRAWS
    )
    rank = np.argsort(np.argsort(-(draws**2), axis=1, kind="stable"), axis=1)
    pruned = np.where(rank[:, None, :] < KEEP[None, :, None], draws[:, None, :], 0.0)
    samples = population_loss(pruned, np.ones(P), theta_bar, SIGMA)  # (draws, len(KEEP))
    stderr = np.hypot(samples.std(0, ddof=1) / np.sqrt(NUM_DRAWS), empirical.stderr)[~(KEEP == 0)]
    gap = np.abs(samples.mean(0) - empirical.risk)[~(KEEP == 0)]
    assert np.all(gap < Z_MAX * stderr), gap / stderr


def test_predicted_matches_empirical_within_monte_carlo_error(risks, theta_bar):
    for (lam, method), (predicted, empirical) in risks.items():
        # s = 0: both are exactly L(0) = ‖θ̄‖² + σ².
        empty = KEEP == 0
        np.testing.assert_allclose(predicted.risk[empty], 1 + SIGMA**2, rtol=1e-12)
        np.testing.assert_allclose(empirical.risk[empty], 1 + SIGMA**2, rtol=1e-12)
        combined = np.hypot(predicted.stderr, empirical.stderr)[~empty]
        gap = np.abs(predicted.risk - empirical.risk)[~empty]
        assert np.all(gap < Z_MAX * combined), (lam, method, gap / combined)


def test_figure_1_orderings(risks):
    """Sec. 3.1: λ = 5 makes HP beat MP; λ = 1/2 makes HP worse than MP; λ = 1 ties."""
    middle = (KEEP > 0) & (KEEP < P)
    for lam, hp_better in ((5.0, True), (0.5, False)):
        for which in (0, 1):  # predicted, empirical
            magnitude = risks[lam, "magnitude"][which].risk[middle]
            hessian = risks[lam, "hessian"][which].risk[middle]
            assert np.all((hessian < magnitude) == hp_better), lam


def test_magnitude_and_hessian_pruning_coincide_for_identity(risks, theta_bar):
    draw = sample_auxiliary(
        auxiliary_distribution(np.ones(P), theta_bar, n=N, sigma=SIGMA),
        jax.random.key(5),
        NUM_DRAWS,
    )[0]
    masks = {
        m: pruning_masks(draw, np.ones(P), keep=KEEP, method=m) for m in ("magnitude", "hessian")
    }
    np.testing.assert_array_equal(masks["magnitude"], masks["hessian"])
    for which in (0, 1):
        np.testing.assert_array_equal(
            risks[1.0, "magnitude"][which].risk, risks[1.0, "hessian"][which].risk
        )


def brute_force_risks(thetas, lam_diag, truth, sigma, keep, method):
    """``(len(thetas), len(keep))`` losses: keep the top-s scores of each row, evaluate eq. 3.1."""
    score = thetas**2 if method == "magnitude" else (lam_diag * thetas) ** 2
    order = np.argsort(-score, axis=1, kind="stable")
    out = np.zeros((thetas.shape[0], len(keep)))
    for k, s in enumerate(keep):
        kept = np.zeros(thetas.shape, bool)
        np.put_along_axis(kept, order[:, :s], True, axis=1)
        pruned = np.where(kept, thetas, 0.0)
        out[:, k] = np.sum((lam_diag * pruned - truth) ** 2, axis=1) + sigma**2
    return out


@pytest.mark.parametrize("method", ["magnitude", "hessian"])
def test_predicted_risk_equals_brute_force_over_the_same_draws(method, theta_bar):
    lam_diag = scaled(3.0)
    aux = auxiliary_distribution(lam_diag, theta_bar, n=N, sigma=SIGMA)
    key = jax.random.key(7)
    draws = sample_auxiliary(aux, key, NUM_DRAWS)
    brute = brute_force_risks(draws, lam_diag, theta_bar, SIGMA, KEEP, method)
    estimate = predicted_risk(
        lam_diag,
        theta_bar,
        n=N,
        sigma=SIGMA,
        keep=KEEP,
        method=method,
        key=key,
        num_draws=NUM_DRAWS,
    )
    np.testing.assert_allclose(estimate.risk, brute.mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        estimate.stderr, brute.std(0, ddof=1) / np.sqrt(NUM_DRAWS), rtol=1e-9, atol=1e-15
    )
    np.testing.assert_allclose(population_loss(draws, lam_diag, theta_bar, SIGMA), brute[:, -1])
    for theta in draws[:3]:
        masks = pruning_masks(theta, lam_diag, keep=KEEP, method=method)
        np.testing.assert_array_equal(masks.sum(1), KEEP)
        np.testing.assert_allclose(
            population_loss(np.where(masks, theta, 0.0), lam_diag, theta_bar, SIGMA),
            brute_force_risks(theta[None], lam_diag, theta_bar, SIGMA, KEEP, method)[0],
        )


def test_auxiliary_draws_have_the_mean_and_variance_of_eq_3_4(theta_bar):
    lam_diag = scaled(5.0)
    aux = auxiliary_distribution(lam_diag, theta_bar, n=N, sigma=SIGMA)
    draws = sample_auxiliary(aux, jax.random.key(2), NUM_DRAWS)
    assert draws.shape == (NUM_DRAWS, P) and draws.dtype == np.float64
    mean = (1 - aux.zeta) * theta_bar / lam_diag
    std = aux.gamma / lam_diag / np.sqrt(P)  # h ~ N(0, I_p/p): reading HB-1
    z = (draws.mean(0) - mean) / (std / np.sqrt(NUM_DRAWS))
    assert np.max(np.abs(z)) < 5  # 200 coordinates
    np.testing.assert_allclose(draws.std(0, ddof=1), std, rtol=0.08)


def test_empirical_risk_equals_brute_force_fits_of_the_same_datasets():
    """The datasets follow data/linear.py's convention; each is refit by NumPy's min-norm lstsq."""
    p, n, sigma, keep, num_trials = 30, 18, 0.3, np.array([0, 4, 17, 30]), 3
    lam_diag, truth, key = scaled(2.0, p), decaying_theta(p), jax.random.key(11)
    fits, train_ni = [], []
    with jax.enable_x64(True):
        for trial_key in jax.random.split(key, num_trials):
            key_x, key_z = jax.random.split(trial_key)
            x = np.asarray(jax.random.normal(key_x, (n, p), np.float64))
            y = x @ truth + sigma * np.asarray(jax.random.normal(key_z, (n,), np.float64))
            features = x * lam_diag
            theta_hat = np.linalg.lstsq(features, y, rcond=None)[0]
            fits.append(theta_hat)
            zeroed = np.where(np.arange(p)[None, :] < keep[:, None], 0.0, theta_hat)
            train_ni.append(
                np.mean((y - zeroed @ features.T) ** 2, axis=1)
                - np.mean((y - features @ theta_hat) ** 2)
            )
    for method in ("magnitude", "hessian"):
        brute = brute_force_risks(np.array(fits), lam_diag, truth, sigma, keep, method)
        estimate = empirical_risk(
            lam_diag,
            truth,
            n=n,
            sigma=sigma,
            keep=keep,
            method=method,
            key=key,
            num_trials=num_trials,
        )
        np.testing.assert_allclose(estimate.risk, brute.mean(0), rtol=1e-10)
        np.testing.assert_allclose(
            estimate.stderr, brute.std(0, ddof=1) / np.sqrt(num_trials), rtol=1e-8, atol=1e-14
        )
    importance = leading_training_importance(
        lam_diag, truth, n=n, sigma=sigma, leading=keep, key=key, num_trials=num_trials
    )
    np.testing.assert_allclose(importance.importance, np.mean(train_ni, 0), rtol=1e-9, atol=1e-12)
    assert abs(importance.importance[0]) < 1e-12  # nothing zeroed: an interpolant's NI is 0


def test_min_norm_solution_equals_lstsq_and_interpolates():
    rng = np.random.default_rng(0)
    for n, p in ((12, 30), (30, 12)):
        x, y = rng.normal(size=(n, p)), rng.normal(size=n)
        solution = min_norm_solution(x, y)
        reference = np.linalg.lstsq(x, y, rcond=None)[0]
        np.testing.assert_allclose(solution, reference, rtol=1e-10, atol=1e-12)
        if n < p:
            np.testing.assert_allclose(x @ solution, y, atol=1e-10)
    # Rank deficient: still the minimum-norm least-squares solution.
    x = rng.normal(size=(10, 3)) @ rng.normal(size=(3, 20))
    y = rng.normal(size=10)
    np.testing.assert_allclose(
        min_norm_solution(x, y), np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-10
    )


def test_test_importance_of_leading_weights_is_lemma_3_1(theta_bar):
    leading = np.array([0, 5, 20, 200])
    expected = np.cumsum(np.r_[0.0, theta_bar**2])[leading]
    for lam in (0.5, 1.0, 5.0):
        np.testing.assert_allclose(
            leading_test_importance(scaled(lam), theta_bar, sigma=SIGMA, leading=leading),
            expected,
            rtol=1e-12,
            atol=1e-15,
        )


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"n": P}, ValueError, "n: expected fewer examples"),
        ({"n": 2 * P}, ValueError, "κ = 0.5"),
        ({"n": 0}, ValueError, "n: expected a positive int"),
        ({"n": 1.5}, TypeError, "n: expected a positive int"),
        ({"sigma": -0.1}, ValueError, "sigma"),
        ({"sigma": np.nan}, ValueError, "sigma"),
        ({"lam_diag": -np.ones(P)}, ValueError, "lam_diag: expected positive"),
        ({"lam_diag": np.r_[0.0, np.ones(P - 1)]}, ValueError, "lam_diag: expected positive"),
        ({"lam_diag": np.r_[np.inf, np.ones(P - 1)]}, ValueError, "lam_diag: expected finite"),
        ({"lam_diag": np.ones(P - 1)}, ValueError, "theta_bar: expected shape"),
        ({"theta_bar": np.full(P, np.nan)}, ValueError, "theta_bar: expected finite"),
        ({"keep": [-1]}, ValueError, r"keep: expected sizes in \[0, p=200\]"),
        ({"keep": [P + 1]}, ValueError, r"keep: expected sizes in \[0, p=200\], got \[201\]"),
        ({"keep": [1.5]}, TypeError, "keep: expected ints"),
        ({"keep": []}, ValueError, "keep: expected a non-empty"),
        ({"method": "random"}, ValueError, "method: expected one of"),
        ({"num_draws": 1}, ValueError, "num_draws"),
    ],
)
def test_bad_inputs_raise(change, error, match, theta_bar):
    kwargs = dict(
        lam_diag=np.ones(P),
        theta_bar=theta_bar,
        n=N,
        sigma=SIGMA,
        keep=[1],
        method="magnitude",
        key=jax.random.key(0),
        num_draws=2,
    )
    kwargs.update(change)
    with pytest.raises(error, match=match):
        predicted_risk(**kwargs)
    if "num_draws" not in change:
        kwargs["num_trials"] = kwargs.pop("num_draws")
        with pytest.raises(error, match=match):
            empirical_risk(**kwargs)


def test_other_bad_inputs_raise(theta_bar):
    with pytest.raises(ValueError, match="num_trials"):
        empirical_risk(
            np.ones(P),
            theta_bar,
            n=N,
            sigma=SIGMA,
            keep=[1],
            method="hessian",
            key=jax.random.key(0),
            num_trials=1,
        )
    with pytest.raises(ValueError, match="leading: expected sizes"):
        leading_test_importance(np.ones(P), theta_bar, sigma=SIGMA, leading=[P + 1])
    with pytest.raises(ValueError, match="n: expected fewer"):
        identity_risk(theta_bar, n=P, sigma=SIGMA)
    with pytest.raises(TypeError, match="aux: expected an AuxiliaryDistribution"):
        sample_auxiliary((1.0, 2.0), jax.random.key(0), 3)
    with pytest.raises(ValueError, match="theta: expected shape"):
        population_loss(np.ones(P + 1), np.ones(P), theta_bar, SIGMA)
    with pytest.raises(ValueError, match="x: expected finite"):
        min_norm_solution(np.full((3, 5), np.nan), np.ones(3))
    with pytest.raises(ValueError, match=r"y: expected shape \(3,\)"):
        min_norm_solution(np.ones((3, 5)), np.ones(4))
    with pytest.raises(ValueError, match=r"theta: expected shape \(200,\)"):
        pruning_masks(np.ones(P - 1), np.ones(P), keep=[1], method="hessian")
