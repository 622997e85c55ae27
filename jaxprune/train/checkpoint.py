"""Atomic, hash-verified checkpoints of whole training states, written by orbax.

A checkpoint is the full training-state pytree: parameters, optimizer state (optax ``NamedTuple``
states included), masks, method state, data position, PRNG keys (typed ``jax.random.key`` arrays
and legacy ``uint32`` ``PRNGKey`` arrays) and plain Python numbers.  ``directory`` is an
``orbax.checkpoint.CheckpointManager`` directory; step ``s`` is the orbax step directory
``<directory>/<s>`` with two items:

- ``state``: the state as a nested dict (``flax.serialization.to_state_dict``: tuples and
  ``NamedTuple`` states become dicts keyed by position or field name), saved with
  ``PyTreeSave``, typed PRNG keys stored as their ``uint32`` key data;
- ``metadata``: JSON ``{"format", "step", "time", "metadata", "sha256", "tree"}``: the caller's
  ``metadata``, the SHA-256 of every ``state`` leaf (its path, dtype, shape and bytes, in tree
  order) and the state's structure (``"array"`` or ``"number"`` per leaf).

Any orbax user reads it without jaxprune, e.g.
``ocp.CheckpointManager(directory).restore(step).state`` or
``ocp.PyTreeCheckpointer().restore(f"{directory}/{step}/state")``.

Writes are atomic: orbax writes a step into ``<s>.orbax-checkpoint-tmp-*`` and renames it into
place when complete, so a write killed at any point leaves every earlier checkpoint intact and
:func:`latest_step` unchanged; the leftover temporary directory is never a step (and is removed
by the next :func:`save_checkpoint`).  Rotation is ours, not orbax's ``max_to_keep`` (which
deletes while saving): only the newest ``keep`` checkpoints are kept, and older ones are deleted
only after the new one has been read back and its hash verified.  Re-saving a committed step
likewise writes and verifies the new one in ``<directory>/.resave-<s>`` before the old one is
replaced (two renames; a kill between them is undone by the next save), so a failed re-save
leaves the original readable.  :func:`verify_checkpoint`
reads one step and checks its hash (a resume falls back past corrupt ones), and
:func:`restore_checkpoint` refuses a step whose hash differs.

Restoring goes into the structure of a ``target`` pytree (e.g. freshly initialized state), so
optax ``NamedTuple`` states, tuples and typed PRNG keys come back with their types; leaves come
back as the kind of their target leaf (``jax.Array`` on the target leaf's sharding, ``np.ndarray``
or Python scalar), bitwise equal to what was saved.  Structure, shapes and dtypes must match the
target's.

Several processes: like orbax's ``CheckpointManager.save``, :func:`save_checkpoint`,
:func:`verify_checkpoint` and :func:`restore_checkpoint` are collective, called by every process
with the same arguments on a shared file system.  Orbax writes each shard of a global
``jax.Array`` once (sharded arrays save sharded), and NumPy values, Python numbers and the
metadata from process 0, so these (and process-local arrays, saved as NumPy) must be equal on
every process; hashing gathers arrays that are not fully addressable.  Restoring reads whole arrays on every
process and places them on the target leaves' shardings.  Only :func:`clear_checkpoints` is
called on one process.

Checkpoints of jaxprune before orbax (``checkpoint_<s>.msgpack`` with a ``.json`` sidecar) are
not read: :func:`legacy_checkpoints` lists them so that callers can say to start fresh.

References:
  Orbax checkpointing (``orbax.checkpoint.CheckpointManager``, ``PyTreeCheckpointHandler``).
  Flax serialization (``flax.serialization.to_state_dict`` / ``from_state_dict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from jax.experimental import multihost_utils

from jaxprune._validation import check_int, check_positive_int
from jaxprune.typing import PyTree

__all__ = [
    "checkpoint_paths",
    "clear_checkpoints",
    "committed_steps",
    "latest_step",
    "legacy_checkpoints",
    "restore_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]

FORMAT = "jaxprune-checkpoint-v2"
_STATE, _METADATA = "state", "metadata"
_LEGACY = re.compile(r"^(checkpoint_\d+\.(msgpack|json)|\.tmp-checkpoint_.*)$")
_STEP_ENTRY = re.compile(r"^(\d+($|\.orbax-checkpoint-tmp)|\.(resave|replaced)-\d+$)")


def checkpoint_paths(directory: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """The ``(state, metadata)`` item directories of checkpoint ``step`` (an int >= 0) in
    ``directory``."""
    step_dir = Path(directory) / str(check_int(step, "step", minimum=0))
    return step_dir / _STATE, step_dir / _METADATA


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state, metadata = ocp.PyTreeCheckpointHandler(), ocp.JsonCheckpointHandler()
    registry.add(_STATE, ocp.args.PyTreeSave, state)
    registry.add(_STATE, ocp.args.PyTreeRestore, state)
    registry.add(_METADATA, ocp.args.JsonSave, metadata)
    registry.add(_METADATA, ocp.args.JsonRestore, metadata)
    return registry


def _manager(directory: Path, *, write: bool) -> ocp.CheckpointManager:
    """A synchronous manager of ``directory`` that never deletes by itself (no
    ``max_to_keep``); one that ``write``-s creates the directory and first removes temporary
    directories of killed saves."""
    options = ocp.CheckpointManagerOptions(
        create=write,
        cleanup_tmp_directories=write,
        enable_async_checkpointing=False,
        save_root_metadata=False,
    )
    return ocp.CheckpointManager(directory, options=options, handler_registry=_registry())


def _is_typed_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _encode_leaf(path: tuple, leaf: Any) -> Any:
    """Typed PRNG key arrays → their ``uint32`` key data, process-local arrays of a
    multi-process run → NumPy; refuse what orbax cannot store."""
    if _is_typed_key(leaf):
        leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array):
        local = leaf.is_fully_addressable and jax.process_count() > 1
        return np.asarray(leaf) if local else leaf
    if isinstance(leaf, np.ndarray | np.generic | bool | int | float):
        return leaf
    raise TypeError(
        f"state: expected array, NumPy or Python-number leaves, got {type(leaf).__name__} at "
        f"{_path_name(path)}"
    )


def _path_name(path: tuple) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _host_value(leaf: Any) -> np.ndarray:
    """The whole value of a leaf on this host (gathering a not fully addressable array)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return np.ascontiguousarray(leaf)


def _digest(tree: dict) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in tree order."""
    sha = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = _host_value(leaf)
        header = f"{_path_name(path)}|{value.dtype.str}|{value.shape}|".encode()
        sha.update(len(header).to_bytes(8, "little") + header)
        sha.update(value.tobytes())
    return sha.hexdigest()


def legacy_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Files of the format before orbax in ``directory`` (``checkpoint_<s>.msgpack``, its
    ``.json`` sidecar and temporary files), which are not read; ``[]`` if none or no directory."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _LEGACY.match(p.name))


def committed_steps(directory: str | os.PathLike) -> list[int]:
    """The committed steps in ``directory``, oldest first (``[]`` if none or no directory).

    A step counts once orbax has renamed it into place, so an interrupted write never does."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    with _manager(directory, write=False) as manager:
        return sorted(manager.all_steps())


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest committed step in ``directory`` (``None`` if there is none or no directory)."""
    steps = committed_steps(directory)
    return steps[-1] if steps else None


def _skeleton(tree: Any) -> Any:
    """The JSON form of a state-dict tree: ``"array"`` or ``"number"`` for each leaf."""
    if isinstance(tree, dict):
        return {key: _skeleton(value) for key, value in tree.items()}
    if tree is None:
        return None
    if isinstance(tree, bool | int | float):
        return "number"
    if isinstance(tree, jax.Array | np.ndarray | np.generic):
        return "array"
    raise TypeError(
        "state: expected dicts, lists, tuples, NamedTuples or Flax structs of leaves, got a "
        f"{type(tree).__name__} node (not serializable by flax.serialization.to_state_dict)"
    )


def _read_verified(manager: ocp.CheckpointManager, step: int) -> tuple[dict, dict]:
    """Step ``step`` as ``(state, document)``: the saved state-dict tree with host NumPy and
    Python-number leaves, and its metadata document.

    Raises:
      ValueError: naming the step directory, when it is unreadable, partial or corrupt.
    """
    source = Path(manager.directory) / str(step)
    try:
        document = manager.restore(
            step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
        )[_METADATA]
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"its metadata is not a {FORMAT} document")
        as_host = jax.tree.map(  # arrays as NumPy: independent of the devices that saved them
            lambda kind: ocp.RestoreArgs(restore_type=np.ndarray if kind == "array" else None),
            document["tree"],
        )
        state = manager.restore(
            step,
            args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeRestore(restore_args=as_host)}),
        )[_STATE]
        digest = _digest(state)
    except Exception as err:  # orbax and tensorstore raise many kinds on damaged files
        raise ValueError(f"checkpoint {source} is unreadable or partial: {err}") from err
    if digest != document.get("sha256"):
        raise ValueError(
            f"checkpoint {source} is corrupt: its leaves have SHA-256 {digest}, expected "
            f"{document.get('sha256')}"
        )
    return state, document


def verify_checkpoint(directory: str | os.PathLike, step: int) -> dict:
    """Read checkpoint ``step`` and check its SHA-256; return its metadata.

    Raises:
      ValueError: naming the step directory, when it is missing, unreadable, partial or corrupt.
    """
    directory = Path(directory)
    if step not in committed_steps(directory):
        raise ValueError(f"checkpoint {directory / str(step)} is missing")
    with _manager(directory, write=False) as manager:
        return _read_verified(manager, step)[1]["metadata"]


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
      step: non-negative training step; saving an existing step replaces it, the old one
        kept until the new one has been written and verified.
      state: any pytree of arrays, typed PRNG keys, NumPy values, Python numbers, ``None``,
        dicts, lists, tuples, NamedTuples and Flax structs.
      metadata: JSON-serializable dict stored with the checkpoint and returned by restore.
      keep: number of newest checkpoints to keep (≥ 1).

    Returns:
      The step directory.  Call on every process (see the module docstring).

    Raises:
      ValueError: the new checkpoint does not read back with its hash (older ones are kept).
    """
    step = check_int(step, "step", minimum=0)
    keep = check_positive_int(keep, "keep")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata: expected a dict or None, got {type(metadata).__name__}")
    encoded = serialization.to_state_dict(jax.tree_util.tree_map_with_path(_encode_leaf, state))
    document = {
        "format": FORMAT,
        "step": step,
        "time": time.time(),
        "metadata": metadata or {},
        "sha256": _digest(encoded),
        "tree": _skeleton(encoded),
    }
    try:
        json.dumps(document, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"metadata: expected JSON-serializable data, got {metadata!r}: {err}"
        ) from err

    directory = Path(directory)
    args = ocp.args.Composite(
        **{_STATE: ocp.args.PyTreeSave(encoded), _METADATA: ocp.args.JsonSave(document)}
    )
    _on_main_process(_recover_replaced, directory)
    with _manager(directory, write=True) as manager:
        replacing = step in manager.all_steps()
        if not replacing:
            manager.save(step, args=args, force=True)
            _read_verified(manager, step)  # read back: older ones go only once this is sound
    if replacing:
        _replace_step(directory, step, args)
    with _manager(directory, write=True) as manager:
        for old in sorted(manager.all_steps())[:-keep]:
            manager.delete(old)
    return directory / str(step)


def _on_main_process(function: Any, *args: Any) -> None:
    """``function(*args)`` on process 0 only, the others waiting until it is done."""
    if jax.process_index() == 0:
        function(*args)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxprune-checkpoint-{function.__name__}")


def _recover_replaced(directory: Path) -> None:
    """Finish or undo a replacement of a step killed between its two renames: the old step
    parked as ``.replaced-<s>`` goes back into place if ``<s>`` is missing, else it is
    removed; a leftover ``.resave-<s>`` staging directory is removed."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        match = re.fullmatch(r"\.(resave|replaced)-(\d+)", entry.name)
        if match is None or not entry.is_dir():
            continue
        target = directory / match[2]
        if match[1] == "replaced" and not target.exists():
            entry.rename(target)
        else:
            shutil.rmtree(entry)


def _replace_step(directory: Path, step: int, args: Any) -> None:
    """Replace the committed step ``step`` without a moment when neither a sound old nor a
    sound new checkpoint exists: the new one is written into ``<directory>/.resave-<s>`` and
    verified there; only then is the old one parked (``.replaced-<s>``), the new one renamed
    into place and the old one removed.  A failed write or verification leaves the old step
    as it was; the staging directory (orbax's writer threads may still be finishing in it)
    is no step, and the next :func:`save_checkpoint` or :func:`clear_checkpoints` removes it."""
    staging = directory / f".resave-{step}"
    with _manager(staging, write=True) as manager:
        manager.save(step, args=args, force=True)
        _read_verified(manager, step)

    def swap() -> None:
        parked = directory / f".replaced-{step}"
        (directory / str(step)).rename(parked)
        (staging / str(step)).rename(directory / str(step))
        shutil.rmtree(parked)
        shutil.rmtree(staging)

    _on_main_process(swap)


def _decode_leaf(path: tuple, target: Any, value: Any, source: Path) -> Any:
    """Restore one leaf as the kind of its ``target`` leaf, checking shape and dtype."""
    if _is_typed_key(target):
        expected = jax.random.key_data(target)
        _check_array(path, expected.shape, expected.dtype, value, source)
        key = jax.random.wrap_key_data(value, impl=jax.random.key_impl(target))
        return jax.device_put(key, target.sharding)
    if isinstance(target, jax.Array):
        _check_array(path, target.shape, target.dtype, value, source)
        return jax.device_put(value, target.sharding)
    expected = np.asarray(target)
    _check_array(path, expected.shape, expected.dtype, value, source)
    if isinstance(target, np.ndarray):
        return np.asarray(value)
    if isinstance(target, np.generic):
        return np.asarray(value)[()]
    return type(target)(value)


def _check_array(path: tuple, shape: tuple, dtype: Any, value: Any, source: Path) -> None:
    value = np.asarray(value)
    if value.shape != tuple(shape) or value.dtype != np.dtype(dtype):
        raise ValueError(
            f"checkpoint {source}: leaf {_path_name(path)} has shape {value.shape} and dtype "
            f"{value.dtype}, but the target has shape {tuple(shape)} and dtype {np.dtype(dtype)}"
        )


def _leaf_paths(tree: PyTree) -> set[str]:
    return {_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
      ValueError: the checkpoint is corrupt, partial or does not fit ``target``, or ``step``
        is negative.
      TypeError: ``step`` is not an int.
    """
    directory = Path(directory)
    if step is not None:
        step = check_int(step, "step", minimum=0)
    steps = committed_steps(directory)
    if step is None and not steps:
        legacy = legacy_checkpoints(directory)
        found = f"; it holds {len(legacy)} files of the format before orbax" if legacy else ""
        raise FileNotFoundError(f"no checkpoint in directory {directory}{found}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {directory} (committed: {steps})"
        )
    with _manager(directory, write=False) as manager:
        saved, document = _read_verified(manager, step)
    source = directory / str(step)
    expected = serialization.to_state_dict(target)  # the saved form of target's structure
    missing = _leaf_paths(expected) - _leaf_paths(saved)
    extra = _leaf_paths(saved) - _leaf_paths(expected)
    if missing or extra:
        raise ValueError(
            f"checkpoint {source} does not fit the target: leaves only in the target "
            f"{sorted(missing)}, only in the checkpoint {sorted(extra)}"
        )
    restored = serialization.from_state_dict(target, saved)
    state = jax.tree_util.tree_map_with_path(
        lambda path, t, v: _decode_leaf(path, t, v, source), target, restored
    )
    return state, document["metadata"]


def clear_checkpoints(directory: str | os.PathLike) -> None:
    """Delete every checkpoint in ``directory``: committed steps, temporary directories of
    killed saves and files of the format before orbax (call on one process)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and _STEP_ENTRY.match(entry.name):
            shutil.rmtree(entry)
        elif entry.is_file() and _LEGACY.match(entry.name):
            entry.unlink()
