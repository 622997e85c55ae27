"""``pl_switch``: the smoke preset writes the Table 2 layout and the expert heatmaps; every
pruned method keeps ``(1 - ratio)·p`` experts with at least one per Switch layer; bad settings
raise clear ValueErrors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxprune.experiments.pl_switch import (
    EXPERIMENT,
    PLSwitchSettings,
    kept_experts,
    perplexity_table,
)
from jaxprune.masks import lth_schedule, ratio_to_k
from jaxprune.train import build_model

SMOKE = EXPERIMENT.presets["smoke"]


def test_smoke_writes_table_results_and_plots(smoke):
    out, result = smoke
    assert (out / "table.md").read_text().strip() == result["table"]
    for label in ("Switch-Transformer", "Switch-LTH (experts)", "SNIP (experts)"):
        assert f"| {label} |" in result["table"]
    assert "| PL (Chen et al.) (experts) |" in result["table"]
    assert "train PPL @20" in result["table"] and "Δ PPL" in result["table"]
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]["experts"]) == set(SMOKE.methods)
    for name in ("curves_experts.png", "experts_experts.png"):
        assert (out / name).stat().st_size > 1000
    ppl = result["results"]["experts"]["dense"]["test_perplexity"][0]
    assert np.isfinite(ppl) and ppl > 1.0


def test_heatmaps_keep_the_target_count_with_one_expert_per_layer(smoke):
    _, result = smoke
    heatmaps = result["experts"]["experts"]
    assert set(heatmaps) == set(SMOKE.methods) - {"dense"}
    layers, experts = heatmaps["pl"].shape
    assert (layers, experts) == (SMOKE.num_layers // SMOKE.moe_every, SMOKE.num_experts)
    for method, kept in heatmaps.items():  # one seed: entries are 0/1
        assert kept.sum() == ratio_to_k(layers * experts, SMOKE.ratio), method
        assert (kept.sum(axis=1) >= 1).all(), method


def test_kept_experts_composes_masks_of_compacted_events(tmp_path):
    model = build_model(
        "switch",
        num_outputs=50,
        input_shape=(8,),
        kind="experts+heads",
        overrides={"num_layers": 2, "moe_every": 1},
    )  # 2 Switch layers x 4 experts, then 2 layers x 4 heads: 16 groups
    first = np.ones(16, np.float32)
    first[[1, 2, 5, 9]] = 0  # experts 1, 2 of layer 0, expert 1 of layer 1, head 1
    np.savez(tmp_path / "event_10.npz", mask=first)
    second = np.ones(12, np.float32)
    second[1] = 0  # the second surviving group: expert 3 of layer 0
    np.savez(tmp_path / "event_30.npz", mask=second)
    kept = kept_experts(model, tmp_path)
    np.testing.assert_array_equal(kept, [[1, 0, 0, 0], [1, 0, 1, 1]])


def test_lth_schedule_fits_the_run():
    schedule = lth_schedule(300, 0.5)
    assert len(schedule.event_steps) == 3 and schedule.event_steps[-1] < 300
    assert schedule.rewind_step is not None and schedule.final_ratio == pytest.approx(0.5)
    with pytest.raises(ValueError, match="num_steps: 4 steps are too few"):
        lth_schedule(4, 0.5)


def test_perplexity_table_exponentiates_the_training_loss():
    figures = {
        "train_loss@10": [np.log(4.0)],
        "test_perplexity": [5.0],
        "wall_seconds": [1.0],
        "group_sparsity": [0.5],
        "parameters": [100],
    }
    table = perplexity_table({"x": figures}, (10,))
    assert "| x | 4.00 | 5.00 | 1.00 | 1.0 | 50% | 100 |" in table


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ratio": 1.0}, "ratio: expected a fraction in \\(0, 1\\), got 1"),
        ({"ratio": -0.1}, "ratio: expected a fraction in \\(0, 1\\)"),
        ({"prune_step": 300}, "prune_step: expected a step in \\[0, num_steps=300\\)"),
        ({"report_steps": (400,)}, "report_steps: expected steps in \\(0, num_steps=300\\]"),
        ({"kinds": ("filters",)}, "kinds: .* holds \\['filters'\\] that Switch does not have"),
        ({"methods": ("fpgm",)}, "methods: unknown \\['fpgm'\\]"),
        ({"seeds": ()}, "seeds: expected at least one seed"),
    ],
)
def test_bad_settings_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(PLSwitchSettings(), **changes)


def test_kept_experts_needs_an_expert_kind(tmp_path):
    model = build_model("switch", num_outputs=50, input_shape=(8,), kind="heads")
    with pytest.raises(ValueError, match=r"model\.kind: expected 'experts' or 'experts\+heads'"):
        kept_experts(model, tmp_path)
