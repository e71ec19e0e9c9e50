"""Prometheus metrics of a pool (and its pipelines), computed from one snapshot per scrape.

A custom collector rather than counters bumped on every event: the snapshot already holds the
pool's totals, so a scrape costs one ``pool.snapshot()`` and nothing at all happens between
scrapes. Names follow Prometheus conventions: one ``memwise_`` prefix, base units (seconds,
bytes, ratios), ``_total`` for counters, labels of low cardinality only (lane numbers are
bounded by the pool size, never a pid or a task id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from memwise.observe.stages import PipelineLike, stage_rows

if TYPE_CHECKING:
    from memwise.pool.snapshot import PoolSnapshot, WorkerSnapshot

WORKER_STATES = ("starting", "idle", "busy", "stopping", "stopped")
POOL_STATES = ("running", "broken", "closing", "shut down")


LANE_METRICS: tuple[
    tuple[
        type[GaugeMetricFamily | CounterMetricFamily],
        str,
        str,
        Callable[[WorkerSnapshot], float | None],
    ],
    ...,
] = (
    (
        GaugeMetricFamily,
        "memwise_worker_private_bytes",
        "Private memory of the worker in a lane",
        lambda w: w.private,
    ),
    (
        GaugeMetricFamily,
        "memwise_worker_pss_bytes",
        "Proportional set size of the worker in a lane",
        lambda w: w.pss,
    ),
    (
        GaugeMetricFamily,
        "memwise_worker_cpu_ratio",
        "CPU use of the worker in a lane (1.0 = one core)",
        lambda w: None if w.cpu_percent is None else w.cpu_percent / 100.0,
    ),
    (
        CounterMetricFamily,
        "memwise_worker_tasks",
        "Tasks done by the current process of a lane",
        lambda w: w.tasks_done,
    ),
    (
        GaugeMetricFamily,
        "memwise_queue_depth",
        "Tasks waiting for a lane (pinned there by their key)",
        lambda w: w.queued,
    ),
)


class PoolCollector:
    """A ``prometheus_client`` collector: every scrape reads one fresh snapshot."""

    def __init__(
        self,
        snapshot: Callable[[], PoolSnapshot],
        pipelines: Mapping[str, PipelineLike] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._pipelines = dict(pipelines or {})

    def describe(self) -> list[Metric]:
        # Empty: registering must not take a snapshot (prometheus_client would call collect).
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from pool_metrics(snap)
        if self._pipelines:
            yield from stage_metrics(stage_rows(self._pipelines))


def pool_metrics(snap: PoolSnapshot) -> Iterator[Metric]:
    """The pool's metric families for one snapshot."""
    up = GaugeMetricFamily("memwise_pool_up", "1 while the pool accepts and runs tasks, else 0")
    up.add_metric([], 1.0 if snap.state == "running" else 0.0)
    yield up
    state = GaugeMetricFamily(
        "memwise_pool_state", "1 for the pool's current state", labels=["state"]
    )
    for name in POOL_STATES:
        state.add_metric([name], 1.0 if snap.state == name else 0.0)
    yield state

    tasks = CounterMetricFamily(
        "memwise_tasks", "Tasks by outcome since the pool started", labels=["outcome"]
    )
    for outcome, value in (
        ("submitted", snap.submitted),
        ("done", snap.done),
        ("failed", snap.failed),
        ("cancelled", snap.cancelled),
        ("retried", snap.retried),
        ("timed_out", snap.timed_out),
    ):
        tasks.add_metric([outcome], value)
    yield tasks

    yield _gauge("memwise_tasks_queued", "Tasks submitted, not yet sent to a worker", snap.queued)
    yield _gauge("memwise_tasks_in_flight", "Tasks sent to a worker, not finished", snap.in_flight)
    yield _gauge(
        "memwise_throughput_tasks_per_second", "Tasks finished per second, recent", snap.throughput
    )

    hist = snap.durations
    cumulative, buckets = 0, []
    for bound, count in zip(hist.buckets, hist.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    if not buckets or buckets[-1][0] != "+Inf":
        buckets.append(("+Inf", hist.count))
    duration = HistogramMetricFamily("memwise_task_duration_seconds", "Time tasks ran in a worker")
    duration.add_metric([], buckets, sum_value=hist.total)
    yield duration

    workers = GaugeMetricFamily("memwise_workers", "Worker lanes by state", labels=["state"])
    by_state = dict.fromkeys(WORKER_STATES, 0)
    for worker in snap.workers:
        by_state[worker.state] = by_state.get(worker.state, 0) + 1
    for name, count in by_state.items():
        workers.add_metric([name], count)
    yield workers
    yield _gauge("memwise_workers_max", "Worker lanes the pool may use", snap.max_workers)
    yield _gauge("memwise_workers_min", "Workers kept alive when idle", snap.min_workers)

    # Warm spares (lane -1) hold no lane yet: they are counted in memwise_workers only, so
    # that no two samples of a family share a label set.
    lanes = [worker for worker in snap.workers if worker.lane >= 0]
    for family_type, name, documentation, read in LANE_METRICS:
        family = family_type(name, documentation, labels=["lane"])
        for worker in lanes:
            figure = read(worker)
            if figure is not None:
                family.add_metric([str(worker.lane)], figure)
        yield family

    restarts = CounterMetricFamily(
        "memwise_worker_restarts",
        "Workers replaced, by reason: 'died' for unexpected deaths, else the recycle reason",
        labels=["reason"],
    )
    restarts.add_metric(["died"], snap.restarts)
    for reason, count in sorted(snap.recycles.items()):
        restarts.add_metric([str(reason)], count)
    yield restarts

    if snap.budget is not None:
        budget = GaugeMetricFamily(
            "memwise_budget_bytes", "The pool's memory budget", labels=["kind"]
        )
        budget.add_metric(["limit"], snap.budget.limit)
        budget.add_metric(["in_use"], snap.budget.in_use)
        budget.add_metric(["reserved"], snap.budget.reserved)
        yield budget
        yield _gauge(
            "memwise_budget_waiting_tasks",
            "Tasks waiting for room in the budget",
            snap.budget.waiting,
        )

    shm = snap.shared_memory
    shm_bytes = GaugeMetricFamily(
        "memwise_shm_bytes", "Shared-memory slots of this process", labels=["state"]
    )
    shm_bytes.add_metric(["in_use"], shm.bytes_in_use)
    shm_bytes.add_metric(["free"], shm.bytes_free)
    yield shm_bytes
    shm_slots = GaugeMetricFamily(
        "memwise_shm_slots", "Shared-memory slots of this process", labels=["state"]
    )
    shm_slots.add_metric(["in_use"], shm.slots_in_use)
    shm_slots.add_metric(["free"], shm.slots_free)
    yield shm_slots


def stage_metrics(pipelines: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per-stage metric families, labelled by pipeline and stage name."""
    labels = ["pipeline", "stage"]
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "workers": GaugeMetricFamily("memwise_stage_workers", "Workers of a stage", labels=labels),
        "capacity": GaugeMetricFamily(
            "memwise_stage_capacity", "Room of a stage's input queue", labels=labels
        ),
        "depth": GaugeMetricFamily(
            "memwise_stage_depth", "Items waiting in a stage's input queue", labels=labels
        ),
        "done": CounterMetricFamily("memwise_stage_items", "Items a stage finished", labels=labels),
        "rate": GaugeMetricFamily(
            "memwise_stage_items_per_second", "Items a stage finishes per second", labels=labels
        ),
        "busy_percent": GaugeMetricFamily(
            "memwise_stage_busy_ratio",
            "Share of a stage's worker time spent working",
            labels=labels,
        ),
        "errors": CounterMetricFamily("memwise_stage_errors", "Items that failed", labels=labels),
        "drops": CounterMetricFamily(
            "memwise_stage_drops", "Items dropped by a drop policy", labels=labels
        ),
    }
    for pipeline in pipelines:
        for stage in pipeline["stages"]:
            key = [pipeline["name"], stage["name"]]
            for field, family in families.items():
                value = stage[field]
                family.add_metric(key, value / 100.0 if field == "busy_percent" else value)
    yield from families.values()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def registry_for(
    snapshot: Callable[[], PoolSnapshot], pipelines: Mapping[str, PipelineLike] | None = None
) -> CollectorRegistry:
    """A registry of its own holding one :class:`PoolCollector` (several pools never clash)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(snapshot, pipelines))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format of everything in ``registry``."""
    return generate_latest(registry)
