"""Checkpoints: bitwise round trips, atomicity under crashes, corruption, rotation, resume."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune.train.checkpoint import (
    checkpoint_paths,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from jaxprune.train.logging import MetricsLogger, read_metrics


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.tanh(nn.Dense(8)(x)))


def _realistic_state(seed: int) -> dict:
    params = _MLP().init(jax.random.key(seed), jnp.ones((1, 3)))
    tx = optax.adamw(1e-2)
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (seed + 1)), params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-trivial mu, nu, count
    mask = jax.tree.map(lambda p: jnp.arange(p.size).reshape(p.shape) % 3 != 0, params)
    return {
        "params": params,
        "opt_state": opt_state,
        "mask": mask,
        "rng": jax.random.key(seed),
        "legacy_rng": jax.random.PRNGKey(seed + 7),
        "step": 10 + seed,
        "lr": 0.1 / (seed + 3),
        "data": {"epoch": seed, "index": np.int64(5), "order": np.arange(6, dtype=np.int32)},
        "method": (np.float32(0.25 + seed), None),
    }


def _assert_bitwise_equal(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert type(a) is type(e) or (isinstance(a, jax.Array) and isinstance(e, jax.Array))
        if isinstance(e, jax.Array) and jnp.issubdtype(e.dtype, jax.dtypes.prng_key):
            assert a.dtype == e.dtype
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape
        assert a.tobytes() == e.tobytes()


def test_round_trip_is_bitwise_with_types(tmp_path):
    state = _realistic_state(1)
    save_checkpoint(tmp_path, 3, state, metadata={"run": "a", "ratio": 0.5})
    restored, metadata = restore_checkpoint(tmp_path, _realistic_state(0))
    _assert_bitwise_equal(restored, state)
    assert metadata == {"run": "a", "ratio": 0.5}
    adam = restored["opt_state"][0]
    assert type(adam) is optax.ScaleByAdamState and isinstance(adam.count, jax.Array)
    assert isinstance(restored["step"], int) and restored["step"] == 11
    assert isinstance(restored["method"], tuple) and restored["method"][1] is None
    assert isinstance(restored["data"]["index"], np.int64)
    assert jax.random.key_impl(restored["rng"]) == jax.random.key_impl(state["rng"])
    # The restored keys draw the same numbers as the saved ones.
    np.testing.assert_array_equal(
        jax.random.normal(restored["rng"], (4,)), jax.random.normal(state["rng"], (4,))
    )


def test_latest_step_and_explicit_step(tmp_path):
    assert latest_step(tmp_path / "missing") is None
    for step in (5, 20, 10):
        save_checkpoint(tmp_path, step, _realistic_state(step), keep=5)
    assert latest_step(tmp_path) == 20
    restored, _ = restore_checkpoint(tmp_path, _realistic_state(0), step=10)
    _assert_bitwise_equal(restored, _realistic_state(10))
    with pytest.raises(FileNotFoundError, match="step 7"):
        restore_checkpoint(tmp_path, _realistic_state(0), step=7)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        restore_checkpoint(tmp_path / "empty", _realistic_state(0))


@pytest.mark.parametrize("failing_call", [1, 2], ids=["data-replace", "sidecar-replace"])
def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch, failing_call):
    save_checkpoint(tmp_path, 10, _realistic_state(10))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace, calls = os.replace, []

    def crashing_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, 20, _realistic_state(20))
    monkeypatch.undo()
    assert latest_step(tmp_path) == 10
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content
    restored, _ = restore_checkpoint(tmp_path, _realistic_state(0))
    _assert_bitwise_equal(restored, _realistic_state(10))


def test_leftover_truncated_temp_file_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 10, _realistic_state(10))
    data_path, _ = checkpoint_paths(tmp_path, 10)
    leftover = tmp_path / ".tmp-checkpoint_checkpoint_20.msgpack.abc123"
    leftover.write_bytes(data_path.read_bytes()[:50])  # a write killed half way
    assert latest_step(tmp_path) == 10
    restored, _ = restore_checkpoint(tmp_path, _realistic_state(0))
    _assert_bitwise_equal(restored, _realistic_state(10))
    save_checkpoint(tmp_path, 20, _realistic_state(20))
    assert not leftover.exists() and latest_step(tmp_path) == 20


def test_corrupt_or_partial_file_is_detected(tmp_path):
    save_checkpoint(tmp_path, 10, _realistic_state(10))
    data_path, _ = checkpoint_paths(tmp_path, 10)
    content = bytearray(data_path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    data_path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"checkpoint_10\.msgpack is corrupt or partial"):
        restore_checkpoint(tmp_path, _realistic_state(0))
    data_path.write_bytes(bytes(content[:100]))
    with pytest.raises(ValueError, match=r"checkpoint_10\.msgpack is corrupt or partial"):
        restore_checkpoint(tmp_path, _realistic_state(0))


def test_mismatched_target_names_leaf(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": jnp.zeros((2, 3)), "k": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"\['w'\].*shape \(2, 3\).*shape \(3, 2\)"):
        restore_checkpoint(tmp_path, {"w": jnp.zeros((3, 2)), "k": jax.random.key(0)})
    with pytest.raises(ValueError, match="does not fit the target"):
        restore_checkpoint(tmp_path, {"v": jnp.zeros((2, 3)), "k": jax.random.key(0)})


def test_keep_rotation(tmp_path):
    for step in range(0, 60, 10):
        save_checkpoint(tmp_path, step, {"x": jnp.float32(step)}, keep=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "checkpoint_40.json",
        "checkpoint_40.msgpack",
        "checkpoint_50.json",
        "checkpoint_50.msgpack",
    ]
    sidecar = json.loads(checkpoint_paths(tmp_path, 50)[1].read_text())
    assert sidecar["step"] == 50 and sidecar["file"] == "checkpoint_50.msgpack"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"step": -1}, ValueError),
        ({"keep": 0}, ValueError),
        ({"metadata": {"f": object()}}, TypeError),
        ({"metadata": [1]}, TypeError),
    ],
)
def test_save_rejects_bad_arguments(tmp_path, kwargs, error):
    args = {"step": 1, **kwargs}
    step = args.pop("step")
    with pytest.raises(error, match=next(iter(kwargs))):
        save_checkpoint(tmp_path, step, {"x": jnp.zeros(2)}, **args)


# --- kill and resume ------------------------------------------------------------------------

_N, _BATCH, _TOTAL, _EVERY = 48, 8, 40, 10


class _Killed(Exception):
    pass


def _problem():
    x = jax.random.normal(jax.random.key(1), (_N, 3))
    y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5]]))
    return x, y


def _init_state(tx):
    params = _MLP().init(jax.random.key(0), jnp.ones((1, 3)))
    return {
        "params": params,
        "opt_state": tx.init(params),
        "rng": jax.random.key(42),
        "data": {"epoch": 0, "index": 0},
    }


def _batch_indices(data_position: dict) -> np.ndarray:
    """The batch at a data position: epoch-seeded shuffles, so the order is replayable."""
    order = np.random.default_rng(data_position["epoch"]).permutation(_N)
    start = data_position["index"] * _BATCH
    return order[start : start + _BATCH]


def _advance(data_position: dict) -> dict:
    index = data_position["index"] + 1
    if index == _N // _BATCH:
        return {"epoch": data_position["epoch"] + 1, "index": 0}
    return {"epoch": data_position["epoch"], "index": index}


def _train(tmp_path, run: str, tx, *, kill_after: int | None = None, resume: bool = False):
    x, y = _problem()
    ckpt_dir, run_dir = tmp_path / run / "ckpt", tmp_path / run

    def loss_fn(params, xb, yb, key):  # noisy inputs: the PRNG key matters
        noisy = xb + 0.05 * jax.random.normal(key, xb.shape)
        return jnp.mean((_MLP().apply(params, noisy) - yb) ** 2)

    @jax.jit
    def train_step(params, opt_state, xb, yb, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state, start = _init_state(tx), 0
    if resume:
        start = latest_step(ckpt_dir)
        state, _ = restore_checkpoint(ckpt_dir, state, step=start)
    with MetricsLogger(run_dir, resume_step=start if resume else None) as logger:
        for step in range(start, _TOTAL):
            rng, key = jax.random.split(state["rng"])
            idx = _batch_indices(state["data"])
            params, opt_state, loss = train_step(
                state["params"], state["opt_state"], x[idx], y[idx], key
            )
            data = _advance(state["data"])
            state = {"params": params, "opt_state": opt_state, "rng": rng, "data": data}
            logger.log(step + 1, {"loss": loss, "epoch": state["data"]["epoch"]})
            if (step + 1) % _EVERY == 0:
                save_checkpoint(ckpt_dir, step + 1, state, metadata={"run": run})
            if kill_after is not None and step + 1 == kill_after:
                raise _Killed
    return state, read_metrics(run_dir)


@pytest.mark.parametrize(
    "make_tx",
    [lambda: optax.sgd(0.1, momentum=0.9), lambda: optax.chain(optax.clip(1.0), optax.adam(1e-2))],
    ids=["sgd", "adam"],
)
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, make_tx):
    tx = make_tx()
    full_state, full_metrics = _train(tmp_path, "full", tx)
    with pytest.raises(_Killed):
        _train(tmp_path, "resumed", tx, kill_after=25)
    assert latest_step(tmp_path / "resumed" / "ckpt") == 20
    assert [row["step"] for row in read_metrics(tmp_path / "resumed")] == list(range(1, 26))
    resumed_state, resumed_metrics = _train(tmp_path, "resumed", tx, resume=True)
    _assert_bitwise_equal(resumed_state, full_state)
    assert resumed_metrics == full_metrics
    assert [row["step"] for row in resumed_metrics] == list(range(1, _TOTAL + 1))
