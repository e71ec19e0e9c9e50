"""Pool events: what ``pool.subscribe(callback)`` delivers.

One typed, immutable class with a ``kind`` naming what happened. Events are produced on the
supervisor thread but callbacks run on a delivery thread of their own: a slow or raising
callback can never block or break the pool (a raising one is logged and dropped).

========================  ==========================================================
kind                      fields set besides ``time``
========================  ==========================================================
``task_submitted``        task_id, function, key
``task_started``          task_id, function, key, lane, pid
``task_finished``         task_id, function, lane, pid, seconds
``task_failed``           task_id, function, lane, pid, reason (the error's type name)
``task_retried``          task_id, function, lane, pid, reason, attempt
``task_cancelled``        task_id, function, reason ("cancelled", "coalesced", "shutdown")
``task_timed_out``        task_id, function, lane, pid, seconds
``worker_started``        lane, pid
``worker_ready``          lane, pid
``worker_died``           lane, pid, exitcode (negative: the signal), task_id, reason
``worker_recycled``       lane, pid, reason ("tasks", "memory", "idle", "key", ...)
``worker_replaced``       lane, pid (the new process), reason (why the old one went)
``pool_resized``          reason (e.g. "2 -> 4")
``pool_broken``           reason
``pool_shutdown``         (none)
========================  ==========================================================

For every task, ``task_submitted`` comes before ``task_started``, which comes before its
``task_finished`` / ``task_failed`` / ``task_timed_out``; a retried task starts again after
its ``task_retried``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

EventKind = Literal[
    "task_submitted",
    "task_started",
    "task_finished",
    "task_failed",
    "task_retried",
    "task_cancelled",
    "task_timed_out",
    "worker_started",
    "worker_ready",
    "worker_died",
    "worker_recycled",
    "worker_replaced",
    "pool_resized",
    "pool_broken",
    "pool_shutdown",
]


@dataclass(frozen=True)
class PoolEvent:
    """Something that happened in a pool; see the table in the module docstring."""

    kind: EventKind
    time: float  # wall clock, time.time()
    task_id: int | None = None
    function: str | None = None
    key: str | None = None  # repr of the task's key, shortened
    lane: int | None = None
    pid: int | None = None
    exitcode: int | None = None
    reason: str | None = None
    seconds: float | None = None
    attempt: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the fields that are not set."""
        return {name: value for name, value in asdict(self).items() if value is not None}
