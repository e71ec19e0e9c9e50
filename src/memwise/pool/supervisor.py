"""The supervisor: the one thread that owns every worker process of a pool.

Data flow of one task (messages in :mod:`memwise.pool._protocol`)::

    user thread                     supervisor thread                      worker process
    -----------                     -----------------                      --------------
    WorkerPool.submit
      pickle (fn, args) -> Task
      Supervisor.submit  --lock-->  incoming --_on_wake--> TaskQueue
        |  (route key to a lane,                (priority; per-key FIFO
        |   pin it; task_submitted)              pinned to a lane)
        |                                            |
        |                                dispatch.dispatch: claim, budget,
        |                                  batch per READY worker ------Run------> run in order,
        |                                  (worker.outstanding)                    ledger.begin
        |                                            |                                  |
        +-- direct path: an idle worker lent         |                                  |
            to submitters (idle, under lock) --Run---+--------------------------------->|
                                                                                        |
                                   _on_readable <---------------------Done--------------+
                                     _finish: outstanding.popleft, tally, recycle?
                                     _complete: unpickle -> _results / set_exception
                                   _resolve (after the round): future.set_result
                                   deaths.on_exit (sentinel): fail, retry or re-queue
                                     what the dead worker held; a new worker takes its lane

User threads never touch a worker except through the direct path (``_send_direct_locked``),
which only uses workers the supervisor lent in ``idle`` and takes back under ``lock`` before
it uses, stops or forgets them (``reclaim_lent_workers``). The supervisor waits on the wake-up
pipe, every worker's connection and process sentinel, and the nearest deadline, and does all
the rest: start workers, dispatch tasks, collect results, notice deaths, enforce timeouts,
recycle, restart, resize. Having a single owner is what makes crash handling tractable: every
case runs on one thread, in order. The cases themselves live in :mod:`memwise.pool.deaths`.

Locks, always taken in this order: ``state_lock`` (the supervisor holds it for each round of
work, never while waiting; snapshots and ``resize`` take it to see or change state between
rounds), then ``lock`` (what user threads share with the supervisor: ``incoming``, ``idle``,
``closing``, ``broken``, and the lent workers). ``Lanes`` has a lock of its own, taken by
futures' callbacks, so it is never held while a future is resolved.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from memwise import _oob, _wire
from memwise.budget import MemoryBudget
from memwise.errors import (
    BrokenPool,
    ClosedError,
    MissingMainGuard,
    SerializationError,
    WorkerInitError,
)
from memwise.memory import private_memory
from memwise.pool import deaths, dispatch, stats
from memwise.pool._protocol import (
    OK,
    RAISED,
    Done,
    Init,
    InitError,
    InitOptions,
    Ready,
    Stop,
    decode,
    encode,
)
from memwise.pool.context import get_context
from memwise.pool.events import EventKind, PoolEvent
from memwise.pool.handle import State, Worker
from memwise.pool.lanes import Lanes
from memwise.pool.launcher import Launched, Launcher, launch
from memwise.pool.policies import Recycle
from memwise.pool.probe import ProcessProbe
from memwise.pool.queue import TaskQueue
from memwise.pool.snapshot import PoolSnapshot
from memwise.pool.stats import Tally, key_repr
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task
from memwise.shared import current_owner, sweep_orphans

logger = logging.getLogger(__name__)

SPARE = -1  # the lane number of spare workers
START_RETRY_SECONDS = 0.2  # after the OS refused a new process
PEAK_DECAY = 0.9  # per task, of a function's learned peak
DIRECT_BYTES = 1 << 20  # largest payload a submitting thread writes to a worker itself


@dataclass(frozen=True)
class PoolConfig:
    max_workers: int
    min_workers: int
    init_payload: bytes | None
    # initargs only a starting process may receive (multiprocessing queues, locks, events):
    # handed to each worker as multiprocessing starts it, as ProcessPoolExecutor does.
    start_initargs: tuple[Any, ...] | None
    init_timeout: float
    retries: int
    start_method: str | None
    recycle: Recycle = field(default_factory=Recycle)
    max_restarts: int | None = None
    trim: bool = False
    budget: MemoryBudget | None = None
    shm_threshold: int = _oob.DEFAULT_THRESHOLD
    # Where every deadline is computed from (timeouts, idle, stealing, storms): injectable so
    # that queue, dispatch and death handling can be tested without waiting.
    clock: Callable[[], float] = time.monotonic


class Supervisor:
    """Owns the workers of one pool; see the module docstring."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.clock = config.clock
        self._ctx = get_context(config.start_method)
        self.lock = threading.Lock()
        # --- under lock (any thread) ---
        # Tasks handed over by submitting threads, not yet in ``queue``.
        self.incoming: deque[Task] = deque()
        # READY workers with nothing to do, lent to submitting threads by lane. Only while
        # ``queue`` and ``incoming`` are empty (nothing may be overtaken); cleared by the
        # supervisor before it touches any worker, and by anything that queues a task.
        self.idle: dict[int, Worker] = {}
        self._poked = False  # a byte is in the wake-up pipe
        self.closing = False  # no new task is accepted; set once
        self._cancel_queued = False
        self._terminate: BaseException | None = None
        self.broken: BaseException | None = None  # set once, by break_pool
        # --- supervisor thread only, under state_lock ---
        # The newest queued task of each coalesce tag (latest wins).
        self.latest: dict[Hashable, Task] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self.launcher = Launcher(self._ctx, config.start_initargs)
        self._selector.register(self.launcher, selectors.EVENT_READ, self._on_launched)
        self.queue = TaskQueue()
        # The process in each lane; a lane at or above ``lanes.count`` is draining. Every
        # task sent to a worker is in its ``outstanding`` until its Done or its death.
        self.workers: dict[int, Worker] = {}
        self.retiring: list[Worker] = []  # left their lane; finish their tasks, then stop
        self.spares: list[Worker] = []  # processes started ahead, not yet in a lane (Recycle)
        self.failures: deque[float] = deque()
        self.service_time: float | None = None
        self._results: list[tuple[Future[Any], Any]] = []
        self._next_poll = 0.0
        self._retry_start_at: float | None = None
        self.peaks: dict[str, int] = {}  # learned peak memory per function (MemoryBudget.learn)
        self.budget_blocked = False
        self.started = threading.Event()
        self.finished = threading.Event()  # the supervisor thread has ended
        self.startup_error: BaseException | None = None
        # Held by the supervisor thread for each round of work (not while it waits), and by
        # snapshots: a snapshot sees the state between two rounds, never half of one. Taken
        # before ``lock`` when both are needed. Reentrant: a future's callback run by this
        # thread may take a snapshot.
        self.state_lock = threading.RLock()
        # Counters: supervisor thread, under state_lock (``submitted``: any thread, under lock).
        self.tally = Tally()
        self.events = EventHub()
        self._probe = ProcessProbe()
        # Why a lane's previous process went, until its replacement starts (worker_replaced).
        self.lane_vacated: dict[int, str] = {}
        self.lanes = Lanes(config.max_workers, config.min_workers)
        # Cancelled tasks still in ``queue`` (it drops them lazily, when popped), so that
        # snapshots count them as cancelled and not also as queued.
        self.dropped_queued = 0
        self._thread = threading.Thread(target=self._run, name="memwise-supervisor", daemon=True)

    # ----- called from user threads -------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor; wait until ``min_workers`` are ready or one fails to start."""
        swept = sweep_orphans()  # shared memory left by a pool whose process was killed
        if swept:
            logger.info("removed %d shared-memory segment(s) of dead processes", len(swept))
        _oob.pool_opened()
        self._thread.start()
        self.started.wait()
        if self.startup_error is not None:
            self._thread.join()
            raise self.startup_error

    def submit(self, task: Task) -> None:
        with self.lock:
            if self.broken is not None:
                raise BrokenPool(
                    f"the pool is broken and accepts no tasks: {self.broken}"
                ) from self.broken
            if self.closing:
                raise ClosedError("cannot schedule new futures after shutdown; create a new pool")
            self.tally.submitted += 1
            if task.key is not None:
                task.lane = self.lanes.route(task.key)
                key = task.key
                task.future.add_done_callback(lambda _: self._unpin(key))
            if self.events.subscriptions:  # before any other thread can see the task
                self.task_event("task_submitted", task, key=key_repr(task.key))
            # Large inline payloads are queued: writing them here would hold the lock, and so
            # every other submitter and the supervisor, for as long as the copy takes.
            direct = self.idle and not self.incoming and len(task.payload) <= DIRECT_BYTES
            if direct and self._send_direct_locked(task):
                return
            self.incoming.append(task)
            self._poke_locked()

    def _unpin(self, key: Hashable) -> None:
        if self.lanes.release(key) is not None:
            with self.lock:
                self._poke_locked()  # a draining lane may have nothing left to wait for

    def resize(self, count: int) -> None:
        """Set the number of lanes; see :mod:`memwise.pool.lanes`."""
        with self.state_lock, self.lock:
            if self.broken is not None:
                raise BrokenPool(f"the pool is broken: {self.broken}") from self.broken
            if self.closing:
                raise ClosedError("cannot resize a pool that is shut down; create a new pool")
            previous = self.lanes.resize(count)
            self.idle.clear()  # a lent worker may be in a lane that now drains
            self._poke_locked()
        if previous != count:
            logger.info("pool resized from %d to %d lanes", previous, count)
            self.event("pool_resized", reason=f"{previous} -> {count}")

    def _send_direct_locked(self, task: Task) -> bool:
        """Hand ``task`` straight to an idle worker from the submitting thread, if one fits.

        This is the one exception to "only the supervisor touches workers", and it is narrow:
        the supervisor lends idle workers by listing them in ``idle`` (only while its queue is
        empty, so nothing is overtaken; anything that queues a task takes them back first)
        and takes them back under the same lock before it uses, stops or forgets them.
        Skipping the hop to the supervisor thread halves the latency of a lone call, which is
        what interactive callers wait for.
        """
        if task.lane is None:
            worker = self.idle.pop(next(iter(self.idle)))
        else:
            candidate = self.idle.get(task.lane)
            if candidate is None or dispatch.key_change(self, candidate, task.key):
                return False
            worker = self.idle.pop(task.lane)
        message = dispatch.run_message(worker, [task])
        task.claim()
        if self.events.subscriptions:
            task.announced = True
            self.task_event("task_started", task, worker, key=key_repr(task.key))
        worker.busy_since = self.clock()
        worker.outstanding.append(task)
        if task.key is not None:
            worker.last_key = task.key
        try:
            worker.channel.send(message)
        except OSError:
            pass  # the worker died; the supervisor re-queues or fails the task with the others
        if task.timeout is not None or self.config.recycle.hard_memory is not None:
            self._poke_locked()  # the supervisor must start watching this task
        return True

    def close(self, cancel_futures: bool) -> None:
        with self.lock:
            self.closing = True
            self._cancel_queued = self._cancel_queued or cancel_futures
            self._poke_locked()

    def terminate(self, error: BaseException) -> None:
        """Kill every worker now; whatever is pending or running fails with ``error``."""
        with self.lock:
            self.closing = True
            self._terminate = self._terminate or error
            self._poke_locked()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the supervisor to finish; whether it has."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> PoolSnapshot:
        """A consistent picture of the pool (any thread); see :mod:`memwise.pool.stats`."""
        return stats.take(self, self._probe)

    def event(self, kind: EventKind, **fields: Any) -> None:
        """Deliver an event to the subscribers, if there are any (any thread)."""
        if self.events.subscriptions:
            self.events.emit(PoolEvent(kind, time.time(), **fields))

    def task_event(
        self, kind: EventKind, task: Task, worker: Worker | None = None, **fields: Any
    ) -> None:
        """An event about ``task`` (on ``worker``); callers on hot paths check for subscribers."""
        if not self.events.subscriptions:
            return
        if worker is not None:
            fields.update(lane=worker.lane, pid=worker.pid)
        self.events.emit(
            PoolEvent(kind, time.time(), task_id=task.id, function=task.label, **fields)
        )

    def _poke_locked(self) -> None:
        # One byte in the pipe is enough to wake the supervisor; skipping the write while one
        # is pending saves a system call per submit during bursts.
        if not self._poked:
            self._poked = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    # ----- the supervisor thread ---------------------------------------------------------

    def _run(self) -> None:
        state = self.state_lock
        try:
            with state:
                if self.lanes.minimum == 0:
                    self.started.set()
                self._ensure_workers()
                self._start_spares()
                timeout = self._enforce_deadlines()
            while True:
                with state:
                    if self._finished():
                        break
                ready = self._selector.select(timeout)
                with state:
                    for key, _events in ready:
                        key.data()
                    if timeout is not None:
                        self._enforce_deadlines()  # a deadline passed: act before dispatching
                    dispatch.dispatch(self)
                    self._retire_drained_lanes()
                    if self._ensure_workers():
                        # A warm spare took a recycled worker's lane: it gets work now, not
                        # when something next wakes this loop (nothing may, if every lane
                        # was recycled), and before a new spare's slow start below.
                        dispatch.dispatch(self)
                    self._start_spares()
                    timeout = self._enforce_deadlines()
                self._resolve()
        except BaseException as exc:
            with state:
                self.break_pool(BrokenPool(f"the pool's supervisor failed: {exc!r}"), cause=exc)
        finally:
            self._resolve()
            with state:
                self._cleanup()
            self.event("pool_shutdown")
            self.events.close(wait=False)
            self.finished.set()

    def _finished(self) -> bool:
        if self.broken is not None:
            return not self.everyone()
        if not self.closing or self.queue or self.incoming:
            return False
        everyone = self.everyone()
        if any(w.outstanding for w in everyone):
            return False
        for worker in everyone:
            self.stop(worker)
        return not self.everyone()

    def _on_wake(self) -> None:
        with self.lock:
            self._poked = False
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            if self.incoming:
                self.idle.clear()
            incoming = list(self.incoming)
            self.incoming.clear()
            cancel, self._cancel_queued = self._cancel_queued, False
            terminate, self._terminate = self._terminate, None
        for task in incoming:
            if task.coalesce is not None:
                self._coalesce(task)
            self.queue.push(task)
        if cancel:
            self.dropped_queued = 0
            for task in self.queue.drain():
                self._drop(task, "shutdown")
        if terminate is not None:
            # Here, not in terminate(): break_pool touches workers, this thread's job.
            self.break_pool(terminate, cause=None)

    def _coalesce(self, task: Task) -> None:
        """Latest wins: drop the queued task with the same tag, if it has not started."""
        previous = self.latest.get(task.coalesce)
        if previous is not None and self._drop(previous, "coalesced"):
            self.dropped_queued += 1  # it stays in the queue until popped
        self.latest[task.coalesce] = task

    def _drop(self, task: Task, reason: str) -> bool:
        """Cancel a queued task; True if it had not started (and now counts as cancelled)."""
        self.forget_latest(task)
        if not task.drop():
            return False
        self.tally.cancelled += 1
        self.task_event("task_cancelled", task, reason=reason)
        return True

    def forget_latest(self, task: Task) -> None:
        """``task`` leaves the queue for good: it can no longer be the newest of its tag."""
        if task.coalesce is not None and self.latest.get(task.coalesce) is task:
            del self.latest[task.coalesce]

    def _resolve(self) -> None:
        """Set the results collected in this round, last thing before waiting again.

        A woken caller needs the GIL, which this thread holds until it blocks in ``select``;
        resolving last keeps the bookkeeping of the round out of the caller's latency.
        """
        results, self._results = self._results, []
        for future, value in results:
            future.set_result(value)

    # ----- workers -----------------------------------------------------------------------

    def _ensure_workers(self) -> bool:
        """Fill lanes where needed (the minimum, lanes with keyed work, spare capacity), with a
        warm spare if there is one; True if a spare took a lane."""
        if self.broken is not None or (self.closing and not self.queue):
            return False
        lanes = self.lanes.count
        if len(self.workers) == lanes and max(self.workers) < lanes:
            return False  # every lane is filled: the common case, on every turn of the loop
        # Lanes with keyed work include draining ones (see memwise.pool.lanes).
        wanted = set(range(self.lanes.minimum)) | self.queue.waiting_lanes()
        spare = sum(
            1
            for w in self.workers.values()
            if w.state is State.STARTING or (w.state is State.READY and not w.outstanding)
        )
        need = self.queue.general_count() - spare
        for lane in range(lanes):
            if need <= 0:
                break
            if lane not in self.workers and lane not in wanted:
                wanted.add(lane)
                need -= 1
        promoted = False
        for lane in sorted(wanted - self.workers.keys()):
            if self._promote_spare(lane):
                promoted = True
            elif not self._start_now(lane):
                break
        return promoted

    def _start_now(self, lane: int) -> bool:
        """Start a process for an empty lane on this thread (the lane is needed now: a
        snapshot shows it filled from this turn on); False if it could not be started."""
        try:
            launched = launch(self._ctx, lane, self.config.start_initargs)
        except (SerializationError, OSError) as exc:
            self._start_failed(exc)
            return False
        self._adopt(launched)
        return True

    def _start_spares(self) -> None:
        """Spares start on the launcher's thread: this one keeps dispatching meanwhile."""
        if self.broken is not None or self._retry_start_at is not None:
            return  # broken, or starts are failing: no more processes than the lanes need
        while self._wants_spare():
            self.launcher.request(SPARE)

    def _retire_drained_lanes(self) -> None:
        """Retire the workers of lanes above the count once no key is pinned to them."""
        lanes = self.lanes.count
        if not self.workers or max(self.workers) < lanes:
            return
        waiting = self.queue.waiting_lanes()
        for lane, worker in list(self.workers.items()):
            if lane < lanes or worker.outstanding or lane in waiting:
                continue
            if not self.lanes.pinned(lane):
                self.retire(worker, "resize")

    def _wants_spare(self) -> bool:
        """Warm spares hide a recycled worker's start-up, while there is work to hide it from."""
        return (
            len(self.spares) + len(self.launcher.pending()) < self.config.recycle.warm_spares
            and self.started.is_set()
            and not self.closing
            and (bool(self.queue) or any(w.outstanding for w in self.workers.values()))
        )

    def _promote_spare(self, lane: int) -> bool:
        for spare in self.spares:
            if spare.state is State.READY and spare.kill_reason is None:
                self.spares.remove(spare)
                spare.lane = lane
                self.workers[lane] = spare
                self._replaced(spare)
                return True
        return False

    def _replaced(self, worker: Worker) -> None:
        """``worker`` took a lane whose previous process went away."""
        reason = self.lane_vacated.pop(worker.lane, None)
        if reason is not None:
            self.event("worker_replaced", lane=worker.lane, pid=worker.pid, reason=reason)

    def everyone(self) -> list[Worker]:
        """Every worker process alive: in lanes, retiring, and spares."""
        return [*self.workers.values(), *self.retiring, *self.spares]

    def _on_launched(self) -> None:
        """The launcher started processes (or failed to): make workers of them."""
        for outcome in self.launcher.collect():
            if isinstance(outcome, Launched):
                self._adopt(outcome)
            else:
                self._start_failed(outcome.error)

    def _start_failed(self, exc: BaseException) -> None:
        if self.broken is not None:
            return  # the pool has its error already
        if isinstance(exc, SerializationError):  # would fail for every worker: the pool cannot work
            if not self.started.is_set():
                self.startup_error = exc
            self.break_pool(exc, cause=exc.__cause__)
        elif isinstance(exc, OSError):
            error = WorkerInitError(f"could not start a worker process: {exc}")
            error.__cause__ = exc
            if not self.started.is_set():
                self.startup_error = error
                self.break_pool(error, cause=exc)
            else:
                deaths.note_failure(self, error)
                self._retry_start_at = self.clock() + START_RETRY_SECONDS
        else:
            raise exc

    def _adopt(self, launched: Launched) -> None:
        lane, process, conn = launched.lane, launched.process, launched.conn
        worker = Worker(lane, process, conn, launched.alive, launched.ledger, self.clock())
        self.event("worker_started", lane=lane, pid=worker.pid)
        if lane == SPARE:
            self.spares.append(worker)
        else:
            self.workers[lane] = worker
            self._replaced(worker)
        if self.config.budget is not None:
            self.config.budget.track(worker.pid)
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._on_readable(worker))
        self._selector.register(
            process.sentinel, selectors.EVENT_READ, lambda: deaths.on_exit(self, worker)
        )
        options = InitOptions(
            owner=current_owner(),
            shm_threshold=self.config.shm_threshold,
            recycle=self.config.recycle,
            report_memory=self.config.recycle.needs_memory_reports,
            trim=self.config.trim,
            measure_peak=self.config.budget is not None and self.config.budget.learn,
            imports=self._running_modules() if lane == SPARE else (),
        )
        try:
            worker.channel.send(encode(Init(self.config.init_payload, options)))
        except OSError:
            pass  # it died already; its sentinel will say how
        if self.broken is not None:
            self.kill(worker, "broken")  # started before the pool broke

    def _running_modules(self) -> tuple[str, ...]:
        """Modules of the functions the workers run now (the main script is preloaded)."""
        names = {
            getattr(t.fn, "__module__", None) for w in self.workers.values() for t in w.outstanding
        }
        return tuple(sorted(n for n in names if n and n not in ("__main__", "__mp_main__")))

    def retire(self, worker: Worker, reason: str) -> None:
        """Replace ``worker``: it takes no new task, finishes what it holds, then stops."""
        self.tally.recycled(worker.lane, reason)
        logger.info(
            "recycling worker pid %d in lane %d (%s); it finishes its tasks first",
            worker.pid,
            worker.lane,
            reason,
        )
        self.event("worker_recycled", lane=worker.lane, pid=worker.pid, reason=reason)
        self.lane_vacated[worker.lane] = reason
        worker.retiring = True
        if self.workers.get(worker.lane) is worker:
            del self.workers[worker.lane]
        self.retiring.append(worker)
        if not worker.outstanding:
            self.stop(worker)

    def stop(self, worker: Worker) -> None:
        if worker.state is State.STOPPING or worker.outstanding:
            return
        worker.state = State.STOPPING
        worker.since = self.clock()
        try:
            worker.channel.send(encode(Stop()))
        except OSError:
            pass

    def kill(self, worker: Worker, reason: str) -> None:
        worker.kill_reason = reason
        try:
            worker.process.kill()
        except (OSError, ValueError):
            pass

    def forget(self, worker: Worker) -> None:
        for fileobj in (worker.conn, worker.process.sentinel):
            try:
                self._selector.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        worker.conn.close()
        worker.alive.close()
        worker.process.close()
        if self.config.budget is not None:
            self.config.budget.untrack(worker.pid)
        if self.workers.get(worker.lane) is worker:
            del self.workers[worker.lane]
        elif worker in self.retiring:
            self.retiring.remove(worker)
        elif worker in self.spares:
            self.spares.remove(worker)

    def reclaim_lent_workers(self) -> None:
        with self.lock:
            self.idle.clear()

    def _enforce_deadlines(self) -> float | None:
        """Act on overdue workers; return the seconds until the next deadline (or None)."""
        now = self.clock()
        nearest: float | None = None
        for worker in self.everyone():
            deadline = worker.deadline(self.config.init_timeout, self._idle_limit(worker))
            if deadline is not None and deadline <= now:
                self._on_deadline(worker)
            elif deadline is not None and (nearest is None or deadline < nearest):
                nearest = deadline
        for worker in list(self.workers.values()):
            if len(worker.outstanding) > 1 and worker.kill_reason is None:
                steal_at = worker.busy_since + dispatch.STEAL_SECONDS
                if steal_at <= now:
                    dispatch.steal(self, worker)
                    nearest = now  # dispatch the stolen tasks without waiting for an event
                elif nearest is None or steal_at < nearest:
                    nearest = steal_at
        if self.config.recycle.hard_memory is not None and any(
            w.outstanding for w in self.workers.values()
        ):
            if now >= self._next_poll:
                self._check_hard_memory()
                self._next_poll = now + self.config.recycle.poll
            nearest = self._next_poll if nearest is None else min(nearest, self._next_poll)
        if self._retry_start_at is not None:
            if self._retry_start_at <= now:
                self._retry_start_at = None  # the loop calls _ensure_workers next
            else:
                nearest = min(nearest or self._retry_start_at, self._retry_start_at)
        if self.budget_blocked and self.config.budget is not None:
            recheck = now + self.config.budget.poll
            nearest = recheck if nearest is None else min(nearest, recheck)
        return None if nearest is None else max(0.0, nearest - now)

    def _idle_limit(self, worker: Worker) -> float | None:
        idle = self.config.recycle.idle
        if worker in self.spares:
            return idle
        # A fresh worker inside the minimum would only be replaced by another fresh one.
        if idle is None or (worker.tasks_done == 0 and worker.lane < self.lanes.minimum):
            return None
        return idle

    def _on_deadline(self, worker: Worker) -> None:
        # A submitting thread may have handed this (idle) worker a task since the deadline was
        # computed: take the loans back and look again.
        self.reclaim_lent_workers()
        deadline = worker.deadline(self.config.init_timeout, self._idle_limit(worker))
        if deadline is None or deadline > self.clock():
            return
        if worker.state is State.STARTING:
            what = "its initializer did not finish" if self.config.init_payload else "not ready"
            worker.init_error = WorkerInitError(
                f"a worker (pid {worker.pid}) was {what} within init_timeout="
                f"{self.config.init_timeout} s; it was killed"
            )
            self.kill(worker, "init timeout")
        elif worker.state is State.STOPPING:
            self.kill(worker, "stop timeout")
        elif worker.outstanding:
            worker.timed_out = worker.outstanding[0]
            self.kill(worker, "timeout")
        elif worker in self.spares:
            self.stop(worker)
        else:
            self.retire(worker, "idle")

    def _check_hard_memory(self) -> None:
        limit = self.config.recycle.hard_memory_bytes
        assert limit is not None
        for worker in list(self.workers.values()):
            if not worker.outstanding or worker.kill_reason is not None:
                continue
            try:
                worker.private = private_memory(worker.pid)
            except (ProcessLookupError, PermissionError):
                continue
            if worker.private > limit:
                self.tally.recycled(worker.lane, "hard_memory")
                logger.info(
                    "killing worker pid %d in lane %d: private memory %d bytes is over the "
                    "hard limit of %d",
                    worker.pid,
                    worker.lane,
                    worker.private,
                    limit,
                )
                self.event("worker_recycled", lane=worker.lane, pid=worker.pid, reason="memory")
                self.kill(worker, "memory")

    # ----- messages ----------------------------------------------------------------------

    def _on_readable(self, worker: Worker) -> None:
        if worker.conn.closed:
            return  # its exit was handled earlier in the same round of events
        try:
            messages = worker.channel.receive()
        except (EOFError, OSError):
            # The process is exiting; its sentinel will tell how, so wait for that.
            try:
                self._selector.unregister(worker.conn)
            except (KeyError, ValueError, OSError):
                pass
            return
        for data in messages:
            self.on_message(worker, decode(data))

    def on_message(self, worker: Worker, message: Done | Ready | InitError) -> None:
        if isinstance(message, Done):
            self._on_done(worker, message)
        elif isinstance(message, Ready):
            if worker.state is not State.STARTING:
                return  # told to stop while starting (a spare at shutdown): its exit is expected
            worker.state = State.READY
            worker.since = worker.idle_since = self.clock()
            self.event("worker_ready", lane=worker.lane, pid=worker.pid)
            self._check_started()
        else:
            cause = _wire.load_exception(message.error)
            if isinstance(cause, MissingMainGuard):
                cause.__cause__ = None  # its message says all; the import's traceback is noise
                worker.init_error = cause
                return
            error = WorkerInitError(
                f"a worker (pid {worker.pid}) failed {message.stage}: {type(cause).__name__}: "
                f"{cause}; see the remote traceback above"
            )
            error.__cause__ = cause
            worker.init_error = error

    def _check_started(self) -> None:
        ready = sum(1 for w in self.workers.values() if w.state is State.READY)
        if ready >= self.lanes.minimum:
            self.started.set()

    def _on_done(self, worker: Worker, done: Done) -> None:
        task = worker.outstanding.popleft()
        assert task.id == done.task_id, "worker results arrived out of order"
        try:
            self._finish(worker, task, done)
        except BaseException as exc:
            # The task has left every list break_pool looks at: fail it here, or it is lost.
            if not task.future.done():
                task.future.set_exception(exc)
            raise

    def _finish(self, worker: Worker, task: Task, done: Done) -> None:
        task.release_memory()
        _oob.returned(done.returns, worker.pid)
        if done.peak is not None:
            self._learn_peak(task, done.peak)
        private, seconds = done.private, done.seconds
        for gift in done.gifts:
            produced = worker.result_sizes
            produced[gift.nbytes] = min(produced.get(gift.nbytes, 0) + 1, dispatch.RESTOCK_DEPTH)
        now = self.clock()
        worker.busy_since = now
        worker.tasks_done += 1
        worker.private = private
        if not worker.outstanding:
            worker.idle_since = now
        self.service_time = (
            seconds if self.service_time is None else 0.8 * self.service_time + 0.2 * seconds
        )
        self.failures.clear()
        self._complete(worker, task, done, now)
        if not worker.retiring:
            reason = self.config.recycle.after_task(worker.tasks_done, private)
            if reason is not None:
                self.reclaim_lent_workers()
                dispatch.take_back(self, worker)  # the worker starts nothing more; see worker
                self.retire(worker, reason)
        elif not worker.outstanding:
            self.stop(worker)

    def _learn_peak(self, task: Task, peak: int) -> None:
        # The largest recent peak, decaying so that one outlier does not block forever.
        label = task.label
        self.peaks[label] = max(peak, int(self.peaks.get(label, 0) * PEAK_DECAY))

    def _complete(self, worker: Worker, task: Task, done: Done, now: float) -> None:
        status = done.status
        try:
            if status == OK:
                buffers = _oob.adopted(done.gifts)
                value = _wire.loads(done.payload, lambda: f"the result of {task}", buffers)
            else:
                error = _wire.load_exception(done.payload)
        except (SerializationError, OSError, ValueError) as exc:
            # Unpicklable, or its result slots could not be mapped: this task fails alone.
            status, error = RAISED, exc
        tally = self.tally
        tally.ran(done.seconds, now)
        if status == OK:
            tally.done += 1
            if self.events.subscriptions:
                self.task_event("task_finished", task, worker, seconds=done.seconds)
            self._results.append((task.future, value))
        else:
            tally.failed += 1
            self.task_event("task_failed", task, worker, reason=type(error).__name__)
            task.future.set_exception(error)

    def break_pool(self, error: BaseException, cause: BaseException | None) -> None:
        """Fail everything pending with ``error`` and kill every worker."""
        if cause is not None and error is not cause:
            error.__cause__ = cause
        with self.lock:
            if self.broken is not None:
                return
            self.broken = error
            self.idle.clear()
            pending = list(self.incoming) + self.queue.drain()
            self.dropped_queued = 0
            self.incoming.clear()
        for worker in self.everyone():
            pending.extend(worker.outstanding)
            worker.outstanding.clear()
            self.kill(worker, "broken")
        self.event("pool_broken", reason=str(error))
        for task in pending:
            task.release_memory()
            if not task.future.done():
                self.task_event("task_failed", task, reason=type(error).__name__)
                task.future.set_exception(error)
        self.started.set()

    # ----- the end -----------------------------------------------------------------------

    def _cleanup(self) -> None:
        self._selector.unregister(self.launcher)
        for launched in self.launcher.close():  # started while the pool was ending
            self._adopt(launched)
        for worker in self.everyone():
            self.kill(worker, "cleanup")
            worker.process.join(5.0)
            self.forget(worker)
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        _oob.pool_closed()
        self.started.set()
