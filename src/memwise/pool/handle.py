"""The supervisor's record of one worker process."""

from __future__ import annotations

import enum
import select
import signal
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Any

from memwise import _channel, _oob
from memwise.pool._protocol import Run, TaskEntry, encode
from memwise.pool.ledger import Ledger
from memwise.pool.task import Task

STOP_GRACE_SECONDS = 5.0


class State(enum.Enum):
    STARTING = "starting"  # waiting for the READY handshake (initializer running)
    READY = "ready"
    STOPPING = "stopping"  # told to exit; killed if it takes longer than the grace period


class Worker:
    """One worker process in one lane, and what the supervisor knows of it.

    ``outstanding`` holds the tasks sent to it, in order; the first is the one running.
    ``retiring`` is set when a recycle policy decided to replace it: it takes no new task,
    finishes those it holds, then stops.
    """

    def __init__(
        self,
        lane: int,
        process: Any,
        conn: Any,
        alive: Any,
        ledger: Ledger,
        now: float,
        reply: Any,
    ) -> None:
        self.lane = lane
        self.ledger = ledger
        # Numbers the run messages sent to it, so that revoking (see Ledger) can name them.
        self.epoch = 0
        self.process = process
        self.conn = conn
        self.channel = _channel.channel(conn)
        self.alive = alive
        self.pid: int = process.pid
        self.state = State.STARTING
        self.since = now
        self.outstanding: deque[Task] = deque()
        # The call path (see memwise.pool.inbox): the read end of its reply pipe, and the task
        # a calling thread sent it and reads the reply of. ``calling`` is set by that thread
        # under ``Inbox.lock`` and cleared when the reply has been accounted for (by that
        # thread, or the supervisor); while it is set the task is in no other list.
        self.reply = reply
        self.replies = _channel.channel(reply)
        # What its holder waits on: the reply, or the process's end. Made once, not per call.
        self.reply_poll: Any = None
        if hasattr(select, "poll"):  # else no call path (Windows)
            self.reply_poll = select.poll()
            self.reply_poll.register(reply.fileno(), select.POLLIN)
            self.reply_poll.register(process.sentinel, select.POLLIN)
        self.calling: Task | None = None
        self.held = False  # a calling thread holds it (see the rules at Inbox._lent)
        self.exit_deferred = False  # it exited while held
        self.busy_since = 0.0
        self.idle_since = now
        self.kill_reason: str | None = None
        self.timed_out: Task | None = None  # the task it was killed for overrunning
        self.init_error: BaseException | None = None
        self.tasks_done = 0
        self.last_key: Hashable = None
        self.private: int | None = None
        self.retiring = False
        # Result sizes (bytes) it produced in shared memory, owed a warm slot each.
        self.result_sizes: dict[int, int] = {}

    @property
    def running(self) -> Task | None:
        """The task it runs now (or will run next), if any."""
        if self.calling is not None:
            return self.calling
        return self.outstanding[0] if self.outstanding else None

    @property
    def busy(self) -> bool:
        """Whether it holds a task, queued to it or called on it."""
        return bool(self.outstanding) or self.calling is not None

    def deadline(self, init_timeout: float, idle: float | None) -> float | None:
        """When the supervisor must next act on this worker on its own, or None."""
        if self.kill_reason is not None:
            return None
        if self.state is State.STARTING:
            return self.since + init_timeout
        if self.state is State.STOPPING:
            return self.since + STOP_GRACE_SECONDS
        running = self.running
        if running is not None:
            timeout = running.timeout
            return None if timeout is None else self.busy_since + timeout
        return None if idle is None else self.idle_since + idle

    def run_message(self, batch: Sequence[Task], reply: bool = False) -> bytes:
        """The one place a Run is built: ``batch`` for this worker, lending it their slots;
        with ``reply``, its Dones come down the reply pipe."""
        entries = [TaskEntry(t.id, t.payload, t.lend_slots(self.pid)) for t in batch]
        return encode(Run(entries, self._restock(), self.epoch, reply))

    def _restock(self) -> tuple[Any, ...]:
        """Warm free slots of the sizes this worker's results take, sent with its next task."""
        if not self.result_sizes:
            return ()
        gifts = _oob.restock(self.result_sizes, self.pid)
        for gift in gifts:
            self.result_sizes[gift.nbytes] -= 1
        self.result_sizes = {k: v for k, v in self.result_sizes.items() if v > 0}
        return gifts

    def key_changes(self, key: Hashable, batch: Sequence[Task] = ()) -> bool:
        """Whether a task of ``key`` after ``batch`` would run another key than the one before
        it on this worker (``Recycle(on_key_change=True)`` replaces the worker first)."""
        keys = [t.key for t in (*self.outstanding, *batch) if t.key is not None]
        last = keys[-1] if keys else self.last_key
        return last is not None and key is not None and key != last


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "an unknown status"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"
