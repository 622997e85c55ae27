"""Benchmark of ``prune_with``: prints measured ratios next to the issue's targets.

    scripts/with-env python experiments/benchmarks/bench_prune_with.py [--repeats 40] [--quick]
        [--json PATH]

1. Step time on ordinary (non-event) steps of an MLP 64-512-512-10 (batch 128, CPU, jit):
   ``prune_with(adam, "snip", ...)`` vs ``masked(adam)`` (target: within noise, ratio ≈ 1) and
   vs dense Adam, and the same for PL gating (a host-side event) with and without
   ``guard_host_events`` (the host callback that stops a compiled update at its event).  The
   schedule's event lies beyond the timed steps, so what is measured is the step with its event
   branch compiled in but not taken.
2. The cost of a SNIP event: inside the caller's compiled step (the update that ends with the
   event, minus an ordinary step) vs the engine's event (``events.json`` seconds of
   :func:`jaxprune.train.train` on the same model, its compiled criterion warm).
Timings are medians of alternating warm runs (``--quick``: 10 instead of 40).  "Within noise"
is read as a paired ratio within 5% of 1.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians

from jaxprune.data import load_dataset
from jaxprune.masks import one_shot
from jaxprune.optim import masked, prune_with
from jaxprune.train import TrainConfig, build_model, make_pruner, train

BATCH = 128


def _model():
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="512,512")
    params = model.init(jax.random.key(0), splits.train["x"][:1])["params"]
    rows = np.arange(BATCH) % len(splits.train["x"])
    batch = {"x": splits.train["x"][rows], "y": splits.train["y"][rows]}
    return splits, model, params, batch


def _loss_fn(model):
    def loss_fn(p, batch):
        logits = model.apply({"params": p}, batch["x"], train=False)[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return loss_fn


def _step(tx, loss_fn):
    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn, batch=batch)
        return optax.apply_updates(params, updates), state

    return step


def ordinary_steps(model, params, batch, repeats: int) -> list[Row]:
    loss_fn = _loss_fn(model)
    group_ids, layout = model.group_ids(params)
    far = one_shot(10**9, 0.5)  # an event that the timed steps never reach
    txs = {
        "prune_with(adam, snip)": prune_with(
            optax.adam(1e-3), "snip", far, group_ids, layout=layout
        ),
        "prune_with(adam, pl)": prune_with(optax.adam(1e-3), "pl", far, group_ids, layout=layout),
        "... guard off": prune_with(
            optax.adam(1e-3), "pl", far, group_ids, layout=layout, guard_host_events=False
        ),
        "masked(adam)": masked(optax.adam(1e-3)),
        "adam": optax.adam(1e-3),
    }
    steps = {name: _step(tx, loss_fn) for name, tx in txs.items()}
    states = {name: tx.init(params) for name, tx in txs.items()}

    def run(name):
        return lambda: steps[name](params, states[name], batch)

    print("1. ordinary step, MLP 64-512-512-10, batch 128 (median ms, paired ratio)")
    rows = []
    pairs = [
        ("prune_with(adam, snip)", "masked(adam)"),
        ("prune_with(adam, snip)", "adam"),
        ("prune_with(adam, pl)", "masked(adam)"),
        ("... guard off", "masked(adam)"),
    ]
    for name, reference in pairs:
        a, b, ratio = paired_medians(run(name), run(reference), repeats)
        print(
            f"   {name:22s} {a * 1e3:7.3f} ms vs {reference:12s} {b * 1e3:7.3f} ms: "
            f"ratio {ratio:.3f}  (target vs masked: within noise, ~1.00)"
        )
        versus_masked = reference == "masked(adam)"
        rows.append(
            Row(
                bench="prune_with",
                what=f"ordinary step, {name} vs {reference}, MLP 64-512-512-10, batch {BATCH}",
                jaxprune=f"{a * 1e3:.3f} ms",
                peer=f"{reference} {b * 1e3:.3f} ms",
                ratio=ratio,
                target="ratio ≈ 1 (within 5%)" if versus_masked else "",
                met=abs(ratio - 1) <= 0.05 if versus_masked else None,
                note=f"median of {repeats} paired ratios; {jax.default_backend()}",
            )
        )
    return rows


def event_cost(splits, model, params, batch, repeats: int) -> Row:
    loss_fn = _loss_fn(model)
    group_ids, layout = model.group_ids(params)
    schedule = one_shot(1, 0.5)
    tx = prune_with(optax.adam(1e-3), "snip", schedule, group_ids, layout=layout)
    step = _step(tx, loss_fn)
    fresh = tx.init(params)
    _, past = step(params, fresh, batch)  # step 1: past the event, ordinary updates
    _, past = step(params, past, batch)
    event_times, plain_times = [], []
    jax.block_until_ready(step(params, fresh, batch))
    for _ in range(repeats):
        for state, times in ((fresh, event_times), (past, plain_times)):
            start = time.perf_counter()
            jax.block_until_ready(step(params, state, batch))
            times.append(time.perf_counter() - start)
    in_loop = statistics.median(event_times) - statistics.median(plain_times)

    engine_events = []
    config = TrainConfig(num_steps=3, batch_size=BATCH, log_every=3, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(3):  # the first run compiles the criterion; later ones reuse it
            out = Path(tmp) / f"run{run}"
            pruner = make_pruner("snip", one_shot(1, 0.5))
            train(model, splits, optax.adam(1e-3), config, pruner=pruner, run_dir=out)
            engine_events.append(json.loads((out / "events.json").read_text())[0]["seconds"])
    engine = statistics.median(engine_events[1:])
    print("2. one SNIP event (50% of 1,024 neurons)")
    print(
        f"   inside the compiled step: {in_loop * 1e3:8.2f} ms (event step "
        f"{statistics.median(event_times) * 1e3:.2f} ms - ordinary step "
        f"{statistics.median(plain_times) * 1e3:.2f} ms)"
    )
    print(
        f"   engine event (warm):      {engine * 1e3:8.2f} ms  ratio engine / in-loop "
        f"{engine / max(in_loop, 1e-9):.1f}"
    )
    return Row(
        bench="prune_with",
        what="one SNIP event (50% of 1,024 neurons) inside the compiled step vs the engine's",
        jaxprune=f"in the step {in_loop * 1e3:.2f} ms",
        peer=f"engine event {engine * 1e3:.2f} ms",
        ratio=engine / max(in_loop, 1e-9),
        note="engine / in-step; event step minus ordinary step, medians",
    )


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, help="timed pairs (default 40; 10 with --quick)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (10 if args.quick else 40)
    splits, model, params, batch = _model()
    rows = ordinary_steps(model, params, batch, repeats)
    rows.append(event_cost(splits, model, params, batch, repeats))
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
