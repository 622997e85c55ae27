"""Benchmark: cost of PL gating (features + gating training) and the time saved by pruning.

    scripts/with-env python experiments/bench_pl_gating.py                  # small pl_bert
    scripts/with-env python experiments/bench_pl_gating.py --preset smoke   # quick check
    scripts/with-env python experiments/bench_pl_gating.py --from DIR       # a pl_bert output

Trains the ``pl_bert`` preset's BERT densely and with PL gating (dense and PL alternate per
seed, so slow phases of a shared machine hit both) and prints, next to the paper's figures:

* the pruning event's share of the PL run's wall time (``summary["event_share"]``: the engine
  times the event, i.e. feature kernels, gating-network training, TopK and compaction; jit
  compilation of the gating objective included) — paper 000 App. F.2: 2-3%, target <= 2%;
* the wall-clock saving ``1 - wall(PL) / wall(dense)`` of compacted PL training — Table 6: 29%.

With ``--from DIR`` the figures are read from ``DIR/results.json`` of a ``jaxprune experiment
pl_bert`` run instead (all its seeds).

References:
  Paper 000, Appendix F.2 (Table 6; "the training of the gating network accounts for only 2-3%
  of the total training time").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
from pathlib import Path

import numpy as np

from jaxprune.experiments import get_experiment
from jaxprune.experiments.compare import load_splits, run_comparison
from jaxprune.experiments.pl_bert import make_optimizer, make_pruner
from jaxprune.train import TrainConfig, build_model

TARGET_SHARE = 0.02
PAPER_SHARE = "2-3%"
PAPER_SAVING = 0.29


def measure(preset: str, seeds: tuple[int, ...]) -> dict[str, dict[str, list[float]]]:
    """``results`` of :func:`run_comparison` for dense and PL, seeds interleaved."""
    config = dataclasses.replace(
        get_experiment("pl_bert").presets[preset], methods=("dense", "pl"), analysis_every=0
    )
    splits = load_splits(config)
    model = build_model(
        "bert",
        num_outputs=splits.num_outputs,
        input_shape=splits.train["x"].shape[1:],
        preset=config.model_preset,
    )
    train_config = TrainConfig(
        num_steps=config.num_steps, batch_size=config.batch_size, compact=True, progress=False
    )
    merged: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as out:
        for seed in seeds:
            results, _ = run_comparison(
                model,
                splits,
                {m: functools.partial(make_pruner, m, config) for m in ("dense", "pl")},
                optimizer=functools.partial(make_optimizer, config),
                config=train_config,
                seeds=(seed,),
                report_steps=(config.num_steps,),
                out_dir=Path(out),
                progress=False,
            )
            for method, figures in results.items():
                for key, values in figures.items():
                    merged.setdefault(method, {}).setdefault(key, []).extend(values)
    return merged


def report(results: dict[str, dict[str, list[float]]]) -> str:
    """Lines of measured figures next to the paper's and the target."""
    pl, dense = results["pl"], results["dense"]
    share = np.asarray(pl["event_seconds"]) / np.asarray(pl["wall_seconds"])
    saving = 1 - np.mean(pl["wall_seconds"]) / np.mean(dense["wall_seconds"])
    steady = 1 - (np.mean(pl["wall_seconds"]) - np.mean(pl["event_seconds"])) / np.mean(
        dense["wall_seconds"]
    )
    return "\n".join(
        [
            f"seeds: {len(share)}",
            f"wall s: dense {np.mean(dense['wall_seconds']):.1f}, "
            f"PL {np.mean(pl['wall_seconds']):.1f} (event {np.mean(pl['event_seconds']):.1f})",
            f"event share of PL wall time: {share.mean():.1%} ± {share.std():.1%}   "
            f"(paper {PAPER_SHARE}, target <= {TARGET_SHARE:.0%})",
            f"wall-clock saving vs dense:  {saving:+.1%}   (paper {PAPER_SAVING:.0%})",
            f"saving without the event:    {steady:+.1%}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("smoke", "small"), default="small")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--from", dest="source", type=Path, help="a pl_bert output directory")
    args = parser.parse_args()
    if args.source is not None:
        results = json.loads((args.source / "results.json").read_text())["results"]
    else:
        results = measure(args.preset, tuple(int(s) for s in args.seeds.split(",")))
    print(report(results))


if __name__ == "__main__":
    main()
