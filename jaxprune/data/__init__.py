"""Datasets without network access: built-in data, a docstring text corpus with a locally
trained tokenizer and BERT masking, deterministic resumable batching, and tensorflow-datasets
loading for prepared data."""

from jaxprune.data.batches import BatchPosition, epoch_batches, iterate_batches, prefetch
from jaxprune.data.builtin import (
    DATASETS,
    Dataset,
    gaussian_mixture,
    load_builtin,
    load_digits,
    teacher_student,
)
from jaxprune.data.linear import (
    LinearProblem,
    decaying_theta,
    scaled_linear_regression,
    scaling_diagonal,
)
from jaxprune.data.mlm import mask_tokens, num_to_mask
from jaxprune.data.registry import (
    DATASET_NAMES,
    INPUT_KINDS,
    DataConfig,
    Splits,
    dataset_inputs,
    load_dataset,
)
from jaxprune.data.text import docstring_corpus, read_text_files
from jaxprune.data.tfds_loader import TFDS_IMAGE_DATASETS, load_tfds
from jaxprune.data.tokenizer import Tokenizer, pack_sequences, train_tokenizer

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "INPUT_KINDS",
    "TFDS_IMAGE_DATASETS",
    "BatchPosition",
    "DataConfig",
    "Dataset",
    "LinearProblem",
    "Splits",
    "Tokenizer",
    "dataset_inputs",
    "decaying_theta",
    "docstring_corpus",
    "epoch_batches",
    "gaussian_mixture",
    "iterate_batches",
    "load_builtin",
    "load_dataset",
    "load_digits",
    "load_tfds",
    "mask_tokens",
    "num_to_mask",
    "pack_sequences",
    "prefetch",
    "read_text_files",
    "scaled_linear_regression",
    "scaling_diagonal",
    "teacher_student",
    "train_tokenizer",
]
