"""Switch Transformer encoder for masked language modelling, with prunable heads and experts.

Layout (pre-LayerNorm, as T5/Switch): token + learned position embeddings, LayerNorm (as
BERT's, so that token identity is not swamped by the residual branches at initialization) →
``num_layers`` layers ``x += Attn(LN(x)); x += FFN(LN(x))`` → LN → tied-embedding MLM head
``logits = x Eᵀ + b``.  Layer ``l`` uses a :class:`~jaxprune.models.moe.SwitchFFN` when
``l % moe_every == moe_every - 1`` (every other layer, 1, 3, 5, ..., for ``moe_every = 2``, as
in the paper and its released checkpoints) and a dense ReLU FFN otherwise.

Parameter paths: ``params/layer_{l}/attention/{query,key,value,out}`` (a
:class:`~jaxprune.models.attention.SelfAttention`), ``params/layer_{l}/moe/{router,experts}``
or ``params/layer_{l}/ffn/{wi,wo}``, ``params/token_embed``, ``params/position_embed``.

Groups (:func:`group_ids`): kind ``"heads"`` numbers the heads layer by layer, ``"experts"``
the experts MoE layer by MoE layer, and ``"experts+heads"`` is all expert groups followed by
all head groups (one numbering, so a mask over it is ``concatenate([experts, heads])``).
:func:`split_gates` turns such a mask into the ``head_gates`` / ``expert_gates`` arguments and
:func:`compact` removes what it zeroes (:func:`compact_per_layer` takes per-layer masks).
The model spec :data:`SPEC` is registered as ``"switch"``.

Pruning equalities (see :mod:`jaxprune.models.moe` for why): a head gate 0 ≡ zeroing the head's
weights (``apply_group_mask``) ≡ the compacted model; an expert gate 0 ≡ the compacted model
(the expert is excluded from routing), while zeroing an expert's weights keeps routing tokens
to it.

References:
  Fedus, Zoph & Shazeer 2022, "Switch Transformers", JMLR 23: Sections 2.1–2.2 (Switch layer,
  capacity, load-balancing loss), Section 2.4, Table 9 (model sizes), Appendix (every other FFN
  is a Switch layer).
  Devlin et al. 2019, "BERT", Section 3.1 (masked LM with tied input/output embeddings).
  Michel et al. 2019, "Are sixteen heads really better than one?" (head gates).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_choice, check_positive_int
from jaxprune.masks.compact import keep_along
from jaxprune.masks.groups import build_group_ids, experts, heads
from jaxprune.masks.layout import GroupLayout
from jaxprune.models.attention import SelfAttention, head_keep_targets
from jaxprune.models.base import (
    ModelSpec,
    binary_keep,
    check_tokens,
    sequence_length,
    sequence_sizes,
    warn_renamed,
)
from jaxprune.models.moe import SwitchFFN, check_moe_fields, compact_experts
from jaxprune.typing import PyTree

__all__ = [
    "KINDS",
    "PRESETS",
    "SPEC",
    "Switch",
    "SwitchConfig",
    "compact",
    "compact_per_layer",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
    "split_gates",
]

KINDS = ("experts", "heads", "experts+heads")


@dataclasses.dataclass(frozen=True)
class SwitchConfig:
    """Sizes of a :class:`Switch` encoder.

    Attributes:
      vocab_size: vocabulary size ``V``.
      hidden_size: model width ``d``.
      num_layers: number of layers ``L``.
      num_heads: attention heads ``H`` (divides ``d``; head width ``d / H``).
      intermediate_size: hidden width ``I`` of the dense FFNs and of every expert.
      num_experts: experts ``E`` per Switch layer; the capacity
        ``ceil(capacity_factor · T / E)`` always divides by this original count.
      max_length: longest sequence (learned position embeddings).
      capacity_factor: the paper's capacity factor (> 0).
      moe_every: layer ``l`` is a Switch layer iff ``l % moe_every == moe_every - 1``.
      dropout_rate: dropout on embeddings, residual branches and attention probabilities.
      load_balance_coef: ``α`` of the auxiliary loss.
      layer_heads: heads kept in each layer (``L`` entries) after compaction; None = ``H`` each.
      layer_experts: experts kept in each Switch layer after compaction; None = ``E`` each.
      dtype: computation dtype (parameters are float32).

    Raises:
      ValueError: a size that is not a positive int, ``H`` not dividing ``d``, no Switch layer,
        ``capacity_factor <= 0``, a dropout rate outside ``[0, 1)``, or per-layer counts of the
        wrong length or outside ``[1, H]`` / ``[1, E]``.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_experts: int
    max_length: int
    capacity_factor: float = 1.5
    moe_every: int = 2
    dropout_rate: float = 0.0
    load_balance_coef: float = 1e-2
    layer_heads: tuple[int, ...] | None = None
    layer_experts: tuple[int, ...] | None = None
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_length",
            "moe_every",
        ):
            check_positive_int(getattr(self, name), name)
        check_moe_fields(self.num_experts, self.capacity_factor)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads: {self.num_heads} does not divide hidden_size {self.hidden_size}; "
                "expected a divisor of hidden_size"
            )
        if self.moe_every > self.num_layers:
            raise ValueError(
                f"moe_every: {self.moe_every} > num_layers {self.num_layers} leaves no Switch "
                f"layer; expected 1 <= moe_every <= num_layers"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate: expected 0 <= rate < 1, got {self.dropout_rate}")
        if self.load_balance_coef < 0:
            raise ValueError(f"load_balance_coef: expected >= 0, got {self.load_balance_coef}")
        for name, count, most in (
            ("layer_heads", self.num_layers, self.num_heads),
            ("layer_experts", len(self.moe_layers), self.num_experts),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(value)
            if len(value) != count or not all(
                isinstance(v, (int, np.integer)) and 1 <= v <= most for v in value
            ):
                raise ValueError(
                    f"{name}: expected {count} ints in [1, {most}], got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, tuple(int(v) for v in value))

    @property
    def head_dim(self) -> int:
        """Width of each head, ``hidden_size // num_heads``."""
        return self.hidden_size // self.num_heads

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """Indices of the Switch (MoE) layers."""
        return tuple(i for i in range(self.num_layers) if i % self.moe_every == self.moe_every - 1)

    def heads_in(self, layer: int) -> int:
        """Number of heads of layer ``layer``."""
        return self.num_heads if self.layer_heads is None else self.layer_heads[layer]

    def experts_in(self, moe_index: int) -> int:
        """Number of experts of the ``moe_index``-th Switch layer."""
        return self.num_experts if self.layer_experts is None else self.layer_experts[moe_index]


PRESETS: dict[str, SwitchConfig] = {
    # CPU-sized, for tests.
    "tiny": SwitchConfig(
        vocab_size=1000,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        num_experts=4,
        max_length=64,
    ),
    # CPU benchmarks and small experiments.
    "small": SwitchConfig(
        vocab_size=8192,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        intermediate_size=1024,
        num_experts=8,
        max_length=128,
    ),
    # Switch-Base-128 as released (HF google/switch-base-128: d 768, 12 heads of 64, d_ff 3072
    # ReLU, 12 encoder layers, every other FFN sparse, 32128 SentencePiece tokens).  The paper's
    # Table 9 lists d_ff 2048 with GEGLU for Switch-Base; relative position biases of T5 are
    # replaced by learned absolute positions up to 512.
    "base": SwitchConfig(
        vocab_size=32128,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        num_experts=128,
        max_length=512,
    ),
}


def from_preset(name: str, **overrides: Any) -> SwitchConfig:
    """The preset configuration ``name`` (``"tiny"``, ``"small"``, ``"base"``), with fields
    replaced by ``overrides`` (validated again)."""
    if name not in PRESETS:
        raise ValueError(f"name: unknown Switch preset {name!r}; expected one of {list(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> SwitchConfig:
    """The preset ``preset`` for token sequences of shape ``input_shape = (T,)``: vocabulary
    ``num_outputs`` and ``max(T, 2)`` positions (``overrides`` win over both)."""
    return from_preset(preset, **{**sequence_sizes(num_outputs, input_shape), **overrides})


class _DenseFFN(nn.Module):
    """``relu(x W_i + b_i) W_o + b_o`` (the non-Switch layers)."""

    hidden_size: int
    intermediate_size: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(nn.Dense(self.intermediate_size, dtype=self.dtype, name="wi")(x))
        return nn.Dense(self.hidden_size, dtype=self.dtype, name="wo")(h)


class _Layer(nn.Module):
    """One pre-LN encoder layer: ``x += Attn(LN(x)); x += FFN(LN(x))``."""

    config: SwitchConfig
    index: int

    @nn.compact
    def __call__(self, x, mask, head_gates, expert_gates, deterministic):
        c = self.config
        drop = nn.Dropout(c.dropout_rate)
        h = nn.LayerNorm(dtype=c.dtype, name="ln_attention")(x)
        h = SelfAttention(
            num_heads=c.heads_in(self.index),
            head_dim=c.head_dim,
            dropout_rate=c.dropout_rate,
            dtype=c.dtype,
            name="attention",
        )(h, mask=mask, head_gates=head_gates, deterministic=deterministic)
        x = x + drop(h, deterministic=deterministic)
        h = nn.LayerNorm(dtype=c.dtype, name="ln_ffn")(x)
        if self.index in c.moe_layers:
            moe_index = c.moe_layers.index(self.index)
            h = SwitchFFN(
                num_experts=c.experts_in(moe_index),
                hidden_size=c.hidden_size,
                intermediate_size=c.intermediate_size,
                capacity_factor=c.capacity_factor,
                capacity_experts=c.num_experts,
                load_balance_coef=c.load_balance_coef,
                dtype=c.dtype,
                name="moe",
            )(h, token_mask=mask, expert_gates=expert_gates)
        else:
            h = _DenseFFN(c.hidden_size, c.intermediate_size, c.dtype, name="ffn")(h)
        return x + drop(h, deterministic=deterministic)


class Switch(nn.Module):
    """Switch Transformer encoder with a tied-embedding masked-LM head.

    Attributes:
      config: the :class:`SwitchConfig`.

    References:
      Switch Transformers, Sections 2.1–2.2; BERT, Section 3.1 (MLM head).
    """

    config: SwitchConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        *,
        mask: jax.Array | None = None,
        head_gates: Sequence[jax.Array] | jax.Array | None = None,
        expert_gates: Sequence[jax.Array] | jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """MLM logits of a batch of token sequences.

        Args:
          tokens: ``(n, T)`` int token ids, ``T <= max_length``.
          mask: optional ``(n, T)`` boolean padding mask (True = real token): padding is not
            attended to and not routed to experts.
          head_gates: optional per-layer head gates, ``head_gates[l]`` of shape
            ``(heads_in(l),)`` (a list, or an ``(L, H)`` array); differentiable.
          expert_gates: optional per-Switch-layer expert gates, ``expert_gates[k]`` of shape
            ``(experts_in(k),)`` (a list, or an array); a gate of exactly 0 also removes the
            expert from routing.
          deterministic: False applies dropout (needs a ``"dropout"`` PRNG stream).

        Returns:
          ``(n, T, V)`` float32 logits.  Each Switch layer sows ``aux_loss`` and
          ``dropped_tokens`` in ``intermediates``; apply with ``mutable=["intermediates"]`` and
          sum with :func:`jaxprune.models.moe.total_aux_loss`.
        """
        c = self.config
        check_tokens(tokens, c.vocab_size, c.max_length)
        for name, gates, count in (
            ("head_gates", head_gates, c.num_layers),
            ("expert_gates", expert_gates, len(c.moe_layers)),
        ):
            if gates is not None and len(gates) != count:
                raise ValueError(f"{name}: expected {count} per-layer entries, got {len(gates)}")
        init = nn.initializers.normal(0.02)
        embed = nn.Embed(c.vocab_size, c.hidden_size, embedding_init=init, name="token_embed")
        positions = self.param("position_embed", init, (c.max_length, c.hidden_size))
        x = embed(tokens) + positions[: tokens.shape[1]]
        x = nn.LayerNorm(name="ln_embed")(x)
        x = nn.Dropout(c.dropout_rate)(x.astype(c.dtype), deterministic=deterministic)
        for i in range(c.num_layers):
            moe_index = c.moe_layers.index(i) if i in c.moe_layers else None
            x = _Layer(c, i, name=f"layer_{i}")(
                x,
                mask,
                None if head_gates is None else head_gates[i],
                None if expert_gates is None or moe_index is None else expert_gates[moe_index],
                deterministic,
            )
        x = nn.LayerNorm(dtype=c.dtype, name="ln_final")(x)
        bias = self.param("mlm_bias", nn.initializers.zeros, (c.vocab_size,))
        return embed.attend(x.astype(jnp.float32)) + bias


def _specs(config: SwitchConfig, kind: str) -> list:
    check_choice(kind, KINDS, "kind")
    specs = []
    if "experts" in kind:
        specs += [
            experts(rf"(^|/)layer_{i}/moe/experts$", config.experts_in(k))
            for k, i in enumerate(config.moe_layers)
        ]
    if "heads" in kind:
        specs += [
            heads(rf"(^|/)layer_{i}/attention$", config.heads_in(i))
            for i in range(config.num_layers)
        ]
    return specs


def group_ids(
    variables: PyTree, config: SwitchConfig, kind: str = "experts"
) -> tuple[PyTree, GroupLayout]:
    """Group ids and layout of a :class:`Switch` model's experts and/or heads.

    Groups are numbered in layer order: ``"experts"`` — expert ``e`` of the ``k``-th Switch
    layer (all of its ``wi[e], bi[e], wo[e], bo[e]``; the router is ungrouped);
    ``"heads"`` — head ``h`` of layer ``l`` (its query/key/value kernel and bias slices and
    out-kernel rows); ``"experts+heads"`` — all expert groups, then all head groups.

    Args:
      variables: variables or params of the model (shapes only are read).
      config: the model's config.
      kind: one of :data:`KINDS`.

    Returns:
      ``(group_ids, layout)`` from :func:`jaxprune.masks.groups.build_group_ids`; one layout
      layer per attention or Switch module.

    References:
      Michel et al. 2019, Section 2 (heads); Switch Transformers, Section 2.1 (experts).
    """
    return build_group_ids(variables, _specs(config, kind))


def split_gates(config: SwitchConfig, mask: Any, kind: str) -> dict[str, list[jax.Array] | None]:
    """Per-layer ``head_gates`` / ``expert_gates`` of a mask over :func:`group_ids`'s groups.

    Args:
      config: the model's config.
      mask: ``(p,)`` mask or gates in the numbering of ``group_ids(variables, config, kind)``
        (a NumPy array gives NumPy pieces).
      kind: one of :data:`KINDS`.

    Returns:
      ``{"head_gates": [...] or None, "expert_gates": [...] or None}``, ready to pass as
      keyword arguments of :meth:`Switch.__call__` (a kind's gates are None when absent).
    """
    sizes = {
        "experts": [config.experts_in(k) for k in range(len(config.moe_layers))],
        "heads": [config.heads_in(i) for i in range(config.num_layers)],
    }
    check_choice(kind, KINDS, "kind")
    parts = kind.split("+")
    total = sum(sum(sizes[part]) for part in parts)
    mask = mask if isinstance(mask, np.ndarray) else jnp.asarray(mask)
    if mask.shape != (total,):
        raise ValueError(f"mask: expected shape ({total},) for kind {kind!r}, got {mask.shape}")
    out: dict[str, list[jax.Array] | None] = {"head_gates": None, "expert_gates": None}
    start = 0
    for part in parts:
        gates = []
        for size in sizes[part]:
            gates.append(mask[start : start + size])
            start += size
        out[f"{part[:-1]}_gates"] = gates
    return out


def compact(
    variables: PyTree,
    config: SwitchConfig,
    keep: Any = None,
    kind: str = "experts",
    *,
    head_keep: Sequence[Any] | None = None,
    expert_keep: Sequence[Any] | None = None,
) -> tuple[PyTree, SwitchConfig]:
    """Remove the groups of ``kind`` (heads and/or experts) where ``keep`` is False.

    The result equals the original model applied with the gates ``split_gates(config, keep,
    kind)`` (see :func:`compact_per_layer`).

    Args:
      variables: the model's variables (``{"params": ...}``).
      config: its config.
      keep: boolean ``(p,)`` in the numbering of ``group_ids(variables, config, kind)``; every
        layer keeps at least one head and every Switch layer at least one expert.
      kind: one of :data:`KINDS`.
      head_keep, expert_keep: the former per-layer call ``compact(variables, config,
        head_keep=..., expert_keep=...)``, deprecated (``DeprecationWarning``; it forwards to
        :func:`compact_per_layer`) and not combined with ``keep``.

    Returns:
      ``(variables, config)`` of the smaller model.
    """
    if head_keep is not None or expert_keep is not None:
        if keep is not None:
            raise TypeError("keep: expected keep or head_keep/expert_keep, not both")
        warn_renamed("switch.compact(..., head_keep=, expert_keep=)", compact_per_layer)
        return compact_per_layer(variables, config, head_keep=head_keep, expert_keep=expert_keep)
    if keep is None:
        raise TypeError("keep: expected a boolean (p,) keep mask, got None")
    parts = split_gates(config, binary_keep(keep), kind)
    return compact_per_layer(
        variables, config, head_keep=parts["head_gates"], expert_keep=parts["expert_gates"]
    )


def compact_per_layer(
    variables: PyTree,
    config: SwitchConfig,
    *,
    head_keep: Sequence[Any] | None = None,
    expert_keep: Sequence[Any] | None = None,
) -> tuple[PyTree, SwitchConfig]:
    """Remove the heads and experts not kept, given per-layer keep masks.

    The result, applied with the returned config, equals the original model applied with
    ``head_gates = head_keep`` and ``expert_gates = expert_keep`` (as 0/1 floats): per-expert
    capacity is unchanged and removed experts no longer take part in routing.

    Args:
      variables: the model's variables (``{"params": ...}``).
      config: its config.
      head_keep: per layer, a boolean ``(heads_in(l),)`` array (True = keep; at least one).
      expert_keep: per Switch layer, a boolean ``(experts_in(k),)`` array (at least one).

    Returns:
      ``(variables, config)`` of the smaller model.

    References:
      Michel et al. 2019, Section 4 (pruned heads removed); Switch Transformers, Section 2.1.
    """
    layer_heads = [config.heads_in(i) for i in range(config.num_layers)]
    layer_experts = [config.experts_in(k) for k in range(len(config.moe_layers))]
    if head_keep is not None:
        if len(head_keep) != config.num_layers:
            raise ValueError(
                f"head_keep: expected {config.num_layers} per-layer masks, got {len(head_keep)}"
            )
        for i, keep in enumerate(head_keep):
            keep = binary_keep(keep, f"head_keep[{i}]")
            variables = keep_along(
                variables, head_keep_targets(f"params/layer_{i}/attention"), keep
            )
            layer_heads[i] = int(np.sum(np.asarray(keep, bool)))
    if expert_keep is not None:
        if len(expert_keep) != len(config.moe_layers):
            raise ValueError(
                f"expert_keep: expected {len(config.moe_layers)} per-Switch-layer masks, got "
                f"{len(expert_keep)}"
            )
        for k, (i, keep) in enumerate(zip(config.moe_layers, expert_keep)):
            keep = binary_keep(keep, f"expert_keep[{k}]")
            variables = compact_experts(variables, f"params/layer_{i}/moe", keep)
            layer_experts[k] = int(np.sum(np.asarray(keep, bool)))
    return variables, dataclasses.replace(
        config, layer_heads=tuple(layer_heads), layer_experts=tuple(layer_experts)
    )


def flops(config: SwitchConfig, input_shape: tuple[int] | int) -> int:
    """FLOPs of one forward pass of one sequence: 2 × multiply-accumulates.

    Counted: q/k/v/out projections ``4 T d (H_l Dh)``, scores and context ``2 T² H_l Dh``, dense
    FFNs ``2 T d I``, Switch layers ``T d E_k`` (router) + ``2 T d I`` (top-1: each token
    through exactly one expert, whatever the capacity or drops), and the MLM head ``T d V``.
    Not counted: embeddings lookups, LayerNorms, softmaxes, biases, activations and the
    dispatch/combine einsums (data movement of the one-hot routing).

    Args:
      config: the model's config (per-layer heads/experts after compaction are used).
      input_shape: ``(T,)``, the shape of one token sequence (the int ``T`` works too).

    Returns:
      FLOPs per example (int).

    References:
      Switch Transformers, Section 2 and Table 9 ("FLOPs per sequence": a Switch layer costs
      one expert per token, like the dense FFN it replaces, plus the router).
    """
    seq_len = sequence_length(input_shape)
    t, d, i, dh = seq_len, config.hidden_size, config.intermediate_size, config.head_dim
    macs = t * d * config.vocab_size
    for layer in range(config.num_layers):
        width = config.heads_in(layer) * dh
        macs += 4 * t * d * width + 2 * t * t * width + 2 * t * d * i
        if layer in config.moe_layers:
            macs += t * d * config.experts_in(config.moe_layers.index(layer))
    return 2 * macs


SPEC = ModelSpec(
    name="switch",
    module=Switch,
    presets=PRESETS,
    default_preset="tiny",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(16,),
    split_gates=split_gates,
    mlm=True,
)
"""The ``"switch"`` model spec (default kind ``"experts"``)."""
