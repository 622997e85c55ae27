"""Built-in offline datasets: scikit-learn's handwritten digits and synthetic generators.

Nothing here touches the network: the digits (1,797 real 8×8 images, UCI) ship inside
scikit-learn, and the rest is generated from an explicit PRNG key.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_key, check_positive_int, check_real

__all__ = [
    "DATASETS",
    "Dataset",
    "gaussian_mixture",
    "load_builtin",
    "load_digits",
    "teacher_student",
]


class Dataset(NamedTuple):
    """A supervised dataset held in memory.

    Attributes:
      x: ``(n, ...)`` float32 inputs.
      y: ``(n,)`` int32 labels for classification, ``(n, k)`` float32 targets for regression.
      num_outputs: number of classes (classification) or target dimension (regression).
      task: ``"classification"`` or ``"regression"``.
    """

    x: np.ndarray
    y: np.ndarray
    num_outputs: int
    task: str


def load_digits(*, flatten: bool = True, image_size: int = 8, channels: int = 1) -> Dataset:
    """scikit-learn's handwritten digits: 1,797 images of 8×8 pixels, 10 classes.

    Pixels are scaled from [0, 16] to [0, 1].  ``flatten=False`` gives ``(n, S, S, C)`` images
    for convolutional models: ``image_size = S`` (a multiple of 8) upscales each pixel to an
    ``S/8 × S/8`` block (nearest neighbour), and ``channels = C`` repeats the gray channel, so
    ``image_size=32, channels=3`` has CIFAR's shape for VGG and ResNet.
    """
    if check_positive_int(image_size, "image_size") % 8:
        raise ValueError(f"image_size: expected a positive multiple of 8, got {image_size}")
    check_positive_int(channels, "channels")
    from sklearn.datasets import load_digits as sklearn_digits  # slow to import: only if needed

    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    factor = image_size // 8
    x = np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)
    x = np.repeat(x[..., None], channels, axis=-1)
    x = x.reshape(len(x), -1) if flatten else x
    return Dataset(x, bunch.target.astype(np.int32), 10, "classification")


def teacher_student(
    key: jax.Array,
    num_examples: int,
    *,
    input_dim: int = 16,
    teacher_width: int = 32,
    num_outputs: int = 1,
    noise: float = 0.0,
) -> Dataset:
    """Regression targets from a random two-layer tanh teacher ``y = V tanh(W x / √d) / √h``.

    Inputs are standard normal; ``noise`` adds Gaussian label noise of that standard deviation.

    Raises:
      TypeError / ValueError: ``key`` not a PRNG key, sizes that are not positive ints, or a
        negative or non-finite ``noise``.
    """
    check_key(key)
    for name, value in (
        ("num_examples", num_examples),
        ("input_dim", input_dim),
        ("teacher_width", teacher_width),
        ("num_outputs", num_outputs),
    ):
        check_positive_int(value, name)
    noise = check_real(noise, "noise", minimum=0.0)
    kx, kw, kv, kn = jax.random.split(key, 4)
    x = jax.random.normal(kx, (num_examples, input_dim))
    w = jax.random.normal(kw, (input_dim, teacher_width))
    v = jax.random.normal(kv, (teacher_width, num_outputs))
    y = jnp.tanh(x @ w / np.sqrt(input_dim)) @ v / np.sqrt(teacher_width)
    y = y + noise * jax.random.normal(kn, y.shape)
    return Dataset(np.asarray(x, np.float32), np.asarray(y, np.float32), num_outputs, "regression")


def gaussian_mixture(
    key: jax.Array,
    num_examples: int,
    *,
    input_dim: int = 16,
    num_classes: int = 4,
    separation: float = 3.0,
) -> Dataset:
    """Classes drawn uniformly, each a unit-variance Gaussian around a random mean.

    Class means are ``separation`` times a random unit vector, so ``separation`` sets how far
    apart the classes are relative to their spread.

    Raises:
      TypeError / ValueError: ``key`` not a PRNG key, sizes that are not positive ints, or a
        negative or non-finite ``separation``.
    """
    check_key(key)
    for name, value in (
        ("num_examples", num_examples),
        ("input_dim", input_dim),
        ("num_classes", num_classes),
    ):
        check_positive_int(value, name)
    separation = check_real(separation, "separation", minimum=0.0)
    km, ky, kx = jax.random.split(key, 3)
    means = jax.random.normal(km, (num_classes, input_dim))
    means = separation * means / jnp.linalg.norm(means, axis=1, keepdims=True)
    y = jax.random.randint(ky, (num_examples,), 0, num_classes)
    x = means[y] + jax.random.normal(kx, (num_examples, input_dim))
    return Dataset(
        np.asarray(x, np.float32), np.asarray(y, np.int32), num_classes, "classification"
    )


DATASETS = ("digits", "teacher_student", "gaussian_mixture")


def load_builtin(name: str, key: jax.Array, *, num_examples: int = 1024) -> Dataset:
    """Load a built-in dataset by name (one of :data:`DATASETS`)."""
    if name == "digits":
        return load_digits()
    if name == "teacher_student":
        return teacher_student(key, num_examples)
    if name == "gaussian_mixture":
        return gaussian_mixture(key, num_examples)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
