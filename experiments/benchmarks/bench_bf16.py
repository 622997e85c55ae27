"""Benchmark: masked and compacted MLP train steps computed in bfloat16 vs float32.

    scripts/with-env python experiments/benchmarks/bench_bf16.py [--quick] [--json PATH]

An MLP ``784-W-W-10`` (``W`` = 2048, batch 1024; ``--quick``: 512 and 128) with half of each
hidden layer's neurons pruned, trained two ways from the same initialization on one fixed
random batch with AdamW:

* masked: the full-width model under :func:`jaxprune.optim.masked` with the unit mask;
* compacted: the model with the pruned neurons sliced out (:func:`jaxprune.masks.compact`).

Each runs with ``MLP(dtype=jnp.bfloat16)`` (bfloat16 matrix products, float32 parameters and
optimizer state, the loss in float32) and with ``dtype=None`` (float32 throughout), for
``--steps`` updates (default 50; 20 with ``--quick``).  Printed per way: whether every bfloat16
loss is finite, the largest relative gap between the two loss curves (target: finite and within
5%, bfloat16 keeping 8 significant bits), and the median step times of the two, run
alternately (:func:`_timing.paired_medians`), with their ratio float32 / bfloat16.

References:
  Kalamkar et al. (2019), "A study of BFLOAT16 for deep learning training" (bfloat16 compute
  with float32 master weights).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians
from bench_masks import unit_mask

from jaxprune.masks.compact import Link, compact
from jaxprune.models import MLP
from jaxprune.optim.masked import masked

TOLERANCE = 0.05


class Curves(NamedTuple):
    """Losses of ``steps`` updates in float32 and bfloat16 (each ``(steps,)``) and the paired
    step-time medians (seconds) and ratio float32 / bfloat16."""

    float32: np.ndarray
    bfloat16: np.ndarray
    seconds_float32: float
    seconds_bfloat16: float
    ratio: float


def loss_step(model: MLP, optimizer: optax.GradientTransformation):
    """Jitted ``(params, state, x, y) -> (params, state, loss)``: one update on the mean
    softmax cross-entropy, the logits cast to float32 before the loss."""

    @jax.jit
    def step(params, state, x, y):
        def loss(p):
            logits = model.apply(p, x).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return step


def curves(build, params, optimizer, x, y, steps: int, pairs: int) -> Curves:
    """Train ``build(dtype)`` from ``params`` for ``steps`` updates in both dtypes and time one
    warm step of each."""
    runs = {}
    for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        step = loss_step(build(dtype), optimizer)
        state, p, losses = optimizer.init(params), params, []
        for _ in range(steps):
            p, state, value = step(p, state, x, y)
            losses.append(value)
        runs[name] = (step, p, state, np.asarray(jax.device_get(losses), np.float64))

    def timed(name):
        step, p, state, _ = runs[name]
        return lambda: step(p, state, x, y)

    t32, t16, ratio = paired_medians(timed("float32"), timed("bfloat16"), pairs)
    return Curves(runs["float32"][3], runs["bfloat16"][3], t32, t16, ratio)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--steps", type=int, help="updates per run (default 50; 20 with --quick)")
    args = parser.parse_args(argv)
    width, batch, pairs = (512, 128, 10) if args.quick else (2048, 1024, 30)
    steps = args.steps or (20 if args.quick else 50)
    platform = jax.devices()[0].platform
    print(f"devices: {jax.devices()}  jax {jax.__version__}")

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch))
    params = MLP(hidden=(width, width), num_outputs=10).init(jax.random.key(0), x)
    layers = ("params/Dense_0", "params/Dense_1")
    keep = {layer: rng.permutation(width) < width // 2 for layer in layers}
    mask = unit_mask(params, keep)
    links = [Link(layers[0], layers[1]), Link(layers[1], "params/Dense_2")]
    optimizer = optax.adamw(1e-3, weight_decay=1e-4)
    ways = {
        "masked": curves(
            lambda dtype: MLP(hidden=(width, width), num_outputs=10, dtype=dtype),
            jax.tree_util.tree_map(jnp.multiply, params, mask),
            masked(optimizer, initial_mask=mask),
            x,
            y,
            steps,
            pairs,
        ),
        "compacted": curves(
            lambda dtype: MLP(hidden=(width // 2, width // 2), num_outputs=10, dtype=dtype),
            compact(params, links, keep),
            optimizer,
            x,
            y,
            steps,
            pairs,
        ),
    }
    setting = f"MLP 784-{width}-{width}-10 at 50% neurons, batch {batch}, AdamW, {steps} steps"
    print(f"{setting}, {platform}; median of {pairs} alternating step pairs")
    print(
        f"{'':11s}{'finite':>8s}{'max rel gap':>13s}{'f32 ms':>9s}{'bf16 ms':>9s}{'f32/bf16':>10s}"
    )
    rows = []
    for name, c in ways.items():
        finite = bool(np.all(np.isfinite(c.bfloat16)))
        gap = float(np.max(np.abs(c.bfloat16 - c.float32) / np.abs(c.float32)))
        print(
            f"{name:11s}{finite!s:>8s}{gap:>12.2%} {c.seconds_float32 * 1e3:>8.2f}"
            f"{c.seconds_bfloat16 * 1e3:>9.2f}{c.ratio:>10.2f}"
        )
        print(
            f"{'':11s}loss float32 {c.float32[0]:.4f} -> {c.float32[-1]:.4f}, "
            f"bfloat16 {c.bfloat16[0]:.4f} -> {c.bfloat16[-1]:.4f}"
        )
        rows.append(
            Row(
                bench="bf16",
                what=f"{name} train step in bfloat16 vs float32, {setting}",
                jaxprune=f"bf16 {c.seconds_bfloat16 * 1e3:.2f} ms, loss {c.bfloat16[-1]:.4f}",
                peer=f"f32 {c.seconds_float32 * 1e3:.2f} ms, loss {c.float32[-1]:.4f}",
                ratio=c.ratio,
                target=f"finite, losses within {TOLERANCE:.0%}",
                met=finite and gap <= TOLERANCE,
                note=f"ratio f32/bf16 step time; max relative loss gap {gap:.2%}; {platform}",
            )
        )
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
