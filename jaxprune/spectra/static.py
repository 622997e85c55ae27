"""What lets one compiled kernel serve many calls: hashable group ids and function pytrees.

Compiled functions are cached by their static arguments and the structure of their traced
ones.  Group ids are static structure (:mod:`jaxprune.group_ids`) but NumPy arrays are not
hashable, so :class:`FrozenGroupIds` hashes them by content.  Functions that close over arrays
(model state, gates) would bake those arrays into compiled code; passed as a
:class:`jax.tree_util.Partial` instead, their bound arrays become traced arguments
(:func:`as_partial`, :func:`unbind_partial`), and the function object, compared by identity,
is the only part of the cache key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

from jaxprune.typing import ApplyFn, PyTree

__all__ = ["FrozenGroupIds", "as_partial", "unbind_partial"]


class FrozenGroupIds:
    """A group-id pytree hashable by content: a static argument of compiled functions.

    Two instances are equal when their pytree structures and every leaf's shape, dtype and
    values are equal.

    Attributes:
      group_ids: the group-id pytree, its leaves as NumPy arrays.
      leaves: the same leaves as a flat tuple.
    """

    def __init__(self, group_ids: PyTree):
        leaves, treedef = jax.tree_util.tree_flatten(group_ids)
        self.leaves = tuple(np.asarray(leaf) for leaf in leaves)
        self.group_ids = jax.tree_util.tree_unflatten(treedef, self.leaves)
        self._key = (treedef, tuple((a.shape, a.dtype.str, a.tobytes()) for a in self.leaves))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrozenGroupIds) and self._key == other._key


def as_partial(fn: Callable) -> jax.tree_util.Partial:
    """``fn`` as a pytree: a :class:`jax.tree_util.Partial`'s bound arrays become traced
    arguments of compiled functions, its function (compared by identity) part of the cache key."""
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


@functools.lru_cache(maxsize=32)
def _calling_bound(func: Callable) -> ApplyFn:
    """``((params, (args, keywords)), x) -> func(*args, params, x, **keywords)``."""

    def call(packed: tuple[PyTree, tuple[tuple, dict]], x: jax.Array) -> jax.Array:
        params, (args, keywords) = packed
        return func(*args, params, x, **keywords)

    return call


def unbind_partial(
    apply_fn: jax.tree_util.Partial, params: PyTree, group_ids: PyTree
) -> tuple[ApplyFn, PyTree, PyTree]:
    """A :class:`jax.tree_util.Partial`'s bound arrays moved into the parameters, in no group.

    The bound arguments get group id ``-1``, so they enter no group kernel, and the returned
    function is one object per ``apply_fn.func``: one compiled kernel then serves every value
    of them.

    Args:
      apply_fn: ``Partial(func, *args, **keywords)`` with ``func(*args, params, x,
        **keywords) -> (n, ...)``.
      params: parameter pytree.
      group_ids: group-id pytree of ``params``.

    Returns:
      ``(unbound_fn, (params, bound), (group_ids, ungrouped))`` with
      ``unbound_fn((params, bound), x) == apply_fn(params, x)``.
    """
    bound = (tuple(apply_fn.args), dict(apply_fn.keywords))
    ungrouped = jax.tree_util.tree_map(lambda a: np.full((1,) * np.ndim(a), -1, np.int32), bound)
    return _calling_bound(apply_fn.func), (params, bound), (group_ids, ungrouped)
