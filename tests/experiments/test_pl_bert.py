"""The pl_bert experiment: config validation, the PPL table, and the smoke preset end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxprune.experiments import get_experiment
from jaxprune.experiments.pl_bert import PLBertSettings, perplexity_table
from jaxprune.masks import lth_schedule


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ratio"):
        PLBertSettings(ratio=1.0)
    with pytest.raises(ValueError, match="prune_epoch"):
        PLBertSettings(prune_epoch=20, steps_per_epoch=20, num_steps=300)
    with pytest.raises(ValueError, match="methods"):
        PLBertSettings(methods=("dense", "obs"))
    with pytest.raises(ValueError, match="baselines"):
        PLBertSettings(baselines="later")


def test_lth_schedule_fits_the_run_and_rewinds_to_five_percent():
    schedule = lth_schedule(300, 0.75, rounds=3)
    assert schedule.rewind_step == 15
    assert schedule.event_steps[-1] < 300
    assert schedule.event_ratios[-1] == pytest.approx(0.75)


def test_perplexity_table_is_exp_of_losses():
    results = {
        name: {
            "train_loss@10": [loss, loss + 0.2],
            "test_perplexity": [ppl, ppl + 2.0],
            "wall_seconds": [10.0, 12.0],
            "event_seconds": [0.0, 0.5],
            "group_sparsity": [0.0, 0.0],
            "parameters": [100, 100],
        }
        for name, loss, ppl in (("dense", 2.0, 9.0), ("pl", 1.0, 5.0))
    }
    table = perplexity_table(results, (10,))
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()}
    assert (
        rows["pl"][1] == f"{np.exp([1.0, 1.2]).mean():.2f} ± {np.exp([1.0, 1.2]).std(ddof=1):.2f}"
    )
    assert rows["pl"][3] == "-4.00"
    assert rows["pl"][6] == "+0%"


def test_smoke_preset_writes_table_and_figures(tmp_path):
    experiment = get_experiment("pl_bert")
    config = experiment.presets["smoke"]
    out = experiment.run(config, tmp_path, False)
    for name in ("table.md", "results.json", "pl_bert.png", "heads.png", "figures.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert set(out["results"]) == set(config.methods)
    # The table's training PPL columns are exp of the mean loss the engine logged over the
    # report window (the gcd of the report steps and the run length) ending at each step.
    window = int(np.gcd.reduce([*config.report_steps, config.num_steps]))
    for method in config.methods:
        seed = config.seeds[0]
        run = tmp_path / "runs" / f"{method}_seed{seed}"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        step = config.report_steps[-1]
        logged = [r["train_loss"] for r in rows if "train_loss" in r]
        in_window = [
            r["train_loss"] for r in rows if step - window < r["step"] <= step and "train_loss" in r
        ]
        assert 1 < len(in_window) < len(logged)
        loss = np.mean(in_window)
        line = next(x for x in out["table"].splitlines() if x.startswith(f"| {method} |"))
        assert line.split(" | ")[len(config.report_steps)] == f"{np.exp(loss):.2f}"
    # PL against each baseline, paired by seed, follows the Table-1 layout (lower PPL wins).
    ppl = out["results"]
    paired_part = out["table"].split("Paired by seed", 1)[1]
    paired = next(x for x in paired_part.splitlines() if x.startswith("| snip"))
    difference = ppl["pl"]["test_perplexity"][0] - ppl["snip"]["test_perplexity"][0]
    assert paired.split(" | ")[1] == f"{difference:+.4f}"
    figures = out["figures"]
    layers, heads = np.shape(figures["head_conditions"])
    assert np.all(np.asarray(figures["head_conditions"]) >= 1.0)
    mask = np.asarray(figures["pl_mask"]).reshape(layers, heads)
    assert mask.sum() == round(0.25 * layers * heads) and np.all(mask.sum(axis=1) >= 1)
    assert figures["condition_after_event"] > 0
    assert dataclasses.asdict(config)["ratio"] == 0.75
