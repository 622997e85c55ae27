"""Benchmark of two-layer greedy forward selection: prints measured figures next to the targets.

    scripts/with-env python experiments/benchmarks/bench_greedy.py [--neurons 10000]
        [--examples 2000] [--steps 200] [--numpy-steps 20] [--repeats 3] [--quick] [--json PATH]

``--quick`` sets the defaults to N = 4,000, m = 1,000, 100 steps, 10 NumPy steps, 2 repeats.

Greedy forward selection (Wolfe et al. (2023), eqs. 9–11, squared loss) of ``--steps`` neurons
out of ``N = --neurons`` on ``m = --examples`` points, float32, timed three ways:

1. :func:`jaxprune.methods.greedy.greedy_forward_selection`: one compiled ``while_loop``
   (compile time excluded: one warm-up call).
2. The same algorithm as a plain NumPy loop: per step, every candidate's loss
   ``½‖(z + Φ_i)/k − y‖²`` in one vectorized expression over ``Φ``, then ``argmin`` and the
   update of ``z``.  It runs ``--numpy-steps`` steps (its cost per step is constant), and the
   comparison is per step.  Target: the compiled search ≥ 10× faster per step.
   Also the NumPy loop with the compiled search's scoring (one BLAS matrix-vector product per
   step, ``⟨r, Φ_i⟩/k + ½‖Φ_i‖²/k²``), to show what the loop itself costs.
3. The memory-bandwidth floor: the faster of two compiled passes that only read ``Φ`` once
   (``jnp.sum(Φ)`` and ``Φ @ v``), the least any step can cost, times the number of steps.

The NumPy loop's picks are checked against the compiled search's for the steps it runs.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import Row, benchmark_parser, write_rows

from jaxprune.methods.greedy import greedy_forward_selection

TARGET = 10.0
FULL = {"neurons": 10_000, "examples": 2_000, "steps": 200, "numpy_steps": 20, "repeats": 3}
QUICK = {"neurons": 4_000, "examples": 1_000, "steps": 100, "numpy_steps": 10, "repeats": 2}


def numpy_greedy(phi: np.ndarray, y: np.ndarray, num_steps: int) -> list[int]:
    z = np.zeros_like(y)
    order = []
    for k in range(1, num_steps + 1):
        losses = 0.5 * np.sum(np.square((z + phi) / np.float32(k) - y), axis=1)
        q = int(np.argmin(losses))
        z = z + phi[q]
        order.append(q)
    return order


def numpy_greedy_matvec(phi: np.ndarray, y: np.ndarray, num_steps: int) -> list[int]:
    row_norms = np.sum(np.square(phi), axis=1)
    z = np.zeros_like(y)
    order = []
    for k in range(1, num_steps + 1):
        scores = phi @ (z / np.float32(k) - y) / np.float32(k) + 0.5 * row_norms / np.float32(k * k)
        q = int(np.argmin(scores))
        z = z + phi[q]
        order.append(q)
    return order


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    for name in FULL:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {FULL[name]}")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.neurons = args.neurons or defaults["neurons"]
    args.examples = args.examples or defaults["examples"]
    args.steps = args.steps or defaults["steps"]
    args.numpy_steps = args.numpy_steps or defaults["numpy_steps"]
    args.repeats = args.repeats or defaults["repeats"]

    rng = np.random.default_rng(0)
    phi = rng.normal(size=(args.neurons, args.examples)).astype(np.float32)
    y = rng.normal(size=args.examples).astype(np.float32)
    phi_device = jax.device_put(phi)

    def compiled():
        return greedy_forward_selection(phi_device, y, args.steps).order

    read_sum = jax.jit(jnp.sum)
    read_matvec = jax.jit(lambda a, v: a @ v)
    order = np.asarray(compiled())
    numpy_start = time.perf_counter()
    numpy_order = numpy_greedy(phi, y, args.numpy_steps)
    numpy_per_step = (time.perf_counter() - numpy_start) / args.numpy_steps
    agree = numpy_order == order[: args.numpy_steps].tolist()
    matvec_start = time.perf_counter()
    matvec_order = numpy_greedy_matvec(phi, y, args.numpy_steps)
    matvec_per_step = (time.perf_counter() - matvec_start) / args.numpy_steps
    agree = agree and matvec_order == numpy_order

    compiled_total = median_seconds(compiled, args.repeats)
    floor_per_step = min(
        median_seconds(lambda: read_sum(phi_device), 10 * args.repeats),
        median_seconds(lambda: read_matvec(phi_device, y), 10 * args.repeats),
    )
    compiled_per_step = compiled_total / args.steps
    gigabytes = phi.nbytes / 1e9

    print(
        f"N = {args.neurons}, m = {args.examples}, {args.steps} steps, float32, "
        f"Φ = {gigabytes:.2f} GB, backend {jax.default_backend()}"
    )
    print(
        f"picks of the NumPy loops equal the compiled search's ({args.numpy_steps} steps): {agree}"
    )
    print(f"{'what':44s} {'per step':>12s} {'total':>10s}")
    print(
        f"{'compiled greedy_forward_selection':44s} {compiled_per_step * 1e3:9.2f} ms "
        f"{compiled_total:8.2f} s"
    )
    print(
        f"{'NumPy loop (same algorithm)':44s} {numpy_per_step * 1e3:9.2f} ms "
        f"{numpy_per_step * args.steps:8.2f} s (extrapolated from {args.numpy_steps} steps)"
    )
    print(
        f"{'NumPy loop, matrix-vector scoring':44s} {matvec_per_step * 1e3:9.2f} ms "
        f"{matvec_per_step * args.steps:8.2f} s (extrapolated from {args.numpy_steps} steps)"
    )
    print(
        f"{'bandwidth floor (one read of Φ per step)':44s} {floor_per_step * 1e3:9.2f} ms "
        f"{floor_per_step * args.steps:8.2f} s ({gigabytes / floor_per_step:.1f} GB/s)"
    )
    print(
        f"speed-up over NumPy per step: {numpy_per_step / compiled_per_step:.1f}x "
        f"(target >= {TARGET:.0f}x); over the matrix-vector NumPy loop: "
        f"{matvec_per_step / compiled_per_step:.1f}x; compiled / floor: "
        f"{compiled_per_step / floor_per_step:.2f}"
    )
    what = f"per step, N = {args.neurons}, m = {args.examples}, {args.steps} steps"
    compiled = f"compiled {compiled_per_step * 1e3:.2f} ms"
    backend = f"float32, {jax.default_backend()}; NumPy picks equal: {agree}"
    speed_up = numpy_per_step / compiled_per_step
    rows = [
        Row(
            bench="greedy",
            what=f"greedy forward selection vs a NumPy loop, {what}",
            jaxprune=compiled,
            peer=f"NumPy {numpy_per_step * 1e3:.2f} ms",
            ratio=speed_up,
            target=f"ratio >= {TARGET:.0f}",
            met=speed_up >= TARGET,
            note=f"NumPy / compiled, {args.numpy_steps} NumPy steps; {backend}",
        ),
        Row(
            bench="greedy",
            what=f"greedy forward selection vs a matrix-vector NumPy loop, {what}",
            jaxprune=compiled,
            peer=f"NumPy matvec {matvec_per_step * 1e3:.2f} ms",
            ratio=matvec_per_step / compiled_per_step,
            note=f"NumPy / compiled; {backend}",
        ),
        Row(
            bench="greedy",
            what=f"greedy forward selection vs one read of Φ, {what}",
            jaxprune=compiled,
            peer=f"floor {floor_per_step * 1e3:.2f} ms ({gigabytes / floor_per_step:.1f} GB/s)",
            ratio=compiled_per_step / floor_per_step,
            note="compiled / floor (the bandwidth floor of one pass over Φ)",
        ),
    ]
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
