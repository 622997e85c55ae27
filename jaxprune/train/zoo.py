"""Models by name, bound to a dataset for training: one calling convention for the engine.

A :class:`Bound` model hides each architecture's keywords (``train``/``deterministic``,
BatchNorm collections, dropout streams, the Switch auxiliary loss, gate arguments) behind
``init`` and ``apply``, and carries its group structure and compaction, so the engine and every
pruning method treat all models alike.

Names (``MODEL_NAMES``) and their prunable group kinds:
  ``mlp`` (neurons), ``two_layer`` (neurons), ``cnn`` (filters; no compaction), ``vgg``
  (filters), ``resnet`` (inner filters), ``bert`` (heads), ``switch`` (experts, heads or
  experts+heads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.masks import GroupLayout, build_group_ids, filters
from jaxprune.models import bert, mlp, resnet, switch, two_layer, vgg
from jaxprune.models.cnn import SmallCNN
from jaxprune.models.moe import total_aux_loss

__all__ = ["MODEL_NAMES", "Bound", "build_model"]

PyTree = Any

MODEL_NAMES = ("mlp", "two_layer", "cnn", "vgg", "resnet", "bert", "switch")


@dataclasses.dataclass(frozen=True)
class Bound:
    """A model ready for the training engine.

    Attributes:
      name: registry name.
      module: the Flax module.
      config: the architecture config (the module itself for ``mlp``/``cnn``).
      kind: the group kind pruned (``"neurons"``, ``"filters"``, ``"heads"``, ...).
      gate_keyword: keyword of the module's per-group gates (``None``: gates are applied to the
        weights with the group mask only).
      stateful: the module keeps BatchNorm statistics (collection ``batch_stats``).
      mlm: the module is a masked language model (dropout via ``deterministic``).
      compact_fn: ``compact_fn(variables, config, keep) -> (variables, config)`` or ``None``.
      rebuild: ``rebuild(config) -> Bound`` after compaction.
    """

    name: str
    module: nn.Module
    config: Any
    kind: str
    gate_keyword: str | None
    stateful: bool
    mlm: bool
    compact_fn: Callable[[PyTree, Any, np.ndarray], tuple[PyTree, Any]] | None
    rebuild: Callable[[Any], Bound]
    group_fn: Callable[[PyTree, Any, str], tuple[PyTree, GroupLayout]]

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

    def _gates(self, gates: jax.Array | None) -> dict[str, Any]:
        if gates is None or self.gate_keyword is None:
            return {}
        if self.name == "switch":
            return switch.split_gates(self.config, gates, self.kind)
        return {self.gate_keyword: gates}

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
        outputs, updates = self.module.apply(
            variables, x, **self._mode(train), **self._gates(gates), mutable=mutable, rngs=rngs
        )
        updates = dict(updates)
        intermediates = updates.pop("intermediates", {})
        return outputs, updates, total_aux_loss(intermediates)

    def group_ids(self, params: PyTree) -> tuple[PyTree, GroupLayout]:
        """Group ids over ``params`` (``variables["params"]``) and their layout."""
        return self.group_fn(params, self.config, self.kind)

    def compact(self, variables: PyTree, keep: np.ndarray) -> tuple[Bound, PyTree]:
        """Remove the groups with ``keep[g] = False``; the smaller model computes what this one
        does with those groups' gates at 0."""
        if self.compact_fn is None:
            raise ValueError(f"model {self.name!r} does not support compaction")
        variables, config = self.compact_fn(variables, self.config, np.asarray(keep, bool))
        return self.rebuild(config), variables


def _mlp(config: mlp.MLP, kind: str) -> Bound:
    return Bound(
        "mlp",
        config,
        config,
        kind,
        "neuron_gates",
        False,
        False,
        lambda v, c, keep: mlp.compact_mlp(v, c, keep),
        lambda c: _mlp(c, kind),
        lambda params, c, _: mlp.mlp_group_ids(params, c),
    )


def _cnn_groups(params: PyTree, config: SmallCNN, _: str) -> tuple[PyTree, GroupLayout]:
    specs = [filters(rf"(^|params/)Conv_{i}$") for i in range(len(config.channels))]
    return build_group_ids(params, specs)


def _cnn(config: SmallCNN, kind: str) -> Bound:
    return Bound(
        "cnn", config, config, kind, None, False, False, None, lambda c: _cnn(c, kind), _cnn_groups
    )


def _architecture(
    name: str,
    module_type: type,
    gate: str,
    stateful: bool,
    mlm: bool,
    compact_fn: Callable | None,
    group_fn: Callable,
) -> Callable[[Any, str], Bound]:
    def bind(config: Any, kind: str) -> Bound:
        return Bound(
            name,
            module_type(config),
            config,
            kind,
            gate,
            stateful,
            mlm,
            compact_fn,
            lambda c: bind(c, kind),
            group_fn,
        )

    return bind


def _switch_compact(variables: PyTree, config: switch.SwitchConfig, keep: np.ndarray, kind: str):
    parts = switch.split_gates(config, jnp.asarray(keep), kind)
    as_bool = lambda gates: None if gates is None else [np.asarray(g, bool) for g in gates]  # noqa: E731
    return switch.compact(
        variables,
        config,
        head_keep=as_bool(parts["head_gates"]),
        expert_keep=as_bool(parts["expert_gates"]),
    )


def _switch(config: switch.SwitchConfig, kind: str) -> Bound:
    return Bound(
        "switch",
        switch.Switch(config),
        config,
        kind,
        "gates",
        False,
        True,
        lambda v, c, keep: _switch_compact(v, c, keep, kind),
        lambda c: _switch(c, kind),
        switch.group_ids,
    )


_BINDERS: dict[str, Callable[[Any, str], Bound]] = {
    "two_layer": _architecture(
        "two_layer",
        two_layer.TwoLayer,
        "neuron_gates",
        False,
        False,
        two_layer.compact_two_layer,
        two_layer.two_layer_group_ids,
    ),
    "vgg": _architecture(
        "vgg", vgg.VGG, "filter_gates", True, False, vgg.compact_vgg, vgg.vgg_group_ids
    ),
    "resnet": _architecture(
        "resnet",
        resnet.ResNet,
        "filter_gates",
        True,
        False,
        resnet.compact_resnet,
        resnet.resnet_group_ids,
    ),
    "bert": _architecture(
        "bert",
        bert.Bert,
        "head_gates",
        False,
        True,
        bert.compact_heads,
        lambda params, c, kind: bert.group_ids(params, kind),
    ),
}

#: Default architecture preset of each model name.
DEFAULT_PRESETS = {
    "mlp": "digits",
    "two_layer": "tiny",
    "cnn": "small",
    "vgg": "vgg16-bn-tiny",
    "resnet": "resnet-tiny",
    "bert": "tiny",
    "switch": "tiny",
}

DEFAULT_KINDS = {
    "mlp": "neurons",
    "two_layer": "neurons",
    "cnn": "filters",
    "vgg": "filters",
    "resnet": "filters",
    "bert": "heads",
    "switch": "experts",
}


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
      name: one of :data:`MODEL_NAMES`.
      num_outputs: classes, regression targets or vocabulary size (MLM).
      input_shape: shape of one example (features, image ``(H, W, C)`` or ``(seq_len,)``).
      preset: architecture preset (``None``: :data:`DEFAULT_PRESETS`); the MLP also accepts
        comma-separated hidden widths such as ``"128,64"``.
      kind: group kind to prune (``None``: :data:`DEFAULT_KINDS`; Switch also takes
        ``"heads"`` and ``"experts+heads"``).
      overrides: config fields to override (e.g. ``{"dropout_rate": 0.0}``).

    Returns:
      :class:`Bound`.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    preset = DEFAULT_PRESETS[name] if preset is None else preset
    kind = DEFAULT_KINDS[name] if kind is None else kind
    overrides = dict(overrides or {})
    valid_kinds = switch.KINDS if name == "switch" else (DEFAULT_KINDS[name],)
    if kind not in valid_kinds:
        raise ValueError(
            f"kind {kind!r} is not a group kind of {name}; expected one of {valid_kinds}"
        )
    if name == "mlp":
        if preset[:1].isdigit():
            hidden = tuple(int(w) for w in preset.split(","))
            return _mlp(mlp.MLP(hidden=hidden, num_outputs=num_outputs, **overrides), kind)
        return _mlp(mlp.from_preset(preset, num_outputs=num_outputs, **overrides), kind)
    if name == "cnn":
        if preset != "small":
            raise ValueError(f"unknown cnn preset {preset!r}; expected 'small'")
        return _cnn(SmallCNN(num_outputs=num_outputs, **overrides), kind)
    if name == "two_layer":
        config = two_layer.from_preset(
            preset, input_dim=int(np.prod(input_shape)), num_outputs=num_outputs, **overrides
        )
        return _BINDERS[name](config, kind)
    if name in ("vgg", "resnet"):
        lib = vgg if name == "vgg" else resnet
        return _BINDERS[name](lib.from_preset(preset, num_classes=num_outputs, **overrides), kind)
    lib = bert if name == "bert" else switch
    sizes = {"vocab_size": num_outputs, "max_length": max(input_shape[0], 2)}
    config = lib.from_preset(preset, **{**sizes, **overrides})
    return _switch(config, kind) if name == "switch" else _BINDERS[name](config, kind)
