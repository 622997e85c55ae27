"""Hessian trace estimators: cost per probe by batching, and products needed for an accuracy.

    scripts/with-env python experiments/benchmarks/bench_trace.py [--quick] [--json PATH]

1. Hutchinson (``hessian_trace``, 16 probes) per probe vs one gradient, MLP 64-512-512-10,
   softmax cross-entropy, n = 128, both jitted, paired medians: the default batching (by
   backend: sequential on CPU) and ``batch_size=16`` (16 probes vectorized).  Target: default
   <= 1.5x a gradient per probe.
2. On a real Hessian (an MLP 16-32-32-10 trained a few Adam steps on random data, CE, n = 128;
   its exact trace from ``jax.hessian``), the Hessian products (HVPs or quadratic forms) each
   estimator needs for a median relative error (over 20 keys) <= 10% and <= 1%: plain
   Hutchinson, Hutch++, XTrace, Hutchinson deflated by a Lanczos basis, and matfree's ``stochtrace`` Monte Carlo (Rademacher) and
   leave-one-out XTrace (Gaussian, resphered) from .peers/site.  Budgets double from 6; a
   budget past the grid prints as "> max".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax
from _report import Row, benchmark_parser, write_rows
from _timing import paired_medians
from jax.flatten_util import ravel_pytree

from jaxprune.spectra import deflated_trace, hessian_trace, hutchpp_trace, hvp, xtrace

PEERS = Path(__file__).resolve().parents[2] / ".peers" / "site"
TARGETS = (0.1, 0.01)
KEYS = 20


class MLP(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(10)(x)


def ce_problem(hidden: int, features: int, seed: int = 0):
    """``(loss_fn, params)`` for an MLP ``features-hidden-hidden-10`` on 128 random examples."""
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    model = MLP(hidden)
    x = jax.random.normal(kx, (128, features))
    y = jax.random.randint(ky, (128,), 0, 10)
    params = model.init(kp, x)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    return loss, params


def per_probe_rows(repeats: int) -> list[Row]:
    loss, params = ce_problem(512, 64)
    probes = 16
    grad = jax.jit(jax.grad(loss))
    rows = []
    print(f"1. Hutchinson per probe / one gradient (MLP 64-512-512-10, {probes} probes)")
    print(f"   default batch on this backend ({jax.default_backend()}): see hessian.py")
    for label, batch in (("default", None), ("batch_size=16", 16)):
        trace = jax.jit(
            lambda p, k, b=batch: hessian_trace(loss, p, k, num_probes=probes, batch_size=b)
        )
        key = jax.random.key(3)
        t_trace, t_grad, ratio = paired_medians(
            lambda: trace(params, key), lambda: grad(params), repeats
        )
        per_probe = ratio / probes
        print(
            f"   {label:14s} trace {t_trace * 1e3:7.1f} ms, gradient {t_grad * 1e3:6.2f} ms, "
            f"per probe {per_probe:5.2f}x a gradient"
        )
        is_default = batch is None
        rows.append(
            Row(
                bench="trace",
                what=f"Hutchinson per probe / gradient, {label}, MLP 64-512-512-10, n=128",
                jaxprune=f"{per_probe:.2f}x ({t_trace / probes * 1e3:.2f} ms/probe)",
                peer="",
                ratio=per_probe,
                target="<= 1.5x" if is_default else "",
                met=bool(per_probe <= 1.5) if is_default else None,
                note=f"{jax.default_backend()}, paired medians of {repeats}, gradient "
                f"{t_grad * 1e3:.2f} ms",
            )
        )
    return rows


def trained_problem(steps: int):
    """The 16-32-32-10 MLP after ``steps`` Adam steps, its exact Hessian trace and top eigenvalues."""
    loss, params = ce_problem(32, 16, seed=1)
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    @jax.jit
    def step(p, s):
        updates, s = optimizer.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(steps):
        params, state = step(params, state)
    flat, unravel = ravel_pytree(params)
    start = time.perf_counter()
    hessian = jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat)
    eigenvalues = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
    print(
        f"   exact Hessian ({flat.size} parameters) by jax.hessian in "
        f"{time.perf_counter() - start:.1f} s; trace {eigenvalues.sum():.4f}, top eigenvalues "
        f"{np.round(eigenvalues[::-1][:4], 3)}, "
        f"{np.mean(np.abs(eigenvalues) < 1e-3 * eigenvalues.max()):.0%} below 1e-3 x the top"
    )
    return loss, params, float(eigenvalues.sum())


def jaxprune_estimators(loss, params):
    def make(estimator, **kwargs):
        return lambda key, m: estimator(loss, params, key, num_probes=m, **kwargs).estimate

    return {
        "Hutchinson": make(hessian_trace),
        "Hutch++": make(hutchpp_trace),
        "XTrace": make(xtrace),
        "Deflated (Lanczos)": make(deflated_trace),
    }


def matfree_estimators(loss, params):
    """matfree 0.6.3's estimators on the same HVP, or ``{}`` when .peers/site lacks matfree."""
    sys.path.insert(0, str(PEERS))
    try:
        from matfree import stochtrace
    except ImportError:
        print("   matfree not found in .peers/site (scripts/install-peers): its columns skipped")
        return {}

    def matvec(v):
        return hvp(loss, params, v)

    def monte_carlo(key, m):
        sampler = stochtrace.sampler_signs(params, num=m)
        estimator = stochtrace.estimator_monte_carlo(stochtrace.monte_carlo_trace(), sampler)
        return estimator(matvec, key)

    def leave_one_out(key, m):
        sampler = stochtrace.sampler_normal(params, num=m // 2)
        integrand = stochtrace.leave_one_out_xtrace()
        return stochtrace.estimator_leave_one_out(integrand, sampler)(matvec, key)

    return {"matfree Monte Carlo": monte_carlo, "matfree XTrace": leave_one_out}


def products_needed(estimate, exact: float, budgets: list[int]) -> tuple[dict, dict]:
    """Median relative error over ``KEYS`` keys at each budget; the first budget reaching each
    target (``None`` when none does)."""
    keys = jax.random.split(jax.random.key(11), KEYS)
    errors = {}
    for m in budgets:
        values = jax.jit(lambda ks, m=m: jax.lax.map(lambda k: estimate(k, m), ks))(keys)
        errors[m] = float(np.median(np.abs(np.asarray(values) - exact)) / abs(exact))
        if errors[m] <= min(TARGETS):
            break
    needed = {t: next((m for m in budgets if errors.get(m, np.inf) <= t), None) for t in TARGETS}
    return needed, errors


def accuracy_rows(steps: int, max_budget: int) -> list[Row]:
    print("\n2. Hessian products for a median relative error (MLP 16-32-32-10, CE, n = 128)")
    loss, params, exact = trained_problem(steps)
    budgets = [6 * 2**i for i in range(20) if 6 * 2**i <= max_budget]
    estimators = {**jaxprune_estimators(loss, params), **matfree_estimators(loss, params)}
    needed = {}
    for name, estimate in estimators.items():
        start = time.perf_counter()
        needed[name], errors = products_needed(estimate, exact, budgets)
        shown = ", ".join(f"{m}: {e:.3f}" for m, e in errors.items())
        print(
            f"   {name:20s} median rel. error by budget  {shown}  ({time.perf_counter() - start:.0f} s)"
        )

    def fmt(m):
        return f"> {budgets[-1]}" if m is None else str(m)

    print(f"\n   {'estimator':20s} {'products for 10%':>18s} {'products for 1%':>16s}")
    for name, by_target in needed.items():
        print(f"   {name:20s} {fmt(by_target[0.1]):>18s} {fmt(by_target[0.01]):>16s}")
    rows = []
    for target in TARGETS:
        ours = {
            name: needed[name][target]
            for name in ("Hutchinson", "Hutch++", "XTrace", "Deflated (Lanczos)")
        }
        peer = needed.get("matfree XTrace", {}).get(target)
        best = min((m for m in ours.values() if m is not None), default=None)
        ratio = None if best is None or peer is None else peer / best
        rows.append(
            Row(
                bench="trace",
                what=f"Hessian products for {target:.0%} median rel. error, MLP 16-32-32-10 CE",
                jaxprune=", ".join(f"{name} {fmt(m)}" for name, m in ours.items()),
                peer=(
                    ""
                    if "matfree XTrace" not in needed
                    else f"matfree Monte Carlo {fmt(needed['matfree Monte Carlo'][target])}, "
                    f"XTrace {fmt(peer)}"
                ),
                ratio=ratio,
                target="best jaxprune <= matfree XTrace" if ratio is not None else "",
                met=None if ratio is None else bool(ratio >= 1),
                note=f"median of {KEYS} keys, budgets doubling from 6 to {budgets[-1]}, "
                f"exact trace {exact:.4f} by jax.hessian, {steps} Adam steps",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = benchmark_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    repeats, steps, max_budget = (5, 50, 96) if args.quick else (20, 200, 3072)
    rows = per_probe_rows(repeats)
    rows += accuracy_rows(steps, max_budget)
    write_rows(args.json, rows)


if __name__ == "__main__":
    main()
