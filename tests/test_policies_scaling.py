"""Scale-to-zero and growth: workers start on demand, idle ones above min_workers exit."""

from __future__ import annotations

import time

import pytest

import _policy_tasks
from _policy_tasks import WAIT, getpid
from _tasks import rendezvous, wait_gone, wait_until
from memwise import WorkerPool
from memwise.pool.policies import Recycle

pytestmark = pytest.mark.timeout(60)

IDLE = 0.3


def both_workers_busy(pool, tmp_path):
    """Run two tasks that can only finish side by side; return their two pids."""
    futures = [pool.submit(rendezvous, str(tmp_path), 2) for _ in range(2)]
    pids = {f.result(WAIT) for f in futures}
    assert len(pids) == 2
    return pids


def test_min_workers_zero_starts_no_worker_until_needed():
    with WorkerPool(2, min_workers=0, recycle=Recycle(idle=IDLE)) as pool:
        assert live(pool.snapshot()) == 0
        assert pool.submit(_policy_tasks.index, 7).result(WAIT) == 7
        assert live(pool.snapshot()) >= 1


def test_idle_workers_exit_and_come_back_on_demand(tmp_path):
    with WorkerPool(2, min_workers=0, recycle=Recycle(idle=IDLE)) as pool:
        pids = both_workers_busy(pool, tmp_path)
        assert wait_until(lambda: live(pool.snapshot()) == 0)
        assert not wait_gone(pids)  # the processes really ended
        snapshot = pool.snapshot()
        assert snapshot.recycles == {"idle": 2}
        assert [row.state for row in snapshot.workers] == ["stopped", "stopped"]
        # Work brings a worker back.
        pid = pool.submit(getpid).result(WAIT)
        assert pid not in pids
        assert live(pool.snapshot()) >= 1
        # And it idles out in turn.
        assert wait_until(lambda: live(pool.snapshot()) == 0)
        assert pool.snapshot().restarts == 0


def test_min_workers_one_keeps_one(tmp_path):
    with WorkerPool(2, min_workers=1, recycle=Recycle(idle=IDLE)) as pool:
        both_workers_busy(pool, tmp_path)
        # Both used workers idle out; slot 0's is replaced by a fresh one, which stays.
        assert wait_until(lambda: pool.snapshot().recycles.get("idle", 0) >= 2)
        assert wait_until(lambda: live(pool.snapshot()) == 1)
        kept = pool.snapshot().workers[0].pid
        assert kept is not None
        # Over several idle periods, the kept worker neither leaves nor is replaced.
        window = time.monotonic() + 4 * IDLE
        while time.monotonic() < window:
            snapshot = pool.snapshot()
            assert live(snapshot) == 1
            assert snapshot.workers[0].pid == kept
            time.sleep(0.02)
        assert pool.submit(getpid).result(WAIT) == kept


def live(snapshot):
    """How many worker processes a snapshot shows."""
    return sum(worker.pid is not None for worker in snapshot.workers)
