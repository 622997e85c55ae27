"""Benchmark of gRDA against plain SGD: prints measured figures next to the issue's targets.

    scripts/with-env python experiments/benchmarks/bench_grda.py [--batch 256] [--repeats 60]
        [--hidden 512 512] [--quick] [--json PATH]

1. Train-step time of an MLP (jit) with ``jaxprune.optim.grda`` vs ``optax.sgd`` at the same
   learning rate.  Target: ≤ 1.10× (the paper reports "slightly higher wall time", Table 7:
   the soft thresholding is one extra elementwise pass).
2. Optimizer-state bytes.  Target: one extra parameter-sized buffer (the dual average) plus
   scalars, against SGD's empty state; and XLA's compiled memory figures for both steps.
Timings are medians over repeated warm runs, alternating the two steps (``--quick``: 20 pairs
and 50 pruning steps instead of 60 and 200).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians, train_step

from jaxprune.models import MLP
from jaxprune.optim.grda import grda


def tree_bytes(tree) -> int:
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree))


def memory_figures(step, *args) -> str:
    analysis = step.lower(*args).compile().memory_analysis()
    if analysis is None:
        return "n/a"
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
    values = [getattr(analysis, f, None) for f in fields]
    if any(v is None for v in values):
        return "n/a"
    arg, out, temp = values
    return f"args {arg / 2**20:7.2f} MiB  out {out / 2**20:7.2f} MiB  temp {temp / 2**20:7.2f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, help="timed pairs (default 60; 20 with --quick)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    args = parser.parse_args(argv)
    repeats = args.repeats or (20 if args.quick else 60)
    pruning_steps = 50 if args.quick else 200
    print(f"devices: {jax.devices()}  jax {jax.__version__}\n")

    rng = np.random.default_rng(0)
    model = MLP(hidden=tuple(args.hidden), num_outputs=10)
    x = jnp.asarray(rng.normal(size=(args.batch, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, args.batch))
    params = model.init(jax.random.PRNGKey(0), x)
    lr = 0.1
    sgd, ours = optax.sgd(lr), grda(lr, c=0.005, mu=0.6)  # the paper's ImageNet settings
    sgd_step, grda_step = train_step(model.apply, sgd), train_step(model.apply, ours)
    sgd_state, grda_state = sgd.init(params), ours.init(params)

    t_grda, t_sgd, ratio = paired_medians(
        lambda: grda_step(params, grda_state, x, y),
        lambda: sgd_step(params, sgd_state, x, y),
        repeats=repeats,
    )
    widths = "-".join(str(w) for w in (784, *args.hidden, 10))
    n_params = sum(np.size(a) for a in jax.tree_util.tree_leaves(params))
    print(
        f"MLP {widths} ({n_params:,} parameters), batch {args.batch}, lr {lr} "
        f"(medians of {repeats} alternating runs)"
    )
    print(f"  SGD train step    {t_sgd * 1e3:8.3f} ms")
    print(f"  gRDA train step   {t_grda * 1e3:8.3f} ms")
    print(f"  ratio gRDA/SGD    {ratio:8.3f} x   target <= 1.10 x\n")

    p_bytes, s_sgd, s_grda = tree_bytes(params), tree_bytes(sgd_state), tree_bytes(grda_state)
    print("Optimizer state")
    print(f"  parameters        {p_bytes:12,d} bytes")
    print(f"  SGD state         {s_sgd:12,d} bytes")
    print(
        f"  gRDA state        {s_grda:12,d} bytes  = {s_grda / p_bytes:.4f} x parameters "
        f"(+{s_grda - p_bytes} bytes of scalars)   target: 1 parameter-sized buffer"
    )
    print("Compiled train step (XLA memory analysis)")
    print(f"  SGD   {memory_figures(sgd_step, params, sgd_state, x, y)}")
    print(f"  gRDA  {memory_figures(grda_step, params, grda_state, x, y)}")

    # Sanity: the step does prune (a few hundred steps on this random data).
    state, p = grda_state, params
    for _ in range(pruning_steps):
        p, state = grda_step(p, state, x, y)
    zeros = sum(int(jnp.sum(a == 0)) for a in jax.tree_util.tree_leaves(p))
    print(
        f"\nAfter {pruning_steps} gRDA steps: threshold {float(state.threshold):.4g}, sparsity "
        f"{zeros / n_params:.1%}"
    )
    rows = [
        Row(
            bench="grda",
            what=f"train step gRDA vs SGD, MLP {widths}, batch {args.batch}",
            jaxprune=f"gRDA {t_grda * 1e3:.3f} ms",
            peer=f"SGD {t_sgd * 1e3:.3f} ms",
            ratio=ratio,
            target="ratio <= 1.10",
            met=ratio <= 1.10,
            note=f"median of {repeats} paired ratios; {jax.default_backend()}",
        ),
        Row(
            bench="grda",
            what=f"optimizer-state bytes / parameter bytes, MLP {widths}",
            jaxprune=f"gRDA state {s_grda:,d} B",
            peer=f"parameters {p_bytes:,d} B (SGD state {s_sgd:,d} B)",
            ratio=s_grda / p_bytes,
            target="one parameter-sized buffer plus scalars",
            met=0 <= s_grda - p_bytes <= 64,
            note=f"after {pruning_steps} steps: sparsity {zeros / n_params:.1%}",
        ),
    ]
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
