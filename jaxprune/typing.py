"""Type aliases shared by jaxprune's modules (one place, as in ``jax.typing``).

``PyTree`` is any nested structure of arrays (a Flax ``params`` or ``variables`` dict, an optax
state); ``ApplyFn`` and ``LossFn`` are the interchange signatures of the design: the model as a
pure function ``apply_fn(params, x) -> outputs`` and an analysis loss ``loss_fn(params) ->
scalar`` (training code uses ``BatchLossFn``, ``loss_fn(params, batch) -> scalar``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

__all__ = ["ApplyFn", "Array", "BatchLossFn", "LossFn", "PyTree"]

PyTree = Any
Array = jax.Array
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
LossFn = Callable[[PyTree], jax.Array]
BatchLossFn = Callable[[PyTree, Any], jax.Array]
