"""What makes a training run itself: the description every checkpoint carries, so that a resume
continues only the same run.

A run directory's checkpoints belong to one run.  Restarting :func:`~jaxprune.train.train`
with other settings on the same directory must not hand back the old run as the new one, so
every checkpoint stores :func:`run_identity` (model, data, training settings, pruning method
and its options, anything the caller adds, and the jaxprune version) and a resume compares it
with the new call's (:func:`identity_differences`): any difference refuses the resume with a
:class:`RunMismatchError` that names the fields.

Settings that change how a run is executed but not what it computes are left out
(:data:`OPERATIONAL_FIELDS`: progress bars, TensorBoard, prefetching, the device count —
data-parallel training equals single-device training up to round-off — and the checkpoint
cadence).  The optimizer is a pair of functions the engine cannot compare; a caller passes its
settings as ``run_info`` (the CLI passes its flags).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

import jaxprune
from jaxprune.data.registry import Splits

__all__ = ["OPERATIONAL_FIELDS", "RunMismatchError", "identity_differences", "run_identity"]

#: :class:`~jaxprune.train.TrainConfig` fields a resumed run may change.
OPERATIONAL_FIELDS = (
    "progress",
    "tensorboard",
    "prefetch",
    "num_devices",
    "checkpoint_every",
    "keep_checkpoints",
)


class RunMismatchError(ValueError):
    """A run directory's checkpoint belongs to a different run than the one asked for."""


def _described(value: Any) -> Any:
    """``value`` as JSON data: mappings and sequences recursively, dataclasses by their
    fields, arrays by shape, dtype and a digest, anything else by ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _described(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_described(v) for v in value]
    array_like = hasattr(value, "__array__") and hasattr(value, "dtype")
    if not isinstance(value, type) and (isinstance(value, np.ndarray) or array_like):
        array = np.asarray(value)
        return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": _digest(array)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        return {"type": type(value).__name__, **_described(fields)}
    if isinstance(value, functools.partial):
        return {
            "partial": _described(value.func),
            "args": _described(value.args),
            "keywords": _described(value.keywords),
        }
    if isinstance(value, type) or callable(value):  # by name: a repr holds a memory address
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        if name is None:  # e.g. jax.custom_jvp objects: the function they wrap
            wrapped = getattr(value, "fun", None) or getattr(value, "__wrapped__", None)
            name = getattr(wrapped, "__qualname__", type(value).__qualname__)
            return f"{getattr(wrapped, '__module__', '')}.{name}"
        return f"{getattr(value, '__module__', '')}.{name}"
    return repr(value)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def run_identity(
    model: Any,
    splits: Splits,
    config: Any,
    pruner: Any,
    run_info: Mapping[str, Any] | None = None,
) -> dict:
    """The JSON description of a :func:`~jaxprune.train.train` call that a resume must match.

    Args:
      model: the :class:`~jaxprune.train.Bound` model (name, group kind, architecture config).
      splits: the data (task, outputs, and each split's arrays by shape, dtype and SHA-256).
      config: the :class:`~jaxprune.train.TrainConfig`, less :data:`OPERATIONAL_FIELDS`.
      pruner: the :class:`~jaxprune.train.Pruner` (name, schedule, method settings) or ``None``.
      run_info: what else determines the run (the optimizer's settings, ...), JSON-like.

    Returns:
      A dict of JSON values.
    """
    settings = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in OPERATIONAL_FIELDS
    }
    method = None
    if pruner is not None:
        method = {
            "name": pruner.name,
            "schedule": pruner.schedule,
            "settings": getattr(pruner, "settings", {}),
        }
    return _described(
        {
            "jaxprune": jaxprune.__version__,
            "model": {"name": model.name, "kind": model.kind, "config": model.config},
            "data": {
                "task": splits.task,
                "num_outputs": splits.num_outputs,
                "train": dict(splits.train),
                "test": dict(splits.test),
            },
            "config": settings,
            "method": method,
            "run_info": dict(run_info or {}),
        }
    )


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of nested dicts by dotted path (an empty dict has none)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


_ABSENT = object()


def _short(value: Any) -> str:
    text = "<absent>" if value is _ABSENT else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"field: saved -> current"`` for every field where two identities differ (dotted
    paths, e.g. ``method.settings.per_layer``; a field only one side has shows ``<absent>``)."""
    old, new = _flat(dict(saved)), _flat(dict(current))
    differences = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            differences.append(f"{key}: {_short(a)} -> {_short(b)}")
    return differences
