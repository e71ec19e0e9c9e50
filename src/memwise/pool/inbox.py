"""What user threads share with a pool's supervisor thread, all under one lock.

Submitting threads hand tasks over here and poke a wake-up pipe; the supervisor takes them in
when it wakes. Here too is the one exception to "only the supervisor touches a worker", the
*direct path*: while nothing is queued, the supervisor lends its idle workers to submitting
threads, and a submitting thread sends its task straight to one of them, which halves the
latency of a lone call (no hop through the supervisor thread). The rule that makes this safe
is stated once, at ``_lent``, and every method that touches a lent worker is in this module.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import NamedTuple

from memwise.pool.handle import Worker
from memwise.pool.stats import key_repr
from memwise.pool.subscribers import EventHub
from memwise.pool.task import Task

DIRECT_BYTES = 1 << 20  # largest payload a submitting thread writes to a worker itself


class Delivery(NamedTuple):
    """What the supervisor takes in when it wakes (see :meth:`Inbox.collect`)."""

    tasks: list[Task]  # handed over, in submission order
    cancel_queued: bool  # shutdown(cancel_futures=True) was asked
    terminate: BaseException | None  # fail everything with this and kill every worker


class Inbox:
    """The tasks handed over, the workers lent, the wake-up pipe, and whether the pool is open.

    ``lock`` guards every field; it is taken after the supervisor's state lock when both are
    needed (see :mod:`memwise.pool.supervisor`). Methods named ``..._locked`` expect it held.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        hub: EventHub,
        on_key_change: bool,
        watch_every_task: bool,
    ) -> None:
        self.lock = threading.Lock()
        self._clock = clock
        self._hub = hub
        self._on_key_change = on_key_change  # Recycle(on_key_change=): a lent worker may refuse
        # Hard memory limits: the supervisor polls the memory of every busy worker, so it must
        # hear of every task sent directly (tasks with a timeout are always announced).
        self._watch_every_task = watch_every_task
        # Tasks handed over by submitting threads, not yet in the supervisor's queue.
        self._incoming: deque[Task] = deque()
        # The loan invariant. READY workers with nothing to do, by lane, that a submitting
        # thread may send one task to (and then removes from here). The supervisor lends them
        # (``lend``) only while its queue and ``_incoming`` are empty, so a direct task never
        # overtakes a queued one; it takes every loan back (``reclaim``) before it sends to,
        # stops, retires or forgets any worker, and anything that queues a task takes them
        # back first. Between a ``reclaim`` and the next ``lend``, no thread but the
        # supervisor touches a worker.
        self._lent: dict[int, Worker] = {}
        self._poked = False  # a byte is in the wake-up pipe
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Read by anyone without the lock (each is set once, under it, by this class only):
        self.closing = False  # no new task is accepted (close, terminate)
        self.broken: BaseException | None = None  # why the pool broke (break_locked)
        self._cancel_queued = False
        self._terminate: BaseException | None = None

    @property
    def wake_fd(self) -> int:
        """The read end of the wake-up pipe, for the supervisor's selector."""
        return self._wake_r

    def has_incoming(self) -> bool:
        return bool(self._incoming)

    def incoming_locked(self) -> Collection[Task]:
        """The tasks handed over and not yet taken in (read only; for snapshots)."""
        return self._incoming

    # ----- submitting threads ------------------------------------------------------------

    def hand_over_locked(self, task: Task) -> None:
        """Send ``task`` to a lent worker if one fits, else queue it for the supervisor."""
        # Large inline payloads are queued: writing them here would hold the lock, and so
        # every other submitter and the supervisor, for as long as the copy takes.
        direct = self._lent and not self._incoming and len(task.payload) <= DIRECT_BYTES
        if direct and self._send_direct_locked(task):
            return
        self._incoming.append(task)
        self.poke_locked()

    def _send_direct_locked(self, task: Task) -> bool:
        """Hand ``task`` to a lent worker from the submitting thread; False if none fits."""
        if task.lane is None:
            worker = self._lent.pop(next(iter(self._lent)))
        else:
            candidate = self._lent.get(task.lane)
            if candidate is None or (self._on_key_change and candidate.key_changes(task.key)):
                return False
            worker = self._lent.pop(task.lane)
        message = worker.run_message([task])
        task.claim()
        if self._hub.subscriptions:
            task.announced = True
            self._hub.announce_task("task_started", task, worker, key=key_repr(task.key))
        worker.busy_since = self._clock()
        worker.outstanding.append(task)
        if task.key is not None:
            worker.last_key = task.key
        try:
            worker.channel.send(message)
        except OSError:
            pass  # the worker died; the supervisor re-queues or fails the task with the others
        if task.timeout is not None or self._watch_every_task:
            self.poke_locked()  # the supervisor must start watching this task
        return True

    def poke_locked(self) -> None:
        """Wake the supervisor."""
        # One byte in the pipe is enough to wake it; skipping the write while one is pending
        # saves a system call per submit during bursts.
        if not self._poked:
            self._poked = True
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    def poke(self) -> None:
        with self.lock:
            self.poke_locked()

    def close(self, cancel_queued: bool) -> None:
        """Accept no new task; with ``cancel_queued``, cancel the queued ones."""
        with self.lock:
            self.closing = True
            self._cancel_queued = self._cancel_queued or cancel_queued
            self.poke_locked()

    def terminate(self, error: BaseException) -> None:
        """Ask the supervisor to fail everything with ``error`` and kill every worker."""
        with self.lock:
            self.closing = True
            self._terminate = self._terminate or error
            self.poke_locked()

    # ----- the supervisor thread ---------------------------------------------------------

    def collect(self) -> Delivery:
        """Empty the wake-up pipe and take what was handed over (taking the loans back if any
        task came: it is about to be queued)."""
        with self.lock:
            self._poked = False
            try:
                # At most one byte is ever pending (``_poked``): one read empties the pipe,
                # and a second would cost this thread a system call, and the GIL, per wake.
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
            tasks = list(self._incoming)
            if tasks:
                self._lent.clear()
                self._incoming.clear()
            cancel, self._cancel_queued = self._cancel_queued, False
            terminate, self._terminate = self._terminate, None
        return Delivery(tasks, cancel, terminate)

    def lend(self, workers: dict[int, Worker]) -> None:
        """Lend these idle workers to submitting threads; the queue must be empty."""
        with self.lock:
            self._lent = workers

    def reclaim(self) -> None:
        """Take every loan back: from now on only the supervisor touches its workers."""
        with self.lock:
            self._lent.clear()

    def reclaim_locked(self) -> None:
        self._lent.clear()

    def break_locked(self, error: BaseException) -> list[Task] | None:
        """Mark the pool broken; the tasks handed over, or None if it already was."""
        if self.broken is not None:
            return None
        self.broken = error
        self._lent.clear()
        tasks = list(self._incoming)
        self._incoming.clear()
        return tasks

    def close_pipe(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)
