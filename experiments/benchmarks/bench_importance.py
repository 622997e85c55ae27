"""Benchmark of natural importance: prints measured figures next to the issue's target.

    scripts/with-env python experiments/benchmarks/bench_importance.py [--width 1000] [--batch 256]
        [--chunk-size 64] [--repeats 5] [--quick] [--json PATH]

``--quick`` sets the defaults to width 300 and 3 repeats.

Natural importance (Li et al. (2020), Def. 2.1) of every hidden neuron of an MLP
``64-width-10`` (ReLU, softmax cross-entropy on one batch of 256), ``width`` groups (each a
kernel column, its bias and the next layer's input row), computed five ways:

1. sequential: the ``width`` losses as jit-compiled evaluations in a Python loop over groups
   (one compiled ``zero group g, evaluate`` function, asynchronous dispatch, one sync at the
   end).  This is the baseline of the target: the others should be >= 20x faster.
2. :func:`~jaxprune.methods.importance.scores.natural_importance` with its default chunking
   (:func:`~jaxprune.methods.importance.scores.default_chunk_size`: 1 on CPU for this model),
   the general path.
3. The same with ``--chunk-size`` (64 by default), to show what wide vmapped blocks cost here.
4. :func:`~jaxprune.methods.importance.scores.natural_importance_from_gates` on the model's
   ``neuron_gates`` (``ModelSpec.gate_keyword``): only the layers after the gates per group.
5. :func:`~jaxprune.methods.importance.scores.natural_importance_of_dense_inputs` on the hidden
   activations and the output kernel: a rank-1 update of the logits per group (the hidden
   activations are computed inside the timed call).
Plus one jit-compiled gradient of the same loss, for scale.  All five agree to float32
rounding (checked before timing).  Timings are medians of warm runs taken round-robin (each
round runs every method once), so slow phases of a loaded machine hit all of them alike; the
ratios are medians of the per-round ratios.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows

from jaxprune.masks import apply_group_mask, build_group_ids, neurons
from jaxprune.methods.importance.scores import (
    default_chunk_size,
    natural_importance,
    natural_importance_from_gates,
    natural_importance_of_dense_inputs,
)
from jaxprune.models import MLP

TARGET = 20.0


def round_robin(methods: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` warm runs of every method, one run of each per round."""
    for fn in methods.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--width", type=int, help="hidden neurons = groups (default 1000)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64, help="the wide-block variant (3)")
    parser.add_argument("--repeats", type=int, help="default 5")
    args = parser.parse_args(argv)
    args.width = args.width or (300 if args.quick else 1000)
    args.repeats = args.repeats or (3 if args.quick else 5)
    print(f"devices: {jax.devices()}  jax {jax.__version__}\n")

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch))
    model = MLP(hidden=(args.width,), num_outputs=10)
    params = model.init(jax.random.PRNGKey(0), x)
    ids, _ = build_group_ids(params, neurons("Dense_0$", next_layer="Dense_1$"))
    p = args.width
    num_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))

    def cross_entropy(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def loss(params):
        return cross_entropy(model.apply(params, x))

    def gated_loss(gates):
        return cross_entropy(model.apply(params, x, neuron_gates=gates))

    hidden_layer, output_layer = params["params"]["Dense_0"], params["params"]["Dense_1"]

    def loss_of_logits(pre_bias):
        return cross_entropy(pre_bias + output_layer["bias"])

    @jax.jit
    def activations():
        return jax.nn.relu(x @ hidden_layer["kernel"] + hidden_layer["bias"])

    @jax.jit
    def zeroed_loss(params, g):
        return loss(apply_group_mask(params, ids, jnp.arange(p) != g))

    base = jax.jit(loss)
    gradient = jax.jit(jax.grad(loss))

    def sequential():
        reference = base(params)
        return jnp.stack([zeroed_loss(params, g) for g in range(p)]) - reference

    methods = {
        "sequential": sequential,
        "default": lambda: natural_importance(loss, params, ids),
        "wide": lambda: natural_importance(loss, params, ids, chunk_size=args.chunk_size),
        "gates": lambda: natural_importance_from_gates(gated_loss, p),
        "dense": lambda: natural_importance_of_dense_inputs(
            loss_of_logits, activations(), output_layer["kernel"]
        ),
        "gradient": lambda: gradient(params),
    }
    first = {}
    for name, fn in methods.items():
        start = time.perf_counter()
        first[name] = (jax.block_until_ready(fn()), time.perf_counter() - start)
    for name in ("default", "wide", "gates", "dense"):
        np.testing.assert_allclose(first[name][0], first["sequential"][0], rtol=1e-4, atol=1e-6)
    times = round_robin(methods, args.repeats)
    median = {name: statistics.median(t) for name, t in times.items()}

    def speed_up(name: str) -> float:
        return statistics.median(a / b for a, b in zip(times["sequential"], times[name]))

    def per_gradient(name: str) -> float:
        return statistics.median(a / b for a, b in zip(times[name], times["gradient"]))

    print(
        f"NI of {p} neuron groups, MLP 64-{p}-10, batch {args.batch}, medians of "
        f"{args.repeats} round-robin warm runs (first call incl. compile in brackets)"
    )
    labels = {
        "sequential": f"{p} sequential jit evaluations",
        "default": f"natural_importance, chunk {default_chunk_size(num_params)} (default)",
        "wide": f"natural_importance, chunk {args.chunk_size}",
        "gates": f"natural_importance_from_gates, chunk {default_chunk_size()}",
        "dense": f"natural_importance_of_dense_inputs, chunk {default_chunk_size()}",
    }
    print(f"  {'':48s} {'time':>10s}  {'vs sequential':>13s}  {'/ gradient':>10s}")
    for name, label in labels.items():
        print(
            f"  {label:48s} {median[name] * 1e3:7.1f} ms  {speed_up(name):11.1f} x  "
            f"{per_gradient(name):9.0f} x   ({first[name][1]:.2f} s)"
        )
    print(f"  {'one gradient':48s} {median['gradient'] * 1e3:7.2f} ms")
    print(f"  target: >= {TARGET:.0f} x faster than sequential")
    for name in ("default", "gates", "dense"):
        verdict = "meets" if speed_up(name) >= TARGET else "misses"
        print(f"    {labels[name]:48s} {verdict} it ({speed_up(name):.1f} x)")
    rows = [
        Row(
            bench="importance",
            what=f"NI of {p} neuron groups, {labels[name]}, MLP 64-{p}-10, batch {args.batch}",
            jaxprune=f"{median[name] * 1e3:.1f} ms",
            peer=f"{labels['sequential']} {median['sequential'] * 1e3:.1f} ms",
            ratio=speed_up(name),
            target="" if name == "wide" else f"ratio >= {TARGET:.0f}",
            met=None if name == "wide" else speed_up(name) >= TARGET,
            note=f"sequential / this, {args.repeats} rounds; {per_gradient(name):.0f} gradients; "
            f"{jax.default_backend()}",
        )
        for name in ("default", "wide", "gates", "dense")
    ]
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
