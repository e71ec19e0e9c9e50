"""The supervisor's record of one remote worker lane (see :mod:`memwise.pool.lanes`)."""

from __future__ import annotations

import bisect
import enum
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memwise.pool.snapshot import DURATION_BUCKETS, Histogram

if TYPE_CHECKING:
    from memwise.pool.remote_lanes import LaneTask

# Workers failing to start this often within this many seconds break the pool (as locally).
STORM_DEATHS = 5
STORM_SECONDS = 10.0


class Status(enum.Enum):
    OK = "ok"  # the call returned; ``value`` is its result
    RAISED = "raised"  # the function (or the initializer) raised ``value``
    DIED = "died"  # the worker died; ``detail`` says how


@dataclass(frozen=True)
class Outcome:
    """What one finished remote call gave."""

    status: Status
    value: Any = None
    private: int | None = None  # the worker's private memory after the call, bytes
    detail: str = ""


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
    ``retiring`` names why it takes no new call (a recycle reason, or "resize").
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
