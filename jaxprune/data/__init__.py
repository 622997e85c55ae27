"""Datasets: built-in offline data (no network)."""

from jaxprune.data.builtin import (
    DATASETS,
    Dataset,
    gaussian_mixture,
    load_builtin,
    load_digits,
    teacher_student,
)

__all__ = [
    "DATASETS",
    "Dataset",
    "gaussian_mixture",
    "load_builtin",
    "load_digits",
    "teacher_student",
]
