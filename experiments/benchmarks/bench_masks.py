"""Benchmark of the sparsity core: prints measured ratios next to the issue's targets.

    scripts/with-env python experiments/benchmarks/bench_masks.py [--quick] [--json PATH]

1. Train-step time of an MLP under the masked optax transform vs the same dense step (jit,
   CPU).  Target: ≤ 5% overhead.
2. MLP and CNN at 50% and 75% structured sparsity (hidden neurons / conv filters): forward and
   train-step time of the compacted model vs the masked model, next to the ideal FLOP ratio.
Timings are medians over repeated warm runs (60 pairs for 1., 40 and 15 for 2.).  ``--quick``:
MLP 784-512-512-10 on batch 128, CNN on 32 images, 20, 10 and 5 pairs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians, train_step

from jaxprune.masks.compact import Link, compact
from jaxprune.models import MLP
from jaxprune.optim.masked import masked


class CNN(nn.Module):
    widths: tuple[int, int] = (64, 128)

    @nn.compact
    def __call__(self, x):
        x = jax.nn.relu(nn.Conv(self.widths[0], (3, 3))(x))
        x = jax.nn.relu(nn.Conv(self.widths[1], (3, 3), strides=(2, 2))(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def unit_mask(params, keep):
    """Per-weight mask zeroing each pruned unit's kernel column and bias."""
    mask = jax.tree_util.tree_map(jnp.ones_like, params)
    for layer, kept in keep.items():
        name = layer.split("/")[1]
        mask["params"][name]["kernel"] = mask["params"][name]["kernel"] * kept
        mask["params"][name]["bias"] = mask["params"][name]["bias"] * kept
    return mask


def macs(name: str, fan_in: int, widths: tuple[int, int]) -> int:
    """Multiply-accumulates per example: MLP layers, or the CNN's 3×3 convs on 32×32 inputs
    (the second strided to 16×16) plus its head."""
    if name == "MLP":
        return fan_in * widths[0] + widths[0] * widths[1] + widths[1] * 10
    return 32 * 32 * 9 * fan_in * widths[0] + 16 * 16 * 9 * widths[0] * widths[1] + widths[1] * 10


def main(argv: list[str] | None = None) -> None:
    args = benchmark_parser(__doc__).parse_args(argv)
    width, batch, images_n = (512, 128, 32) if args.quick else (1024, 256, 64)
    masked_pairs, forward_pairs, step_pairs = (20, 10, 5) if args.quick else (60, 40, 15)
    print(f"devices: {jax.devices()}  jax {jax.__version__}\n")
    rng = np.random.default_rng(0)
    platform = jax.devices()[0].platform

    # 1. Masked vs dense train step.
    mlp = MLP(hidden=(width, width), num_outputs=10)
    x = jnp.asarray(rng.normal(size=(batch, 784)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch))
    params = mlp.init(jax.random.PRNGKey(0), x)
    dense_opt = optax.adamw(1e-3, weight_decay=1e-4)
    keep = {f"params/Dense_{i}": rng.random(width) < 0.5 for i in range(2)}
    masked_opt = masked(dense_opt, initial_mask=unit_mask(params, keep))
    dense_step, masked_step = train_step(mlp.apply, dense_opt), train_step(mlp.apply, masked_opt)
    dense_state, masked_state = dense_opt.init(params), masked_opt.init(params)
    t_masked, t_dense, ratio = paired_medians(
        lambda: masked_step(params, masked_state, x, y),
        lambda: dense_step(params, dense_state, x, y),
        repeats=masked_pairs,
    )
    mlp_name = f"MLP 784-{width}-{width}-10, batch {batch}"
    print(f"{mlp_name}, AdamW (medians of {masked_pairs} alternating runs)")
    print(f"  dense train step   {t_dense * 1e3:8.2f} ms")
    print(f"  masked train step  {t_masked * 1e3:8.2f} ms")
    print(f"  overhead           {100 * (ratio - 1):8.1f} %   target <= 5 %\n")
    rows = [
        Row(
            bench="masks",
            what=f"masked optax transform vs dense train step, {mlp_name}, AdamW",
            jaxprune=f"masked {t_masked * 1e3:.2f} ms",
            peer=f"dense {t_dense * 1e3:.2f} ms",
            ratio=ratio,
            target="ratio <= 1.05",
            met=ratio <= 1.05,
            note=f"masked/dense, median of {masked_pairs} paired ratios; {platform}",
        )
    ]

    # 2. Compacted vs masked.
    cnn = CNN()
    images = jnp.asarray(rng.normal(size=(images_n, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, images_n))
    cnn_params = cnn.init(jax.random.PRNGKey(1), images)
    cases = [
        (
            "MLP",
            mlp,
            params,
            x,
            y,
            ("params/Dense_0", "params/Dense_1", "params/Dense_2"),
            lambda widths: MLP(hidden=widths, num_outputs=10),
            (width, width),
            784,
        ),
        (
            "CNN",
            cnn,
            cnn_params,
            images,
            labels,
            ("params/Conv_0", "params/Conv_1", "params/Dense_0"),
            lambda widths: CNN(widths=widths),
            (64, 128),
            3,
        ),
    ]
    print(
        f"{'model':<6}{'sparsity':>9}{'fwd masked':>12}{'fwd compact':>13}{'speed-up':>10}"
        f"{'step speed-up':>15}{'ideal (FLOPs)':>15}"
    )
    for name, model, variables, inputs, targets, layers, build, widths, fan_in in cases:
        links = [Link(layers[0], layers[1]), Link(layers[1], layers[2])]
        for sparsity in (0.5, 0.75):
            kept_widths = tuple(round(w * (1 - sparsity)) for w in widths)
            keep = {
                layers[i]: np.isin(np.arange(w), rng.permutation(w)[:k])
                for i, (w, k) in enumerate(zip(widths, kept_widths))
            }
            masked_vars = jax.tree_util.tree_map(
                jnp.multiply, variables, unit_mask(variables, keep)
            )
            small = compact(variables, links, keep)
            small_model = build(kept_widths)
            np.testing.assert_allclose(
                small_model.apply(small, inputs),
                model.apply(masked_vars, inputs),
                rtol=1e-3,
                atol=1e-4,
            )
            fwd_masked = jax.jit(model.apply)
            fwd_small = jax.jit(small_model.apply)
            t_fm, t_fs, fwd_ratio = paired_medians(
                lambda: fwd_masked(masked_vars, inputs),
                lambda: fwd_small(small, inputs),
                repeats=forward_pairs,
            )
            opt = optax.adamw(1e-3)
            masked_opt = masked(opt, initial_mask=unit_mask(variables, keep))
            step_m = train_step(model.apply, masked_opt)
            step_s = train_step(small_model.apply, opt)
            state_m, state_s = masked_opt.init(masked_vars), opt.init(small)
            _, _, step_ratio = paired_medians(
                lambda: step_m(masked_vars, state_m, inputs, targets),
                lambda: step_s(small, state_s, inputs, targets),
                repeats=step_pairs,
            )

            ideal = macs(name, fan_in, widths) / macs(name, fan_in, kept_widths)
            print(
                f"{name:<6}{sparsity:>9.0%}{t_fm * 1e3:>10.2f}ms{t_fs * 1e3:>11.2f}ms"
                f"{fwd_ratio:>9.2f}x{step_ratio:>14.2f}x{ideal:>14.2f}x"
            )
            shape = f"{name} {'-'.join(map(str, widths))}, batch {inputs.shape[0]}"
            for kind, figure, pairs in (
                ("forward", fwd_ratio, forward_pairs),
                ("train step", step_ratio, step_pairs),
            ):
                rows.append(
                    Row(
                        bench="masks",
                        what=f"{kind}, compacted vs masked at {sparsity:.0%} structured "
                        f"sparsity, {shape}",
                        jaxprune=f"speed-up {figure:.2f}x"
                        + (f" (compacted {t_fs * 1e3:.2f} ms)" if kind == "forward" else ""),
                        peer=f"masked {t_fm * 1e3:.2f} ms" if kind == "forward" else "",
                        ratio=figure,
                        note=f"masked/compacted, {pairs} pairs; ideal (FLOPs) {ideal:.2f}x",
                    )
                )
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
