"""Image-classification datasets from TensorFlow Datasets, read without TensorFlow.

``tfds.data_source`` reads prepared ArrayRecord files with ``array_record`` and needs no
TensorFlow; ``tfds.load`` / ``tfds.as_numpy`` do need it (``ModuleNotFoundError: No module
named 'tensorflow'`` here), so this loader uses ``data_source`` only.  The dataset must already
be prepared in ``data_dir`` in ArrayRecord format: nothing is downloaded (``download=False``),
and an unprepared dataset is a ``ValueError`` that says how to prepare it.

References:
  TensorFlow Datasets, "Random access with tfds.data_source",
  https://www.tensorflow.org/datasets/api_docs/python/tfds/data_source
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
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

    Raises:
      ValueError: an unknown name, or a dataset not prepared in ArrayRecord format in
        ``data_dir`` (the message says how to prepare it).
    """
    if name not in TFDS_IMAGE_DATASETS:
        raise ValueError(f"name must be one of {sorted(TFDS_IMAGE_DATASETS)}, got {name!r}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    import tensorflow_datasets as tfds

    directory = None if data_dir is None else str(data_dir)
    try:
        with _held_records("absl"):  # TFDS's warnings about the missing files
            source = tfds.data_source(name, split=split, data_dir=directory, download=False)
    except (NotImplementedError, FileNotFoundError) as error:  # absent, or not ArrayRecord
        where = tfds.core.constants.DATA_DIR if directory is None else directory
        raise ValueError(_not_prepared(name, where)) from error
    image_key, label_key = TFDS_IMAGE_DATASETS[name]
    records = [source[i] for i in range(len(source))]
    x = np.stack([np.asarray(r[image_key]) for r in records]).astype(np.float32) / 255.0
    y = np.asarray([r[label_key] for r in records], dtype=np.int32)
    num_classes = source.dataset_info.features[label_key].num_classes
    return Dataset(x, y, int(num_classes), "classification")


@contextlib.contextmanager
def _held_records(name: str) -> Iterator[None]:
    """Hold the records logged to logger ``name`` in the block, and pass them on only if the
    block completes (when it raises, its error says what they would have)."""
    logger = logging.getLogger(name)
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        held.append(record)
        return False

    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


def _not_prepared(name: str, data_dir: str) -> str:
    """The error of a dataset not prepared in ArrayRecord format in ``data_dir``."""
    return (
        f"data_dir: expected {name!r} prepared in ArrayRecord format, got {data_dir!r}, which "
        f"holds no such copy (nothing is downloaded); on a machine with network run "
        f"`tfds build {name} --file_format=array_record --data_dir DIR` (it needs TensorFlow: "
        f"pip install 'jaxprune[tf]'), copy DIR here and pass it as --data-dir DIR (data_dir) "
        f"or in TFDS_DATA_DIR"
    )
