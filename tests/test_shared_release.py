"""Shared memory is not pinned after the work: free slots are bounded, time out, and go when
the last pool using them shuts down; a long-running program gets /dev/shm back by itself."""

from __future__ import annotations

import os

import numpy as np
import pytest

import _contract_tasks as tasks
from _tasks import WAIT, wait_until
from memwise import WorkerPool, shared
from memwise.errors import ClosedError
from memwise.shared import SlotPool
from memwise.shared._sizes import size_class

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def on_dev_shm(name: str) -> bool:
    return os.path.exists("/dev/shm" + name)


def free_bytes(pool: SlotPool) -> int:
    stats = pool.stats()
    return stats.bytes - stats.in_use_bytes


def test_free_slots_stay_within_keep_free():
    with SlotPool(sweep=False, keep_free=2 * size_class(MiB)) as pool:
        slots = [pool.allocate(MiB) for _ in range(6)]
        names = [slot.handle.name for slot in slots]
        for slot in slots:
            slot.release()
        assert free_bytes(pool) == 2 * size_class(MiB)
        # The most recently freed are kept (warm); the others are gone from /dev/shm.
        assert [on_dev_shm(name) for name in names] == [False] * 4 + [True] * 2
        assert pool.allocate(MiB).handle.name == names[-1]


def test_free_slots_follow_recent_use_by_default():
    # One slot in use at a time, of ever new sizes: keeping every one would pin ten segments
    # for a program that never needs more than one at once.
    with SlotPool(sweep=False) as pool:
        for n in range(1, 11):
            pool.allocate(n * MiB).release()
        assert free_bytes(pool) <= 2 * size_class(10 * MiB)
        assert pool.stats().slots < 10


def test_free_slots_are_unlinked_after_the_idle_period_without_any_call():
    with SlotPool(sweep=False, idle=0.2) as pool:
        slot = pool.allocate(MiB)
        name = slot.handle.name
        slot.release()
        assert on_dev_shm(name)  # warm for a moment
        assert wait_until(lambda: not on_dev_shm(name), WAIT)
        assert pool.stats().slots == 0


def _segments_of_this_process() -> list[str]:
    return shared.owned_segments() or []


def test_the_last_pool_to_shut_down_leaves_no_segment():
    array = np.ones(MiB)  # 8 MiB: travels through slots both ways
    with WorkerPool(2) as pool:
        for _ in range(6):
            assert pool.submit(tasks.negate, array).result(WAIT)[0] == -1.0
        assert _segments_of_this_process()  # warm slots while the pool works
    assert free_bytes(shared.default_pool()) == 0
    assert _segments_of_this_process() == []


def test_a_large_argument_refused_by_a_shut_down_pool_leaves_no_slot_in_use():
    pool = WorkerPool(1)
    pool.shutdown()
    with pytest.raises(ClosedError):
        pool.submit(tasks.negate, np.ones(MiB))  # 8 MiB: copied into a slot before refusal
    assert shared.default_pool().stats().in_use_bytes == 0
