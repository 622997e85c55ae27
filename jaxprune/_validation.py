"""Argument checks shared by every public function of jaxprune.

One convention everywhere: each helper takes ``(value, name)``, returns the value converted to
its canonical type, and raises ``TypeError`` when the value has the wrong type and
``ValueError`` when it has the right type but an invalid value. Every message reads
``"<name>: expected <what>, got <value>"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_batch",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_finite_tree",
    "check_int",
    "check_iterable",
    "check_key",
    "check_optimizer",
    "check_positive_int",
    "check_ratio",
    "check_real",
    "check_symmetric",
    "is_traced",
]


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (bools refused), at least ``minimum`` when given."""
    expected = {None: "an int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int >= 1``."""
    return check_int(value, name, minimum=1)


def check_real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict: bool = False,
) -> float:
    """``value`` as a finite ``float`` in ``[minimum, maximum]`` (open ends when ``strict``).

    Ints and NumPy/JAX scalars are accepted; bools, NaN and infinities are refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        if not (isinstance(value, np.ndarray | jax.Array) and np.ndim(value) == 0):
            raise TypeError(
                f"{name}: expected a real number, got {value!r} ({type(value).__name__})"
            )
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {number}")
    low_bad = minimum is not None and (number <= minimum if strict else number < minimum)
    high_bad = maximum is not None and (number >= maximum if strict else number > maximum)
    if low_bad or high_bad:
        left, right = ("(", ")") if strict else ("[", "]")
        low = "-inf" if minimum is None else f"{minimum:g}"
        high = "inf" if maximum is None else f"{maximum:g}"
        raise ValueError(f"{name}: expected a number in {left}{low}, {high}{right}, got {number:g}")
    return number


def check_ratio(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """A pruned fraction: a float in ``(0, 1)``, or ``[0, 1)`` with ``allow_zero``."""
    number = check_real(value, name)
    if not (0.0 <= number < 1.0 if allow_zero else 0.0 < number < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name}: expected a fraction in {interval}, got {number:g}")
    return number


def check_choice(value: Any, choices: Iterable[str], name: str) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(
            f"{name}: expected one of {choices}, got {value!r} ({type(value).__name__})"
        )
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a ``bool`` (NumPy bools too), else ``TypeError``."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}: expected a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_callable(value: Any, name: str) -> Any:
    """``value`` if it is callable, else ``TypeError``."""
    if not callable(value):
        raise TypeError(f"{name}: expected a callable, got {value!r} ({type(value).__name__})")
    return value


def check_iterable(value: Any, name: str, what: str = "an iterable") -> Any:
    """``value`` if it is iterable (and not a ``str``, a common slip for one item), else
    ``TypeError``."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected {what}, got {value!r} ({type(value).__name__})")
    return value


def check_key(value: Any, name: str = "key") -> Any:
    """``value`` if it is a PRNG key, else ``TypeError``: a typed key array
    (``jax.random.key``) or a raw ``uint32`` key array (``jax.random.PRNGKey``).  Only the
    dtype and rank are read, so traced keys are checked too."""
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", ())
    if dtype is not None:
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return value
        if dtype == np.uint32 and len(shape) >= 1:
            return value
        got = f"an array of dtype {dtype} and shape {tuple(shape)}"
    else:
        got = f"{value!r} ({type(value).__name__})"
    raise TypeError(f"{name}: expected a PRNG key (jax.random.key(seed)), got {got}")


def check_optimizer(value: Any, name: str = "optimizer") -> Any:
    """``value`` if it has the ``init`` and ``update`` of an optax ``GradientTransformation``,
    else ``TypeError``."""
    if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
        raise TypeError(
            f"{name}: expected an optax GradientTransformation (e.g. optax.adam(1e-3)), got "
            f"{value!r} ({type(value).__name__})"
        )
    return value


def is_traced(value: Any) -> bool:
    """Whether ``value`` is a tracer (inside ``jit``/``vmap``/``grad``): its values are unknown."""
    return isinstance(value, jax.core.Tracer)


def check_finite_tree(tree: Any, name: str = "params") -> None:
    """Raise ``ValueError`` naming the first leaf of ``tree`` holding NaN or inf.

    Traced leaves (inside ``jit``) are not inspected: the check runs on concrete values only.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if is_traced(leaf):
            return
        values = np.asarray(leaf)
        if jnp.issubdtype(values.dtype, jnp.inexact) and not np.all(np.isfinite(values)):
            bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: {bad} non-finite value(s) (NaN or inf); "
                "expected finite values"
            )


def check_tree_like(tree: Any, reference: Any, name: str, reference_name: str) -> None:
    """Raise ``ValueError`` unless ``tree`` has the pytree structure and leaf shapes of
    ``reference`` (static facts: checked traced or not), naming the first leaf that differs."""
    expected, got = jax.tree_util.tree_structure(reference), jax.tree_util.tree_structure(tree)
    if expected != got:
        raise ValueError(
            f"{name}: expected the pytree structure of {reference_name}, {expected}, got {got}"
        )
    for (path, leaf), other in zip(
        jax.tree_util.tree_flatten_with_path(reference)[0], jax.tree_util.tree_leaves(tree)
    ):
        if np.shape(leaf) != np.shape(other):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: expected shape {np.shape(leaf)} (as in "
                f"{reference_name}), got {np.shape(other)}"
            )


def check_batch(x: Any, name: str) -> None:
    """Raise unless ``x`` is an array with a leading batch axis of length >= 1."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(
            f"{name}: expected an array with a leading batch axis, got {type(x).__name__}"
        )
    if len(shape) < 1 or shape[0] < 1:
        raise ValueError(
            f"{name}: expected a leading batch axis of length >= 1, got shape {tuple(shape)}"
        )


def check_second_batch(x2: Any, x: Any, name: str = "x2", reference: str = "x") -> None:
    """Raise unless ``x2`` is a batch (:func:`check_batch`) whose examples have the shape of
    ``x``'s (for kernels between two batches); ``x2=None`` passes."""
    if x2 is None:
        return
    check_batch(x2, name)
    if tuple(x2.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(
            f"{name}: expected examples of shape {tuple(x.shape[1:])} (as {reference}), got "
            f"{tuple(x2.shape[1:])}"
        )


def check_symmetric(matrices: Any, name: str, *, rtol: float) -> None:
    """Raise ``ValueError`` unless each of the ``(..., n, n)`` ``matrices`` is symmetric to ``rtol``.

    A matrix ``A`` passes when ``max|A - Aᵀ| <= rtol * max|A|`` (entrywise maxima, per matrix of
    a stack): relative to its own scale, so a stack of kernels of very different sizes is judged
    matrix by matrix.  Values must be finite (check them first).  Traced values (inside ``jit``)
    are not inspected: the check runs on concrete values only.
    """
    if is_traced(matrices):
        return
    values = np.asarray(matrices)
    if not jnp.issubdtype(values.dtype, jnp.inexact) or values.dtype.itemsize < 4:
        values = values.astype(np.float64)  # integers, bools, float16, bfloat16
    asymmetry = np.abs(values - np.swapaxes(values, -1, -2)).max(axis=(-2, -1), initial=0.0)
    scale = np.abs(values).max(axis=(-2, -1), initial=0.0)
    bad = np.flatnonzero(asymmetry > rtol * scale)
    if bad.size:
        index = np.unravel_index(bad[0], asymmetry.shape)
        where = f" in matrix [{', '.join(str(int(i)) for i in index)}]" if index else ""
        raise ValueError(
            f"{name}: expected a symmetric matrix (max|A - Aᵀ| <= {rtol:g} max|A|), got "
            f"max|A - Aᵀ| = {asymmetry[index]:.3g} with max|A| = {scale[index]:.3g}{where}"
        )
