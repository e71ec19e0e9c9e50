"""Deadlines of a pool's workers: start-up, stop grace, task timeouts, idle recycling, and
the hard memory limit (polled while workers are busy). Supervisor thread only.

A deadline is read off each worker (:meth:`~memwise.pool.handle.Worker.deadline`); acting on
one kills, stops or retires the worker through the :class:`~memwise.pool.crew.Crew`, whose
exit handling then fails or re-queues what it held.
"""

from __future__ import annotations

import logging

from memwise.errors import WorkerInitError
from memwise.memory import private_memory
from memwise.pool.config import PoolConfig
from memwise.pool.crew import Crew
from memwise.pool.handle import State, Worker
from memwise.pool.inbox import Inbox
from memwise.pool.lanes import Lanes
from memwise.pool.stats import Tally
from memwise.pool.subscribers import EventHub

logger = logging.getLogger(__name__)


class Deadlines:
    """Acts on overdue workers; see the module docstring."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        crew: Crew,
        inbox: Inbox,
        lanes: Lanes,
        tally: Tally,
        hub: EventHub,
    ) -> None:
        self._config = config
        self._lanes = lanes
        self._clock = config.clock
        self._crew = crew
        self._inbox = inbox
        self._tally = tally
        self._hub = hub
        self._next_poll = 0.0  # of private memory, for Recycle(hard_memory=)

    def enforce(self, now: float) -> float | None:
        """Act on overdue workers; the next worker deadline (or None)."""
        nearest: float | None = None
        for worker in self._crew.everyone():
            deadline = worker.deadline(self._config.init_timeout, self._idle_limit(worker))
            if deadline is not None and deadline <= now:
                self._on_deadline(worker)
            elif deadline is not None and (nearest is None or deadline < nearest):
                nearest = deadline
        return nearest

    def poll_memory(self, now: float) -> float | None:
        """Enforce ``Recycle(hard_memory=)`` on busy workers; when to look next (or None)."""
        if self._config.recycle.hard_memory is None or not any(
            w.busy for w in self._crew.in_lanes()
        ):
            return None
        if now >= self._next_poll:
            self._check_hard_memory()
            self._next_poll = now + self._config.recycle.poll
        return self._next_poll

    def _idle_limit(self, worker: Worker) -> float | None:
        idle = self._config.recycle.idle
        if idle is None or self._crew.is_spare(worker):
            return idle
        # A fresh worker inside the minimum would only be replaced by another fresh one.
        if worker.tasks_done == 0 and worker.lane < self._lanes.minimum:
            return None
        return idle

    def _on_deadline(self, worker: Worker) -> None:
        # A submitting thread may have handed this (idle) worker a task since the deadline was
        # computed: take the loans back and look again.
        self._inbox.reclaim()
        config = self._config
        deadline = worker.deadline(config.init_timeout, self._idle_limit(worker))
        if deadline is None or deadline > self._clock():
            return
        if worker.state is State.STARTING:
            what = "its initializer did not finish" if config.init_payload else "not ready"
            worker.init_error = WorkerInitError(
                f"a worker (pid {worker.pid}) was {what} within init_timeout="
                f"{config.init_timeout} s; it was killed"
            )
            self._crew.kill(worker, "init timeout")
        elif worker.state is State.STOPPING:
            self._crew.kill(worker, "stop timeout")
        elif worker.busy:
            worker.timed_out = worker.running
            self._crew.kill(worker, "timeout")
        elif self._crew.is_spare(worker):
            self._crew.stop(worker)
        else:
            self._crew.retire(worker, "idle")

    def _check_hard_memory(self) -> None:
        limit = self._config.recycle.hard_memory_bytes
        assert limit is not None
        for worker in list(self._crew.in_lanes()):
            if not worker.busy or worker.kill_reason is not None:
                continue
            try:
                worker.private = private_memory(worker.pid)
            except (ProcessLookupError, PermissionError):
                continue
            if worker.private > limit:
                self._tally.recycled(worker.lane, "hard_memory")
                logger.info(
                    "killing worker pid %d in lane %d: private memory %d bytes is over the "
                    "hard limit of %d",
                    worker.pid,
                    worker.lane,
                    worker.private,
                    limit,
                )
                self._hub.announce(
                    "worker_recycled", lane=worker.lane, pid=worker.pid, reason="memory"
                )
                self._crew.kill(worker, "memory")


def earliest(*deadlines: float | None) -> float | None:
    """The nearest of some deadlines, ignoring None."""
    nearest = None
    for deadline in deadlines:
        if deadline is not None and (nearest is None or deadline < nearest):
            nearest = deadline
    return nearest
