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
  layer's matching kernels); paper 000, Table 6 (wall-clock time of compacted models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Link", "compact", "take"]

PyTree = Any


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


def _get(tree: Mapping, path: str) -> Any:
    node: Any = tree
    for key in path.split("/"):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"path {path!r} not found in the variables")
        node = node[key]
    return node


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
      ValueError: a path that does not exist, a keep mask of the wrong length or keeping
        nothing, a next layer whose input size does not match ``units * positions``.
    """
    unknown = sorted(set(keep) - {link.layer for link in links})
    if unknown:
        raise ValueError(f"keep names layers that are not in links: {unknown}")
    out = variables
    for link in links:
        if link.layer not in keep:
            continue
        kernel = _get(variables, f"{link.layer}/kernel")
        units = kernel.shape[-1]
        mask = np.asarray(keep[link.layer], bool)
        if mask.shape != (units,):
            raise ValueError(
                f"keep[{link.layer!r}] must be a boolean array of shape ({units},), got {mask.shape}"
            )
        if not mask.any():
            raise ValueError(f"keep[{link.layer!r}] keeps no unit; at least one must remain")
        index = np.flatnonzero(mask)
        out = take(out, f"{link.layer}/kernel", index, -1)
        if "bias" in _get(variables, link.layer):
            out = take(out, f"{link.layer}/bias", index, 0)
        if link.batchnorm is not None:
            for collection, names in (
                ("params", ("scale", "bias")),
                ("batch_stats", ("mean", "var")),
            ):
                if collection in variables and link.batchnorm in variables[collection]:
                    for name in names:
                        if name in variables[collection][link.batchnorm]:
                            out = take(out, f"{collection}/{link.batchnorm}/{name}", index, 0)
        if link.next_layer is not None:
            next_kernel = _get(variables, f"{link.next_layer}/kernel")
            if next_kernel.shape[-2] != units * link.positions:
                raise ValueError(
                    f"{link.next_layer}: kernel input size {next_kernel.shape[-2]} does not match "
                    f"{units} units x {link.positions} positions of {link.layer}"
                )
            rows = (np.arange(link.positions)[:, None] * units + index[None, :]).reshape(-1)
            out = take(out, f"{link.next_layer}/kernel", rows, next_kernel.ndim - 2)
    return out
