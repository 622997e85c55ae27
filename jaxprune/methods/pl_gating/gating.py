"""The gating network of Chen et al. (2023), Sec. 3.2.3, eq. 8: ``g = softmax(FN_v(d_w))``.

A two-layer feed-forward net ``FN_v: R² -> R`` applied to every group's normalized features
(:func:`jaxprune.methods.pl_gating.normalize_features`), then a softmax over the ``p`` groups.

References:
  Chen et al. (2023), Sec. 3.2.3, eq. 8; reading PL-4 (docs/readings.md: the gate scale).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_choice, check_finite_tree, check_key, check_positive_int

__all__ = ["SCALINGS", "GatingParams", "Scaling", "gate", "gate_logits", "init_gating"]

Scaling = Literal["mean_one", "softmax"]
SCALINGS: tuple[str, ...] = ("mean_one", "softmax")


class GatingParams(NamedTuple):
    """Parameters ``v`` of the two-layer gating network ``FN_v: R² -> R``.

    ``FN_v(d) = w2 · tanh(d W1 + b1)``.  An output bias would cancel in eq. 8's softmax, so
    there is none.

    Attributes:
      w1: ``(2, h)`` first-layer weights.
      b1: ``(h,)`` first-layer bias.
      w2: ``(h,)`` output weights.
    """

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array


def init_gating(key: jax.Array, hidden: int = 16, *, dtype: Any = jnp.float32) -> GatingParams:
    """Initial gating parameters: LeCun-normal ``W1``, zero ``b1`` and zero ``w2``.

    With ``w2 = 0`` every logit is 0, so the gates start uniform (``1/p``, or 1 under
    ``"mean_one"``: the gated model is the dense one) and training breaks the symmetry.

    Args:
      key: PRNG key.
      hidden: width ``h >= 1`` of the hidden layer.
      dtype: parameter dtype.

    Returns:
      :class:`GatingParams`.

    References:
      Chen et al. (2023), Sec. 3.2.3 (two-layer feed-forward ``FN_v``).
    """
    check_key(key)
    hidden = check_positive_int(hidden, "hidden")
    w1 = jax.random.normal(key, (2, hidden), dtype) / np.sqrt(2.0)
    return GatingParams(w1=w1, b1=jnp.zeros((hidden,), dtype), w2=jnp.zeros((hidden,), dtype))


def check_features_matrix(normalized_features: Any) -> jax.Array:
    """``normalized_features`` as a ``(p, 2)`` array with ``p >= 1`` and finite values (checked
    when concrete), else ``ValueError``: NaN features would give NaN gates."""
    normalized_features = jnp.asarray(normalized_features)
    shape = normalized_features.shape
    if len(shape) != 2 or shape[1] != 2 or shape[0] < 1:
        raise ValueError(
            f"normalized_features: expected shape (p, 2) with p >= 1 (from normalize_features), "
            f"got {shape}"
        )
    check_finite_tree(normalized_features, "normalized_features")
    return normalized_features


def check_gating_params(v: Any) -> GatingParams:
    """``v`` if it is a :class:`GatingParams`, else ``TypeError``."""
    if not isinstance(v, GatingParams):
        raise TypeError(f"v: expected GatingParams (from init_gating), got {type(v).__name__}")
    return v


def gate_logits(v: GatingParams, normalized_features: jax.Array) -> jax.Array:
    """``[FN_v(d_1), ..., FN_v(d_p)]``: the same network applied to every group's features.

    Args:
      v: :class:`GatingParams`.
      normalized_features: ``(p, 2)`` from :func:`normalize_features`.

    Returns:
      ``(p,)`` logits.

    References:
      Chen et al. (2023), Sec. 3.2.3, eq. 8 (the argument of the softmax).
    """
    check_gating_params(v)
    d = check_features_matrix(normalized_features).astype(v.w1.dtype)
    return jnp.tanh(d @ v.w1 + v.b1) @ v.w2


def gate(
    v: GatingParams, normalized_features: jax.Array, *, scaling: Scaling = "mean_one"
) -> jax.Array:
    """Soft gates ``g(d_w; v)`` of the ``p`` groups: a softmax over all groups.

    ``scaling="softmax"`` is eq. 8 literally (gates in ``[0, 1]`` summing to 1);
    ``"mean_one"`` is ``p · softmax`` (gates summing to ``p``, mean 1), reading PL-4: multiplying
    weights by gates that sum to 1 shrinks every group by about ``1/p``.  The ranking of the
    groups, hence the TopK mask, is the same for both.

    Args:
      v: :class:`GatingParams`.
      normalized_features: ``(p, 2)`` from :func:`normalize_features`.
      scaling: ``"mean_one"`` or ``"softmax"``.

    Returns:
      ``(p,)`` positive gates.

    References:
      Chen et al. (2023), Sec. 3.2.3, eq. 8; reading PL-4 (docs/readings.md: p·softmax).
    """
    check_choice(scaling, SCALINGS, "scaling")
    logits = gate_logits(v, normalized_features)
    gates = jax.nn.softmax(logits)
    return gates * logits.shape[0] if scaling == "mean_one" else gates
