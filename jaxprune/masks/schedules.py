"""Pruning schedules: when to prune, and which fraction is pruned from then on.

A schedule is static data, a :class:`PruningSchedule`: the steps of its pruning events, the
pruned fraction in effect after each event and, for lottery-ticket training, the step whose
weights are restored after each event.  Everything else follows from these:
``schedule.ratio(step)`` is the fraction in effect at ``step`` (jnp-traceable, Python ints,
traced ints and integer arrays alike) and ``schedule.is_event(step)`` says whether masks are
re-selected at ``step``.  Between events the ratio is constant, because the mask only changes
at events.  The schedules of the papers are factories returning this one type.

Conventions:
  * A *step* is whatever the trainer counts (optimizer steps, or epochs); the factories that
    take epochs convert them with ``steps_per_epoch``.  Epoch ``e`` starts at step
    ``e * steps_per_epoch``; pruning "at epoch 5" happens there, after 5 full epochs, and
    pruning "at epoch 0" is pruning at initialization (Chen et al. (2023), App. F.3).
  * The event of step ``t`` happens before the update of step ``t`` (after ``t`` updates):
    ``ratio(t)`` is the ratio of the mask that update ``t`` trains under.  Before the first
    event the ratio is 0 (dense).
  * A ratio becomes a number of pruned groups (or weights) with :func:`num_pruned`, which
    rounds to the nearest integer.  The factories space ratios so that equal increments of
    ratio give equal numbers of groups under that rule (see :func:`per_epoch_from`).  Rounding
    up (``ceil``) is not used: ``ratio * p`` may exceed an integer by one ulp, and ``ceil``
    would then prune one group too many.

References:
  Chen et al. (2023), Sec. 3.2 (pruning times and ratios ``{t_j, r_j}``: one-shot ``{t, r}`` and the
  linear schedule ``{t_j, r_f / t_max}``), Algorithm 2, Appendix E.3/E.4 and F.1/F.3 (one-shot
  ``{5, 75%}``; "from epoch 15, prune the same number of filters each epoch"; LTH baselines
  with rewinding to 5% of the maximum epochs).  Zhu & Gupta (2017), "To prune, or not to prune:
  exploring the efficacy of pruning for model compression" (gradual polynomial schedule).
  Frankle et al. (2019), "Stabilizing the lottery ticket hypothesis"; Frankle et al. (2020),
  "Linear mode connectivity and the lottery ticket hypothesis" (iterative magnitude pruning
  with rewinding).  Lee et al. (2024), "JaxPruner: a concise library for sparsity research".
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterable

import jax
import jax.numpy as jnp

from jaxprune._validation import check_int, check_ratio, check_real

__all__ = [
    "PruningSchedule",
    "iterative_magnitude",
    "linear",
    "lth_schedule",
    "num_pruned",
    "one_shot",
    "per_epoch_from",
    "polynomial",
]


def _as_tuple(name: str, values: object) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence, got {values!r} ({type(values).__name__})")
    return tuple(values)


def _check_steps(name: str, values: object) -> tuple[int, ...]:
    """Non-negative, strictly increasing integer steps (at least one)."""
    steps = tuple(
        check_int(s, f"{name}[{i}]", minimum=0) for i, s in enumerate(_as_tuple(name, values))
    )
    if not steps:
        raise ValueError(f"{name} must hold at least one step, got ()")
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise ValueError(
                f"{name} must be strictly increasing, got {steps[i - 1]} then {steps[i]} at "
                f"positions {i - 1} and {i}"
            )
    return steps


def _check_step_dtype(step: jax.Array) -> None:
    if not jnp.issubdtype(step.dtype, jnp.integer):
        raise TypeError(f"step must be an integer or an integer array, got dtype {step.dtype}")


@dataclasses.dataclass(frozen=True)
class PruningSchedule:
    """Pruning events and the pruned fraction in effect after each (static, hashable data).

    Attributes:
      event_steps: ``(q,)`` strictly increasing non-negative steps at which masks are
        re-selected.
      event_ratios: ``(q,)`` non-decreasing fractions in ``[0, 1)``: ``event_ratios[j]`` is the
        pruned fraction from ``event_steps[j]`` until the next event.
      rewind_step: ``None``, or the step (before the first event) whose weights the trainer
        saves and restores, masked, right after every event (lottery-ticket rewinding).

    Construction validates the fields (ValueError/TypeError naming the field and value).  The
    schedule is hashable, so it can be a static argument of ``jax.jit``.

    References:
      Chen et al. (2023), Sec. 3.2 (the schedule ``{t_j, r_j}_{j=1}^q``).
    """

    event_steps: tuple[int, ...]
    event_ratios: tuple[float, ...]
    rewind_step: int | None = None

    def __post_init__(self) -> None:
        steps = _check_steps("event_steps", self.event_steps)
        ratios = tuple(
            check_ratio(r, f"event_ratios[{i}]", allow_zero=True)
            for i, r in enumerate(_as_tuple("event_ratios", self.event_ratios))
        )
        if len(ratios) != len(steps):
            raise ValueError(
                f"event_ratios must have one ratio per event step: got {len(ratios)} ratios "
                f"for {len(steps)} steps"
            )
        for i in range(1, len(ratios)):
            if ratios[i] < ratios[i - 1]:
                raise ValueError(
                    f"event_ratios must be non-decreasing, got {ratios[i - 1]} then {ratios[i]} "
                    f"at positions {i - 1} and {i}"
                )
        if self.rewind_step is not None:
            rewind = check_int(self.rewind_step, "rewind_step", minimum=0)
            if rewind >= steps[0]:
                raise ValueError(
                    f"rewind_step must precede the first event step {steps[0]}, got {rewind}"
                )
            object.__setattr__(self, "rewind_step", rewind)
        object.__setattr__(self, "event_steps", steps)
        object.__setattr__(self, "event_ratios", ratios)

    @property
    def final_ratio(self) -> float:
        """The pruned fraction after the last event."""
        return self.event_ratios[-1]

    def ratio(self, step: int | jax.Array) -> jax.Array:
        """Pruned fraction in effect at ``step`` (after that step's event, if any).

        Args:
          step: an integer, or an integer array of any shape (traced values are fine).

        Returns:
          A float array of the shape of ``step`` (float32, or float64 in 64-bit mode): the ratio
          of the last event at or before ``step``, 0 before the first event.
        """
        step = jnp.asarray(step)
        _check_step_dtype(step)
        index = jnp.searchsorted(jnp.asarray(self.event_steps), step, side="right")
        return jnp.asarray((0.0, *self.event_ratios))[index]

    def is_event(self, step: int | jax.Array) -> bool | jax.Array:
        """Whether masks are re-selected at ``step``.

        Returns a Python bool for a Python (or NumPy) integer, and a boolean array of the shape of
        ``step`` for an array or traced value (usable as the predicate of ``jax.lax.cond``).
        """
        if isinstance(step, numbers.Integral) and not isinstance(step, bool):
            return int(step) in self.event_steps
        step = jnp.asarray(step)
        _check_step_dtype(step)
        return jnp.isin(step, jnp.asarray(self.event_steps))


def num_pruned(ratio: float | jax.Array, num_groups: int) -> jax.Array:
    """Number of groups (or weights) to prune: ``ceil(ratio * num_groups - 1/2)``.

    The nearest integer, ties towards pruning fewer, so that ``num_groups - num_pruned``
    equals :func:`jaxprune.masks.mask.ratio_to_k` (ties towards keeping more).  Rounding to
    the nearest integer makes the count robust to the round-off of the ratio (one
    ulp in float64, or the float32 of a traced ratio for ``num_groups`` up to about 10^6): the
    ratios of :func:`linear` and :func:`per_epoch_from` then give exactly the intended counts.

    Args:
      ratio: a pruned fraction, scalar or array (traced values are fine).
      num_groups: the number ``p`` of groups (or weights) the ratio refers to.

    Returns:
      An int32 array of the shape of ``ratio``.

    References:
      Chen et al. (2023), App. E.4 ("prune the same number of filters at each epoch").
    """
    num_groups = check_int(num_groups, "num_groups", minimum=1)
    return jnp.ceil(jnp.asarray(ratio) * num_groups - 0.5).astype(jnp.int32)


def one_shot(step: int, ratio: float) -> PruningSchedule:
    """The one-shot schedule ``{t, r}``: prune the fraction ``ratio`` once, at ``step``.

    Example: ``one_shot(5 * steps_per_epoch, 0.75)`` is the paper's ``{5, 75%}`` (75% of the
    heads pruned at epoch 5); ``one_shot(0, r)`` prunes at initialization.

    References:
      Chen et al. (2023), Sec. 3.2, Sec. 5.1 (Table 1) and App. F.3.
    """
    return PruningSchedule((check_int(step, "step", minimum=0),), (check_ratio(ratio, "ratio"),))


def linear(times: Iterable[int], final_ratio: float) -> PruningSchedule:
    """The linear schedule ``{t_j, r_f / q}_{j=1}^q``: equal increments at the given times.

    Each of the ``q = len(times)`` events prunes a further ``final_ratio / q``: the ratio after
    event ``j`` (1-based) is ``final_ratio * j / q``, and exactly ``final_ratio`` after the last.

    Args:
      times: strictly increasing non-negative steps ``t_1 < ... < t_q``.
      final_ratio: the target ``r_f`` in ``(0, 1)``.

    References:
      Chen et al. (2023), Sec. 3.2 (``{t_j, r_f / t_max}_{j=1}^{t_max}``, citing Hoefler et al.
      (2021), "Sparsity in deep learning").
    """
    steps = _check_steps("times", times)
    final_ratio = check_ratio(final_ratio, "final_ratio")
    q = len(steps)
    return PruningSchedule(steps, tuple(final_ratio * (j / q) for j in range(1, q + 1)))


def per_epoch_from(
    start: int,
    end: int,
    target: float,
    steps_per_epoch: int = 1,
    *,
    num_groups: int | None = None,
) -> PruningSchedule:
    """Prune the same number of groups at the start of every epoch ``start, ..., end``.

    The ``E = end - start + 1`` events are at steps ``e * steps_per_epoch``; after the ``j``-th
    the ratio is ``target * j / E``, reaching ``target`` at epoch ``end``.  With :func:`num_pruned`
    (round to nearest) the number of pruned groups after event ``j`` is ``j * target * p / E``
    for ``p`` groups, so each epoch prunes the same number exactly when ``target * p / E`` is a
    whole number.  Pass ``num_groups=p`` to have this checked.

    Args:
      start: the first pruning epoch (15 for VGG-16, 5 for ResNet-56 in Chen et al. (2023)).
      end: the epoch at which ``target`` is reached, ``>= start``.
      target: the final pruned fraction in ``(0, 1)``.
      steps_per_epoch: steps per epoch, ``>= 1``.
      num_groups: optional ``p``; if given, ``target * p`` must be a whole number of groups
        divisible by ``E`` (ValueError otherwise).

    References:
      Chen et al. (2023), Sec. 5.3 and App. E.4 / F.1 ("starting from epoch-15, we prune the same
      number of filters at each epoch until the target sparsity is reached").
    """
    start = check_int(start, "start", minimum=0)
    end = check_int(end, "end", minimum=start)
    target = check_ratio(target, "target")
    steps_per_epoch = check_int(steps_per_epoch, "steps_per_epoch", minimum=1)
    epochs = end - start + 1
    if num_groups is not None:
        num_groups = check_int(num_groups, "num_groups", minimum=1)
        total = target * num_groups
        count = round(total)
        if abs(total - count) > 1e-9 * num_groups:
            raise ValueError(
                f"target * num_groups = {target} * {num_groups} = {total} is not a whole number "
                "of groups"
            )
        if count % epochs:
            raise ValueError(
                f"cannot prune {count} groups in equal numbers over the {epochs} epochs "
                f"{start}..{end}: choose end so that end - start + 1 divides {count}"
            )
    return linear(tuple((start + i) * steps_per_epoch for i in range(epochs)), target)


def polynomial(
    initial_ratio: float,
    final_ratio: float,
    begin_step: int,
    end_step: int,
    frequency: int,
    power: float = 3,
) -> PruningSchedule:
    """Gradual pruning of Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(n Δt))^3``.

    Events are at ``t = t_0 + k Δt`` for ``k = 0, ..., n`` with ``t_0 = begin_step``,
    ``Δt = frequency`` and ``n Δt = end_step - begin_step``; the ratio after event ``k`` is
    ``s_f + (s_i - s_f)(1 - k/n)^power``: ``s_i`` at ``begin_step`` and ``s_f`` from
    ``end_step`` on.  JaxPruner's ``PolynomialSchedule`` differs in two details that this
    function does not copy: it tests ``step % frequency == 0`` (not relative to ``t_0``) and
    evaluates the formula at ``step + 1``.

    Args:
      initial_ratio: ``s_i`` in ``[0, final_ratio)``.
      final_ratio: ``s_f`` in ``(0, 1)``.
      begin_step: ``t_0 >= 0``.
      end_step: ``> begin_step``, with ``end_step - begin_step`` a multiple of ``frequency``.
      frequency: ``Δt >= 1`` steps between events.
      power: the exponent, ``> 0`` (3 in Zhu & Gupta).

    References:
      Zhu & Gupta (2017), "To prune, or not to prune", eq. (1).  Lee et al. (2024), JaxPruner
      (``sparsity_schedules.PolynomialSchedule``).
    """
    initial_ratio = check_ratio(initial_ratio, "initial_ratio", allow_zero=True)
    final_ratio = check_ratio(final_ratio, "final_ratio")
    if initial_ratio >= final_ratio:
        raise ValueError(
            f"initial_ratio must be below final_ratio={final_ratio}, got {initial_ratio}"
        )
    begin_step = check_int(begin_step, "begin_step", minimum=0)
    end_step = check_int(end_step, "end_step", minimum=0)
    if end_step <= begin_step:
        raise ValueError(f"end_step must exceed begin_step={begin_step}, got {end_step}")
    frequency = check_int(frequency, "frequency", minimum=1)
    power = check_real(power, "power", minimum=0.0, strict=True)
    if (end_step - begin_step) % frequency:
        raise ValueError(
            f"end_step - begin_step = {end_step - begin_step} must be a multiple of "
            f"frequency={frequency}"
        )
    n = (end_step - begin_step) // frequency
    steps = tuple(begin_step + k * frequency for k in range(n + 1))
    ratios = tuple(
        final_ratio + (initial_ratio - final_ratio) * (1.0 - k / n) ** power for k in range(n + 1)
    )
    return PruningSchedule(steps, ratios)


def iterative_magnitude(
    rounds: int,
    round_length: int,
    rewind_step: int,
    *,
    ratio_per_round: float | None = None,
    final_ratio: float | None = None,
) -> PruningSchedule:
    """Iterative magnitude pruning with weight rewinding (lottery-ticket training, LTH/IMP).

    Each round trains to the end of a run of ``round_length`` steps and then prunes a fraction
    ``q`` of the weights still alive, so the pruned fraction after round ``j`` is
    ``1 - (1 - q)^j``.  After each event the surviving weights are reset to their values at
    ``rewind_step`` (saved by the trainer), and so is the position in the run (e.g. of the
    learning-rate schedule): round 1 trains steps ``[0, L)`` and later rounds train the
    ``L - k`` steps from ``k = rewind_step`` to the end of the run.  Counting every training step
    across rounds, event ``j`` (1-based) is at step ``L + (j - 1)(L - k)``.  A final retraining
    of the last mask (another ``L - k`` steps) follows the last event.

    Args:
      rounds: number of pruning rounds, ``>= 1``.
      round_length: ``L``, the steps of one full run, ``>= 1``.
      rewind_step: ``k`` in ``[0, L)``; Chen et al. (2023) rewind to 5% of the maximum epochs, and
        ``k = 0`` is the original lottery ticket (reset to initialization).
      ratio_per_round: ``q`` in ``(0, 1)``; or
      final_ratio: the target ``1 - (1 - q)^rounds`` in ``(0, 1)``, giving
        ``q = 1 - (1 - final_ratio)^(1 / rounds)``.  Give exactly one of the two.

    Returns:
      A schedule whose ``rewind_step`` is ``k``.

    References:
      Frankle & Carbin (2019), "The lottery ticket hypothesis"; Frankle et al. (2019),
      "Stabilizing the lottery ticket hypothesis"; Frankle et al. (2020), "Linear mode
      connectivity and the lottery ticket hypothesis" (rewinding).  Chen et al. (2023), App. E.3
      (LTH baselines rewind to 5% of the maximum epochs; Chen et al. 2020).
    """
    rounds = check_int(rounds, "rounds", minimum=1)
    round_length = check_int(round_length, "round_length", minimum=1)
    rewind_step = check_int(rewind_step, "rewind_step", minimum=0)
    if rewind_step >= round_length:
        raise ValueError(
            f"rewind_step must be below round_length={round_length}, got {rewind_step}"
        )
    if (ratio_per_round is None) == (final_ratio is None):
        raise ValueError(
            "give exactly one of ratio_per_round and final_ratio, got "
            f"ratio_per_round={ratio_per_round!r}, final_ratio={final_ratio!r}"
        )
    if ratio_per_round is not None:
        kept_per_round = 1.0 - check_ratio(ratio_per_round, "ratio_per_round")
    else:
        kept_per_round = (1.0 - check_ratio(final_ratio, "final_ratio")) ** (1.0 / rounds)
    steps = tuple(round_length + j * (round_length - rewind_step) for j in range(rounds))
    ratios = tuple(1.0 - kept_per_round**j for j in range(1, rounds + 1))
    return PruningSchedule(steps, ratios, rewind_step=rewind_step)


def lth_schedule(
    num_steps: int, ratio: float, *, rounds: int = 3, rewind_fraction: float = 0.05
) -> PruningSchedule:
    """The lottery-ticket baseline fitted into a run of ``num_steps`` steps.

    ``rounds`` rounds of :func:`iterative_magnitude` pruning to ``ratio`` (the same share of
    the remaining groups each round), rewinding to ``k = max(1, round(rewind_fraction *
    num_steps))``, with the longest round length ``L`` such that ``L + rounds (L - k) <=
    num_steps``: every event and the retraining after the last one fit into the run.

    Args:
      num_steps: training steps of the whole run, ``>= 1``.
      ratio: final pruned fraction, in ``(0, 1)``.
      rounds: pruning rounds, ``>= 1``.
      rewind_fraction: rewind step as a fraction of ``num_steps``, in ``(0, 1)``.

    Returns:
      A schedule of ``rounds`` events whose ``rewind_step`` is ``k``.

    Raises:
      ValueError: ``num_steps`` too short for ``rounds`` rounds after the rewind step.

    References:
      Chen et al. (2023), App. E.3 (LTH rewinds to 5% of the maximum epochs); reading PL-9
      (docs/readings.md).  Frankle et al. (2020) (rewinding).
    """
    num_steps = check_int(num_steps, "num_steps", minimum=1)
    rounds = check_int(rounds, "rounds", minimum=1)
    rewind_fraction = check_ratio(rewind_fraction, "rewind_fraction")
    rewind = max(1, round(rewind_fraction * num_steps))
    length = (num_steps + rounds * rewind) // (rounds + 1)
    if length <= rewind:
        raise ValueError(f"num_steps: {num_steps} steps are too few for {rounds} LTH rounds")
    return iterative_magnitude(rounds, length, rewind, final_ratio=ratio)
