"""Benchmark of the training engine: prints measured ratios next to the issue's targets.

    scripts/with-env python experiments/benchmarks/bench_engine.py

1. Steps per second of ``jaxprune.train.train`` vs a hand-written minimal jit loop (same MLP,
   data, batches and Adam).  Each side is timed at two run lengths and the difference is used,
   so compilation and the final evaluation cancel out; the pair is repeated alternately and
   medians are reported.  Target: engine ≥ 0.95× the hand-written loop.
2. Data-parallel scaling: examples per second of the engine on 1 vs 4 forced CPU devices
   (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, in a subprocess).  On a 2-core
   machine the 4 "devices" share 2 cores, so this measures overhead, not speed-up.
3. Time in pruning events and analysis callbacks as a share of a run (the demo's setting: SNIP
   at step 100 of 600, NTK/Hessian analysis every 100 steps).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
import optax

from jaxprune.data import load_dataset
from jaxprune.data.batches import iterate_batches
from jaxprune.masks import one_shot
from jaxprune.train import TrainConfig, build_model, criterion_pruner, train

HIDDEN, BATCH, SHORT, LONG = "256,256", 64, 100, 600


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


def steps_per_second() -> None:
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset=HIDDEN)
    engine, handwritten = [], []
    for _ in range(5):
        engine.append(
            (LONG - SHORT)
            / (engine_seconds(model, splits, LONG) - engine_seconds(model, splits, SHORT))
        )
        handwritten.append(
            (LONG - SHORT)
            / (handwritten_seconds(model, splits, LONG) - handwritten_seconds(model, splits, SHORT))
        )
    e, h = statistics.median(engine), statistics.median(handwritten)
    print(
        f"1. MLP 64-{HIDDEN.replace(',', '-')}-10, batch {BATCH}, Adam, {LONG - SHORT} steps "
        f"(difference of {LONG}- and {SHORT}-step runs, median of 5)"
    )
    print(
        f"   engine {e:8.1f} steps/s   hand-written jit loop {h:8.1f} steps/s   "
        f"ratio {e / h:.3f}  (target >= 0.95)"
    )


_SCALING = """
import json, time, optax
from jaxprune.data import load_dataset
from jaxprune.train import TrainConfig, build_model, train
splits = load_dataset("digits")
model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="256,256")
out = {}
for devices in (1, 4, 1, 4):
    times = []
    for steps in (50, 250):
        config = TrainConfig(num_steps=steps, batch_size=256, log_every=50, num_devices=devices,
                             progress=False)
        start = time.perf_counter()
        train(model, splits, optax.adam(1e-3), config)
        times.append(time.perf_counter() - start)
    out.setdefault(devices, []).append(200 * 256 / (times[1] - times[0]))
print(json.dumps(out))
"""


def scaling() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    done = subprocess.run([sys.executable, "-c", _SCALING], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    rates = {int(k): max(v) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}
    print(f"2. data parallel, global batch 256, {os.cpu_count()} CPU cores, 4 forced devices")
    print(
        f"   1 device {rates[1]:9.0f} ex/s   4 devices {rates[4]:9.0f} ex/s   "
        f"scaling {rates[4] / rates[1]:.2f}x  (a real speed-up needs 4 real devices)"
    )


def overhead_shares() -> None:
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset=HIDDEN)
    config = TrainConfig(
        num_steps=LONG, batch_size=BATCH, log_every=50, analysis_every=100, progress=False
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
        f"3. SNIP at step 100 of {LONG}, analysis (NTK on 32 examples + 8-probe Hessian trace) "
        "every 100 steps"
    )
    print(
        f"   wall {s['wall_seconds']:.2f} s   pruning events {s['event_seconds']:.2f} s "
        f"({s['event_share']:.1%})   analysis {s['analysis_seconds']:.2f} s "
        f"({s['analysis_share']:.1%})"
    )


if __name__ == "__main__":
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, numpy {np.__version__}")
    steps_per_second()
    scaling()
    overhead_shares()
