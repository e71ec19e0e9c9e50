"""The supervisor: the one thread that owns every worker process of a pool.

User threads never touch a worker. They append commands to ``_incoming`` and poke a wake-up
pipe; the supervisor waits on that pipe, on every worker's connection and process sentinel,
and on the nearest deadline, and does all the rest: start workers, dispatch tasks, collect
results, notice deaths, enforce timeouts, restart. Having a single owner is what makes crash
handling tractable: every case below runs on one thread, in order, with no locks held.

Crash handling, case by case (cf. loky):

- a worker dies while running a task: that task fails with ``WorkerCrashed`` (or is re-run
  when ``retries`` allows); tasks queued behind it on the same worker never started, so they
  go back to the front of the queue untouched; a replacement worker starts in its slot.
- a task overruns its timeout: its worker is killed; the task fails with ``TaskTimeout``.
- a worker fails or hangs in its initializer: during start-up this raises ``WorkerInitError``
  from the pool's constructor; later it counts as a failed start.
- workers keep dying without any task succeeding (5 within 10 s): the pool is broken; every
  pending future fails with one ``BrokenPool`` rather than the pool respawning forever.
"""

from __future__ import annotations

import enum
import math
import os
import pickle
import selectors
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from memwise import _channel, _wire
from memwise.errors import (
    BrokenPool,
    SerializationError,
    TaskTimeout,
    WorkerCrashed,
    WorkerInitError,
)
from memwise.pool import worker as _worker_module
from memwise.pool.context import get_context
from memwise.pool.task import Task

STORM_DEATHS = 5
STORM_SECONDS = 10.0
STOP_GRACE_SECONDS = 5.0
# Tasks are pipelined (sent before the worker is free) only while the typical task is short,
# so that long tasks are never stuck behind each other on one worker while another is idle.
PIPELINE_SECONDS = 0.002
MAX_PIPELINE_DEPTH = 64
# A message sent to a busy worker must fit in the socket buffer, or the supervisor would block
# until that worker finished its task (and deadlock if the worker is sending a large result).
PIPELINE_BYTES = 16 * 1024


@dataclass(frozen=True)
class PoolConfig:
    workers: int
    init_payload: bytes | None
    init_timeout: float
    retries: int
    start_method: str | None


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class Worker:
    """The supervisor's record of one worker process in one slot."""

    def __init__(self, slot: int, process: Any, conn: Any, alive: Any) -> None:
        self.slot = slot
        self.process = process
        self.conn = conn
        self.channel = _channel.channel(conn)
        self.alive = alive
        self.pid: int = process.pid
        self.state = State.STARTING
        self.since = time.monotonic()
        self.outstanding: deque[Task] = deque()
        self.busy_since = 0.0
        self.kill_reason: str | None = None
        self.init_error: BaseException | None = None
        self.tasks_done = 0

    def deadline(self, init_timeout: float) -> float | None:
        if self.kill_reason is not None:
            return None
        if self.state is State.STARTING:
            return self.since + init_timeout
        if self.state is State.STOPPING:
            return self.since + STOP_GRACE_SECONDS
        if self.outstanding and self.outstanding[0].timeout is not None:
            return self.busy_since + self.outstanding[0].timeout
        return None


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class Supervisor:
    """Owns the workers of one pool; see the module docstring."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._ctx = get_context(config.start_method)
        self._lock = threading.Lock()
        self._incoming: deque[Task] = deque()
        # READY workers with nothing to do, lent to submitting threads (see _send_direct_locked).
        self._idle: list[Worker] = []
        self._poked = False
        self._closing = False
        self._cancel_queued = False
        self._broken: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._queue: deque[Task] = deque()
        self._workers: dict[int, Worker] = {}
        self._failures: deque[float] = deque()
        self._service_time: float | None = None
        self._results: list[tuple[Future[Any], Any]] = []
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self.counts = {"submitted": 0, "done": 0, "failed": 0, "restarts": 0, "timeouts": 0}
        self._thread = threading.Thread(target=self._run, name="memwise-supervisor", daemon=True)

    # ----- called from user threads -------------------------------------------------------

    def start(self) -> None:
        """Start the workers and wait until all are ready; raise if any fails to initialize."""
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    def submit(self, task: Task) -> None:
        with self._lock:
            if self._broken is not None:
                raise BrokenPool(f"the pool is broken and accepts no tasks: {self._broken}")
            if self._closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.counts["submitted"] += 1
            if self._idle and not self._incoming:
                self._send_direct_locked(task)
                return
            self._incoming.append(task)
            self._poke_locked()

    def _send_direct_locked(self, task: Task) -> None:
        """Hand ``task`` straight to an idle worker from the submitting thread.

        This is the one exception to "only the supervisor touches workers", and it is narrow:
        the supervisor lends idle workers by listing them in ``_idle`` (only while its queue
        is empty, so nothing is overtaken) and takes them back under the same lock before it
        uses, stops or forgets them. Skipping the hop to the supervisor thread halves the
        latency of a lone call, which is what interactive callers wait for.
        """
        worker = self._idle.pop()
        task.claimed = task.future.set_running_or_notify_cancel()
        worker.busy_since = time.monotonic()
        worker.outstanding.append(task)
        try:
            worker.channel.send(pickle.dumps(("run", [(task.id, task.payload)]), _wire.PROTOCOL))
        except OSError:
            pass  # the worker died; the supervisor re-queues or fails the task with the others
        if task.timeout is not None:
            self._poke_locked()  # the supervisor must start watching the deadline

    def close(self, cancel_futures: bool) -> None:
        with self._lock:
            self._closing = True
            self._cancel_queued = self._cancel_queued or cancel_futures
            self._poke_locked()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def broken(self) -> BaseException | None:
        return self._broken

    def slots(self) -> list[dict[str, Any]]:
        """A snapshot of every worker slot, readable from any thread.

        Values are read without the supervisor's cooperation, so they may be a moment stale.
        """
        rows = []
        for worker in sorted(list(self._workers.values()), key=lambda w: w.slot):
            outstanding = list(worker.outstanding)
            rows.append(
                {
                    "slot": worker.slot,
                    "pid": worker.pid,
                    "state": "busy" if outstanding else worker.state.value,
                    "task": str(outstanding[0]) if outstanding else None,
                    "tasks_done": worker.tasks_done,
                }
            )
        return rows

    def _poke_locked(self) -> None:
        # One byte in the pipe is enough to wake the supervisor; skipping the write while one
        # is pending saves a system call per submit during bursts.
        if not self._poked:
            self._poked = True
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass

    # ----- the supervisor thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._ensure_workers()
            while not self._finished():
                timeout = self._next_timeout()
                for key, _events in self._selector.select(timeout):
                    key.data()
                self._enforce_deadlines()
                self._ensure_workers()
                self._dispatch()
                self._resolve()
        except BaseException as exc:
            self._break(BrokenPool(f"the pool's supervisor failed: {exc!r}"), cause=exc)
        finally:
            self._resolve()
            self._cleanup()

    def _finished(self) -> bool:
        if self._broken is not None:
            return not self._workers
        if not self._closing or self._queue or self._incoming:
            return False
        if any(w.outstanding for w in self._workers.values()):
            return False
        self._stop_idle_workers()
        return not self._workers

    def _on_wake(self) -> None:
        with self._lock:
            self._poked = False
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            if self._incoming:
                self._idle.clear()
                self._queue.extend(self._incoming)
                self._incoming.clear()
            cancel, self._cancel_queued = self._cancel_queued, False
        if cancel:
            for task in self._queue:
                task.future.cancel()
            self._queue.clear()
        self._dispatch()

    # ----- workers -------------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        if self._broken is not None or (self._closing and not self._queue):
            return
        for slot in range(self.config.workers):
            if slot not in self._workers:
                try:
                    self._start_worker(slot)
                except OSError as exc:
                    self._note_failure(WorkerInitError(f"could not start a worker: {exc}"))
                    return

    def _start_worker(self, slot: int) -> None:
        conn, child_conn = self._ctx.Pipe(duplex=True)
        alive_r, alive_w = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=_worker_module.main,
            args=(child_conn, alive_r),
            name=f"memwise-worker-{slot}",
        )
        try:
            process.start()
        finally:
            child_conn.close()
            alive_r.close()
        worker = Worker(slot, process, conn, alive_w)
        self._workers[slot] = worker
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._on_readable(worker))
        self._selector.register(
            process.sentinel, selectors.EVENT_READ, lambda: self._on_exit(worker)
        )
        try:
            worker.channel.send(pickle.dumps(("init", self.config.init_payload), _wire.PROTOCOL))
        except OSError:
            pass  # it died already; its sentinel will say how

    def _stop_idle_workers(self) -> None:
        for worker in self._workers.values():
            if worker.state is State.READY and not worker.outstanding:
                worker.state = State.STOPPING
                worker.since = time.monotonic()
                try:
                    worker.channel.send(pickle.dumps(("stop",), _wire.PROTOCOL))
                except OSError:
                    pass

    def _kill(self, worker: Worker, reason: str) -> None:
        worker.kill_reason = reason
        try:
            worker.process.kill()
        except (OSError, ValueError):
            pass

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            deadline = worker.deadline(self.config.init_timeout)
            if deadline is None or deadline > now:
                continue
            if worker.state is State.STARTING:
                worker.init_error = WorkerInitError(
                    f"the worker initializer did not finish within init_timeout="
                    f"{self.config.init_timeout} s (pid {worker.pid}); it was killed"
                )
            self._kill(worker, "timeout" if worker.state is State.READY else "stuck")

    def _next_timeout(self) -> float | None:
        deadlines = [
            d
            for d in (w.deadline(self.config.init_timeout) for w in self._workers.values())
            if d is not None
        ]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    # ----- messages ------------------------------------------------------------------------

    def _on_readable(self, worker: Worker) -> None:
        try:
            messages = worker.channel.receive()
        except (EOFError, OSError):
            # The process is exiting; its sentinel will tell how, so wait for that.
            self._selector.unregister(worker.conn)
            return
        for data in messages:
            self._on_message(worker, pickle.loads(data))

    def _on_message(self, worker: Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            self._on_done(worker, *message[1:])
        elif kind == "ready":
            worker.state = State.READY
            worker.since = time.monotonic()
            if len(self._workers) == self.config.workers and all(
                w.state is not State.STARTING for w in self._workers.values()
            ):
                self._started.set()
        elif kind == "init_error":
            cause = _wire.load_exception(message[1])
            error = WorkerInitError(
                f"the worker initializer raised {type(cause).__name__}: {cause} (pid "
                f"{worker.pid}); see the remote traceback above"
            )
            error.__cause__ = cause
            worker.init_error = error

    def _on_done(
        self, worker: Worker, task_id: int, status: int, payload: bytes, seconds: float
    ) -> None:
        task = worker.outstanding.popleft()
        assert task.id == task_id, "worker results arrived out of order"
        worker.busy_since = time.monotonic()
        worker.tasks_done += 1
        self._service_time = (
            seconds if self._service_time is None else 0.8 * self._service_time + 0.2 * seconds
        )
        self._failures.clear()
        try:
            if status == _worker_module.OK:
                value = _wire.loads(payload, lambda: f"the result of {task}")
            else:
                error = _wire.load_exception(payload)
        except SerializationError as exc:
            status, error = _worker_module.RAISED, exc
        if status == _worker_module.OK:
            self.counts["done"] += 1
            self._results.append((task.future, value))
        else:
            self.counts["failed"] += 1
            task.future.set_exception(error)

    def _resolve(self) -> None:
        """Set the results collected in this round, last thing before waiting again.

        A woken caller needs the GIL, which this thread holds until it blocks in ``select``;
        resolving last keeps the bookkeeping of the round out of the caller's latency.
        """
        results, self._results = self._results, []
        for future, value in results:
            future.set_result(value)

    # ----- deaths --------------------------------------------------------------------------

    def _on_exit(self, worker: Worker) -> None:
        with self._lock:
            self._idle.clear()  # take lent workers back before re-queueing or closing anything
        for data in worker.channel.drain():  # results sent just before dying still count
            self._on_message(worker, pickle.loads(data))
        worker.process.join(1.0)
        exitcode = worker.process.exitcode
        self._forget(worker)
        if worker.state is State.STOPPING or self._broken is not None:
            return
        self.counts["restarts"] += 1
        if worker.state is State.STARTING:
            self._on_start_failure(worker, exitcode)
        elif worker.outstanding:
            self._on_task_death(worker, exitcode)
        else:
            self._note_failure(
                WorkerCrashed(
                    f"an idle worker (pid {worker.pid}) died with {describe_exit(exitcode)}",
                    worker.pid,
                    exitcode,
                )
            )

    def _forget(self, worker: Worker) -> None:
        for fileobj in (worker.conn, worker.process.sentinel):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        worker.conn.close()
        worker.alive.close()
        worker.process.close()
        del self._workers[worker.slot]

    def _on_start_failure(self, worker: Worker, exitcode: int | None) -> None:
        error = worker.init_error or WorkerInitError(
            f"a worker (pid {worker.pid}) died with {describe_exit(exitcode)} before its "
            "initializer finished"
        )
        if not self._started.is_set():
            self._startup_error = error
            self._break(error, cause=error.__cause__)
        else:
            self._note_failure(error)

    def _on_task_death(self, worker: Worker, exitcode: int | None) -> None:
        running, *waiting = worker.outstanding
        # Tasks pipelined behind the running one never started: they go back, in order.
        self._queue.extendleft(reversed(waiting))
        if worker.kill_reason == "timeout":
            self.counts["timeouts"] += 1
            self.counts["failed"] += 1
            running.future.set_exception(
                TaskTimeout(
                    f"{running} ran longer than its timeout of {running.timeout} s; its worker "
                    f"(pid {worker.pid}) was killed and replaced"
                )
            )
            return
        running.attempts += 1
        if running.attempts <= self.config.retries:
            self._queue.appendleft(running)
            return
        self.counts["failed"] += 1
        running.future.set_exception(
            WorkerCrashed(
                f"the worker (pid {worker.pid}) running {running} died with "
                f"{describe_exit(exitcode)}; tried {running.attempts} time(s) "
                f"(retries={self.config.retries}); other tasks are unaffected",
                worker.pid,
                exitcode,
                str(running),
            )
        )

    def _note_failure(self, error: BaseException) -> None:
        now = time.monotonic()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - STORM_SECONDS:
            self._failures.popleft()
        if len(self._failures) >= STORM_DEATHS:
            self._break(
                BrokenPool(
                    f"{len(self._failures)} workers died within {STORM_SECONDS:.0f} s without "
                    f"completing a task; the last: {error}. Fix the cause and create a new pool"
                ),
                cause=error,
            )

    def _break(self, error: BaseException, cause: BaseException | None) -> None:
        if cause is not None and error is not cause:
            error.__cause__ = cause
        with self._lock:
            if self._broken is not None:
                return
            self._broken = error
            self._idle.clear()
            pending = list(self._incoming) + list(self._queue)
            self._incoming.clear()
        self._queue.clear()
        for worker in self._workers.values():
            pending.extend(worker.outstanding)
            worker.outstanding.clear()
            self._kill(worker, "broken")
        for task in pending:
            if not task.future.done():
                task.future.set_exception(error)
        self._started.set()

    # ----- dispatch ------------------------------------------------------------------------

    def _pipeline_depth(self) -> int:
        if self._service_time is None:
            return 1
        return max(
            1, min(MAX_PIPELINE_DEPTH, int(PIPELINE_SECONDS / max(self._service_time, 1e-6)))
        )

    def _dispatch(self) -> None:
        with self._lock:
            self._idle.clear()
        if self._broken is not None:
            return
        ready = [w for w in self._workers.values() if w.state is State.READY]
        self._assign(ready)
        if not self._queue and not self._closing:
            with self._lock:
                self._idle = [w for w in ready if not w.outstanding]

    def _assign(self, ready: list[Worker]) -> None:
        if not self._queue:
            return
        ready.sort(key=lambda w: len(w.outstanding))
        depth = self._pipeline_depth()
        for index, worker in enumerate(ready):
            room = depth - len(worker.outstanding)
            if room <= 0:
                break
            share = math.ceil(len(self._queue) / (len(ready) - index))
            batch = self._take(min(room, share), idle=not worker.outstanding)
            if batch:
                self._send(worker, batch)
            if not self._queue:
                return

    def _take(self, count: int, idle: bool) -> list[Task]:
        batch: list[Task] = []
        size = 0
        while self._queue and len(batch) < count:
            task = self._queue[0]
            size += len(task.payload)
            if size > PIPELINE_BYTES and (batch or not idle):
                break
            self._queue.popleft()
            if task.claimed or task.future.set_running_or_notify_cancel():
                task.claimed = True
                batch.append(task)
        return batch

    def _send(self, worker: Worker, batch: list[Task]) -> None:
        if not worker.outstanding:
            worker.busy_since = time.monotonic()
        message = pickle.dumps(("run", [(t.id, t.payload) for t in batch]), _wire.PROTOCOL)
        try:
            worker.channel.send(message)
        except OSError:
            # The worker died before it could read: nothing ran, so nothing counts as tried.
            self._queue.extendleft(reversed(batch))
            return
        worker.outstanding.extend(batch)

    # ----- the end -------------------------------------------------------------------------

    def _cleanup(self) -> None:
        for worker in list(self._workers.values()):
            self._kill(worker, "cleanup")
            worker.process.join(5.0)
            self._forget(worker)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._started.set()
