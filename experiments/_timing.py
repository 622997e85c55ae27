"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import jax


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
