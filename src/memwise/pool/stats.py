"""What a pool counts as it runs, and how a :class:`PoolSnapshot` is assembled from it.

``Tally`` is written by the supervisor thread (and, for ``submitted``, by submitting threads
under the inbox's lock); ``draft`` reads it under the same locks, so a snapshot's figures agree
with each other. Recording a finished task costs a few additions and one ``bisect``.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Collection, Hashable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from memwise.pool.handle import State, Worker
from memwise.pool.probe import ProcessProbe
from memwise.pool.snapshot import (
    DURATION_BUCKETS,
    BudgetUsage,
    Histogram,
    PoolSnapshot,
    PoolState,
    RunningTask,
    SharedMemoryUsage,
    WorkerSnapshot,
    frozen_map,
)

if TYPE_CHECKING:
    from memwise.budget import MemoryBudget
    from memwise.pool.crew import Crew
    from memwise.pool.dispatch import Dispatcher
    from memwise.pool.lanes import Lanes
    from memwise.pool.queue import TaskQueue
    from memwise.pool.task import Task

THROUGHPUT_SECONDS = 10  # the window of the recent rate, in whole seconds
KEY_REPR_CHARS = 60


class Throughput:
    """Tasks finished per second over the last ``THROUGHPUT_SECONDS`` (per-second buckets)."""

    def __init__(self) -> None:
        self._buckets: deque[list[int]] = deque(maxlen=THROUGHPUT_SECONDS + 1)
        self._first: float | None = None

    def note(self, now: float) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
            return
        if self._first is None:
            self._first = now
        self._buckets.append([second, 1])

    def rate(self, now: float) -> float:
        if self._first is None:
            return 0.0
        start = max(now - THROUGHPUT_SECONDS, self._first)
        finished = sum(count for second, count in self._buckets if second + 1 > start)
        span = now - start
        return finished / span if span > 0 else 0.0


class Tally:
    """The pool's counters, per lane where it matters."""

    def __init__(self) -> None:
        self.submitted = 0
        self.done = 0
        self.failed = 0
        self.cancelled = 0
        self.retried = 0
        self.timed_out = 0
        self.restarts = 0
        self.stolen = 0
        self.recycles: Counter[str] = Counter()
        self.lane_restarts: Counter[int] = Counter()
        self.lane_recycles: dict[int, Counter[str]] = {}
        self.durations = [0] * len(DURATION_BUCKETS)
        self.duration_total = 0.0
        self.throughput = Throughput()

    def ran(self, seconds: float, now: float) -> None:
        """A worker reported a task (its value or its error) after running ``seconds``."""
        self.durations[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_total += seconds
        self.throughput.note(now)

    def recycled(self, lane: int, reason: str) -> None:
        self.recycles[reason] += 1
        self.lane_recycles.setdefault(lane, Counter())[reason] += 1

    def died(self, lane: int) -> None:
        self.restarts += 1
        self.lane_restarts[lane] += 1

    def histogram(self) -> Histogram:
        return Histogram(
            buckets=DURATION_BUCKETS,
            counts=tuple(self.durations),
            total=self.duration_total,
            count=sum(self.durations),
        )


def key_repr(key: Hashable) -> str | None:
    """A task key as snapshots and events show it: its repr, shortened."""
    if key is None:
        return None
    text = repr(key)
    return text if len(text) <= KEY_REPR_CHARS else text[: KEY_REPR_CHARS - 3] + "..."


class Draft(NamedTuple):
    """The part of a snapshot copied under the pool's locks (see :func:`draft`)."""

    rows: list[dict[str, Any]]
    pool_level: dict[str, Any]
    budget_waiting: int
    learned: Mapping[str, int]


def draft(
    *,
    now: float,
    state: PoolState,
    broken: BaseException | None,
    crew: Crew,
    incoming: Collection[Task],
    queue: TaskQueue,
    dispatcher: Dispatcher,
    lanes: Lanes,
    tally: Tally,
) -> Draft:
    """Copy a pool's state; the caller holds the supervisor's state lock and the inbox's lock,
    so the figures agree with each other (between two rounds of the supervisor's work, with no
    submission half done)."""
    wall = time.time()
    queued_per_lane = queue.lane_counts()
    # Keyed tasks get their lane at submit: those the supervisor has not yet taken in from
    # the inbox wait for that lane too, as the pool-level ``queued`` counts them.
    for task in incoming:
        if task.lane is not None:
            queued_per_lane[task.lane] = queued_per_lane.get(task.lane, 0) + 1
    rows = []
    count = lanes.count
    for lane in range(count):
        worker = crew.in_lane(lane)
        rows.append(_worker_row(lane, worker, queued_per_lane.get(lane, 0), tally, now, wall))
    for lane in crew.lanes_in_use():
        if lane >= count:  # draining
            worker = crew.in_lane(lane)
            queued = queued_per_lane.get(lane, 0)
            rows.append(_worker_row(lane, worker, queued, tally, now, wall))
    for worker in crew.out_of_lanes():
        rows.append(_worker_row(worker.lane, worker, 0, tally, now, wall))
    pool_level = dict(
        time=wall,
        state=state,
        broken_reason=None if broken is None else str(broken),
        max_workers=count,
        min_workers=lanes.minimum,
        queued=len(incoming) + dispatcher.queued(),
        in_flight=sum(len(w.outstanding) + (w.calling is not None) for w in crew.everyone()),
        submitted=tally.submitted,
        done=tally.done,
        failed=tally.failed,
        cancelled=tally.cancelled,
        retried=tally.retried,
        timed_out=tally.timed_out,
        restarts=tally.restarts,
        recycles=frozen_map(tally.recycles),
        throughput=tally.throughput.rate(now),
        durations=tally.histogram(),
    )
    return Draft(
        rows, pool_level, dispatcher.budget_waiting(), frozen_map(dispatcher.learned_peaks())
    )


def complete(draft: Draft, probe: ProcessProbe, budget: MemoryBudget | None) -> PoolSnapshot:
    """The snapshot of ``draft``, with per-process figures from ``probe`` (outside the locks,
    as they do not have to agree with the counters)."""
    rows = draft.rows
    figures = probe.figures(row["pid"] for row in rows if row["pid"] is not None)
    workers = []
    for row in rows:
        measured = figures.get(row["pid"]) if row["pid"] is not None else None
        if measured is not None:
            row.update(private=measured.private, pss=measured.pss, cpu_percent=measured.cpu_percent)
        workers.append(WorkerSnapshot(**row))
    return PoolSnapshot(
        workers=tuple(workers),
        budget=None
        if budget is None
        else BudgetUsage(
            limit=budget.limit,
            in_use=probe.budget_in_use(budget),
            reserved=budget.reserved,
            waiting=draft.budget_waiting,
            learned=draft.learned,
        ),
        shared_memory=_shared_usage(),
        **draft.pool_level,
    )


def _worker_row(
    lane: int, worker: Worker | None, queued: int, tally: Tally, now: float, wall: float
) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        lane=lane,
        pid=None,
        state="stopped",
        key=None,
        task=None,
        tasks_done=0,
        queued=queued,
        private=None,
        pss=None,
        cpu_percent=None,
        restarts=tally.lane_restarts.get(lane, 0),
        recycles=frozen_map(tally.lane_recycles.get(lane)),
    )
    if worker is None:
        return row
    running = worker.running
    if worker.state is State.STARTING:
        state = "starting"
    elif worker.state is State.STOPPING or (worker.retiring and running is None):
        state = "stopping"
    else:
        state = "busy" if running is not None else "idle"
    task = None
    if running is not None:
        seconds = max(0.0, now - worker.busy_since)
        task = RunningTask(
            task_id=running.id,
            function=running.label,
            key=key_repr(running.key),
            started=wall - seconds,
            seconds=seconds,
        )
    row.update(
        pid=worker.pid,
        state=state,
        key=key_repr(running.key if running is not None else worker.last_key),
        task=task,
        tasks_done=worker.tasks_done,
    )
    return row


def _shared_usage() -> SharedMemoryUsage:
    from memwise import shared

    slots = shared.stats()
    return SharedMemoryUsage(
        slots_in_use=slots.in_use,
        slots_free=slots.slots - slots.in_use,
        bytes_in_use=slots.in_use_bytes,
        bytes_free=slots.bytes - slots.in_use_bytes,
    )
