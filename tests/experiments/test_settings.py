"""The shared experiment settings: one validation of the common fields, the order of the
checks, PL options from settings fields, one cell format, and the deprecated old names."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from jaxprune.experiments import EXPERIMENTS, compare, get_experiment
from jaxprune.experiments.compare import mean_std, pruner_factories
from jaxprune.experiments.settings import (
    ComparisonSettings,
    MethodComparisonSettings,
    pl_options,
)
from jaxprune.masks import lth_schedule, one_shot


@dataclasses.dataclass(frozen=True)
class _Settings(MethodComparisonSettings):
    METHODS = ("dense", "snip", "pl")

    gating_steps: int = 3
    per_layer: bool = True


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"methods": ()}, ValueError, "methods: unknown \\[\\]; expected a non-empty subset"),
        ({"methods": ("obs",)}, ValueError, "methods: unknown \\['obs'\\]"),
        ({"ratio": 1.0}, ValueError, "ratio: expected a fraction in \\(0, 1\\), got 1"),
        ({"num_steps": 0}, ValueError, "num_steps: expected a positive int, got 0"),
        ({"batch_size": 2.0}, TypeError, "batch_size: expected a positive int"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate: expected a number in \\(0, inf\\)"),
        ({"report_steps": (400,)}, ValueError, "report_steps: expected steps in \\(0, num"),
        ({"report_steps": ()}, ValueError, "report_steps: expected steps"),
        ({"seeds": ()}, ValueError, "seeds: expected at least one seed, got \\(\\)"),
    ],
)
def test_shared_fields_are_validated_once_for_every_experiment(changes, error, message):
    with pytest.raises(error, match=message):
        _Settings(**changes)


def test_experiment_checks_run_before_the_report_steps():
    demo = get_experiment("demo").presets["smoke"]
    with pytest.raises(ValueError, match="prune_step: expected a step in \\[0, num_steps=5\\)"):
        dataclasses.replace(demo, num_steps=5)  # report steps (20, 40) are beyond it as well


@pytest.mark.parametrize("name", ["demo", "pl_ablations", "pl_bert", "pl_switch", "pl_vgg"])
def test_comparison_experiments_share_the_settings_type(name):
    assert isinstance(get_experiment(name).presets["small"], ComparisonSettings)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_names_its_settings_type_settings(name):
    assert type(get_experiment(name).presets["small"]).__name__.endswith("Settings")


def test_pl_options_come_from_fields_named_like_the_gating_config():
    assert pl_options(_Settings()) == {"gating_steps": 3, "per_layer": True}
    assert pl_options(_Settings(), seed=0, per_layer=False) == {
        "gating_steps": 3,
        "per_layer": False,
        "seed": 0,
    }


def test_pruner_factories_go_through_the_registry():
    factories = pruner_factories(
        ("dense", "snip", "lth"),
        lambda m: lth_schedule(100, 0.5) if m == "lth" else one_shot(3, 0.5),
        lambda m: {"per_layer": True},
    )
    assert factories["dense"]() is None
    assert factories["snip"]().schedule == one_shot(3, 0.5)
    assert factories["lth"]().name == "lth"


def test_mean_std_cells():
    assert mean_std([0.25], 2) == "0.25"
    assert mean_std([1.0, 3.0], 1) == "2.0 ± 1.4"
    assert mean_std([0.5, 0.5], 1, scale=100) == "50.0 ± 0.0"


@pytest.mark.parametrize(
    "module, old, new",
    [
        ("demo", "DemoConfig", "DemoSettings"),
        ("pl_vgg", "VGGConfig", "PLVGGSettings"),
        ("pl_switch", "SwitchConfig", "PLSwitchSettings"),
        ("pl_bert", "PLBertConfig", "PLBertSettings"),
        ("pl_bert", "make_pruner", "method_pruner"),
        ("pl_ablations", "PLAblationConfig", "PLAblationSettings"),
        ("grda_linear", "LinearRegressionConfig", "GRDALinearSettings"),
        ("grda_sparsity", "SparsityConfig", "GRDASparsitySettings"),
        ("grda_valley", "ValleyConfig", "GRDAValleySettings"),
    ],
)
def test_old_names_are_deprecated_aliases(module, old, new):
    module = importlib.import_module(f"jaxprune.experiments.{module}")
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use .*{new}"):
        assert getattr(module, old) is getattr(module, new)
    with pytest.raises(AttributeError):
        module.NoSuchName  # noqa: B018


def test_compare_lth_schedule_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="use jaxprune.masks.lth_schedule"):
        schedule = compare.lth_schedule(300, 0.75, 3)
    assert schedule == lth_schedule(300, 0.75, rounds=3)
