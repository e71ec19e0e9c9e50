"""The supervisor: the one thread that owns every worker process of a pool.

Data flow of one task (messages in :mod:`memwise.pool._protocol`)::

    user thread                  supervisor thread                        worker process
    -----------                  -----------------                        --------------
    WorkerPool.submit
      pickle (fn, args) -> Task
      Supervisor.submit
        (route key to a lane,
         pin it; task_submitted)
        Inbox.hand_over_locked --> incoming --_on_wake--> Dispatcher.enqueue
          |                                      (latest wins) -> TaskQueue
          |                                      (priority; per-key FIFO
          |                                       pinned to a lane)
          |                                               |
          |                      Dispatcher.dispatch: claim, budget,
          |                        batch per READY worker of the Crew ---Run---> run in order,
          |                        (worker.outstanding)                          ledger.begin
          |                                               |                           |
          +-- direct path: a worker the Inbox lent        |                           |
          |   (only while nothing is queued) ----Run------+-------------------------->|
          |                                                                           |
          +-- call path (WorkerPool.call): the caller holds a lent worker ---Run----->|
              and reads its Done from the reply pipe <------------Done (reply pipe)---|
              itself, settles the future, gives the worker back (Answer) ...          |
                                 _on_wake / snapshot: Results.book (accounting only)  |
                                                                                      |
                                 Results.on_readable <-----------Done-----------------+
                                   outstanding.popleft, tally, Dispatcher.learn,
                                   recycle? (Crew.retire); value or error
                                 Results.resolve (after the round): future.set_result
                                 _on_exit (sentinel): Results.drain, then Deaths.on_exit:
                                   fail, retry or re-queue what the dead worker held;
                                   Crew.staff starts a new worker in its lane

The parts, each owning its own state (see their modules):

- :class:`~memwise.pool.inbox.Inbox`: everything user threads share with this thread (the
  tasks handed over, the workers lent for the direct path, the wake-up pipe, whether the pool
  is closing or broken), under its ``lock``. The loan invariant is stated there, once.
- :class:`~memwise.pool.crew.Crew`: the processes, by lane, retiring and spare; starting,
  stopping, killing, forgetting them; what this thread waits on.
  :class:`~memwise.pool.deadlines.Deadlines` acts on their deadlines.
- :class:`~memwise.pool.dispatch.Dispatcher`: the queue's policies (latest wins, pipelining,
  budget admission, stealing) and what finished tasks teach them.
- :class:`~memwise.pool.results.Results` and :class:`~memwise.pool.deaths.Deaths`: what
  workers send back, and what happens when one exits.
- :class:`~memwise.pool.stats.Tally`, :class:`~memwise.pool.subscribers.EventHub`,
  :class:`~memwise.pool.lanes.Lanes`, :class:`~memwise.pool.queue.TaskQueue`: shared by the
  parts that need them, passed to each explicitly.

The supervisor waits on the wake-up pipe, every worker's connection and process sentinel, and
the nearest deadline, and does all the rest on this one thread, in order: having a single
owner is what makes crash handling tractable. User threads touch a worker only through the
Inbox's direct path.

Locks, always taken in this order: ``_state_lock`` (this thread holds it for each round of
work, never while waiting; snapshots and ``resize`` take it to see or change state between
rounds), then ``Inbox.lock``. ``Lanes`` has a lock of its own, taken by futures' callbacks, so
it is never held while a future is resolved.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING

from memwise import _oob
from memwise.errors import BrokenPool
from memwise.pool import stats
from memwise.pool.config import PoolConfig
from memwise.pool.context import get_context
from memwise.pool.crew import Crew
from memwise.pool.deadlines import Deadlines, earliest
from memwise.pool.deaths import Deaths
from memwise.pool.dispatch import Dispatcher
from memwise.pool.handle import Worker
from memwise.pool.inbox import Answer, Inbox
from memwise.pool.lanes import Lanes
from memwise.pool.outcome import settle
from memwise.pool.probe import ProcessProbe
from memwise.pool.queue import TaskQueue
from memwise.pool.refusals import refuse_resize_unless_open, refuse_tasks_unless_open
from memwise.pool.results import Results
from memwise.pool.snapshot import PoolSnapshot, PoolState
from memwise.pool.stats import Tally, key_repr
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task
from memwise.shared import sweep_orphans

if TYPE_CHECKING:
    from memwise.pool.subscribers import Callback, Subscription

logger = logging.getLogger(__name__)


class Supervisor:
    """Owns the workers of one pool; see the module docstring.

    Its surface (what :class:`~memwise.pool.api.WorkerPool` uses): ``start``, ``submit``,
    ``call``, ``resize``, ``lane_count``, ``close``, ``terminate``, ``join``, ``snapshot``,
    ``subscribe``, ``unsubscribe`` and ``close_events``. Everything else is private.
    """

    def __init__(self, config: PoolConfig) -> None:
        self._config = config
        clock = self._clock = config.clock
        self._thread = threading.Thread(target=self._run, name="memwise-supervisor", daemon=True)
        # Held by this thread for each round of work (not while it waits), and by snapshots:
        # a snapshot sees the state between two rounds, never half of one. Taken before
        # ``Inbox.lock``. Reentrant: a future's callback run by this thread may take a snapshot.
        self._state_lock = threading.RLock()
        # Set once ``min_workers`` are READY (or the pool broke trying): start() returns.
        self._started = threading.Event()
        self._startup_error: BaseException | None = None  # what start() raises
        self._finished = threading.Event()  # this thread has ended
        # Counters: this thread, under _state_lock (``submitted``: any thread, under Inbox.lock).
        self._tally = tally = Tally()
        self._hub = hub = EventHub()
        self._probe = ProcessProbe()
        self._lanes = lanes = Lanes(config.max_workers, config.min_workers)
        self._queue = queue = TaskQueue()  # this thread only
        self._inbox = inbox = Inbox(
            clock=clock,
            hub=hub,
            on_key_change=config.recycle.on_key_change,
            watch_every_task=config.recycle.hard_memory is not None,
            relend=not config.recycle.retires_after_task,
        )
        self._crew = crew = Crew(
            config,
            get_context(config.start_method),
            lanes=lanes,
            queue=queue,
            inbox=inbox,
            tally=tally,
            hub=hub,
            started=self._started,
            on_readable=self._on_readable,
            on_exit=self._on_exit,
            start_failed=self._start_failed,
        )
        crew.watch(inbox.wake_fd, self._on_wake)
        self._deadlines = Deadlines(
            config, crew=crew, inbox=inbox, lanes=lanes, tally=tally, hub=hub
        )
        self._dispatcher = dispatcher = Dispatcher(
            config, queue=queue, crew=crew, inbox=inbox, lanes=lanes, tally=tally, hub=hub
        )
        self._deaths = deaths = Deaths(
            config,
            queue=queue,
            crew=crew,
            inbox=inbox,
            tally=tally,
            hub=hub,
            break_pool=self._break_pool,
            start_failed=self._start_failed,
        )
        self._results = Results(
            config,
            crew=crew,
            dispatcher=dispatcher,
            deaths=deaths,
            inbox=inbox,
            tally=tally,
            hub=hub,
        )

    # ----- called from user threads -------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor; wait until ``min_workers`` are ready or one fails to start."""
        swept = sweep_orphans()  # shared memory left by a pool whose process was killed
        if swept:
            logger.info("removed %d shared-memory segment(s) of dead processes", len(swept))
        _oob.pool_opened()
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    def submit(self, task: Task) -> None:
        with self._inbox.lock:
            self._admit_locked(task)
            self._inbox.hand_over_locked(task)

    def call(self, task: Task) -> None:
        """Run ``task`` by the call path if a worker is lent, else as ``submit`` does; either
        way its future is complete or will be (see :mod:`memwise.pool.inbox`)."""
        inbox = self._inbox
        with inbox.lock:
            self._admit_locked(task)
            worker = inbox.hold_locked(task)
            if worker is None:
                inbox.hand_over_locked(task)
                return
        inbox.complete_call(worker, task)

    def _admit_locked(self, task: Task) -> None:
        refuse_tasks_unless_open(self._inbox.broken, self._inbox.closing)
        self._tally.submitted += 1
        if task.key is not None:
            task.lane = self._lanes.route(task.key)
            key = task.key
            task.future.add_done_callback(lambda _: self._unpin(key))
        if self._hub.subscriptions:  # before any other thread can see the task
            self._hub.announce_task("task_submitted", task, key=key_repr(task.key))

    def _unpin(self, key: Hashable) -> None:
        if self._lanes.release(key) is not None:
            self._inbox.poke()  # a draining lane may have nothing left to wait for

    @property
    def lane_count(self) -> int:
        return self._lanes.count

    def resize(self, count: int) -> None:
        """Set the number of lanes; see :mod:`memwise.pool.lanes`."""
        inbox = self._inbox
        with self._state_lock, inbox.lock:
            refuse_resize_unless_open(inbox.broken, inbox.closing)
            previous = self._lanes.resize(count)
            inbox.reclaim_locked()  # a lent worker may be in a lane that now drains
            inbox.poke_locked()
        if previous != count:
            logger.info("pool resized from %d to %d lanes", previous, count)
            self._hub.announce("pool_resized", reason=f"{previous} -> {count}")

    def close(self, cancel_futures: bool) -> None:
        self._inbox.close(cancel_futures)

    def terminate(self, error: BaseException) -> None:
        """Kill every worker now; whatever is pending or running fails with ``error``."""
        self._inbox.terminate(error)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the supervisor to finish; whether it has."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> PoolSnapshot:
        """A consistent picture of the pool (any thread); see :mod:`memwise.pool.stats`."""
        inbox = self._inbox
        with self._state_lock:
            for answer in inbox.take_quiet_answers():  # calls given back while it slept
                self._on_answer(answer)
        with self._state_lock, inbox.lock:
            draft = stats.draft(
                now=self._clock(),
                state=self._state(),
                broken=inbox.broken,
                crew=self._crew,
                incoming=inbox.incoming_locked(),
                queue=self._queue,
                dispatcher=self._dispatcher,
                lanes=self._lanes,
                tally=self._tally,
            )
        return stats.complete(draft, self._probe, self._config.budget)

    def _state(self) -> PoolState:
        if self._inbox.broken is not None:
            return "broken"
        if self._inbox.closing:
            return "shut down" if self._finished.is_set() else "closing"
        return "running"

    def subscribe(self, callback: Callback) -> Subscription:
        return self._hub.subscribe(callback)

    def unsubscribe(self, callback: Callback) -> None:
        self._hub.unsubscribe(callback)

    def close_events(self) -> None:
        """Wait until every subscriber has had its last event (after the pool ended)."""
        self._hub.close(wait=True)

    # ----- the supervisor thread ---------------------------------------------------------

    def _run(self) -> None:
        state = self._state_lock
        crew, dispatcher, results = self._crew, self._dispatcher, self._results
        try:
            with state:
                if self._lanes.minimum == 0:
                    self._started.set()
                crew.staff()
                crew.start_spares()
                timeout = self._enforce_deadlines()
            while True:
                with state:
                    if self._done():
                        break
                ready = crew.wait(timeout)
                with state:
                    for key, _events in ready:
                        key.data()
                    if timeout is not None:
                        self._enforce_deadlines()  # a deadline passed: act before dispatching
                    dispatcher.dispatch()
                    crew.retire_drained_lanes()
                    if crew.staff():
                        # A warm spare took a recycled worker's lane: it gets work now, not
                        # when something next wakes this loop.
                        dispatcher.dispatch()
                    crew.start_spares()
                    timeout = self._enforce_deadlines()
                results.resolve()
        except BaseException as exc:
            with state:
                self._break_pool(BrokenPool(f"the pool's supervisor failed: {exc!r}"), exc)
        finally:
            results.resolve()
            with state:
                crew.close()
                self._inbox.close_pipe()
                _oob.pool_closed()
                self._started.set()
            self._hub.announce("pool_shutdown")
            self._hub.close(wait=False)
            self._finished.set()

    def _done(self) -> bool:
        """Whether the pool has ended: broken, or closed with every task done."""
        if self._inbox.broken is not None:
            return not self._crew.everyone()
        if not self._inbox.closing or self._queue or self._inbox.has_incoming():
            return False
        return self._crew.stop_idle()

    def _on_wake(self) -> None:
        delivery = self._inbox.collect()
        for answer in delivery.answers:
            self._on_answer(answer)
        self._dispatcher.enqueue(delivery.tasks)
        if delivery.cancel_queued:
            self._dispatcher.cancel_queued("shutdown")
        if delivery.terminate is not None:
            # Here, not in terminate(): breaking the pool touches workers, this thread's job.
            self._break_pool(delivery.terminate, None)

    def _on_readable(self, worker: Worker) -> None:
        self._results.on_readable(worker)

    def _on_answer(self, answer: Answer) -> None:
        """A calling thread gave a worker back (see :meth:`call`)."""
        worker = answer.worker
        if answer.done is not None:
            self._results.book(worker, answer.task, answer.done, answer.error)
        elif answer.abandoned and worker.calling is answer.task and not worker.exit_deferred:
            self._crew.watch(worker.reply, lambda: self._results.on_reply(worker))
        if worker.exit_deferred:
            worker.exit_deferred = False
            self._on_exit(worker)

    def _on_exit(self, worker: Worker) -> None:
        if self._inbox.defer_exit(worker):
            self._crew.unwatch(worker.process.sentinel)  # until the calling thread is done
            return
        for answer in self._inbox.take_answers(worker):  # calls it answered before it died
            self._on_answer(answer)
        if worker.conn.closed:
            return  # handled by one of them
        self._inbox.reclaim()  # take loans back before re-queueing or closing anything
        self._results.drain(worker)
        self._deaths.on_exit(worker)

    def _enforce_deadlines(self) -> float | None:
        """Act on whatever is overdue; return the seconds until the next deadline (or None)."""
        now = self._clock()
        nearest = earliest(
            self._deadlines.enforce(now),  # start-up, stop grace, timeouts, idle
            self._dispatcher.steal_overdue(now),
            self._deadlines.poll_memory(now),
            self._crew.start_retry(now),
            self._dispatcher.budget_recheck(now),
        )
        return None if nearest is None else max(0.0, nearest - now)

    def _start_failed(self, error: BaseException, cause: BaseException | None, fatal: bool) -> None:
        """A worker never became ready: during start-up (or ``fatal``) the pool breaks and
        start() raises ``error``; later it counts toward a restart storm."""
        if not self._started.is_set():
            self._startup_error = error
            self._break_pool(error, cause)
        elif fatal:
            self._break_pool(error, cause)
        else:
            self._deaths.note_failure(error)

    def _break_pool(self, error: BaseException, cause: BaseException | None) -> None:
        """Fail everything pending with ``error`` and kill every worker."""
        if cause is not None and error is not cause:
            error.__cause__ = cause
        with self._inbox.lock:
            pending = self._inbox.break_locked(error)
            if pending is None:
                return
            pending += self._dispatcher.drain()
        for worker in self._crew.everyone():
            pending.extend(worker.outstanding)
            worker.outstanding.clear()
            if worker.calling is not None:
                pending.append(worker.calling)  # its calling thread sees the kill
            self._crew.kill(worker, "broken")
        self._hub.announce("pool_broken", reason=str(error))
        for task in pending:
            task.release_memory()
            if not task.future.done():
                self._hub.announce_task("task_failed", task, reason=type(error).__name__)
                settle(task.future, False, error)  # a calling thread may settle it first
        self._started.set()
