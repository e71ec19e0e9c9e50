"""WorkerPool holds to the documented ``concurrent.futures.Executor`` contract.

Written from the Python documentation of ``concurrent.futures`` (Executor.submit, map and
shutdown; Future; wait and as_completed; ProcessPoolExecutor's initializer and initargs), for
both start methods a pool uses: forkserver (the Linux default) and spawn (elsewhere). Where
memwise promises more than the contract (a killed worker fails only its task), the test says so.
"""

from __future__ import annotations

import multiprocessing
import traceback
import weakref
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Executor,
    Future,
    as_completed,
    wait,
)

import pytest

import _contract_tasks as tasks
import _tasks
from _tasks import WAIT
from memwise import WorkerCrashed, WorkerPool

pytestmark = pytest.mark.timeout(60)

METHODS = ["forkserver", "spawn"]


@pytest.fixture(scope="module", params=METHODS)
def pool(request):
    """One healthy 2-worker pool per start method, shared by the non-destructive tests."""
    with WorkerPool(2, start_method=request.param) as pool:
        yield pool


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


# -- submit and Future -----------------------------------------------------------------------


def test_is_an_executor_and_submit_returns_a_future(pool):
    assert isinstance(pool, Executor)
    future = pool.submit(_tasks.add, 2, y=3)  # keywords go to the function
    assert isinstance(future, Future)
    assert future.result(WAIT) == 5
    assert future.done() and not future.cancelled() and future.exception() is None


def test_submit_passes_every_keyword_to_the_function(pool):
    # Including the names of memwise's own per-task options, which go through options().
    names = {"key": 1, "timeout": 2, "priority": 3, "coalesce": 4, "memory": 5}
    assert pool.submit(_tasks.keywords, **names).result(WAIT) == names
    assert pool.options(timeout=WAIT).submit(_tasks.keywords, timeout=5).result(WAIT) == {
        "timeout": 5
    }


def test_done_callbacks_run_once_with_the_future(pool):
    seen: list[Future] = []
    future = pool.submit(_tasks.square, 4)
    future.add_done_callback(seen.append)
    assert future.result(WAIT) == 16
    assert _tasks.wait_until(lambda: seen == [future])
    future.add_done_callback(seen.append)  # added when done: called at once
    assert seen == [future, future]


def test_an_exception_is_raised_by_result_with_the_worker_traceback(pool):
    future = pool.submit(tasks.fail, "no such frame")
    with pytest.raises(ValueError, match="no such frame") as info:
        future.result(WAIT)
    assert isinstance(future.exception(), ValueError)
    printed = "".join(traceback.format_exception(info.value))
    assert "in fail" in printed  # where it was raised, in the worker
    assert "_contract_tasks.py" in printed


# -- map -------------------------------------------------------------------------------------


def test_map_yields_results_in_input_order(pool):
    assert list(pool.map(_tasks.square, range(50))) == [x * x for x in range(50)]
    assert list(pool.map(_tasks.square, range(50), chunksize=7)) == [x * x for x in range(50)]
    assert list(pool.map(_tasks.square, [])) == []


def test_map_with_several_iterables_stops_at_the_shortest(pool):
    assert list(pool.map(_tasks.add, range(10), range(100, 104))) == [100, 102, 104, 106]


def test_map_raises_an_items_exception_when_that_item_is_reached(pool):
    results = pool.map(tasks.square_or_fail, range(10), [4] * 10, chunksize=3)
    assert [next(results) for _ in range(4)] == [0, 1, 4, 9]
    with pytest.raises(ValueError, match="item 4 is bad"):
        next(results)


def test_map_timeout_counts_from_the_call(pool, tmp_path):
    release = tmp_path / "release"
    results = pool.map(tasks.wait_file, [str(release)], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    _tasks.write_atomic(release, "")  # let the worker go


# -- wait and as_completed -------------------------------------------------------------------


def test_wait_and_as_completed(pool, tmp_path):
    release = tmp_path / "release"
    quick = pool.submit(_tasks.square, 3)
    slow = pool.submit(tasks.wait_file, str(release))
    done, not_done = wait([quick, slow], timeout=WAIT, return_when=FIRST_COMPLETED)
    assert quick in done and slow in not_done
    failing = pool.submit(tasks.fail, "first exception")
    done, not_done = wait([slow, failing], timeout=WAIT, return_when=FIRST_EXCEPTION)
    assert failing in done and slow in not_done
    _tasks.write_atomic(release, "")
    done, not_done = wait([quick, slow, failing], timeout=WAIT, return_when=ALL_COMPLETED)
    assert not not_done
    futures = [pool.submit(_tasks.square, x) for x in range(8)]
    assert sorted(f.result() for f in as_completed(futures, timeout=WAIT)) == [
        x * x for x in range(8)
    ]


# -- references released ---------------------------------------------------------------------


def _alive_after_drop(results) -> int:
    alive = 0
    for obj in results:
        ref = weakref.ref(obj)
        del obj  # no reference cycles: the object goes now unless something else holds it
        alive += ref() is not None
    return alive


def test_map_releases_each_result_once_yielded(pool):
    # Whole chunks arrive at once; the items the caller has consumed must not stay in them.
    assert _alive_after_drop(pool.map(tasks.box, range(12), chunksize=4)) == 0


def test_imap_releases_each_result_once_yielded(pool):
    assert _alive_after_drop(pool.imap(tasks.box, range(12))) == 0
    assert _alive_after_drop(pool.imap(tasks.box, range(12), ordered=False)) == 0


def test_a_done_future_dropped_by_the_caller_is_freed(pool):
    future = pool.submit(tasks.box, 1)
    assert future.result(WAIT) == tasks.Box(1)
    ref = weakref.ref(future)
    del future
    assert _tasks.wait_until(lambda: ref() is None)


# -- shutdown --------------------------------------------------------------------------------


def test_shutdown_cancel_futures_cancels_only_the_unstarted(pool, tmp_path):
    # The last tests on the shared pool (its context manager's shutdown then does nothing).
    futures = [pool.submit(_tasks.sleep_then, x, 0.01) for x in range(6)]
    running = [pool.submit(_tasks.block, tmp_path / f"{n}.pid", tmp_path / "go") for n in (1, 2)]
    for n in (1, 2):
        _tasks.wait_for(tmp_path / f"{n}.pid")  # both workers busy, for good
    assert not wait(futures, timeout=WAIT).not_done
    queued = [pool.submit(_tasks.square, x) for x in range(5)]
    assert not any(f.running() or f.done() for f in queued)
    pool.shutdown(wait=False, cancel_futures=True)
    # Before the running tasks end, not when a worker would have freed up for them.
    assert _tasks.wait_until(lambda: all(f.cancelled() for f in queued))
    assert not any(f.done() for f in running)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(_tasks.square, 1)
    _tasks.write_atomic(tmp_path / "go", "")
    pool.shutdown(wait=True)  # a second call is harmless; it waits for the running tasks
    assert all(isinstance(f.result(0), int) for f in running)
    assert [f.result(0) for f in futures] == list(range(6))


# -- a worker killed during map --------------------------------------------------------------


def test_a_worker_killed_during_map_fails_that_item_only(method):
    with WorkerPool(1, start_method=method) as pool:
        results = pool.map(tasks.killed_at, range(8), [5] * 8, chunksize=1)
        assert [next(results) for _ in range(5)] == [0, 1, 4, 9, 16]
        with pytest.raises(WorkerCrashed, match="SIGKILL"):
            next(results)
        # ProcessPoolExecutor breaks for good here; memwise replaces the worker.
        assert list(pool.map(_tasks.square, range(4))) == [0, 1, 4, 9]


# -- initializer and initargs ----------------------------------------------------------------


def test_initargs_carry_queues_events_locks_and_manager_proxies(method):
    ctx = multiprocessing.get_context(method)
    with ctx.Manager() as manager:
        queue, event, lock, proxy = ctx.Queue(), ctx.Event(), ctx.Lock(), manager.list()
        with WorkerPool(
            1, start_method=method, initializer=tasks.keep_all, initargs=(queue, event, lock, proxy)
        ) as pool:
            event.set()
            assert sorted(pool.map(tasks.use_all, range(6), chunksize=1)) == list(range(6))
            assert sorted(queue.get(timeout=WAIT) for _ in range(6)) == list(range(6))
            assert sorted(proxy) == list(range(6))
            # A worker started later (a replacement) is handed the same objects.
            with pytest.raises(WorkerCrashed):
                pool.submit(_tasks.sigkill_self).result(WAIT)
            assert pool.submit(tasks.report, "again").result(WAIT)
            assert queue.get(timeout=WAIT)[1] == "again"
        queue.close()
        queue.join_thread()
