"""Benchmark of greedy channel selection: prints measured figures next to the issue's target.

    scripts/with-env python experiments/benchmarks/bench_greedy_channels.py [--batch-size 64]
        [--repeats 5] [--quick] [--json PATH]

The model is VGG-16-bn at width/8 (``vgg16-bn-tiny``: 8 to 64 filters per convolution) on
CIFAR-sized 32×32×3 inputs, in evaluation mode, with random He-initialised weights (the timing
does not depend on them).  For each timed layer, one greedy step of Wolfe et al. (2023),
App. D, Algorithm 2 scores every channel of the layer (the layer empty, the others full) by the
softmax cross-entropy on one minibatch, two ways:

1. batched: :func:`~jaxprune.methods.greedy.channels.greedy_gate_selection` for one step
   (``keep_per_layer=(1,)``): all candidates in one compiled program, ``vmap`` over their gate
   vectors in blocks of ``chunk_size`` (the CPU default), plus the whole layer's reference;
2. loop: one jit-compiled forward pass per candidate in a Python loop (asynchronous dispatch,
   one sync at the end), the way the public PyTorch code of Ye et al. (2020) scores them.

The evaluation gets the gates as per-layer pieces and only the searched layer's piece varies
across the candidates, so the layers upstream of it run once per step: the deeper the layer,
the larger the saving (the first layer saves nothing but the dispatch).  The step table covers
every layer and sums them (one step in each).  The target is batched >= 5x faster than the
loop.  Then the whole layer's selection
(:func:`~jaxprune.methods.greedy.channels.greedy_channel_selection`, ``layers=[layer]``, half
the layer's channels as its budget: that many steps) is timed once, warm.  Timings are medians
of warm runs taken alternately (:func:`_timing.paired_medians`), ratios the medians of the
per-pair ratios.  ``--quick``: batch 16, 2 repeats, the step table over ``LAYERS`` only and
the whole-layer selection of ``conv_0`` only.
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians

from jaxprune.methods.greedy.channels import greedy_channel_selection, greedy_gate_selection
from jaxprune.train import build_model

TARGET = 5.0
LAYERS = ("conv_0", "conv_7", "conv_12")
"""Layers of the whole-layer selection timing (the step table covers all 13; with ``--quick``
these three)."""


def numpy_variables(model, input_shape, seed: int = 0):
    """He-normal kernels, BatchNorm scale 1 and bias 0, unit running variance: drawn in NumPy
    (JAX's random initialisation compiles once per parameter shape, minutes on a busy CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *input_shape)))

    def value(path, shape):
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            return rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape).astype(np.float32)
        fill = 1.0 if name.endswith(("['scale']", "['var']")) else 0.0
        return np.full(shape, fill, np.float32)

    return jax.tree_util.tree_map_with_path(lambda p, s: value(p, s.shape), shapes)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch-size", type=int, help="default 64 (16 with --quick)")
    parser.add_argument("--repeats", type=int, help="default 5 (2 with --quick)")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (16 if args.quick else 64)
    args.repeats = args.repeats or (2 if args.quick else 5)
    whole_layers = LAYERS[:1] if args.quick else LAYERS

    input_shape = (32, 32, 3)
    model = build_model("vgg", num_outputs=10, input_shape=input_shape, preset="vgg16-bn-tiny")
    variables = numpy_variables(model, input_shape)
    _, layout = model.group_ids(variables["params"])
    rng = np.random.default_rng(1)
    batch = {
        "x": jnp.asarray(rng.normal(size=(args.batch_size, *input_shape)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 10, args.batch_size)),
    }

    def gated_eval(v, gates, b):
        logits = model.apply(v, b["x"], train=False, gates=gates)[0]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean()
        return loss, jnp.full((), jnp.nan)

    forward_loss = jax.jit(lambda v, gates, b: gated_eval(v, gates, b)[0])
    print(
        f"VGG-16-bn width/8 on {args.batch_size}x32x32x3, {jax.devices()[0].platform}; "
        f"one greedy step = every channel of the layer scored on one minibatch"
    )
    print(f"{'layer':>8} {'channels':>8} {'batched':>10} {'loop':>10} {'ratio':>7} {'target':>7}")
    totals = [0.0, 0.0]
    ratios = []
    step_layers = LAYERS if args.quick else layout.layer_names
    for name in step_layers:
        layer = layout.layer_names.index(name)
        groups = layout.groups_in_layer(layer)
        base = np.ones(layout.num_groups, np.float32)
        base[groups] = 0.0
        trial_gates = []
        for g in groups:
            gates = base.copy()
            gates[g] = 1.0
            trial_gates.append(jnp.asarray(gates))

        def batched(layer=layer):
            result = greedy_gate_selection(
                gated_eval, variables, layout, [batch], keep_per_layer=(1,), layers=[layer]
            )
            return result.layers[0].losses

        def loop(trial_gates=trial_gates):
            return [forward_loss(variables, gates, batch) for gates in trial_gates]

        seconds_loop, seconds_batched, ratio = paired_medians(loop, batched, args.repeats)
        totals[0] += seconds_batched
        totals[1] += seconds_loop
        ratios.append(ratio)
        print(
            f"{name:>8} {len(groups):>8} {seconds_batched * 1e3:>8.1f}ms "
            f"{seconds_loop * 1e3:>8.1f}ms {ratio:>6.1f}x {TARGET:>6.0f}x"
        )

    summed_groups = sum(
        len(layout.groups_in_layer(layout.layer_names.index(n))) for n in step_layers
    )
    print(
        f"{'all':>8} {summed_groups:>8} {totals[0] * 1e3:>8.1f}ms {totals[1] * 1e3:>8.1f}ms "
        f"{totals[1] / totals[0]:>6.1f}x {TARGET:>6.0f}x  (one step in each layer above, summed)"
    )
    setting = f"VGG-16-bn width/8, batch {args.batch_size}x32x32x3"
    summed = totals[1] / totals[0]
    rows = [
        Row(
            bench="greedy_channels",
            what=f"one greedy channel step in each of the {len(ratios)} layers, summed, {setting}",
            jaxprune=f"batched {totals[0] * 1e3:.1f} ms",
            peer=f"jitted forward per candidate {totals[1] * 1e3:.1f} ms",
            ratio=summed,
            target=f"ratio >= {TARGET:.0f}",
            met=summed >= TARGET,
            note=f"loop / batched; per layer {min(ratios):.1f}-{max(ratios):.1f}x, "
            f"{sum(r >= TARGET for r in ratios)} of {len(ratios)} at target; "
            f"{args.repeats} pairs, {jax.devices()[0].platform}",
        )
    ]
    print("\nwhole layer: greedy_channel_selection(layers=[layer], budget = half its channels)")
    for name in whole_layers:
        layer = layout.layer_names.index(name)
        budget = len(layout.groups_in_layer(layer)) // 2

        def select(layer=layer, budget=budget):
            return greedy_channel_selection(
                model, variables, itertools.repeat(batch), keep_per_layer=(budget,), layers=[layer]
            )

        jax.block_until_ready(select().mask)  # compile
        start = time.perf_counter()
        jax.block_until_ready(select().mask)
        seconds = time.perf_counter() - start
        print(
            f"{name:>8}: {budget} steps in {seconds:.2f} s ({seconds / budget * 1e3:.0f} ms/step)"
        )
        rows.append(
            Row(
                bench="greedy_channels",
                what=f"whole-layer greedy_channel_selection of {name}, {budget} steps, {setting}",
                jaxprune=f"{seconds:.2f} s ({seconds / budget * 1e3:.0f} ms/step)",
                note="one warm run",
            )
        )
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
