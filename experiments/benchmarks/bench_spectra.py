"""Benchmark of the spectral core: prints measured ratios next to the issue's targets.

    scripts/with-env python experiments/benchmarks/bench_spectra.py [--groups-subset N] [--repeats R]

1. Per-group NTKs of every hidden neuron of an MLP 64 → 512 → 512 → 10 (ReLU, 1,024 groups,
   n = 128): jaxprune's one-pass structured path vs the straightforward per-group use of
   neural-tangents (one jit-compiled call per group, the group chosen by a traced index) and
   vs one whole-model neural-tangents NTK; also the shared-Jacobian path.  Target: ≥ 20× faster
   than the per-group loop and faster than one whole-model NTK, at equal results.
2. Peak memory (XLA's compiled temp + output bytes) of the per-group path vs computing the
   whole-model per-example Jacobian.  Target ≤ 1×.
3. Hutchinson cost per probe vs one gradient evaluation.  Target ≤ 4×.
Timings are medians of repeated warm runs (compilation excluded and reported separately).
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxprune._compat.neural_tangents import import_neural_tangents
from jaxprune.masks.groups import build_group_ids, neurons
from jaxprune.spectra import empirical_ntk, hessian_trace


class BenchMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(512)(x))
        x = nn.relu(nn.Dense(512)(x))
        return nn.Dense(10)(x)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--groups-subset",
        type=int,
        default=0,
        help="time the neural-tangents per-group loop on this many groups and "
        "extrapolate (0: all 1,024)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = BenchMLP()
    x = jax.random.normal(jax.random.PRNGKey(0), (128, 64))
    params = model.init(jax.random.PRNGKey(1), x)
    groups = build_group_ids(params, neurons(r"Dense_[01]$"))[0]
    print(f"devices: {jax.devices()}  jax {jax.__version__}")
    print("MLP 64-512-512-10 ReLU, n = 128, 1,024 neuron groups (kernel column + bias)\n")

    def report(name, warm, first=None):
        compile_note = "" if first is None else f"{first:>10.2f}"
        print(f"{name:<48}{warm:>10.3f}{compile_note}", flush=True)

    print(f"{'method':<48}{'warm s':>10}{'first s':>10}")
    c_ours, t_ours, ours = timed(
        lambda: empirical_ntk(model.apply, params, x, group_ids=groups, backend="structured"),
        args.repeats,
    )
    report("jaxprune structured, all groups", t_ours, c_ours)
    c_jac, t_jac, jac = timed(
        lambda: empirical_ntk(model.apply, params, x, group_ids=groups, backend="jacobian"), 1
    )
    report("jaxprune shared Jacobian, all groups", t_jac, c_jac)
    # neural-tangents, one jit-compiled call per group (each neuron's weights gathered at
    # traced positions, so a layer compiles once): the library's backend="neural_tangents".
    c_loop, t_loop, loop = timed(
        lambda: empirical_ntk(model.apply, params, x, group_ids=groups, backend="neural_tangents"),
        1,
    )
    report("neural-tangents per-group loop", t_loop, c_loop)
    nt = import_neural_tangents()
    whole_fn = jax.jit(
        nt.empirical_ntk_fn(
            model.apply,
            trace_axes=(-1,),
            vmap_axes=0,
            implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION,
        )
    )
    c_whole, t_whole, whole = timed(lambda: whole_fn(x, None, params), args.repeats)
    report("neural-tangents whole-model NTK", t_whole, c_whole)

    scale = float(jnp.max(jnp.abs(ours)))
    last_layer = empirical_ntk(
        model.apply,
        params,
        x,
        group_ids=build_group_ids(params, neurons(r"Dense_2$"))[0],
    ).sum(0)
    sum_error = float(jnp.max(jnp.abs(ours.sum(0) + last_layer - whole)))
    print()
    print(f"speed-up vs per-group loop      {t_loop / t_ours:8.1f}x   target >= 20x")
    print(f"speed-up vs whole-model NTK     {t_whole / t_ours:8.1f}x   target > 1x")
    print(
        f"max |ours - NT per group| / max|K|        {float(jnp.max(jnp.abs(loop - ours))) / scale:.1e}"
    )
    print(
        f"max |structured - jacobian| / max|K|      {float(jnp.max(jnp.abs(jac - ours))) / scale:.1e}"
    )
    print(
        f"max |sum of all groups - NT whole| / max|K| {sum_error / float(jnp.max(jnp.abs(whole))):.1e}"
    )

    # 2. Peak memory.
    def ours_fn(params, x):
        return empirical_ntk(model.apply, params, x, group_ids=groups, backend="structured")

    def jacobian_fn(params, x):
        return jax.vmap(jax.jacrev(lambda p, xi: model.apply(p, xi[None])[0]), (None, 0))(params, x)

    m_ours = peak_bytes(ours_fn, params, x)
    m_jac = peak_bytes(jacobian_fn, params, x)
    print(
        f"\npeak memory per-group path      {m_ours / 2**20:8.1f} MiB "
        f"(output alone {1024 * 128 * 128 * 4 / 2**20:.1f} MiB)"
    )
    print(f"peak memory whole Jacobian      {m_jac / 2**20:8.1f} MiB")
    print(f"ratio                           {m_ours / m_jac:8.2f}x   target <= 1x")

    # 3. Hutchinson cost per probe vs one gradient.
    y = jax.random.randint(jax.random.PRNGKey(2), (128,), 0, 10)

    def loss(params):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    grad_fn = jax.jit(jax.grad(loss))
    _, t_grad, _ = timed(lambda: grad_fn(params), 20)
    probes = 64
    trace_fn = jax.jit(lambda params, key: hessian_trace(loss, params, key, num_probes=probes))
    _, t_trace, _ = timed(lambda: trace_fn(params, jax.random.PRNGKey(3)), args.repeats)
    print(f"\none gradient                    {t_grad * 1e3:8.2f} ms")
    print(f"Hutchinson, per probe ({probes} probes) {t_trace / probes * 1e3:8.2f} ms")
    print(f"ratio                           {t_trace / probes / t_grad:8.2f}x   target <= 4x")


if __name__ == "__main__":
    main()
