"""Argument checks shared by the public functions of :mod:`jaxprune.spectra`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def check_finite_params(params: Any, name: str = "params") -> None:
    """Raise ``ValueError`` naming the first leaf holding NaN or inf (concrete params only)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.core.Tracer):
            return
        values = np.asarray(leaf)
        if np.issubdtype(values.dtype, np.inexact) and not np.all(np.isfinite(values)):
            bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: {bad} non-finite value(s) (NaN or inf); "
                "expected finite parameters"
            )


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, or raise naming ``name`` if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_batch(x: Any, name: str) -> None:
    """Raise unless ``x`` is an array with a leading batch axis of length >= 1."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(
            f"{name} must be an array with a leading batch axis, got {type(x).__name__}"
        )
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(f"{name} must have a leading batch axis of length >= 1, got shape {shape}")
