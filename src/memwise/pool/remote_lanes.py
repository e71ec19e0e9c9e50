"""A pool whose workers live elsewhere (Ray actors): one supervisor thread owns every lane.

The local pool's rules hold here, on remote workers reached through a
:class:`~memwise.pool.remote_lane.Transport`:

- **lanes and keys** are the local pool's own (:class:`memwise.pool.lanes.Lanes`): lane ``i``
  is one remote worker at a time; a key is routed by rendezvous hash and pinned to its lane
  until its last task is done, so its tasks run in submission order on one worker, also across
  ``resize``; a lane removed by a shrink drains (runs the tasks of the keys pinned to it, takes
  nothing else) and then ends;
- **pipelining and batches** (:mod:`memwise.pool.remote_dispatch`): several calls are in
  flight per lane, sent in batches; the first call in flight is the one running;
- **failures are per future** (:mod:`memwise.pool.remote_deaths`);
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
from typing import Any

from memwise.errors import BrokenPool, WorkerInitError
from memwise.pool import remote_deaths, remote_dispatch
from memwise.pool.events import PoolEvent
from memwise.pool.lanes import Lanes
from memwise.pool.options import TaskOptions
from memwise.pool.policies import Recycle
from memwise.pool.queue import TaskQueue
from memwise.pool.refusals import refuse_resize_unless_open, refuse_tasks_unless_open
from memwise.pool.remote_dispatch import PIPELINE, PIPELINE_MEMORY
from memwise.pool.remote_lane import Durations, Lane, LaneTask, Outcome, Sent, Status, Transport
from memwise.pool.snapshot import PoolSnapshot
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task


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
        self.lock = threading.RLock()
        self.hub = EventHub()
        self.queue = TaskQueue()
        self.pins = Lanes(config.workers, config.workers)  # every lane always has a worker
        self.lanes: dict[int, Lane] = {}  # those at or above ``pins.count`` are draining
        self.latest: dict[Hashable, Task] = {}
        self.counts: Counter[str] = Counter()
        self.recycles: Counter[str] = Counter()
        self.finished_at: deque[float] = deque(maxlen=1000)
        self.durations = Durations()
        self.closing = False
        self.broken: BaseException | None = None
        self.started = threading.Event()
        self.startup_error: BaseException | None = None
        self.failures: deque[float] = deque()  # recent failed starts (see remote_deaths)
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._generations = itertools.count(1)
        self.pipeline = PIPELINE if config.recycle.memory is None else PIPELINE_MEMORY
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # ----- called from user threads -------------------------------------------------------

    @property
    def workers(self) -> int:
        return self.pins.count

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
            refuse_tasks_unless_open(self.broken, self.closing)
            if task.key is not None:
                task.lane = self.pins.route(task.key)
                key = task.key
                future.add_done_callback(lambda _: self._unpin(key))
            self.counts["submitted"] += 1
            self.emit("task_submitted", task=task)
        self._inbox.put(lambda: self._accept(task))
        return future

    def _unpin(self, key: Hashable) -> None:
        if self.pins.release(key) is not None:
            self._inbox.put(self._retire_drained)  # a draining lane may be done now

    def close(self, cancel_futures: bool) -> None:
        with self.lock:
            self.closing = True
        self._inbox.put(lambda: self._cancel_queued() if cancel_futures else None)

    def resize(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        with self.lock:
            refuse_resize_unless_open(self.broken, self.closing)
            before = self.pins.resize(workers)
            self.emit("pool_resized", reason=f"{before} -> {workers}")
        self._inbox.put(self._fill_lanes)

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
        if not self.hub.subscriptions:
            return
        if task is not None:
            fields.setdefault("task_id", task.id)
            fields.setdefault("function", task.label)
            if task.key is not None:
                fields.setdefault("key", repr(task.key)[:80])
        if lane is not None:
            fields.setdefault("lane", lane.index)
            fields.setdefault("pid", lane.pid)
        self.hub.emit(PoolEvent(kind, time.time(), **fields))

    # ----- the supervisor thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            with self.lock:
                self._fill_lanes()
            while not self._finished():
                try:
                    action = self._inbox.get(timeout=remote_deaths.until_deadline(self))
                except queue.Empty:
                    action = None
                with self.lock:
                    while action is not None:
                        action()
                        try:
                            action = self._inbox.get_nowait()
                        except queue.Empty:
                            action = None
                    remote_deaths.enforce_deadlines(self)
                    self._check_started()
                    remote_dispatch.dispatch(self)
        except BaseException as exc:
            with self.lock:
                self.break_pool(BrokenPool(f"the pool's supervisor failed: {exc!r}"))
        finally:
            with self.lock:
                for lane in self.lanes.values():
                    self.transport.kill(lane.handle)
                self.emit("pool_shutdown")
            self.started.set()
            self.hub.close(wait=False)

    def _finished(self) -> bool:
        with self.lock:
            if self.broken is not None:
                return True
            busy = bool(self.queue) or any(lane.sent for lane in self.lanes.values())
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

    # ----- lanes -------------------------------------------------------------------------

    def _fill_lanes(self) -> None:
        """A worker in every lane below the count (after start or a resize), and none in a
        drained lane above it."""
        for index in range(self.pins.count):
            if index not in self.lanes:
                self._start_lane(index)
        self._retire_drained()

    def _wanted(self, index: int) -> bool:
        return index < self.pins.count or self.pins.pinned(index)

    def _retire_drained(self) -> None:
        for index, lane in list(self.lanes.items()):
            if lane.sent or self._wanted(index):
                continue
            # What is left queued for it can only be tasks cancelled since (their keys are
            # no longer pinned): they are dropped with it.
            while self.queue.pop_for(index, general_too=False) is not None:
                pass
            self.transport.kill(lane.handle)
            lane.generation = -1
            del self.lanes[index]

    def _start_lane(self, index: int, replaces: Lane | None = None, reason: str = "") -> None:
        lane = Lane(index, next(self._generations))
        if replaces is not None:
            lane.restarts, lane.recycles = replaces.restarts, replaces.recycles
        ready = Sent(None)
        lane.handle, ready.token = self.transport.start(index, self.notifier(lane, ready))
        lane.sent.append(ready)
        lane.head_since = time.monotonic()
        self.lanes[index] = lane
        self.emit("worker_started", lane=lane)
        if replaces is not None:
            self.emit("worker_replaced", lane=lane, reason=reason)

    def notifier(self, lane: Lane, sent: Sent) -> Callable[[], None]:
        """What the transport calls once ``sent`` is done: post it to the inbox."""
        generation = lane.generation
        return lambda: self._inbox.put(lambda: self._on_done(lane, generation, sent))

    def replace(self, lane: Lane, reason: str) -> None:
        """End ``lane``'s worker; start a fresh one in its place while the lane is wanted."""
        self.transport.kill(lane.handle)
        lane.generation = -1  # late notifications of the old worker are ignored
        if self.lanes.get(lane.index) is not lane:
            return
        if self._done_for_good() or not self._wanted(lane.index):
            del self.lanes[lane.index]
        else:
            self._start_lane(lane.index, replaces=lane, reason=reason)

    def _done_for_good(self) -> bool:
        return self.broken is not None or (self.closing and not self.queue)

    def _check_started(self) -> None:
        if not self.started.is_set() and all(lane.pid is not None for lane in self.lanes.values()):
            self.started.set()

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
                remote_deaths.on_death(self, lane, outcome)
                return
            lane.sent.popleft()
            if outcome.status in (Status.NOT_RUN, Status.RESEND_ALONE):
                assert head.task is not None
                head.task.alone |= outcome.status is Status.RESEND_ALONE
                lane.head_since = time.monotonic()
                self.queue.push_back([head.task])
                continue
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
        if not lane.sent:
            if lane.retiring is not None:
                self.replace(lane, lane.retiring)
            elif not self._wanted(lane.index):
                self._retire_drained()

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
        remote_deaths.on_start_failure(self, lane, error)

    def _on_result(self, lane: Lane, task: LaneTask, outcome: Outcome, seconds: float) -> None:
        lane.tasks_done += 1
        lane.private = outcome.private
        if task.key is not None:
            lane.last_key = task.key
        self.failures.clear()
        if outcome.status is Status.OK:
            self.counts["done"] += 1
            self.finished_at.append(time.monotonic())
            self.durations.observe(seconds)
            self.emit("task_finished", task=task, lane=lane, seconds=seconds)
            task.future.set_result(outcome.value)
        else:
            self.fail(task, outcome.value, lane)
        reason = self.config.recycle.after_task(lane.tasks_done, lane.private)
        if reason is None and not remote_dispatch.accepts(self, lane):
            reason = "tasks"  # every call it may take has been sent
        if reason is not None and lane.retiring is None:
            lane.retiring = reason
            self.recycles[reason] += 1
            lane.recycles[reason] += 1
            self.emit("worker_recycled", lane=lane, reason=reason)

    def fail(self, task: Task, error: BaseException, lane: Lane | None = None) -> None:
        """Fail ``task``'s future with ``error``, counted and reported."""
        self.counts["failed"] += 1
        self.emit("task_failed", task=task, lane=lane, reason=type(error).__name__)
        task.future.set_exception(error)

    def break_pool(self, error: BaseException) -> None:
        """Fail everything pending with ``error`` and end every worker."""
        if self.broken is not None:
            return
        self.broken = error
        self.emit("pool_broken", reason=str(error))
        pending: list[Task] = self.queue.drain()
        for lane in self.lanes.values():
            pending.extend(sent.task for sent in lane.sent if sent.task is not None)
            lane.sent.clear()
            lane.generation = -1
            self.transport.kill(lane.handle)
        for task in pending:
            if not task.future.done():
                task.future.set_exception(error)
        self.started.set()
