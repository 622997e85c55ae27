"""The resumable state of a training run and its checkpoints.

:class:`RunState` is everything of a :func:`~jaxprune.train.train` run that changes as it goes:
the training state (parameters, optimizer state with masks, gates), the pruning method's
state, the LTH rewind point, the data position, the events and compactions so far, and the
window of training metrics not yet logged.  :func:`save_run` writes it atomically
(:mod:`jaxprune.train.checkpoint`); :func:`restore_run` reads it back into a template of the
same structure: a run stopped at any point and restarted with the same arguments ends with the
same metrics as an uninterrupted one.  A compacted run's template is rebuilt first by replaying
:func:`saved_compactions` on the initial state.

Checkpoints live in ``<run_dir>/checkpoints``; the sidecar metadata holds ``position``,
``events``, ``compactions``, ``has_rewind``, ``window`` and the phase ``seconds``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from jaxprune.data.batches import BatchPosition
from jaxprune.train.checkpoint import latest_step, restore_checkpoint, save_checkpoint
from jaxprune.train.events import Rewind
from jaxprune.train.parallel import to_host
from jaxprune.train.steps import TrainState
from jaxprune.typing import PyTree

__all__ = [
    "PhaseTimer",
    "RunState",
    "restore_run",
    "save_run",
    "saved_compactions",
    "saved_step",
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


def save_run(directory: Path, step: int, run: RunState, timer: PhaseTimer, *, keep: int) -> None:
    """Checkpoint ``run`` as step ``step`` in ``directory`` (call on process 0 only)."""
    meta = {
        "position": list(run.position),
        "events": run.events,
        "compactions": run.compactions,
        "has_rewind": run.rewind is not None,
        "window": {k: [float(t), float(w)] for k, (t, w) in to_host(run.window).items()},
        "seconds": {**timer.seconds, "wall": timer.wall()},
    }
    save_checkpoint(directory, step, to_host(_tree(run)), metadata=meta, keep=keep)


def saved_step(directory: Path | None) -> int | None:
    """The newest checkpointed step in ``directory`` (``None``: none, or no directory)."""
    return None if directory is None else latest_step(directory)


def _metadata(directory: Path, step: int) -> dict:
    return json.loads((directory / f"checkpoint_{step}.json").read_text())["metadata"]


def saved_compactions(directory: Path, step: int) -> list[list[bool]]:
    """The ``keep`` vectors of the compactions before checkpoint ``step``, to replay on the
    initial state before :func:`restore_run`."""
    return _metadata(directory, step)["compactions"]


def restore_run(
    directory: Path, step: int, template: RunState
) -> tuple[RunState, dict[str, float]]:
    """Checkpoint ``step`` read into ``template`` (the initial run, compactions replayed).

    Returns:
      ``(run, seconds)``: the restored run and the phase seconds at the checkpoint.
    """
    if _metadata(directory, step)["has_rewind"]:
        template = template._replace(rewind=(template.state.params, template.state.opt_state))
    tree, meta = restore_checkpoint(directory, _tree(template), step)
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
