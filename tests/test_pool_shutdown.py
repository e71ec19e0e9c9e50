"""Shutting a pool down: waiting, cancelling, the context manager, and what comes after."""

from __future__ import annotations

import concurrent.futures
import gc
import threading

import pytest

import _tasks
from _tasks import WAIT
from memwise import WorkerPool

pytestmark = pytest.mark.timeout(45)


def worker_pids(pool, tmp_path) -> set[int]:
    """The pids of all the pool's workers, found by running one task on each at once."""
    futures = [
        pool.submit(_tasks.rendezvous, str(tmp_path / "rv"), pool.workers)
        for _ in range(pool.workers)
    ]
    (tmp_path / "rv").mkdir(exist_ok=True)
    return {f.result(WAIT) for f in futures}


def test_shutdown_waits_for_queued_tasks():
    pool = WorkerPool(1)
    futures = [pool.submit(_tasks.sleep_then, i, 0.01) for i in range(20)]
    pool.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(20))


def test_shutdown_ends_the_workers(tmp_path):
    (tmp_path / "rv").mkdir()
    pool = WorkerPool(2)
    pids = worker_pids(pool, tmp_path)
    assert len(pids) == 2
    pool.shutdown()
    assert not _tasks.wait_gone(pids)


def test_shutdown_cancel_futures(tmp_path):
    pool = WorkerPool(1)
    release = tmp_path / "release"
    running = pool.submit(_tasks.block, tmp_path / "pid", release)
    _tasks.read_pid(tmp_path / "pid")
    queued = [pool.submit(_tasks.touch, tmp_path / f"queued-{i}") for i in range(5)]
    closer = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    closer.start()
    try:
        assert _tasks.wait_until(lambda: all(f.cancelled() for f in queued))
        assert not running.done()
    finally:
        _tasks.write_atomic(release, "")
    # The running task finishes normally, then shutdown returns.
    assert isinstance(running.result(WAIT), int)
    closer.join(WAIT)
    assert not closer.is_alive()
    assert not any(tmp_path.glob("queued-*"))  # no cancelled task ran
    for future in queued:
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(0)


def test_futures_cancelled_by_shutdown_wake_their_waiters(tmp_path):
    pool = WorkerPool(1)
    release = tmp_path / "release"
    running = pool.submit(_tasks.block, tmp_path / "pid", release)
    _tasks.read_pid(tmp_path / "pid")
    queued = [pool.submit(_tasks.square, i) for i in range(5)]
    try:
        pool.shutdown(wait=False, cancel_futures=True)
        assert _tasks.wait_until(lambda: all(f.cancelled() for f in queued))
        # Cancelled futures count as done for wait() and as_completed(): the pool must
        # notify their waiters (CPython's own executors forget to: gh-109934, gh-87893).
        done, _ = concurrent.futures.wait(queued, timeout=5)
        assert done == set(queued)
        assert set(concurrent.futures.as_completed(queued, timeout=5)) == set(queued)
    finally:
        _tasks.write_atomic(release, "")
        running.result(WAIT)
        pool.shutdown()


def test_shutdown_without_wait_returns_at_once(tmp_path):
    pool = WorkerPool(1)
    release = tmp_path / "release"
    running = pool.submit(_tasks.block, tmp_path / "pid", release)
    pid = _tasks.read_pid(tmp_path / "pid")
    queued = pool.submit(_tasks.square, 4)
    # Returns although a task is still blocked: the task waits for a file written below.
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(_tasks.square, 1)
    _tasks.write_atomic(release, "")
    # Work already submitted still completes, then the workers exit on their own.
    assert running.result(WAIT) == pid
    assert queued.result(WAIT) == 16
    assert not _tasks.wait_gone([pid])
    pool.shutdown(wait=True)  # a second shutdown is harmless and waits


def test_submit_after_shutdown_raises():
    pool = WorkerPool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(_tasks.square, 2)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.map(_tasks.square, range(3))
    pool.shutdown()  # idempotent


def test_context_manager(tmp_path):
    (tmp_path / "rv").mkdir()
    with WorkerPool(2) as pool:
        pids = worker_pids(pool, tmp_path)
        futures = [pool.submit(_tasks.sleep_then, i, 0.01) for i in range(10)]
    # Leaving the block waited for every task and ended every worker.
    assert [f.result(0) for f in futures] == list(range(10))
    assert not _tasks.wait_gone(pids)
    with pytest.raises(RuntimeError):
        pool.submit(_tasks.square, 1)


def test_context_manager_on_error_still_shuts_down(tmp_path):
    (tmp_path / "rv").mkdir()
    with pytest.raises(KeyError), WorkerPool(2) as pool:
        pids = worker_pids(pool, tmp_path)
        raise KeyError("user code failed")
    assert not _tasks.wait_gone(pids)


def test_forgotten_pool_is_cleaned_up_when_collected(tmp_path):
    (tmp_path / "rv").mkdir()
    pool = WorkerPool(2)
    pids = worker_pids(pool, tmp_path)
    del pool
    gc.collect()
    assert not _tasks.wait_gone(pids)


def test_shutdown_of_an_idle_pool_with_timeouts_set():
    # Nothing runs: shutdown must not wait for a deadline.
    with WorkerPool(2, timeout=WAIT * 10) as pool:
        assert pool.submit(_tasks.square, 2).result(WAIT) == 4
