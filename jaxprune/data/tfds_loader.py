"""Image-classification datasets from TensorFlow Datasets, read without TensorFlow.

``tfds.data_source`` reads prepared ArrayRecord files with ``array_record`` and needs no
TensorFlow; ``tfds.load`` / ``tfds.as_numpy`` do need it (``ModuleNotFoundError: No module
named 'tensorflow'`` here), so this loader uses ``data_source`` only.  The dataset must already
be prepared in ``data_dir`` in ArrayRecord format (nothing is downloaded).

References:
  TensorFlow Datasets, "Random access with tfds.data_source",
  https://www.tensorflow.org/datasets/api_docs/python/tfds/data_source
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxprune.data.builtin import Dataset

__all__ = ["TFDS_IMAGE_DATASETS", "load_tfds"]

#: Supported names and their (image feature, label feature).
TFDS_IMAGE_DATASETS = {
    "mnist": ("image", "label"),
    "fashion_mnist": ("image", "label"),
    "cifar10": ("image", "label"),
    "cifar100": ("image", "label"),
}


def load_tfds(name: str, split: str, *, data_dir: str | Path | None = None) -> Dataset:
    """Load a whole split of a TFDS image-classification dataset into memory.

    Args:
      name: one of ``TFDS_IMAGE_DATASETS`` (``cifar100`` gives its 100 fine labels).
      split: TFDS split string, e.g. ``"train"``, ``"test"``, ``"train[:10%]"``.
      data_dir: TFDS data directory (``None``: TFDS's default, ``~/tensorflow_datasets``).

    Returns:
      ``Dataset`` with ``x``: ``(n, H, W, C)`` float32 in ``[0, 1]``, ``y``: ``(n,)`` int32,
      ``num_outputs`` the number of classes, ``task="classification"``.
    """
    if name not in TFDS_IMAGE_DATASETS:
        raise ValueError(f"name must be one of {sorted(TFDS_IMAGE_DATASETS)}, got {name!r}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    import tensorflow_datasets as tfds

    source = tfds.data_source(
        name, split=split, data_dir=None if data_dir is None else str(data_dir)
    )
    image_key, label_key = TFDS_IMAGE_DATASETS[name]
    records = [source[i] for i in range(len(source))]
    x = np.stack([np.asarray(r[image_key]) for r in records]).astype(np.float32) / 255.0
    y = np.asarray([r[label_key] for r in records], dtype=np.int32)
    num_classes = source.dataset_info.features[label_key].num_classes
    return Dataset(x, y, int(num_classes), "classification")
