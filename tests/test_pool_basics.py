"""WorkerPool as a drop-in Executor: submit, map, futures, threads, start methods."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from concurrent.futures import Executor, Future

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import _tasks
from _tasks import WAIT
from memwise import WorkerPool
from memwise.errors import RemoteTraceback, TaskTimeout, WorkerCrashed

# --------------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------------


def test_is_an_executor(shared_pool):
    assert isinstance(shared_pool, Executor)
    assert shared_pool.workers == 2
    future = shared_pool.submit(_tasks.square, 7)
    assert isinstance(future, Future)
    assert future.result(WAIT) == 49


def test_submit_passes_args_and_kwargs(shared_pool):
    assert shared_pool.submit(_tasks.add, 2, y=3).result(WAIT) == 5
    assert shared_pool.submit(_tasks.with_kwargs, 1, b=2).result(WAIT) == (1, 2, None)


def test_a_function_taking_timeout_goes_through_partial(shared_pool):
    fn = functools.partial(_tasks.with_kwargs, timeout=5)
    assert shared_pool.submit(fn, 1).result(WAIT) == (1, 0, 5)


def test_task_runs_in_a_worker_process(shared_pool):
    import os

    assert shared_pool.submit(_tasks.getpid).result(WAIT) != os.getpid()


def test_workers_run_tasks_in_parallel(shared_pool, tmp_path):
    # Each task waits until the other has started: this completes only with two processes
    # running at once.
    futures = [shared_pool.submit(_tasks.rendezvous, str(tmp_path), 2) for _ in range(2)]
    pids = {f.result(WAIT) for f in futures}
    assert len(pids) == 2


def test_many_tasks(shared_pool):
    futures = [shared_pool.submit(_tasks.square, i) for i in range(2000)]
    assert [f.result(WAIT) for f in futures] == [i * i for i in range(2000)]


def test_submit_from_many_threads(shared_pool):
    results: dict[int, list[int]] = {}

    def client(n: int) -> None:
        futures = [shared_pool.submit(_tasks.add, n, i) for i in range(300)]
        results[n] = [f.result(WAIT) for f in futures]

    threads = [threading.Thread(target=client, args=(n * 1000,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert results == {n * 1000: [n * 1000 + i for i in range(300)] for n in range(4)}


def test_futures_work_with_as_completed_and_callbacks(shared_pool):
    seen = []
    done = threading.Event()
    futures = [shared_pool.submit(_tasks.square, i) for i in range(20)]
    futures[-1].add_done_callback(lambda f: (seen.append(f.result()), done.set()))
    got = {f.result() for f in concurrent.futures.as_completed(futures, timeout=WAIT)}
    assert got == {i * i for i in range(20)}
    assert done.wait(WAIT)
    assert seen == [19 * 19]


def test_exception_comes_back_with_remote_traceback(shared_pool):
    future = shared_pool.submit(_tasks.raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        future.result(WAIT)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_value_error" in cause.tb
    assert "boom" in cause.tb
    # The pool is unaffected.
    assert shared_pool.submit(_tasks.square, 3).result(WAIT) == 9


def test_lambda_and_closure_go_through_cloudpickle(shared_pool):
    offset = 10

    def closure(x):
        return x + offset

    assert shared_pool.submit(lambda x: x * 3, 4).result(WAIT) == 12
    assert shared_pool.submit(closure, 1).result(WAIT) == 11
    assert list(shared_pool.map(closure, range(5))) == [10, 11, 12, 13, 14]
    assert list(shared_pool.map(lambda x, y: x * y, [1, 2], [3, 4])) == [3, 8]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workers": 0}, "workers"), ({"workers": 1, "retries": -1}, "retries")],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorkerPool(**kwargs)


# --------------------------------------------------------------------------------------------
# map
# --------------------------------------------------------------------------------------------


def test_map_keeps_input_order(shared_pool):
    # Early items take longest, so they finish last.
    delays = [0.2, 0.15, 0.1, 0.05, 0.0, 0.0]
    results = shared_pool.map(_tasks.sleep_then, range(6), delays, chunksize=1)
    assert list(results) == [0, 1, 2, 3, 4, 5]


def test_map_over_several_iterables(shared_pool):
    assert list(shared_pool.map(_tasks.add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    assert list(shared_pool.map(_tasks.add3, range(3), range(3), range(3))) == [0, 3, 6]
    # Like the builtin map, the shortest iterable ends the map.
    assert list(shared_pool.map(_tasks.add, range(10), range(3))) == [0, 2, 4]


def test_map_accepts_any_iterable(shared_pool):
    assert list(shared_pool.map(_tasks.square, (x for x in range(5)))) == [0, 1, 4, 9, 16]
    assert list(shared_pool.map(_tasks.square, {3: "a"})) == [9]


@pytest.mark.parametrize("chunksize", [None, 1])
def test_map_of_nothing(shared_pool, chunksize):
    assert list(shared_pool.map(_tasks.square, [], chunksize=chunksize)) == []
    assert list(shared_pool.map(_tasks.add, [], [], chunksize=chunksize)) == []


def test_map_with_explicit_chunksize_runs_each_chunk_in_one_worker(shared_pool):
    results = list(shared_pool.map(_tasks.counted, range(40), chunksize=5))
    assert len(results) == 40
    for start in range(0, 40, 5):
        chunk = results[start : start + 5]
        # One process ran the whole chunk, its items one after the other.
        assert len({pid for pid, _ in chunk}) == 1
        counts = [n for _, n in chunk]
        assert counts == list(range(counts[0], counts[0] + 5))


def test_map_batches_automatically(shared_pool):
    results = list(shared_pool.map(_tasks.counted, range(1000)))
    assert len(results) == 1000
    # Without a chunksize, a large input is still sent in batches: the first items run
    # back to back in one worker.
    (pid0, n0), (pid1, n1) = results[:2]
    assert pid0 == pid1
    assert n1 == n0 + 1


@pytest.mark.parametrize("chunksize", [0, -3])
def test_map_rejects_bad_chunksize(shared_pool, chunksize):
    with pytest.raises(ValueError, match="chunksize"):
        shared_pool.map(_tasks.square, range(3), chunksize=chunksize)


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map_raises_at_the_failing_item(shared_pool, chunksize):
    results = shared_pool.map(_tasks.fail_at, range(10), [5] * 10, chunksize=chunksize)
    got = []
    with pytest.raises(ValueError, match="item 5 is bad") as info:
        for value in results:
            got.append(value)
    assert got == [0, 1, 2, 3, 4]
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_map_timeout(shared_pool, tmp_path):
    release = tmp_path / "release"
    results = shared_pool.map(_tasks.block, [tmp_path / "pid"], [release], timeout=0.5, chunksize=1)
    try:
        with pytest.raises(concurrent.futures.TimeoutError):
            next(results)
    finally:
        # Let the task end (if it started at all) so the shared pool is idle again.
        _tasks.write_atomic(release, "")
    assert shared_pool.submit(_tasks.square, 2).result(WAIT) == 4


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    items=st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=300),
    chunksize=st.one_of(st.none(), st.integers(min_value=1, max_value=50)),
)
def test_map_equals_builtin_map(shared_pool, items, chunksize):
    assert list(shared_pool.map(_tasks.square, items, chunksize=chunksize)) == list(
        map(_tasks.square, items)
    )


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    xs=st.lists(st.integers(), max_size=50),
    ys=st.lists(st.integers(), max_size=50),
)
def test_map_of_two_iterables_equals_builtin_map(shared_pool, xs, ys):
    assert list(shared_pool.map(_tasks.add, xs, ys)) == list(map(_tasks.add, xs, ys))


# --------------------------------------------------------------------------------------------
# start methods
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_spawn_start_method(tmp_path):
    with WorkerPool(
        1,
        start_method="spawn",
        initializer=_tasks.set_state,
        initargs=("spawned",),
    ) as pool:
        assert pool.submit(_tasks.square, 6).result(WAIT) == 36
        assert pool.submit(_tasks.get_state).result(WAIT) == "spawned"
        assert list(pool.map(_tasks.add, range(20), range(20))) == list(range(0, 40, 2))
        assert pool.submit(lambda x: -x, 5).result(WAIT) == -5
        with pytest.raises(ValueError, match="spawned boom"):
            pool.submit(_tasks.raise_value_error, "spawned boom").result(WAIT)


def test_a_long_task_does_not_hold_up_later_tasks(tmp_path):
    with WorkerPool(2) as pool:
        # Quick tasks first, so that the pool has learned tasks are short.
        for f in [pool.submit(_tasks.square, i) for i in range(500)]:
            f.result(WAIT)
        release = tmp_path / "release"
        long_task = pool.submit(_tasks.block, tmp_path / "pid", release)
        _tasks.read_pid(tmp_path / "pid")
        try:
            # One worker is free: every task submitted now must complete while the long
            # one is still running, none may wait for it.
            later = [pool.submit(_tasks.square, i) for i in range(20)]
            _, not_done = concurrent.futures.wait(later, timeout=10)
            assert not not_done, f"{len(not_done)} of 20 tasks waited for the long task"
        finally:
            _tasks.write_atomic(release, "")
        long_task.result(WAIT)


def test_cancel_a_queued_future(tmp_path):
    with WorkerPool(1) as pool:
        release = tmp_path / "release"
        running = pool.submit(_tasks.block, tmp_path / "pid", release)
        _tasks.read_pid(tmp_path / "pid")
        cancelled = pool.submit(_tasks.touch, tmp_path / "cancelled-ran")
        after = pool.submit(_tasks.square, 3)
        assert cancelled.cancel()
        assert not running.cancel()  # already running
        _tasks.write_atomic(release, "")
        assert running.result(WAIT) == _tasks.read_pid(tmp_path / "pid")
        assert after.result(WAIT) == 9
        done, _ = concurrent.futures.wait([cancelled], timeout=5)
        assert done == {cancelled}
        assert not (tmp_path / "cancelled-ran").exists()


@pytest.mark.timeout(45)
def test_snapshot_counts():
    with WorkerPool(1) as pool:
        fresh = pool.snapshot()
        assert (fresh.submitted, fresh.done, fresh.failed) == (0, 0, 0)
        for i in range(3):
            assert pool.submit(_tasks.square, i).result(WAIT) == i * i
        with pytest.raises(ValueError):
            pool.submit(_tasks.raise_value_error, "counted").result(WAIT)
        with pytest.raises(WorkerCrashed):
            pool.submit(_tasks.exit_with, 1).result(WAIT)
        with pytest.raises(TaskTimeout):
            pool.options(timeout=0.5).submit(_tasks.hang).result(WAIT)
        snapshot = pool.snapshot()
        assert snapshot.submitted == 6
        assert snapshot.done == 3
        assert snapshot.failed == 3  # raised, crashed, timed out
        assert snapshot.restarts == 2  # the crash and the timeout
        assert snapshot.timed_out == 1


def test_tasks_submitted_along_with_a_long_one_do_not_wait_for_it(tmp_path):
    with WorkerPool(2) as pool:
        for f in [pool.submit(_tasks.square, i) for i in range(500)]:
            f.result(WAIT)
        release = tmp_path / "release"
        # A burst of quick tasks with one long task in the middle, all submitted before the
        # long one starts: however the pool batches them, the free worker must run every
        # quick one while the long one blocks.
        before = [pool.submit(_tasks.square, i) for i in range(30)]
        long_task = pool.submit(_tasks.block, tmp_path / "pid", release)
        after = [pool.submit(_tasks.square, i) for i in range(10)]
        try:
            _, not_done = concurrent.futures.wait(before + after, timeout=10)
            assert not not_done, f"{len(not_done)} quick tasks waited for the long task"
        finally:
            _tasks.write_atomic(release, "")
        long_task.result(WAIT)


def test_submit_passes_every_keyword_to_the_function(shared_pool):
    # Executor contract: keywords belong to the function, even ones named like memwise options.
    future = shared_pool.submit(
        _tasks.keywords, timeout=5, key="k", priority=3, coalesce="c", memory="1 MiB"
    )
    assert future.result(WAIT) == {
        "timeout": 5,
        "key": "k",
        "priority": 3,
        "coalesce": "c",
        "memory": "1 MiB",
    }


def test_options_are_a_separate_path(shared_pool):
    bound = shared_pool.options(key="a", priority=2)
    assert bound.task_options.key == "a"
    assert bound.options(priority=5).task_options.priority == 5
    assert bound.task_options.priority == 2  # refining makes a copy
    assert bound.submit(_tasks.keywords, timeout=1).result(WAIT) == {"timeout": 1}
    with pytest.raises(ValueError, match="timeout"):
        shared_pool.options(timeout=0)


@pytest.mark.parametrize("trim", [True, False])
def test_trim_runs_after_every_task_only_when_asked(trim):
    with WorkerPool(1, trim=trim, initializer=_tasks.count_trims) as pool:
        counts = [pool.submit(_tasks.trims_so_far).result(WAIT) for _ in range(3)]
    # The count a task sees is that of the tasks before it: trim runs between tasks.
    assert counts == ([0, 1, 2] if trim else [0, 0, 0])


def test_start_method_fork_forks_workers_from_this_process():
    with WorkerPool(1, start_method="fork") as pool:
        assert pool.submit(_tasks.parent_pid).result(WAIT) == os.getpid()
        assert pool.submit(_tasks.square, 7).result(WAIT) == 49
    with WorkerPool(1) as pool:  # the default on Linux: a forkserver is their parent
        assert pool.submit(_tasks.parent_pid).result(WAIT) != os.getpid()
