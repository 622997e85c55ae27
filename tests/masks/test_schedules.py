"""Tests of jaxprune.masks.schedules: closed forms, rounding to group counts, jit, validation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune.masks.schedules import (
    PruningSchedule,
    iterative_magnitude,
    linear,
    lth_schedule,
    num_pruned,
    one_shot,
    per_epoch_from,
    polynomial,
)


def _ratios(schedule: PruningSchedule, steps) -> np.ndarray:
    return np.asarray(schedule.ratio(jnp.asarray(steps)), np.float64)


def test_one_shot_prunes_once_at_its_step():
    schedule = one_shot(5, 0.75)  # the paper's {5, 75%}
    assert schedule.event_steps == (5,)
    assert schedule.event_ratios == (0.75,)
    assert schedule.rewind_step is None
    np.testing.assert_array_equal(
        _ratios(schedule, range(9)), [0, 0, 0, 0, 0, 0.75, 0.75, 0.75, 0.75]
    )
    assert [schedule.is_event(t) for t in range(7)] == [False] * 5 + [True, False]
    assert one_shot(0, 0.5).ratio(0) == 0.5  # pruning at initialization


def test_linear_prunes_equal_increments_up_to_the_final_ratio():
    times, final = (2, 4, 7, 9), 0.6
    schedule = linear(times, final)
    ratios = np.asarray(schedule.event_ratios)
    np.testing.assert_allclose(np.diff(ratios, prepend=0.0), final / 4, rtol=1e-12)
    assert ratios[-1] == final
    np.testing.assert_allclose(ratios, [0.15, 0.3, 0.45, 0.6], rtol=1e-12)
    expected = [0, 0, 0.15, 0.15, 0.3, 0.3, 0.3, 0.45, 0.45, 0.6, 0.6]
    np.testing.assert_allclose(_ratios(schedule, range(11)), expected, rtol=1e-6)
    assert [t for t in range(12) if schedule.is_event(t)] == list(times)


def test_per_epoch_from_paper_vgg_setting():
    """From epoch 15 to 24, 10 steps per epoch, 50% of 40 filters: 2 filters per epoch."""
    schedule = per_epoch_from(15, 24, 0.5, steps_per_epoch=10, num_groups=40)
    assert schedule.event_steps == tuple(range(150, 250, 10))
    counts = np.asarray(num_pruned(schedule.ratio(jnp.arange(300)), 40))
    assert np.all(counts[:150] == 0)
    for j, step in enumerate(schedule.event_steps, start=1):
        assert np.all(counts[step : step + 10] == 2 * j)
    assert np.all(counts[240:] == 20)


@settings(max_examples=60, deadline=None)
@given(
    epochs=st.sampled_from((1, 2, 3, 7, 10, 13, 24, 60)),  # few shapes: few compiles
    per_epoch=st.integers(1, 200),
    unpruned=st.integers(1, 5000),
    start=st.integers(0, 30),
)
def test_per_epoch_from_prunes_the_same_number_each_epoch(epochs, per_epoch, unpruned, start):
    groups = epochs * per_epoch + unpruned
    schedule = per_epoch_from(
        start, start + epochs - 1, epochs * per_epoch / groups, num_groups=groups
    )
    expected = per_epoch * np.arange(1, epochs + 1)
    # The rounding rule on the float64 ratios, and num_pruned on the float32 ratio(step).
    ratios = np.asarray(schedule.event_ratios)
    np.testing.assert_array_equal(np.floor(ratios * groups + 0.5), expected)
    steps = np.full(60, schedule.event_steps[-1])  # one shape for every example: one compile
    steps[:epochs] = schedule.event_steps
    counts = num_pruned(schedule.ratio(jnp.asarray(steps)), groups)
    np.testing.assert_array_equal(np.asarray(counts)[:epochs], expected)


def test_per_epoch_from_rejects_unequal_counts():
    with pytest.raises(ValueError, match=r"cannot prune 20 groups in equal numbers over the 3"):
        per_epoch_from(15, 17, 0.5, num_groups=40)
    with pytest.raises(ValueError, match=r"0.5 \* 13 = 6.5 is not a whole number"):
        per_epoch_from(15, 17, 0.5, num_groups=13)


def test_polynomial_matches_zhu_gupta_formula():
    s_i, s_f, t0, dt, n = 0.1, 0.8, 100, 50, 8
    schedule = polynomial(s_i, s_f, t0, t0 + n * dt, dt)
    assert schedule.event_steps == tuple(t0 + k * dt for k in range(n + 1))

    def zhu_gupta(t):
        return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

    for t in (t0, t0 + dt, t0 + 3 * dt, t0 + 7 * dt, t0 + n * dt):
        assert schedule.ratio(t) == pytest.approx(zhu_gupta(t), rel=1e-6)
        assert schedule.event_ratios[(t - t0) // dt] == pytest.approx(zhu_gupta(t), rel=1e-15)
    assert schedule.event_ratios[0] == pytest.approx(s_i, rel=1e-15)
    assert schedule.event_ratios[-1] == s_f
    # Constant between events, dense before t0, final after the end.
    assert schedule.ratio(t0 + 3 * dt + 17) == schedule.ratio(t0 + 3 * dt)
    assert schedule.ratio(t0 - 1) == 0.0
    assert schedule.ratio(10_000) == pytest.approx(s_f, rel=1e-6)


def test_polynomial_closed_form_values_and_power():
    schedule = polynomial(0.0, 0.8, 0, 400, 100)  # 0.8 (1 - (1 - k/4)^3)
    np.testing.assert_allclose(
        schedule.event_ratios, [0.0, 0.8 * 37 / 64, 0.8 * 7 / 8, 0.8 * 63 / 64, 0.8], rtol=1e-15
    )
    square = polynomial(0.0, 0.5, 10, 30, 10, power=2)
    np.testing.assert_allclose(square.event_ratios, [0.0, 0.375, 0.5], rtol=1e-15)


def test_iterative_magnitude_cumulative_ratios_and_rewinding():
    schedule = iterative_magnitude(3, 100, 5, ratio_per_round=0.2)
    assert schedule.rewind_step == 5
    assert schedule.event_steps == (100, 195, 290)  # L + (j - 1)(L - k)
    np.testing.assert_allclose(schedule.event_ratios, [0.2, 0.36, 0.488], rtol=1e-14)
    from_final = iterative_magnitude(3, 100, 5, final_ratio=0.488)
    assert from_final.event_steps == schedule.event_steps
    np.testing.assert_allclose(from_final.event_ratios, schedule.event_ratios, rtol=1e-14)
    rounds = 10
    ten = iterative_magnitude(rounds, 1000, 50, final_ratio=0.9)
    q = 1 - 0.1 ** (1 / rounds)
    np.testing.assert_allclose(
        ten.event_ratios, [1 - (1 - q) ** j for j in range(1, rounds + 1)], rtol=1e-14
    )
    assert ten.final_ratio == pytest.approx(0.9, rel=1e-14)
    assert iterative_magnitude(2, 10, 0, ratio_per_round=0.5).event_steps == (10, 20)


SCHEDULES = {
    "one_shot": one_shot(5, 0.75),
    "linear": linear((2, 4, 7, 9), 0.6),
    "per_epoch": per_epoch_from(3, 6, 0.5, steps_per_epoch=4),
    "polynomial": polynomial(0.05, 0.9, 10, 40, 3),
    "imp": iterative_magnitude(3, 20, 1, final_ratio=0.75),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_ratio_under_jit_equals_eager(name):
    schedule = SCHEDULES[name]
    steps = list(range(schedule.event_steps[-1] + 6))
    eager = [float(schedule.ratio(t)) for t in steps]
    jitted = jax.jit(schedule.ratio)
    assert [float(jitted(jnp.int32(t))) for t in steps] == eager
    np.testing.assert_array_equal(np.asarray(jitted(jnp.asarray(steps))), eager)
    # The schedule is hashable, so it can be a static argument.
    static = jax.jit(lambda s, t: s.ratio(t), static_argnums=0)
    assert float(static(schedule, jnp.int32(steps[-1]))) == eager[-1]
    # is_event: Python bools for ints, a traced predicate under jit.
    events = [t for t in steps if schedule.is_event(t)]
    assert events == list(schedule.event_steps)
    traced = jax.jit(jax.vmap(schedule.is_event))(jnp.asarray(steps))
    np.testing.assert_array_equal(np.asarray(traced), [t in events for t in steps])
    picked = jax.jit(lambda t: jax.lax.cond(schedule.is_event(t), lambda: 1, lambda: 0))
    assert [int(picked(jnp.int32(t))) for t in steps] == [int(t in events) for t in steps]


def test_ratio_and_is_event_reject_non_integer_steps():
    schedule = one_shot(5, 0.75)
    with pytest.raises(TypeError, match="step must be an integer"):
        schedule.ratio(5.0)
    with pytest.raises(TypeError, match="step must be an integer"):
        schedule.is_event(jnp.asarray(True))


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: one_shot(-1, 0.5), ValueError, r"step: expected an int >= 0, got -1"),
        (lambda: one_shot(5, 1.0), ValueError, r"ratio: expected a fraction in \(0, 1\), got 1"),
        (lambda: one_shot(5, 0.0), ValueError, r"ratio: expected a fraction in \(0, 1\), got 0"),
        (lambda: one_shot(5, math.nan), ValueError, r"ratio: expected a finite number, got nan"),
        (lambda: one_shot(5.0, 0.5), TypeError, r"step: expected an int >= 0, got 5.0"),
        (lambda: one_shot(True, 0.5), TypeError, r"step: expected an int >= 0, got True"),
        (lambda: one_shot(5, "0.5"), TypeError, r"ratio: expected a real number"),
        (lambda: linear((), 0.5), ValueError, r"times must hold at least one step"),
        (
            lambda: linear((3, 3), 0.5),
            ValueError,
            r"times must be strictly increasing, got 3 then 3",
        ),
        (
            lambda: linear((4, 2), 0.5),
            ValueError,
            r"times must be strictly increasing, got 4 then 2",
        ),
        (lambda: linear((1, -2), 0.5), ValueError, r"times\[1\]: expected an int >= 0, got -2"),
        (lambda: linear(5, 0.5), TypeError, r"times must be a sequence, got 5"),
        (
            lambda: linear((1, 2), 1.5),
            ValueError,
            r"final_ratio: expected a fraction in \(0, 1\), got 1.5",
        ),
        (lambda: per_epoch_from(15, 14, 0.5), ValueError, r"end: expected an int >= 15, got 14"),
        (
            lambda: per_epoch_from(1, 3, 0.5, 0),
            ValueError,
            r"steps_per_epoch: expected a positive int, got 0",
        ),
        (
            lambda: per_epoch_from(1, 3, 0.5, num_groups=0),
            ValueError,
            r"num_groups: expected a positive int",
        ),
        (
            lambda: polynomial(0.0, 0.8, 10, 10, 1),
            ValueError,
            r"end_step must exceed begin_step=10",
        ),
        (lambda: polynomial(0.0, 0.8, 10, 5, 1), ValueError, r"end_step must exceed begin_step=10"),
        (
            lambda: polynomial(0.0, 0.8, 0, 100, 0),
            ValueError,
            r"frequency: expected a positive int, got 0",
        ),
        (lambda: polynomial(0.0, 0.8, 0, 100, 30), ValueError, r"= 100 must be a multiple of"),
        (lambda: polynomial(0.9, 0.8, 0, 100, 10), ValueError, r"initial_ratio must be below"),
        (
            lambda: polynomial(-0.1, 0.8, 0, 100, 10),
            ValueError,
            r"initial_ratio: expected a fraction in \[0, 1\)",
        ),
        (
            lambda: polynomial(0.0, 0.8, 0, 100, 10, 0),
            ValueError,
            r"power: expected a number in \(0, inf\), got 0",
        ),
        (
            lambda: polynomial(0.0, 0.8, 0, 100, 10, "3"),
            TypeError,
            r"power: expected a real number",
        ),
        (
            lambda: iterative_magnitude(3, 100, 5),
            ValueError,
            r"exactly one of ratio_per_round and final_ratio",
        ),
        (
            lambda: iterative_magnitude(3, 100, 5, ratio_per_round=0.2, final_ratio=0.5),
            ValueError,
            r"exactly one of ratio_per_round and final_ratio",
        ),
        (
            lambda: iterative_magnitude(3, 100, 100, ratio_per_round=0.2),
            ValueError,
            r"rewind_step must be below round_length=100, got 100",
        ),
        (
            lambda: iterative_magnitude(0, 100, 5, ratio_per_round=0.2),
            ValueError,
            r"rounds: expected a positive int, got 0",
        ),
        (
            lambda: iterative_magnitude(3, 100, 5, ratio_per_round=1.0),
            ValueError,
            r"ratio_per_round: expected a fraction in \(0, 1\), got 1",
        ),
        (lambda: num_pruned(0.5, 0), ValueError, r"num_groups: expected a positive int, got 0"),
        (lambda: PruningSchedule((1, 2), (0.5,)), ValueError, r"one ratio per event step"),
        (
            lambda: PruningSchedule((1, 2), (0.5, 0.4)),
            ValueError,
            r"event_ratios must be non-decreasing, got 0.5 then 0.4",
        ),
        (
            lambda: PruningSchedule((1,), (1.0,)),
            ValueError,
            r"event_ratios\[0\]: expected a fraction in \[0, 1\)",
        ),
        (
            lambda: PruningSchedule((3, 5), (0.1, 0.2), rewind_step=3),
            ValueError,
            r"rewind_step must precede the first event step 3, got 3",
        ),
    ],
)
def test_bad_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_schedule_fields_are_normalized_to_tuples_of_python_numbers():
    schedule = PruningSchedule(np.array([2, 5]), [np.float32(0.25), 0.5], rewind_step=np.int64(1))
    assert schedule.event_steps == (2, 5) and type(schedule.event_steps[0]) is int
    assert schedule.event_ratios == (0.25, 0.5) and type(schedule.event_ratios[0]) is float
    assert schedule.rewind_step == 1 and type(schedule.rewind_step) is int
    assert hash(schedule) == hash(PruningSchedule((2, 5), (0.25, 0.5), rewind_step=1))


def test_num_pruned_agrees_with_ratio_to_k_including_ties():
    from jaxprune.masks.mask import ratio_to_k

    for p in (1, 2, 5, 8, 10, 40, 97):
        for ratio in (0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.75, 0.9):
            if (1 - ratio) * p < 0.5:
                continue
            assert p - int(num_pruned(ratio, p)) == ratio_to_k(p, ratio), (p, ratio)


def test_lth_schedule_fits_rounds_into_the_run_with_rewinding_to_five_percent():
    schedule = lth_schedule(300, 0.75)
    # k = 15, L = (300 + 3 k) // 4 = 86: events at L + j (L - k), the last retraining fits.
    assert schedule == iterative_magnitude(3, 86, 15, final_ratio=0.75)
    assert schedule.event_steps == (86, 157, 228) and schedule.event_steps[-1] + 71 <= 300
    assert schedule.final_ratio == pytest.approx(0.75)
    assert lth_schedule(300, 0.5, rounds=2, rewind_fraction=0.1).rewind_step == 30
    assert lth_schedule(10, 0.5).rewind_step == 1  # at least one step


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_steps": 4}, ValueError, "num_steps: 4 steps are too few for 3 LTH rounds"),
        ({"ratio": 1.0}, ValueError, r"final_ratio: expected a fraction in \(0, 1\)"),
        ({"rounds": 0}, ValueError, "rounds: expected a positive int"),
        ({"rewind_fraction": 0.0}, ValueError, r"rewind_fraction: expected a fraction in \(0, 1\)"),
        ({"num_steps": 300.0}, TypeError, "num_steps: expected a positive int"),
    ],
)
def test_lth_schedule_rejects_bad_arguments(kwargs, error, match):
    arguments = {"num_steps": 300, "ratio": 0.5, **kwargs}
    with pytest.raises(error, match=match):
        lth_schedule(**arguments)
