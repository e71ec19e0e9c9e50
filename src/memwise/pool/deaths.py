"""What the supervisor does when a worker process exits, case by case (cf. loky).

- It was told to stop (shutdown, recycling): nothing to do.
- It died while running a task: that task fails with ``WorkerCrashed`` (``TaskTimeout`` if
  the supervisor killed it for overrunning; re-run instead while ``retries`` allows, except
  after a timeout, which would only recur); tasks queued behind it on the same worker never
  started, so they go back to their places in the queue untouched.
- It died before finishing its initializer: during start-up that is ``WorkerInitError``
  raised by the pool's constructor; later it counts as a failed start.
- It died idle: a failed start too.
- Failed starts pile up (``STORM_DEATHS`` within ``STORM_SECONDS`` with no task succeeding):
  the pool is broken, and every pending future fails with one ``BrokenPool``, rather than the
  pool respawning forever.

Replacements are not started here: the supervisor's loop starts a worker in every lane that
needs one, whatever emptied it. Results the worker sent just before dying have been read by
then (the supervisor drains its connection first), so they count.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from memwise import _oob
from memwise.errors import (
    BrokenPool,
    MissingMainGuard,
    TaskTimeout,
    WorkerCrashed,
    WorkerInitError,
)
from memwise.memory import format_size
from memwise.pool.config import PoolConfig
from memwise.pool.context import EXIT_MISSING_MAIN_GUARD, main_script, missing_guard_message
from memwise.pool.crew import Crew, StartFailure
from memwise.pool.handle import State, Worker, describe_exit
from memwise.pool.inbox import Inbox
from memwise.pool.queue import TaskQueue
from memwise.pool.stats import Tally
from memwise.pool.subscribers import EventHub

logger = logging.getLogger(__name__)

STORM_DEATHS = 5
STORM_SECONDS = 10.0


class Deaths:
    """Handles worker exits (supervisor thread only); see the module docstring.

    ``break_pool(error, cause)`` fails everything pending; ``start_failed(error, cause,
    fatal)`` reports a worker that never became ready (see :class:`~memwise.pool.crew.Crew`).
    """

    def __init__(
        self,
        config: PoolConfig,
        *,
        queue: TaskQueue,
        crew: Crew,
        inbox: Inbox,
        tally: Tally,
        hub: EventHub,
        break_pool: Callable[[BaseException, BaseException | None], None],
        start_failed: StartFailure,
    ) -> None:
        self._config = config
        self._clock = config.clock
        self._queue = queue
        self._crew = crew
        self._inbox = inbox
        self._tally = tally
        self._hub = hub
        self._break_pool = break_pool
        self._start_failed = start_failed
        # When recent failed starts and idle deaths happened, with no task succeeding since.
        self._failures: deque[float] = deque()

    def on_exit(self, worker: Worker) -> None:
        """The worker's process has exited (its connection drained, loans taken back)."""
        worker.process.join(1.0)
        exitcode = worker.process.exitcode
        # However it ended: its loans end, and the slots it held (warm ones given back to it
        # for its results, ones it created and never handed over) are unlinked.
        _oob.reclaim(worker.pid)
        self._crew.forget(worker)
        if self._inbox.broken is not None:
            return
        if worker.state is State.STOPPING and not worker.outstanding:
            return
        if worker.state is State.STARTING:
            error = worker.init_error or self._start_error(worker, exitcode)
            self._start_failed(error, error.__cause__, False)
            return
        tally = self._tally
        tally.died(worker.lane)
        self._report(worker, exitcode)
        if worker.outstanding:
            self._on_task_death(worker, exitcode)
        else:
            self.note_failure(WorkerCrashed(_idle_death(worker, exitcode), worker.pid, exitcode))
        max_restarts = self._config.max_restarts
        if max_restarts is not None and tally.restarts > max_restarts:
            self._break_pool(
                BrokenPool(
                    f"workers died {tally.restarts} times, more than max_restarts="
                    f"{max_restarts}; the last exited with {describe_exit(exitcode)}"
                ),
                None,
            )

    def task_succeeded(self) -> None:
        """A task completed: deaths so far were not a storm."""
        self._failures.clear()

    def note_failure(self, error: BaseException) -> None:
        """Count a failed start; break the pool when they come too fast."""
        now = self._clock()
        failures = self._failures
        failures.append(now)
        while failures and failures[0] < now - STORM_SECONDS:
            failures.popleft()
        if len(failures) >= STORM_DEATHS:
            logger.info(
                "restart storm: %d workers died within %.0f s without completing a task; "
                "breaking the pool",
                len(failures),
                STORM_SECONDS,
            )
            self._break_pool(
                BrokenPool(
                    f"{len(failures)} workers died within {STORM_SECONDS:.0f} s without "
                    f"completing a task; the last: {error}. Fix the cause and create a new pool"
                ),
                error,
            )

    def _report(self, worker: Worker, exitcode: int | None) -> None:
        """Log and announce an unexpected exit; the supervisor's loop starts a replacement."""
        started = worker.ledger.started.value
        running = next((t for t in worker.outstanding if t.id == started), None)
        reason = worker.kill_reason or "died"
        logger.warning(
            "worker pid %d in lane %d %s with %s%s; a replacement starts",
            worker.pid,
            worker.lane,
            "was killed" if worker.kill_reason else "died",
            describe_exit(exitcode),
            "" if running is None else f" while running {running}",
            extra={"pid": worker.pid, "lane": worker.lane, "exitcode": exitcode},
        )
        self._crew.vacated(worker.lane, reason)
        self._hub.announce(
            "worker_died",
            lane=worker.lane,
            pid=worker.pid,
            exitcode=exitcode,
            task_id=None if running is None else running.id,
            reason=reason,
        )

    def _start_error(self, worker: Worker, exitcode: int | None) -> WorkerInitError:
        """Why a worker died before READY without saying so itself."""
        if exitcode == EXIT_MISSING_MAIN_GUARD:
            return MissingMainGuard(missing_guard_message(main_script()))
        during = "while running its initializer" if self._config.init_payload else "while starting"
        return WorkerInitError(
            f"a worker (pid {worker.pid}) died with {describe_exit(exitcode)} before it was "
            f"ready, {during}; an error raised while multiprocessing prepared it (importing the "
            "main script and the modules of the pickled call) is printed on its standard error"
        )

    def _on_task_death(self, worker: Worker, exitcode: int | None) -> None:
        started = worker.ledger.started.value
        running = next((t for t in worker.outstanding if t.id == started), None)
        for task in worker.outstanding:
            task.release_memory()
        self._queue.push_back(t for t in worker.outstanding if t is not running)
        worker.outstanding.clear()
        if running is None:
            # It died before starting any of them (between tasks, or killed while idle just
            # as a task was sent): they are simply queued again, and the death counts as idle.
            self.note_failure(WorkerCrashed(_idle_death(worker, exitcode), worker.pid, exitcode))
            return
        if worker.kill_reason == "timeout" and running is not worker.timed_out:
            # Killed for a task that finished just before the kill (its result was drained
            # first): the one it had started since is innocent and runs again elsewhere.
            self._queue.push_back([running])
            return
        tally = self._tally
        if worker.kill_reason == "timeout":
            tally.timed_out += 1
            tally.failed += 1
            logger.info(
                "%s ran past its timeout of %s s; its worker pid %d was killed",
                running,
                running.timeout,
                worker.pid,
            )
            self._hub.announce_task("task_timed_out", running, worker, seconds=running.timeout)
            running.future.set_exception(
                TaskTimeout(
                    f"{running} ran longer than its timeout of {running.timeout} s; its worker "
                    f"(pid {worker.pid}) was killed and replaced"
                )
            )
            return
        running.attempts += 1
        retries = self._config.retries
        if running.attempts <= retries:
            tally.retried += 1
            running.announced = False  # it starts again
            self._hub.announce_task(
                "task_retried",
                running,
                worker,
                reason=describe_exit(exitcode),
                attempt=running.attempts,
            )
            self._queue.push_back([running])
            return
        tally.failed += 1
        self._hub.announce_task("task_failed", running, worker, reason="WorkerCrashed")
        running.future.set_exception(
            WorkerCrashed(
                f"the worker (pid {worker.pid}) running {running} {self._cause(worker, exitcode)}"
                f"; tried {running.attempts} time(s) (retries={retries}); other tasks are "
                "unaffected",
                worker.pid,
                exitcode,
                str(running),
            )
        )

    def _cause(self, worker: Worker, exitcode: int | None) -> str:
        if worker.kill_reason == "memory":
            limit = self._config.recycle.hard_memory_bytes or 0
            return (
                f"was killed for exceeding the hard memory limit of {format_size(limit)} "
                f"(private memory {format_size(worker.private or 0)})"
            )
        return f"died with {describe_exit(exitcode)}"


def _idle_death(worker: Worker, exitcode: int | None) -> str:
    return f"an idle worker (pid {worker.pid}) died with {describe_exit(exitcode)}"
