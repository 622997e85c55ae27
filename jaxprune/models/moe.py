"""Switch feed-forward layer: top-1 mixture of experts with capacity, gates and compaction.

Every token is routed to the one expert of highest router probability (top-1, "switch"
routing); each expert processes at most ``C`` tokens per routing group, the rest are dropped
(their output is 0 and the residual connection carries them).  Expert weights are stacked with a
leading expert axis under a submodule named ``experts``, so that
``jaxprune.masks.groups.experts(r"moe/experts$", num_experts)`` makes one group per expert and
:func:`compact_experts` removes experts with ``jaxprune.masks.compact.keep_along``.

Routing groups and capacity:
  The input is ``(..., T, d)``; every leading index is one routing group of ``T`` tokens (one
  sequence).  Capacity is per sequence, ``C = ceil(capacity_factor · T / capacity_experts)``,
  the paper's "tokens per batch / experts × capacity factor" with each sequence as its own
  batch (as Mesh TensorFlow's routing groups).  So one example's output never depends on the
  other examples of the batch, and the model is a per-example function (what per-example NTK
  and Jacobian analyses need).  Within a sequence the tokens claim their expert's slots in token
  order: token ``t`` is dropped iff at least ``C`` earlier (unpadded) tokens of its sequence
  chose the same expert.

Gates and pruning (which equalities hold):
  ``expert_gates`` ``(E,)`` multiply each expert's output.  A gate of exactly 0 also removes
  the expert from routing (its router logit becomes ``-inf``), so the router softmax and the
  choice of expert run over the remaining experts only.  Hence, exactly:

  * gate 0 ≡ compacted: ``compact_experts`` (which slices the expert axis and the router's
    output columns and keeps ``capacity_experts``, so every remaining expert keeps its capacity
    ``C``) computes the same outputs, auxiliary loss and dropped counts as the full layer with
    the removed experts' gates set to 0.
  * zeroing an expert's weights (``apply_group_mask`` on the ``experts`` groups) is *not* the
    same: tokens are still routed to that expert and their FFN output is 0 (as if dropped).

  Soft gates in ``(0, 1]`` only scale outputs and are differentiable (Michel-style importance
  ``|∂L/∂g_e|`` at ``g = 1``, PL gating); the exclusion from routing at exactly 0 is a
  discontinuity, like the drop of a pruned expert.  At least one gate must be nonzero.

Auxiliary loss:
  The load-balancing loss ``α · E · Σ_i f_i P_i`` (eq. 4) is sown as
  ``intermediates/.../aux_loss`` (scalar; ``E`` counts the experts with nonzero gate, so gated
  and compacted layers agree), and the number of dropped tokens as
  ``intermediates/.../dropped_tokens`` (int32 scalar).  Apply with
  ``mutable=["intermediates"]`` and sum them with :func:`total_aux_loss` /
  :func:`total_dropped_tokens`.

References:
  Fedus, Zoph & Shazeer 2022, "Switch Transformers: scaling to trillion parameter models with
  simple and efficient sparsity", JMLR 23: Section 2.1 (top-1 routing, eqs. 1–2),
  Section 2.2 (expert capacity, eq. 3; load-balancing loss, eqs. 4–6), Section 2.4 (router in
  float32: selective precision), Section 2.3 (smaller initialization scale 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_positive_int
from jaxprune.masks.compact import keep_along
from jaxprune.typing import PyTree

__all__ = [
    "Experts",
    "SwitchFFN",
    "check_moe_fields",
    "compact_experts",
    "expert_capacity",
    "total_aux_loss",
    "total_dropped_tokens",
]

# Switch Transformers, Section 2.3: truncated normal with std sqrt(0.1 / fan_in).
_INIT_SCALE = 0.1


def _init(in_axis: int, out_axis: int, batch_axis: tuple[int, ...] = ()) -> Any:
    return nn.initializers.variance_scaling(
        _INIT_SCALE, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis
    )


def expert_capacity(num_tokens: int, capacity_factor: float, num_experts: int) -> int:
    """Tokens each expert can take per routing group: ``ceil(capacity_factor · T / E)``.

    Args:
      num_tokens: tokens ``T`` of a routing group (one sequence).
      capacity_factor: the paper's capacity factor (> 0).
      num_experts: experts ``E`` the tokens are divided among.

    Returns:
      The capacity ``C >= 1`` (an int; computed exactly from the float's rational value).

    References:
      Switch Transformers, Section 2.2, eq. 3.
    """
    return max(1, math.ceil(Fraction(capacity_factor) * num_tokens / num_experts))


def check_moe_fields(num_experts: Any, capacity_factor: Any, capacity_experts: Any = None) -> None:
    """Raise ValueError unless ``num_experts >= 1``, ``capacity_factor > 0`` (finite) and
    ``capacity_experts`` is None or ``>= num_experts``."""
    check_positive_int(num_experts, "num_experts")
    if (
        isinstance(capacity_factor, bool)
        or not isinstance(capacity_factor, (int, float, np.integer, np.floating))
        or not math.isfinite(capacity_factor)
        or capacity_factor <= 0
    ):
        raise ValueError(f"capacity_factor: expected a finite number > 0, got {capacity_factor!r}")
    if capacity_experts is not None:
        check_positive_int(capacity_experts, "capacity_experts")
        if capacity_experts < num_experts:
            raise ValueError(
                f"capacity_experts: expected >= num_experts ({num_experts}), got {capacity_experts}"
            )


class Experts(nn.Module):
    """``E`` two-layer ReLU feed-forward experts applied to their own token slots.

    ``h[e] = relu(x[e] W_i[e] + b_i[e]) W_o[e] + b_o[e]`` with stacked parameters
    ``wi: (E, d, I)``, ``bi: (E, I)``, ``wo: (E, I, d)``, ``bo: (E, d)`` (float32).

    Attributes:
      num_experts: ``E``.
      intermediate_size: ``I``.
      dtype: computation dtype.

    References:
      Switch Transformers, Section 2.1 (each expert is a dense FFN); Vaswani et al. 2017,
      Section 3.3 (the position-wise FFN).
    """

    num_experts: int
    intermediate_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(..., E, C, d)`` expert inputs to ``(..., E, C, d)`` expert outputs."""
        e, d, i = self.num_experts, x.shape[-1], self.intermediate_size
        wi = self.param("wi", _init(1, 2, (0,)), (e, d, i), jnp.float32)
        bi = self.param("bi", nn.initializers.zeros, (e, i), jnp.float32)
        wo = self.param("wo", _init(1, 2, (0,)), (e, i, d), jnp.float32)
        bo = self.param("bo", nn.initializers.zeros, (e, d), jnp.float32)
        x = x.astype(self.dtype)
        h = jnp.einsum("...ecd,edi->...eci", x, wi.astype(self.dtype)) + bi[:, None].astype(
            self.dtype
        )
        h = jax.nn.relu(h)
        return jnp.einsum("...eci,eid->...ecd", h, wo.astype(self.dtype)) + bo[:, None].astype(
            self.dtype
        )


class SwitchFFN(nn.Module):
    """Switch feed-forward layer: top-1 routing to ``E`` experts with capacity ``C``.

    For token ``x`` of a sequence: ``p = softmax(x W_r (+ b_r))`` over the experts (with gate-0
    experts excluded), ``e = argmax p`` and ``y = g_e · p_e · FFN_e(x)`` if ``x`` fits in
    expert ``e``'s capacity, else ``y = 0`` (see the module docstring for the capacity and
    drop order).  Dispatch and combine are one-hot ``(n, T, E, C)`` tensors contracted by
    einsum (jit-able, static shapes).

    Attributes:
      num_experts: ``E >= 1``.
      hidden_size: model width ``d`` (the input's last axis).
      intermediate_size: hidden width ``I`` of each expert.
      capacity_factor: the paper's capacity factor (1.5 in the paper's main runs).
      capacity_experts: expert count the capacity divides the tokens among; None means
        ``num_experts``.  :func:`compact_experts` callers keep the original count here so
        that each remaining expert keeps its capacity.
      load_balance_coef: ``α`` of the auxiliary loss (the paper's ``10⁻²``).
      router_bias: whether the router has a bias (the paper's router has none).
      dtype: computation dtype of the experts; the router always computes in float32
        (Section 2.4); parameters are float32.

    References:
      Switch Transformers, Sections 2.1–2.2, eqs. 1–4.
    """

    num_experts: int
    hidden_size: int
    intermediate_size: int
    capacity_factor: float = 1.5
    capacity_experts: int | None = None
    load_balance_coef: float = 1e-2
    router_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        token_mask: jax.Array | None = None,
        expert_gates: jax.Array | None = None,
    ) -> jax.Array:
        """Route, dispatch, apply the experts and combine.

        Args:
          x: ``(..., T, d)`` tokens; each leading index is one routing group (sequence).
          token_mask: optional ``(..., T)`` boolean, True = a real token; padding tokens are
            not routed (output 0) and do not count in capacity, ``f``, ``P`` or drops.
          expert_gates: optional ``(E,)`` multipliers of each expert's output; a gate of
            exactly 0 also excludes the expert from routing.

        Returns:
          ``(..., T, d)`` outputs in ``dtype``; sows ``aux_loss`` (float32 scalar) and
          ``dropped_tokens`` (int32 scalar) in ``intermediates``.

        References:
          Switch Transformers, Section 2.1 (eqs. 1–2), Section 2.2 (eqs. 3–4).
        """
        check_moe_fields(self.num_experts, self.capacity_factor, self.capacity_experts)
        check_positive_int(self.hidden_size, "hidden_size")
        check_positive_int(self.intermediate_size, "intermediate_size")
        e, d = self.num_experts, self.hidden_size
        if x.shape[-1] != d or x.ndim < 2:
            raise ValueError(f"x: expected shape (..., T, {d}), got {x.shape}")
        batch_shape, t = x.shape[:-2], x.shape[-2]
        x = x.reshape(-1, t, d)
        if token_mask is None:
            real = jnp.ones(x.shape[:2], jnp.float32)
        else:
            if jnp.shape(token_mask) != (*batch_shape, t):
                raise ValueError(
                    f"token_mask: expected shape {(*batch_shape, t)}, got {jnp.shape(token_mask)}"
                )
            real = jnp.asarray(token_mask, bool).reshape(-1, t).astype(jnp.float32)
        logits = nn.Dense(
            e,
            use_bias=self.router_bias,
            dtype=jnp.float32,
            kernel_init=_init(0, 1),
            name="router",
        )(x.astype(jnp.float32))  # (n, T, E)
        gates = jnp.ones((e,), self.dtype)
        if expert_gates is not None:
            if jnp.shape(expert_gates) != (e,):
                raise ValueError(
                    f"expert_gates: expected shape ({e},), got {jnp.shape(expert_gates)}"
                )
            gates = jnp.asarray(expert_gates)
            logits = jnp.where(gates == 0, -jnp.inf, logits)
        probs = jax.nn.softmax(logits, axis=-1)
        choice = jax.nn.one_hot(jnp.argmax(probs, axis=-1), e) * real[..., None]  # (n, T, E)
        # Slot of each token in its expert's buffer, in token order (0-based).
        position = ((jnp.cumsum(choice, axis=1) - 1.0) * choice).astype(jnp.int32)
        capacity = expert_capacity(t, self.capacity_factor, self.capacity_experts or e)
        kept = choice * (position < capacity)
        dispatch = kept[..., None] * jax.nn.one_hot(position, capacity)  # (n, T, E, C)
        chosen_prob = jnp.sum(probs * kept, axis=-1)  # (n, T), 0 for dropped/padding
        combine = (dispatch * chosen_prob[..., None, None]).astype(self.dtype)
        combine = combine * gates.astype(self.dtype)[:, None]
        expert_in = jnp.einsum("ntec,ntd->necd", dispatch.astype(self.dtype), x.astype(self.dtype))
        expert_out = Experts(e, self.intermediate_size, self.dtype, name="experts")(expert_in)
        y = jnp.einsum("ntec,necd->ntd", combine, expert_out)

        tokens = jnp.maximum(jnp.sum(real), 1.0)
        fraction = jnp.sum(choice, axis=(0, 1)) / tokens  # f_i, eq. 5 (before drops)
        mean_prob = jnp.sum(probs * real[..., None], axis=(0, 1)) / tokens  # P_i, eq. 6
        active = jnp.sum(gates != 0)
        aux = self.load_balance_coef * active * jnp.sum(fraction * mean_prob)
        self.sow("intermediates", "aux_loss", aux)
        self.sow("intermediates", "dropped_tokens", jnp.sum(choice - kept).astype(jnp.int32))
        return y.reshape(*batch_shape, t, d)


def _collect(intermediates: PyTree, name: str) -> list[jax.Array]:
    leaves = jax.tree_util.tree_flatten_with_path(intermediates)[0]
    found = []
    for path, leaf in leaves:
        keys = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        if name in keys:
            found.append(leaf)
    return found


def total_aux_loss(intermediates: PyTree) -> jax.Array:
    """Sum of every ``aux_loss`` sown by :class:`SwitchFFN` layers (float32 scalar; 0 if none).

    Args:
      intermediates: the ``"intermediates"`` collection returned by
        ``model.apply(..., mutable=["intermediates"])`` (or the whole returned state).

    References:
      Switch Transformers, Section 2.2, eq. 4 (one term per MoE layer, summed).
    """
    return sum(
        (jnp.sum(a) for a in _collect(intermediates, "aux_loss")), jnp.zeros((), jnp.float32)
    )


def total_dropped_tokens(intermediates: PyTree) -> jax.Array:
    """Sum of every ``dropped_tokens`` count sown by :class:`SwitchFFN` layers (int32 scalar)."""
    return sum(
        (jnp.sum(a) for a in _collect(intermediates, "dropped_tokens")), jnp.zeros((), jnp.int32)
    )


def compact_experts(variables: PyTree, prefix: str, keep: Any) -> PyTree:
    """Remove the experts not kept from a :class:`SwitchFFN`'s variables.

    Slices the expert axis (0) of ``experts/{wi, bi, wo, bo}`` and the router's output axis
    (kernel axis -1, bias axis 0).  Apply the result with ``num_experts = keep.sum()`` and
    ``capacity_experts`` = the original layer's (``capacity_experts or num_experts``): it then
    equals the original layer with ``expert_gates = keep`` (module docstring).

    Args:
      variables: nested dicts of arrays (e.g. ``{"params": ...}``).
      prefix: path of the layer, e.g. ``"params/layer_1/moe"``.
      keep: ``(E,)`` boolean, True = keep; at least one True.

    Returns:
      The variables with ``keep.sum()`` experts.

    References:
      Switch Transformers, Section 2.1 (experts are independent FFNs chosen by the router).
    """
    targets = [(f"{prefix}/experts/{name}", 0) for name in ("wi", "bi", "wo", "bo")]
    targets.append((f"{prefix}/router/kernel", -1))
    node = variables
    for key in f"{prefix}/router".split("/"):
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
    if "bias" in node:
        targets.append((f"{prefix}/router/bias", 0))
    return keep_along(variables, targets, keep)
