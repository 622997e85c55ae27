"""Build group ids and a layout from a Flax parameter tree, by path pattern and axis.

A *spec* names which weights form the structured groups of some layers: the output units of
Dense layers (:func:`neurons`), the output channels of convolutions (:func:`filters`), attention
heads (:func:`heads`), mixture-of-experts experts (:func:`experts`) or single weights
(:func:`unstructured`).  :func:`build_group_ids` turns a sequence of specs into the group-id
pytree of :mod:`jaxprune.group_ids` and the :class:`~jaxprune.masks.layout.GroupLayout` of its
groups, with one numbering over all specs.

Paths and patterns:
  A leaf ``params["params"]["Dense_0"]["kernel"]`` has the *layer path* ``"params/Dense_0"``:
  the keys (dict keys, sequence indices, attribute names) above the leaf joined by ``"/"``, the
  leaf's own name excluded.  A Flax NNX ``nnx.State`` has the same paths: its leaf
  ``state["l1"]["kernel"]`` (the array inside the ``nnx.Param``) is the kernel of layer
  ``"l1"``, and ``nnx.Sequential``'s layers are ``"layers/0"``, ``"layers/1"``, ...
  *Module paths* are the layer paths and all their prefixes
  (``"params"``, ``"params/Block_0"``, ...; the root is ``""``).  Every pattern is a regular
  expression matched with :func:`re.search`, so ``"Dense_1"`` also matches
  ``"params/Dense_10"``: anchor it (``"Dense_1$"``) to name one layer.

  * :func:`neurons`, :func:`filters`, :func:`unstructured` and the ``next_layer`` /
    ``batchnorm`` arguments match layer paths.
  * :func:`heads` and :func:`experts` match module paths and take the *outermost* matches (a
    matched path inside another matched path is part of that module).

A weight belongs to at most one group, so two specs may not claim the same leaf (for instance a
layer that is the ``next_layer`` of one spec and is grouped by another).

References:
  Chen et al. (2023), Section 3.2.1: groups ``w_[1], ..., w_[p]`` and the product ``m * w``.
  Li et al. (2017), "Pruning filters for efficient ConvNets" (filters and their next layer).
  Michel et al. (2019), "Are sixteen heads really better than one?" (attention heads).
  Fedus et al. (2022), "Switch Transformers" (experts with a leading expert axis).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxprune._validation import check_int, check_positive_int
from jaxprune.masks.layout import GroupLayout
from jaxprune.typing import PyTree

__all__ = [
    "ExpertSpec",
    "FilterSpec",
    "GroupSpec",
    "HeadSpec",
    "NeuronSpec",
    "UnstructuredSpec",
    "build_group_ids",
    "experts",
    "filters",
    "heads",
    "neurons",
    "unstructured",
]

_HEAD_LAYOUTS = ("flax", "dense")


class NeuronSpec(NamedTuple):
    """Output units of the Dense layers whose path matches ``pattern`` (see :func:`neurons`)."""

    pattern: str
    next_layer: str | None = None


class FilterSpec(NamedTuple):
    """Output channels of the convolutions whose path matches ``pattern`` (see :func:`filters`)."""

    pattern: str
    batchnorm: str | None = None
    next_layer: str | None = None


class HeadSpec(NamedTuple):
    """Attention heads of the modules whose path matches ``pattern`` (see :func:`heads`)."""

    pattern: str
    num_heads: int
    layout: str = "flax"
    qkv: tuple[str, ...] = ("query", "key", "value")
    out: str = "out"


class ExpertSpec(NamedTuple):
    """Experts of the MoE modules whose path matches ``pattern`` (see :func:`experts`)."""

    pattern: str
    num_experts: int
    axis: int = 0


class UnstructuredSpec(NamedTuple):
    """Single weights of the layers whose path matches ``pattern`` (see :func:`unstructured`)."""

    pattern: str
    leaves: tuple[str, ...] | None = None


GroupSpec = NeuronSpec | FilterSpec | HeadSpec | ExpertSpec | UnstructuredSpec


# ---------------------------------------------------------------------------------------------
# Argument checks for the spec constructors.


def _check_pattern(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a regular expression string, got {value!r}")
    try:
        re.compile(value)
    except re.error as error:
        raise ValueError(f"{name}: {value!r} is not a valid regular expression ({error})") from None
    return value


def _check_optional_pattern(value: Any, name: str) -> str | None:
    return None if value is None else _check_pattern(value, name)


def _check_names(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a non-empty sequence of strings, got {value!r}")
    names = tuple(value)
    if not names or not all(isinstance(v, str) and v for v in names):
        raise ValueError(
            f"{name}: expected a non-empty sequence of non-empty strings, got {value!r}"
        )
    return names


# ---------------------------------------------------------------------------------------------
# Spec constructors.


def neurons(pattern: str, *, next_layer: str | None = None) -> NeuronSpec:
    """One group per output unit of every Dense layer whose layer path matches ``pattern``.

    Unit ``o`` of a layer with kernel ``(in, out)`` is the kernel column ``kernel[:, o]`` and
    ``bias[o]`` (when the layer has a bias).  With ``next_layer`` the group also holds the input
    row ``o`` of that layer's kernel (``kernel[o, :]`` of a Dense kernel, ``kernel[..., o, :]`` of
    a convolution), so that masking the unit removes it from both sides.

    Args:
      pattern: regular expression searched in layer paths (``"params/Dense_0"``); every matched
        layer must have a 2-D ``kernel``.
      next_layer: optional pattern matching exactly one layer, whose kernel input axis has width
        ``out``; only allowed when ``pattern`` matches one layer.

    Returns:
      A :class:`NeuronSpec` for :func:`build_group_ids`: one layer of ``out`` groups per matched
      layer.

    References:
      Chen et al. (2023), Section 3.2.1 (neuron groups of an over-parameterized MLP).
    """
    return NeuronSpec(
        _check_pattern(pattern, "pattern"), _check_optional_pattern(next_layer, "next_layer")
    )


def filters(
    pattern: str, *, batchnorm: str | None = None, next_layer: str | None = None
) -> FilterSpec:
    """One group per output channel of every convolution whose layer path matches ``pattern``.

    Channel ``o`` of a kernel ``(*window, in, out)`` is ``kernel[..., o]`` and ``bias[o]``; with
    ``batchnorm`` also ``scale[o]`` and ``bias[o]`` of that BatchNorm layer (its running
    statistics live in the ``batch_stats`` collection and are not parameters); with
    ``next_layer`` also that layer's input channel ``o`` (``kernel[..., o, :]`` of a
    convolution, row ``kernel[o, :]`` of a Dense layer applied after global pooling).

    Args:
      pattern: regular expression searched in layer paths; every matched layer must have a
        ``kernel`` with at least 3 dimensions.
      batchnorm: optional pattern matching exactly one layer with ``scale`` and/or ``bias`` of
        shape ``(out,)``; only allowed when ``pattern`` matches one layer.
      next_layer: optional pattern matching exactly one layer whose kernel input axis has width
        ``out``; only allowed when ``pattern`` matches one layer.

    Returns:
      A :class:`FilterSpec` for :func:`build_group_ids`: one layer of ``out`` groups per matched
      convolution.

    References:
      Li et al. (2017), "Pruning filters for efficient ConvNets", Section 3.1 (a filter and the
      matching input channel of the next layer).
    """
    return FilterSpec(
        _check_pattern(pattern, "pattern"),
        _check_optional_pattern(batchnorm, "batchnorm"),
        _check_optional_pattern(next_layer, "next_layer"),
    )


def heads(
    pattern: str,
    num_heads: int,
    *,
    layout: str = "flax",
    qkv: Sequence[str] = ("query", "key", "value"),
    out: str = "out",
) -> HeadSpec:
    """One group per attention head of every attention module whose path matches ``pattern``.

    The module's projections are its child layers named by ``qkv`` and ``out`` (relative paths,
    ``"/"`` allowed, e.g. ``"self/query"``).  Head ``h`` holds its slices of every projection:

    * ``layout="flax"`` (``flax.linen.MultiHeadDotProductAttention``): q/k/v kernels
      ``(features, num_heads, head_dim)`` → ``kernel[:, h, :]``, biases ``(num_heads, head_dim)``
      → ``bias[h]``, out kernel ``(num_heads, head_dim, features)`` → ``kernel[h]``.
    * ``layout="dense"`` (separate Dense projections, as in BERT): q/k/v kernels
      ``(in, width)`` whose columns split into ``num_heads`` contiguous blocks of
      ``width // num_heads`` → ``kernel[:, h*d:(h+1)*d]`` and ``bias[h*d:(h+1)*d]``, out kernel
      ``(width, features)`` → rows ``kernel[h*d:(h+1)*d, :]``.

    The out-projection bias is shared by all heads and stays ungrouped.

    Args:
      pattern: regular expression searched in module paths; the outermost matches are the
        attention modules.
      num_heads: number of heads ``H``; must equal the heads axis (``"flax"``) or divide every
        projection width (``"dense"``).
      layout: ``"flax"`` or ``"dense"``.
      qkv: names of the input projections (e.g. ``("query", "value")`` when keys are queries).
      out: name of the output projection.

    Returns:
      A :class:`HeadSpec` for :func:`build_group_ids`: one layer of ``H`` groups per module.

    References:
      Michel et al. (2019), "Are sixteen heads really better than one?", Section 2 (head masks).
      Chen et al. (2023), Appendix E.3 (head groups, at least one kept per layer).
    """
    if layout not in _HEAD_LAYOUTS:
        raise ValueError(f"layout: expected one of {_HEAD_LAYOUTS}, got {layout!r}")
    if not isinstance(out, str) or not out:
        raise TypeError(f"out: expected a non-empty layer name, got {out!r}")
    return HeadSpec(
        _check_pattern(pattern, "pattern"),
        check_positive_int(num_heads, "num_heads"),
        layout,
        _check_names(qkv, "qkv"),
        out,
    )


def experts(pattern: str, num_experts: int, *, axis: int = 0) -> ExpertSpec:
    """One group per expert of every MoE module whose path matches ``pattern``.

    Every leaf under the module carries an expert axis ``axis`` of length ``num_experts`` (as
    with ``nn.vmap``-ed expert FFNs); expert ``e`` is the slice ``index e along axis`` of every
    such leaf.  A router inside the module has no expert axis in that position: match the
    experts' own submodule instead.

    Args:
      pattern: regular expression searched in module paths; the outermost matches are the MoE
        modules.
      num_experts: number of experts ``E``.
      axis: the expert axis of every leaf (negative values count from the end).

    Returns:
      An :class:`ExpertSpec` for :func:`build_group_ids`: one layer of ``E`` groups per module.

    References:
      Fedus et al. (2022), "Switch Transformers", Section 2 (expert FFNs).
      Chen et al. (2023), Appendix E.3 (expert groups, at least one kept per layer).
    """
    return ExpertSpec(
        _check_pattern(pattern, "pattern"),
        check_positive_int(num_experts, "num_experts"),
        check_int(axis, "axis"),
    )


def unstructured(pattern: str, *, leaves: Sequence[str] | None = None) -> UnstructuredSpec:
    """Every weight its own group, in every layer whose layer path matches ``pattern``.

    Groups are numbered leaf by leaf in flattening order and row-major within a leaf.

    Args:
      pattern: regular expression searched in layer paths.
      leaves: optional leaf names to group (e.g. ``("kernel",)``); matched layers without such a
        leaf are skipped.  ``None`` groups every leaf of the matched layers.

    Returns:
      An :class:`UnstructuredSpec` for :func:`build_group_ids`: one layer per matched layer with
      as many groups as it has selected weights.

    References:
      Chen et al. (2023), Section 3.2.1 (``p`` equal to the number of weights: unstructured
      pruning).
    """
    return UnstructuredSpec(
        _check_pattern(pattern, "pattern"),
        None if leaves is None else _check_names(leaves, "leaves"),
    )


# ---------------------------------------------------------------------------------------------
# Index of the parameter tree.


class _Leaf(NamedTuple):
    path: str  # "params/Dense_0/kernel"
    layer: str  # "params/Dense_0"
    name: str  # "kernel"
    shape: tuple[int, ...]


class _Index(NamedTuple):
    leaves: list[_Leaf]
    layers: dict[str, dict[str, int]]  # layer path -> leaf name -> leaf position
    modules: list[str]  # every module path, in order of first appearance


class _Unit(NamedTuple):
    """One layer of the layout: its name, its number of groups, and its (leaf, local ids)."""

    name: str
    size: int
    claims: list[tuple[int, np.ndarray]]


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _variable_types() -> tuple[type, ...]:
    """Flax NNX's variable classes, if NNX is loaded (an ``nnx.State`` cannot exist otherwise)."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return ()
    # Flax < 0.11 holds ``VariableState`` leaves; later versions alias it (with a warning).
    return tuple(t for t in (nnx.Variable, vars(nnx).get("VariableState")) if t is not None)


def _leaves_with_paths(params: PyTree) -> list[tuple[tuple, Any]]:
    """``tree_flatten_with_path(params)``, except that the key of the array inside an NNX
    variable (``.value``) is dropped: ``nnx.State`` leaf ``l1/kernel`` is layer ``l1``'s
    kernel, as in Linen's ``{"l1": {"kernel": ...}}``."""
    variables = _variable_types()
    entries = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda node: isinstance(node, variables)
    )[0]
    flat = []
    for path, node in entries:
        if isinstance(node, variables):
            flat += [
                (path + inner[1:], leaf)
                for inner, leaf in jax.tree_util.tree_flatten_with_path(node)[0]
            ]
        else:
            flat.append((path, node))
    return flat


def _index(params: PyTree) -> _Index:
    leaves, layers, modules = [], {}, {}
    for position, (path, leaf) in enumerate(_leaves_with_paths(params)):
        names = [_key_name(k) for k in path]
        layer = "/".join(names[:-1])
        shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)
        leaves.append(_Leaf("/".join(names), layer, names[-1] if names else "", shape))
        layers.setdefault(layer, {})[leaves[-1].name] = position
        for depth in range(len(names)):
            modules.setdefault("/".join(names[:depth]), None)
    return _Index(leaves, layers, list(modules))


def _child(module: str, name: str) -> str:
    return f"{module}/{name}" if module else name


def _inside(path: str, module: str) -> bool:
    return path == module or module == "" or path.startswith(module + "/")


def _listing(paths: Sequence[str]) -> str:
    return repr(list(paths[:8])) + (f" and {len(paths) - 8} more" if len(paths) > 8 else "")


def _match_layers(spec: GroupSpec, arg: str, pattern: str, index: _Index) -> list[str]:
    found = [layer for layer in index.layers if re.search(pattern, layer)]
    if not found:
        raise ValueError(
            f"{spec!r}: {arg} {pattern!r} matches no layer path; layer paths are "
            f"{_listing(list(index.layers))}"
        )
    return found


def _match_one_layer(spec: GroupSpec, arg: str, pattern: str, index: _Index) -> str:
    found = _match_layers(spec, arg, pattern, index)
    if len(found) > 1:
        raise ValueError(
            f"{spec!r}: {arg} {pattern!r} must match exactly one layer, matches {_listing(found)}"
        )
    return found[0]


def _match_modules(spec: GroupSpec, index: _Index) -> list[str]:
    found = [m for m in index.modules if re.search(spec.pattern, m)]
    if not found:
        raise ValueError(
            f"{spec!r}: pattern {spec.pattern!r} matches no module path; module paths are "
            f"{_listing(index.modules)}"
        )
    return [m for m in found if not any(a != m and _inside(m, a) for a in found)]


def _single_match(spec: GroupSpec, layers: list[str]) -> None:
    extras = [a for a in ("batchnorm", "next_layer") if getattr(spec, a, None) is not None]
    if extras and len(layers) > 1:
        raise ValueError(
            f"{spec!r}: with {' and '.join(extras)} the pattern must match exactly one layer, "
            f"matches {_listing(layers)}"
        )


def _kernel(spec: GroupSpec, index: _Index, layer: str, ndim: int, exact: bool) -> int:
    """Position of ``layer``'s kernel, which has ``ndim`` (``exact``) or more dimensions."""
    position = index.layers.get(layer, {}).get("kernel")
    if position is None:
        raise ValueError(f"{spec!r}: layer {layer!r} has no 'kernel' leaf")
    shape = index.leaves[position].shape
    if len(shape) < ndim or (exact and len(shape) != ndim):
        wanted = f"{ndim}" if exact else f"at least {ndim}"
        raise ValueError(
            f"{spec!r}: {index.leaves[position].path} has shape {shape}; expected {wanted} "
            "dimensions"
        )
    return position


def _axis_ids(ndim: int, axis: int, n: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = n
    return np.arange(n, dtype=np.int32).reshape(shape)


def _vector_claims(
    spec: GroupSpec, index: _Index, layer: str, names: tuple[str, ...], width: int
) -> list[tuple[int, np.ndarray]]:
    claims = []
    for name in names:
        position = index.layers[layer].get(name)
        if position is None:
            continue
        leaf = index.leaves[position]
        if leaf.shape != (width,):
            raise ValueError(
                f"{spec!r}: {leaf.path} has shape {leaf.shape}; expected ({width},) to match "
                f"the {width} groups"
            )
        claims.append((position, np.arange(width, dtype=np.int32)))
    return claims


def _next_layer_claim(spec: GroupSpec, index: _Index, width: int) -> tuple[int, np.ndarray]:
    layer = _match_one_layer(spec, "next_layer", spec.next_layer, index)
    position = _kernel(spec, index, layer, 2, exact=False)
    leaf = index.leaves[position]
    axis = 0 if len(leaf.shape) == 2 else len(leaf.shape) - 2
    if leaf.shape[axis] != width:
        raise ValueError(
            f"{spec!r}: next_layer {leaf.path} has {leaf.shape[axis]} inputs (axis {axis} of "
            f"shape {leaf.shape}); expected {width} to match the groups"
        )
    return position, _axis_ids(len(leaf.shape), axis, width)


# ---------------------------------------------------------------------------------------------
# Resolution of each kind of spec into units.


def _resolve_neurons(spec: NeuronSpec, index: _Index) -> list[_Unit]:
    layers = _match_layers(spec, "pattern", spec.pattern, index)
    _single_match(spec, layers)
    units = []
    for layer in layers:
        kernel = _kernel(spec, index, layer, 2, exact=True)
        width = index.leaves[kernel].shape[1]
        claims = [(kernel, _axis_ids(2, 1, width))]
        claims += _vector_claims(spec, index, layer, ("bias",), width)
        if spec.next_layer is not None:
            claims.append(_next_layer_claim(spec, index, width))
        units.append(_Unit(layer, width, claims))
    return units


def _resolve_filters(spec: FilterSpec, index: _Index) -> list[_Unit]:
    layers = _match_layers(spec, "pattern", spec.pattern, index)
    _single_match(spec, layers)
    units = []
    for layer in layers:
        kernel = _kernel(spec, index, layer, 3, exact=False)
        shape = index.leaves[kernel].shape
        width = shape[-1]
        claims = [(kernel, _axis_ids(len(shape), len(shape) - 1, width))]
        claims += _vector_claims(spec, index, layer, ("bias",), width)
        if spec.batchnorm is not None:
            norm = _match_one_layer(spec, "batchnorm", spec.batchnorm, index)
            norm_claims = _vector_claims(spec, index, norm, ("scale", "bias"), width)
            if not norm_claims:
                raise ValueError(f"{spec!r}: batchnorm layer {norm!r} has no 'scale' or 'bias'")
            claims += norm_claims
        if spec.next_layer is not None:
            claims.append(_next_layer_claim(spec, index, width))
        units.append(_Unit(layer, width, claims))
    return units


def _head_claims(spec: HeadSpec, leaf: _Leaf, role: str) -> np.ndarray:
    """Local head ids of one projection leaf; ``role`` is "in" (q/k/v) or "out"."""
    h, shape = spec.num_heads, leaf.shape
    if spec.layout == "flax":
        expected = {
            ("in", "kernel"): (3, 1),
            ("in", "bias"): (2, 0),
            ("out", "kernel"): (3, 0),
        }[(role, leaf.name)]
        ndim, axis = expected
        if len(shape) != ndim or shape[axis] != h:
            raise ValueError(
                f"{spec!r}: num_heads={h} does not match {leaf.path} of shape {shape}; the flax "
                f"layout expects {ndim} dimensions with {h} heads on axis {axis}"
            )
        return _axis_ids(ndim, axis, h)
    ndim, axis = {("in", "kernel"): (2, 1), ("in", "bias"): (1, 0), ("out", "kernel"): (2, 0)}[
        (role, leaf.name)
    ]
    if len(shape) != ndim or shape[axis] % h:
        raise ValueError(
            f"{spec!r}: num_heads={h} does not divide the width of {leaf.path} of shape {shape}; "
            f"the dense layout expects {ndim} dimensions with width divisible by {h} on axis "
            f"{axis}"
        )
    blocks = np.arange(shape[axis], dtype=np.int32) // (shape[axis] // h)
    return blocks.reshape([-1 if a == axis else 1 for a in range(ndim)])


def _resolve_heads(spec: HeadSpec, index: _Index) -> list[_Unit]:
    units = []
    for module in _match_modules(spec, index):
        claims = []
        for role, names in (("in", spec.qkv), ("out", (spec.out,))):
            for name in names:
                layer = _child(module, name)
                kernel = index.layers.get(layer, {}).get("kernel")
                if kernel is None:
                    raise ValueError(
                        f"{spec!r}: attention module {module!r} has no projection {name!r} "
                        f"(no leaf {_child(layer, 'kernel')!r})"
                    )
                parts = ("kernel", "bias") if role == "in" else ("kernel",)
                for part in parts:
                    position = index.layers[layer].get(part)
                    if position is not None:
                        claims.append((position, _head_claims(spec, index.leaves[position], role)))
        units.append(_Unit(module, spec.num_heads, claims))
    return units


def _resolve_experts(spec: ExpertSpec, index: _Index) -> list[_Unit]:
    units = []
    for module in _match_modules(spec, index):
        claims = []
        for position, leaf in enumerate(index.leaves):
            if not _inside(leaf.layer, module):
                continue
            ndim = len(leaf.shape)
            if not -ndim <= spec.axis < ndim:
                raise ValueError(
                    f"{spec!r}: axis {spec.axis} is out of range for {leaf.path} of shape "
                    f"{leaf.shape}"
                )
            if leaf.shape[spec.axis] != spec.num_experts:
                raise ValueError(
                    f"{spec!r}: num_experts={spec.num_experts} does not match {leaf.path} of "
                    f"shape {leaf.shape}, which has {leaf.shape[spec.axis]} on axis {spec.axis}"
                )
            claims.append((position, _axis_ids(ndim, spec.axis % ndim, spec.num_experts)))
        units.append(_Unit(module, spec.num_experts, claims))
    return units


def _resolve_unstructured(spec: UnstructuredSpec, index: _Index) -> list[_Unit]:
    units = []
    for layer in _match_layers(spec, "pattern", spec.pattern, index):
        claims, size = [], 0
        for name, position in index.layers[layer].items():
            if spec.leaves is not None and name not in spec.leaves:
                continue
            shape = index.leaves[position].shape
            count = int(np.prod(shape, dtype=np.int64))
            claims.append((position, np.arange(size, size + count, dtype=np.int32).reshape(shape)))
            size += count
        if claims:
            units.append(_Unit(layer, size, claims))
    if not units:
        raise ValueError(
            f"{spec!r}: no layer matched by {spec.pattern!r} has a leaf named in {spec.leaves}"
        )
    return units


_RESOLVERS = {
    NeuronSpec: _resolve_neurons,
    FilterSpec: _resolve_filters,
    HeadSpec: _resolve_heads,
    ExpertSpec: _resolve_experts,
    UnstructuredSpec: _resolve_unstructured,
}


def build_group_ids(
    params: PyTree, specs: GroupSpec | Sequence[GroupSpec]
) -> tuple[PyTree, GroupLayout]:
    """Group ids and layout of the groups named by ``specs``, numbered as one sequence.

    Groups are numbered contiguously spec by spec (in the order given), and within a spec layer
    by layer (module by module for heads and experts) in parameter flattening order.  Each
    matched layer or module is one layer of the layout, named by its path.  Weights that no spec
    claims are ungrouped (``-1``).

    Args:
      params: a Flax parameter pytree (e.g. ``variables`` or ``variables["params"]``, or an
        NNX ``nnx.State``); only the leaves' shapes are read, so ``jax.eval_shape(model.init,
        ...)`` works too.
      specs: one spec or a sequence of specs from :func:`neurons`, :func:`filters`,
        :func:`heads`, :func:`experts`, :func:`unstructured`.

    Returns:
      ``(group_ids, layout)``: the group-id pytree (structure of ``params``, so an
      ``nnx.State`` for an ``nnx.State``; int32 leaves broadcastable to each leaf: ``(1, out)``
      for a kernel's columns, ``(out,)`` for a bias, ...) with groups ``0..p-1``, and the
      :class:`GroupLayout` of its ``p`` groups.

    Raises:
      ValueError: ``params`` without array leaves; a pattern matches nothing;
        ``next_layer``/``batchnorm`` match zero or several layers or have the wrong width; an axis is out of range; a head or expert count does not
        fit the shapes; two specs claim the same weight (the message names the path and both
        specs); a matched layer has no weight to group.
      TypeError: a spec is not one of the spec types.

    References:
      Chen et al. (2023), Section 3.2.1 (the grouping ``w = [w_[1], ..., w_[p]]`` behind ``m * w``).
    """
    if isinstance(specs, tuple(_RESOLVERS)):
        specs = (specs,)
    if isinstance(specs, str) or not isinstance(specs, Sequence) or not specs:
        raise ValueError(f"specs: expected a non-empty sequence of group specs, got {specs!r}")
    index = _index(params)
    if not index.leaves:
        raise ValueError(
            f"params: expected a parameter pytree with at least one array leaf, got {params!r}"
        )
    ids = [np.full((1,) * len(leaf.shape), -1, np.int32) for leaf in index.leaves]
    owner: dict[int, GroupSpec] = {}
    names: list[str] = []
    sizes: list[int] = []
    for spec in specs:
        resolve = _RESOLVERS.get(type(spec))
        if resolve is None:
            raise TypeError(
                f"specs: expected specs made by neurons/filters/heads/experts/unstructured, "
                f"got {spec!r}"
            )
        for unit in resolve(spec, index):
            if unit.size < 1:
                raise ValueError(f"{spec!r}: layer {unit.name!r} has no weight to group")
            offset = sum(sizes)
            for position, local in unit.claims:
                # Every claim covers all weights of its leaf, so a second claim always overlaps.
                if position in owner:
                    raise ValueError(
                        f"overlapping specs: {index.leaves[position].path} is claimed by "
                        f"{owner[position]!r} and by {spec!r}"
                    )
                owner[position] = spec
                ids[position] = (local + offset).astype(np.int32)
            names.append(unit.name)
            sizes.append(unit.size)
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, ids), GroupLayout.from_sizes(
        tuple(names), tuple(sizes)
    )
