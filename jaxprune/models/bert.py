"""BERT encoder for masked language modelling, with prunable (gated, compactable) heads.

Architecture (Devlin et al. 2019, Section 3; post-LN Transformer encoder of Vaswani et al.
2017): token + position + token-type embeddings, LayerNorm, dropout; ``num_layers`` encoder
layers ``x = LN(x + Attn(x)); x = LN(x + W_2 GELU(W_1 x))``; the MLM head
``logits = LN(GELU(W_t x)) Eᵀ + b`` whose output projection is the *tied* token embedding
matrix ``E`` (``nn.Embed.attend``) plus an output bias.  There is no pooler / NSP head.

Parameter layout (under ``"params"``)::

  token_embed/embedding (V, d)     position_embed/embedding (P, d)   type_embed/embedding (2, d)
  embed_norm/{scale,bias} (d,)
  layer_{l}/attention/{query,key,value}/kernel (d, H_l, Dh), bias (H_l, Dh)
  layer_{l}/attention/out/kernel (H_l, Dh, d), bias (d,)
  layer_{l}/attention_norm, layer_{l}/intermediate (d, I), layer_{l}/output (I, d),
  layer_{l}/output_norm
  mlm_transform (d, d), mlm_norm, mlm_bias (V,)

References:
  Devlin et al. 2019, "BERT: Pre-training of deep bidirectional transformers", Sections 3 and
  A.2 (architecture, masked LM), Appendix A.1.
  Vaswani et al. 2017, "Attention is all you need", Section 3.
  Michel et al. 2019, "Are sixteen heads really better than one?", Section 2 (head gates).
  Press & Wolf 2017, "Using the output embedding to improve language models" (tied embeddings).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune._validation import check_choice, check_positive_int
from jaxprune.masks.compact import keep_along
from jaxprune.masks.groups import build_group_ids, heads
from jaxprune.masks.layout import GroupLayout
from jaxprune.models.attention import SelfAttention, head_keep_targets
from jaxprune.models.base import (
    ModelSpec,
    binary_keep,
    check_float_dtype,
    check_tokens,
    deprecated_alias,
    sequence_length,
    sequence_sizes,
    warn_renamed,
)
from jaxprune.typing import PyTree

__all__ = [
    "KINDS",
    "PRESETS",
    "SPEC",
    "Bert",
    "BertConfig",
    "attention_flops",
    "compact",
    "compact_heads",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
    "mlm_loss",
    "parameter_count",
]

KINDS = ("heads",)
_LAYER_NORM_EPSILON = 1e-12  # BERT's value (Devlin et al. 2019, reference implementation).
_EMBED_INIT = nn.initializers.truncated_normal(stddev=0.02)  # Devlin et al. 2019, App. A.2.


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes of a BERT encoder.

    Attributes:
      vocab_size: ``V``, number of token ids.
      hidden_size: ``d``, model width; must be divisible by ``num_heads``.
      num_layers: ``L``, number of encoder layers.
      num_heads: ``H``, heads per layer of the dense model; fixes ``head_dim = d // H``.
      intermediate_size: ``I``, width of the feed-forward layer.
      max_length: ``P``, number of position embeddings (longest sequence).
      dropout_rate: dropout on embeddings, attention probabilities and residual branches.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters are float32.
      type_vocab_size: number of token types (segments).
      heads_per_layer: ``(L,)`` heads kept in each layer after compaction, each in ``[1, H]``;
        ``None`` means ``H`` everywhere.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_length: int
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32
    type_vocab_size: int = 2
    heads_per_layer: tuple[int, ...] | None = None

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_length",
            "type_vocab_size",
        ):
            check_positive_int(getattr(self, name), name)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads: {self.num_heads} must divide hidden_size {self.hidden_size}"
            )
        if isinstance(self.dropout_rate, bool) or not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate: expected a float in [0, 1), got {self.dropout_rate!r}")
        check_float_dtype(self.dtype)
        if self.heads_per_layer is not None:
            counts = self.heads_per_layer
            if (
                isinstance(counts, str)
                or not isinstance(counts, Sequence)
                or len(counts) != self.num_layers
            ):
                raise ValueError(
                    f"heads_per_layer: expected {self.num_layers} head counts, got {counts!r}"
                )
            for count in counts:
                check_positive_int(count, "heads_per_layer")
                if count > self.num_heads:
                    raise ValueError(
                        f"heads_per_layer: {counts!r} has a count above num_heads {self.num_heads}"
                    )
            object.__setattr__(self, "heads_per_layer", tuple(int(c) for c in counts))

    @property
    def head_dim(self) -> int:
        """``Dh = hidden_size // num_heads``."""
        return self.hidden_size // self.num_heads

    @property
    def layer_heads(self) -> tuple[int, ...]:
        """Number of heads of each layer, ``(L,)``."""
        return self.heads_per_layer or (self.num_heads,) * self.num_layers


PRESETS: dict[str, BertConfig] = {
    "tiny": BertConfig(
        vocab_size=1000,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_length=64,
    ),
    "small": BertConfig(
        vocab_size=8192,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        intermediate_size=1024,
        max_length=128,
    ),
    "base": BertConfig(
        vocab_size=30522,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        max_length=512,
    ),
}


def from_preset(name: str, **overrides: Any) -> BertConfig:
    """The preset ``name`` (``"tiny"``, ``"small"``, ``"base"``), with fields overridden.

    ``"base"`` is BERT-Base (Devlin et al. 2019, Section 3: L=12, H=768, A=12).
    """
    if name not in PRESETS:
        raise ValueError(f"name: unknown BERT preset {name!r}; expected one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> BertConfig:
    """The preset ``preset`` for token sequences of shape ``input_shape = (T,)``: vocabulary
    ``num_outputs`` and ``max(T, 2)`` positions (``overrides`` win over both)."""
    return from_preset(preset, **{**sequence_sizes(num_outputs, input_shape), **overrides})


class EncoderLayer(nn.Module):
    """Post-LN Transformer encoder layer: ``(n, T, d) -> (n, T, d)``.

    References:
      Vaswani et al. 2017, Section 3.1; Devlin et al. 2019, Section 3.
    """

    config: BertConfig
    num_heads: int

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None,
        head_gates: jax.Array | None,
        deterministic: bool,
    ) -> jax.Array:
        c = self.config
        dropout = nn.Dropout(c.dropout_rate, deterministic=deterministic)
        norm = lambda name: nn.LayerNorm(_LAYER_NORM_EPSILON, dtype=c.dtype, name=name)  # noqa: E731
        attended = SelfAttention(
            self.num_heads, c.head_dim, c.dropout_rate, c.dtype, name="attention"
        )(x, mask=mask, head_gates=head_gates, deterministic=deterministic)
        x = norm("attention_norm")(x + dropout(attended))
        hidden = nn.Dense(c.intermediate_size, dtype=c.dtype, name="intermediate")(x)
        hidden = nn.Dense(c.hidden_size, dtype=c.dtype, name="output")(
            jax.nn.gelu(hidden, approximate=False)
        )
        return norm("output_norm")(x + dropout(hidden))


def _split_heads(config: BertConfig, values: Any, name: str) -> list[Any]:
    """Per-layer slices of ``(L, H)`` or flat ``(Σ_l H_l,)`` per-head ``values``."""
    counts = config.layer_heads
    if values is None:
        return [None] * len(counts)
    gates = values if isinstance(values, np.ndarray) else jnp.asarray(values)
    if len(set(counts)) == 1 and gates.shape == (len(counts), counts[0]):
        return list(gates)
    if gates.shape == (sum(counts),):
        split = np.split if isinstance(gates, np.ndarray) else jnp.split
        return list(split(gates, np.cumsum(counts)[:-1]))
    uniform = f"({len(counts)}, {counts[0]}) or " if len(set(counts)) == 1 else ""
    raise ValueError(
        f"{name}: expected shape {uniform}({sum(counts)},) (layers' heads in order), "
        f"got {gates.shape}"
    )


class Bert(nn.Module):
    """BERT masked language model: ``(n, T)`` token ids to ``(n, T, V)`` logits.

    Attributes:
      config: a :class:`BertConfig`.

    References:
      Devlin et al. 2019, Section 3 (input representation, encoder) and Section 3.1 (masked LM).
    """

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        *,
        token_types: jax.Array | None = None,
        mask: jax.Array | None = None,
        head_gates: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """MLM logits.

        Args:
          tokens: ``(n, T)`` int token ids, ``T <= max_length``.
          token_types: optional ``(n, T)`` segment ids (default all 0).
          mask: optional ``(n, T)`` bool padding mask, True = real token (may be attended).
          head_gates: optional per-head gates ``ξ``: ``(L, H)`` when every layer has ``H``
            heads, or ``(Σ_l H_l,)`` in layer order (the numbering of :func:`group_ids`).
            Gate 0 removes exactly that head; gates are differentiable.
          deterministic: if False, apply dropout (needs a ``"dropout"`` PRNG stream).

        Returns:
          ``(n, T, V)`` logits in the computation dtype.
        """
        c = self.config
        check_tokens(tokens, c.vocab_size, c.max_length)
        length = tokens.shape[1]
        embed = lambda size, name: nn.Embed(  # noqa: E731
            size, c.hidden_size, dtype=c.dtype, embedding_init=_EMBED_INIT, name=name
        )
        token_embed = embed(c.vocab_size, "token_embed")
        if token_types is None:
            token_types = jnp.zeros_like(tokens)
        x = (
            token_embed(tokens)
            + embed(c.max_length, "position_embed")(jnp.arange(length))[None]
            + embed(c.type_vocab_size, "type_embed")(token_types)
        )
        x = nn.LayerNorm(_LAYER_NORM_EPSILON, dtype=c.dtype, name="embed_norm")(x)
        x = nn.Dropout(c.dropout_rate, deterministic=deterministic)(x)
        for layer, (count, gates) in enumerate(
            zip(c.layer_heads, _split_heads(c, head_gates, "head_gates"))
        ):
            x = EncoderLayer(c, count, name=f"layer_{layer}")(
                x, mask=mask, head_gates=gates, deterministic=deterministic
            )
        x = jax.nn.gelu(
            nn.Dense(c.hidden_size, dtype=c.dtype, name="mlm_transform")(x), approximate=False
        )
        x = nn.LayerNorm(_LAYER_NORM_EPSILON, dtype=c.dtype, name="mlm_norm")(x)
        bias = self.param("mlm_bias", nn.initializers.zeros_init(), (c.vocab_size,), jnp.float32)
        return token_embed.attend(x) + bias.astype(c.dtype)


def mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean cross-entropy over the masked positions.

    ``Σ w_i CE(logits_i, labels_i) / max(Σ w_i, 1e-8)`` in at least float32 (0 when no weight
    is set).

    Args:
      logits: ``(n, T, V)``.
      labels: ``(n, T)`` int target ids (any value where the weight is 0).
      weights: ``(n, T)``, 1 at the masked positions to predict, 0 elsewhere.

    Returns:
      Scalar loss.

    References:
      Devlin et al. 2019, Section 3.1 (Task #1: masked LM).
    """
    logits = jnp.asarray(logits)
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(dtype), labels)
    weights = jnp.asarray(weights, dtype)
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-8)


def _params_root(params: PyTree) -> PyTree:
    return params["params"] if "params" in params else params


def group_ids(
    variables: PyTree, config: BertConfig | None = None, kind: str = "heads"
) -> tuple[PyTree, GroupLayout]:
    """Group ids of a :class:`Bert` parameter tree for a structure kind.

    ``kind="heads"``: one group per attention head, numbered layer by layer (layer 0's heads
    first), each head's query/key/value columns, biases and output-kernel rows
    (``heads(..., layout="flax")``).  Head counts are read from the shapes, so compacted
    models work too.

    Args:
      variables: ``variables`` or ``variables["params"]`` of a :class:`Bert` (shapes suffice).
      config: the model's config; not needed (the head counts are read from the shapes), so
        ``None`` is accepted.  The former call ``group_ids(params, kind)`` still works for one
        release, with a ``DeprecationWarning``.
      kind: one of :data:`KINDS`.

    Returns:
      ``(group_ids, layout)`` from :func:`jaxprune.masks.groups.build_group_ids`; one layout
      layer per encoder layer.

    References:
      Michel et al. 2019, Section 2 (head masks); Chen et al. (2023), App. E.3.
    """
    if isinstance(config, str):
        warn_renamed("bert.group_ids(params, kind)", group_ids)
        config, kind = None, config
    check_choice(kind, KINDS, "kind")
    root = _params_root(variables)
    num_layers = sum(1 for name in root if name.startswith("layer_"))
    specs = [
        heads(
            rf"(^|/)layer_{layer}/attention$",
            root[f"layer_{layer}"]["attention"]["query"]["kernel"].shape[1],
            layout="flax",
        )
        for layer in range(num_layers)
    ]
    return build_group_ids(variables, specs)


def compact(
    variables: PyTree, config: BertConfig, keep: Any, kind: str = "heads"
) -> tuple[PyTree, BertConfig]:
    """Physically remove the heads not kept.

    The result computes exactly what the original model computes with the removed heads' gates
    at 0 (or their weights zeroed by ``apply_group_mask``).

    Args:
      variables: ``{"params": ...}`` of a :class:`Bert` with ``config``.
      config: its config.
      keep: boolean keep mask, ``(L, H)`` when every layer has ``H`` heads or ``(Σ_l H_l,)`` in
        group order; at least one head per layer.
      kind: ``"heads"`` (:data:`KINDS`).

    Returns:
      ``(variables, config)`` of the smaller model (``heads_per_layer`` set).

    References:
      Michel et al. 2019, Section 4 (pruning heads).
    """
    check_choice(kind, KINDS, "kind")
    keep = binary_keep(keep)
    per_layer = _split_heads(config, keep, "keep")
    empty = [layer for layer, k in enumerate(per_layer) if not k.any()]
    if empty:
        raise ValueError(f"keep: layers {empty} keep no head; keep at least one per layer")
    for layer, k in enumerate(per_layer):
        variables = keep_along(variables, head_keep_targets(f"params/layer_{layer}/attention"), k)
    kept = tuple(int(k.sum()) for k in per_layer)
    return variables, dataclasses.replace(config, heads_per_layer=kept)


def attention_flops(config: BertConfig, seq_len: int) -> int:
    """FLOPs of the attention blocks for one sequence of length ``T`` (2 per multiply-add).

    Per layer with ``h`` heads of width ``Dh``: query/key/value projections ``3·2·T·d·h·Dh``,
    scores ``2·T²·h·Dh``, context ``2·T²·h·Dh``, output projection ``2·T·h·Dh·d``.  These are the
    FLOPs that scale with the number of heads; biases, softmax and scaling are not counted.

    References:
      Vaswani et al. 2017, Section 3.2; Kaplan et al. 2020, Section 2.1 (FLOP accounting).
    """
    check_positive_int(seq_len, "seq_len")
    d, t, dh = config.hidden_size, seq_len, config.head_dim
    return sum(8 * t * d * h * dh + 4 * t * t * h * dh for h in config.layer_heads)


def flops(config: BertConfig, input_shape: tuple[int] | int) -> int:
    """Forward FLOPs of the MLM model for one sequence of length ``T``: 2 per multiply-add.

    ``attention_flops + L·(2·2·T·d·I) + 2·T·d² + 2·T·d·V``: the attention blocks, the
    feed-forward layers, the MLM transform and the tied output projection.  Only matrix
    products are counted (embedding lookups, biases, LayerNorm, GELU and softmax are not).

    Args:
      config: the model's config (per-layer heads after compaction are used).
      input_shape: ``(T,)``, the shape of one token sequence (the int ``T`` works too).

    References:
      Kaplan et al. 2020, "Scaling laws for neural language models", Section 2.1, Table 1.
    """
    seq_len = sequence_length(input_shape)
    d, t = config.hidden_size, seq_len
    feed_forward = config.num_layers * 4 * t * d * config.intermediate_size
    return (
        attention_flops(config, seq_len)
        + feed_forward
        + 2 * t * d * d
        + 2 * t * d * config.vocab_size
    )


def parameter_count(config: BertConfig) -> int:
    """Number of parameters of ``Bert(config)``, from shapes only (``jax.eval_shape``)."""
    shapes = jax.eval_shape(
        Bert(config).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1), jnp.int32)
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


compact_heads = deprecated_alias(compact, "compact_heads")

SPEC = ModelSpec(
    name="bert",
    module=Bert,
    presets=PRESETS,
    default_preset="tiny",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(16,),
    gate_keyword="head_gates",
    mlm=True,
)
"""The ``"bert"`` model spec."""


def __getattr__(name: str) -> Any:
    if name == "GROUP_KINDS":  # The former name of KINDS, for one release.
        warnings.warn(
            "bert.GROUP_KINDS is deprecated and will be removed in the next release; use "
            "bert.KINDS",
            DeprecationWarning,
            stacklevel=2,
        )
        return KINDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
