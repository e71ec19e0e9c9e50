"""``PoolSnapshot``: an immutable, consistent picture of one pool at one moment.

Everything that watches a pool (progress bars, Prometheus metrics, the dashboard, ``memwise
top``, the Ray backend's reporting, the pipeline) reads these and nothing else. A snapshot is
taken under the pool's lock, so its figures agree with each other (never torn); per-process
figures (memory, CPU) come from a short-lived cache so that many readers do not multiply the
cost of reading ``/proc``.

All times are seconds; all sizes are bytes; wall-clock stamps are ``time.time()``.
``to_dict()`` gives the JSON-ready form served by ``/api/snapshot``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, Literal

WorkerState = Literal["starting", "idle", "busy", "stopping", "stopped"]
PoolState = Literal["running", "broken", "closing", "shut down"]

# Upper bounds of the task-duration histogram's buckets, in seconds (the last is +Inf).
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
    float("inf"),
)


def frozen_map(values: Mapping[Any, int] | None = None) -> Mapping[Any, int]:
    """A read-only mapping, so that a snapshot cannot be changed after it is taken."""
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class RunningTask:
    """The task a worker is running."""

    task_id: int
    function: str  # qualified name of the function, e.g. "mymodule.grade"
    key: str | None  # repr of the task's key, shortened; None for unkeyed tasks
    started: float  # wall-clock time it started
    seconds: float  # how long it has been running at the snapshot


@dataclass(frozen=True)
class WorkerSnapshot:
    """One worker lane: the process in it now, and the lane's history."""

    lane: int  # 0 .. max_workers-1; a warm spare that holds no lane yet has lane -1
    pid: int | None  # None when the lane has no process (scaled to zero, or restarting)
    state: WorkerState
    key: str | None  # repr of the key of its current or last task
    task: RunningTask | None
    tasks_done: int  # by its current process
    queued: int  # tasks waiting for this lane (keyed tasks pinned to it)
    private: int | None  # private memory (RssAnon / USS), bytes; None when unknown
    pss: int | None  # proportional set size, bytes; None when unknown
    cpu_percent: float | None  # since the previous measurement; 100.0 is one full core
    restarts: int  # unexpected deaths in this lane
    recycles: Mapping[str, int] = field(default_factory=frozen_map)  # planned exits by reason


@dataclass(frozen=True)
class Histogram:
    """Cumulative-free bucket counts: ``counts[i]`` tasks took at most ``buckets[i]`` seconds
    and more than ``buckets[i-1]``."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    total: float  # sum of all observed durations, seconds
    count: int


@dataclass(frozen=True)
class BudgetUsage:
    """The pool's MemoryBudget, if it has one."""

    limit: int
    in_use: int  # measured: parent + workers' private memory + shared slots
    reserved: int  # held by admitted tasks' reservations
    waiting: int  # tasks waiting for room
    learned: Mapping[str, int]  # peak bytes learned per function (MemoryBudget(learn=True))


@dataclass(frozen=True)
class SharedMemoryUsage:
    """Shared-memory slots of this process (all pools share them)."""

    slots_in_use: int
    slots_free: int  # warm, kept for reuse
    bytes_in_use: int
    bytes_free: int


@dataclass(frozen=True)
class PoolSnapshot:
    """The whole pool at one moment; see the module docstring."""

    time: float
    state: PoolState
    broken_reason: str | None
    max_workers: int
    min_workers: int
    workers: tuple[WorkerSnapshot, ...]
    queued: int  # submitted, not yet sent to a worker
    in_flight: int  # sent to a worker, not yet finished
    submitted: int
    done: int
    failed: int
    cancelled: int
    retried: int
    timed_out: int
    restarts: int  # unexpected worker deaths, all lanes
    recycles: Mapping[str, int]  # planned worker exits by reason, all lanes
    throughput: float  # tasks finished per second, recent
    durations: Histogram
    budget: BudgetUsage | None
    shared_memory: SharedMemoryUsage

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (mappings become dicts, +Inf becomes the string "+Inf")."""
        data: dict[str, Any] = _plain(self)
        data["durations"]["buckets"] = [
            "+Inf" if bound == float("inf") else bound for bound in self.durations.buckets
        ]
        return data


def _plain(value: Any) -> Any:
    # Not dataclasses.asdict: it deep-copies field values, and read-only mappings cannot be.
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
