"""Per-task timeouts: the overdue task's worker is killed and replaced, the future fails."""

from __future__ import annotations

import concurrent.futures

import pytest

import _tasks
from _tasks import WAIT
from memwise import WorkerPool
from memwise.errors import TaskTimeout

pytestmark = pytest.mark.timeout(45)


def test_pool_timeout_kills_a_hung_task():
    with WorkerPool(1, timeout=0.5) as pool:
        # The pool's limit is for the hung task; a loaded machine may take longer to say its pid.
        pid = pool.options(timeout=WAIT).submit(_tasks.getpid).result(WAIT)
        future = pool.submit(_tasks.hang)
        with pytest.raises(TaskTimeout) as info:
            future.result(WAIT)
        error = info.value
        assert isinstance(error, concurrent.futures.TimeoutError)
        assert "hang" in str(error)  # names the task
        assert "0.5" in str(error)  # and the limit
        assert str(pid) in str(error)  # and the worker
        assert not _tasks.wait_gone([pid])  # the worker was killed
        # The pool is healthy afterwards, on a new worker.
        patient = pool.options(timeout=WAIT)
        assert patient.submit(_tasks.getpid).result(WAIT) != pid
        assert patient.submit(_tasks.square, 3).result(WAIT) == 9
        snapshot = pool.snapshot()
        assert snapshot.timed_out == 1
        assert snapshot.restarts == 1


def test_submit_timeout_kills_a_hung_task():
    with WorkerPool(1) as pool:
        future = pool.options(timeout=0.5).submit(_tasks.hang)
        with pytest.raises(TaskTimeout):
            future.result(WAIT)
        assert pool.submit(_tasks.square, 3).result(WAIT) == 9
        assert pool.snapshot().timed_out == 1


def test_submit_timeout_overrides_the_pool_timeout():
    with WorkerPool(1, timeout=0.2) as pool:
        # Sleeps longer than the pool's limit, but its own limit is generous.
        assert (
            pool.options(timeout=WAIT).submit(_tasks.sleep_then, "slow", 0.6).result(WAIT) == "slow"
        )
        # timeout=None lifts the limit for this call.
        assert (
            pool.options(timeout=None).submit(_tasks.sleep_then, "free", 0.6).result(WAIT) == "free"
        )
        assert pool.snapshot().timed_out == 0


def test_fast_tasks_are_unaffected_by_the_timeout():
    with WorkerPool(2, timeout=WAIT) as pool:
        futures = [pool.submit(_tasks.square, i) for i in range(200)]
        assert [f.result(WAIT) for f in futures] == [i * i for i in range(200)]
        assert pool.snapshot().timed_out == 0


def test_tasks_queued_behind_a_hung_task_still_run():
    with WorkerPool(1) as pool:
        hung = pool.options(timeout=0.5).submit(_tasks.hang)
        queued = [pool.submit(_tasks.square, i) for i in range(5)]
        with pytest.raises(TaskTimeout):
            hung.result(WAIT)
        assert [f.result(WAIT) for f in queued] == [0, 1, 4, 9, 16]


def test_timeout_of_a_task_pipelined_behind_quick_ones():
    with WorkerPool(1) as pool:
        # Teach the pool that tasks are short so that it sends several to the worker at once.
        for f in [pool.submit(_tasks.square, i) for i in range(500)]:
            f.result(WAIT)
        before = [pool.submit(_tasks.square, i) for i in range(5)]
        hung = pool.options(timeout=0.5).submit(_tasks.hang)
        after = [pool.submit(_tasks.square, i) for i in range(5)]
        assert [f.result(WAIT) for f in before] == [0, 1, 4, 9, 16]
        with pytest.raises(TaskTimeout):
            hung.result(WAIT)
        assert [f.result(WAIT) for f in after] == [0, 1, 4, 9, 16]


def test_timeout_with_the_other_worker_busy(tmp_path):
    with WorkerPool(2) as pool:
        release = tmp_path / "release"
        busy = pool.submit(_tasks.block, tmp_path / "pid", release)
        _tasks.read_pid(tmp_path / "pid")
        hung = pool.options(timeout=0.5).submit(_tasks.hang)
        with pytest.raises(TaskTimeout):
            hung.result(WAIT)
        _tasks.write_atomic(release, "")
        # The timeout killed only the hung task's worker.
        assert busy.result(WAIT) == _tasks.read_pid(tmp_path / "pid")


def test_async_run_with_timeout():
    import asyncio

    async def main():
        with WorkerPool(1) as pool:
            with pytest.raises(TaskTimeout):
                await pool.options(timeout=0.5).run(_tasks.hang)
            return await pool.run(_tasks.square, 5)

    assert asyncio.run(main()) == 25


def test_timed_out_tasks_are_not_retried(tmp_path):
    # A retry would only time out again: retries are for crashes.
    log = tmp_path / "attempts"
    with WorkerPool(1, retries=2) as pool:
        with pytest.raises(TaskTimeout):
            # Long enough for a loaded machine to start the task and log the attempt.
            pool.options(timeout=3.0).submit(_tasks.log_and_hang, log).result(WAIT)
        assert pool.submit(_tasks.square, 2).result(WAIT) == 4
    assert len(log.read_text().split()) == 1
