"""Benchmark: the PL gating objective's gradient with the loss-Hessian trace vs the Gauss–Newton
trace (``hessian="loss"`` vs ``"gauss_newton"``).

    scripts/with-env python experiments/benchmarks/bench_gating_objective.py               # VGG-16-tiny
    scripts/with-env python experiments/benchmarks/bench_gating_objective.py --model mlp   # quick check
    scripts/with-env python experiments/benchmarks/bench_gating_objective.py --quick       # MLP, 16 probes
        [--batch-size 64] [--num-probes 4] [--trace-probes 64] [--repeats 2] [--json PATH]

On a piecewise-linear network (here BatchNorm in evaluation mode) both traces have the same
expectation; the loss Hessian's probe ``tᵀ ∇²L t`` is differentiated in the gates at third
order, the Gauss–Newton probe ``(Jt)ᵀ H_ℓ (Jt)`` at second.  Prints, for each target and side by
side: the XLA compilation time of ``jit(value_and_grad)`` in the gating parameters, the median
time of one compiled call (the two alternate, so a noisy machine slows both), and the trace
estimate ± its standard error over ``--trace-probes`` probes with the per-probe standard
deviation (the Gauss–Newton probes leave out the output Hessian's off-diagonal noise).

References:
  Chen et al. (2023), App. E.2, eq. 36; Schraudolph (2002) (the Gauss–Newton matrix).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians

from jaxprune.data import load_dataset
from jaxprune.methods.pl_gating import features, gating_loss, init_gating, normalize_features
from jaxprune.spectra import SplitLoss, gauss_newton_trace, hessian_trace
from jaxprune.train import build_model

MODELS = {
    "vgg": ("digits32", "vgg16-bn-tiny", (32, 32, 3)),
    "mlp": ("digits", "256,256", (64,)),
}


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), help="default: vgg (mlp with --quick)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-probes", type=int, default=4, help="probes per gating step")
    parser.add_argument(
        "--trace-probes", type=int, help="probes of the estimate (default 64; 16 with --quick)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    model_name = args.model or ("mlp" if args.quick else "vgg")
    trace_probes = args.trace_probes or (16 if args.quick else 64)

    dataset, preset, input_shape = MODELS[model_name]
    splits = load_dataset(dataset)
    x = jnp.asarray(splits.train["x"][: args.batch_size]).reshape(-1, *input_shape)
    y = jnp.asarray(splits.train["y"][: args.batch_size])
    model = build_model(model_name, num_outputs=10, input_shape=input_shape, preset=preset)
    variables = model.init(jax.random.key(0), x)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    ids, layout = model.group_ids(params)

    def apply_fn(p, inputs):
        return model.apply({"params": p, **state}, inputs, train=False)[0]

    def output_loss(outputs, batch):
        return optax.softmax_cross_entropy_with_integer_labels(outputs, batch[1]).mean()

    split = SplitLoss(lambda p, batch: apply_fn(p, batch[0]), output_loss)

    def loss_fn(p, batch):
        return output_loss(apply_fn(p, batch[0]), batch)

    feats = features(apply_fn, params, x[:16], ids)
    normalized = normalize_features(feats, layout)
    v = init_gating(jax.random.key(1), 16)
    batch, key = (x, y), jax.random.key(2)
    count = sum(a.size for a in jax.tree_util.tree_leaves(params))
    print(
        f"{model_name} ({preset}), {count:,} parameters, {len(feats.entropy)} groups, batch "
        f"{args.batch_size}, {args.num_probes} probes per step, evaluation mode; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    )

    compiled, compile_seconds = {}, {}
    for hessian in ("loss", "gauss_newton"):

        def objective(v, params, normalized, batch, hessian=hessian):
            return gating_loss(
                v, loss_fn, apply_fn, params, ids, normalized, batch, key,
                num_probes=args.num_probes, hessian=hessian, split_loss=split,
            )  # fmt: skip

        start = time.perf_counter()
        operands = (v, params, normalized, batch)  # arguments, not constants folded by XLA
        compiled[hessian] = jax.jit(jax.value_and_grad(objective)).lower(*operands).compile()
        compile_seconds[hessian] = time.perf_counter() - start
        print(f"  compile jit(value_and_grad), hessian={hessian}: {compile_seconds[hessian]:.1f} s")

    loss_s, gn_s, ratio = paired_medians(
        lambda: compiled["loss"](*operands),
        lambda: compiled["gauss_newton"](*operands),
        repeats=args.repeats,
    )
    print(
        f"  one compiled call: loss {loss_s:.3f} s, gauss_newton {gn_s:.3f} s, "
        f"ratio loss/gauss_newton {ratio:.2f}"
    )

    estimates = {
        "loss": jax.jit(
            lambda p, b, k: hessian_trace(
                lambda q: loss_fn(q, b), p, k, num_probes=trace_probes, batch_size=1
            )
        )(params, batch, key),
        "gauss_newton": jax.jit(
            lambda p, b, k: gauss_newton_trace(
                split, p, b, k, num_probes=trace_probes, batch_size=1
            )
        )(params, batch, key),
    }
    for hessian, estimate in estimates.items():
        samples = np.asarray(estimate.samples)
        print(
            f"  trace ({hessian}): {float(estimate.estimate):.4g} ± {float(estimate.stderr):.2g} "
            f"over {trace_probes} probes (same probes), per-probe sd {samples.std(ddof=1):.3g}"
        )
    setting = f"{model_name} ({preset}), batch {args.batch_size}, {args.num_probes} probes/step"
    gn, exact = estimates["gauss_newton"], estimates["loss"]
    sd = {name: float(np.asarray(e.samples).std(ddof=1)) for name, e in estimates.items()}
    rows = [
        Row(
            bench="gating_objective",
            what=f"compiled jit(value_and_grad) of the gating loss, {setting}",
            jaxprune=f"gauss_newton {gn_s:.3f} s",
            peer=f"loss Hessian {loss_s:.3f} s",
            ratio=ratio,
            note=f"loss/gauss_newton, {args.repeats} pairs; compile "
            f"{compile_seconds['gauss_newton']:.1f} s vs {compile_seconds['loss']:.1f} s",
        ),
        Row(
            bench="gating_objective",
            what=f"trace estimate and per-probe sd, {trace_probes} probes, {setting}",
            jaxprune=f"gauss_newton {float(gn.estimate):.4g} ± {float(gn.stderr):.2g} "
            f"(sd {sd['gauss_newton']:.3g})",
            peer=f"loss Hessian {float(exact.estimate):.4g} ± {float(exact.stderr):.2g} "
            f"(sd {sd['loss']:.3g})",
            ratio=sd["loss"] / sd["gauss_newton"],
            note="ratio: per-probe sd loss / gauss_newton (same probes, same expectation)",
        ),
    ]
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
