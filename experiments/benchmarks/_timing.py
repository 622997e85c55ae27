"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import jax
import optax


def paired_medians(fn_a, fn_b, repeats: int = 40) -> tuple[float, float, float]:
    """Median seconds of ``fn_a`` and ``fn_b`` and the median of their per-pair ratio a/b.

    The two are run alternately, so slow phases of a noisy machine hit both alike.
    """
    jax.block_until_ready(fn_a())
    jax.block_until_ready(fn_b())
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times_a, times_b)]
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


def train_step(apply_fn, optimizer):
    """Jitted ``step(params, state, x, y) -> (params, state)``: one optimizer update on the mean
    softmax cross-entropy of ``apply_fn(params, x)`` with integer labels ``y``."""

    @jax.jit
    def step(params, state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()

        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step
