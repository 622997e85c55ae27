"""Datasets by name, split into train and test, as dictionaries of host arrays.

Every name resolves offline except ``tfds:NAME`` (prepared TFDS data) and ``text:PATH``
(local files).  Classification and regression splits hold ``{"x", "y"}``; masked-language-model
splits hold ``{"x"}``, ``(N, seq_len)`` packed token rows that the training task corrupts on
the fly (:func:`jaxprune.data.mask_tokens`), so every epoch sees fresh masks.

Names (``DATASET_NAMES``):
  ``digits`` (8×8 digits flattened to 64 features), ``digits_image`` (8×8×1 images), ``digits32``
  (32×32×3: upscaled digits shaped like CIFAR, for VGG and ResNet), ``gaussian_mixture``,
  ``teacher_student`` (regression), ``linear`` (the scaled over-parameterized least squares of Li et
  al. (2020), regression), ``docstrings`` (MLM on the standard library's docstrings with a locally
  trained tokenizer), ``tfds:cifar10`` and the other :data:`~jaxprune.data.TFDS_IMAGE_DATASETS`, and
  ``text:PATH[,PATH...]`` (MLM on local UTF-8 files such as WikiText's ``wiki.train.tokens``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxprune._validation import check_int, check_positive_int, check_ratio, check_real
from jaxprune.data.builtin import Dataset, gaussian_mixture, load_digits, teacher_student
from jaxprune.data.linear import scaled_linear_regression
from jaxprune.data.text import docstring_corpus, leading_documents, read_text_files
from jaxprune.data.tfds_loader import TFDS_IMAGE_DATASETS, load_tfds
from jaxprune.data.tokenizer import MASK_ID, SPECIAL_TOKENS, pack_sequences, train_tokenizer

__all__ = ["DATASET_NAMES", "INPUT_KINDS", "DataConfig", "Splits", "dataset_inputs", "load_dataset"]

DATASET_NAMES = (
    "digits",
    "digits_image",
    "digits32",
    "gaussian_mixture",
    "teacher_student",
    "linear",
    "docstrings",
    *(f"tfds:{name}" for name in TFDS_IMAGE_DATASETS),
    "text:PATH",
)

TASKS = ("classification", "regression", "mlm")

#: What one example of a dataset is: a flat feature vector, an ``(H, W, C)`` image, or a row of
#: token ids (MLM).
INPUT_KINDS = ("features", "images", "tokens")

#: The input kind of each fixed name and of each ``PREFIX:`` family.
_INPUTS = {
    "digits": "features",
    "digits_image": "images",
    "digits32": "images",
    "gaussian_mixture": "features",
    "teacher_student": "features",
    "linear": "features",
    "docstrings": "tokens",
    "tfds:": "images",
    "text:": "tokens",
}


class Splits(NamedTuple):
    """A dataset split for training.

    Attributes:
      train, test: dictionaries of host arrays with a common leading axis (examples).
      task: ``"classification"``, ``"regression"`` or ``"mlm"``.
      num_outputs: classes, regression targets, or the vocabulary size (MLM).
      info: extra facts (e.g. ``mask_id`` and ``special_ids`` for MLM; ``theta`` for
        ``linear``).
    """

    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    task: str
    num_outputs: int
    info: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How a named dataset is built.

    Attributes:
      name: one of :data:`DATASET_NAMES` (``text:PATH`` with real paths).
      seed: seed of the train/test split and of generated data.
      test_fraction: share of examples held out (datasets without their own test split).
      num_examples: size of generated datasets (``gaussian_mixture``, ``teacher_student``,
        ``linear``).
      dim: feature dimension of ``linear``.
      scale: ``λ`` of ``linear`` (Li et al. (2020), eq. 3.5).
      seq_len: token row length for MLM.
      vocab_size: largest tokenizer vocabulary for MLM.
      max_chars: characters of text used for MLM (``None``: all).
      data_dir: TFDS data directory.
    """

    name: str = "digits"
    seed: int = 0
    test_fraction: float = 0.2
    num_examples: int = 2048
    dim: int = 256
    scale: float = 1.0
    seq_len: int = 64
    vocab_size: int = 2000
    max_chars: int | None = 400_000
    data_dir: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        check_int(self.seed, "seed", minimum=0)
        check_ratio(self.test_fraction, "test_fraction")
        check_real(self.scale, "scale", minimum=0.0, strict=True)
        if self.data_dir is not None and not isinstance(self.data_dir, str | os.PathLike):
            raise TypeError(
                f"data_dir: expected a directory path or None, got {self.data_dir!r} "
                f"({type(self.data_dir).__name__})"
            )
        for field in ("num_examples", "dim", "seq_len", "vocab_size"):
            check_int(getattr(self, field), field, minimum=2)
        if self.max_chars is not None:
            check_positive_int(self.max_chars, "max_chars")


def _check_name(name: Any) -> None:
    """Raise a ``ValueError`` listing :data:`DATASET_NAMES` unless ``name`` is one of them
    (``text:`` followed by paths)."""
    known = isinstance(name, str) and (
        len(name) > len("text:") if name.startswith("text:") else name in DATASET_NAMES
    )
    if not known:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")


def dataset_inputs(name: str) -> str:
    """The :data:`INPUT_KINDS` entry of dataset ``name`` (also ``"text:PATH"``), known without
    loading it.

    Raises:
      ValueError: an unknown name (the message lists the valid ones).
    """
    _check_name(name)
    prefix, colon, _ = name.partition(":")
    return _INPUTS[prefix + colon]


def _split(arrays: dict[str, np.ndarray], fraction: float, seed: int) -> tuple[dict, dict]:
    n = len(next(iter(arrays.values())))
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 7919])))
    permutation = order.permutation(n)
    num_test = max(1, round(fraction * n))
    test, train = permutation[:num_test], permutation[num_test:]
    return {k: v[train] for k, v in arrays.items()}, {k: v[test] for k, v in arrays.items()}


def _supervised(dataset: Dataset, config: DataConfig, **info: Any) -> Splits:
    train, test = _split({"x": dataset.x, "y": dataset.y}, config.test_fraction, config.seed)
    return Splits(train, test, dataset.task, dataset.num_outputs, info)


def _mlm(documents: list[str], config: DataConfig) -> Splits:
    tokenizer = train_tokenizer(documents, config.vocab_size)
    rows = pack_sequences([tokenizer.encode(d) for d in documents], config.seq_len)
    train, test = _split({"x": rows}, config.test_fraction, config.seed)
    info = {
        "mask_id": MASK_ID,
        "special_ids": tuple(range(len(SPECIAL_TOKENS))),
        "tokenizer": tokenizer,
    }
    return Splits(train, test, "mlm", tokenizer.vocab_size, info)


def load_dataset(config: DataConfig | str) -> Splits:
    """Build the train and test splits of a named dataset.

    Args:
      config: a :class:`DataConfig`, or just a name (default settings).

    Returns:
      :class:`Splits`.

    Raises:
      ValueError: unknown name (the message lists the valid ones) or bad settings.
      TypeError: ``config`` neither a :class:`DataConfig` nor a str.
    """
    if isinstance(config, str):
        config = DataConfig(name=config)
    if not isinstance(config, DataConfig):
        raise TypeError(
            f"config: expected a DataConfig or a dataset name, got {config!r} "
            f"({type(config).__name__})"
        )
    name, key = config.name, jax.random.key(config.seed)
    if name == "digits":
        return _supervised(load_digits(), config)
    if name == "digits_image":
        return _supervised(load_digits(flatten=False), config)
    if name == "digits32":
        return _supervised(load_digits(flatten=False, image_size=32, channels=3), config)
    if name == "gaussian_mixture":
        return _supervised(gaussian_mixture(key, config.num_examples), config)
    if name == "teacher_student":
        return _supervised(teacher_student(key, config.num_examples), config)
    if name == "linear":
        problem = scaled_linear_regression(key, config.num_examples, config.dim, scale=config.scale)
        data = Dataset(problem.x, problem.y[:, None], 1, "regression")
        return _supervised(data, config, theta=problem.theta, scales=problem.scales)
    if name == "docstrings":
        return _mlm(docstring_corpus(max_chars=config.max_chars), config)
    if name.startswith("text:"):
        documents = read_text_files(name[len("text:") :].split(","))
        documents = leading_documents(documents, config.max_chars)
        return _mlm(documents, config)
    tfds_name = name[len("tfds:") :]
    train = load_tfds(tfds_name, "train", data_dir=config.data_dir)
    test = load_tfds(tfds_name, "test", data_dir=config.data_dir)
    return Splits(
        {"x": train.x, "y": train.y},
        {"x": test.x, "y": test.y},
        "classification",
        train.num_outputs,
        {},
    )
