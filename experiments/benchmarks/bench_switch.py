"""Benchmark: Switch-"small" train step with half the experts removed (compacted) vs full.

    scripts/with-env python experiments/benchmarks/bench_switch.py [--batch 8] [--length 128] [--repeats 15]
        [--quick] [--json PATH]

``--quick`` sets the defaults to batch 4 × 64 and 5 repeats.

Times a jitted MLM train step (cross-entropy + load-balancing loss, AdamW) of the full model and
of the model compacted to every other expert of each Switch layer, run alternately (medians),
and prints the measured speed-up next to two FLOP ratios:

* ideal (top-1): :func:`jaxprune.models.switch.flops`, each token through one expert — removing
  experts only shrinks the routers, so the ideal ratio is ≈ 1;
* executed (capacity slots): the expert FFNs run on ``E · C`` capacity slots per sequence
  (``C`` per expert is kept by compaction), so halving ``E`` halves the executed expert work —
  and drops more tokens, printed as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians

from jaxprune.models.moe import expert_capacity, total_aux_loss, total_dropped_tokens
from jaxprune.models.switch import Switch, SwitchConfig, compact_per_layer, flops, from_preset


def train_step(model: Switch, optimizer: optax.GradientTransformation):
    """Jitted ``(variables, opt_state, tokens, labels) -> (variables, opt_state, dropped)``."""

    def loss_fn(variables, tokens, labels):
        logits, state = model.apply(variables, tokens, mutable=["intermediates"])
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return nll + total_aux_loss(state), total_dropped_tokens(state)

    @jax.jit
    def step(variables, opt_state, tokens, labels):
        grads, dropped = jax.grad(loss_fn, has_aux=True)(variables, tokens, labels)
        updates, opt_state = optimizer.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state, dropped

    return step


def executed_flops(config: SwitchConfig, seq_len: int) -> int:
    """:func:`flops` with each Switch layer's top-1 expert term ``2·(2 T d I)`` replaced by the
    ``E_k · C`` capacity slots the dispatch tensors actually run through the experts."""
    capacity = expert_capacity(seq_len, config.capacity_factor, config.num_experts)
    expert_macs = 2 * config.hidden_size * config.intermediate_size
    total = flops(config, seq_len)
    for k in range(len(config.moe_layers)):
        total += 2 * expert_macs * (config.experts_in(k) * capacity - seq_len)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--batch", type=int, help="sequences (default 8; 4 with --quick)")
    parser.add_argument("--length", type=int, help="tokens (default 128; 64 with --quick)")
    parser.add_argument("--repeats", type=int, help="timed pairs (default 15; 5 with --quick)")
    args = parser.parse_args(argv)
    args.batch = args.batch or (4 if args.quick else 8)
    args.length = args.length or (64 if args.quick else 128)
    args.repeats = args.repeats or (5 if args.quick else 15)
    print(f"devices: {jax.devices()}  jax {jax.__version__}")

    config = from_preset("small")
    model = Switch(config)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.length)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, shape), jnp.int32)
    labels = jnp.asarray(rng.integers(0, config.vocab_size, shape), jnp.int32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), tokens)

    keep = np.arange(config.num_experts) % 2 == 0
    small_vars, small_config = compact_per_layer(
        variables, config, expert_keep=[keep] * len(config.moe_layers)
    )
    small_model = Switch(small_config)

    optimizer = optax.adamw(1e-4)
    full_step, small_step = train_step(model, optimizer), train_step(small_model, optimizer)
    full_state, small_state = optimizer.init(variables), optimizer.init(small_vars)
    t_full, t_small, ratio = paired_medians(
        lambda: full_step(variables, full_state, tokens, labels),
        lambda: small_step(small_vars, small_state, tokens, labels),
        repeats=args.repeats,
    )
    tokens_routed = args.batch * args.length * len(config.moe_layers)
    dropped_full = int(full_step(variables, full_state, tokens, labels)[2]) / tokens_routed
    dropped_small = int(small_step(small_vars, small_state, tokens, labels)[2]) / tokens_routed
    ideal = flops(config, args.length) / flops(small_config, args.length)
    executed = executed_flops(config, args.length) / executed_flops(small_config, args.length)

    print(
        f'Switch "small" (d {config.hidden_size}, {config.num_layers} layers, '
        f"{len(config.moe_layers)} Switch layers of {config.num_experts} experts, I "
        f"{config.intermediate_size}, V {config.vocab_size}), batch {args.batch}x{args.length}, "
        f"AdamW, medians of {args.repeats} alternating runs"
    )
    print(f"  full train step ({config.num_experts} experts)     {t_full * 1e3:9.1f} ms")
    print(f"  compacted train step ({keep.sum()} experts) {t_small * 1e3:9.1f} ms")
    print(f"  speed-up (median of paired ratios)   {ratio:9.3f}x")
    print(f"  ideal FLOP ratio (top-1 per token)   {ideal:9.3f}x")
    print(f"  executed FLOP ratio (capacity slots) {executed:9.3f}x")
    print(f"  tokens dropped: full {dropped_full:.1%}, compacted {dropped_small:.1%}")
    row = Row(
        bench="switch",
        what=f'train step, half the experts compacted vs full, Switch "small", batch '
        f"{args.batch}x{args.length}",
        jaxprune=f"compacted {t_small * 1e3:.1f} ms",
        peer=f"full {t_full * 1e3:.1f} ms",
        ratio=ratio,
        note=f"speed-up full/compacted, {args.repeats} pairs; FLOP ratios: ideal {ideal:.3f}, "
        f"executed {executed:.3f}; dropped {dropped_full:.1%} -> {dropped_small:.1%}",
    )
    write_rows(args.json, [row])


if __name__ == "__main__":
    main()
