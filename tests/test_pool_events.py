"""pool.subscribe(): typed events off the supervisor thread, in order per task; logging."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections import defaultdict

import pytest

import _tasks
from _tasks import WAIT, wait_until
from memwise import WorkerPool
from memwise.errors import ClosedError, TaskTimeout, WorkerCrashed
from memwise.pool.events import PoolEvent
from memwise.pool.subscribers import EventHub

pytestmark = pytest.mark.timeout(60)

# What one task's events may look like, first to last (one letter per kind).
LETTERS = {
    "task_submitted": "s",
    "task_started": "b",
    "task_retried": "r",
    "task_finished": "f",
    "task_failed": "x",
    "task_timed_out": "t",
    "task_cancelled": "c",
}
LIFE = re.compile(r"s(?:br)*b[fxt]|sc")


class Recorder:
    """A subscriber that keeps every event and the thread it was called on."""

    def __init__(self) -> None:
        self.events: list[PoolEvent] = []
        self.threads: set[str] = set()

    def __call__(self, event: PoolEvent) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]

    def lives(self) -> dict[int, str]:
        lives: dict[int, str] = defaultdict(str)
        for event in self.events:
            if event.kind in LETTERS:
                assert event.task_id is not None
                lives[event.task_id] += LETTERS[event.kind]
        return dict(lives)


def test_every_task_event_in_order_under_retries_kills_and_timeouts(tmp_path):
    recorder = Recorder()
    with WorkerPool(2, retries=1) as pool:
        subscription = pool.subscribe(recorder)
        fine = [pool.submit(_tasks.square, i) for i in range(20)]
        retried = pool.submit(_tasks.crash_first_time, tmp_path / "marker")
        crashed = pool.submit(_tasks.sigkill_self)
        raised = pool.submit(_tasks.raise_value_error, "boom")
        timed_out = pool.options(timeout=0.5).submit(_tasks.hang)
        blocker = pool.submit(_tasks.block, tmp_path / "pid", tmp_path / "go")
        killed_pid = _tasks.read_pid(tmp_path / "pid")
        os.kill(killed_pid, signal.SIGKILL)  # retried once, then blocks again: release it
        _tasks.read_pid(tmp_path / "pid")
        _tasks.write_atomic(tmp_path / "go", "")
        assert [f.result(WAIT) for f in fine] == [i * i for i in range(20)]
        assert retried.result(WAIT) != _tasks.read_pid(tmp_path / "marker")
        with pytest.raises(WorkerCrashed):
            crashed.result(WAIT)
        with pytest.raises(ValueError):
            raised.result(WAIT)
        with pytest.raises(TaskTimeout):
            timed_out.result(WAIT)
        blocker.result(WAIT)
    # shutdown(wait=True) returned after the last event was delivered.
    assert recorder.kinds()[-1] == "pool_shutdown"
    assert subscription.dropped == 0
    assert recorder.threads and not any("supervisor" in name for name in recorder.threads)
    lives = recorder.lives()
    assert len(lives) == 25
    for task_id, life in lives.items():
        assert LIFE.fullmatch(life), (task_id, life)
    by_future = {
        "retried": (retried, "sbrbf"),
        "crashed": (crashed, "sbrbx"),  # retries=1: it runs twice and fails
        "raised": (raised, "sbx"),
        "timed_out": (timed_out, "sbt"),
    }
    ids = [event.task_id for event in recorder.events if event.kind == "task_submitted"]
    order = [*([None] * 20), "retried", "crashed", "raised", "timed_out", "blocker"]
    for name, task_id in zip(order, ids, strict=True):
        if name in by_future:
            assert lives[task_id] == by_future[name][1], name
    # Worker deaths: the two crashes (first runs), the second run of sigkill_self, the
    # timeout kill and the killed blocker; each followed by a replacement in its lane.
    died = [event for event in recorder.events if event.kind == "worker_died"]
    assert len(died) == 5
    assert killed_pid in {event.pid for event in died}
    assert all(event.exitcode == -signal.SIGKILL for event in died)
    replaced = [event for event in recorder.events if event.kind == "worker_replaced"]
    assert len(replaced) >= 4
    finished = [event for event in recorder.events if event.kind == "task_finished"]
    assert all(event.seconds is not None and event.lane in (0, 1) for event in finished)


def test_worker_lifecycle_and_cancelled_tasks(tmp_path):
    recorder = Recorder()
    with WorkerPool(1) as pool:
        pool.subscribe(recorder)
        blocker = pool.submit(_tasks.block, tmp_path / "pid", tmp_path / "go")
        _tasks.read_pid(tmp_path / "pid")
        latest = [pool.options(coalesce="view").submit(_tasks.square, i) for i in range(3)]
        cancelled = pool.submit(_tasks.square, 9)
        assert cancelled.cancel()
        _tasks.write_atomic(tmp_path / "go", "")
        blocker.result(WAIT)
        assert latest[-1].result(WAIT) == 4
        assert wait_until(lambda: "task_cancelled" in recorder.kinds())
    reasons = sorted(e.reason for e in recorder.events if e.kind == "task_cancelled")
    assert reasons == ["cancelled", "coalesced", "coalesced"]
    for life in recorder.lives().values():
        assert LIFE.fullmatch(life), life


def test_events_of_worker_start_and_recycle():
    recorder = Recorder()
    from memwise.pool.policies import Recycle

    with WorkerPool(1, recycle=Recycle(tasks=2)) as pool:
        pool.subscribe(recorder)
        pids = [pool.submit(_tasks.getpid).result(WAIT) for _ in range(3)]
    recycled = [e for e in recorder.events if e.kind == "worker_recycled"]
    assert [(e.pid, e.reason) for e in recycled] == [(pids[0], "tasks")]
    replaced = next(e for e in recorder.events if e.kind == "worker_replaced")
    assert replaced.pid == pids[2] and replaced.reason == "tasks"
    # Its successor may have started ahead as a warm spare (and another spare may start while
    # the third task waits for it): follow the successor's own pid.
    started, ready = (
        next(e for e in recorder.events if e.kind == kind and e.pid == pids[2])
        for kind in ("worker_started", "worker_ready")
    )
    assert recorder.events.index(started) < recorder.events.index(ready)


def test_a_raising_subscriber_is_logged_and_dropped_and_the_pool_goes_on(caplog):
    good = Recorder()

    def bad(event: PoolEvent) -> None:
        raise RuntimeError("subscriber bug")

    with WorkerPool(1) as pool:
        subscription = pool.subscribe(bad)
        pool.subscribe(good)
        with caplog.at_level(logging.ERROR, logger="memwise"):
            assert [pool.submit(_tasks.square, i).result(WAIT) for i in range(5)] == [
                0,
                1,
                4,
                9,
                16,
            ]
            assert wait_until(
                lambda: len(good.lives()) == 5 and "f" in good.lives()[max(good.lives())]
            )
        subscription.join(WAIT)  # its delivery thread ended
    errors = [r for r in caplog.records if r.name.startswith("memwise") and r.exc_info]
    assert len(errors) == 1 and "subscriber bug" in str(errors[0].exc_info[1])
    assert all(LIFE.fullmatch(life) for life in good.lives().values())


def test_unsubscribe_stops_delivery():
    recorder = Recorder()
    with WorkerPool(1) as pool:
        pool.subscribe(recorder)
        pool.submit(_tasks.square, 2).result(WAIT)
        assert wait_until(lambda: "task_finished" in recorder.kinds())
        pool.unsubscribe(recorder)
        seen = len(recorder.events)
        pool.submit(_tasks.square, 3).result(WAIT)
    assert len(recorder.events) == seen


def test_a_slow_subscriber_holds_a_bounded_buffer_and_counts_the_rest():
    hub = EventHub(capacity=5)
    entered, release = threading.Event(), threading.Event()
    delivered = []

    def slow(event: PoolEvent) -> None:
        entered.set()
        release.wait(WAIT)
        delivered.append(event)

    subscription = hub.subscribe(slow)
    hub.emit(PoolEvent("pool_resized", 0.0, reason="first"))
    assert entered.wait(WAIT)  # the first event is in the callback, the buffer is empty
    for i in range(20):
        hub.emit(PoolEvent("pool_resized", 0.0, reason=str(i)))
    assert subscription.dropped == 15
    release.set()
    hub.close(wait=True)
    assert [e.reason for e in delivered] == ["first", "0", "1", "2", "3", "4"]


def test_a_worker_kill_is_logged_with_pid_signal_and_task(caplog, tmp_path):
    with WorkerPool(1) as pool, caplog.at_level(logging.INFO, logger="memwise"):
        future = pool.submit(_tasks.block, tmp_path / "pid", tmp_path / "go")
        pid = _tasks.read_pid(tmp_path / "pid")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerCrashed):
            future.result(WAIT)
    deaths = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(deaths) == 1
    message = deaths[0].getMessage()
    assert deaths[0].name.startswith("memwise.")
    assert str(pid) in message and "SIGKILL" in message and "_tasks.block" in message


def test_the_library_installs_no_log_handler():
    assert logging.getLogger("memwise").handlers == []
    assert logging.getLogger("memwise.pool.deaths").handlers == []


def test_subscribe_after_shutdown_is_refused_and_starts_no_thread():
    pool = WorkerPool(1)
    pool.shutdown()
    before = threading.active_count()
    with pytest.raises(ClosedError, match="shut down"):
        pool.subscribe(lambda event: None)
    assert threading.active_count() == before
