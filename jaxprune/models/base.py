"""The model protocol: one :class:`ModelSpec` per architecture, and the registry of specs.

Every model module declares ``SPEC = ModelSpec(...)`` once, built from module-level functions
with the same names and argument order in every model:

* ``make_config(preset, *, num_outputs, input_shape, **overrides) -> config``: the preset sized
  for a dataset (classes or vocabulary, one example's shape);
* ``group_ids(variables, config, kind) -> (group_ids, layout)``: the prunable groups of ``kind``
  over ``variables`` (``{"params": ...}`` or the bare params; shapes suffice);
* ``compact(variables, config, keep, kind) -> (variables, config)``: the smaller model without
  the groups where ``keep`` (boolean ``(p,)`` in group order) is False; it computes what the
  model with those groups' gates at 0 computes (``None`` in the spec when unsupported);
* ``flops(config, input_shape) -> int``: forward FLOPs of one example (2 per multiply-add).

How per-group gates reach the module is the spec's ``gate_keyword`` (one flat ``(p,)``
argument) or ``split_gates`` (several arguments, e.g. Switch's ``head_gates`` and
``expert_gates``); :meth:`ModelSpec.gate_kwargs` applies either.

:func:`register_model` adds a spec; :func:`model_spec` and :func:`model_names` read the
registry, which :func:`jaxprune.train.build_model` uses to bind a model to a dataset.  Adding an
architecture is one module with a ``SPEC`` and one :func:`register_model` call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_positive_int, is_traced
from jaxprune.masks.layout import GroupLayout
from jaxprune.typing import PyTree

__all__ = [
    "ModelSpec",
    "binary_keep",
    "check_float_dtype",
    "check_tokens",
    "config_module",
    "deprecated_alias",
    "flat_size",
    "image_shape",
    "model_names",
    "model_spec",
    "register_model",
    "sequence_length",
    "sequence_sizes",
    "split_gates",
    "warn_renamed",
]

ConfigBuilder = Callable[..., Any]
GroupIdsFn = Callable[[PyTree, Any, str], tuple[PyTree, GroupLayout]]
CompactFn = Callable[[PyTree, Any, np.ndarray, str], tuple[PyTree, Any]]
FlopsFn = Callable[[Any, tuple[int, ...]], int]
SplitGatesFn = Callable[[Any, jax.Array, str], dict[str, Any]]


@dataclasses.dataclass(frozen=True, eq=False)
class ModelSpec:
    """What the training engine and the pruning methods need to know about an architecture.

    Specs compare and hash by identity (one object per registered model), so a
    :class:`~jaxprune.train.Bound` holding one stays hashable.

    Attributes:
      name: registry name (``"vgg"``).
      module: ``module(config) -> flax.linen.Module`` (:func:`config_module` when the config
        is the module itself, as for the MLP).
      presets: named architecture presets (configs or config fields), for listing.
      default_preset: the preset :func:`~jaxprune.train.build_model` uses by default; the
        smallest one, sized for CPU tests.
      group_kinds: the structure kinds ``group_ids`` accepts; the first is the default.
      make_config: ``make_config(preset, *, num_outputs, input_shape, **overrides) -> config``:
        the preset with its output width and input-dependent fields sized for a dataset.
      group_ids: ``group_ids(variables, config, kind) -> (group_ids, layout)``.
      compact: ``compact(variables, config, keep, kind) -> (variables, config)``; ``None``
        when the model cannot be compacted.
      flops: ``flops(config, input_shape) -> int``, forward FLOPs of one example.
      example_input_shape: the shape of one example the default preset accepts (for tests and
        shape-only evaluation); token models take int token ids of this shape.
      gate_keyword: keyword of the module's flat ``(p,)`` per-group gates, or ``None``.
      split_gates: ``split_gates(config, gates, kind) -> apply kwargs`` for modules that take
        their gates as several arguments; ``None`` when ``gate_keyword`` (or nothing) is used.
      stateful: the module keeps BatchNorm statistics (collection ``batch_stats``; its
        ``__call__`` takes ``train``).
      mlm: the module is a masked language model on token ids (its ``__call__`` takes
        ``deterministic``; dropout needs a ``"dropout"`` stream).
    """

    name: str
    module: Callable[[Any], nn.Module]
    presets: Mapping[str, Any]
    default_preset: str
    group_kinds: tuple[str, ...]
    make_config: ConfigBuilder
    group_ids: GroupIdsFn
    compact: CompactFn | None
    flops: FlopsFn
    example_input_shape: tuple[int, ...]
    gate_keyword: str | None = None
    split_gates: SplitGatesFn | None = None
    stateful: bool = False
    mlm: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name: expected a non-empty str, got {self.name!r}")
        if self.default_preset not in self.presets:
            raise ValueError(
                f"default_preset: expected one of {tuple(self.presets)}, got "
                f"{self.default_preset!r}"
            )
        kinds = tuple(self.group_kinds)
        if not kinds or not all(isinstance(kind, str) for kind in kinds):
            raise ValueError(f"group_kinds: expected a non-empty tuple of str, got {kinds!r}")
        object.__setattr__(self, "group_kinds", kinds)
        if self.gate_keyword is not None and self.split_gates is not None:
            raise ValueError(
                f"{self.name}: expected gate_keyword or split_gates, not both (got "
                f"{self.gate_keyword!r} and {self.split_gates!r})"
            )
        object.__setattr__(self, "example_input_shape", tuple(self.example_input_shape))

    @property
    def default_kind(self) -> str:
        """The first of :attr:`group_kinds`."""
        return self.group_kinds[0]

    def gate_kwargs(self, config: Any, gates: jax.Array | None, kind: str) -> dict[str, Any]:
        """Keyword arguments passing the ``(p,)`` group ``gates`` to ``module(config)``.

        Empty when ``gates`` is ``None`` or the module takes no gates (then a mask acts on the
        weights only, through :func:`~jaxprune.masks.mask.apply_group_mask`).
        """
        if gates is None:
            return {}
        if self.split_gates is not None:
            return self.split_gates(config, gates, kind)
        if self.gate_keyword is not None:
            return {self.gate_keyword: gates}
        return {}


def check_float_dtype(value: Any, name: str = "dtype") -> None:
    """Raise ``ValueError`` unless ``value`` names a floating dtype (a config's compute dtype)."""
    try:
        floating = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(
            f"{name}: expected a floating compute dtype (e.g. jnp.bfloat16), got {value!r}"
        )


def binary_keep(keep: Any, name: str = "keep") -> np.ndarray:
    """``keep`` as a boolean array: booleans, or numbers that are all 0 or 1 (a group mask).

    Raises:
      ValueError: another value (0.5, NaN, 2): ``np.asarray(keep, bool)`` would keep it.
    """
    values = np.asarray(keep)
    if values.dtype != np.bool_:
        binary = np.issubdtype(values.dtype, np.number) and np.all((values == 0) | (values == 1))
        if not binary:
            shown = values.ravel() if values.dtype == object else np.unique(values)
            raise ValueError(
                f"{name}: expected a boolean keep mask (or entries 0 and 1), got {values.dtype} "
                f"values {shown[:5].tolist()}"
            )
    return values.astype(bool)


def check_tokens(tokens: Any, vocab_size: int, max_length: int, name: str = "tokens") -> None:
    """Raise unless ``tokens`` are ``(n, T)`` integer ids with ``T <= max_length`` and (when
    concrete and on this host) every id in ``[0, vocab_size)``: an embedding lookup clips or
    fills ids outside the table without an error."""
    shape = tuple(getattr(tokens, "shape", np.shape(tokens)))
    if len(shape) != 2 or shape[1] > max_length:
        raise ValueError(
            f"{name}: expected shape (n, T) with T <= max_length {max_length}, got {shape}"
        )
    dtype = jnp.result_type(tokens)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer token ids, got dtype {dtype}")
    readable = not is_traced(tokens) and getattr(tokens, "is_fully_addressable", True)
    if readable and np.size(tokens):
        ids = np.asarray(tokens)
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name}: expected ids in [0, vocab_size={vocab_size}), got ids in [{low}, {high}]"
            )


def split_gates(gates: Any, widths: Sequence[int], dtype: Any, name: str) -> list[jax.Array]:
    """Per-layer gate pieces from a flat ``(sum(widths),)`` vector or a sequence of pieces.

    Every gated zoo model accepts either form for its gates argument: the flat vector in group
    order, or one ``(width,)`` array per layer of its :class:`~jaxprune.masks.GroupLayout`.
    Pieces let a caller vary one layer's gates under ``vmap`` while the others stay unbatched,
    so the layers upstream of it are computed once for all lanes (greedy channel selection
    scores its candidates this way).

    Args:
      gates: ``(p,)`` array, ``p = sum(widths)``, or a list/tuple of ``len(widths)`` arrays of
        shapes ``(widths[i],)``.
      widths: groups per layer, in group order.
      dtype: the pieces' dtype (the model's compute dtype).
      name: the argument's name, for errors.

    Returns:
      ``len(widths)`` arrays of shapes ``(widths[i],)``.

    Raises:
      ValueError: wrong total shape, wrong number of pieces or a piece of the wrong shape.
    """
    widths = tuple(int(w) for w in widths)
    if isinstance(gates, list | tuple):
        if len(gates) != len(widths):
            raise ValueError(
                f"{name}: expected {len(widths)} per-layer pieces of sizes {widths}, got "
                f"{len(gates)} pieces"
            )
        pieces = [jnp.asarray(g) for g in gates]
        for i, (piece, width) in enumerate(zip(pieces, widths)):
            if piece.shape != (width,):
                raise ValueError(
                    f"{name}[{i}]: expected shape ({width},), one gate per group of layer {i}, "
                    f"got {piece.shape}"
                )
        return [piece.astype(dtype) for piece in pieces]
    gates = jnp.asarray(gates)
    if gates.shape != (sum(widths),):
        raise ValueError(
            f"{name}: expected shape ({sum(widths)},), one gate per group in group order (or "
            f"{len(widths)} per-layer pieces), got {gates.shape}"
        )
    return jnp.split(gates.astype(dtype), np.cumsum(widths)[:-1])


def config_module(config: nn.Module) -> nn.Module:
    """``ModelSpec.module`` of a model whose config is its Flax module (MLP, SmallCNN)."""
    return config


def sequence_length(input_shape: int | Sequence[int]) -> int:
    """``T`` of a token model's example shape ``(T,)`` (a bare int ``T`` is accepted too)."""
    if isinstance(input_shape, int | np.integer) and not isinstance(input_shape, bool):
        return check_positive_int(input_shape, "seq_len")
    shape = tuple(input_shape)
    if len(shape) != 1:
        raise ValueError(f"input_shape: expected (seq_len,) for token ids, got {shape}")
    return check_positive_int(shape[0], "seq_len")


def sequence_sizes(num_outputs: int, input_shape: Sequence[int]) -> dict[str, int]:
    """Config fields of a masked language model sized for a dataset: the vocabulary is the
    output width and the position table covers the sequence length (at least 2)."""
    return {"vocab_size": num_outputs, "max_length": max(int(input_shape[0]), 2)}


def image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image model's example shape, each a positive int."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape: expected (height, width, channels), got {shape}")
    return tuple(check_positive_int(v, f"input_shape[{i}]") for i, v in enumerate(shape))


def flat_size(input_shape: Sequence[int]) -> int:
    """Number of features of one example, ``prod(input_shape)``."""
    return math.prod(check_positive_int(v, "input_shape") for v in tuple(input_shape))


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry under ``spec.name`` (an existing name needs
    ``overwrite=True``); returns ``spec``."""
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    if spec.name in _MODELS and not overwrite:
        raise ValueError(f"spec: a model named {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def model_names() -> tuple[str, ...]:
    """Registered model names, in registration order."""
    return tuple(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """The registered spec ``name``; ``ValueError`` listing the names when unknown."""
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(_MODELS)}")
    return _MODELS[name]


def deprecated_alias(new: Callable, old_name: str) -> Callable:
    """``new`` under its former name ``old_name``: warns ``DeprecationWarning`` and forwards."""

    @functools.wraps(new)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(old_name, new)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name.rsplit(".", 1)[-1]
    alias.__doc__ = f"Deprecated alias of :func:`{new.__module__}.{new.__name__}`."
    return alias


def warn_renamed(old_name: str, new: Callable) -> None:
    """The ``DeprecationWarning`` of a renamed function (reported at the caller's caller)."""
    warnings.warn(
        f"{old_name} is deprecated and will be removed in the next release; use "
        f"{new.__module__}.{new.__name__}",
        DeprecationWarning,
        stacklevel=3,
    )
