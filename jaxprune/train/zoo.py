"""Models by name, bound to a dataset for training: one calling convention for the engine.

The zoo is the registry of :class:`~jaxprune.models.base.ModelSpec` (one per architecture,
:func:`~jaxprune.models.register_model`).  A :class:`Bound` model is a spec with a config and
a group kind: it hides each architecture's keywords (``train``/``deterministic``, BatchNorm
collections, dropout streams, the Switch auxiliary loss, gate arguments) behind ``init`` and
``apply``, and carries its group structure and compaction, so the engine and every pruning
method treat all models alike.

Built-in names (``MODEL_NAMES``) and their prunable group kinds:
  ``mlp`` (neurons), ``two_layer`` (neurons), ``cnn`` (filters; no compaction), ``vgg``
  (filters), ``resnet`` (inner filters), ``bert`` (heads), ``switch`` (experts, heads or
  experts+heads), ``resnet34`` (inner filters), ``mobilenet_v2`` (expanded-width channels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxprune._validation import check_positive_int
from jaxprune.masks import GroupLayout
from jaxprune.models import ModelSpec, model_names, model_spec
from jaxprune.models.base import binary_keep
from jaxprune.models.moe import total_aux_loss
from jaxprune.typing import PyTree

__all__ = ["DEFAULT_KINDS", "DEFAULT_PRESETS", "MODEL_NAMES", "Bound", "build_model"]

MODEL_NAMES = model_names()
"""The models registered when the zoo is imported (:func:`~jaxprune.models.model_names` lists
later registrations too)."""

DEFAULT_PRESETS = {name: model_spec(name).default_preset for name in MODEL_NAMES}
"""Default architecture preset of each model name in :data:`MODEL_NAMES`."""

DEFAULT_KINDS = {name: model_spec(name).default_kind for name in MODEL_NAMES}
"""Default group kind of each model name in :data:`MODEL_NAMES`."""


@dataclasses.dataclass(frozen=True)
class Bound:
    """A model ready for the training engine: a spec, its config and the group kind pruned.

    Attributes:
      spec: the model's :class:`~jaxprune.models.base.ModelSpec`.
      config: the architecture config (the module itself for ``mlp``/``cnn``).
      kind: the group kind pruned (``"neurons"``, ``"filters"``, ``"heads"``, ...).
      module: the Flax module, ``spec.module(config)``.
    """

    spec: ModelSpec
    config: Any
    kind: str
    module: nn.Module = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in self.spec.group_kinds:
            raise ValueError(
                f"kind {self.kind!r} is not a group kind of {self.spec.name}; expected one of "
                f"{self.spec.group_kinds}"
            )
        object.__setattr__(self, "module", self.spec.module(self.config))

    @property
    def name(self) -> str:
        """Registry name."""
        return self.spec.name

    @property
    def gate_keyword(self) -> str | None:
        """Keyword of the module's flat per-group gates (``None``: the module takes none, or
        splits them into several arguments, see ``spec.split_gates``)."""
        return self.spec.gate_keyword

    @property
    def stateful(self) -> bool:
        """The module keeps BatchNorm statistics (collection ``batch_stats``)."""
        return self.spec.stateful

    @property
    def mlm(self) -> bool:
        """The module is a masked language model (dropout via ``deterministic``)."""
        return self.spec.mlm

    @property
    def compactable(self) -> bool:
        """The model supports :meth:`compact`."""
        return self.spec.compact is not None

    def init(self, key: jax.Array, x: jax.Array) -> PyTree:
        """Variables (``{"params": ...}`` plus ``batch_stats`` when stateful) for inputs like
        ``x``."""
        return self.module.init({"params": key, "dropout": key}, x, **self._mode(False))

    def _mode(self, train: bool) -> dict[str, bool]:
        if self.mlm:
            return {"deterministic": not train}
        if self.stateful:
            return {"train": train}
        return {}

    def apply(
        self,
        variables: PyTree,
        x: jax.Array,
        *,
        train: bool,
        rng: jax.Array | None = None,
        gates: jax.Array | None = None,
    ) -> tuple[jax.Array, PyTree, jax.Array]:
        """Forward pass.

        Args:
          variables: ``{"params": ..., **collections}``.
          x: model inputs (images, features or token ids).
          train: training mode (batch statistics, dropout).
          rng: dropout key (MLM models in training mode).
          gates: optional ``(p,)`` group gates (the current group mask), passed to modules
            that accept them so that e.g. a pruned expert also leaves the routing.

        Returns:
          ``(outputs, updated_collections, aux_loss)``: ``updated_collections`` holds the new
          ``batch_stats`` (empty when not stateful), ``aux_loss`` the Switch load-balancing
          loss (0 for other models).
        """
        mutable = [*(["batch_stats"] if self.stateful and train else []), "intermediates"]
        rngs = {"dropout": rng} if rng is not None and train and self.mlm else {}
        gate_kwargs = self.spec.gate_kwargs(self.config, gates, self.kind)
        outputs, updates = self.module.apply(
            variables, x, **self._mode(train), **gate_kwargs, mutable=mutable, rngs=rngs
        )
        updates = dict(updates)
        intermediates = updates.pop("intermediates", {})
        return outputs, updates, total_aux_loss(intermediates)

    def group_ids(self, params: PyTree) -> tuple[PyTree, GroupLayout]:
        """Group ids over ``params`` (``variables["params"]``) and their layout."""
        return self.spec.group_ids(params, self.config, self.kind)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Forward FLOPs of one example of shape ``input_shape``."""
        return self.spec.flops(self.config, tuple(input_shape))

    def compact(self, variables: PyTree, keep: np.ndarray) -> tuple[Bound, PyTree]:
        """Remove the groups with ``keep[g] = False``; the smaller model computes what this one
        does with those groups' gates at 0."""
        if self.spec.compact is None:
            raise ValueError(f"model {self.name!r} does not support compaction")
        variables, config = self.spec.compact(variables, self.config, binary_keep(keep), self.kind)
        return dataclasses.replace(self, config=config), variables


def build_model(
    name: str,
    *,
    num_outputs: int,
    input_shape: tuple[int, ...],
    preset: str | None = None,
    kind: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Bound:
    """A registered model sized for a dataset.

    Args:
      name: a registered model name (:func:`~jaxprune.models.model_names`; the built-ins are
        :data:`MODEL_NAMES`).
      num_outputs: classes, regression targets or vocabulary size (MLM).
      input_shape: shape of one example (features, image ``(H, W, C)`` or ``(seq_len,)``).
      preset: architecture preset (``None``: the spec's default, :data:`DEFAULT_PRESETS`); the
        MLP also accepts comma-separated hidden widths such as ``"128,64"``.
      kind: group kind to prune (``None``: the spec's first, :data:`DEFAULT_KINDS`; Switch
        also takes ``"heads"`` and ``"experts+heads"``).
      overrides: config fields to override (e.g. ``{"dropout_rate": 0.0}``).

    Returns:
      :class:`Bound`.

    Raises:
      ValueError: an unknown name (the message lists the registered ones), a kind the model
        does not have, an unknown preset, a ``num_outputs`` below 1, or an ``input_shape`` the
        model cannot take (e.g. a flat vector for an image model; checked by the spec's
        ``flops``, which reads the example shape).
      TypeError: ``num_outputs`` not an int, ``input_shape`` not a tuple of ints, ``preset``
        not a str, ``overrides`` not a mapping.
    """
    spec = model_spec(name)
    num_outputs = check_positive_int(num_outputs, "num_outputs")
    input_shape = _example_shape(input_shape)
    if preset is not None and not isinstance(preset, str):
        raise TypeError(f"preset: expected a str or None, got {preset!r} ({type(preset).__name__})")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides: expected a mapping of config fields, got {overrides!r}")
    config = spec.make_config(
        spec.default_preset if preset is None else preset,
        num_outputs=num_outputs,
        input_shape=input_shape,
        **dict(overrides or {}),
    )
    bound = Bound(spec=spec, config=config, kind=spec.default_kind if kind is None else kind)
    spec.flops(config, input_shape)  # raises for an example shape the model cannot take
    return bound


def _example_shape(input_shape: Any) -> tuple[int, ...]:
    """``input_shape`` as a non-empty tuple of positive ints, else ``TypeError``/``ValueError``."""
    if isinstance(input_shape, str) or not isinstance(input_shape, Sequence) or not input_shape:
        raise TypeError(
            f"input_shape: expected the shape of one example, a non-empty tuple of ints such as "
            f"(64,) or (32, 32, 3), got {input_shape!r}"
        )
    return tuple(check_positive_int(v, f"input_shape[{i}]") for i, v in enumerate(input_shape))
