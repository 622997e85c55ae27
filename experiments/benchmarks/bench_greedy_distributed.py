"""Distributed greedy forward selection (Wolfe et al. (2023), App. E, Figure 5): time on 1, 2 and 4
devices, and whether the picks are the same.

    scripts/with-env python experiments/benchmarks/bench_greedy_distributed.py [--devices 1,2,4]
        [--neurons 10000] [--examples 2000] [--steps 200] [--repeats 3]
        [--cnn mobilenet_v2:mobilenet_v2-tiny] [--cnn-steps 4] [--cnn-batch 64]
        [--quick] [--json PATH]

``--quick`` sets the defaults to N = 4,000, m = 1,000, 100 steps, 2 repeats and leaves part 2
out (``--cnn`` given explicitly brings it back).

Part 1, the two-layer search:
Each device count runs in a fresh process (``--xla_force_host_platform_device_count`` on CPU;
on a machine with that many accelerators the real devices are used), splitting the candidates
of :func:`jaxprune.methods.greedy.greedy_forward_selection` over a 1-D mesh.  Printed per device
count: the median time of the whole selection (compile excluded), the speed-up over one device,
and whether the picks equal the one-device run's.

Part 2, Figure 5's time per layer: :func:`~jaxprune.methods.greedy.greedy_channel_selection` of
a zoo CNN (``--cnn``, a ``model:preset`` or a preset of ``mobilenet_v2``/``resnet34``; random
32×32 inputs, ``--cnn-batch`` examples) with each step's candidates split over the mesh, one
layer at a time (``layers=[layer]``, ``--cnn-steps`` picks), timed warm; printed per layer and
device count, with whether the picks equal one device's.

Forced CPU devices share this machine's cores, so on a 2-core CPU they show the cost of the
communication, not a speed-up; Figure 5's speed-ups need real devices.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _report import Row, benchmark_parser, write_rows

from jaxprune.train.parallel import forced_cpu_devices_env

FULL = {"neurons": 10_000, "examples": 2_000, "steps": 200, "repeats": 3}
QUICK = {"neurons": 4_000, "examples": 1_000, "steps": 100, "repeats": 2}
CNN = "mobilenet_v2:mobilenet_v2-tiny"

_WORKER = """
import json, statistics, sys, time
import jax, numpy as np
from jaxprune.methods.greedy import greedy_forward_selection
neurons, examples, steps, repeats, devices = map(int, sys.argv[1:6])
mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("candidates",))
rng = np.random.default_rng(0)
phi = rng.normal(size=(neurons, examples)).astype(np.float32)
y = rng.normal(size=examples).astype(np.float32)
run = lambda: greedy_forward_selection(phi, y, steps, mesh=None if devices == 1 else mesh)
order = np.asarray(run().order).tolist()
times = []
for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run().order)
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": statistics.median(times), "order": order,
                  "backend": jax.default_backend(), "available": jax.device_count()}))
"""


_CNN_WORKER = """
import itertools, json, statistics, sys, time
import jax, numpy as np
from jaxprune.methods.greedy import greedy_channel_selection
from jaxprune.train import build_model
name, preset = sys.argv[1], sys.argv[2]
steps, batch_size, repeats, devices = map(int, sys.argv[3:7])
model = build_model(name, num_outputs=10, input_shape=(32, 32, 3), preset=preset)
variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
_, layout = model.group_ids(variables["params"])
rng = np.random.default_rng(0)
batch = {"x": rng.normal(size=(batch_size, 32, 32, 3)).astype(np.float32),
         "y": rng.integers(0, 10, batch_size)}
mesh = None if devices == 1 else jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("c",))
layers = []
for layer in range(layout.num_layers):
    def run():
        return greedy_channel_selection(model, variables, itertools.repeat(batch),
                                        keep_per_layer=(steps,), layers=[layer], mesh=mesh)
    order = run().layers[0].order.tolist()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    layers.append({"name": layout.layer_names[layer], "groups":
                   len(layout.groups_in_layer(layer)), "seconds": statistics.median(times),
                   "order": order})
print(json.dumps({"layers": layers, "backend": jax.default_backend()}))
"""


def _run(script: str, devices: int, arguments: list) -> dict:
    env = forced_cpu_devices_env(devices, cpu_only=False)  # real accelerators when present
    command = [sys.executable, "-c", script, *map(str, arguments)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"worker on {devices} device(s) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_worker(devices: int, args: argparse.Namespace) -> dict:
    arguments = [args.neurons, args.examples, args.steps, args.repeats, devices]
    return _run(_WORKER, devices, arguments)


def run_cnn_worker(devices: int, args: argparse.Namespace) -> dict:
    name, _, preset = args.cnn.rpartition(":")
    name = name or preset.split("-")[0]
    arguments = [name, preset, args.cnn_steps, args.cnn_batch, args.repeats, devices]
    return _run(_CNN_WORKER, devices, arguments)


def print_cnn(counts: list[int], args: argparse.Namespace) -> list[Row]:
    results = {d: run_cnn_worker(d, args) for d in counts}
    base = results[counts[0]]["layers"]
    print(
        f"\n{args.cnn}: greedy_channel_selection one layer at a time, {args.cnn_steps} picks, "
        f"batch {args.cnn_batch} of 32x32x3, candidates split over the mesh (Figure 5)"
    )
    header = "".join(f" {f'{d} dev s':>9s} {'×':>5s}" for d in counts)
    print(f"{'layer':<28s} {'groups':>6s}{header}  same picks")
    for i, layer in enumerate(base):
        cells = ""
        for d in counts:
            seconds = results[d]["layers"][i]["seconds"]
            cells += f" {seconds:9.3f} {layer['seconds'] / seconds:5.2f}"
        same = all(results[d]["layers"][i]["order"] == layer["order"] for d in counts)
        print(f"{layer['name']:<28s} {layer['groups']:6d}{cells}  {same}")
    total = {d: sum(layer["seconds"] for layer in results[d]["layers"]) for d in counts}
    rows = []
    for d in counts[1:]:
        same = all(
            mine["order"] == theirs["order"] for mine, theirs in zip(results[d]["layers"], base)
        )
        rows.append(
            Row(
                bench="greedy_distributed",
                what=f"greedy_channel_selection of {args.cnn}, every layer, {args.cnn_steps} "
                f"picks, {d} devices vs {counts[0]}",
                jaxprune=f"{d} devices {total[d]:.2f} s",
                peer=f"{counts[0]} device(s) {total[counts[0]]:.2f} s",
                ratio=total[counts[0]] / total[d],
                target="same picks",
                met=same,
                note=f"speed-up, summed over {len(base)} layers; {results[d]['backend']}",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--devices", default="1,2,4")
    parser.add_argument("--neurons", type=int, help=f"default {FULL['neurons']}")
    parser.add_argument("--examples", type=int, help=f"default {FULL['examples']}")
    parser.add_argument("--steps", type=int, help=f"default {FULL['steps']}")
    parser.add_argument("--repeats", type=int, help=f"default {FULL['repeats']}")
    parser.add_argument("--cnn", help=f"default {CNN} ('' or --quick: no part 2)")
    parser.add_argument("--cnn-steps", type=int, default=4)
    parser.add_argument("--cnn-batch", type=int, default=64)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.neurons = args.neurons or defaults["neurons"]
    args.examples = args.examples or defaults["examples"]
    args.steps = args.steps or defaults["steps"]
    args.repeats = args.repeats or defaults["repeats"]
    if args.cnn is None:
        args.cnn = "" if args.quick else CNN
    counts = [int(d) for d in args.devices.split(",")]
    start = time.perf_counter()
    results = {d: run_worker(d, args) for d in counts}
    base = results[counts[0]]
    print(
        f"N = {args.neurons}, m = {args.examples}, {args.steps} steps, float32, backend "
        f"{base['backend']}"
    )
    print(f"{'devices':>8s} {'seconds':>9s} {'speed-up':>9s}  same picks as {counts[0]} device(s)")
    for d in counts:
        r = results[d]
        print(
            f"{d:8d} {r['seconds']:9.2f} {base['seconds'] / r['seconds']:8.2f}x  "
            f"{r['order'] == base['order']}"
        )
    rows = [
        Row(
            bench="greedy_distributed",
            what=f"greedy forward selection on {d} devices vs {counts[0]}, N = {args.neurons}, "
            f"m = {args.examples}, {args.steps} steps",
            jaxprune=f"{d} devices {results[d]['seconds']:.2f} s",
            peer=f"{counts[0]} device(s) {base['seconds']:.2f} s",
            ratio=base["seconds"] / results[d]["seconds"],
            target="same picks",
            met=results[d]["order"] == base["order"],
            note=f"speed-up; {results[d]['backend']}, {results[d]['available']} device(s) "
            "visible (forced CPU devices share the cores)",
        )
        for d in counts[1:]
    ]
    if args.cnn:
        rows += print_cnn(counts, args)
    print(
        f"(medians of {args.repeats} runs, one process per device count; benchmark wall time "
        f"{time.perf_counter() - start:.0f} s)"
    )
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
