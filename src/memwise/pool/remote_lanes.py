"""A pool whose workers live elsewhere (Ray actors): one supervisor thread owns every lane.

The local pool's rules hold here, on remote workers reached through a :class:`Transport`:

- **lanes**: lane ``i`` is one remote worker at a time; ``key`` routes by the same
  rendezvous hash as the local pool (:func:`memwise.pool.queue.lane_for`), and a key's tasks
  run in submission order (a remote worker runs its calls in the order they were sent, and a
  key never has calls in flight on two lanes at once, even while lanes are resized);
- **pipelining**: up to ``PIPELINE`` calls are in flight per lane, so a lane never waits for a
  round trip between tasks; the first call in flight is the one running. With
  ``Recycle(memory=)`` only ``PIPELINE_MEMORY``: calls already sent to a worker that grew too
  big still run on it;
- **failures are per future**: a dead worker fails (or, within ``retries``, re-runs) only the
  task it was running; the calls queued behind it go back to their places; a replacement is
  started in the same lane. An overdue task's worker is killed and replaced (``TaskTimeout``);
- **recycling** by task count and by the worker's own private memory, reported after each task;
- **latest wins**: tasks with a ``coalesce`` tag wait in this process (never in a remote
  queue) until a lane is idle, so a newer one can still cancel them.

Completions arrive on the transport's threads as ``notify`` calls; they only post to the
supervisor's inbox. Everything else runs on the supervisor thread, holding ``lock`` while it
changes state, so that snapshots (:mod:`memwise.pool.remote_view`) are never torn.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from memwise.errors import BrokenPool, ClosedError, TaskTimeout, WorkerCrashed, WorkerInitError
from memwise.pool.events import PoolEvent
from memwise.pool.options import TaskOptions
from memwise.pool.policies import Recycle
from memwise.pool.queue import TaskQueue, lane_for
from memwise.pool.remote_lane import (
    STORM_DEATHS,
    STORM_SECONDS,
    Durations,
    Lane,
    Outcome,
    Sent,
    Status,
)
from memwise.pool.snapshot import PoolSnapshot
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task

PIPELINE = 16  # calls in flight per lane: enough to hide a remote round trip per call
PIPELINE_MEMORY = 2  # with Recycle(memory=), which can only act between calls


class Transport(Protocol):
    """How the supervisor reaches remote workers (see :mod:`memwise.ray`)."""

    def start(self, lane: int, notify: Callable[[], None]) -> tuple[Any, Any]:
        """Start a worker for ``lane``; return its handle and the token of its start-up call
        (which runs the initializer and reports pid and node). ``notify`` fires when done."""

    def send(self, handle: Any, task: LaneTask, notify: Callable[[], None]) -> Any:
        """Call the task on the worker; return a token; ``notify`` fires when it is done."""

    def outcome(self, token: Any) -> Outcome:
        """What a finished call gave (never blocks once ``notify`` fired)."""

    def kill(self, handle: Any) -> None:
        """End the worker at once."""


class LaneTask(Task):
    """A task for a remote worker: the call itself travels by the transport, not pickled here."""

    __slots__ = ("call",)

    def __init__(self, future: Future[Any], call: tuple[Any, ...], options: TaskOptions) -> None:
        fn = call[0]
        super().__init__(
            future, b"", fn, options.timeout, key=options.key, priority=options.priority,
            coalesce=options.coalesce,
        )  # fmt: skip
        self.call = call


@dataclass(frozen=True)
class LaneConfig:
    workers: int
    retries: int = 0
    recycle: Recycle = field(default_factory=Recycle)
    max_restarts: int | None = None
    init_timeout: float = 60.0


class LaneSupervisor:
    """Owns the lanes of one pool; see the module docstring."""

    def __init__(self, config: LaneConfig, transport: Transport, name: str) -> None:
        self.config = config
        self.transport = transport
        self.workers = config.workers
        self.lock = threading.RLock()
        self.hub = EventHub()
        self.queue = TaskQueue()
        self.lanes: dict[int, Lane] = {}
        self.draining: list[Lane] = []  # lanes removed by resize, finishing their calls
        self.latest: dict[Hashable, Task] = {}
        self.in_flight_keys: dict[Hashable, list[int]] = {}  # key -> [lane, calls in flight]
        self.counts: Counter[str] = Counter()
        self.recycles: Counter[str] = Counter()
        self.finished_at: deque[float] = deque(maxlen=1000)
        self.durations = Durations()
        self.closing = False
        self.broken: BaseException | None = None
        self.started = threading.Event()
        self.startup_error: BaseException | None = None
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._failures: deque[float] = deque()
        self._generations = itertools.count(1)
        self._pipeline = PIPELINE if config.recycle.memory is None else PIPELINE_MEMORY
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ----- called from user threads -------------------------------------------------------

    def start(self) -> None:
        """Start every lane; raise ``WorkerInitError`` if a worker cannot start."""
        self._thread.start()
        self.started.wait()
        if self.startup_error is not None:
            self._thread.join()
            raise self.startup_error

    def submit(self, options: TaskOptions, call: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        task = LaneTask(future, call, options)
        with self.lock:
            if self.broken is not None:
                raise BrokenPool(
                    f"the pool is broken and accepts no tasks: {self.broken}"
                ) from self.broken
            if self.closing:
                raise ClosedError("cannot schedule new futures after shutdown; create a new pool")
            if task.key is not None:
                task.lane = lane_for(task.key, self.workers)
            self.counts["submitted"] += 1
            self.emit("task_submitted", task=task)
        self._inbox.put(lambda: self._accept(task))
        return future

    def close(self, cancel_futures: bool) -> None:
        with self.lock:
            self.closing = True
        self._inbox.put(lambda: self._cancel_queued() if cancel_futures else None)

    def resize(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        with self.lock:
            if self.broken is not None:
                raise BrokenPool(f"the pool is broken: {self.broken}") from self.broken
            if self.closing:
                raise ClosedError("cannot resize a pool that is shut down; create a new pool")
            before, self.workers = self.workers, workers
        self._inbox.put(lambda: self._resize(before, workers))

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def terminate(self, error: BaseException) -> None:
        self._inbox.put(lambda: self.break_pool(error))

    @property
    def running(self) -> bool:
        """Whether the supervisor thread is still at work."""
        return self._thread.is_alive()

    def snapshot(self) -> PoolSnapshot:
        from memwise.pool.remote_view import snapshot

        return snapshot(self)

    def emit(
        self, kind: Any, task: Task | None = None, lane: Lane | None = None, **fields: Any
    ) -> None:
        """Queue an event for subscribers (callers hold ``lock``)."""
        if task is not None:
            fields.setdefault("task_id", task.id)
            fields.setdefault("function", task.label)
            if task.key is not None:
                fields.setdefault("key", repr(task.key)[:80])
        if lane is not None:
            fields.setdefault("lane", lane.index)
            fields.setdefault("pid", lane.pid)
        if self.hub.subscriptions:
            self.hub.emit(PoolEvent(kind, time.time(), **fields))

    # ----- the supervisor thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            with self.lock:
                for index in range(self.config.workers):
                    self._start_lane(index)
            while not self._finished():
                try:
                    action = self._inbox.get(timeout=self._until_deadline())
                except queue.Empty:
                    action = None
                with self.lock:
                    while action is not None:
                        action()
                        try:
                            action = self._inbox.get_nowait()
                        except queue.Empty:
                            action = None
                    self._enforce_deadlines()
                    self._check_started()
                    self._dispatch()
        except BaseException as exc:
            with self.lock:
                self.break_pool(BrokenPool(f"the pool's supervisor failed: {exc!r}"))
        finally:
            with self.lock:
                for lane in self._everyone():
                    self.transport.kill(lane.handle)
                self.emit("pool_shutdown")
            self.started.set()
            self.hub.close(wait=False)

    def _finished(self) -> bool:
        with self.lock:
            if self.broken is not None:
                return True
            busy = bool(self.queue) or any(lane.sent for lane in self._everyone())
            return self.closing and not busy

    def _accept(self, task: LaneTask) -> None:
        if self.broken is not None:
            task.future.set_exception(BrokenPool(f"the pool is broken: {self.broken}"))
            return
        if task.coalesce is not None:
            previous = self.latest.get(task.coalesce)
            if previous is not None:
                self._drop(previous, "coalesced")
            self.latest[task.coalesce] = task
        self.queue.push(task)

    def _drop(self, task: Task, reason: str) -> None:
        if self.latest.get(task.coalesce) is task:
            del self.latest[task.coalesce]
        if task.drop():
            self.counts["cancelled"] += 1
            self.emit("task_cancelled", task=task, reason=reason)

    def _cancel_queued(self) -> None:
        for task in self.queue.drain():
            self._drop(task, "shutdown")

    def _resize(self, before: int, after: int) -> None:
        for index in range(before, after):
            self._start_lane(index)
        for index in range(after, before):
            lane = self.lanes.pop(index)
            if lane.sent:
                lane.retiring = "resize"
                self.draining.append(lane)
            else:
                self.transport.kill(lane.handle)
        # Queued keyed tasks follow their keys to the new lanes, in their original order.
        tasks = sorted(self.queue.drain(), key=lambda t: t.seq)
        for task in tasks:
            if task.key is not None:
                task.lane = lane_for(task.key, after)
            self.queue.push(task)
        self.emit("pool_resized", reason=f"{before} -> {after}")

    # ----- lanes -------------------------------------------------------------------------

    def _everyone(self) -> list[Lane]:
        return [*self.lanes.values(), *self.draining]

    def _start_lane(self, index: int, replaces: Lane | None = None, reason: str = "") -> None:
        lane = Lane(index, next(self._generations))
        if replaces is not None:
            lane.restarts, lane.recycles = replaces.restarts, replaces.recycles
        ready = Sent(None)
        lane.handle, ready.token = self.transport.start(index, self._notifier(lane, ready))
        lane.sent.append(ready)
        lane.head_since = time.monotonic()
        self.lanes[index] = lane
        self.emit("worker_started", lane=lane)
        if replaces is not None:
            self.emit("worker_replaced", lane=lane, reason=reason)

    def _notifier(self, lane: Lane, sent: Sent) -> Callable[[], None]:
        generation = lane.generation
        return lambda: self._inbox.put(lambda: self._on_done(lane, generation, sent))

    def _replace(self, lane: Lane, reason: str) -> None:
        """Start a fresh worker in ``lane``'s place (unless the lane was removed)."""
        self.transport.kill(lane.handle)
        lane.generation = -1  # late notifications of the old worker are ignored
        if lane in self.draining:
            self.draining.remove(lane)
        elif self.lanes.get(lane.index) is lane and not self._done_for_good():
            self._start_lane(lane.index, replaces=lane, reason=reason)
        elif self.lanes.get(lane.index) is lane:
            del self.lanes[lane.index]

    def _done_for_good(self) -> bool:
        return self.broken is not None or (self.closing and not self.queue)

    def _check_started(self) -> None:
        if not self.started.is_set() and all(lane.pid is not None for lane in self._everyone()):
            self.started.set()

    # ----- dispatching -------------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.broken is not None:
            return
        for depth in range(1, self._pipeline + 1):
            for lane in list(self.lanes.values()):
                if len(lane.sent) < depth and self._accepts(lane):
                    self._send_next(lane)

    def _accepts(self, lane: Lane) -> bool:
        limit = self.config.recycle.tasks
        return lane.retiring is None and (limit is None or lane.dispatched < limit)

    def _send_next(self, lane: Lane) -> None:
        while True:
            task = self.queue.pop_for(lane.index)
            if task is None:
                return
            assert isinstance(task, LaneTask)
            blocked = task.coalesce is not None and lane.busy
            owner = self.in_flight_keys.get(task.key) if task.key is not None else None
            if blocked or (owner is not None and owner[0] != lane.index):
                # Not now: a latest-wins task waits here for an idle lane; a key that moved
                # lanes waits until its earlier calls have finished on the old one.
                self.queue.push_back([task])
                return
            if self.latest.get(task.coalesce) is task:
                del self.latest[task.coalesce]
            if task.claim():
                break
        sent = Sent(task)
        try:
            sent.token = self.transport.send(lane.handle, task, self._notifier(lane, sent))
        except Exception as exc:  # the call could not be serialized: this task fails alone
            self._fail(task, exc, lane)
            return
        if not lane.sent:
            lane.head_since = time.monotonic()
            self.emit("task_started", task=task, lane=lane)
        lane.sent.append(sent)
        lane.dispatched += 1
        if task.key is not None:
            owner = self.in_flight_keys.setdefault(task.key, [lane.index, 0])
            owner[1] += 1

    def _release_key(self, task: Task) -> None:
        if task.key is None:
            return
        owner = self.in_flight_keys[task.key]
        owner[1] -= 1
        if owner[1] == 0:
            del self.in_flight_keys[task.key]

    # ----- results -----------------------------------------------------------------------

    def _on_done(self, lane: Lane, generation: int, sent: Sent) -> None:
        if lane.generation != generation:
            return  # a worker that was already replaced
        sent.finished = True
        # Calls finish in the order they were sent; notifications may not arrive in order.
        while lane.sent and lane.sent[0].finished:
            head = lane.sent[0]
            outcome = self.transport.outcome(head.token)
            if outcome.status is Status.DIED:
                self._on_death(lane, outcome)
                return
            lane.sent.popleft()
            now = time.monotonic()
            seconds, lane.head_since = now - lane.head_since, now
            if head.task is None:
                self._on_ready(lane, outcome)
                if lane.generation != generation:
                    return
            else:
                self._on_result(lane, head.task, outcome, seconds)
            if lane.sent and lane.sent[0].task is not None:
                self.emit("task_started", task=lane.sent[0].task, lane=lane)
        if lane.retiring is not None and not lane.sent:
            self._replace(lane, lane.retiring)

    def _on_ready(self, lane: Lane, outcome: Outcome) -> None:
        if outcome.status is Status.OK:
            lane.pid, lane.node = outcome.value
            self.emit("worker_ready", lane=lane)
            return
        error = WorkerInitError(
            f"the worker initializer raised {type(outcome.value).__name__}: {outcome.value} "
            f"(lane {lane.index}); see the remote traceback above"
        )
        error.__cause__ = outcome.value
        self._on_start_failure(lane, error)

    def _on_result(self, lane: Lane, task: LaneTask, outcome: Outcome, seconds: float) -> None:
        self._release_key(task)
        lane.tasks_done += 1
        lane.private = outcome.private
        if task.key is not None:
            lane.last_key = task.key
        self._failures.clear()
        if outcome.status is Status.OK:
            self.counts["done"] += 1
            self.finished_at.append(time.monotonic())
            self.durations.observe(seconds)
            self.emit("task_finished", task=task, lane=lane, seconds=seconds)
            task.future.set_result(outcome.value)
        else:
            self._fail(task, outcome.value, lane)
        reason = self.config.recycle.after_task(lane.tasks_done, lane.private)
        if reason is None and not self._accepts(lane):
            reason = "tasks"  # every call it may take has been sent
        if reason is not None and lane.retiring is None:
            lane.retiring = reason
            self.recycles[reason] += 1
            lane.recycles[reason] += 1
            self.emit("worker_recycled", lane=lane, reason=reason)

    def _fail(self, task: Task, error: BaseException, lane: Lane | None = None) -> None:
        self.counts["failed"] += 1
        self.emit("task_failed", task=task, lane=lane, reason=type(error).__name__)
        task.future.set_exception(error)

    # ----- deaths and deadlines ----------------------------------------------------------

    def _on_death(self, lane: Lane, outcome: Outcome) -> None:
        running = lane.sent.popleft().task
        self._requeue_rest(lane)
        self.emit("worker_died", lane=lane, task_id=running.id if running else None,
                  reason=outcome.detail)  # fmt: skip
        if running is None:
            self._on_start_failure(lane, WorkerInitError(
                f"the worker of lane {lane.index} died before it was ready: {outcome.detail}"
            ))  # fmt: skip
            return
        self._release_key(running)
        self.counts["restarts"] += 1
        lane.restarts += 1
        running.attempts += 1
        if running.attempts <= self.config.retries:
            self.counts["retried"] += 1
            self.emit("task_retried", task=running, lane=lane, reason="worker died",
                      attempt=running.attempts)  # fmt: skip
            self.queue.push_back([running])
        else:
            self._fail(running, WorkerCrashed(
                f"the worker (pid {lane.pid}, node {lane.node}) running {running} died: "
                f"{outcome.detail}; tried {running.attempts} time(s) (retries="
                f"{self.config.retries}); other tasks are unaffected",
                lane.pid, None, str(running),
            ), lane)  # fmt: skip
        limit = self.config.max_restarts
        if limit is not None and self.counts["restarts"] > limit:
            self.break_pool(BrokenPool(
                f"workers died {self.counts['restarts']} times, more than max_restarts={limit}; "
                f"the last: {outcome.detail}"
            ))  # fmt: skip
            return
        self._replace(lane, "died")

    def _requeue_rest(self, lane: Lane) -> None:
        """The calls behind the running one never started: back to their places."""
        rest = [sent.task for sent in lane.sent if sent.task is not None]
        lane.sent.clear()
        for task in rest:
            self._release_key(task)
        self.queue.push_back(rest)

    def _on_start_failure(self, lane: Lane, error: WorkerInitError) -> None:
        if not self.started.is_set():
            self.startup_error = error
            self.break_pool(error)
            return
        now = time.monotonic()
        self._failures.append(now)
        while self._failures and self._failures[0] < now - STORM_SECONDS:
            self._failures.popleft()
        if len(self._failures) >= STORM_DEATHS:
            self.break_pool(BrokenPool(
                f"{len(self._failures)} workers failed to start within {STORM_SECONDS:.0f} s; "
                f"the last: {error}. Fix the cause and create a new pool"
            ))  # fmt: skip
            return
        self._requeue_rest(lane)
        self._replace(lane, "start failed")

    def _until_deadline(self) -> float | None:
        with self.lock:
            deadlines = [d for lane in self._everyone() if (d := self._deadline(lane))]
        return None if not deadlines else max(0.0, min(deadlines) - time.monotonic())

    def _deadline(self, lane: Lane) -> float | None:
        if not lane.sent:
            return None
        task = lane.sent[0].task
        limit = self.config.init_timeout if task is None else task.timeout
        return None if limit is None else lane.head_since + limit

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for lane in self._everyone():
            deadline = self._deadline(lane)
            if deadline is None or deadline > now:
                continue
            task = lane.sent.popleft().task
            self._requeue_rest(lane)
            if task is None:
                self._on_start_failure(lane, WorkerInitError(
                    f"the worker of lane {lane.index} did not get ready within init_timeout="
                    f"{self.config.init_timeout} s; it was killed"
                ))  # fmt: skip
                continue
            self._release_key(task)
            self.counts["timed_out"] += 1
            self.emit("task_timed_out", task=task, lane=lane, seconds=now - lane.head_since)
            self._fail(task, TaskTimeout(
                f"{task} ran longer than its timeout of {task.timeout} s; its worker "
                f"(pid {lane.pid}, node {lane.node}) was killed and replaced"
            ), lane)  # fmt: skip
            self._replace(lane, "timeout")

    def break_pool(self, error: BaseException) -> None:
        """Fail everything pending with ``error`` and end every worker."""
        if self.broken is not None:
            return
        self.broken = error
        self.emit("pool_broken", reason=str(error))
        pending: list[Task] = self.queue.drain()
        for lane in self._everyone():
            pending.extend(sent.task for sent in lane.sent if sent.task is not None)
            lane.sent.clear()
            lane.generation = -1
            self.transport.kill(lane.handle)
        for task in pending:
            if not task.future.done():
                task.future.set_exception(error)
        self.started.set()
