"""The output-Hessian trace of Chen et al. (2023), eq. 36, on piecewise-linear vs smooth networks.

Prints, for the demo's ReLU MLP after 50 Adam steps, the same MLP with tanh and VGG-16-BN-tiny
(eval-mode BatchNorm, max-pooling): the exact output-Hessian diagonal at sampled coordinates,
Hutchinson estimates of Tr(H_f) and of the loss-Hessian trace (256 Rademacher probes, mean ±
standard error) and the per-probe spread.  Reading PL-2 in docs/readings.md.

Run: ``scripts/with-env python experiments/pl_zero_trace.py`` (about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.data import load_dataset
from jaxprune.models import MLP, vgg
from jaxprune.spectra import hessian_trace, output_hessian_trace, sample_output_hessian_diagonal

PROBES = 256


def cross_entropy(apply, params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()


def report(name, apply, params, x, y):
    start = time.perf_counter()
    sample = sample_output_hessian_diagonal(apply, params, x, jax.random.key(1))
    outputs = output_hessian_trace(
        apply, params, x, jax.random.key(2), num_probes=PROBES, distribution="rademacher"
    )
    loss = hessian_trace(
        lambda p: cross_entropy(apply, p, x, y),
        params,
        jax.random.key(3),
        num_probes=PROBES,
        distribution="rademacher",
    )
    print(
        f"{name}: max |H_ii| over {sample.entries.size} sampled entries "
        f"{float(np.abs(sample.entries).max()):.3g} (column norms up to "
        f"{float(sample.column_norms.max()):.3g}); Tr(H_f) {float(outputs.estimate):.4g} ± "
        f"{float(outputs.stderr):.3g} (per-probe sd {float(np.std(outputs.samples, ddof=1)):.3g}); "
        f"Tr(loss Hessian) {float(loss.estimate):.4g} ± {float(loss.stderr):.3g} "
        f"[{time.perf_counter() - start:.1f} s]",
        flush=True,
    )


def trained_mlp(x, y, steps=50):
    model = MLP(hidden=(256, 256), num_outputs=10)
    params = model.init(jax.random.key(0), x[:1])
    optimizer = optax.adam(1e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        grads = jax.grad(lambda p: cross_entropy(model.apply, p, xb, yb))(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    order = np.random.default_rng(0).permutation(len(x))
    for t in range(steps):
        rows = order[(t * 64) % (len(x) - 64) :][:64]
        params, state = step(params, state, x[rows], y[rows])
    return model, params


def main():
    digits = load_dataset("digits")
    x, y = jnp.asarray(digits.train["x"]), jnp.asarray(digits.train["y"])
    model, params = trained_mlp(x, y)
    report(
        "demo MLP 64-256-256-10 (ReLU), 50 Adam steps, n=32", model.apply, params, x[:32], y[:32]
    )
    tanh = MLP(hidden=(256, 256), num_outputs=10, activation=jnp.tanh)
    report(
        "the same MLP with tanh, initialization, n=32",
        tanh.apply,
        tanh.init(jax.random.key(0), x[:1]),
        x[:32],
        y[:32],
    )
    images = load_dataset("digits32")
    xi, yi = jnp.asarray(images.train["x"][:16]), jnp.asarray(images.train["y"][:16])
    net = vgg.VGG(vgg.from_preset("vgg16-bn-tiny", num_classes=10))
    variables = net.init(jax.random.key(0), xi[:1])
    stats = {k: v for k, v in variables.items() if k != "params"}

    def apply(p, inputs):
        return net.apply({"params": p, **stats}, inputs)

    report("VGG-16-BN-tiny (eval-mode BN, max-pool), initialization, n=16", apply,
           variables["params"], xi, yi)  # fmt: skip


if __name__ == "__main__":
    main()
