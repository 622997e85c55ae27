"""Data parallelism with ``jax.sharding``: one mesh axis ``"data"`` over the devices.

The training state is replicated and every batch is split along its leading axis; a step
compiled with these shardings (:func:`compile_step`) is the single-device step run SPMD by XLA,
so gradients are the mean over the global batch and results equal single-device results up to
float reduction order.  The same code runs on one CPU, several GPUs, or a TPU slice.

Multi-host (several processes, e.g. a GPU cluster or TPU pod): call
``jax.distributed.initialize()`` at the start of every process (on Cloud TPU and SLURM it
needs no arguments; otherwise pass ``coordinator_address``, ``num_processes`` and
``process_id``), then run the same script everywhere.  :func:`data_mesh` spans all processes'
devices, each process feeds only its own slice of the global batch (:func:`local_slice`) and
:func:`shard_batch` assembles the global array with
``jax.make_array_from_process_local_data``.  Only process 0 writes checkpoints and logs (see
:mod:`jaxprune.train.checkpoint`); every process must see the same data order, which the
seeded batching of :mod:`jaxprune.data.batches` guarantees.

References:
  JAX documentation, "Distributed arrays and automatic parallelization" and "Using JAX in
  multi-host and multi-process environments".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxprune.typing import PyTree

__all__ = [
    "compile_step",
    "data_mesh",
    "forced_cpu_devices_env",
    "local_slice",
    "replicate",
    "shard_batch",
    "to_host",
]

# Seconds a collective of forced CPU devices waits for its slowest participant before XLA
# aborts the process (XLA's default, 40 s, is exceeded when 4 forced devices share 2 busy
# cores: measured in bench_engine's scaling run, "Expected 4 threads to join the rendezvous").
_FORCED_COLLECTIVE_TIMEOUT_SECONDS = 600


def forced_cpu_devices_env(
    count: int, env: Mapping[str, str] | None = None, *, cpu_only: bool = True
) -> dict[str, str]:
    """The environment of a fresh process that runs JAX on ``count`` forced CPU devices.

    ``env`` (default ``os.environ``) plus ``XLA_FLAGS`` with
    ``--xla_force_host_platform_device_count=count`` and a collective timeout long enough
    for oversubscribed cores, and, with ``cpu_only``, ``JAX_PLATFORMS=cpu`` (without it a
    machine's accelerators stay the default devices).  The flags take effect only when JAX
    starts, so use it for a subprocess (data-parallel tests and benchmarks on one machine).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count: expected a positive int, got {count!r}")
    out = dict(os.environ if env is None else env)
    flags = (
        f"--xla_force_host_platform_device_count={count} "
        "--xla_cpu_collective_call_terminate_timeout_seconds="
        f"{_FORCED_COLLECTIVE_TIMEOUT_SECONDS}"
    )
    out["XLA_FLAGS"] = f"{out.get('XLA_FLAGS', '')} {flags}".strip()
    if cpu_only:
        out["JAX_PLATFORMS"] = "cpu"
    return out


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over the first ``num_devices`` devices (default: all, across
    every process)."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not isinstance(num_devices, int) or not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices must be an int in [1, {len(devices)}] (the devices available), "
            f"got {num_devices!r}"
        )
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError("num_devices must be all devices when running on several processes")
    return Mesh(np.asarray(devices[:num_devices]), ("data",))


def _batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
    """A global batch must split evenly over the mesh's devices."""
    size = mesh.devices.size
    if batch_size % size:
        raise ValueError(
            f"{name}={batch_size} must be a multiple of the number of devices ({size}) for "
            "data-parallel training"
        )


def local_slice(batch_size: int) -> slice:
    """The rows of a global batch that this process feeds (all rows on one process)."""
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place this process's rows of a batch on the mesh, split along the leading axis.

    Args:
      batch: host arrays, this process's rows of the global batch (all of it on one process).
      mesh: from :func:`data_mesh`.

    Returns:
      Global ``jax.Array``s sharded over ``"data"``.
    """
    sharding = _batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
    }


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Copy a pytree of arrays to every device of the mesh."""
    return jax.device_put(tree, _replicated(mesh))


def to_host(tree: PyTree) -> PyTree:
    """Replicated global arrays to host-readable arrays (works on every process of a
    multi-host run: a leaf that is not fully addressable becomes its local copy)."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return x

    return jax.tree_util.tree_map(leaf, tree)


def compile_step(step: Callable, mesh: Mesh, *, donate_state: bool = True) -> Callable:
    """``jax.jit`` of ``step(state, batch, key) -> outputs`` with a replicated state and key, a
    batch split over ``"data"``, and replicated outputs.

    ``donate_state`` lets XLA reuse the state's buffers for the new state (train steps).
    """
    replicated, split = _replicated(mesh), _batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, split, replicated),
        out_shardings=replicated,
        donate_argnums=(0,) if donate_state else (),
    )
