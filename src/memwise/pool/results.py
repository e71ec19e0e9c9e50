"""What workers send back, and how it reaches the futures (supervisor thread only).

A worker answers its READY handshake (or an init failure) and then one ``Done`` per task, in
the order it was sent them. Each ``Done`` ends its task's stay in ``worker.outstanding``,
teaches the dispatcher (run time, memory peak, result sizes), may recycle the worker, and
yields a value or an error. Errors are set at once; values are set by :meth:`Results.resolve`,
which the supervisor calls last in each round, just before it waits again: a woken caller
needs the GIL, which the supervisor holds until it blocks, so resolving last keeps the round's
bookkeeping out of the caller's latency.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from memwise import _oob, _wire
from memwise.errors import MissingMainGuard, WorkerInitError
from memwise.pool._protocol import Done, InitError, Ready, decode
from memwise.pool.config import PoolConfig
from memwise.pool.crew import Crew
from memwise.pool.deaths import Deaths
from memwise.pool.dispatch import Dispatcher
from memwise.pool.handle import Worker
from memwise.pool.inbox import Inbox
from memwise.pool.outcome import outcome
from memwise.pool.stats import Tally
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task


class Results:
    """Reads workers' messages and completes their tasks; see the module docstring."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        crew: Crew,
        dispatcher: Dispatcher,
        deaths: Deaths,
        inbox: Inbox,
        tally: Tally,
        hub: EventHub,
    ) -> None:
        self._recycle = config.recycle
        self._clock = config.clock
        self._crew = crew
        self._dispatcher = dispatcher
        self._deaths = deaths
        self._inbox = inbox
        self._tally = tally
        self._hub = hub
        self._values: list[tuple[Future[Any], Any]] = []  # set by resolve()

    def on_readable(self, worker: Worker) -> None:
        """``worker``'s connection has data: read every whole message there."""
        if worker.conn.closed:
            return  # its exit was handled earlier in the same round of events
        try:
            messages = worker.channel.receive()
        except (EOFError, OSError):
            # The process is exiting; its sentinel will tell how, so wait for that.
            self._crew.unwatch(worker.conn)
            return
        for data in messages:
            self.on_message(worker, decode(data))

    def drain(self, worker: Worker) -> None:
        """Read what an exited worker sent before it died: those results still count. A call
        it did not answer becomes the task it died in."""
        if worker.calling is not None:
            for data in worker.replies.drain():
                self._on_reply(worker, decode(data))
        if worker.calling is not None:
            worker.outstanding.appendleft(worker.calling)
            worker.calling = None
        for data in worker.channel.drain():
            self.on_message(worker, decode(data))

    def on_message(self, worker: Worker, message: Done | Ready | InitError) -> None:
        if isinstance(message, Done):
            self._on_done(worker, message)
        elif isinstance(message, Ready):
            self._crew.on_ready(worker)
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

    def resolve(self) -> None:
        """Set the values collected in this round, last thing before waiting again."""
        values, self._values = self._values, []
        for future, value in values:
            future.set_result(value)

    def _on_done(self, worker: Worker, done: Done) -> None:
        task = worker.outstanding.popleft()
        assert task.id == done.task_id, "worker results arrived out of order"
        self._settle(worker, task, done, None)

    def on_reply(self, worker: Worker) -> None:
        """The reply pipe of a worker whose calling thread stopped waiting is readable."""
        try:
            messages = worker.replies.receive()
        except (EOFError, OSError):
            messages = []  # it is exiting; its sentinel will tell how
            self._crew.unwatch(worker.reply)
        for data in messages:
            self._on_reply(worker, decode(data))

    def _on_reply(self, worker: Worker, done: Done) -> None:
        task = worker.calling
        assert task is not None and task.id == done.task_id, "a reply nobody waits for"
        worker.calling = None
        self._crew.unwatch(worker.reply)
        self._settle(worker, task, done, None)

    def book(self, worker: Worker, task: Task, done: Done, error: BaseException | None) -> None:
        """Account for a call whose calling thread completed its future (``error``: how it
        failed, or None)."""
        if worker.calling is task:
            worker.calling = None  # kept until now where workers retire after a task
        if worker.conn.closed:  # its exit was handled first: nothing left but to count it
            self._record(worker, task, done, self._clock(), error is None, error)
            return
        self._settle(worker, task, done, (error is None, error))

    def _settle(
        self, worker: Worker, task: Task, done: Done, settled: tuple[bool, Any] | None
    ) -> None:
        """Account for ``task``'s ``done``; complete its future unless ``settled`` already."""
        try:
            now = self._account(worker, task, done, timers=settled is None)
            if settled is None:
                self._complete(worker, task, done, now)
            else:
                self._record(worker, task, done, now, *settled)
            self._maybe_recycle(worker, done)
        except BaseException as exc:
            # The task has left every list break_pool looks at: fail it here, or it is lost.
            if not task.future.done():
                task.future.set_exception(exc)
            raise

    def _account(self, worker: Worker, task: Task, done: Done, timers: bool) -> float:
        """Everything a finished task teaches; ``timers``: it just finished, so the worker's
        busy and idle times start now (not for a call, accounted for later)."""
        task.release_memory()
        _oob.returned(done.returns, worker.pid)
        self._dispatcher.learn(worker, task, done)
        now = self._clock()
        worker.tasks_done += 1
        worker.private = done.private
        if timers:
            worker.busy_since = now
            if not worker.busy:
                worker.idle_since = now
        self._deaths.task_succeeded()
        return now

    def _maybe_recycle(self, worker: Worker, done: Done) -> None:
        if not worker.retiring:
            reason = self._recycle.after_task(worker.tasks_done, done.private)
            if reason is not None:
                self._inbox.reclaim()
                self._dispatcher.take_back(worker)  # it starts nothing more; see worker
                self._crew.retire(worker, reason)
        elif not worker.busy:
            self._crew.stop(worker)

    def _complete(self, worker: Worker, task: Task, done: Done, now: float) -> None:
        ok, result = outcome(done, task)
        self._record(worker, task, done, now, ok, result)
        if ok:
            self._values.append((task.future, result))
        else:
            task.future.set_exception(result)

    def _record(
        self, worker: Worker, task: Task, done: Done, now: float, ok: bool, result: Any
    ) -> None:
        """Count the task's outcome and announce it."""
        tally = self._tally
        tally.ran(done.seconds, now)
        if ok:
            tally.done += 1
            if self._hub.subscriptions:
                self._hub.announce_task("task_finished", task, worker, seconds=done.seconds)
        else:
            tally.failed += 1
            self._hub.announce_task("task_failed", task, worker, reason=type(result).__name__)
