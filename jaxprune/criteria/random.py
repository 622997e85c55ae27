"""Random criterion: i.i.d. uniform scores, the random-pruning baseline.

References:
  Liu, S. et al. (2022), "The unreasonable effectiveness of random pruning: return of the most
  naive baseline for sparse training"; Frankle, Dziugaite, Roy & Carbin (2021),
  "Pruning neural networks at initialization: why are we missing the mark?" (random baseline).
"""

from __future__ import annotations

import jax

from jaxprune._validation import check_key, check_positive_int

__all__ = ["random_scores"]


def random_scores(key: jax.Array, num_groups: int) -> jax.Array:
    """I.i.d. ``Uniform[0, 1)`` scores, one per group.

    Sign convention: "higher = more important" as for every criterion, so keeping the top
    scores keeps a uniformly random subset of groups.  The same key gives the same scores.

    Args:
      key: PRNG key.
      num_groups: number of groups ``p``, an int >= 1.

    Returns:
      ``(p,)`` scores in JAX's default float dtype (float64 when 64-bit mode is on).

    Raises:
      TypeError: ``num_groups`` is not an int, or ``key`` is not a PRNG key.
      ValueError: ``num_groups < 1``.
    """
    check_key(key)
    num_groups = check_positive_int(num_groups, "num_groups")
    return jax.random.uniform(key, (num_groups,))
