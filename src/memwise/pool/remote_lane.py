"""One remote worker lane: the supervisor's record of it, and what travels on it.

A :class:`Transport` (see :mod:`memwise.ray`) starts remote workers and carries
:class:`LaneTask` calls to them; each call's :class:`Outcome` comes back in the order the
calls were sent. Lane numbers and key routing are the local pool's (:mod:`memwise.pool.lanes`).
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from memwise.pool.options import TaskOptions
from memwise.pool.snapshot import DURATION_BUCKETS, Histogram
from memwise.pool.task import Task

# Workers failing to start this often within this many seconds break the pool (as locally).
STORM_DEATHS = 5
STORM_SECONDS = 10.0


class Status(enum.Enum):
    OK = "ok"  # the call returned; ``value`` is its result
    RAISED = "raised"  # the function (or the initializer) raised ``value``
    DIED = "died"  # the worker died; ``detail`` says how
    NOT_RUN = "not run"  # the batch it was sent in broke off before it: send it again
    # Its batch could not be rebuilt on the worker (one call's arguments): nothing ran; each
    # of its calls is sent again on its own, so that only the bad one fails.
    RESEND_ALONE = "resend alone"


@dataclass(frozen=True)
class Outcome:
    """What one finished remote call gave."""

    status: Status
    value: Any = None
    private: int | None = None  # the worker's private memory after the call, bytes
    detail: str = ""


class LaneTask(Task):
    """A task for a remote worker: the call itself travels by the transport, not pickled here."""

    __slots__ = ("alone", "call")

    def __init__(self, future: Future[Any], call: tuple[Any, ...], options: TaskOptions) -> None:
        fn = call[0]
        super().__init__(
            future, b"", fn, options.timeout, key=options.key, priority=options.priority,
            coalesce=options.coalesce,
        )  # fmt: skip
        self.call = call
        self.alone = False  # sent in a batch of its own (see Status.RESEND_ALONE)


class Transport(Protocol):
    """How the supervisor reaches remote workers (see :mod:`memwise.ray`).

    ``notify`` callbacks may fire on any thread; those of one worker fire in the order its
    calls were made (its start-up call first).
    """

    def start(self, lane: int, notify: Callable[[], None]) -> tuple[Any, Any]:
        """Start a worker for ``lane``; return its handle and the token of its start-up call
        (which runs the initializer and reports pid and node). ``notify`` fires when done."""

    def send(
        self, handle: Any, tasks: list[LaneTask], notifiers: list[Callable[[], None]]
    ) -> list[Any]:
        """Send ``tasks`` to the worker, to run in this order (in one message, when the
        transport can); return a token per task, whose ``notify`` fires when it is done."""

    def outcome(self, token: Any) -> Outcome:
        """What a finished call gave (never blocks once ``notify`` fired)."""

    def kill(self, handle: Any) -> None:
        """End the worker at once."""


class Sent:
    """One call in flight on a lane; ``task`` is None for the worker's start-up call."""

    __slots__ = ("finished", "task", "token")

    def __init__(self, task: LaneTask | None) -> None:
        self.task = task
        self.token: Any = None
        self.finished = False


class Lane:
    """Lane ``index`` and the remote worker in it now.

    ``generation`` tells this worker's notifications from those of the one it replaced.
    ``sent`` holds its calls in order; the first one is running, since ``head_since``.
    ``retiring`` names why it takes no new call (a recycle reason): it is replaced once idle.
    """

    def __init__(self, index: int, generation: int) -> None:
        self.index = index
        self.generation = generation
        self.handle: Any = None
        self.pid: int | None = None
        self.node: str | None = None
        self.sent: deque[Sent] = deque()
        self.head_since = 0.0
        self.dispatched = 0
        self.tasks_done = 0
        self.private: int | None = None
        self.last_key: Hashable = None
        self.retiring: str | None = None
        self.restarts = 0
        self.recycles: Counter[str] = Counter()

    @property
    def busy(self) -> bool:
        return bool(self.sent)


class Durations:
    """Task durations in the snapshot's histogram buckets."""

    def __init__(self) -> None:
        self.counts = [0] * len(DURATION_BUCKETS)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds

    def histogram(self) -> Histogram:
        return Histogram(DURATION_BUCKETS, tuple(self.counts), self.total, sum(self.counts))
