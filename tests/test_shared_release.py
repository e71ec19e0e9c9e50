"""Shared memory is not pinned after the work: free slots are bounded, time out, and go when
the last pool using them shuts down; a long-running program gets /dev/shm back by itself."""

from __future__ import annotations

import os
import subprocess
import sys

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


LAST_POOL = """
import numpy as np
from memwise import WorkerPool, shared

def negate(array):
    return -array

if __name__ == "__main__":
    array = np.ones(1024 * 1024)  # 8 MiB: travels through slots both ways
    with WorkerPool(2) as pool:
        for _ in range(6):
            assert pool.submit(negate, array).result(30)[0] == -1.0
        assert shared.owned_segments()  # warm slots while the pool works
    stats = shared.default_pool().stats()
    print(stats.bytes - stats.in_use_bytes, len(shared.owned_segments() or []))
"""


def test_the_last_pool_to_shut_down_leaves_no_segment(tmp_path):
    # In a program of its own: here, pools of other tests may still be open.
    script = tmp_path / "app.py"
    script.write_text(LAST_POOL)
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=WAIT * 2
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["0", "0"]  # no free bytes, no segment


def test_a_large_argument_refused_by_a_shut_down_pool_leaves_no_slot_in_use():
    pool = WorkerPool(1)
    pool.shutdown()
    with pytest.raises(ClosedError):
        pool.submit(tasks.negate, np.ones(MiB))  # 8 MiB: copied into a slot before refusal
    assert shared.default_pool().stats().in_use_bytes == 0
