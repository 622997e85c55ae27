"""Distributed greedy forward selection (Wolfe et al. (2023), App. E, Figure 5): time on 1, 2 and 4
devices, and whether the picks are the same.

    cd experiments/benchmarks && python bench_greedy_distributed.py [--devices 1,2,4]
        [--neurons 10000] [--examples 2000] [--steps 200] [--repeats 3]

Each device count runs in a fresh process (``--xla_force_host_platform_device_count`` on CPU;
on a machine with that many accelerators the real devices are used), splitting the candidates
of :func:`jaxprune.methods.greedy.greedy_forward_selection` over a 1-D mesh.  Printed per device
count: the median time of the whole selection (compile excluded), the speed-up over one device,
and whether the picks equal the one-device run's.  Forced CPU devices share this machine's
cores, so on a 2-core CPU they show the cost of the communication, not a speed-up; Figure 5's
speed-ups need real devices.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

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


def run_worker(devices: int, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    ).strip()
    command = [
        sys.executable,
        "-c",
        _WORKER,
        *map(str, (args.neurons, args.examples, args.steps, args.repeats, devices)),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1,2,4")
    parser.add_argument("--neurons", type=int, default=10_000)
    parser.add_argument("--examples", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
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
    print(
        f"(medians of {args.repeats} runs, one process per device count; benchmark wall time "
        f"{time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
