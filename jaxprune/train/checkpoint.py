"""Atomic, hash-verified checkpoints of whole training states (single host).

A checkpoint is the full training-state pytree: parameters, optimizer state (optax ``NamedTuple``
states included), masks, method state, data position, PRNG keys (typed ``jax.random.key`` arrays
and legacy ``uint32`` ``PRNGKey`` arrays) and plain Python numbers.  Step ``s`` in ``directory``
is two files:

- ``checkpoint_<s>.msgpack``: ``flax.serialization.msgpack_serialize(to_state_dict(state))`` with
  typed PRNG keys stored as their raw ``uint32`` key data;
- ``checkpoint_<s>.json``: a small sidecar ``{"format", "step", "time", "metadata", "file",
  "bytes", "sha256"}``.  The sidecar is the commit marker: a step exists only once its sidecar
  does, and :func:`restore_checkpoint` refuses data whose SHA-256 differs from the sidecar's.

Writes are atomic: each file is written to a temporary file in the same directory, flushed and
``fsync``-ed, then moved into place with ``os.replace`` (the data file first, the sidecar last),
and the directory is ``fsync``-ed.  A write killed at any point leaves every earlier checkpoint
intact and :func:`latest_step` unchanged; its leftover ``.tmp-*`` file is ignored (and removed by
the next :func:`save_checkpoint`).  Only the newest ``keep`` checkpoints are kept, and older ones
are deleted only after the new one has been read back and verified.  :func:`verify_checkpoint`
checks one step without restoring it (a resume falls back past corrupt ones).

Restoring goes into the structure of a ``target`` pytree (e.g. freshly initialized state), so
optax ``NamedTuple`` states, tuples and typed PRNG keys come back with their types; leaves come
back as the kind of their target leaf (``jax.Array``, ``np.ndarray`` or Python scalar), bitwise
equal to what was saved.  Shapes and dtypes must match the target's.

Multi-host caveat: this module assumes one writer.  On several hosts only process 0 saves
(``if jax.process_index() == 0: save_checkpoint(...)``), after gathering any array that is not
fully addressable (``jax.experimental.multihost_utils.process_allgather``); every process
restores from a shared file system, and restored arrays live on the target leaf's sharding only
when that sharding is addressable from the process.  For sharded, asynchronous or multi-host
writes use orbax.

References:
  Flax serialization (``flax.serialization.to_state_dict`` / ``msgpack_serialize``).
  Orbax ``CheckpointManager`` (atomic rename of a temporary directory, ``max_to_keep``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from jaxprune._validation import check_int, check_positive_int
from jaxprune.typing import PyTree

__all__ = [
    "checkpoint_paths",
    "committed_steps",
    "latest_step",
    "restore_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]

FORMAT = "jaxprune-checkpoint-v1"
_SIDECAR = re.compile(r"^checkpoint_(\d+)\.json$")
_TMP_PREFIX = ".tmp-checkpoint_"


def checkpoint_paths(directory: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """The ``(data, sidecar)`` paths of checkpoint ``step`` in ``directory``."""
    directory = Path(directory)
    return directory / f"checkpoint_{step}.msgpack", directory / f"checkpoint_{step}.json"


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _encode_leaf(leaf: Any) -> Any:
    """Typed PRNG key arrays → their ``uint32`` key data; arrays → host NumPy arrays."""
    if _is_typed_key(leaf):
        return np.asarray(jax.random.key_data(leaf))
    if isinstance(leaf, jax.Array):
        return np.asarray(leaf)
    return leaf


def _path_name(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _decode_leaf(path: tuple, target: Any, value: Any, source: Path) -> Any:
    """Restore one leaf as the kind of its ``target`` leaf, checking shape and dtype."""
    if _is_typed_key(target):
        expected = jax.random.key_data(target)
        _check_array(path, expected.shape, expected.dtype, value, source)
        key = jax.random.wrap_key_data(
            jnp.asarray(value, dtype=expected.dtype), impl=jax.random.key_impl(target)
        )
        return jax.device_put(key, target.sharding)
    if isinstance(target, jax.Array):
        _check_array(path, target.shape, target.dtype, value, source)
        return jax.device_put(np.asarray(value), target.sharding)
    if isinstance(target, np.ndarray | np.generic):
        _check_array(path, target.shape, target.dtype, value, source)
        value = np.asarray(value)
        return value[()] if isinstance(target, np.generic) else value
    return value


def _check_array(path: tuple, shape: tuple, dtype: Any, value: Any, source: Path) -> None:
    value = np.asarray(value)
    if value.shape != tuple(shape) or value.dtype != np.dtype(dtype):
        raise ValueError(
            f"checkpoint {source}: leaf {_path_name(path)} has shape {value.shape} and dtype "
            f"{value.dtype}, but the target has shape {tuple(shape)} and dtype {np.dtype(dtype)}"
        )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsync-ed temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def committed_steps(directory: str | os.PathLike) -> list[int]:
    """The committed steps in ``directory``, oldest first (``[]`` if none or no directory)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = (_SIDECAR.match(p.name) for p in directory.iterdir())
    return sorted(int(m.group(1)) for m in steps if m is not None)


def verify_checkpoint(directory: str | os.PathLike, step: int) -> dict:
    """Check that checkpoint ``step`` is intact (sidecar readable, data present with the
    sidecar's size and SHA-256); return its metadata.

    Raises:
      ValueError: naming the file, when it is missing, unreadable, partial or corrupt.
    """
    data_path, sidecar_path = checkpoint_paths(directory, step)
    return _read_verified(data_path, sidecar_path)[1]["metadata"]


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest committed step in ``directory`` (``None`` if there is none or no directory).

    Only steps whose sidecar exists count, so an interrupted write is never reported."""
    steps = committed_steps(directory)
    return steps[-1] if steps else None


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    state: PyTree,
    *,
    metadata: dict | None = None,
    keep: int = 3,
) -> Path:
    """Atomically write ``state`` as checkpoint ``step`` and keep only the newest ``keep``.

    Args:
      directory: checkpoint directory (created if missing).
      step: non-negative training step; saving an existing step replaces it.
      state: any pytree of arrays, typed PRNG keys, NumPy values, Python numbers, ``None``,
        dicts, lists, tuples, NamedTuples and Flax structs.
      metadata: JSON-serializable dict stored in the sidecar and returned by restore.
      keep: number of newest checkpoints to keep (≥ 1).

    Returns:
      The path of the data file.  Call on process 0 only (see the module docstring).
    """
    step = check_int(step, "step", minimum=0)
    keep = check_positive_int(keep, "keep")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for leftover in directory.glob(f"{_TMP_PREFIX}*"):
        leftover.unlink(missing_ok=True)

    host_state = jax.tree.map(_encode_leaf, state)
    data = serialization.msgpack_serialize(serialization.to_state_dict(host_state))
    data_path, sidecar_path = checkpoint_paths(directory, step)
    sidecar = {
        "format": FORMAT,
        "step": step,
        "time": time.time(),
        "metadata": metadata or {},
        "file": data_path.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    try:
        sidecar_bytes = json.dumps(sidecar, indent=1, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata must be JSON-serializable, got {metadata!r}: {err}") from err

    sidecar_path.unlink(missing_ok=True)  # re-saving a step: uncommit it before touching data
    _write_atomic(data_path, data)
    _write_atomic(sidecar_path, sidecar_bytes)
    _fsync_directory(directory)
    _read_verified(data_path, sidecar_path)  # read back: older ones go only once this is sound

    for old in committed_steps(directory)[:-keep]:
        old_data, old_sidecar = checkpoint_paths(directory, old)
        old_sidecar.unlink(missing_ok=True)
        old_data.unlink(missing_ok=True)
    return data_path


def _read_verified(data_path: Path, sidecar_path: Path) -> tuple[bytes, dict]:
    """Read the data file and its sidecar; raise ``ValueError`` naming the file if corrupt."""
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint sidecar {sidecar_path} is unreadable: {err}") from err
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise ValueError(f"checkpoint sidecar {sidecar_path} is not a {FORMAT} sidecar")
    if not data_path.is_file():
        raise ValueError(f"checkpoint file {data_path} is missing (its sidecar exists)")
    data = data_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != sidecar["bytes"] or digest != sidecar["sha256"]:
        raise ValueError(
            f"checkpoint file {data_path} is corrupt or partial: {len(data)} bytes with SHA-256 "
            f"{digest}, expected {sidecar['bytes']} bytes with SHA-256 {sidecar['sha256']}"
        )
    return data, sidecar


def restore_checkpoint(
    directory: str | os.PathLike, target: PyTree, step: int | None = None
) -> tuple[PyTree, dict]:
    """Restore checkpoint ``step`` (default: the latest) into the structure of ``target``.

    Args:
      directory: checkpoint directory.
      target: a pytree with the saved state's structure, shapes and dtypes (e.g. the freshly
        initialized state); typed PRNG key leaves must be keys of the saved implementation.
      step: the step to restore, or ``None`` for :func:`latest_step`.

    Returns:
      ``(state, metadata)``: the state with ``target``'s structure and leaf kinds, and the
      metadata dict passed to :func:`save_checkpoint`.

    Raises:
      FileNotFoundError: no (such) committed checkpoint.
      ValueError: the file is corrupt, partial or does not fit ``target``.
    """
    directory = Path(directory)
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in directory {directory}")
    data_path, sidecar_path = checkpoint_paths(directory, step)
    if not sidecar_path.is_file():
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {directory} (committed: "
            f"{committed_steps(directory)})"
        )
    data, sidecar = _read_verified(data_path, sidecar_path)
    try:
        raw = serialization.msgpack_restore(data)
        encoded_target = jax.tree.map(_encode_leaf, target)
        restored = serialization.from_state_dict(encoded_target, raw)
    except Exception as err:
        raise ValueError(f"checkpoint file {data_path} does not fit the target: {err}") from err
    state = jax.tree_util.tree_map_with_path(
        lambda path, t, v: _decode_leaf(path, t, v, data_path), target, restored
    )
    return state, sidecar["metadata"]
