"""``WorkerPool.call``: a task whose calling thread waits on the worker's reply itself.

Every guarantee of a submitted task holds for a call: errors, crashes and retries, timeouts,
keys, shutdown, a caller interrupted while it waits, and many threads calling at once.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import numpy as np
import pytest

import _tasks
from _tasks import WAIT
from memwise import Recycle, WorkerPool
from memwise.errors import BrokenPool, SerializationError, TaskTimeout, WorkerCrashed

pytestmark = pytest.mark.timeout(60)


def test_call_returns_the_result_and_raises_the_error():
    with WorkerPool(2) as pool:
        assert pool.call(_tasks.add, 2, 3) == 5
        assert pool.call(_tasks.with_kwargs, 1, b=2, timeout=3) == (1, 2, 3)
        with pytest.raises(ValueError, match="bad input"):
            pool.call(_tasks.raise_value_error, "bad input")
        for x in range(50):  # one after another, as a request handler would
            assert pool.call(_tasks.square, x) == x * x
        snapshot = pool.snapshot()
        assert (snapshot.submitted, snapshot.done, snapshot.failed) == (53, 52, 1)


def test_call_runs_in_a_worker_process():
    with WorkerPool(1) as pool:
        assert pool.call(_tasks.getpid) != os.getpid()
        assert pool.call(_tasks.getpid) == pool.submit(_tasks.getpid).result(WAIT)


def test_a_crash_in_a_call_fails_it_and_the_pool_goes_on():
    with WorkerPool(1) as pool:
        pid = pool.call(_tasks.getpid)
        with pytest.raises(WorkerCrashed) as info:
            pool.call(_tasks.sigkill_self)
        assert info.value.pid == pid and info.value.exitcode == -signal.SIGKILL
        assert pool.call(_tasks.getpid) != pid
        assert pool.call(_tasks.square, 7) == 49
        assert pool.snapshot().restarts == 1


def test_a_crashed_call_is_retried(tmp_path):
    marker = tmp_path / "crashed"
    with WorkerPool(1, retries=1) as pool:
        pool.call(_tasks.getpid)  # a worker is idle: the call goes to it directly
        second = pool.call(_tasks.crash_first_time, marker)
        assert second != int(marker.read_text())


def test_a_call_that_overruns_its_timeout_is_killed():
    with WorkerPool(1) as pool:
        pid = pool.call(_tasks.getpid)
        with pytest.raises(TaskTimeout):
            pool.options(timeout=0.5).call(_tasks.hang)
        assert _tasks.wait_gone([pid]) == set()
        assert pool.call(_tasks.square, 3) == 9


def test_calls_with_a_key_run_in_that_keys_lane():
    with WorkerPool(2) as pool:
        pids = {pool.options(key="camera-1").call(_tasks.getpid) for _ in range(20)}
        assert len(pids) == 1


def call_from_threads(pool: WorkerPool, threads: int, calls: int) -> None:
    """``calls`` calls from each of ``threads`` threads at once; each gets its own results."""
    results: dict[int, list[int]] = {}

    def caller(n: int) -> None:
        results[n] = [pool.call(_tasks.add, n, i) for i in range(calls)]

    started = [threading.Thread(target=caller, args=(n,)) for n in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join(WAIT)
    assert results == {n: [n + i for i in range(calls)] for n in range(threads)}


def test_many_threads_calling_at_once_each_get_their_own_results():
    with WorkerPool(2) as pool:
        call_from_threads(pool, threads=8, calls=40)
        assert pool.snapshot().done == 8 * 40


def test_large_arguments_and_results_cross_in_shared_memory():
    data = np.arange(1_000_000, dtype=np.float64)
    with WorkerPool(1) as pool:
        for _ in range(3):
            doubled = pool.call(np.multiply, data, 2.0)
            assert np.array_equal(doubled, data * 2.0)


def test_shutdown_waits_for_a_call_in_flight(tmp_path):
    with WorkerPool(1) as pool:
        pool.call(_tasks.getpid)
        outcome: list[object] = []
        caller = threading.Thread(
            target=lambda: outcome.append(pool.call(_tasks.sleep_then, "slept", 0.5))
        )
        caller.start()
        assert _tasks.wait_until(lambda: pool.snapshot().workers[0].state == "busy")
        pool.shutdown(wait=True)
        caller.join(WAIT)
    assert outcome == ["slept"]


def test_a_pool_that_breaks_fails_the_call_in_flight():
    pool = WorkerPool(1)
    try:
        pool.call(_tasks.getpid)
        outcome: list[BaseException] = []

        def call_and_keep_the_error() -> None:
            try:
                pool.call(_tasks.hang)
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call_and_keep_the_error)
        caller.start()
        assert _tasks.wait_until(lambda: pool.snapshot().workers[0].state == "busy")
        pool.shutdown(wait=True, timeout=0.2)  # the call overruns: the pool is terminated
        caller.join(WAIT)
        assert len(outcome) == 1 and isinstance(outcome[0], BrokenPool)
    finally:
        pool.shutdown(wait=True, timeout=1)


class Interrupted(Exception):
    pass


def test_a_caller_interrupted_while_waiting_leaves_the_pool_whole(tmp_path):
    """The interrupted call still completes in its worker; nothing is lost or stuck."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with WorkerPool(1) as pool:
            pool.call(_tasks.getpid)
            release = tmp_path / "release"
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
            timer.start()
            with pytest.raises(Interrupted):
                pool.call(_tasks.block, tmp_path / "pid", release)
            timer.join()
            _tasks.touch(release)
            assert pool.call(_tasks.square, 6) == 36  # queued behind the interrupted call
            assert _tasks.wait_until(lambda: pool.snapshot().done == 3)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_call_on_a_closed_pool_is_refused():
    pool = WorkerPool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.call(_tasks.square, 2)


def test_calls_from_threads_in_a_pool_that_retires_workers_after_tasks():
    """A worker due to retire after a call must not be lent to the next call before the pool
    has accounted for the first (it would never run the second)."""
    with WorkerPool(3, recycle=Recycle(tasks=4, spares=1)) as pool:
        call_from_threads(pool, threads=3, calls=40)
        assert pool.snapshot().recycles["tasks"] >= 3 * 40 // 4 - 3


@pytest.mark.parametrize("how", ["call", "submit"])
def test_an_error_the_parent_cannot_unpickle_fails_that_task_alone(tmp_path, how):
    (tmp_path / "worker_only.py").write_text("class Failure(Exception):\n    pass\n")
    with WorkerPool(1) as pool:
        pool.call(_tasks.getpid)
        with pytest.raises(SerializationError, match="could not unpickle the error"):
            if how == "call":
                pool.call(_tasks.raise_from, str(tmp_path), "worker_only")
            else:
                pool.submit(_tasks.raise_from, str(tmp_path), "worker_only").result(WAIT)
        assert pool.call(_tasks.square, 4) == 16
        assert pool.submit(_tasks.square, 5).result(WAIT) == 25


def test_calls_while_the_pool_is_resized():
    """Calls go on while lanes drain and open: every result right, no worker lost."""
    stop = threading.Event()

    def resize_until_stopped() -> None:
        sizes = itertools.cycle((1, 3, 2))
        while not stop.is_set():
            pool.resize(next(sizes))
            time.sleep(0.005)  # pacing: let calls run between resizes

    with WorkerPool(3) as pool:
        resizer = threading.Thread(target=resize_until_stopped)
        resizer.start()
        try:
            call_from_threads(pool, threads=4, calls=60)
        finally:
            stop.set()
            resizer.join(WAIT)
        assert pool.call(_tasks.square, 9) == 81
        snapshot = pool.snapshot()
        assert snapshot.restarts == 0 and snapshot.recycles.get("resize", 0) > 0
