"""pool.resize(n): lanes come and go at run time; only the keys rendezvous hashing moves move,
never while one of their tasks is queued or running, and nothing is lost."""

from __future__ import annotations

import concurrent.futures

import pytest

import _policy_tasks
from _tasks import WAIT, is_gone, read_pid, wait_until, write_atomic
from memwise import WorkerPool
from memwise.errors import ClosedError
from memwise.pool.queue import lane_for

pytestmark = pytest.mark.timeout(60)

KEYS = [f"file-{k}" for k in range(40)]


def lane_pids(pool):
    return {row.lane: row.pid for row in pool.snapshot().workers}


def lane_of_each_key(pool, keys):
    """Run one task per key and return the lane each ran in (by its worker's pid)."""
    futures = [pool.options(key=key).submit(_policy_tasks.keyed, key, 0) for key in keys]
    ran = {key: pid for key, _, pid, _ in (f.result(WAIT) for f in futures)}
    lanes = {pid: lane for lane, pid in lane_pids(pool).items()}
    return {key: lanes[pid] for key, pid in ran.items()}


def test_keys_that_move_are_exactly_those_rendezvous_hashing_predicts():
    events = []
    with WorkerPool(2) as pool:
        pool.subscribe(events.append)
        before = lane_of_each_key(pool, KEYS)
        assert before == {key: lane_for(key, 2) for key in KEYS}
        pool.resize(3)
        assert pool.workers == 3
        assert wait_until(lambda: all(row.pid for row in pool.snapshot().workers))
        after = lane_of_each_key(pool, KEYS)
        assert after == {key: lane_for(key, 3) for key in KEYS}
        moved = {key for key in KEYS if after[key] != before[key]}
        # Rendezvous hashing: a key moves only to the new lane, and some do.
        assert moved and all(after[key] == 2 for key in moved)
        pool.resize(2)
        back = lane_of_each_key(pool, KEYS)
        assert back == before
        assert wait_until(lambda: len(pool.snapshot().workers) == 2)
    resized = [e.reason for e in events if e.kind == "pool_resized"]
    assert resized == ["2 -> 3", "3 -> 2"]


def test_a_key_with_queued_tasks_does_not_move_and_keeps_its_order(tmp_path):
    # A key whose lane changes from 2 lanes to 3.
    key = next(k for k in KEYS if lane_for(k, 2) != lane_for(k, 3))
    with WorkerPool(2) as pool:
        old_lane = lane_for(key, 2)
        blocker = pool.options(key=key).submit(
            _policy_tasks.block, tmp_path / "pid", tmp_path / "go"
        )
        old_pid = read_pid(tmp_path / "pid")
        first = [pool.options(key=key).submit(_policy_tasks.keyed, key, i) for i in range(5)]
        pool.resize(3)
        # Submitted after the resize, while the key still has tasks queued: same lane.
        second = [pool.options(key=key).submit(_policy_tasks.keyed, key, i) for i in range(5, 10)]
        write_atomic(tmp_path / "go", "")
        blocker.result(WAIT)
        runs = [f.result(WAIT) for f in first + second]
        assert [seq for _, seq, _, _ in runs] == list(range(10))
        assert {pid for _, _, pid, _ in runs} == {old_pid}
        times = [t for _, _, _, t in runs]
        assert times == sorted(times)
        assert lane_pids(pool)[old_lane] == old_pid
        # Once every task of the key is done, its next one goes where the hash says.
        assert wait_until(lambda: lane_pids(pool)[2] is not None)
        _, _, pid, _ = pool.options(key=key).submit(_policy_tasks.keyed, key, 10).result(WAIT)
        assert pid == lane_pids(pool)[lane_for(key, 3)] != old_pid


def test_shrinking_busy_lanes_loses_nothing_and_retires_their_workers(tmp_path):
    # Keys on every lane of 3, the lanes blocked; shrink to 1 with work queued everywhere.
    keys = {lane_for(k, 3): k for k in KEYS}
    assert sorted(keys) == [0, 1, 2]
    with WorkerPool(3) as pool:
        pids = lane_pids(pool)
        blockers = [
            pool.options(key=keys[lane]).submit(
                _policy_tasks.block, tmp_path / f"pid{lane}", tmp_path / "go"
            )
            for lane in range(3)
        ]
        for lane in range(3):
            assert read_pid(tmp_path / f"pid{lane}") == pids[lane]
        keyed = [
            pool.options(key=keys[lane]).submit(_policy_tasks.keyed, keys[lane], i)
            for i in range(6)
            for lane in range(3)
        ]
        unkeyed = [pool.submit(_policy_tasks.getpid) for _ in range(6)]
        pool.resize(1)
        assert pool.workers == 1
        write_atomic(tmp_path / "go", "")
        concurrent.futures.wait([*blockers, *keyed, *unkeyed], timeout=WAIT)
        assert [b.result(0) for b in blockers] == [pids[0], pids[1], pids[2]]
        runs = [f.result(0) for f in keyed]
        for lane in range(3):  # each key stayed in its lane, in order
            mine = [(seq, pid) for key, seq, pid, _ in runs if key == keys[lane]]
            assert mine == [(i, pids[lane]) for i in range(6)]
        # Unkeyed work queued before the shrink ran; the draining lanes took none of it.
        assert {f.result(0) for f in unkeyed} == {pids[0]}
        assert wait_until(lambda: is_gone(pids[1]) and is_gone(pids[2]))
        assert wait_until(lambda: len(pool.snapshot().workers) == 1)  # exits handled
        snapshot = pool.snapshot()
        assert [(row.lane, row.pid) for row in snapshot.workers] == [(0, pids[0])]
        assert snapshot.max_workers == 1 and snapshot.recycles == {"resize": 2}
        assert snapshot.restarts == 0
        # Keys of the removed lanes now run in lane 0.
        assert pool.options(key=keys[2]).submit(_policy_tasks.getpid).result(WAIT) == pids[0]


def test_resize_rejects_nonsense():
    with WorkerPool(1) as pool:
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="at least 1"):
                pool.resize(bad)
    with pytest.raises(ClosedError, match="shut down"):
        pool.resize(2)
