"""What a pipeline is doing, as immutable snapshots, and the counters they are read from.

Observers (the console view, the dashboard, Prometheus) read a pipeline only through
``pipeline.snapshot()``; the pool layer knows nothing about pipelines.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PipelineSnapshot", "StageSnapshot"]

# Items per second are measured over the most recent completions within this window: a rate
# that reflects what the stage does now, not an average since start.
RATE_WINDOW = 5.0
_RECENT = 512


@dataclass(frozen=True)
class StageSnapshot:
    """One stage at one moment.

    Attributes:
        name: the stage's name (its function's name unless given).
        kind: ``"threads"`` or ``"pool"`` (tasks on a WorkerPool).
        workers: items the stage works on at once.
        capacity: the most items waiting in front of the stage.
        depth: items waiting in front of the stage now.
        running: items being worked on now.
        done: items the stage finished (including failures).
        rate: items finished per second over the last few seconds.
        busy_percent: the share of its workers' time spent working since the pipeline started.
        errors: items whose function raised in this stage.
        drops: items dropped in front of this stage by a ``drop=`` policy (first stage only).
    """

    name: str
    kind: str
    workers: int
    capacity: int
    depth: int
    running: int
    done: int
    rate: float
    busy_percent: float
    errors: int
    drops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PipelineSnapshot:
    """A whole pipeline at one moment.

    Attributes:
        name: the pipeline's name.
        state: ``"new"``, ``"running"``, ``"finished"`` (every item delivered), ``"stopped"``.
        capacity: the most items admitted and not yet delivered (the memory bound).
        in_flight: items admitted and not yet delivered now.
        peak_in_flight: the most there ever were: never above ``capacity`` (a source that
            raised adds one error record, which holds no data).
        admitted: items that entered.
        delivered: results handed to the consumer (error records included).
        drops: items dropped by the ``drop=`` policy.
        reorder: finished items waiting for an earlier one to be delivered first.
        elapsed: seconds since the pipeline started.
        stages: one :class:`StageSnapshot` per stage, in order.
    """

    name: str
    state: str
    capacity: int
    in_flight: int
    peak_in_flight: int
    admitted: int
    delivered: int
    drops: int
    reorder: int
    elapsed: float
    stages: tuple[StageSnapshot, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StageCounters:
    """Mutable counters of one stage, updated and read under the pipeline's lock."""

    __slots__ = ("_recent", "busy", "done", "drops", "errors", "running", "started_at")

    def __init__(self) -> None:
        self.done = self.errors = self.drops = 0
        self.busy = 0.0  # seconds of work finished
        self.running: dict[int, float] = {}  # item sequence -> when its work started
        self._recent: deque[float] = deque(maxlen=_RECENT)
        self.started_at = time.monotonic()

    def begin(self, seq: int) -> None:
        self.running[seq] = time.monotonic()

    def end(self, seq: int, failed: bool) -> None:
        now = time.monotonic()
        self.busy += now - self.running.pop(seq, now)
        self.done += 1
        self.errors += failed
        self._recent.append(now)

    def snapshot(
        self, name: str, kind: str, workers: int, capacity: int, depth: int
    ) -> StageSnapshot:
        now = time.monotonic()
        elapsed = max(now - self.started_at, 1e-9)
        window = min(RATE_WINDOW, elapsed)
        recent = sum(1 for t in self._recent if now - t <= window)
        busy = self.busy + sum(now - t for t in self.running.values())
        return StageSnapshot(
            name=name,
            kind=kind,
            workers=workers,
            capacity=capacity,
            depth=depth,
            running=len(self.running),
            done=self.done,
            rate=recent / window if window > 0 else 0.0,
            busy_percent=min(100.0, 100.0 * busy / (workers * elapsed)),
            errors=self.errors,
            drops=self.drops,
        )
