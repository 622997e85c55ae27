"""The experiment registry: every registered name resolves, with the three presets, and
command-line overrides are parsed by field type."""

from __future__ import annotations

import dataclasses

import pytest

from jaxprune.experiments import EXPERIMENTS, PRESET_NAMES, apply_overrides, get_experiment


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_has_three_presets_of_one_config_type(name):
    experiment = get_experiment(name)
    assert experiment.name == name and experiment.description
    assert tuple(experiment.presets) == PRESET_NAMES
    types = {type(config) for config in experiment.presets.values()}
    assert len(types) == 1 and dataclasses.is_dataclass(types.pop())
    assert callable(experiment.run)


def test_overrides_are_parsed_by_field_type():
    config = get_experiment("demo").presets["smoke"]
    changed = apply_overrides(
        config, ["seeds=3,4", "ratio=0.5", "per_layer=true", "methods=dense,pl", "prune_step=5"]
    )
    assert changed.seeds == (3, 4) and changed.ratio == 0.5 and changed.per_layer is True
    assert changed.methods == ("dense", "pl") and changed.prune_step == 5
    assert apply_overrides(config, []) == config


def test_unknown_experiment_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown experiment 'x'; expected one of demo"):
        get_experiment("x")
