"""Key affinity: a key's tasks run on one lane, in submission order, across restarts and runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict

import pytest

import _policy_tasks
from _tasks import WAIT, read_pid, write_atomic
from memwise import WorkerPool
from memwise.pool.queue import lane_for

KEYS = [f"file-{k}" for k in range(50)]
TASKS = 1000


def submit_round_robin(pool, tasks, keys, start=0):
    """Submit ``tasks`` tasks over ``keys``, key after key; return their futures."""
    return [
        pool.options(key=keys[i % len(keys)]).submit(_policy_tasks.keyed, keys[i % len(keys)], i)
        for i in range(start, start + tasks)
    ]


def lane_pids(pool):
    return {row.lane: row.pid for row in pool.snapshot().workers}


def by_key(results):
    grouped = defaultdict(list)
    for key, seq, pid, t in results:
        grouped[key].append((seq, pid, t))
    return grouped


def assert_submission_order(runs):
    """``runs`` as (seq, pid, t): sorted by submission, they must also be sorted by start."""
    runs = sorted(runs)
    times = [t for _, _, t in runs]
    assert times == sorted(times), "a key's tasks ran out of submission order"


def test_each_key_runs_in_order_on_one_lane():
    with WorkerPool(2) as pool:
        pids = lane_pids(pool)
        results = [f.result(WAIT) for f in submit_round_robin(pool, TASKS, KEYS)]
        assert pool.snapshot().restarts == 0
    grouped = by_key(results)
    assert sorted(grouped) == sorted(KEYS)
    for key, runs in grouped.items():
        assert len(runs) == TASKS // len(KEYS)
        assert {pid for _, pid, _ in runs} == {pids[lane_for(key, 2)]}, key
        assert_submission_order(runs)
    # Both lanes were used: the test says something about routing.
    assert {lane_for(key, 2) for key in KEYS} == {0, 1}


def test_a_key_keeps_its_lane_and_order_across_a_worker_restart(tmp_path):
    victim_key = KEYS[0]
    victim_lane = lane_for(victim_key, 2)
    pid_path, release = tmp_path / "pid", tmp_path / "release"
    with WorkerPool(2, retries=1) as pool:
        old_pids = lane_pids(pool)
        futures = submit_round_robin(pool, 200, KEYS)
        # Mid-stream, one task of the victim key blocks its worker, which the test then kills;
        # the tasks queued behind it (of every key of that lane) must wait for the replacement.
        blocker = pool.options(key=victim_key).submit(_policy_tasks.block, pid_path, release)
        futures += submit_round_robin(pool, 800, KEYS, start=200)
        killed = read_pid(pid_path)
        assert killed == old_pids[victim_lane]
        os.kill(killed, signal.SIGKILL)
        write_atomic(release, "")  # the re-run finds the way open
        results = [f.result(WAIT) for f in futures]
        rerun_pid = blocker.result(WAIT)
        snapshot = pool.snapshot()
    new_pids = {row.lane: row.pid for row in snapshot.workers}
    assert new_pids[victim_lane] not in (None, killed)
    assert rerun_pid == new_pids[victim_lane]
    assert new_pids[1 - victim_lane] == old_pids[1 - victim_lane]
    assert snapshot.restarts == 1
    assert snapshot.workers[victim_lane].restarts == 1
    assert snapshot.workers[1 - victim_lane].restarts == 0
    grouped = by_key(results)
    for key, runs in grouped.items():
        lane = lane_for(key, 2)
        allowed = {old_pids[lane], new_pids[lane]}
        assert {pid for _, pid, _ in runs} <= allowed, key
        assert_submission_order(runs)
    # The victim key's tasks after the blocker ran on the replacement, in the same lane.
    after = [pid for seq, pid, _ in grouped[victim_key] if seq >= 200]
    assert after and set(after) == {new_pids[victim_lane]}


CHECK_SCRIPT = """
import sys
from memwise.pool.queue import lane_for
keys = eval(sys.argv[1])
print(repr([lane_for(k, n) for k in keys for n in (2, 3, 7)]))
"""

STABLE_KEYS = ["file-1", "ünïcode", b"raw", 42, -7, 3.5, (1, "a"), ("x", (2, b"y")), None]


@pytest.mark.parametrize("seed", ["1", "12345"])
def test_lane_for_is_the_same_in_another_process(seed):
    here = [lane_for(k, n) for k in STABLE_KEYS for n in (2, 3, 7)]
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run(
        [sys.executable, "-c", CHECK_SCRIPT, repr(STABLE_KEYS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT,
    )
    assert out.stdout.strip() == repr(here)


def test_keys_spread_over_lanes_and_survive_a_lane_count_change():
    placed = {key: lane_for(key, 4) for key in KEYS}
    assert set(placed.values()) == {0, 1, 2, 3}
    # Rendezvous hashing: adding a fifth lane only moves keys onto the new lane.
    for key, lane in placed.items():
        assert lane_for(key, 5) in (lane, 4)


def test_unhashable_by_value_keys_are_refused(shared_pool):
    with pytest.raises(TypeError, match="key"):
        shared_pool.options(key=object()).submit(_policy_tasks.index, 1)
