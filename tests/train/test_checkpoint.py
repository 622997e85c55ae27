"""Orbax checkpoints: bitwise round trips, atomicity under crashes, corruption, rotation,
readability by plain orbax, and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from jaxprune.data import load_dataset
from jaxprune.train import TrainConfig, build_model, train
from jaxprune.train import checkpoint as checkpoint_module
from jaxprune.train.checkpoint import (
    checkpoint_paths,
    clear_checkpoints,
    committed_steps,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from jaxprune.train.logging import MetricsLogger, read_metrics
from jaxprune.train.run_state import intact_checkpoint


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
        "features": jnp.arange(4096.0, dtype=jnp.float32).reshape(64, 64) * seed,  # 16 KiB
        "rng": jax.random.key(seed),
        "legacy_rng": jax.random.PRNGKey(seed + 7),
        "step": 10 + seed,
        "lr": 0.1 / (seed + 3),
        "warm": seed % 2 == 1,
        "data": {"epoch": seed, "index": np.int64(5), "order": np.arange(6, dtype=np.int32)},
        "method": (np.float32(0.25 + seed), None, [jnp.bfloat16(seed), np.uint8(seed)]),
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


def _array_files(directory: Path, step: int) -> list[Path]:
    """The data files of checkpoint ``step``'s OCDBT store, largest first (the largest holds
    ``features``: smaller arrays are stored inside the b-tree nodes)."""
    state_dir, _ = checkpoint_paths(directory, step)
    files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {state_dir}"
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _damage(path: Path, how: str) -> None:
    """Flip the middle byte of ``path`` (bit rot) or cut it in half (a partial write)."""
    content = bytearray(path.read_bytes())
    if how == "flip":
        content[len(content) // 2] ^= 0xFF
    else:
        content = content[: len(content) // 2]
    path.write_bytes(bytes(content))


def _tree_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_round_trip_is_bitwise_with_types(tmp_path):
    state = _realistic_state(1)
    save_checkpoint(tmp_path, 3, state, metadata={"run": "a", "ratio": 0.5})
    restored, metadata = restore_checkpoint(tmp_path, _realistic_state(0))
    _assert_bitwise_equal(restored, state)
    assert metadata == {"run": "a", "ratio": 0.5}
    adam = restored["opt_state"][0]
    assert type(adam) is optax.ScaleByAdamState and isinstance(adam.count, jax.Array)
    assert isinstance(restored["step"], int) and restored["step"] == 11
    assert restored["warm"] is True
    assert isinstance(restored["method"], tuple) and restored["method"][1] is None
    assert isinstance(restored["method"][2], list)
    assert isinstance(restored["data"]["index"], np.int64)
    assert jax.random.key_impl(restored["rng"]) == jax.random.key_impl(state["rng"])
    # The restored keys draw the same numbers as the saved ones.
    np.testing.assert_array_equal(
        jax.random.normal(restored["rng"], (4,)), jax.random.normal(state["rng"], (4,))
    )


def test_plain_orbax_reads_a_checkpoint_without_jaxprune(tmp_path):
    state = _realistic_state(2)
    save_checkpoint(tmp_path, 7, state, metadata={"run": "a"})
    # What a JAX user sees: the state as a nested dict with key data for typed keys.
    is_key = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)  # noqa: E731
    as_data = lambda x: jax.random.key_data(x) if is_key(x) else x  # noqa: E731
    expected = serialization.to_state_dict(jax.tree.map(as_data, state))
    with ocp.CheckpointManager(tmp_path) as manager:
        assert manager.all_steps() == [7]
        restored = manager.restore(7)
    assert restored.metadata["metadata"] == {"run": "a"} and restored.metadata["step"] == 7
    for got in (restored.state, ocp.PyTreeCheckpointer().restore(checkpoint_paths(tmp_path, 7)[0])):
        assert jax.tree.structure(got) == jax.tree.structure(expected)
        for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
            if isinstance(a, int | float) and isinstance(e, np.generic):  # NumPy scalar → Python
                assert a == e
                continue
            a, e = np.asarray(a), np.asarray(e)
            assert a.dtype == e.dtype and a.tobytes() == e.tobytes()


def test_latest_step_and_explicit_step(tmp_path):
    assert latest_step(tmp_path / "missing") is None
    for step in (5, 20, 10):
        save_checkpoint(tmp_path, step, _realistic_state(step), keep=5)
    assert latest_step(tmp_path) == 20 and committed_steps(tmp_path) == [5, 10, 20]
    restored, _ = restore_checkpoint(tmp_path, _realistic_state(0), step=10)
    _assert_bitwise_equal(restored, _realistic_state(10))
    with pytest.raises(FileNotFoundError, match="step 7"):
        restore_checkpoint(tmp_path, _realistic_state(0), step=7)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        restore_checkpoint(tmp_path / "empty", _realistic_state(0))
    # Saving an existing step replaces it.
    save_checkpoint(tmp_path, 10, _realistic_state(3), keep=5)
    _assert_bitwise_equal(
        restore_checkpoint(tmp_path, _realistic_state(0), 10)[0], _realistic_state(3)
    )


class _Crash(Exception):
    pass


def _crash_at_commit(monkeypatch):
    """A kill after every file of the new step is written, before orbax renames it into place."""
    real_rename = os.rename

    def crashing_rename(src, dst, *args, **kwargs):
        if ".orbax-checkpoint-tmp" in os.fspath(src):
            raise _Crash("simulated kill before the commit rename")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", crashing_rename)


def _crash_writing_arrays(monkeypatch):
    """A kill while orbax writes the new step's ``jax.Array`` leaves."""

    async def crashing_serialize(self, *args, **kwargs):
        raise _Crash("simulated kill while writing arrays")

    monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "serialize", crashing_serialize)


@pytest.mark.parametrize(
    "crash", [_crash_at_commit, _crash_writing_arrays], ids=["commit", "arrays"]
)
def test_crash_mid_write_keeps_previous_checkpoints(tmp_path, monkeypatch, crash):
    save_checkpoint(tmp_path, 10, _realistic_state(10))
    before = _tree_bytes(tmp_path / "10")
    crash(monkeypatch)
    with pytest.raises(_Crash):
        save_checkpoint(tmp_path, 20, _realistic_state(20), keep=1)
    monkeypatch.undo()
    assert committed_steps(tmp_path) == [10]
    assert _tree_bytes(tmp_path / "10") == before
    verify_checkpoint(tmp_path, 10)
    restored, _ = restore_checkpoint(tmp_path, _realistic_state(0))
    _assert_bitwise_equal(restored, _realistic_state(10))


def _corrupt_on_read_back(monkeypatch):
    """The re-saved step reads back with another hash (a damaged write)."""
    real = checkpoint_module._digest
    calls = []

    def digest(tree):
        calls.append(None)
        return real(tree) if len(calls) == 1 else "0" * 64  # the save's own digest is sound

    monkeypatch.setattr(checkpoint_module, "_digest", digest)


@pytest.mark.parametrize(
    "crash",
    [_crash_at_commit, _crash_writing_arrays, _corrupt_on_read_back],
    ids=["commit", "arrays", "verify"],
)
def test_a_failed_resave_of_a_step_keeps_the_original(tmp_path, monkeypatch, crash):
    save_checkpoint(tmp_path, 10, _realistic_state(10))
    save_checkpoint(tmp_path, 20, _realistic_state(20))
    before = _tree_bytes(tmp_path / "20")
    crash(monkeypatch)
    with pytest.raises((_Crash, ValueError)):
        save_checkpoint(tmp_path, 20, _realistic_state(3), keep=1)
    monkeypatch.undo()
    assert committed_steps(tmp_path) == [10, 20]  # nothing rotated, nothing deleted
    assert _tree_bytes(tmp_path / "20") == before
    verify_checkpoint(tmp_path, 20)
    _assert_bitwise_equal(
        restore_checkpoint(tmp_path, _realistic_state(0))[0], _realistic_state(20)
    )
    # A sound re-save replaces the step (and removes the failed one's staging directory) ...
    save_checkpoint(tmp_path, 20, _realistic_state(3), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10", "20"]
    # ... and a replacement killed between its renames is undone by the next save.
    _assert_bitwise_equal(restore_checkpoint(tmp_path, _realistic_state(0))[0], _realistic_state(3))
    (tmp_path / "20").rename(tmp_path / ".replaced-20")
    save_checkpoint(tmp_path, 30, _realistic_state(5), keep=3)
    assert committed_steps(tmp_path) == [10, 20, 30]
    _assert_bitwise_equal(
        restore_checkpoint(tmp_path, _realistic_state(0), 20)[0], _realistic_state(3)
    )
    clear_checkpoints(tmp_path)
    assert not list(tmp_path.iterdir())


def test_leftover_partial_temporary_directory_is_ignored(tmp_path):
    save_checkpoint(tmp_path, 10, _realistic_state(10))
    leftover = tmp_path / "20.orbax-checkpoint-tmp-1234"
    shutil.copytree(tmp_path / "10", leftover)  # a write killed half way: truncated data
    # The copy's own data files: orbax may still add files to step 10 after the save returns
    # (a CI run listed one there that the copy had not got).
    copied = [p for p in leftover.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert copied, f"no array data files under {leftover}"
    for data in copied:
        data.write_bytes(data.read_bytes()[:20])
    assert committed_steps(tmp_path) == [10]
    restored, _ = restore_checkpoint(tmp_path, _realistic_state(0))
    _assert_bitwise_equal(restored, _realistic_state(10))
    save_checkpoint(tmp_path, 20, _realistic_state(20))
    assert not leftover.exists() and committed_steps(tmp_path) == [10, 20]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_array_file_is_detected_and_skipped(tmp_path, damage, capsys):
    save_checkpoint(tmp_path, 10, _realistic_state(10))
    save_checkpoint(tmp_path, 20, _realistic_state(20), metadata={"step": 20})
    _damage(_array_files(tmp_path, 20)[0], damage)
    with pytest.raises(ValueError, match=r"checkpoint .*20 is (corrupt|unreadable or partial)"):
        verify_checkpoint(tmp_path, 20)
    with pytest.raises(ValueError, match=r"checkpoint .*20 is (corrupt|unreadable or partial)"):
        restore_checkpoint(tmp_path, _realistic_state(0))
    found = intact_checkpoint(tmp_path)
    assert found.step == 10 and len(found.skipped) == 1
    assert found.skipped[0].startswith("step 20: checkpoint ") and "\n" not in found.skipped[0]
    _assert_bitwise_equal(
        restore_checkpoint(tmp_path, _realistic_state(0), 10)[0], _realistic_state(10)
    )


def test_rotation_keeps_the_last_good_checkpoint_when_the_new_one_fails_verification(
    tmp_path, monkeypatch
):
    save_checkpoint(tmp_path, 10, _realistic_state(10), keep=1)
    real_save = ocp.CheckpointManager.save

    def save_then_corrupt(self, step, *args, **kwargs):  # a disk that damages what it stores
        saved = real_save(self, step, *args, **kwargs)
        _damage(_array_files(tmp_path, step)[0], "flip")
        return saved

    monkeypatch.setattr(ocp.CheckpointManager, "save", save_then_corrupt)
    with pytest.raises(ValueError, match=r"checkpoint .*20 is corrupt"):
        save_checkpoint(tmp_path, 20, _realistic_state(20), keep=1)
    monkeypatch.undo()
    assert committed_steps(tmp_path) == [10, 20]
    _assert_bitwise_equal(
        restore_checkpoint(tmp_path, _realistic_state(0), 10)[0], _realistic_state(10)
    )


def test_old_format_directory_is_refused_with_start_fresh(tmp_path):
    (tmp_path / "checkpoint_10.msgpack").write_bytes(b"\x80")
    (tmp_path / "checkpoint_10.json").write_text("{}")
    assert committed_steps(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="format before orbax"):
        restore_checkpoint(tmp_path, _realistic_state(0))
    with pytest.raises(ValueError, match=rf"{tmp_path}.*before orbax.*--fresh"):
        intact_checkpoint(tmp_path)
    save_checkpoint(tmp_path, 20, _realistic_state(20))
    clear_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_engine_resume_refuses_old_format_checkpoints(tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "checkpoint_2.msgpack").write_bytes(b"\x80")
    (directory / "checkpoint_2.json").write_text("{}")
    splits = load_dataset("digits")
    model = build_model("mlp", num_outputs=10, input_shape=(64,), preset="8")
    config = TrainConfig(num_steps=4, batch_size=16, log_every=2, checkpoint_every=2)
    config = dataclasses.replace(config, progress=False)
    with pytest.raises(ValueError, match=rf"{directory} holds .*before orbax.*--fresh"):
        train(model, splits, optax.sgd(0.1), config, run_dir=tmp_path)


def test_mismatched_target_names_leaf(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": jnp.zeros((2, 3)), "k": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"\['w'\].*shape \(2, 3\).*shape \(3, 2\)"):
        restore_checkpoint(tmp_path, {"w": jnp.zeros((3, 2)), "k": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"\['w'\].*float32.*float16"):
        restore_checkpoint(tmp_path, {"w": jnp.zeros((2, 3), jnp.float16), "k": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"does not fit the target.*\['v'\].*\['w'\]"):
        restore_checkpoint(tmp_path, {"v": jnp.zeros((2, 3)), "k": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"does not fit the target.*\[\].*\['x'\]"):  # dropped
        save_checkpoint(tmp_path, 2, {"w": jnp.zeros((2, 3)), "x": 1.0})
        restore_checkpoint(tmp_path, {"w": jnp.zeros((2, 3))})


def test_keep_rotation(tmp_path):
    for step in range(0, 60, 10):
        save_checkpoint(tmp_path, step, {"x": jnp.float32(step)}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["40", "50"]
    _, metadata_dir = checkpoint_paths(tmp_path, 50)
    document = json.loads((metadata_dir / "metadata").read_text())
    assert document["step"] == 50 and len(document["sha256"]) == 64


@jax.tree_util.register_pytree_node_class
class _Unserializable:
    """A pytree node that ``flax.serialization`` does not know."""

    def __init__(self, value):
        self.value = value

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"step": -1}, ValueError),
        ({"keep": 0}, ValueError),
        ({"metadata": {"f": object()}}, TypeError),
        ({"metadata": {"f": float("nan")}}, TypeError),
        ({"metadata": [1]}, TypeError),
        ({"state": {"name": "a string"}}, TypeError),
        ({"state": {"node": _Unserializable(jnp.zeros(2))}}, TypeError),
    ],
)
def test_save_rejects_bad_arguments(tmp_path, kwargs, error):
    args = {"step": 1, "state": {"x": jnp.zeros(2)}, **kwargs}
    step, state = args.pop("step"), args.pop("state")
    with pytest.raises(error, match=next(iter(kwargs))):
        save_checkpoint(tmp_path, step, state, **args)
    assert committed_steps(tmp_path) == []


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
