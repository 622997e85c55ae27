"""Two-layer networks of Li et al. (2020) and Wolfe et al. (2023), whose hidden neurons are the
prunable groups.

One model covers both papers.  With input ``x ∈ R^d``, hidden kernel ``A`` of shape ``(d, N)``
(column ``a_i``) and output kernel ``B`` of shape ``(N, K)`` (row ``b_i``), both without bias:

* Wolfe et al. (2023), Sec. 2, eqs. 1–2: ``f(x) = (1/N) Σ_i N·b_i·σ(a_iᵀx)`` (σ = tanh or ReLU, ``K = 1`` in the
  paper).  The factors ``1/N`` and ``N`` cancel, so ``f(x) = Σ_i b_i σ(a_iᵀx) = σ(xA) B``, which
  is what is computed.  The pruned network of eq. 3 takes integer **counts** ``c`` (a multiset
  ``S`` of neurons, ``c_i`` = multiplicity of ``i``, ``k = |S| = Σ c_i``; greedy forward
  selection may pick a neuron more than once, reading GS-2 of docs/readings.md):
  ``f_S(x) = (1/k) Σ_{i∈S} N·b_i·σ(a_iᵀx) = Σ_i (N c_i / k) b_i σ(a_iᵀx)``, i.e. output weights
  ``N·c_i·b_i/k``.
* Li et al. (2020), Sec. 4: ``f(x) = V·ReLU(Wx)`` with ``W = Aᵀ`` (``m × d``) and ``V = Bᵀ``
  (``K × m``).  :func:`rescale` maps ``(W, V)`` to ``(λW, V/λ)``, which leaves a ReLU network's
  function unchanged (positive homogeneity) — the family ``θ^λ`` of Lemma 4.1.

Pruning structure: neuron ``i`` is ``θ_i = (a_i, b_i)`` (Wolfe et al. (2023), below eq. 1): hidden
kernel column ``i`` and output kernel row ``i``.  Layers are named ``hidden`` and ``output``.

References:
  Wolfe et al. (2023), Sec. 2, eqs. (1)–(3) (network, pruned subnetwork), eqs. (9)–(11) and
  reading GS-2 of docs/readings.md (neurons chosen with repetition, output weights
  ``N c_i b_i / k``).
  Li et al. (2020), Sec. 4 (``f = V ReLU(Wx)``, the λ-rescaled family ``(λW, λ⁻¹V)``, Lemma 4.1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_choice, check_positive_int
from jaxprune.masks.compact import Link
from jaxprune.masks.compact import compact as compact_links
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.masks.layout import GroupLayout
from jaxprune.models.base import (
    ModelSpec,
    binary_keep,
    deprecated_alias,
    flat_size,
    split_gates,
)
from jaxprune.typing import PyTree

__all__ = [
    "ACTIVATIONS",
    "KINDS",
    "PRESETS",
    "SPEC",
    "TwoLayer",
    "TwoLayerConfig",
    "compact",
    "compact_counts",
    "compact_two_layer",
    "counts_to_gates",
    "flops",
    "from_preset",
    "group_ids",
    "make_config",
    "rescale",
    "two_layer_flops",
    "two_layer_group_ids",
]

ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh}
"""Hidden activations σ (both map 0 to 0, so a zeroed neuron contributes nothing)."""

KINDS = ("neurons",)


@dataclasses.dataclass(frozen=True)
class TwoLayerConfig:
    """Configuration of :class:`TwoLayer`.

    Attributes:
      input_dim: ``d``, the flattened input size.
      width: ``N`` (Wolfe et al. 2023) or ``m`` (Li et al. 2020), the number of hidden neurons.
      num_outputs: ``K`` (1 in Wolfe et al. 2023).
      activation: ``"relu"`` or ``"tanh"``.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    """

    input_dim: int
    width: int
    num_outputs: int = 1
    activation: str = "relu"
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_positive_int(self.input_dim, "input_dim")
        check_positive_int(self.width, "width")
        check_positive_int(self.num_outputs, "num_outputs")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        try:
            floating = jnp.issubdtype(jnp.dtype(self.dtype), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise ValueError(
                f"dtype: expected a floating compute dtype (e.g. jnp.bfloat16), got {self.dtype!r}"
            )


PRESETS: dict[str, TwoLayerConfig] = {
    "paper002-mnist": TwoLayerConfig(input_dim=784, width=1024, num_outputs=10),
    "paper004-mnist": TwoLayerConfig(input_dim=784, width=5000, num_outputs=1),
    "tiny": TwoLayerConfig(input_dim=4, width=8, num_outputs=2),
    "tiny-tanh": TwoLayerConfig(input_dim=4, width=8, num_outputs=1, activation="tanh"),
}
"""Named configurations: Li et al. (2020)'s MNIST net (m = 1024, K = 10; Sec. 4), Wolfe et al.
(2023)'s smallest MNIST net (N = 5000, one output; Sec. 6.1), and CPU-sized ones.  The preset
names ``paper002-mnist`` and ``paper004-mnist`` are kept for compatibility."""


def from_preset(name: str, **overrides: Any) -> TwoLayerConfig:
    """The preset ``name`` of :data:`PRESETS`, with optional field ``overrides``."""
    if name not in PRESETS:
        raise ValueError(
            f"name: unknown two-layer preset {name!r}; valid presets are {sorted(PRESETS)}"
        )
    return dataclasses.replace(PRESETS[name], **overrides)


def counts_to_gates(counts: Any) -> jax.Array:
    """Per-neuron output scales ``N c_i / k`` of the multiset subnetwork ``f_S`` (eq. 3).

    Args:
      counts: ``(N,)`` non-negative integer multiplicities ``c`` with ``k = Σ c ≥ 1`` (checked
        when concrete; traced counts are taken as given).

    Returns:
      ``(N,)`` float array ``N c / k``; all ones when every neuron is counted once.

    References:
      Wolfe et al. (2023), eq. (3) with repeated neurons (reading GS-2 of docs/readings.md:
      output weights ``N c_i b_i / k``).
    """
    counts = jnp.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(
            f"counts: expected a 1-D array of multiplicities, got shape {counts.shape}"
        )
    if not isinstance(counts, jax.core.Tracer):
        values = np.asarray(counts)
        if (
            not np.all(np.isfinite(values))
            or (values < 0).any()
            or (values != np.round(values)).any()
        ):
            raise ValueError(f"counts: expected non-negative integers, got {values.tolist()}")
        if values.sum() < 1:
            raise ValueError("counts: every count is 0; expected at least one chosen neuron")
    counts = counts.astype(jnp.result_type(float))
    return counts.shape[0] * counts / counts.sum()


class TwoLayer(nn.Module):
    """``f(x) = Σ_i b_i σ(a_iᵀx)`` (see the module docstring) with counts and neuron gates.

    Attributes:
      config: a :class:`TwoLayerConfig`.
    """

    config: TwoLayerConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        counts: jax.Array | None = None,
        neuron_gates: jax.Array | None = None,
    ) -> jax.Array:
        """``(n, ...)`` inputs (flattened to ``(n, d)``) to ``(n, K)`` outputs.

        Args:
          x: inputs.
          counts: optional ``(N,)`` multiplicities: the output is Wolfe et al. (2023)'s ``f_S`` of the
            multiset with these counts (:func:`counts_to_gates`); all ones give ``f``.
          neuron_gates: optional ``(N,)`` gates multiplying each neuron's activation
            ``σ(a_iᵀx)`` (or a one-element sequence of it, the per-layer form of
            :func:`~jaxprune.models.base.split_gates`); a gate of 0 removes exactly that
            neuron.  Differentiable.

        Returns:
          ``(n, K)`` outputs in the compute dtype ``config.dtype``.
        """
        cfg = self.config
        x = jnp.asarray(x, cfg.dtype).reshape(x.shape[0], -1)
        if x.shape[1] != cfg.input_dim:
            raise ValueError(
                f"x: expected {cfg.input_dim} input features (config.input_dim), got {x.shape[1]}"
            )
        h = ACTIVATIONS[cfg.activation](
            nn.Dense(
                cfg.width,
                use_bias=False,
                dtype=cfg.dtype,
                kernel_init=nn.initializers.he_normal(),
                name="hidden",
            )(x)
        )
        if neuron_gates is not None:
            (neuron_gates,) = split_gates(neuron_gates, (cfg.width,), cfg.dtype, "neuron_gates")
        for name, gates in (("counts", counts), ("neuron_gates", neuron_gates)):
            if gates is None:
                continue
            if jnp.shape(gates) != (cfg.width,):
                raise ValueError(
                    f"{name}: expected shape ({cfg.width},), one entry per neuron, "
                    f"got {jnp.shape(gates)}"
                )
            if name == "counts":
                gates = counts_to_gates(gates)
            h = h * jnp.asarray(gates).astype(cfg.dtype)
        return nn.Dense(
            cfg.num_outputs,
            use_bias=False,
            dtype=cfg.dtype,
            kernel_init=nn.initializers.he_normal(),
            name="output",
        )(h)


def make_config(
    preset: str, *, num_outputs: int, input_shape: tuple[int, ...], **overrides: Any
) -> TwoLayerConfig:
    """The preset ``preset`` with ``input_dim = prod(input_shape)`` and ``num_outputs``."""
    return from_preset(
        preset, input_dim=flat_size(input_shape), num_outputs=num_outputs, **overrides
    )


def group_ids(
    variables: PyTree, config: TwoLayerConfig, kind: str = "neurons"
) -> tuple[PyTree, GroupLayout]:
    """Group ids of the hidden neurons of a :class:`TwoLayer`.

    Args:
      variables: ``model.init(...)`` output or its ``"params"`` entry (shapes only).
      config: the model's :class:`TwoLayerConfig`.
      kind: ``"neurons"``: group ``i`` = ``θ_i = (a_i, b_i)``, hidden kernel column ``i`` and
        output kernel row ``i``.

    Returns:
      ``(group_ids, layout)``: ``N`` groups in one layout layer.

    References:
      Wolfe et al. (2023), eq. (1) (``θ_i = [b_i, a_i]``).
    """
    check_choice(kind, KINDS, "kind")
    ids, layout = build_group_ids(
        variables, neurons(r"(^|params/)hidden$", next_layer=r"(^|params/)output$")
    )
    if layout.num_groups != config.width:
        raise ValueError(
            f"config: width {config.width} does not match the {layout.num_groups} hidden units "
            "of variables"
        )
    return ids, layout


def flops(config: TwoLayerConfig, input_shape: tuple[int, ...] | None = None) -> int:
    """FLOPs of one forward pass of one example: ``2 (d N + N K)`` (2 × multiply-accumulates).

    Activations and the count/gate scaling are not counted.  For a subnetwork, count the
    compacted config (``width`` = neurons kept).  ``input_shape`` (optional: ``d`` is
    ``config.input_dim``) must flatten to ``d`` features when given.
    """
    if input_shape is not None and flat_size(input_shape) != config.input_dim:
        raise ValueError(
            f"input_shape: expected {config.input_dim} features (config.input_dim), got "
            f"{tuple(input_shape)}"
        )
    return 2 * config.width * (config.input_dim + config.num_outputs)


def _check_variables(variables: PyTree) -> None:
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("variables: expected the model's variables {'params': {...}}")


def rescale(variables: PyTree, lam: Any) -> PyTree:
    """Li et al. (2020)'s λ-rescaled network ``θ^λ = (λW, V/λ)``.

    The hidden kernel is multiplied by ``λ`` and the output kernel divided by it.  For ReLU,
    ``ReLU(λ z) = λ ReLU(z)`` (λ > 0), so the function is unchanged; for tanh it is not.

    Args:
      variables: the model's variables ``{"params": {"hidden": ..., "output": ...}}``.
      lam: ``λ > 0`` (checked when concrete; may be traced).

    Returns:
      Variables of ``θ^λ``.

    References:
      Li et al. (2020), Sec. 4, "Equivalent networks" and Lemma 4.1.
    """
    _check_variables(variables)
    if not isinstance(lam, jax.core.Tracer):
        value = np.asarray(lam)
        if value.shape != () or not np.isfinite(value) or value <= 0:
            raise ValueError(f"lam: expected a finite scalar > 0, got {lam!r}")
    params = variables["params"]
    return {
        **variables,
        "params": {
            **params,
            "hidden": {**params["hidden"], "kernel": params["hidden"]["kernel"] * lam},
            "output": {**params["output"], "kernel": params["output"]["kernel"] / lam},
        },
    }


def compact(
    variables: PyTree, config: TwoLayerConfig, keep: Any, kind: str = "neurons"
) -> tuple[PyTree, TwoLayerConfig]:
    """Remove the neurons not kept (hidden columns and output rows).

    The smaller network computes what the one with gate (or group mask) 0 on the removed
    neurons does.

    Args:
      variables: the model's variables.
      config: its :class:`TwoLayerConfig`.
      keep: boolean ``(N,)``; at least one neuron must be kept.
      kind: ``"neurons"`` (:data:`KINDS`).

    Returns:
      ``(variables, config)`` with ``config.width`` = neurons kept.
    """
    check_choice(kind, KINDS, "kind")
    _check_variables(variables)
    keep = binary_keep(keep)
    if keep.shape != (config.width,):
        raise ValueError(
            f"keep: expected shape ({config.width},), one entry per neuron, got {keep.shape}"
        )
    kept = compact_links(
        variables, [Link("params/hidden", "params/output")], {"params/hidden": keep.astype(bool)}
    )
    return kept, dataclasses.replace(config, width=int(keep.astype(bool).sum()))


def compact_counts(
    variables: PyTree, config: TwoLayerConfig, counts: Any
) -> tuple[PyTree, TwoLayerConfig]:
    """Wolfe et al. (2023)'s pruned network as a dense one of the chosen neurons.

    Keeps the neurons with ``c_i > 0`` and sets their output weights to ``N c_i b_i / k``, so
    the plain model of width ``|{i : c_i > 0}|`` computes ``f_S`` (eq. 3) of the multiset.

    Args:
      variables: the model's variables.
      config: its :class:`TwoLayerConfig` (width ``N``).
      counts: ``(N,)`` non-negative integer multiplicities, ``Σ c ≥ 1``.

    Returns:
      ``(variables, config)`` of the subnetwork.

    References:
      Wolfe et al. (2023), eq. (3); reading GS-2 of docs/readings.md (output weights
      ``N c_i b_i / k``).
    """
    scales = np.asarray(counts_to_gates(counts))
    if scales.shape != (config.width,):
        raise ValueError(
            f"counts: expected shape ({config.width},), one entry per neuron, got {scales.shape}"
        )
    keep = scales > 0
    kept, small = compact(variables, config, keep)
    output = kept["params"]["output"]
    scaled = output["kernel"] * jnp.asarray(scales[keep], output["kernel"].dtype)[:, None]
    params = {**kept["params"], "output": {**output, "kernel": scaled}}
    return {**kept, "params": params}, small


two_layer_group_ids = deprecated_alias(group_ids, "two_layer_group_ids")
compact_two_layer = deprecated_alias(compact, "compact_two_layer")
two_layer_flops = deprecated_alias(flops, "two_layer_flops")

SPEC = ModelSpec(
    name="two_layer",
    module=TwoLayer,
    presets=PRESETS,
    default_preset="tiny",
    group_kinds=KINDS,
    make_config=make_config,
    group_ids=group_ids,
    compact=compact,
    flops=flops,
    example_input_shape=(4,),
    gate_keyword="neuron_gates",
)
"""The ``"two_layer"`` model spec."""
