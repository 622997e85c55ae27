"""Benchmark of the per-group NTK: prints measured ratios next to the issue's targets.

    scripts/with-env python experiments/benchmarks/bench_spectra.py [--quick] [--json PATH]
        [--groups-subset N] [--repeats R]

1. Per-group NTKs of every hidden neuron of an MLP 64 → 512 → 512 → 10 (ReLU, 1,024 groups,
   n = 128): jaxprune's one-pass structured path vs the straightforward per-group use of
   neural-tangents (one jit-compiled call per group, the group chosen by traced positions) and
   vs one whole-model neural-tangents NTK, at equal results; also jaxprune's Jacobian backend.
   Targets: ≥ 20× the per-group loop (kept from earlier runs: 148–158×), faster than one
   whole-model NTK (kept: 32–35×).
2. Peak memory (XLA's compiled temp + output bytes) of the structured per-group path vs the
   whole-model per-example Jacobian.  Target ≤ 1×.
3. Per-group NTKs of a small VGG-like CNN (Conv 16-32-pool-48-pool, global average pooling,
   Dense 10; 8×8×3 images, 96 filter groups, n = 128): ``backend="jacobian"`` vs the plain code
   ``jax.vmap(jax.jacrev(f))`` followed by one einsum per layer, timed in alternating pairs.
   Target: ratio jaxprune / plain ≤ 1.

Timings are medians of warm runs (compilation excluded; the first call is reported).
``--quick`` (about a minute): the neural-tangents loop on 64 groups, extrapolated to 1,024
(unless ``--groups-subset`` says otherwise), 2 warm repeats, 3 CNN pairs, no MLP Jacobian
backend run (its per-example Jacobians take 1.5 GB).  Hutchinson's cost is measured by
``bench_trace.py``.
"""

from __future__ import annotations

import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians

from jaxprune.masks.groups import build_group_ids, filters, neurons
from jaxprune.spectra import empirical_ntk

BENCH = "spectra"


class BenchMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(512)(x))
        x = nn.relu(nn.Dense(512)(x))
        return nn.Dense(10)(x)


class BenchCNN(nn.Module):
    """VGG-like: two 3×3 convolutions, max pool, one more, max pool, average pool, Dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(48, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first-call seconds incl. compilation, median warm seconds, result)."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        warm.append(time.perf_counter() - start)
    return first, statistics.median(warm), result


def peak_bytes(fn, *args) -> int:
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes)


def relative(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def first_groups(ids, count: int):
    """The group ids with every group from ``count`` on dropped (set to -1)."""
    return jax.tree_util.tree_map(lambda g: np.where(np.asarray(g) < count, g, -1), ids)


def mlp_section(args, repeats: int, subset: int) -> list[Row]:
    model = BenchMLP()
    x = jax.random.normal(jax.random.PRNGKey(0), (128, 64))
    params = model.init(jax.random.PRNGKey(1), x)
    groups = build_group_ids(params, neurons(r"Dense_[01]$"))[0]
    p = 1024
    print("1. MLP 64-512-512-10 ReLU, n = 128, 1,024 neuron groups (kernel column + bias)")
    print(f"{'method':<52}{'warm s':>10}{'first s':>10}")

    def report(name, warm, first):
        print(f"{name:<52}{warm:>10.3f}{first:>10.2f}", flush=True)

    c_ours, t_ours, ours = timed(
        lambda: empirical_ntk(model.apply, params, x, group_ids=groups, backend="structured"),
        repeats,
    )
    report("jaxprune structured, all groups", t_ours, c_ours)
    if not args.quick:
        c_jac, t_jac, jac = timed(
            lambda: empirical_ntk(model.apply, params, x, group_ids=groups, backend="jacobian"),
            1,
        )
        report("jaxprune backend='jacobian', all groups", t_jac, c_jac)
        print(f"  max |structured - jacobian| / max|K|  {relative(jac, ours):.1e}")
    try:
        from jaxprune._compat.neural_tangents import import_neural_tangents

        nt = import_neural_tangents()
    except ImportError as error:
        print(f"neural-tangents missing ({error}): its rows are skipped")
        return []
    # One jit-compiled call per group (each neuron's weights gathered at traced positions, so a
    # layer compiles once): the library's backend="neural_tangents".  On a subset of the
    # groups, the time is scaled by p / subset (every group of a layer costs the same).
    loop_ids = groups if subset >= p else first_groups(groups, subset)
    c_loop, t_loop, loop = timed(
        lambda: empirical_ntk(
            model.apply, params, x, group_ids=loop_ids, backend="neural_tangents"
        ),
        1,
    )
    t_loop_all = t_loop * p / min(subset, p)
    scope = "all groups" if subset >= p else f"{subset} groups, x {p / subset:g}"
    report(f"neural-tangents per-group loop ({scope})", t_loop_all, c_loop)
    whole_fn = jax.jit(
        nt.empirical_ntk_fn(
            model.apply,
            trace_axes=(-1,),
            vmap_axes=0,
            implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION,
        )
    )
    c_whole, t_whole, whole = timed(lambda: whole_fn(x, None, params), repeats)
    report("neural-tangents whole-model NTK", t_whole, c_whole)

    loop_error = relative(loop, ours[: loop.shape[0]])
    last_layer = empirical_ntk(
        model.apply, params, x, group_ids=build_group_ids(params, neurons(r"Dense_2$"))[0]
    ).sum(0)
    sum_error = relative(ours.sum(0) + last_layer, whole)
    print(f"  max |ours - NT per group| / max|K|            {loop_error:.1e}")
    print(f"  max |sum of all groups - NT whole| / max|K|   {sum_error:.1e}")
    what = "per-group NTK, MLP 64-512-512-10, 1,024 neuron groups, n = 128"
    note = f"{repeats} warm repeats; max rel. difference {loop_error:.0e}"
    if subset < p:
        note += f"; NT loop timed on {subset} groups, scaled x {p / subset:g}"
    return [
        Row(
            BENCH,
            f"{what}: structured vs neural-tangents per-group loop",
            f"{t_ours * 1e3:.0f} ms",
            f"neural-tangents loop {t_loop_all:.2f} s",
            t_loop_all / t_ours,
            "ratio >= 20 (kept: 148-158)",
            t_loop_all / t_ours >= 20,
            note,
        ),
        Row(
            BENCH,
            f"{what}: structured vs one whole-model neural-tangents NTK",
            f"{t_ours * 1e3:.0f} ms",
            f"neural-tangents whole {t_whole * 1e3:.0f} ms",
            t_whole / t_ours,
            "ratio > 1 (kept: 32-35)",
            t_whole / t_ours > 1,
            f"{repeats} warm repeats; sum of group kernels vs whole: {sum_error:.0e}",
        ),
    ]


def memory_section() -> list[Row]:
    model = BenchMLP()
    x = jax.random.normal(jax.random.PRNGKey(0), (128, 64))
    params = model.init(jax.random.PRNGKey(1), x)
    groups = build_group_ids(params, neurons(r"Dense_[01]$"))[0]

    def ours_fn(params, x):
        return empirical_ntk(model.apply, params, x, group_ids=groups, backend="structured")

    def jacobian_fn(params, x):
        return jax.vmap(jax.jacrev(lambda p, xi: model.apply(p, xi[None])[0]), (None, 0))(params, x)

    m_ours = peak_bytes(ours_fn, params, x)
    m_jac = peak_bytes(jacobian_fn, params, x)
    print("\n2. Peak memory, same MLP")
    print(
        f"per-group path      {m_ours / 2**20:8.1f} MiB "
        f"(output alone {1024 * 128 * 128 * 4 / 2**20:.1f} MiB)"
    )
    print(f"whole Jacobian      {m_jac / 2**20:8.1f} MiB")
    print(f"ratio               {m_ours / m_jac:8.2f}x   target <= 1x")
    return [
        Row(
            BENCH,
            "peak memory, per-group NTK (structured) vs whole per-example Jacobian, same MLP",
            f"{m_ours / 2**20:.0f} MiB",
            f"vmap(jacrev) {m_jac / 2**20:.0f} MiB",
            m_ours / m_jac,
            "ratio <= 1",
            m_ours <= m_jac,
            "XLA compiled temp + output bytes",
        )
    ]


def cnn_section(pairs: int) -> list[Row]:
    model = BenchCNN()
    x = jax.random.normal(jax.random.PRNGKey(0), (128, 8, 8, 3))
    params = model.init(jax.random.PRNGKey(1), x)
    groups = build_group_ids(params, [filters(rf"Conv_{i}$") for i in range(3)])[0]

    def single(params, x_single):
        return model.apply(params, x_single[None])[0]

    @jax.jit
    def plain(params, x):
        jac = jax.vmap(jax.jacrev(single), (None, 0))(params, x)["params"]
        kernels = [
            jnp.einsum("xkabio,ykabio->oxy", jac[f"Conv_{i}"]["kernel"], jac[f"Conv_{i}"]["kernel"])
            + jnp.einsum("xko,yko->oxy", jac[f"Conv_{i}"]["bias"], jac[f"Conv_{i}"]["bias"])
            for i in range(3)
        ]
        return jnp.concatenate(kernels) / 10

    def ours():
        return empirical_ntk(model.apply, params, x, group_ids=groups, backend="jacobian")

    error = relative(ours(), plain(params, x))
    t_ours, t_plain, ratio = paired_medians(ours, lambda: plain(params, x), pairs)
    _, t_structured, _ = timed(
        lambda: empirical_ntk(model.apply, params, x, group_ids=groups, backend="structured"),
        pairs,
    )
    print("\n3. VGG-like CNN, 8x8x3 images, n = 128, 96 filter groups (kernel slice + bias)")
    print(f"jaxprune backend='jacobian'          {t_ours:8.3f} s")
    print(f"plain vmap(jacrev) + einsum          {t_plain:8.3f} s")
    print(f"paired ratio jaxprune / plain        {ratio:8.2f}x   target <= 1x")
    print(f"max |jacobian - plain| / max|K|      {error:8.1e}")
    print(f"(jaxprune backend='structured'       {t_structured:8.3f} s)")
    return [
        Row(
            BENCH,
            "per-group NTK, VGG-like CNN 16-32-48 filters, 8x8x3, n = 128: backend='jacobian' "
            "vs plain vmap(jacrev) + per-layer einsum",
            f"{t_ours:.2f} s",
            f"plain {t_plain:.2f} s",
            ratio,
            "ratio <= 1",
            ratio <= 1.0,
            f"median of {pairs} alternating pairs; max rel. difference {error:.0e}; "
            f"structured backend {t_structured:.2f} s",
        )
    ]


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--groups-subset",
        type=int,
        default=None,
        help="time the neural-tangents per-group loop on the first N of the 1,024 groups and "
        "scale by 1,024 / N (default: all, 64 with --quick)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="warm repeats (default 5, 2 with --quick)"
    )
    args = parser.parse_args(argv)
    subset = args.groups_subset if args.groups_subset is not None else (64 if args.quick else 1024)
    if not 1 <= subset <= 1024:
        parser.error(f"--groups-subset must be in 1..1024, got {subset}")
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    print(f"devices: {jax.devices()}  jax {jax.__version__}\n")
    rows = mlp_section(args, repeats, subset)
    rows += memory_section()
    rows += cnn_section(3 if args.quick else 3 * repeats)
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
