"""``pl_vgg``: the smoke preset writes the Table 3 layout, the curves and the Figure 5 analogue;
the linear schedule prunes equal steps up to the ratio; bad settings raise clear ValueErrors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxprune.experiments.pl_vgg import EXPERIMENT, PLVGGSettings, linear_schedule

SMOKE = EXPERIMENT.presets["smoke"]


def test_smoke_writes_table_results_and_plots(smoke):
    out, result = smoke
    assert (out / "table.md").read_text().strip() == result["table"]
    for method in SMOKE.methods:
        assert f"| {method} |" in result["table"]
    assert "CHIP and DPFPS are not implemented" in result["table"]
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]) == set(SMOKE.methods)
    for name in ("curves.png", "condition.png"):
        assert (out / name).stat().st_size > 1000
    assert result["results"]["pl"]["group_sparsity"] == [pytest.approx(SMOKE.ratio, 0.05)]
    assert 0.0 <= result["results"]["pl"]["test_accuracy"][0] <= 1.0


def test_linear_schedule_prunes_equal_steps_from_the_start_epoch():
    config = dataclasses.replace(
        SMOKE, prune_start_epoch=2, prune_end_epoch=5, num_steps=100, ratio=0.5
    )
    schedule = linear_schedule(config, steps_per_epoch=10)
    assert schedule.event_steps == (20, 30, 40, 50)
    np.testing.assert_allclose(schedule.event_ratios, [0.125, 0.25, 0.375, 0.5])


def test_schedule_beyond_training_raises():
    config = dataclasses.replace(SMOKE, prune_end_epoch=3, num_steps=30)
    with pytest.raises(ValueError, match="prune_end_epoch: epoch 3 starts at step 30"):
        linear_schedule(config, steps_per_epoch=10)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ratio": 1.0}, "ratio: expected a fraction in \\(0, 1\\), got 1"),
        ({"ratio": -0.5}, "ratio: expected a fraction in \\(0, 1\\)"),
        (
            {"kind": "heads"},
            "kind: vgg has no group kind 'heads'; expected one of \\('filters',\\)",
        ),
        ({"model": "bert"}, "model: expected one of \\('vgg', 'resnet'\\), got 'bert'"),
        ({"methods": ("taylor",)}, "methods: unknown \\['taylor'\\]"),
        ({"prune_start_epoch": 6, "prune_end_epoch": 5}, "prune_end_epoch: expected 0 <="),
        ({"report_steps": (0,)}, "report_steps: expected steps in \\(0, num_steps=300\\]"),
        ({"seeds": ()}, "seeds: expected at least one seed"),
    ],
)
def test_bad_settings_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PLVGGSettings(), **changes)
