"""Benchmark of the training engine: prints measured ratios next to the issue's targets.

    scripts/with-env python experiments/benchmarks/bench_engine.py [--quick] [--json PATH]

1. Steps per second of ``jaxprune.train.train`` vs a hand-written minimal jit loop (same MLP,
   data, batches and Adam).  Each side is timed at two run lengths and the difference is used,
   so compilation and the final evaluation cancel out (after one untimed short run of each);
   the pair is repeated alternately and medians are reported (5 pairs of 100- and 600-step
   runs; ``--quick``: 2 pairs).  Target: engine ≥ 0.95× the hand-written loop.
2. Data-parallel scaling: examples per second of the engine on 1 vs 4 forced CPU devices
   (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, in a subprocess).  On a 2-core
   machine the 4 "devices" share 2 cores, so this measures overhead, not speed-up.  The
   subprocess runs on the CPU (``JAX_PLATFORMS=cpu``) whatever the accelerator.
3. Time in pruning events and analysis callbacks as a share of a run (the demo's setting: SNIP
   at step 100 of 600, NTK/Hessian analysis every 100 steps; ``--quick``: 300 steps).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows

from jaxprune.data import load_dataset
from jaxprune.data.batches import iterate_batches
from jaxprune.masks import one_shot
from jaxprune.train import TrainConfig, build_model, criterion_pruner, train
from jaxprune.train.parallel import forced_cpu_devices_env

HIDDEN, BATCH = "256,256", 64


class Sizes(NamedTuple):
    """Run lengths: ``short`` and ``long`` steps of part 1, ``pairs`` of them, ``scaling_steps``
    of part 2's two runs per device count and ``scaling_rounds`` of those, ``shares_steps`` of
    part 3."""

    short: int
    long: int
    pairs: int
    scaling_steps: tuple[int, int]
    scaling_rounds: int
    shares_steps: int


FULL = Sizes(
    short=100, long=600, pairs=5, scaling_steps=(50, 250), scaling_rounds=2, shares_steps=600
)
QUICK = Sizes(
    short=100, long=600, pairs=2, scaling_steps=(25, 125), scaling_rounds=2, shares_steps=300
)


def engine_seconds(model, splits, steps: int) -> float:
    config = TrainConfig(num_steps=steps, batch_size=BATCH, log_every=50, progress=False)
    start = time.perf_counter()
    train(model, splits, optax.adam(1e-3), config)
    return time.perf_counter() - start


def handwritten_seconds(model, splits, steps: int) -> float:
    """The minimal loop a user would write: jit(value_and_grad + adam), device_put batches."""
    start = time.perf_counter()
    optimizer = optax.adam(1e-3)
    params = model.module.init(jax.random.key(0), splits.train["x"][:1])["params"]
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x, y):
        def loss(p):
            logits = model.module.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    x, y = splits.train["x"], splits.train["y"]
    batches = iterate_batches(len(x), BATCH, seed=0)
    for _ in range(steps):
        index, _ = next(batches)
        params, state, _ = step(params, state, jax.device_put(x[index]), jax.device_put(y[index]))
    jax.block_until_ready(params)
    logits = model.module.apply({"params": params}, splits.test["x"])  # final evaluation
    float(optax.softmax_cross_entropy_with_integer_labels(logits, splits.test["y"]).mean())
    return time.perf_counter() - start


def steps_per_second(sizes: Sizes) -> Row:
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset=HIDDEN)
    short, long = sizes.short, sizes.long
    engine_seconds(model, splits, short)  # warm-up: what a first run compiles for later ones
    handwritten_seconds(model, splits, short)
    engine, handwritten = [], []
    for _ in range(sizes.pairs):
        engine.append(
            (long - short)
            / (engine_seconds(model, splits, long) - engine_seconds(model, splits, short))
        )
        handwritten.append(
            (long - short)
            / (handwritten_seconds(model, splits, long) - handwritten_seconds(model, splits, short))
        )
    e, h = statistics.median(engine), statistics.median(handwritten)
    what = f"MLP 64-{HIDDEN.replace(',', '-')}-10, batch {BATCH}, Adam"
    print(
        f"1. {what}, {long - short} steps "
        f"(difference of {long}- and {short}-step runs, median of {sizes.pairs})"
    )
    print(
        f"   engine {e:8.1f} steps/s   hand-written jit loop {h:8.1f} steps/s   "
        f"ratio {e / h:.3f}  (target >= 0.95)"
    )
    return Row(
        bench="engine",
        what=f"train() steps/s vs a hand-written jit loop, {what}",
        jaxprune=f"{e:.1f} steps/s",
        peer=f"hand-written loop {h:.1f} steps/s",
        ratio=e / h,
        target="ratio >= 0.95",
        met=e / h >= 0.95,
        note=f"difference of {long}- and {short}-step runs, median of {sizes.pairs}; "
        f"{jax.default_backend()}",
    )


_SCALING = """
import json, sys, time, optax
from jaxprune.data import load_dataset
from jaxprune.train import TrainConfig, build_model, train
short, long, rounds = map(int, sys.argv[1:4])
splits = load_dataset("digits")
model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="256,256")
out = {}
for devices in (1, 4) * rounds:
    times = []
    for steps in (short, long):
        config = TrainConfig(num_steps=steps, batch_size=256, log_every=50, num_devices=devices,
                             progress=False)
        start = time.perf_counter()
        train(model, splits, optax.adam(1e-3), config)
        times.append(time.perf_counter() - start)
    out.setdefault(devices, []).append((long - short) * 256 / (times[1] - times[0]))
print(json.dumps(out))
"""


def scaling(sizes: Sizes) -> Row:
    env = forced_cpu_devices_env(4)
    arguments = [*map(str, sizes.scaling_steps), str(sizes.scaling_rounds)]
    done = subprocess.run(
        [sys.executable, "-c", _SCALING, *arguments], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    rates = {int(k): max(v) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}
    print(f"2. data parallel, global batch 256, {os.cpu_count()} CPU cores, 4 forced devices")
    print(
        f"   1 device {rates[1]:9.0f} ex/s   4 devices {rates[4]:9.0f} ex/s   "
        f"scaling {rates[4] / rates[1]:.2f}x  (a real speed-up needs 4 real devices)"
    )
    return Row(
        bench="engine",
        what="data parallel on 4 forced CPU devices vs 1, global batch 256",
        jaxprune=f"4 devices {rates[4]:.0f} ex/s",
        peer=f"1 device {rates[1]:.0f} ex/s",
        ratio=rates[4] / rates[1],
        note=f"{os.cpu_count()} CPU cores shared by the forced devices: overhead, not speed-up",
    )


def overhead_shares(sizes: Sizes) -> list[Row]:
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset=HIDDEN)
    steps = sizes.shares_steps
    config = TrainConfig(
        num_steps=steps, batch_size=BATCH, log_every=50, analysis_every=100, progress=False
    )
    result = train(
        model,
        splits,
        optax.adam(1e-3),
        config,
        pruner=criterion_pruner("snip", one_shot(100, 0.75)),
    )
    s = result.summary
    print(
        f"3. SNIP at step 100 of {steps}, analysis (NTK on 32 examples + 8-probe Hessian trace) "
        "every 100 steps"
    )
    print(
        f"   wall {s['wall_seconds']:.2f} s   pruning events {s['event_seconds']:.2f} s "
        f"({s['event_share']:.1%})   analysis {s['analysis_seconds']:.2f} s "
        f"({s['analysis_share']:.1%})"
    )
    run = f"MLP 64-{HIDDEN.replace(',', '-')}-10, {steps} steps"
    return [
        Row(
            bench="engine",
            what=f"share of pruning events in a run (SNIP at step 100), {run}",
            jaxprune=f"{s['event_seconds']:.2f} s ({s['event_share']:.1%})",
            note=f"of {s['wall_seconds']:.2f} s wall",
        ),
        Row(
            bench="engine",
            what=f"share of analysis callbacks (every 100 steps), {run}",
            jaxprune=f"{s['analysis_seconds']:.2f} s ({s['analysis_share']:.1%})",
            note=f"of {s['wall_seconds']:.2f} s wall; NTK on 32 examples + 8-probe trace",
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    args = benchmark_parser(__doc__).parse_args(argv)
    sizes = QUICK if args.quick else FULL
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, numpy {np.__version__}")
    rows = [steps_per_second(sizes), scaling(sizes), *overhead_shares(sizes)]
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
