"""Benchmark: cost of PL gating (features + gating training) and the time saved by pruning.

    scripts/with-env python experiments/benchmarks/bench_pl_gating.py                  # small pl_bert
    scripts/with-env python experiments/benchmarks/bench_pl_gating.py --preset smoke   # quick check
    scripts/with-env python experiments/benchmarks/bench_pl_gating.py --num-steps 3000 # a longer run
    scripts/with-env python experiments/benchmarks/bench_pl_gating.py --from DIR       # a pl_bert output
    scripts/with-env python experiments/benchmarks/bench_pl_gating.py --quick          # smoke, seed 0
        [--seeds 0,1,2] [--json PATH]

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

import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from _report import Row, benchmark_parser, write_rows

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


class Figures(NamedTuple):
    """Per-seed figures of a dense/PL comparison (arrays of shape ``(seeds,)``, ``dense_wall`` the
    dense runs' mean); ``warm`` is ``None`` when the results hold no warm selection times."""

    wall: np.ndarray
    event: np.ndarray
    dense_wall: float
    warm: np.ndarray | None


def figures(results: dict[str, dict[str, list[float]]]) -> Figures:
    """The cold figures of ``results``.

    The bench's repeated (warm) selection is not part of the PL run: it is subtracted from the
    run's wall and event times.
    """
    pl, dense = results["pl"], results["dense"]
    warm = pl.get("warm_event_seconds")
    repeated = np.zeros(len(pl["wall_seconds"])) if warm is None else np.asarray(warm)
    return Figures(
        wall=np.asarray(pl["wall_seconds"]) - repeated,
        event=np.asarray(pl["event_seconds"]) - repeated,
        dense_wall=float(np.mean(dense["wall_seconds"])),
        warm=None if warm is None else repeated,
    )


def report(f: Figures) -> str:
    """Lines of measured figures next to the paper's and the target."""
    share = f.event / f.wall
    lines = [
        f"seeds: {len(share)}",
        f"wall s: dense {f.dense_wall:.1f}, PL {f.wall.mean():.1f} (event {f.event.mean():.1f})",
        f"event share of PL wall time: {share.mean():.1%} ± {share.std():.1%}   "
        f"(paper {PAPER_SHARE}, target <= {TARGET_SHARE:.0%})",
    ]
    if f.warm is not None:
        warm_share = f.warm / (f.wall - f.event + f.warm)
        lines.append(
            f"  without compilation:       {warm_share.mean():.1%} ± {warm_share.std():.1%}   "
            f"(event {f.warm.mean():.2f} s with compiled functions)"
        )
    lines += [
        f"wall-clock saving vs dense:  {1 - f.wall.mean() / f.dense_wall:+.1%}   "
        f"(paper {PAPER_SAVING:.0%})",
        f"saving without the event:    {1 - (f.wall - f.event).mean() / f.dense_wall:+.1%}",
    ]
    return "\n".join(lines)


def rows(f: Figures, setting: str) -> list[Row]:
    """The figures of :func:`report` as table rows."""
    share = f.event / f.wall
    saving = 1 - f.wall.mean() / f.dense_wall
    out = [
        Row(
            bench="pl_gating",
            what=f"PL event share of the run's wall time, {setting}",
            jaxprune=f"{share.mean():.1%} ± {share.std():.1%} (event {f.event.mean():.1f} s)",
            peer=f"paper {PAPER_SHARE}",
            ratio=float(share.mean()),
            target=f"ratio <= {TARGET_SHARE}",
            met=bool(share.mean() <= TARGET_SHARE),
            note=f"{len(share)} seed(s), compilation included",
        )
    ]
    if f.warm is not None:
        warm_share = f.warm / (f.wall - f.event + f.warm)
        out.append(
            Row(
                bench="pl_gating",
                what=f"PL event share without compilation, {setting}",
                jaxprune=f"{warm_share.mean():.1%} (event {f.warm.mean():.2f} s compiled)",
                peer=f"paper {PAPER_SHARE}",
                ratio=float(warm_share.mean()),
                target=f"ratio <= {TARGET_SHARE}",
                met=bool(warm_share.mean() <= TARGET_SHARE),
                note="the event's selection re-run on the same state, compiled",
            )
        )
    out.append(
        Row(
            bench="pl_gating",
            what=f"wall-clock saving of compacted PL training vs dense, {setting}",
            jaxprune=f"PL {f.wall.mean():.1f} s, saving {saving:+.1%}",
            peer=f"dense {f.dense_wall:.1f} s; paper saving {PAPER_SAVING:.0%}",
            ratio=float(f.wall.mean() / f.dense_wall),
            note=f"ratio PL/dense wall; saving without the event "
            f"{1 - (f.wall - f.event).mean() / f.dense_wall:+.1%}",
        )
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--preset", choices=("smoke", "small"), help="default small (smoke with --quick)"
    )
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2; 0 with --quick)")
    parser.add_argument("--num-steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--from", dest="source", type=Path, help="a pl_bert output directory")
    args = parser.parse_args(argv)
    preset = args.preset or ("smoke" if args.quick else "small")
    if args.source is not None:
        results = json.loads((args.source / "results.json").read_text())["results"]
        setting = f"pl_bert run {args.source}"
    else:
        seeds = tuple(int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(","))
        results = measure(preset, seeds, args.num_steps)
        steps = "" if args.num_steps is None else f", {args.num_steps} steps"
        setting = f"pl_bert --preset {preset}{steps}"
    measured = figures(results)
    print(report(measured))
    write_rows(args.json, rows(measured, setting))


if __name__ == "__main__":
    main()
