"""The pl_ablations experiment: config validation, variants, and the smoke preset."""

from __future__ import annotations

import dataclasses

import pytest

from jaxprune.experiments import get_experiment
from jaxprune.experiments.pl_ablations import PLAblationSettings, _pruner, variants
from jaxprune.methods.pl_gating import PLGatingConfig


@pytest.mark.parametrize("ratios", [(1.0,), (-0.1,), (0.5, 1.5)])
def test_ratio_outside_unit_interval_is_rejected(ratios):
    with pytest.raises(ValueError, match="ratios"):
        PLAblationSettings(ratios=ratios)


def test_schedule_beyond_training_is_rejected():
    with pytest.raises(ValueError, match="prune_epochs"):
        PLAblationSettings(prune_epochs=(0, 80), steps_per_epoch=10, num_steps=800)
    with pytest.raises(ValueError, match="linear_epochs"):
        PLAblationSettings(base_epoch=5, linear_epochs=80, steps_per_epoch=10, num_steps=800)


def test_other_fields_are_validated():
    with pytest.raises(ValueError, match="scalings"):
        PLAblationSettings(scalings=("sigmoid",))
    with pytest.raises(ValueError, match="alphas"):
        PLAblationSettings(alphas=(-1.0,))
    with pytest.raises(ValueError, match="topks: got \\['layer'\\]"):
        PLAblationSettings(topks=("layer",))
    with pytest.raises(ValueError, match="hessians: got \\['fisher'\\]"):
        PLAblationSettings(hessians=("fisher",))
    with pytest.raises(ValueError, match="normalizations"):
        PLAblationSettings(normalizations=("yes",))
    with pytest.raises(ValueError, match="report_steps"):
        PLAblationSettings(report_steps=(900,))
    with pytest.raises(ValueError, match="probe_counts"):
        PLAblationSettings(probe_counts=(1, 0))
    with pytest.raises(TypeError, match="probe_counts"):
        PLAblationSettings(probe_counts=(2.5,))
    with pytest.raises(TypeError, match="probe_counts: expected a tuple"):
        PLAblationSettings(probe_counts=64)


def test_variants_change_one_factor_and_skip_the_base():
    runs = variants(PLAblationSettings())
    assert set(runs) == {
        "base", "epoch 0", "epoch 50", "linear 10 epochs", "ratio 50%", "ratio 90%",
        "scaling softmax", "alpha 0", "alpha 10", "topk global", "hessian outputs",
        "eq. 36 unnormalized", "features layer", "probes 1", "probes 64",
    }  # fmt: skip
    base = runs["base"]
    assert (base.epoch, base.ratio, base.scaling, base.alpha) == (5, 0.75, "mean_one", 1.0)
    assert runs["alpha 0"].alpha == 0.0 and runs["alpha 0"].epoch == 5
    assert (base.topk, base.hessian, base.normalize, base.features) == (
        "per_layer", "auto", True, "global"
    )  # fmt: skip
    assert runs["topk global"] == dataclasses.replace(base, factor="topk", topk="global")
    assert runs["eq. 36 unnormalized"].normalize is False
    # Probe counts: the base keeps PLGatingConfig's default; each row changes only that.
    assert base.num_probes == PLGatingConfig().num_probes == 4
    for count in (1, 64):
        variant = runs[f"probes {count}"]
        assert variant == dataclasses.replace(base, factor="probes", num_probes=count)
        pruner = _pruner(variant, PLAblationSettings())
        assert pruner.settings["num_probes"] == count
    assert "probes 4" not in variants(PLAblationSettings(probe_counts=(4, 16)))  # = the base
    # The smoke preset (run by the test below) gets no probe rows: its run time is unchanged.
    smoke = variants(get_experiment("pl_ablations").presets["smoke"])
    assert not [name for name, v in smoke.items() if v.factor == "probes"]


def test_smoke_preset_writes_tables_and_plot(tmp_path):
    experiment = get_experiment("pl_ablations")
    out = experiment.run(experiment.presets["smoke"], tmp_path, False)
    for name in ("table.md", "results.json", "pl_ablations.png"):
        assert (tmp_path / name).stat().st_size > 0
    for factor in ("time", "schedule", "ratio", "scaling", "alpha", "topk", "hessian",
                   "normalize", "features"):  # fmt: skip
        assert f"**{factor}**" in out["table"]
    assert out["results"]["ratio 50%"]["group_sparsity"] == [0.5]
    assert out["results"]["base"]["group_sparsity"] == [0.75]
    assert out["results"]["topk global"]["group_sparsity"] == [0.75]
