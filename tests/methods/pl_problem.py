"""The tiny problem of the PL-gating tests: a 3-4-3-2 tanh MLP (7 neuron groups, 2 layers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxprune.methods.pl_gating import init_gating
from jaxprune.models import MLP, mlp
from jaxprune.spectra import SplitLoss

MODEL = MLP(hidden=(4, 3), num_outputs=2, activation=jnp.tanh)  # 7 neuron groups, 2 layers


def apply_fn(params, x):
    return MODEL.apply(params, x)


def loss_fn(params, batch):
    return _squared_loss(apply_fn(params, batch[0]), batch)


def problem(dtype=jnp.float32, n=6):
    """``(params, group_ids, layout, x, y)`` of ``n`` random regression examples."""
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 3), dtype)
    y = jax.random.normal(jax.random.PRNGKey(1), (n, 2), dtype)
    params = MODEL.init(jax.random.PRNGKey(2), x)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    ids, layout = mlp.group_ids(params, MODEL)
    return params, ids, layout, x, y


def random_v(dtype=jnp.float32, hidden=5):
    """Gating parameters away from the symmetric initialization (``w2 = 0``)."""
    v = init_gating(jax.random.PRNGKey(3), hidden, dtype=dtype)
    w2 = jax.random.normal(jax.random.PRNGKey(4), (hidden,), dtype)
    b1 = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (hidden,), dtype)
    return v._replace(w2=w2, b1=b1)


def _squared_loss(outputs, batch):
    return 0.5 * jnp.mean(jnp.sum((outputs - batch[1]) ** 2, axis=-1))


SPLIT_LOSS = SplitLoss(lambda params, batch: apply_fn(params, batch[0]), _squared_loss)
"""``loss_fn`` split at the model outputs (for ``hessian="gauss_newton"``)."""
