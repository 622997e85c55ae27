"""Compaction: physically remove pruned neurons and filters so the network gets smaller.

A structured mask only zeroes weights; compaction slices them out.  For a chain
``layer → (BatchNorm) → activation → next layer``, removing output unit ``o`` of ``layer`` takes
its kernel slice ``[..., o]`` and bias ``[o]``, the BatchNorm scale/bias/mean/var ``[o]``, and
the next layer's input slice (kernel axis ``-2``: rows of a Dense ``(in, out)`` kernel, input
channels of a Conv ``(..., in, out)`` kernel).  The compacted network computes exactly what the
masked one does when the masked unit's output is 0 after its activation — which holds when the
group zeroes the kernel slice and bias (and the BatchNorm scale and bias) and the activation
maps 0 to 0 (ReLU, tanh, GELU; not sigmoid).

References:
  Li et al. (2017), "Pruning filters for efficient ConvNets" (removing filters and the next
  layer's matching kernels); Chen et al. (2023), Table 6 (wall-clock time of compacted models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxprune._validation import check_int, check_positive_int, is_traced
from jaxprune.typing import PyTree

__all__ = ["Link", "compact", "keep_along", "take"]


class Link(NamedTuple):
    """One prunable layer of a chain and what its output units feed.

    Attributes:
      layer: path of the layer whose output units are removed, e.g. ``"params/Dense_0"``
        (dict keys joined by ``/``), holding ``kernel`` (output axis last) and optional ``bias``.
      next_layer: path of the layer consuming those units (its kernel axis ``-2``), or ``None``.
      batchnorm: path (without the collection) of a BatchNorm after the layer, e.g.
        ``"BatchNorm_0"``: its ``params`` scale/bias and ``batch_stats`` mean/var follow.
      positions: how many consecutive input rows of ``next_layer`` each unit occupies when
        the units are flattened position-major into it (``H * W`` for a conv feature map
        flattened into a Dense layer, channel fastest); 1 when the next layer sees channels.
    """

    layer: str
    next_layer: str | None = None
    batchnorm: str | None = None
    positions: int = 1


def take(tree: Mapping, path: str, index: np.ndarray, axis: int) -> dict:
    """A copy of nested dict ``tree`` with the leaf at ``path`` sliced by ``index`` on ``axis``."""
    keys = path.split("/")
    out = dict(tree)
    node = out
    for key in keys[:-1]:
        if key not in node:
            raise ValueError(f"path {path!r}: no entry {key!r}")
        node[key] = dict(node[key])
        node = node[key]
    if keys[-1] not in node:
        raise ValueError(f"path {path!r}: no entry {keys[-1]!r}")
    leaf = node[keys[-1]]
    node[keys[-1]] = jax.numpy.take(leaf, index, axis=axis)
    return out


def _keep_mask(keep: Any, name: str) -> np.ndarray:
    """``keep`` as a boolean NumPy array: booleans, or numbers that are all 0 or 1 (a float
    0/1 mask); any other value (e.g. the soft gate 0.5, which ``astype(bool)`` would keep) is an
    error, as are traced values (compaction changes shapes: it runs on concrete masks)."""
    if is_traced(keep):
        raise TypeError(f"{name}: expected a concrete boolean mask, got a traced value")
    values = np.asarray(keep)
    if values.dtype == bool:
        return values
    if values.dtype.kind not in "biuf" or not np.all((values == 0) | (values == 1)):
        shown = np.unique(values)[:4] if values.dtype.kind in "biuf" else values.dtype
        raise ValueError(f"{name}: expected a boolean (or 0/1) mask, got values {shown}")
    return values.astype(bool)


def _get(tree: Mapping, path: str) -> Any:
    node: Any = tree
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"path {path!r} not found in the variables")
        node = node[key]
    return node


def keep_along(
    variables: PyTree, targets: list[tuple[str, int]], keep: Any, *, repeats: int = 1
) -> PyTree:
    """Keep the same units along one axis of several leaves: the compaction hook.

    Heads and experts are compacted with it: a head is an index of the heads axis of the
    query/key/value kernels and biases and of the output kernel; an expert is an index of the
    expert axis of every expert leaf and of the router's output axis.

    Args:
      variables: nested dicts of arrays.
      targets: ``(leaf path, axis)`` pairs, e.g. ``("params/attn/query/kernel", 1)``.
      keep: boolean ``(units,)`` mask (True = keep); every target axis must have length
        ``units * repeats``.
      repeats: the units repeat this many times along the axes, unit fastest (positions of a
        flattened feature map); 1 otherwise.

    Returns:
      The variables with the kept units only.
    """
    mask = _keep_mask(keep, "keep")
    if mask.ndim != 1 or not mask.any():
        raise ValueError(
            f"keep must be a non-empty 1-D boolean mask keeping >= 1 unit, got {keep!r}"
        )
    repeats = check_positive_int(repeats, "repeats")
    index = np.flatnonzero(mask)
    rows = (np.arange(repeats)[:, None] * mask.size + index[None, :]).reshape(-1)
    out = variables
    for path, axis in targets:
        leaf = _get(variables, path)
        axis = check_int(axis, f"axis of {path}")
        if not -leaf.ndim <= axis < leaf.ndim:
            raise ValueError(
                f"{path}: axis {axis} is out of range for a leaf of shape {tuple(leaf.shape)}"
            )
        if leaf.shape[axis] != mask.size * repeats:
            raise ValueError(
                f"{path}: axis {axis} has length {leaf.shape[axis]}, expected {mask.size} units"
                + (f" x {repeats} positions" if repeats > 1 else "")
            )
        out = take(out, path, rows, axis % leaf.ndim)
    return out


def compact(variables: PyTree, links: list[Link], keep: Mapping[str, Any]) -> PyTree:
    """Remove the output units not kept from each linked layer.

    Args:
      variables: Flax variables, e.g. ``{"params": ..., "batch_stats": ...}`` (nested dicts).
      links: the chain's prunable layers (see :class:`Link`).
      keep: for each link's ``layer`` path, a boolean ``(units,)`` array: True = keep.  Layers
        not named are left whole.  At least one unit per layer must be kept.

    Returns:
      Variables with smaller kernels, biases, BatchNorm entries and next-layer inputs.  Build
      the model with the new widths (``units kept`` per layer) to apply them.

    Raises:
      TypeError: ``links`` not a sequence of :class:`Link`, ``keep`` not a mapping, or a
        ``positions`` that is not a positive int.
      ValueError: a path that does not exist, a keep mask of the wrong length, keeping
        nothing or with values other than 0/1, a next layer whose input size does not match
        ``units * positions``.
    """
    if isinstance(links, str) or not isinstance(links, list | tuple):
        raise TypeError(f"links: expected a list of Link, got {type(links).__name__}")
    for i, link in enumerate(links):
        if not isinstance(link, Link):
            raise TypeError(f"links[{i}]: expected a Link, got {link!r}")
        check_positive_int(link.positions, f"links[{i}].positions")
    if not isinstance(keep, Mapping):
        raise TypeError(
            f"keep: expected a mapping of layer path to boolean mask, got {type(keep).__name__}"
        )
    unknown = sorted(set(keep) - {link.layer for link in links})
    if unknown:
        raise ValueError(f"keep names layers that are not in links: {unknown}")
    out = variables
    for link in links:
        if link.layer not in keep:
            continue
        kernel = _get(variables, f"{link.layer}/kernel")
        units = kernel.shape[-1]
        mask = _keep_mask(keep[link.layer], f"keep[{link.layer!r}]")
        if mask.shape != (units,):
            raise ValueError(
                f"keep[{link.layer!r}] must be a boolean array of shape ({units},), got {mask.shape}"
            )
        if not mask.any():
            raise ValueError(f"keep[{link.layer!r}] keeps no unit; at least one must remain")
        targets = [(f"{link.layer}/kernel", -1)]
        if "bias" in _get(variables, link.layer):
            targets.append((f"{link.layer}/bias", 0))
        if link.batchnorm is not None:
            _get(variables, f"params/{link.batchnorm}")  # raises if the BatchNorm is missing
            for collection, names in (
                ("params", ("scale", "bias")),
                ("batch_stats", ("mean", "var")),
            ):
                if collection not in variables:
                    continue
                stats = _get(variables, f"{collection}/{link.batchnorm}")
                targets += [
                    (f"{collection}/{link.batchnorm}/{name}", 0) for name in names if name in stats
                ]
        out = keep_along(out, targets, mask)
        if link.next_layer is not None:
            out = keep_along(out, [(f"{link.next_layer}/kernel", -2)], mask, repeats=link.positions)
    return out
