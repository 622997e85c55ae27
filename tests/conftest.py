"""Shared fixtures: tiny models and inputs, in float32 and float64.

One test run shares one persistent XLA compilation cache among its workers (and the
command-line runs they start): the same programs (training steps, events, kernels) are compiled
once per run instead of once per test.  The cache is a fresh temporary directory made by the
controlling process and removed when the run ends, so runs stay hermetic: nothing compiled by an
earlier run, or by another JAX build, is read back.  Set ``JAXPRUNE_COMPILATION_CACHE`` to a
directory to keep a cache across local runs (or to ``off``).

A worker runs about a thousand tests, and every program XLA:CPU compiles (or loads from the
cache) keeps a few memory mappings (5 for a small jit, about 50 for a Hessian) until its jit
cache is cleared.  Linux caps a process at ``vm.max_map_count`` mappings (65,530 by default);
near it, XLA fails late in the run (seen: a segmentation fault compiling or reading back a
program, an abort writing one to the cache).  After each test module, a worker past a quarter
of the cap clears JAX's caches (:func:`jaxprune.compile_cache.release_compiled_programs`): one
module, the VGG smoke preset's, adds about 30,000.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.compile_cache import (
    ENVIRONMENT,
    enable_compilation_cache,
    release_compiled_programs,
)
from jaxprune.models import MLP, SmallCNN

# The controller (or a run without workers) makes the run's cache; xdist workers inherit it.
_RUN_CACHE = None
if ENVIRONMENT not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    _RUN_CACHE = tempfile.mkdtemp(prefix="jaxprune-tests-xla-")
    os.environ[ENVIRONMENT] = _RUN_CACHE
enable_compilation_cache()


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs_between_modules():
    """After each test module, clear JAX's compiled programs if the worker holds more than a
    quarter of ``vm.max_map_count`` mappings (see the module docstring)."""
    yield
    release_compiled_programs(fraction=0.25)


def pytest_unconfigure(config):
    if _RUN_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)


class HeadsModel(nn.Module):
    """Attention-like block: DenseGeneral projections to (heads, head_dim), a per-token
    mixing over positions, and an output projection from (heads, head_dim)."""

    heads: int = 2
    head_dim: int = 3
    features: int = 4

    @nn.compact
    def __call__(self, x):  # x: (n, T, features)
        q = nn.DenseGeneral((self.heads, self.head_dim), name="query")(x)
        v = nn.DenseGeneral((self.heads, self.head_dim), name="value")(x)
        weights = jax.nn.softmax(jnp.einsum("nthd,nshd->nhts", q, q), axis=-1)
        mixed = jnp.einsum("nhts,nshd->nthd", weights, jnp.tanh(v))
        out = nn.DenseGeneral(self.features, axis=(-2, -1), name="out")(mixed)
        return nn.Dense(3)(out.mean(axis=1))


def table(cases):
    """``pytest.mark.parametrize`` over bad-input cases ``(id, call, error, match)``."""
    return pytest.mark.parametrize(
        "call, error, match", [pytest.param(*case[1:], id=case[0]) for case in cases]
    )


def assert_raises(call, error, match):
    """``call()`` raises ``error`` with a message matching the regular expression ``match``."""
    with pytest.raises(error, match=match):
        call()


def tiny_mlp_problem(rng):
    """A 3-6-2 tanh MLP regression problem: 38 parameters (NumPy float64), x (5, 3), y (5, 2),
    drawn from the NumPy generator ``rng`` in that order."""
    params = {
        "w1": 0.9 * rng.normal(size=(3, 6)),
        "b1": 0.3 * rng.normal(size=6),
        "w2": 0.9 * rng.normal(size=(6, 2)),
        "b2": 0.3 * rng.normal(size=2),
    }
    return params, rng.normal(size=(5, 3)), rng.normal(size=(5, 2))


def tiny_mlp_apply(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def explicit_hessian(loss_fn, params):
    """The full Hessian of ``loss_fn`` at ``params`` by ``jax.hessian`` on the flat vector."""
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f))))(flat))


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run a test in float32 and in float64 (64-bit mode switched on for the latter)."""
    if request.param == "float64":
        with jax.enable_x64(True):
            yield jnp.float64
    else:
        yield jnp.float32


def make_mlp(dtype, n=6):
    model = MLP(hidden=(7, 5), num_outputs=3, activation=jnp.tanh)
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 4), dtype)
    params = _cast(model.init(jax.random.PRNGKey(1), x), dtype)
    return model, params, x


def make_cnn(dtype, n=5):
    model = SmallCNN(channels=(3, 4), num_outputs=2)
    x = jax.random.normal(jax.random.PRNGKey(2), (n, 6, 6, 2), dtype)
    params = _cast(model.init(jax.random.PRNGKey(3), x), dtype)
    return model, params, x


def make_heads(dtype, n=4):
    model = HeadsModel()
    x = jax.random.normal(jax.random.PRNGKey(4), (n, 3, 4), dtype)
    params = _cast(model.init(jax.random.PRNGKey(5), x), dtype)
    return model, params, x


def head_group_ids(params):
    """Head h = its query/value columns (and biases) and its rows of the output kernel."""
    ids = jax.tree_util.tree_map(lambda a: np.full((1,) * a.ndim, -1, np.int32), params)
    p = ids["params"]
    heads = np.arange(2, dtype=np.int32)
    for name in ("query", "value"):
        p[name]["kernel"] = heads[None, :, None]
        p[name]["bias"] = heads[:, None]
    p["out"]["kernel"] = heads[:, None, None]
    return ids


def brute_force_group_kernels(apply_fn, params, x1, x2, group_ids=None):
    """Reference: full Jacobians by jax.jacobian, masked per group and contracted in NumPy."""
    j1 = jax.tree_util.tree_leaves(jax.jacobian(lambda p: apply_fn(p, x1))(params))
    j2 = jax.tree_util.tree_leaves(jax.jacobian(lambda p: apply_fn(p, x2))(params))
    leaves = jax.tree_util.tree_leaves(params)
    n1, n2 = x1.shape[0], x2.shape[0]
    k = int(np.prod(np.shape(apply_fn(params, x1))[1:]))
    if group_ids is None:
        id_leaves = [np.zeros(np.shape(w), np.int32) for w in leaves]
    else:
        id_leaves = [
            np.broadcast_to(g, np.shape(w))
            for g, w in zip(jax.tree_util.tree_leaves(group_ids), leaves)
        ]
    p = 1 + max(int(g.max()) for g in id_leaves)
    kernels = np.zeros((p, n1, n2))
    for a, b, ids, w in zip(j1, j2, id_leaves, leaves):
        a = np.asarray(a, np.float64).reshape(n1, -1, np.size(w))
        b = np.asarray(b, np.float64).reshape(n2, -1, np.size(w))
        flat = ids.reshape(-1)
        for g in range(p):
            cols = flat == g
            kernels[g] += np.einsum("xcw,ycw->xy", a[:, :, cols], b[:, :, cols])
    kernels /= k
    return kernels if group_ids is not None else kernels[0]


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """``(out_dir, result)`` of ``EXPERIMENT.run(SMOKE, out_dir)`` of the experiment test module
    that asks for it, run once per module."""
    experiment, settings = request.module.EXPERIMENT, request.module.SMOKE
    out = tmp_path_factory.mktemp(experiment.name)
    return out, experiment.run(settings, out, False)
