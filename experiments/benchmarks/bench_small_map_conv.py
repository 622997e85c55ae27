"""Benchmark of the zoo's convolution: prints its time next to ``lax``'s.

    scripts/with-env python experiments/benchmarks/bench_small_map_conv.py [--batch-size 64]
        [--repeats 10] [--quick] [--json PATH]

:func:`jaxprune.models.conv.conv_general_dilated` computes convolutions onto at most
``MAX_MATMUL_PIXELS`` output pixels as one patches-times-kernel matmul and depthwise ones as a
sum of shifted windows, because XLA:CPU's convolution is slow on both.  Three comparisons, each
paired (alternating runs of the two, :func:`_timing.paired_medians`), ratios ``lax / jaxprune``:

1. one 3×3 convolution on the 2×2 maps of CIFAR VGG-16's last block (64 channels in and out
   at width/8, 512 at full width), forward and forward plus backward;
2. 3×3 depthwise convolutions of MobileNetV2's sizes (96 channels on 32×32 maps, 144 on 16×16,
   384 on 8×8), forward and forward plus backward;
3. the zoo's VGG-16-bn and MobileNetV2 on CIFAR-sized images (``vgg16-bn-tiny`` and
   ``mobilenet_v2-tiny``; also ``vgg16-bn`` and ``mobilenet_v2-cifar`` without ``--quick``): an
   evaluation forward pass and a training gradient of the cross-entropy, against the same
   model traced with every convolution on ``lax.conv_general_dilated``.

The lax reference is traced with the zoo's two paths switched off (``MAX_MATMUL_PIXELS = 0``,
and the depthwise sum replaced by ``lax.conv_general_dilated`` while tracing).  The rows have no target: they record what the two paths save.  ``--quick``: width/8
and the 16×16 depthwise size only, the tiny models, batch 16, 3 repeats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians
from bench_greedy_channels import numpy_variables
from jax import lax

from jaxprune.models import conv as zoo_conv
from jaxprune.train import build_model

LAYOUT = ("NHWC", "HWIO", "NHWC")


def _lax_depthwise(lhs, rhs, strides, pads):
    return lax.conv_general_dilated(
        lhs, rhs, strides, pads, dimension_numbers=LAYOUT, feature_group_count=lhs.shape[-1]
    )


def compiled_pair(fn, *args):
    """``(jaxprune, lax)``: ``fn`` compiled as the zoo runs it and with every convolution on
    ``lax`` (both paths switched off while tracing), both called on ``args``."""
    ours = jax.jit(fn).lower(*args).compile()
    saved = zoo_conv.MAX_MATMUL_PIXELS, zoo_conv._depthwise_shifted_sum
    zoo_conv.MAX_MATMUL_PIXELS, zoo_conv._depthwise_shifted_sum = 0, _lax_depthwise
    try:
        # a new function object: jit's trace cache would return the first trace of ``fn``
        reference = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    finally:
        zoo_conv.MAX_MATMUL_PIXELS, zoo_conv._depthwise_shifted_sum = saved
    return (lambda: ours(*args)), (lambda: reference(*args))


def convolution_rows(what: str, forward, x, kernel, repeats: int) -> list[Row]:
    """Rows of ``forward(x, kernel)`` (a zoo convolution), forward and forward plus backward."""

    def both(x, kernel):
        out, pullback = jax.vjp(forward, x, kernel)
        return pullback(out)

    pairs = {
        "forward": compiled_pair(forward, x, kernel),
        "forward + backward": compiled_pair(both, x, kernel),
    }
    ours, reference = pairs["forward"]
    error = float(jnp.max(jnp.abs(ours() - reference())))
    rows = []
    for name, (ours, reference) in pairs.items():
        seconds_lax, seconds_ours, ratio = paired_medians(reference, ours, repeats)
        print(
            f"{what}, {name:<18}: lax {seconds_lax * 1e3:8.3f} ms, jaxprune "
            f"{seconds_ours * 1e3:7.3f} ms, {ratio:6.1f}x (max abs difference {error:.1e})"
        )
        rows.append(
            Row(
                bench="small_map_conv",
                what=f"{what}, {name}",
                jaxprune=f"{seconds_ours * 1e3:.3f} ms",
                peer=f"lax.conv_general_dilated {seconds_lax * 1e3:.3f} ms",
                ratio=ratio,
                note=f"lax / jaxprune; {repeats} pairs; max abs difference {error:.1e}; "
                f"{jax.devices()[0].platform}",
            )
        )
    return rows


def small_map_rows(batch_size: int, widths: tuple[int, ...], repeats: int) -> list[Row]:
    """3×3 convolutions ``width -> width`` onto 2×2 maps."""
    rng = np.random.default_rng(0)
    rows = []
    for width in widths:
        x = jnp.asarray(rng.normal(size=(batch_size, 2, 2, width)), jnp.float32)
        kernel = jnp.asarray(rng.normal(0, (2 / (9 * width)) ** 0.5, (3, 3, width, width)))

        def forward(x, kernel):
            return zoo_conv.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=LAYOUT
            )

        what = f"3x3 conv {width}->{width} on a {batch_size}x2x2 map"
        rows += convolution_rows(what, forward, x, kernel.astype(jnp.float32), repeats)
    return rows


def depthwise_rows(batch_size: int, shapes: tuple[tuple[int, int, int], ...], repeats: int):
    """MobileNetV2's 3×3 depthwise convolutions: ``(map size, channels, stride)``."""
    rng = np.random.default_rng(2)
    rows = []
    for size, channels, stride in shapes:
        x = jnp.asarray(rng.normal(size=(batch_size, size, size, channels)), jnp.float32)
        kernel = jnp.asarray(rng.normal(0, 1 / 3, (3, 3, 1, channels)), jnp.float32)

        def forward(x, kernel, stride=stride, channels=channels):
            return zoo_conv.conv_general_dilated(
                x,
                kernel,
                (stride, stride),
                ((1, 1), (1, 1)),
                dimension_numbers=LAYOUT,
                feature_group_count=channels,
            )

        what = (
            f"3x3 depthwise conv, {channels} channels, {batch_size}x{size}x{size}, stride {stride}"
        )
        rows += convolution_rows(what, forward, x, kernel, repeats)
    return rows


def model_rows(batch_size: int, models: tuple[tuple[str, str], ...], repeats: int) -> list[Row]:
    rng = np.random.default_rng(1)
    rows = []
    input_shape = (32, 32, 3)
    batch = {
        "x": jnp.asarray(rng.normal(size=(batch_size, *input_shape)), jnp.float32),
        "y": jnp.asarray(rng.integers(0, 10, batch_size)),
    }
    for name, preset in models:
        model = build_model(name, num_outputs=10, input_shape=input_shape, preset=preset)
        variables = jax.tree.map(jnp.asarray, numpy_variables(model, input_shape))

        def loss(params, batch, train):
            logits, updates, _ = model.apply(
                {**variables, "params": params}, batch["x"], train=train
            )
            value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
            return value, updates

        def evaluate(params, batch):
            return loss(params, batch, False)[0]

        def gradient(params, batch):
            return jax.grad(lambda p: loss(p, batch, True)[0])(params)

        for kind, fn in (("evaluation forward", evaluate), ("training gradient", gradient)):
            ours, reference = compiled_pair(fn, variables["params"], batch)
            seconds_lax, seconds_ours, ratio = paired_medians(reference, ours, repeats)
            print(
                f"{preset:<14} {kind:<19} batch {batch_size}: all-lax {seconds_lax * 1e3:8.1f} "
                f"ms, jaxprune {seconds_ours * 1e3:8.1f} ms, {ratio:5.2f}x"
            )
            rows.append(
                Row(
                    bench="small_map_conv",
                    what=f"{preset} {kind}, batch {batch_size}x32x32x3",
                    jaxprune=f"{seconds_ours * 1e3:.1f} ms",
                    peer=f"every conv on lax {seconds_lax * 1e3:.1f} ms",
                    ratio=ratio,
                    note=f"lax / jaxprune; {repeats} pairs; {jax.devices()[0].platform}",
                )
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch-size", type=int, help="default 64 (16 with --quick)")
    parser.add_argument("--repeats", type=int, help="default 10 (3 with --quick)")
    args = parser.parse_args(argv)
    batch_size = args.batch_size or (16 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 10)
    widths = (64,) if args.quick else (64, 512)
    depthwise = ((16, 144, 1),) if args.quick else ((32, 96, 1), (16, 144, 1), (8, 384, 1))
    models = (("vgg", "vgg16-bn-tiny"), ("mobilenet_v2", "mobilenet_v2-tiny"))
    if not args.quick:
        models += (("vgg", "vgg16-bn"), ("mobilenet_v2", "mobilenet_v2-cifar"))
    rows = small_map_rows(batch_size, widths, repeats)
    rows += depthwise_rows(batch_size, depthwise, repeats)
    rows += model_rows(batch_size, models, repeats)
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
