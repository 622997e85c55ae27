"""Datasets by name: splits, shapes, the generator of Li et al. (2020), text and TFDS paths."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxprune.data import (
    DATASET_NAMES,
    DataConfig,
    decaying_theta,
    load_dataset,
    load_digits,
    scaled_linear_regression,
)


def test_split_is_a_seeded_partition():
    a, b = (
        load_dataset(DataConfig(name="digits", seed=3)),
        load_dataset(DataConfig(name="digits", seed=3)),
    )
    np.testing.assert_array_equal(a.train["x"], b.train["x"])
    assert len(a.train["x"]) + len(a.test["x"]) == 1797
    assert len(a.test["x"]) == round(0.2 * 1797)
    rows = lambda x: {r.tobytes() + bytes([int(y)]) for r, y in zip(x["x"], x["y"])}  # noqa: E731
    full = load_digits()
    everything = {r.tobytes() + bytes([int(y)]) for r, y in zip(full.x, full.y)}
    assert rows(a.train) | rows(a.test) == everything
    other = load_dataset(DataConfig(name="digits", seed=4))
    assert not np.array_equal(other.test["y"], a.test["y"])


def test_digits32_is_the_upscaled_gray_image():
    small, large = load_digits(flatten=False), load_digits(flatten=False, image_size=32, channels=3)
    assert large.x.shape == (1797, 32, 32, 3)
    np.testing.assert_array_equal(large.x[:, ::4, ::4, 0], small.x[..., 0])
    np.testing.assert_array_equal(large.x[:, 1::4, 2::4, 2], small.x[..., 0])
    with pytest.raises(ValueError, match="multiple of 8"):
        load_digits(image_size=12)


def test_scaled_linear_model():
    theta = decaying_theta(50)
    expected = 1.0 / (1.0 + 4.0 * np.arange(1, 51) / 50) ** 2
    np.testing.assert_allclose(theta, expected / np.linalg.norm(expected))
    problem = scaled_linear_regression(jax.random.key(0), 4000, 20, scale=5.0, noise=0.0)
    assert problem.scales.tolist() == [5.0, 5.0] + [1.0] * 18  # first 10% scaled (eq. 3.5)
    # Labels are preserved: y = (Λ⁻¹ x^Λ)ᵀ θ̄, and the feature covariance is Λ².
    np.testing.assert_allclose(problem.x / problem.scales @ problem.theta, problem.y, atol=1e-4)
    covariance = problem.x.T @ problem.x / 4000
    np.testing.assert_allclose(np.diag(covariance), problem.scales**2, rtol=0.1)
    splits = load_dataset(DataConfig(name="linear", num_examples=100, dim=30))
    assert splits.task == "regression" and splits.train["y"].shape == (80, 1)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*digits32.*tfds:cifar10"):
        load_dataset("cifar")
    assert "docstrings" in DATASET_NAMES


def test_local_text_files_become_mlm_rows(tmp_path):
    path = tmp_path / "wiki.train.tokens"
    path.write_text(
        " = Heading = \n" + "the cat sat on the mat . " * 40 + "\n\n" + "a dog ran . " * 30
    )
    splits = load_dataset(DataConfig(name=f"text:{path}", seq_len=12, vocab_size=60))
    assert splits.task == "mlm" and splits.train["x"].shape[1] == 12
    tokenizer = splits.info["tokenizer"]
    assert "Heading" not in tokenizer.decode(
        np.concatenate([splits.train["x"], splits.test["x"]]).ravel()
    )
    assert splits.num_outputs == tokenizer.vocab_size


def test_tfds_name_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = load_dataset(DataConfig(name="tfds:mnist", data_dir=str(tmp_path)))
    assert splits.train["x"].shape == (6, 28, 28, 1) and splits.test["y"].shape == (6,)
    assert splits.num_outputs == 10 and splits.task == "classification"
