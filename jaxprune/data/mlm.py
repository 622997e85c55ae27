"""BERT's masked-language-model corruption as a pure, jit-able function of a PRNG key.

References:
  Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
  Understanding", NAACL 2019, Section 3.1 ("Task #1: Masked LM") and Appendix A.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._validation import check_int, check_positive_int, check_real, is_traced

__all__ = ["mask_tokens", "num_to_mask"]

_MASK_PROB = 0.8
_RANDOM_PROB = 0.1


def num_to_mask(num_candidates: jax.Array, rate: float) -> jax.Array:
    """Positions selected per sequence: ``max(1, round(rate · n))`` if ``n > 0`` else 0.

    This is the count of the reference implementation (``create_pretraining_data.py``);
    ``round`` is round-half-to-even.

    Raises:
      ValueError / TypeError: a concrete ``rate`` outside ``(0, 1]``.
    """
    if not is_traced(rate):
        _check_rate(rate)
    count = jnp.maximum(1, jnp.round(rate * num_candidates)).astype(jnp.int32)
    return jnp.where(num_candidates > 0, count, 0)


def _check_rate(rate: float) -> float:
    """``rate`` as a float in ``(0, 1]``."""
    rate = check_real(rate, "rate")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate: expected a number in (0, 1], got {rate:g}")
    return rate


def mask_tokens(
    key: jax.Array,
    tokens: jax.Array,
    *,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int],
    rate: float = 0.15,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Corrupt ``tokens`` for masked-language modelling.

    In each sequence (last axis) exactly ``num_to_mask(n, rate)`` of its ``n`` non-special
    tokens are selected uniformly at random.  Each selected token independently becomes
    ``[MASK]`` with probability 0.8, a random non-special token (uniform over the vocabulary
    minus ``special_ids`` and ``mask_id``) with probability 0.1, and stays unchanged otherwise.
    Keyword arguments are static: jit with ``functools.partial`` or ``static_argnames``.

    Args:
      key: PRNG key; the output is a pure function of it and ``tokens``.
      tokens: ``(..., L)`` integer token ids.
      vocab_size: number of token ids.
      mask_id: id of ``[MASK]``.
      special_ids: ids never selected (``[PAD]``, ``[CLS]``, ``[SEP]``, …).
      rate: fraction of non-special tokens selected, in ``(0, 1]``.

    Returns:
      ``inputs``: ``(..., L)`` int32 corrupted tokens;
      ``labels``: ``(..., L)`` int32 original token at selected positions, 0 elsewhere;
      ``weights``: ``(..., L)`` float32, 1 at selected positions, 0 elsewhere.

    Raises:
      ValueError / TypeError: ``rate`` outside ``(0, 1]``, non-integer ``tokens`` or (checked
        when concrete) ids outside ``[0, vocab_size)``, ``vocab_size`` not a positive int,
        ``mask_id`` outside ``[0, vocab_size)``, or ``special_ids`` leaving no token to sample.
    """
    _check_rate(rate)
    if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
        raise TypeError(f"tokens must hold integers, got dtype {jnp.asarray(tokens).dtype}")
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    if not 0 <= check_int(mask_id, "mask_id") < vocab_size:
        raise ValueError(f"mask_id must lie in [0, vocab_size={vocab_size}), got {mask_id!r}")
    if not is_traced(tokens) and getattr(tokens, "is_fully_addressable", True) and np.size(tokens):
        ids = np.asarray(tokens)
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(
                f"tokens: expected ids in [0, vocab_size={vocab_size}), got ids in "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
    replacements = np.setdiff1d(np.arange(vocab_size), [*special_ids, mask_id])
    if replacements.size == 0:
        raise ValueError(f"special_ids {tuple(special_ids)!r} leave no token to sample")
    tokens = jnp.asarray(tokens, jnp.int32)
    key_select, key_action, key_random = jax.random.split(key, 3)

    candidate = ~jnp.isin(tokens, jnp.asarray(list(special_ids), jnp.int32))
    scores = jnp.where(candidate, jax.random.uniform(key_select, tokens.shape), jnp.inf)
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    count = num_to_mask(candidate.sum(axis=-1, keepdims=True), rate)
    selected = candidate & (ranks < count)

    action = jax.random.uniform(key_action, tokens.shape)
    random_tokens = jnp.asarray(replacements, jnp.int32)[
        jax.random.randint(key_random, tokens.shape, 0, replacements.size)
    ]
    corrupted = jnp.where(
        action < _MASK_PROB,
        mask_id,
        jnp.where(action < _MASK_PROB + _RANDOM_PROB, random_tokens, tokens),
    )
    inputs = jnp.where(selected, corrupted, tokens)
    labels = jnp.where(selected, tokens, 0)
    return inputs, labels, selected.astype(jnp.float32)
