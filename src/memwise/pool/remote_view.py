"""``PoolSnapshot`` of a pool of remote lanes, taken under the supervisor's lock."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from memwise.pool.remote_lane import Lane
from memwise.pool.snapshot import (
    PoolSnapshot,
    PoolState,
    RunningTask,
    SharedMemoryUsage,
    WorkerSnapshot,
    WorkerState,
    frozen_map,
)

if TYPE_CHECKING:
    from memwise.pool.remote_lanes import LaneSupervisor

THROUGHPUT_SECONDS = 10.0  # the window of "recent" for throughput
# Remote workers exchange data through their engine's object store, never through this
# process's shared-memory slots.
NO_SLOTS = SharedMemoryUsage(0, 0, 0, 0)


def snapshot(sup: LaneSupervisor) -> PoolSnapshot:
    with sup.lock:
        now, wall = time.monotonic(), time.time()
        lanes = sorted(sup.lanes.values(), key=lambda lane: lane.index)
        waiting = sup.queue.lane_counts()
        in_flight = sum(len(lane.sent) for lane in lanes)
        state: PoolState = "running"
        if sup.broken is not None:
            state = "broken"
        elif sup.closing:
            state = "closing" if sup.running else "shut down"
        recent = [t for t in sup.finished_at if t > now - THROUGHPUT_SECONDS]
        counts = sup.counts
        return PoolSnapshot(
            time=wall,
            state=state,
            broken_reason=None if sup.broken is None else str(sup.broken),
            max_workers=sup.workers,
            min_workers=sup.workers,
            workers=tuple(_worker(lane, now, wall, waiting, sup.workers) for lane in lanes),
            queued=len(sup.queue),
            in_flight=in_flight,
            submitted=counts["submitted"],
            done=counts["done"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            retried=counts["retried"],
            timed_out=counts["timed_out"],
            restarts=counts["restarts"],
            recycles=frozen_map(sup.recycles),
            throughput=len(recent) / THROUGHPUT_SECONDS,
            durations=sup.durations.histogram(),
            budget=None,
            shared_memory=NO_SLOTS,
        )


def _worker(
    lane: Lane, now: float, wall: float, waiting: Mapping[int, int], count: int
) -> WorkerSnapshot:
    head = lane.sent[0].task if lane.sent else None
    state: WorkerState = "starting" if lane.pid is None else "busy" if head else "idle"
    if lane.retiring is not None or lane.index >= count:  # recycled, or its lane drains
        state = "stopping"
    running = None
    if head is not None:
        seconds = now - lane.head_since
        running = RunningTask(
            head.id,
            head.label,
            None if head.key is None else repr(head.key)[:80],
            wall - seconds,
            seconds,
        )
    key = head.key if head is not None else lane.last_key
    return WorkerSnapshot(
        lane=lane.index,
        pid=lane.pid,
        state=state,
        key=None if key is None else repr(key)[:80],
        task=running,
        tasks_done=lane.tasks_done,
        queued=waiting.get(lane.index, 0),
        private=lane.private,
        pss=None,
        cpu_percent=None,
        restarts=lane.restarts,
        recycles=frozen_map(lane.recycles),
    )
