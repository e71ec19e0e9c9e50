"""pool.stats(): totals and one row per worker slot."""

from __future__ import annotations

import concurrent.futures

import pytest

import _policy_tasks
from _policy_tasks import WAIT
from _tasks import raise_value_error, read_pid, wait_until, write_atomic
from memwise import WorkerPool
from memwise.pool.policies import Recycle
from memwise.pool.queue import slot_for

pytestmark = pytest.mark.timeout(60)

TOTALS = ("submitted", "queued", "running", "done", "failed", "cancelled", "restarts", "timeouts")
SLOT_FIELDS = {
    "slot",
    "pid",
    "state",
    "key",
    "tasks_done",
    "private",
    "rss",
    "restarts",
    "recycles",
}


def test_stats_of_a_fresh_pool():
    with WorkerPool(2) as pool:
        stats = pool.stats()
        pids = [row["pid"] for row in stats["slots"]]
        assert all(isinstance(pid, int) for pid in pids) and len(set(pids)) == 2
    assert all(stats[name] == 0 for name in TOTALS)
    assert stats["workers"] == 2
    assert stats["recycles"] == {}
    assert [row["slot"] for row in stats["slots"]] == [0, 1]
    for row in stats["slots"]:
        assert set(row) == SLOT_FIELDS
        assert row["state"] == "ready"
        assert row["key"] is None
        assert row["tasks_done"] == 0
        assert row["restarts"] == 0
        assert row["recycles"] == {}
        # Private memory is a part of resident memory, and a Python process has some.
        assert 0 < row["private"] <= row["rss"]


def test_stats_while_busy_and_after(tmp_path):
    key = "clip-1"
    slot = slot_for(key, 2)
    with WorkerPool(2, recycle=Recycle(tasks=3)) as pool:
        first_pid = pool.stats()["slots"][slot]["pid"]
        blocker = pool.options(key=key).submit(
            _policy_tasks.block, tmp_path / "pid", tmp_path / "go"
        )
        assert read_pid(tmp_path / "pid") == first_pid
        queued = [pool.options(key=key).submit(_policy_tasks.index, i) for i in range(2)]
        assert wait_until(lambda: pool.stats()["queued"] == 2)
        busy = pool.stats()
        write_atomic(tmp_path / "go", "")
        concurrent.futures.wait([blocker, *queued], timeout=WAIT)
        failing = pool.options(key=key).submit(raise_value_error, "boom")
        with pytest.raises(ValueError):
            failing.result(WAIT)
        after = pool.stats()

    assert busy["submitted"] == 3
    assert busy["running"] == 1
    assert busy["queued"] == 2
    row = busy["slots"][slot]
    assert (row["pid"], row["state"], row["key"]) == (first_pid, "busy", key)
    assert busy["slots"][1 - slot]["state"] == "ready"

    assert after["submitted"] == 4
    assert (after["done"], after["failed"], after["cancelled"]) == (3, 1, 0)
    assert (after["queued"], after["running"]) == (0, 0)
    # The slot's first worker ran three tasks and was recycled; its successor ran one.
    assert after["recycles"] == {"tasks": 1}
    row = after["slots"][slot]
    assert row["recycles"] == {"tasks": 1}
    assert row["pid"] != first_pid
    assert row["tasks_done"] == 1
    assert row["restarts"] == 0
    assert after["slots"][1 - slot]["recycles"] == {}


def test_stats_counts_cancelled_tasks(tmp_path):
    with WorkerPool(1) as pool:
        blocker = pool.submit(_policy_tasks.block, tmp_path / "pid", tmp_path / "go")
        read_pid(tmp_path / "pid")
        superseded = [pool.options(coalesce="tag").submit(_policy_tasks.index, i) for i in range(3)]
        concurrent.futures.wait(superseded[:-1], timeout=WAIT)
        write_atomic(tmp_path / "go", "")
        blocker.result(WAIT)
        superseded[-1].result(WAIT)
        stats = pool.stats()
    assert (stats["submitted"], stats["done"], stats["cancelled"]) == (4, 2, 2)


def test_stats_slot_key_is_the_key_of_the_last_task():
    # A row's key is that of its worker's current task or, when idle, of its last one; calls
    # made one at a time reach idle workers directly from the submitting thread.
    with WorkerPool(1) as pool:
        for key in ("a", "b"):
            pool.options(key=key).submit(_policy_tasks.index, 1).result(WAIT)
            assert pool.stats()["slots"][0]["key"] == key
