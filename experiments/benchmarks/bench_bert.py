"""Benchmark: BERT train-step time with 75% of the attention heads compacted away vs dense.

    scripts/with-env python experiments/benchmarks/bench_bert.py               # BERT-small, batch 8 × 128
    scripts/with-env python experiments/benchmarks/bench_bert.py --quick       # BERT-small, batch 4 × 64
    scripts/with-env python experiments/benchmarks/bench_bert.py --preset smoke  # seconds
        [--repeats R] [--json PATH]

One jit-compiled MLM train step (forward, backward, Adam update, dropout on) of the dense model
and of the model whose heads were removed with ``bert.compact`` (``ceil(H/4)`` heads kept per
layer, at least one), run alternately; prints the medians of the step times and of their
per-pair ratio (compacted / dense) next to the ideal attention-FLOP ratio and the whole-model FLOP ratio
(``jaxprune.models.bert.attention_flops`` / ``flops``; a train step costs about 3× the forward
FLOPs for both models, so the ratios carry over).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians

from jaxprune.models.bert import (
    Bert,
    BertConfig,
    attention_flops,
    compact,
    flops,
    from_preset,
    mlm_loss,
)

SETTINGS = {
    "smoke": {"preset": "tiny", "batch": 2, "seq_len": 16, "repeats": 3},
    "quick": {"preset": "small", "batch": 4, "seq_len": 64, "repeats": 5},
    "small": {"preset": "small", "batch": 8, "seq_len": 128, "repeats": 15},
}


def make_step(config: BertConfig, optimizer: optax.GradientTransformation):
    """Jitted ``(params, opt_state, batch, key) -> (params, opt_state, loss)`` MLM step."""
    model = Bert(config)

    @jax.jit
    def step(params, opt_state, batch, key):
        def loss_fn(p):
            logits = model.apply(
                {"params": p}, batch["tokens"], deterministic=False, rngs={"dropout": key}
            )
            return mlm_loss(logits, batch["labels"], batch["weights"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def random_batch(config: BertConfig, batch: int, seq_len: int, seed: int = 0) -> dict:
    """Random token ids with 15% of the positions as MLM targets."""
    rng = np.random.default_rng(seed)
    return {
        "tokens": jnp.asarray(rng.integers(0, config.vocab_size, (batch, seq_len))),
        "labels": jnp.asarray(rng.integers(0, config.vocab_size, (batch, seq_len))),
        "weights": jnp.asarray(rng.uniform(size=(batch, seq_len)) < 0.15, jnp.float32),
    }


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--preset", choices=sorted(SETTINGS), help="shapes (default: small; quick with --quick)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs (median over)")
    args = parser.parse_args(argv)
    preset = args.preset or ("quick" if args.quick else "small")
    setting = SETTINGS[preset]
    repeats = args.repeats or setting["repeats"]
    batch_size, seq_len = setting["batch"], setting["seq_len"]

    config = from_preset(setting["preset"])
    rng = np.random.default_rng(0)
    heads = config.num_heads
    kept_per_layer = max(1, math.ceil(heads / 4))
    keep = np.zeros((config.num_layers, heads), bool)
    for layer in range(config.num_layers):
        keep[layer, rng.choice(heads, kept_per_layer, replace=False)] = True

    tokens = jnp.zeros((1, seq_len), jnp.int32)
    variables = Bert(config).init(jax.random.key(0), tokens)
    small_variables, small_config = compact(variables, config, keep)
    optimizer = optax.adam(1e-4)
    batch = random_batch(config, batch_size, seq_len)
    key = jax.random.key(1)

    def runner(cfg, params):
        step = make_step(cfg, optimizer)
        opt_state = optimizer.init(params)
        return lambda: step(params, opt_state, batch, key)

    t_small, t_dense, ratio = paired_medians(
        runner(small_config, small_variables["params"]),
        runner(config, variables["params"]),
        repeats,
    )
    attention_ratio = attention_flops(small_config, seq_len) / attention_flops(config, seq_len)
    model_ratio = flops(small_config, seq_len) / flops(config, seq_len)
    print(
        f"BERT-{setting['preset']} (L={config.num_layers}, d={config.hidden_size}, "
        f"H={heads}, I={config.intermediate_size}, V={config.vocab_size}), MLM train step, "
        f"Adam, batch {batch_size} × {seq_len}, jit on {jax.devices()[0].platform}, "
        f"median of {repeats} alternating pairs"
    )
    print(f"heads kept per layer: {small_config.layer_heads} of {heads} (75% removed)")
    print(f"{'compacted / dense':32s}{'dense':>10s}{'compacted':>12s}{'ratio':>8s}")
    print(f"{'train step (ms)':32s}{1e3 * t_dense:10.1f}{1e3 * t_small:12.1f}{ratio:8.3f}")
    print(f"{'ideal attention-FLOP ratio':32s}{'':22s}{attention_ratio:8.3f}")
    print(f"{'whole-model FLOP ratio':32s}{'':22s}{model_ratio:8.3f}")
    print(
        f"forward GFLOPs per sequence: dense {flops(config, seq_len) / 1e9:.3f}, "
        f"compacted {flops(small_config, seq_len) / 1e9:.3f}"
    )
    row = Row(
        bench="bert",
        what=f"MLM train step, 75% of the heads compacted, BERT-{setting['preset']}, "
        f"batch {batch_size}x{seq_len}",
        jaxprune=f"compacted {1e3 * t_small:.1f} ms",
        peer=f"dense {1e3 * t_dense:.1f} ms",
        ratio=ratio,
        note=f"compacted/dense; FLOP ratios: attention {attention_ratio:.3f}, whole model "
        f"{model_ratio:.3f}; {repeats} pairs, {jax.devices()[0].platform}",
    )
    write_rows(args.json, [row])


if __name__ == "__main__":
    main()
