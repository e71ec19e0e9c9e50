"""``WorkerPool(backend="ray")`` on a real local Ray cluster (started once for this module).

The executor contract and the crash behaviour are checked on both backends (parametrized), and
what only the Ray backend does (actors per lane, Ray's errors mapped) on Ray alone.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import pytest

import _ray
import _tasks
from _tasks import WAIT
from memwise import Recycle, WorkerPool
from memwise.errors import (
    BrokenPool,
    ClosedError,
    SerializationError,
    TaskTimeout,
    WorkerCrashed,
    WorkerInitError,
)
from memwise.pool.queue import lane_for

pytestmark = [
    pytest.mark.timeout(240),  # room for a second start of the local cluster on a loaded machine
    pytest.mark.skipif(not _ray.installed(), reason="Ray is not installed (the 'ray' extra)"),
]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    """A local cluster, started before any test of the module (so the stray-process check of
    each test sees its processes as already there), and stopped after the last."""
    if not _ray.installed():
        yield None
        return
    with _ray.local_cluster() as ray:
        yield ray


@pytest.fixture(params=["local", "ray"])
def backend(request):
    return request.param


def make_pool(backend, workers=2, **options):
    return WorkerPool(workers, backend=backend, **options)


# --------------------------------------------------------------------------------------------
# The executor contract, on both backends
# --------------------------------------------------------------------------------------------


def test_submit_map_and_keywords(backend):
    with make_pool(backend) as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        assert pool.submit(_tasks.add, 2, y=3).result(WAIT) == 5
        assert pool.submit(_tasks.with_kwargs, 1, b=2, timeout=3).result(WAIT) == (1, 2, 3)
        assert pool.options(timeout=WAIT).submit(_tasks.square, 7).result(WAIT) == 49
        assert list(pool.map(_tasks.square, range(50))) == [x * x for x in range(50)]
        assert list(pool.map(_tasks.add, [1, 2], [10, 20])) == [11, 22]
        assert pool.submit(_tasks.getpid).result(WAIT) != os.getpid()


def test_exception_comes_back_as_itself(backend):
    with make_pool(backend) as pool:
        future = pool.submit(_tasks.raise_value_error, "bad input")
        with pytest.raises(ValueError, match="bad input") as info:
            future.result(WAIT)
        assert "raise_value_error" in str(info.value.__cause__)  # the remote traceback
        with pytest.raises(ValueError, match="item 3 is bad"):
            list(pool.map(_tasks.fail_at, range(6), [3] * 6))
        assert pool.submit(_tasks.square, 3).result(WAIT) == 9


def test_imap_is_ordered_and_bounded(backend):
    pulled = []

    def items():
        for i in range(30):
            pulled.append(i)
            yield i

    with make_pool(backend) as pool:
        results = pool.imap(_tasks.square, items(), prefetch=3)
        assert next(results) == 0
        assert len(pulled) <= 4  # three outstanding, plus the one just consumed
        assert list(results) == [i * i for i in range(1, 30)]


def test_submit_from_many_threads(backend):
    with make_pool(backend) as pool:
        futures: list[concurrent.futures.Future] = []
        lock = threading.Lock()

        def submit_some(base):
            for i in range(20):
                future = pool.submit(_tasks.square, base + i)
                with lock:
                    futures.append(future)

        threads = [threading.Thread(target=submit_some, args=(100 * t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(f.result(WAIT) for f in futures) == sorted(
            (100 * t + i) ** 2 for t in range(4) for i in range(20)
        )


def test_keyed_tasks_run_in_order_on_their_lane(backend):
    with make_pool(backend) as pool:
        futures = {key: [] for key in ("a", "b", "c", 7)}
        for i in range(10):
            for key, found in futures.items():
                found.append(pool.options(key=key).submit(_tasks.counted, i))
        for found in futures.values():
            pids, counts = zip(*(f.result(WAIT) for f in found), strict=True)
            assert len(set(pids)) == 1  # one lane, one worker
            assert list(counts) == sorted(counts)  # in submission order
        lanes = {key: lane_for(key, 2) for key in futures}
        by_lane = {lanes[key]: found[0].result(WAIT)[0] for key, found in futures.items()}
        for key, found in futures.items():
            assert found[0].result(WAIT)[0] == by_lane[lanes[key]]


def test_latest_wins_cancels_queued_tasks(backend, tmp_path):
    with make_pool(backend, workers=1) as pool:
        blocker = pool.submit(_tasks.block, tmp_path / "pid", tmp_path / "go")
        _tasks.read_pid(tmp_path / "pid")
        previews = [pool.options(coalesce="preview").submit(_tasks.square, i) for i in range(5)]
        _tasks.touch(tmp_path / "go")
        blocker.result(WAIT)
        assert previews[-1].result(WAIT) == 16
        assert all(f.cancelled() for f in previews[:-1])


# --------------------------------------------------------------------------------------------
# Crashes, retries, timeouts: per future, on both backends
# --------------------------------------------------------------------------------------------


def test_a_crash_fails_only_its_task(backend, tmp_path):
    with make_pool(backend) as pool:
        pid = pool.options(key="x").submit(_tasks.getpid).result(WAIT)
        crashed = pool.options(key="x").submit(_tasks.exit_with, 3)
        after = pool.options(key="x").submit(_tasks.getpid)
        with pytest.raises(WorkerCrashed) as info:
            crashed.result(WAIT)
        assert info.value.pid == pid
        assert "exit_with" in str(info.value) and str(pid) in str(info.value)
        assert after.result(WAIT) != pid  # queued behind it: not lost, run by a replacement
        assert pool.snapshot().restarts == 1


def test_retries_rerun_a_crashed_task(backend, tmp_path):
    marker = tmp_path / "crashed"
    with make_pool(backend, retries=1) as pool:
        pid = pool.submit(_tasks.crash_first_time, marker).result(WAIT)
        assert pid != int(marker.read_text())
    with make_pool(backend, retries=0) as pool, pytest.raises(WorkerCrashed, match="retries=0"):
        pool.submit(_tasks.crash_and_log, tmp_path / "log").result(WAIT)


def test_timeout_kills_and_replaces_the_worker(backend):
    with make_pool(backend, workers=1) as pool:
        pid = pool.submit(_tasks.getpid).result(WAIT)
        with pytest.raises(TaskTimeout, match="timeout of 1"):
            pool.options(timeout=1).submit(_tasks.hang).result(WAIT)
        assert _tasks.wait_gone([pid]) == set()
        assert pool.submit(_tasks.getpid).result(WAIT) != pid


def test_shutdown_with_timeout_kills_what_still_runs(backend, tmp_path):
    pool = make_pool(backend, workers=1)
    future = pool.submit(_tasks.block, tmp_path / "pid", tmp_path / "never")
    _tasks.read_pid(tmp_path / "pid")
    pool.shutdown(timeout=1)
    with pytest.raises(BrokenPool, match="timeout=1"):
        future.result(WAIT)


def test_a_shut_down_pool_refuses_work_with_closed_error(backend):
    pool = make_pool(backend, workers=1)
    pool.shutdown()
    with pytest.raises(ClosedError, match="shut"):
        pool.submit(_tasks.square, 2)
    with pytest.raises(ClosedError, match="shut down"):
        pool.resize(2)
    with pytest.raises(ClosedError, match="shut down"):
        pool.subscribe(lambda event: None)


def test_initializer_failure_raises_at_construction(backend):
    with pytest.raises(WorkerInitError, match="ValueError"):
        make_pool(backend, workers=1, initializer=_tasks.raise_value_error, initargs=("no",))


def test_recycling_by_task_count(backend):
    with make_pool(backend, workers=1, recycle=Recycle(tasks=3)) as pool:
        pids = [pool.submit(_tasks.getpid).result(WAIT) for _ in range(7)]
        assert [len(set(pids[i : i + 3])) for i in (0, 3)] == [1, 1]
        assert len(set(pids)) == 3
        assert pool.snapshot().recycles["tasks"] >= 2


# --------------------------------------------------------------------------------------------
# Ray only
# --------------------------------------------------------------------------------------------


def test_unpicklable_argument_fails_its_future_only(ray_cluster):
    with make_pool("ray") as pool:
        with pytest.raises(SerializationError):
            pool.submit(_tasks.identity, threading.Lock()).result(WAIT)
        assert pool.submit(_tasks.square, 2).result(WAIT) == 4


def test_an_argument_the_actor_cannot_rebuild_fails_only_its_task(ray_cluster, tmp_path):
    with make_pool("ray", workers=1) as pool:
        blocker = pool.submit(_tasks.block, tmp_path / "pid", tmp_path / "go")
        _tasks.read_pid(tmp_path / "pid")
        ahead = [pool.submit(_tasks.square, i) for i in range(8)]  # the lane's pipeline is full
        # So these three wait here, and go to the actor together, in one batch.
        batch = [
            pool.submit(_tasks.square, 5),
            pool.submit(_tasks.identity, _tasks.Unloadable()),
            pool.submit(_tasks.square, 6),
        ]
        _tasks.touch(tmp_path / "go")
        blocker.result(WAIT)
        assert [f.result(WAIT) for f in ahead] == [i * i for i in range(8)]
        assert (batch[0].result(WAIT), batch[2].result(WAIT)) == (25, 36)
        with pytest.raises(SerializationError):
            batch[1].result(WAIT)
        assert pool.snapshot().restarts == 0


def test_workers_are_actors_one_per_lane(ray_cluster):
    with make_pool("ray") as pool:
        snapshot = pool.snapshot()
        assert snapshot.max_workers == 2
        assert [w.lane for w in snapshot.workers] == [0, 1]
        pids = {w.pid for w in snapshot.workers}
        assert len(pids) == 2 and os.getpid() not in pids
        assert all(w.state == "idle" for w in snapshot.workers)


def test_recycling_by_private_memory(ray_cluster):
    with make_pool("ray", workers=1, recycle=Recycle(memory="1 MiB")) as pool:
        pids = [pool.submit(_tasks.getpid).result(WAIT) for _ in range(3)]
        assert len(set(pids)) == 3  # every worker holds more than 1 MiB of its own
        assert pool.snapshot().recycles["memory"] >= 2


def test_snapshot_and_events_follow_the_tasks(ray_cluster):
    events = []
    with make_pool("ray") as pool:
        subscription = pool.subscribe(events.append)
        pool.submit(_tasks.square, 3).result(WAIT)
        with pytest.raises(ValueError):
            pool.submit(_tasks.raise_value_error, "x").result(WAIT)
        snapshot = pool.snapshot()
        assert (snapshot.submitted, snapshot.done, snapshot.failed) == (2, 1, 1)
        assert snapshot.durations.count == 1
        assert snapshot.state == "running"
        subscription.close()
    kinds = [e.kind for e in events]
    assert kinds[:3] == ["task_submitted", "task_started", "task_finished"]
    assert "task_failed" in kinds


def test_resize_moves_only_the_changed_lanes(ray_cluster):
    with make_pool("ray") as pool:
        pool.resize(3)
        assert pool.workers == 3
        keys = range(30)
        pids = {k: pool.options(key=k).submit(_tasks.getpid).result(WAIT) for k in keys}
        assert len(set(pids.values())) == 3
        pool.resize(1)
        assert [pool.options(key=k).submit(_tasks.square, k).result(WAIT) for k in keys] == [
            k * k for k in keys
        ]
        assert len(pool.snapshot().workers) == 1


def test_options_the_backend_cannot_honour_are_refused(ray_cluster):
    with pytest.raises(ValueError, match="min_workers"):
        WorkerPool(2, min_workers=0, backend="ray")
    with pytest.raises(ValueError, match="unknown backend"):
        WorkerPool(2, backend="dask")
