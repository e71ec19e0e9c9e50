"""Workers dying: killed, segfault, os._exit; retries; replacement; restart storms."""

from __future__ import annotations

import concurrent.futures
import os
import signal

import pytest

import _tasks
from _tasks import WAIT
from memwise import WorkerPool
from memwise.errors import BrokenPool, WorkerCrashed, WorkerInitError

pytestmark = pytest.mark.timeout(60)


def start_blocked(pool, tmp_path, name="blocked"):
    """Submit a task that reports its worker's pid and blocks; return (future, pid)."""
    pid_path = tmp_path / f"{name}.pid"
    future = pool.submit(_tasks.block, pid_path, tmp_path / f"{name}.never")
    return future, _tasks.read_pid(pid_path)


def kill_running_task(pool, tmp_path):
    """Kill the worker of a task mid-task; return the task's future and the dead worker's pid."""
    future, pid = start_blocked(pool, tmp_path)
    os.kill(pid, signal.SIGKILL)
    return future, pid


def test_sigkill_mid_task_fails_only_that_task(tmp_path):
    with WorkerPool(1) as pool:
        future, pid = kill_running_task(pool, tmp_path)
        with pytest.raises(WorkerCrashed) as info:
            future.result(WAIT)
        error = info.value
        assert error.pid == pid
        assert error.exitcode == -signal.SIGKILL
        assert str(pid) in str(error)
        assert "SIGKILL" in str(error)
        assert "block" in str(error)  # names the task
        assert "block" in error.task
        # A replacement worker started and the pool still works.
        new_pid = pool.submit(_tasks.getpid).result(WAIT)
        assert new_pid != pid
        assert pool.submit(_tasks.square, 5).result(WAIT) == 25
        assert pool.snapshot().restarts == 1


def test_segfault_in_a_task(tmp_path):
    with WorkerPool(1) as pool:
        pid = pool.submit(_tasks.getpid).result(WAIT)
        future = pool.submit(_tasks.segfault)
        with pytest.raises(WorkerCrashed) as info:
            future.result(WAIT)
        assert info.value.exitcode == -signal.SIGSEGV
        assert info.value.pid == pid
        assert "SIGSEGV" in str(info.value)
        assert str(pid) in str(info.value)
        assert "segfault" in str(info.value)
        assert pool.submit(_tasks.square, 4).result(WAIT) == 16


def test_os_exit_in_a_task():
    with WorkerPool(1) as pool:
        pid = pool.submit(_tasks.getpid).result(WAIT)
        future = pool.submit(_tasks.exit_with, 3)
        with pytest.raises(WorkerCrashed) as info:
            future.result(WAIT)
        assert info.value.exitcode == 3
        assert info.value.pid == pid
        assert "exit code 3" in str(info.value)
        assert str(pid) in str(info.value)
        assert pool.submit(_tasks.square, 4).result(WAIT) == 16


def test_crash_does_not_disturb_a_task_on_another_worker(tmp_path):
    with WorkerPool(2) as pool:
        release = tmp_path / "release"
        survivor = pool.submit(_tasks.block, tmp_path / "survivor.pid", release)
        survivor_pid = _tasks.read_pid(tmp_path / "survivor.pid")
        victim, victim_pid = start_blocked(pool, tmp_path, "victim")
        assert victim_pid != survivor_pid
        os.kill(victim_pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            victim.result(WAIT)
        _tasks.write_atomic(release, "")
        assert survivor.result(WAIT) == survivor_pid


def test_queued_tasks_are_not_lost_when_a_worker_dies(tmp_path):
    with WorkerPool(1) as pool:
        future, pid = start_blocked(pool, tmp_path)
        queued = [pool.submit(_tasks.square, i) for i in range(10)]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            future.result(WAIT)
        assert [f.result(WAIT) for f in queued] == [i * i for i in range(10)]
        assert pool.snapshot().restarts == 1


def test_tasks_pipelined_behind_the_crashed_one_are_not_lost(tmp_path):
    with WorkerPool(1) as pool:
        # Many quick tasks teach the pool that tasks are short, so it sends the next ones
        # to the worker before it is free; they must survive their worker's death.
        for f in [pool.submit(_tasks.square, i) for i in range(500)]:
            f.result(WAIT)
        future, pid = start_blocked(pool, tmp_path)
        queued = [pool.submit(_tasks.getpid) for _ in range(20)]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            future.result(WAIT)
        pids = {f.result(WAIT) for f in queued}
        assert pid not in pids


def test_idle_worker_death_is_repaired_and_loses_nothing():
    with WorkerPool(1) as pool:
        pid = pool.submit(_tasks.getpid).result(WAIT)
        os.kill(pid, signal.SIGKILL)
        # Submitted right away, perhaps before the pool noticed the death: the task never
        # ran in the dead worker, so it must not fail.
        future = pool.submit(_tasks.getpid)
        new_pid = future.result(WAIT)
        assert new_pid != pid
        assert pool.submit(_tasks.square, 3).result(WAIT) == 9


def test_idle_worker_death_after_it_is_noticed():
    with WorkerPool(1) as pool:
        pid = pool.submit(_tasks.getpid).result(WAIT)
        os.kill(pid, signal.SIGKILL)
        assert _tasks.wait_until(lambda: pool.snapshot().restarts == 1)
        assert pool.submit(_tasks.getpid).result(WAIT) != pid
        assert pool.snapshot().restarts == 1


# --------------------------------------------------------------------------------------------
# retries
# --------------------------------------------------------------------------------------------


def test_retries_rerun_a_crashed_task_on_a_fresh_worker(tmp_path):
    marker = tmp_path / "crashed-once"
    with WorkerPool(1, retries=1) as pool:
        result_pid = pool.submit(_tasks.crash_first_time, marker).result(WAIT)
        crashed_pid = _tasks.read_pid(marker)
        assert result_pid != crashed_pid
        snapshot = pool.snapshot()
        assert snapshot.restarts == 1
        assert snapshot.done == 1
        assert snapshot.failed == 0


def test_retries_exhausted_raise_worker_crashed(tmp_path):
    log = tmp_path / "attempts"
    with WorkerPool(1, retries=2) as pool:
        future = pool.submit(_tasks.crash_and_log, log)
        with pytest.raises(WorkerCrashed) as info:
            future.result(WAIT)
        attempts = [int(line) for line in log.read_text().split()]
        assert len(attempts) == 3  # the first run and two retries
        assert len(set(attempts)) == 3  # each on a fresh worker
        assert info.value.pid == attempts[-1]
        assert "SIGKILL" in str(info.value)
        assert pool.submit(_tasks.square, 2).result(WAIT) == 4


def test_retried_task_keeps_its_place_before_queued_tasks(tmp_path):
    marker = tmp_path / "crashed-once"
    with WorkerPool(1, retries=1) as pool:
        first = pool.submit(_tasks.crash_first_time, marker)
        rest = [pool.submit(_tasks.square, i) for i in range(5)]
        first.result(WAIT)
        assert [f.result(WAIT) for f in rest] == [0, 1, 4, 9, 16]


# --------------------------------------------------------------------------------------------
# restart storm
# --------------------------------------------------------------------------------------------


def test_restart_storm_breaks_the_pool(tmp_path):
    marker = tmp_path / "first-start"
    # The first worker initializes fine; every replacement dies in its initializer.
    with WorkerPool(1, initializer=_tasks.init_once_then_fail, initargs=(marker,)) as pool:
        future, _pid = start_blocked(pool, tmp_path)
        queued = [pool.submit(_tasks.square, i) for i in range(3)]
        os.kill(_pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            future.result(WAIT)
        for f in queued:
            with pytest.raises(BrokenPool) as info:
                f.result(WAIT)
        error = info.value
        assert isinstance(error, concurrent.futures.BrokenExecutor)
        assert isinstance(error.__cause__, WorkerInitError)
        assert "fails in every worker but the first" in str(error)
        with pytest.raises(BrokenPool):
            pool.submit(_tasks.square, 1)
        with pytest.raises(BrokenPool):
            pool.map(_tasks.square, range(3))
