"""Recycling: workers replaced after N tasks, past a memory limit, at a hard ceiling mid-task,
and on a change of key; each recycle counted with its reason."""

from __future__ import annotations

import pytest

import _import_probe
import _policy_tasks
from _policy_tasks import WAIT, MiB, block, getpid, wait_for, write_atomic
from _tasks import wait_until
from memwise import WorkerPool
from memwise.errors import WorkerCrashed
from memwise.memory import parse_size
from memwise.pool.crew import SPARE
from memwise.pool.events import PoolEvent
from memwise.pool.policies import Recycle
from memwise.pool.snapshot import WorkerSnapshot

pytestmark = pytest.mark.timeout(60)


def runs_of(values):
    """Collapse consecutive equal values: [a, a, b, a] -> [a, b, a]."""
    collapsed = []
    for value in values:
        if not collapsed or collapsed[-1] != value:
            collapsed.append(value)
    return collapsed


def test_recycle_after_n_tasks():
    with WorkerPool(1, recycle=Recycle(tasks=3)) as pool:
        pids = [pool.submit(getpid).result(WAIT) for _ in range(9)]
        snapshot = pool.snapshot()
    assert [len(set(pids[i : i + 3])) for i in range(0, 9, 3)] == [1, 1, 1]
    assert len(set(pids)) == 3
    assert snapshot.recycles == {"tasks": 3}
    assert snapshot.workers[0].recycles == {"tasks": 3}
    assert snapshot.restarts == 0  # a recycle is not a crash


def test_a_spare_imports_the_module_of_the_running_tasks_before_it_takes_a_lane():
    # The spare starts while the first worker runs its two (slow) tasks and imports their
    # module before it reports ready; the first worker imported it for its first task.
    with WorkerPool(1, recycle=Recycle(tasks=2, spares=1)) as pool:
        results = [pool.submit(_import_probe.stamp, 1.5) for _ in range(3)]
        (first_pid, first_age), _, (spare_pid, spare_age) = [f.result(WAIT) for f in results]
    assert first_pid != spare_pid
    assert first_age < 1.0 < spare_age  # the spare had it for most of the first worker's life


def test_recycle_after_n_tasks_in_a_burst():
    # Submitted all at once, tasks must not be pipelined past a worker's last task.
    with WorkerPool(2, recycle=Recycle(tasks=4)) as pool:
        pids = [f.result(WAIT) for f in [pool.submit(getpid) for _ in range(16)]]
        snapshot = pool.snapshot()
    assert max(pids.count(pid) for pid in set(pids)) <= 4
    assert len(set(pids)) >= 4
    # Exactly the processes that reached the count were retired.
    assert snapshot.recycles == {"tasks": sum(pids.count(pid) == 4 for pid in set(pids))}


LIMIT = "60 MiB"
TASK_BYTES = 5 * MiB


def test_memory_limit_keeps_a_leaking_worker_bounded_and_loses_no_task():
    with WorkerPool(2, recycle=Recycle(memory=LIMIT)) as pool:
        futures = [pool.submit(_policy_tasks.leak, TASK_BYTES) for _ in range(40)]
        results = [f.result(WAIT) for f in futures]
        snapshot = pool.snapshot()
    assert len(results) == 40  # every task ran and returned
    peak = max(private for _, private in results)
    assert peak <= parse_size(LIMIT) + TASK_BYTES, f"a worker reached {peak / MiB:.1f} MiB"
    # Without recycling, 20 leaks per worker would reach ~100 MiB: the limit did the work.
    assert snapshot.recycles.get("memory", 0) >= 2
    assert len({pid for pid, _ in results}) >= 3
    assert snapshot.failed == 0
    assert snapshot.restarts == 0


def test_hard_memory_kills_a_runaway_task_retries_then_fails():
    ceiling = "100 MiB"
    recycle = Recycle(hard_memory=ceiling, poll=0.02)
    with WorkerPool(1, retries=1, recycle=recycle) as pool:
        first_pid = pool.submit(getpid).result(WAIT)
        future = pool.submit(_policy_tasks.balloon, 10 * MiB, 1024 * MiB)
        with pytest.raises(WorkerCrashed) as info:
            future.result(WAIT)
        message = str(info.value)
        assert "memory limit" in message
        assert "100" in message  # the ceiling
        assert "tried 2 time(s)" in message  # the first run and one retry
        assert info.value.pid != first_pid
        snapshot = pool.snapshot()
        assert snapshot.recycles == {"hard_memory": 2}
        assert snapshot.workers[0].recycles == {"hard_memory": 2}
        # The pool goes on with a fresh worker.
        assert pool.submit(getpid).result(WAIT) not in (first_pid, info.value.pid)


def test_on_key_change_gives_a_fresh_worker_per_key_run():
    keys = ["a", "a", "b", "b", "b", "a", "c", "c"]
    with WorkerPool(1, recycle=Recycle(on_key_change=True)) as pool:
        futures = [pool.options(key=k).submit(getpid) for k in keys]
        pids = [f.result(WAIT) for f in futures]
        snapshot = pool.snapshot()
    assert_fresh_pid_per_key_run(keys, pids)
    assert snapshot.recycles == {"key": 3}


def test_on_key_change_one_call_at_a_time():
    # Calls made one by one reach an idle worker directly from the submitting thread.
    keys = ["a", "b", "b", "a", "a", "a"]
    with WorkerPool(1, recycle=Recycle(on_key_change=True)) as pool:
        pids = [pool.options(key=k).submit(getpid).result(WAIT) for k in keys]
        assert pool.snapshot().recycles == {"key": 2}
    assert_fresh_pid_per_key_run(keys, pids)


def assert_fresh_pid_per_key_run(keys, pids):
    pairs = list(zip(keys, pids, strict=True))
    # Same pid while the key stays the same; a new one, never seen before, when it changes.
    assert len(runs_of(pairs)) == len(runs_of(keys))
    assert len(set(pids)) == len(runs_of(keys))


def test_a_warm_spare_takes_over_the_lane_of_a_recycled_worker(tmp_path):
    """``Recycle(spares=1)``: while work is in flight a spare process is started ahead, and
    when the lane's worker is recycled the spare takes its lane, with no process start then."""
    events: list[PoolEvent] = []
    with WorkerPool(1, recycle=Recycle(tasks=2, spares=1)) as pool:
        pool.subscribe(events.append)
        busy = pool.submit(block, tmp_path / "pid", tmp_path / "go")
        wait_for(tmp_path / "pid")
        queued = pool.submit(getpid)  # work waits: the supervisor starts a spare

        def spare_ready() -> WorkerSnapshot | None:
            spares = [w for w in pool.snapshot().workers if w.lane == SPARE]
            return spares[0] if spares and spares[0].state == "idle" else None

        assert wait_until(lambda: spare_ready() is not None)
        spare = spare_ready()
        assert spare is not None
        write_atomic(tmp_path / "go", "")
        pids = [busy.result(WAIT), queued.result(WAIT), pool.submit(getpid).result(WAIT)]
    first = pids[0]
    assert pids == [first, first, spare.pid]  # recycled after two tasks; the third in the spare
    kinds = [(e.kind, e.lane, e.pid) for e in events]
    recycled = kinds.index(("worker_recycled", 0, first))
    assert kinds.index(("worker_started", SPARE, spare.pid)) < recycled
    replaced = [e for e in events if e.kind == "worker_replaced"]
    assert [(e.lane, e.pid, e.reason) for e in replaced] == [(0, spare.pid, "tasks")]
    # Nothing had to start in lane 0 once its worker was recycled: the spare was there.
    assert ("worker_started", 0) not in [(kind, lane) for kind, lane, _ in kinds[recycled:]]
