"""Tests of deterministic, resumable batching and of prefetch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxprune.data.batches import BatchPosition, epoch_batches, iterate_batches, prefetch


def test_epoch_covers_each_index_once() -> None:
    batches = epoch_batches(103, 10, seed=0, epoch=0, drop_remainder=False)
    assert [len(b) for b in batches] == [10] * 10 + [3]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(103))
    dropped = epoch_batches(103, 10, seed=0, epoch=0)
    assert len(dropped) == 10 and all(len(b) == 10 for b in dropped)
    flat = np.concatenate(dropped)
    assert len(np.unique(flat)) == 100
    np.testing.assert_array_equal(flat, np.concatenate(batches)[:100])


def test_epochs_and_seeds_differ_and_repeat() -> None:
    a = np.concatenate(epoch_batches(50, 5, seed=1, epoch=0))
    assert not np.array_equal(a, np.concatenate(epoch_batches(50, 5, seed=1, epoch=1)))
    assert not np.array_equal(a, np.concatenate(epoch_batches(50, 5, seed=2, epoch=0)))
    np.testing.assert_array_equal(a, np.concatenate(epoch_batches(50, 5, seed=1, epoch=0)))


def test_resume_from_saved_position() -> None:
    full = list(itertools.islice(iterate_batches(23, 4, seed=7), 17))  # 5 batches per epoch
    assert [p for _, p in full[3:6]] == [(0, 4), (1, 0), (1, 1)]
    for cut in (0, 4, 5, 8, 13):
        saved = full[cut][1]
        resumed = list(itertools.islice(iterate_batches(23, 4, seed=7, start=saved), 16 - cut))
        for (want, want_pos), (got, got_pos) in zip(full[cut + 1 :], resumed):
            np.testing.assert_array_equal(got, want)
            assert got_pos == want_pos
    epochs = list(iterate_batches(23, 4, seed=7, num_epochs=2))
    assert len(epochs) == 10 and epochs[-1][1] == BatchPosition(2, 0)


def test_batching_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(10, 0, seed=0, epoch=0)
    with pytest.raises(ValueError, match="epoch"):
        epoch_batches(10, 2, seed=0, epoch=-1)
    with pytest.raises(ValueError, match="batch_size=11"):
        next(iterate_batches(10, 11, seed=0))


def test_prefetch_preserves_order() -> None:
    assert list(prefetch(iter(range(100)), size=3)) == list(range(100))
    assert list(prefetch([])) == []


def test_prefetch_propagates_exception() -> None:
    def failing():
        yield 1
        yield 2
        raise RuntimeError("boom")

    got = []
    with pytest.raises(RuntimeError, match="boom"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_stops_thread_when_closed() -> None:
    stream = prefetch(itertools.count(), size=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # returns: the producer thread noticed the stop and exited
    with pytest.raises(ValueError, match="size"):
        next(prefetch([1], size=0))
