"""``demo`` settings: the logging interval of the plotted curves divides the report steps."""

from __future__ import annotations

import dataclasses

import pytest

from jaxprune.experiments.demo import EXPERIMENT

SMOKE = EXPERIMENT.presets["smoke"]


@pytest.mark.parametrize("preset", sorted(EXPERIMENT.presets))
def test_presets_log_the_loss_at_least_20_times(preset):
    settings = EXPERIMENT.presets[preset]
    assert settings.num_steps // settings.log_every >= 20
    assert all(step % settings.log_every == 0 for step in settings.report_steps)


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"log_every": 0}, ValueError, "log_every: expected a positive int, got 0"),
        ({"log_every": 2.5}, TypeError, "log_every: expected a positive int, got 2.5"),
        (
            {"log_every": 8},
            ValueError,
            r"log_every: expected a divisor of every report step \(20, 40\), got 8",
        ),
    ],
)
def test_log_every_is_checked(changes, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(SMOKE, **changes)
