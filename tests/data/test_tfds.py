"""Tests of the TFDS loader against ``tfds.testing.mock_data`` (no TensorFlow, no download).

Without TensorFlow, ``mock_data``'s default policy mocks ``tfds.data_source`` with random
examples generated from the dataset's feature spec; ``tfds.load`` fails with
``ModuleNotFoundError: No module named 'tensorflow'``, which is why the loader avoids it.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxprune.data.tfds_loader import load_tfds

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)],
)
def test_load_tfds_with_mock_data(name, shape, classes, tmp_path) -> None:
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_tfds(name, "train", data_dir=tmp_path)
    assert data.x.shape == (8, *shape) and data.x.dtype == np.float32
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert data.y.shape == (8,) and data.y.dtype == np.int32
    assert ((0 <= data.y) & (data.y < classes)).all()
    assert (data.num_outputs, data.task) == (classes, "classification")


def test_load_tfds_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="imagenet"):
        load_tfds("imagenet", "train")
