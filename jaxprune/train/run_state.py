"""The resumable state of a training run and its checkpoints.

:class:`RunState` is everything of a :func:`~jaxprune.train.train` run that changes as it goes:
the training state (parameters, optimizer state with masks, gates), the pruning method's
state, the LTH rewind point, the data position, the events and compactions so far, and the
window of training metrics not yet logged.  :func:`save_run` writes it atomically
(:mod:`jaxprune.train.checkpoint`); :func:`restore_run` reads it back into a template of the
same structure: a run stopped at any point and restarted with the same arguments ends with the
same metrics as an uninterrupted one.  A compacted run's template is rebuilt first by replaying
the checkpoint's ``compactions`` on the initial state.

Checkpoints live in ``<run_dir>/checkpoints`` (an orbax ``CheckpointManager`` directory); their
metadata holds ``position``, ``events``, ``compactions``, ``has_rewind``, ``window``, the phase
``seconds``, the metrics row still being assembled (``pending``: logged rows are written when a
later step starts, so the checkpoint step's row is not yet in ``metrics.jsonl``) and the run's
``identity`` (:mod:`jaxprune.train.identity`).  :func:`intact_checkpoint` finds the newest checkpoint whose
hash verifies, skipping corrupt ones, and refuses a directory of checkpoints in the format before
orbax.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from jaxprune.data.batches import BatchPosition
from jaxprune.train.checkpoint import (
    committed_steps,
    legacy_checkpoints,
    restore_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from jaxprune.train.events import Rewind
from jaxprune.train.parallel import to_host
from jaxprune.train.steps import TrainState
from jaxprune.typing import PyTree

__all__ = [
    "IntactCheckpoint",
    "PhaseTimer",
    "RunState",
    "intact_checkpoint",
    "restore_run",
    "save_run",
]

#: Metric name to accumulated ``(total, weight)`` (see :mod:`jaxprune.train.tasks`).
Window = dict[str, tuple]


class RunState(NamedTuple):
    """The part of a run a checkpoint holds.

    Attributes:
      state: the :class:`~jaxprune.train.steps.TrainState`.
      method_state: the pruner's state (``None`` in dense training).
      rewind: ``(params, opt_state)`` of the schedule's rewind step (LTH), or ``None``.
      position: the data position of the next training batch.
      events: one summary per pruning event so far.
      compactions: the ``keep`` vector of each compaction so far, in order.
      window: training metrics of the steps since the last logged row.
    """

    state: TrainState
    method_state: PyTree
    rewind: Rewind
    position: BatchPosition
    events: list[dict]
    compactions: list[list[bool]]
    window: Window


class PhaseTimer:
    """Wall-clock seconds per phase of a run (device work is synchronized at phase ends);
    ``seconds["wall"]`` holds the wall time of earlier sessions of a resumed run."""

    PHASES = ("events", "analysis", "eval", "checkpoint", "wall")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.began = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def wall(self) -> float:
        """Wall time of the run, earlier sessions of a resumed run included."""
        return self.seconds["wall"] + time.perf_counter() - self.began

    def resume(self, seconds: dict[str, float]) -> None:
        """Continue from the phase seconds of a checkpoint."""
        self.seconds.update(seconds)
        self.began = time.perf_counter()


def _tree(run: RunState) -> dict:
    return {"state": run.state, "method": run.method_state, "rewind": run.rewind}


def save_run(
    directory: Path,
    step: int,
    run: RunState,
    timer: PhaseTimer,
    *,
    keep: int,
    identity: dict,
    pending: dict,
) -> None:
    """Checkpoint ``run`` as step ``step`` in ``directory`` (call on every process), with the
    run's ``identity`` and the ``pending`` metrics row (``{"step": ..., ...}`` or ``{}``)."""
    meta = {
        "position": list(run.position),
        "events": run.events,
        "compactions": run.compactions,
        "has_rewind": run.rewind is not None,
        "window": {k: [float(t), float(w)] for k, (t, w) in to_host(run.window).items()},
        "seconds": {**timer.seconds, "wall": timer.wall()},
        "pending": json.dumps(pending),  # a string: the row may hold NaN, the metadata may not
        "identity": identity,
    }
    save_checkpoint(directory, step, to_host(_tree(run)), metadata=meta, keep=keep)


class IntactCheckpoint(NamedTuple):
    """The checkpoint a run resumes from.

    Attributes:
      step: its step.
      metadata: its metadata (see the module docstring).
      skipped: one line per newer checkpoint that failed verification.
    """

    step: int
    metadata: dict
    skipped: list[str]

    @property
    def pending(self) -> dict:
        """The metrics row being assembled at the checkpoint (``{}``: none)."""
        return json.loads(self.metadata.get("pending", "{}"))


def intact_checkpoint(directory: Path | None) -> IntactCheckpoint | None:
    """The newest checkpoint in ``directory`` whose hash verifies (``None``: none at all).

    Raises:
      ValueError: naming ``directory``, when no checkpoint verifies or it holds only checkpoints
        in the format before orbax; both say to start fresh.
    """
    if directory is None:
        return None
    fresh = "start fresh (resume=False, or --fresh on the command line)"
    if not committed_steps(directory) and legacy_checkpoints(directory):
        raise ValueError(
            f"checkpoints: {directory} holds checkpoints in the format before orbax "
            f"(checkpoint_<step>.msgpack), which this version does not read; {fresh}"
        )
    skipped = []
    for step in reversed(committed_steps(directory)):
        try:
            return IntactCheckpoint(step, verify_checkpoint(directory, step), skipped)
        except ValueError as err:
            skipped.append(f"step {step}: {err}")
    if skipped:
        raise ValueError(
            f"checkpoints: no intact checkpoint in {directory} ({'; '.join(skipped)}); {fresh}"
        )
    return None


def restore_run(
    directory: Path, found: IntactCheckpoint, template: RunState
) -> tuple[RunState, dict[str, float]]:
    """Checkpoint ``found`` (from :func:`intact_checkpoint`) read into ``template`` (the
    initial run, compactions replayed).

    Returns:
      ``(run, seconds)``: the restored run and the phase seconds at the checkpoint.
    """
    if found.metadata["has_rewind"]:
        template = template._replace(rewind=(template.state.params, template.state.opt_state))
    tree, meta = restore_checkpoint(directory, _tree(template), found.step)
    run = RunState(
        state=tree["state"],
        method_state=tree["method"],
        rewind=tree["rewind"],
        position=BatchPosition(*meta["position"]),
        events=meta["events"],
        compactions=meta["compactions"],
        window={k: tuple(v) for k, v in meta["window"].items()},
    )
    return run, meta["seconds"]
