"""pool.snapshot(): totals, one entry per worker lane, and how it is kept consistent."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import signal
import threading

import pytest

import _policy_tasks
from _policy_tasks import WAIT
from _tasks import raise_value_error, read_pid, wait_until, write_atomic
from memwise import WorkerPool
from memwise.pool.policies import Recycle
from memwise.pool.queue import lane_for
from memwise.pool.snapshot import DURATION_BUCKETS

pytestmark = pytest.mark.timeout(60)

TOTALS = ("submitted", "queued", "in_flight", "done", "failed", "cancelled", "restarts")


def test_snapshot_of_a_fresh_pool():
    with WorkerPool(2) as pool:
        snapshot = pool.snapshot()
        pids = [row.pid for row in snapshot.workers]
        assert all(isinstance(pid, int) for pid in pids) and len(set(pids)) == 2
    assert all(getattr(snapshot, name) == 0 for name in TOTALS)
    assert (snapshot.state, snapshot.max_workers, snapshot.min_workers) == ("running", 2, 2)
    assert snapshot.recycles == {}
    assert snapshot.durations.counts == (0,) * len(DURATION_BUCKETS)
    assert [row.lane for row in snapshot.workers] == [0, 1]
    for row in snapshot.workers:
        assert row.state == "idle"
        assert (row.key, row.task, row.tasks_done, row.queued) == (None, None, 0, 0)
        assert row.restarts == 0
        assert row.recycles == {}
        # A Python process has private memory; PSS counts part of its shared pages on top.
        assert row.private > 0 and row.pss > 0
    with pytest.raises(AttributeError):
        snapshot.done = 1  # immutable
    json.dumps(snapshot.to_dict())  # JSON-ready


def test_snapshot_while_busy_and_after(tmp_path):
    key = "clip-1"
    lane = lane_for(key, 2)
    with WorkerPool(2, recycle=Recycle(tasks=3)) as pool:
        first_pid = pool.snapshot().workers[lane].pid
        blocker = pool.options(key=key).submit(
            _policy_tasks.block, tmp_path / "pid", tmp_path / "go"
        )
        assert read_pid(tmp_path / "pid") == first_pid
        queued = [pool.options(key=key).submit(_policy_tasks.index, i) for i in range(2)]
        assert wait_until(lambda: pool.snapshot().queued == 2)
        busy = pool.snapshot()
        write_atomic(tmp_path / "go", "")
        concurrent.futures.wait([blocker, *queued], timeout=WAIT)
        failing = pool.options(key=key).submit(raise_value_error, "boom")
        with pytest.raises(ValueError):
            failing.result(WAIT)
        after = pool.snapshot()

    assert busy.submitted == 3
    assert busy.in_flight == 1
    assert busy.queued == 2
    row = busy.workers[lane]
    assert (row.pid, row.state, row.key, row.queued) == (first_pid, "busy", repr(key), 2)
    assert row.task is not None and row.task.function.endswith("block")
    assert row.task.key == repr(key) and row.task.seconds >= 0
    assert busy.workers[1 - lane].state == "idle"

    assert after.submitted == 4
    assert (after.done, after.failed, after.cancelled) == (3, 1, 0)
    assert (after.queued, after.in_flight) == (0, 0)
    assert after.durations.count == 4  # every task a worker ran, its value or its error
    assert sum(after.durations.counts) == 4
    assert after.throughput > 0
    # The lane's first worker ran three tasks and was recycled; its successor ran one.
    assert after.recycles == {"tasks": 1}
    row = after.workers[lane]
    assert row.recycles == {"tasks": 1}
    assert row.pid != first_pid
    assert row.tasks_done == 1
    assert row.restarts == 0
    assert after.workers[1 - lane].recycles == {}


def test_snapshot_counts_cancelled_tasks(tmp_path):
    with WorkerPool(1) as pool:
        blocker = pool.submit(_policy_tasks.block, tmp_path / "pid", tmp_path / "go")
        read_pid(tmp_path / "pid")
        superseded = [pool.options(coalesce="tag").submit(_policy_tasks.index, i) for i in range(3)]
        concurrent.futures.wait(superseded[:-1], timeout=WAIT)
        write_atomic(tmp_path / "go", "")
        blocker.result(WAIT)
        superseded[-1].result(WAIT)
        snapshot = pool.snapshot()
    assert (snapshot.submitted, snapshot.done, snapshot.cancelled) == (4, 2, 2)


def test_snapshot_lane_key_is_the_key_of_the_last_task():
    # A row's key is that of its worker's current task or, when idle, of its last one; calls
    # made one at a time reach idle workers directly from the submitting thread.
    with WorkerPool(1) as pool:
        for key in ("a", "b"):
            pool.options(key=key).submit(_policy_tasks.index, 1).result(WAIT)
            assert pool.snapshot().workers[0].key == repr(key)


def test_snapshots_are_consistent_under_concurrent_submit_and_kill(tmp_path):
    # Every snapshot, whatever else is happening, accounts for every task exactly once.
    problems: list[str] = []
    seen = []
    stop = threading.Event()

    def check(snapshot) -> None:
        accounted = (
            snapshot.done
            + snapshot.failed
            + snapshot.cancelled
            + snapshot.queued
            + snapshot.in_flight
        )
        if accounted != snapshot.submitted:
            problems.append(f"{accounted} accounted for, {snapshot.submitted} submitted")
        busy = sum(1 for w in snapshot.workers if w.task is not None)
        if busy > snapshot.in_flight or sum(w.queued for w in snapshot.workers) > snapshot.queued:
            problems.append(f"lanes disagree with totals: {snapshot}")
        seen.append(snapshot)

    def watch(pool) -> None:
        while not stop.is_set():
            check(pool.snapshot())

    def submit(pool, seed: int) -> list:
        rng = random.Random(seed)
        futures = []
        for i in range(60):
            options = pool.options(key=rng.choice((None, "a", "b", "c")))
            if rng.random() < 0.1:
                options = pool.options(coalesce="latest")
            futures.append(options.submit(_policy_tasks.index, i))
            if rng.random() < 0.1:
                futures[-1].cancel()
        return futures

    with WorkerPool(2, retries=3) as pool:
        watcher = threading.Thread(target=watch, args=(pool,))
        watcher.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(3) as submitters:
                batches = [submitters.submit(submit, pool, seed) for seed in range(3)]
                for _ in range(3):  # kill whatever runs, while tasks come in
                    pids = [w.pid for w in pool.snapshot().workers if w.pid is not None]
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(random.Random(len(seen)).choice(pids), signal.SIGKILL)
                    more_snapshots(seen, 5)
                futures = [f for batch in batches for f in batch.result(WAIT)]
            concurrent.futures.wait(futures, timeout=WAIT)
            assert all(f.done() for f in futures)
            assert wait_until(lambda: pool.snapshot().queued + pool.snapshot().in_flight == 0)
        finally:
            stop.set()
            watcher.join(WAIT)
        check(pool.snapshot())
    assert not problems, problems[:5]
    assert len(seen) > 10
    final = seen[-1]
    assert final.submitted == 180 and final.restarts >= 1


def more_snapshots(seen: list, count: int) -> None:
    """Wait until the watcher has taken ``count`` more snapshots."""
    target = len(seen) + count
    assert wait_until(lambda: len(seen) >= target)
