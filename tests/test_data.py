"""Built-in offline datasets."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxprune.data import gaussian_mixture, load_builtin, load_digits, teacher_student


def test_digits_are_the_real_sklearn_images():
    data = load_digits()
    assert data.x.shape == (1797, 64) and data.y.shape == (1797,)
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert set(np.unique(data.y)) == set(range(10))
    assert load_digits(flatten=False).x.shape == (1797, 8, 8, 1)


def test_generators_are_deterministic_by_key():
    a = teacher_student(jax.random.PRNGKey(0), 50, num_outputs=2)
    b = teacher_student(jax.random.PRNGKey(0), 50, num_outputs=2)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.y.shape == (50, 2) and a.task == "regression"
    c = teacher_student(jax.random.PRNGKey(1), 50, num_outputs=2)
    assert not np.allclose(a.x, c.x)


def test_gaussian_mixture_is_separable_at_large_separation():
    data = gaussian_mixture(jax.random.PRNGKey(0), 400, input_dim=8, num_classes=3, separation=20.0)
    means = np.stack([data.x[data.y == c].mean(0) for c in range(3)])
    nearest = np.argmin(((data.x[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == data.y) > 0.99


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="digits, teacher_student, gaussian_mixture"):
        load_builtin("cifar", jax.random.PRNGKey(0))
