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
needs one, whatever emptied it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from memwise import _oob
from memwise.errors import (
    BrokenPool,
    MissingMainGuard,
    TaskTimeout,
    WorkerCrashed,
    WorkerInitError,
)
from memwise.memory import format_size
from memwise.pool._protocol import decode
from memwise.pool.context import EXIT_MISSING_MAIN_GUARD, main_script, missing_guard_message
from memwise.pool.handle import State, Worker, describe_exit

if TYPE_CHECKING:
    from memwise.pool.supervisor import Supervisor

logger = logging.getLogger(__name__)

STORM_DEATHS = 5
STORM_SECONDS = 10.0


def on_exit(sup: Supervisor, worker: Worker) -> None:
    """The worker's process sentinel fired: it has exited."""
    sup.reclaim_lent_workers()  # take lent workers back before re-queueing or closing anything
    for data in worker.channel.drain():  # results sent just before dying still count
        sup.on_message(worker, decode(data))
    worker.process.join(1.0)
    exitcode = worker.process.exitcode
    # However it ended: its loans end, and the slots it held (warm ones given back to it for
    # its results, ones it created and never handed over) are unlinked.
    _oob.reclaim(worker.pid)
    sup.forget(worker)
    if sup.broken is not None:
        return
    if worker.state is State.STOPPING and not worker.outstanding:
        return
    if worker.state is State.STARTING:
        _on_start_failure(sup, worker, exitcode)
        return
    sup.tally.died(worker.lane)
    _report_death(sup, worker, exitcode)
    if worker.outstanding:
        _on_task_death(sup, worker, exitcode)
    else:
        note_failure(sup, WorkerCrashed(_idle_death(worker, exitcode), worker.pid, exitcode))
    max_restarts = sup.config.max_restarts
    if max_restarts is not None and sup.tally.restarts > max_restarts:
        sup.break_pool(
            BrokenPool(
                f"workers died {sup.tally.restarts} times, more than max_restarts="
                f"{max_restarts}; the last exited with {describe_exit(exitcode)}"
            ),
            cause=None,
        )


def _report_death(sup: Supervisor, worker: Worker, exitcode: int | None) -> None:
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
    sup.lane_vacated[worker.lane] = reason
    sup.event(
        "worker_died",
        lane=worker.lane,
        pid=worker.pid,
        exitcode=exitcode,
        task_id=None if running is None else running.id,
        reason=reason,
    )


def _idle_death(worker: Worker, exitcode: int | None) -> str:
    return f"an idle worker (pid {worker.pid}) died with {describe_exit(exitcode)}"


def _on_start_failure(sup: Supervisor, worker: Worker, exitcode: int | None) -> None:
    error = worker.init_error or _start_error(sup, worker, exitcode)
    if not sup.started.is_set():
        sup.startup_error = error
        sup.break_pool(error, cause=error.__cause__)
    else:
        note_failure(sup, error)


def _start_error(sup: Supervisor, worker: Worker, exitcode: int | None) -> WorkerInitError:
    """Why a worker died before READY without saying so itself."""
    if exitcode == EXIT_MISSING_MAIN_GUARD:
        return MissingMainGuard(missing_guard_message(main_script()))
    during = "while running its initializer" if sup.config.init_payload else "while starting"
    return WorkerInitError(
        f"a worker (pid {worker.pid}) died with {describe_exit(exitcode)} before it was ready, "
        f"{during}; an error raised while multiprocessing prepared it (importing the main "
        "script and the modules of the pickled call) is printed on its standard error"
    )


def _on_task_death(sup: Supervisor, worker: Worker, exitcode: int | None) -> None:
    started = worker.ledger.started.value
    running = next((t for t in worker.outstanding if t.id == started), None)
    for task in worker.outstanding:
        task.release_memory()
    sup.queue.push_back(t for t in worker.outstanding if t is not running)
    worker.outstanding.clear()
    if running is None:
        # It died before starting any of them (between tasks, or killed while idle just as
        # a task was sent): they are simply queued again, and the death counts as idle.
        note_failure(sup, WorkerCrashed(_idle_death(worker, exitcode), worker.pid, exitcode))
        return
    if worker.kill_reason == "timeout" and running is not worker.timed_out:
        # Killed for a task that finished just before the kill (its result was drained
        # above): the one it had started since is innocent and runs again elsewhere.
        sup.queue.push_back([running])
        return
    if worker.kill_reason == "timeout":
        sup.tally.timed_out += 1
        sup.tally.failed += 1
        logger.info(
            "%s ran past its timeout of %s s; its worker pid %d was killed",
            running,
            running.timeout,
            worker.pid,
        )
        sup.task_event("task_timed_out", running, worker, seconds=running.timeout)
        running.future.set_exception(
            TaskTimeout(
                f"{running} ran longer than its timeout of {running.timeout} s; its worker "
                f"(pid {worker.pid}) was killed and replaced"
            )
        )
        return
    running.attempts += 1
    if running.attempts <= sup.config.retries:
        sup.tally.retried += 1
        running.announced = False  # it starts again
        sup.task_event(
            "task_retried",
            running,
            worker,
            reason=describe_exit(exitcode),
            attempt=running.attempts,
        )
        sup.queue.push_back([running])
        return
    sup.tally.failed += 1
    sup.task_event("task_failed", running, worker, reason="WorkerCrashed")
    running.future.set_exception(
        WorkerCrashed(
            f"the worker (pid {worker.pid}) running {running} {_cause(sup, worker, exitcode)}; "
            f"tried {running.attempts} time(s) (retries={sup.config.retries}); other tasks "
            "are unaffected",
            worker.pid,
            exitcode,
            str(running),
        )
    )


def _cause(sup: Supervisor, worker: Worker, exitcode: int | None) -> str:
    if worker.kill_reason == "memory":
        limit = sup.config.recycle.hard_memory_bytes or 0
        return (
            f"was killed for exceeding the hard memory limit of {format_size(limit)} "
            f"(private memory {format_size(worker.private or 0)})"
        )
    return f"died with {describe_exit(exitcode)}"


def note_failure(sup: Supervisor, error: BaseException) -> None:
    """Count a failed start; break the pool when they come too fast."""
    now = sup.clock()
    sup.failures.append(now)
    while sup.failures and sup.failures[0] < now - STORM_SECONDS:
        sup.failures.popleft()
    if len(sup.failures) >= STORM_DEATHS:
        logger.info(
            "restart storm: %d workers died within %.0f s without completing a task; "
            "breaking the pool",
            len(sup.failures),
            STORM_SECONDS,
        )
        sup.break_pool(
            BrokenPool(
                f"{len(sup.failures)} workers died within {STORM_SECONDS:.0f} s without "
                f"completing a task; the last: {error}. Fix the cause and create a new pool"
            ),
            cause=error,
        )
