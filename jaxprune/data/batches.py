"""Deterministic, resumable shuffling and batching, and host-side prefetch.

The order of epoch ``e`` under seed ``s`` is a permutation drawn from NumPy's PCG64 seeded with
``SeedSequence([s, e])``: it depends on nothing else, so a run restarted from a saved
``BatchPosition`` sees exactly the batches it would have seen without the restart.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import NamedTuple, TypeVar

import numpy as np

from jaxprune._validation import check_int, check_iterable, check_positive_int

__all__ = ["BatchPosition", "epoch_batches", "iterate_batches", "prefetch"]

T = TypeVar("T")


class BatchPosition(NamedTuple):
    """Where an input pipeline stands: the next batch is batch ``step`` of epoch ``epoch``."""

    epoch: int
    step: int


def epoch_batches(
    num_examples: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    drop_remainder: bool = True,
) -> list[np.ndarray]:
    """Index batches of one epoch, shuffled by ``(seed, epoch)``.

    Args:
      num_examples: dataset size ``n``.
      batch_size: examples per batch ``b``.
      seed, epoch: non-negative ints fixing the permutation.
      drop_remainder: drop the last ``n mod b`` examples (else they form a smaller last batch).

    Returns:
      List of int64 arrays of shape ``(b,)`` (the last one shorter when ``drop_remainder`` is
      false); together they hold each index at most once, and every index when nothing is dropped.
    """
    check_positive_int(num_examples, "num_examples")
    check_positive_int(batch_size, "batch_size")
    for name, value in (("seed", seed), ("epoch", epoch)):
        check_int(value, name, minimum=0)
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    permutation = order.permutation(num_examples)
    stop = num_examples - num_examples % batch_size if drop_remainder else num_examples
    return [permutation[i : i + batch_size] for i in range(0, stop, batch_size)]


def iterate_batches(
    num_examples: int,
    batch_size: int,
    *,
    seed: int,
    start: BatchPosition | tuple[int, int] = (0, 0),
    num_epochs: int | None = None,
    drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, BatchPosition]]:
    """Index batches from ``start`` on, each with the position to resume from after it.

    Save the ``BatchPosition`` yielded with the last batch you processed; passing it as
    ``start`` later continues with the very next batch.

    Args:
      num_examples, batch_size, seed, drop_remainder: as in ``epoch_batches``.
      start: position of the first batch to yield.
      num_epochs: stop before epoch ``num_epochs`` (``None``: never stop).

    Yields:
      ``(indices, next_position)``.
    """
    if not isinstance(start, tuple | list) or len(start) != 2:
        raise TypeError(f"start: expected a BatchPosition or an (epoch, step) pair, got {start!r}")
    epoch, step = BatchPosition(*start)
    check_int(step, "start.step", minimum=0)
    if num_epochs is not None:
        check_int(num_epochs, "num_epochs", minimum=0)
    while num_epochs is None or epoch < num_epochs:
        batches = epoch_batches(
            num_examples, batch_size, seed=seed, epoch=epoch, drop_remainder=drop_remainder
        )
        if not batches:
            raise ValueError(f"batch_size={batch_size} > num_examples={num_examples}: no batches")
        for i in range(step, len(batches)):
            last = i + 1 == len(batches)
            yield batches[i], BatchPosition(epoch + 1, 0) if last else BatchPosition(epoch, i + 1)
        epoch, step = epoch + 1, 0


class _Raised(NamedTuple):
    error: BaseException


_DONE = object()


def prefetch(iterator: Iterable[T], size: int = 2) -> Iterator[T]:
    """Yield the items of ``iterator`` in order while a background thread reads ahead.

    At most ``size`` items wait in the buffer.  An exception raised by ``iterator`` is re-raised
    in the consumer at the point it occurred; closing the generator stops the thread.

    Args:
      iterator: any iterable (e.g. a generator of host batches).
      size: buffer length, at least 1.
    """
    check_iterable(iterator, "iterator")
    check_positive_int(size, "size")
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as error:  # handed to the consumer, re-raised there
            put(_Raised(error))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
