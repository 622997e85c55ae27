"""Multi-head self-attention with per-head gates, laid out for head grouping and compaction.

The projections are ``flax.linen.DenseGeneral`` layers named ``query``, ``key``, ``value``
(kernels ``(d, H, Dh)``, biases ``(H, Dh)``) and ``out`` (kernel ``(H, Dh, d)``, bias ``(d,)``),
the layout that ``jaxprune.masks.groups.heads(pattern, H, layout="flax")`` groups and that
:func:`head_keep_targets` compacts with ``jaxprune.masks.compact.keep_along``.

References:
  Vaswani et al. 2017, "Attention is all you need", Section 3.2 (eqs. 1 and the multi-head
  definition).
  Michel et al. 2019, "Are sixteen heads really better than one?", Section 2.1 (head gates ξ_h).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["SelfAttention", "head_keep_targets"]


class SelfAttention(nn.Module):
    """Gated multi-head scaled dot-product self-attention.

    ``out = Σ_h ξ_h · softmax(q_h k_hᵀ / √Dh + bias) v_h W_out[h] + b_out`` with per-head
    queries, keys and values ``q_h = x W_q[:, h] + b_q[h]`` (likewise ``k_h``, ``v_h``).  A gate
    ``ξ_h = 0`` removes exactly head ``h``'s contribution, as zeroing its weights does.

    Attributes:
      num_heads: number of heads ``H``.
      head_dim: width ``Dh`` of each head's queries, keys and values.
      dropout_rate: dropout on the attention probabilities (training only).
      dtype: computation dtype (parameters stay float32); the softmax runs in at least float32
        (``promote_types(dtype, float32)``).

    References:
      Vaswani et al. 2017, Section 3.2.2 (multi-head attention).
      Michel et al. 2019, Section 2.1, eq. 2 (``MHAtt(x) = Σ_h ξ_h Att_h(x)``).
    """

    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        head_gates: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """Attend over the sequence.

        Args:
          x: ``(n, T, d)`` inputs.
          mask: optional ``(n, T)`` boolean padding mask, True = the position may be attended.
          head_gates: optional ``(num_heads,)`` multipliers of each head's context vector
            (before the output projection); differentiable.
          deterministic: if False, apply dropout to the attention probabilities (needs a
            ``"dropout"`` PRNG stream).

        Returns:
          ``(n, T, d)`` outputs.
        """
        features = x.shape[-1]
        projection = lambda name: nn.DenseGeneral(  # noqa: E731
            features=(self.num_heads, self.head_dim), dtype=self.dtype, name=name
        )
        q = projection("query")(x)  # (n, T, H, Dh)
        k = projection("key")(x)
        v = projection("value")(x)
        softmax_dtype = jnp.promote_types(self.dtype, jnp.float32)
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(softmax_dtype)
        scores = scores / jnp.sqrt(jnp.asarray(self.head_dim, softmax_dtype))
        if mask is not None:
            allowed = jnp.asarray(mask, bool)[:, None, None, :]  # (n, 1, 1, T)
            scores = jnp.where(allowed, scores, jnp.finfo(softmax_dtype).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        if self.dropout_rate > 0.0 and not deterministic:
            probs = nn.Dropout(self.dropout_rate)(probs, deterministic=False)
        context = jnp.einsum("nhqk,nkhd->nqhd", probs, v)  # (n, T, H, Dh)
        if head_gates is not None:
            gates = jnp.asarray(head_gates)
            if gates.shape != (self.num_heads,):
                raise ValueError(
                    f"head_gates: expected shape ({self.num_heads},), got {gates.shape}"
                )
            context = context * gates.astype(context.dtype)[:, None]
        return nn.DenseGeneral(features=features, axis=(-2, -1), dtype=self.dtype, name="out")(
            context
        )


def head_keep_targets(prefix: str) -> list[tuple[str, int]]:
    """``(leaf path, heads axis)`` pairs of a :class:`SelfAttention` for ``keep_along``.

    Args:
      prefix: path of the attention module's parameters, e.g. ``"params/layer_0/attention"``.

    Returns:
      The query/key/value kernels (axis 1) and biases (axis 0) and the out kernel (axis 0);
      the out bias is shared by all heads and stays whole.

    References:
      Michel et al. 2019, Section 4 (pruning heads removes their projection slices).
    """
    targets = []
    for name in ("query", "key", "value"):
        targets += [(f"{prefix}/{name}/kernel", 1), (f"{prefix}/{name}/bias", 0)]
    return [*targets, (f"{prefix}/out/kernel", 0)]
