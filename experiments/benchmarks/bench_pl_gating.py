"""Benchmark: cost of PL gating (features + gating training) and the time saved by pruning.

    scripts/with-env python experiments/benchmarks/bench_pl_gating.py                  # small pl_bert
    scripts/with-env python experiments/benchmarks/bench_pl_gating.py --preset smoke   # quick check
    scripts/with-env python experiments/benchmarks/bench_pl_gating.py --num-steps 3000 # a longer run
    scripts/with-env python experiments/benchmarks/bench_pl_gating.py --from DIR       # a pl_bert output

Trains the ``pl_bert`` preset's BERT densely and with PL gating (dense and PL alternate per
seed, so slow phases of a shared machine hit both) and prints, next to the paper's figures:

* the pruning event's share of the PL run's wall time (``summary["event_share"]``: the engine
  times the event, i.e. feature kernels, gating-network training, TopK and compaction; jit
  compilation of the gating objective included) — Chen et al. (2023), App. F.2: 2-3%, target <= 2%;
* the same share without compilation: the bench runs each event's selection a second time
  on the same state and functions (compiled by the first) and times that, against the run's
  training time outside the event;
* the wall-clock saving ``1 - wall(PL) / wall(dense)`` of compacted PL training — Table 6: 29%.

With ``--from DIR`` the cold figures are read from ``DIR/results.json`` of a ``jaxprune
experiment pl_bert`` run instead (all its seeds).

References:
  Chen et al. (2023), Appendix F.2 (Table 6; "the training of the gating network accounts for only 2-3%
  of the total training time").
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxprune.experiments import get_experiment
from jaxprune.experiments.compare import load_splits, run_comparison
from jaxprune.experiments.pl_bert import make_optimizer, method_pruner
from jaxprune.train import Pruner, TrainConfig, build_model

TARGET_SHARE = 0.02
PAPER_SHARE = "2-3%"
PAPER_SAVING = 0.29


def _selecting_twice(pruner: Pruner, warm_seconds: list[float]) -> Pruner:
    """``pruner`` whose events select twice, appending the second (compiled) selection's
    seconds to ``warm_seconds``; the first selection's result is the one used."""

    def select(context, state):
        result = pruner.select(context, state)
        start = time.perf_counter()
        jax.block_until_ready(pruner.select(context, state)[:2])
        warm_seconds.append(time.perf_counter() - start)
        return result

    return dataclasses.replace(pruner, select=select)


def measure(
    preset: str, seeds: tuple[int, ...], num_steps: int | None = None
) -> dict[str, dict[str, list[float]]]:
    """``results`` of :func:`run_comparison` for dense and PL, seeds interleaved; PL's
    ``warm_event_seconds`` is its events' time with compiled functions.  ``num_steps``
    lengthens (or shortens) the preset's run; the event stays at the preset's step."""
    config = get_experiment("pl_bert").presets[preset]
    steps = config.num_steps if num_steps is None else num_steps
    config = dataclasses.replace(
        config,
        methods=("dense", "pl"),
        analysis_every=0,
        num_steps=steps,
        report_steps=tuple(s for s in config.report_steps if s <= steps) or (steps,),
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
    warm: list[float] = []
    methods = {
        "dense": lambda: None,
        "pl": lambda: _selecting_twice(method_pruner("pl", config), warm),
    }
    with tempfile.TemporaryDirectory() as out:
        for seed in seeds:
            before = len(warm)
            results, _ = run_comparison(
                model,
                splits,
                methods,
                optimizer=functools.partial(make_optimizer, config),
                config=train_config,
                seeds=(seed,),
                report_steps=(config.num_steps,),
                out_dir=Path(out),
                progress=False,
            )
            results["pl"]["warm_event_seconds"] = [sum(warm[before:])]
            for method, figures in results.items():
                for key, values in figures.items():
                    merged.setdefault(method, {}).setdefault(key, []).extend(values)
    return merged


def report(results: dict[str, dict[str, list[float]]]) -> str:
    """Lines of measured figures next to the paper's and the target.

    The bench's repeated (warm) selection is not part of the PL run: it is subtracted from the
    run's wall and event times before the cold figures are formed.
    """
    pl, dense = results["pl"], results["dense"]
    warm = np.asarray(pl.get("warm_event_seconds", np.zeros(len(pl["wall_seconds"]))))
    wall = np.asarray(pl["wall_seconds"]) - warm
    event = np.asarray(pl["event_seconds"]) - warm
    dense_wall = np.mean(dense["wall_seconds"])
    share = event / wall
    lines = [
        f"seeds: {len(share)}",
        f"wall s: dense {dense_wall:.1f}, PL {wall.mean():.1f} (event {event.mean():.1f})",
        f"event share of PL wall time: {share.mean():.1%} ± {share.std():.1%}   "
        f"(paper {PAPER_SHARE}, target <= {TARGET_SHARE:.0%})",
    ]
    if "warm_event_seconds" in pl:
        warm_share = warm / (wall - event + warm)
        lines.append(
            f"  without compilation:       {warm_share.mean():.1%} ± {warm_share.std():.1%}   "
            f"(event {warm.mean():.2f} s with compiled functions)"
        )
    lines += [
        f"wall-clock saving vs dense:  {1 - wall.mean() / dense_wall:+.1%}   "
        f"(paper {PAPER_SAVING:.0%})",
        f"saving without the event:    {1 - (wall - event).mean() / dense_wall:+.1%}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("smoke", "small"), default="small")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--num-steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--from", dest="source", type=Path, help="a pl_bert output directory")
    args = parser.parse_args()
    if args.source is not None:
        results = json.loads((args.source / "results.json").read_text())["results"]
    else:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        results = measure(args.preset, seeds, args.num_steps)
    print(report(results))


if __name__ == "__main__":
    main()
