"""spectrum_features against NumPy and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune.spectra import group_rank_bound, spectrum_features


def _random_psd(seed, n, rank):
    a = np.random.default_rng(seed).normal(size=(n, rank))
    return a @ a.T


@given(seed=st.integers(0, 10_000), n=st.integers(2, 9))
@settings(max_examples=25, deadline=None)
def test_eigenvalues_match_numpy_for_full_rank_kernels(seed, n):
    kernel = _random_psd(seed, n, n + 3)
    features = spectrum_features(kernel, dtype=np.float64)
    expected = np.sort(np.linalg.eigvalsh(kernel))[::-1]
    np.testing.assert_allclose(features.eigenvalues, expected, rtol=1e-10)
    assert features.lambda_min == pytest.approx(expected[-1], rel=1e-10)
    assert features.lambda_max == pytest.approx(expected[0], rel=1e-10)
    assert features.condition_number == pytest.approx(expected[0] / expected[-1], rel=1e-8)
    assert not features.rank_deficient and int(features.rank) == n


def test_entropy_of_known_spectra():
    # Equal eigenvalues: maximal entropy log n (Chen et al. (2023), eq. 7).
    features = spectrum_features(3.0 * np.eye(5))
    assert features.entropy == pytest.approx(np.log(5), rel=1e-6)
    assert features.effective_rank == pytest.approx(5.0, rel=1e-5)
    # A known spectrum (1, 2, 3, 4): ρ = -Σ p log p with p = λ / 10.
    values = np.array([1.0, 2.0, 3.0, 4.0])
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))
    kernel = q @ np.diag(values) @ q.T
    p = values / values.sum()
    expected = -np.sum(p * np.log(p))
    assert spectrum_features(kernel, dtype=np.float64).entropy == pytest.approx(expected, rel=1e-10)
    # One dominant eigenvalue: entropy near 0.
    assert spectrum_features(np.diag([1.0, 0.0, 0.0])).entropy == pytest.approx(0.0, abs=1e-7)


def test_rank_deficient_kernel_is_flagged_not_nan():
    kernel = _random_psd(1, 6, 3)  # rank 3 of 6
    for dtype in (None, np.float64):
        features = spectrum_features(kernel.astype(np.float32), dtype=dtype)
        assert bool(features.rank_deficient)
        assert int(features.rank) == 3
        assert float(features.lambda_min) == 0.0
        assert np.isinf(features.condition_number)
        assert np.all(np.asarray(features.eigenvalues) >= 0)  # round-off negatives cleaned
        assert np.all(np.isfinite(features.entropy))
        assert not bool(features.negative)


def test_max_rank_uses_the_nonzero_spectrum_of_the_small_gram_matrix():
    """A group with fewer parameters than rows: the nonzero eigenvalues of J Jᵀ are those of
    Jᵀ J (reading PL-6, docs/readings.md), so λ_min is the smallest eigenvalue of the small Gram matrix."""
    jac = np.random.default_rng(3).normal(size=(8, 3))  # n = 8 rows, 3 parameters
    kernel = jac @ jac.T
    features = spectrum_features(kernel, max_rank=3, dtype=np.float64)
    gram = np.linalg.eigvalsh(jac.T @ jac)
    assert features.lambda_min == pytest.approx(gram.min(), rel=1e-9)
    assert features.condition_number == pytest.approx(gram.max() / gram.min(), rel=1e-8)
    assert not bool(features.rank_deficient)
    np.testing.assert_allclose(features.eigenvalues[3:], 0.0)


def test_stacked_kernels_with_per_kernel_ranks():
    kernels = np.stack([_random_psd(4, 5, 2), _random_psd(5, 5, 5), _random_psd(6, 5, 1)])
    features = spectrum_features(kernels, max_rank=np.array([2, 5, 5]), dtype=np.float64)
    assert features.lambda_min.shape == (3,)
    np.testing.assert_array_equal(features.rank_deficient, [False, False, True])
    for i in range(3):
        single = spectrum_features(kernels[i], max_rank=[2, 5, 5][i], dtype=np.float64)
        np.testing.assert_allclose(features.eigenvalues[i], single.eigenvalues)


def test_negative_eigenvalues_beyond_round_off_are_flagged():
    features = spectrum_features(np.diag([2.0, 1.0, -0.5]))
    assert bool(features.negative)
    assert float(features.eigenvalues.min()) == 0.0


def test_group_rank_bound():
    np.testing.assert_array_equal(
        group_rank_bound([1, 3, 50], num_outputs=2, num_examples=8), [2, 6, 8]
    )


def test_jittable_on_device_path():
    kernel = jnp.asarray(_random_psd(7, 4, 6), jnp.float32)
    jitted = jax.jit(spectrum_features)(kernel)
    np.testing.assert_allclose(jitted.eigenvalues, spectrum_features(kernel).eigenvalues, rtol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [(np.ones((3, 4)), "square"), (np.ones(3), "square"), (np.ones((2, 2, 2, 2)), "square")],
)
def test_bad_kernels(bad, match):
    with pytest.raises(ValueError, match=match):
        spectrum_features(bad)


def test_bad_max_rank():
    with pytest.raises(ValueError, match="max_rank"):
        spectrum_features(np.eye(3), max_rank=0)
    with pytest.raises(ValueError, match="max_rank"):
        spectrum_features(np.stack([np.eye(3)] * 2), max_rank=np.array([1, 2, 3]))
