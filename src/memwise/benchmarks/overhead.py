"""``memwise bench overhead``: what a pool costs per task, next to its peers in the same run.

Every system runs with two workers on four measurements:

- ``submit_per_s``: no-op tasks submitted in a burst, then every result awaited (best of N);
- ``roundtrip_us``: one no-op submitted and awaited at a time (median);
- ``call_us``: one no-op at a time through the library's synchronous call, where it has one
  (memwise ``call``, ``multiprocessing.Pool.apply``, mpire ``apply``; the executors have none,
  so submit-and-wait again) (median);
- ``map_per_s``: the library's own ``map`` over small integers (best of N);
- ``scaling_2v1``: throughput of the same batch of numpy-heavy tasks on 2 workers over 1.

Targets on memwise's figures: a sequential round trip (``call_us``: a caller waiting for one
result at a time, through the API made for it) <= 60 µs and <= 0.35x multiprocessing.Pool's,
submit+result throughput >= 4x pebble's (all in the same run). And two
figures of memwise's observing surface, with their targets:

- ``snapshot_8_us``: ``pool.snapshot()`` of an 8-worker pool with warm per-process caches
  (median); target <= 200 µs.
- ``events_idle_pct``: what events cost a task when nobody subscribed, as a share of the
  per-task time measured by ``submit_per_s`` in the same run: each event site a task passes
  (submitted, started, finished) is one truth test of the hub's subscriptions, timed here on
  a real hub; target <= 3 %. ``submit_per_s_subscribed`` is the submit rate with one
  subscriber attached, for comparison.

``breakdown_us`` splits memwise's sequential round trip into its stages, next to the floors
of this machine (a bare pipe ping-pong between two processes, a wake-up between two threads):
see :mod:`memwise.benchmarks._roundtrip_stages`.

Each library is driven through its natural API and its best documented setting; the adapters
below say what they pass. Pools are started and warmed up before any timing, so start-up cost is
not part of these figures.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from memwise.benchmarks._harness import (
    Figures,
    Metric,
    Target,
    TargetedResult,
    at_least,
    at_most,
    best_time,
    measure_systems,
    median_time,
    print_result,
    print_targets,
    ratios_against,
    stage_table,
)
from memwise.benchmarks._roundtrip_stages import STAGE_NOTES, breakdown
from memwise.benchmarks._tasks import inc, noop, numpy_work

__all__ = ["METRICS", "SYSTEMS", "print_table", "run"]

WORKERS = 2
SNAPSHOT_WORKERS = 8
MAX_SNAPSHOT_US = 200.0
MAX_EVENTS_IDLE_PCT = 3.0
MAX_ROUNDTRIP_US = 60.0
MAX_ROUNDTRIP_VS_MP = 0.35  # memwise's sequential round trip over multiprocessing.Pool's
MIN_SUBMIT_VS_PEBBLE = 4.0  # memwise's submit+result throughput over pebble's
# Event sites every task passes: task_submitted, task_started, task_finished.
EVENT_SITES_PER_TASK = 3

# Where a library's own wait takes a deadline, a hung pool becomes a skipped system rather than a
# benchmark that never ends. Far above any healthy wait, so it never shapes a figure.
WAIT_S = 300.0

# Numpy's thread pools read these when they start; workers pinned to one thread each keep the
# 1-worker scaling run from quietly using the second core.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

METRICS = (
    Metric("submit_per_s", "submit/s", ",.0f"),
    Metric("roundtrip_us", "round trip µs", ",.0f", higher_is_better=False),
    Metric("call_us", "sync call µs", ",.0f", higher_is_better=False),
    Metric("map_per_s", "map items/s", ",.0f"),
    Metric("scaling_2v1", "scaling 2v1", ".2f"),
)


class OverheadResult(TargetedResult):
    """``TargetedResult`` plus memwise's round trip by stage (µs; empty without memwise)."""

    breakdown_us: dict[str, float]


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does; ``*_repeats`` is the N of best-of-N."""

    submit_tasks: int
    submit_repeats: int
    roundtrips: int
    map_items: int
    map_repeats: int
    cpu_tasks: int
    cpu_repeats: int
    snapshots: int = 2_000


FULL = Sizes(20_000, 3, 2_000, 200_000, 3, 32, 3)
QUICK = Sizes(2_000, 3, 200, 20_000, 3, 4, 2, snapshots=500)


class Adapter(Protocol):
    """One library's pool behind the interface the measurements use."""

    def start(self, workers: int) -> None: ...

    def submit_many(self, fn: Callable[[], object], n: int) -> None:
        """Submit ``n`` calls of ``fn``, then wait for every result."""

    def roundtrip(self, fn: Callable[[], object]) -> None:
        """Submit one call of ``fn`` and wait for its result."""

    def call(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` through the library's synchronous API (its round trip if it has none)."""

    def map(self, fn: Callable[[int], int], items: list[int]) -> list[int]: ...

    def close(self) -> None: ...


def _pool_default_chunksize(n_items: int, workers: int) -> int:
    """``multiprocessing.Pool.map``'s own default: about four chunks per worker."""
    return max(1, -(-n_items // (4 * workers)))


class _ExecutorAdapter:
    """Pools whose ``submit`` returns a ``concurrent.futures.Future``."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._workers = 0

    def start(self, workers: int) -> None:
        self._workers = workers
        self._pool = self._create(workers)

    def _create(self, workers: int) -> Any:
        raise NotImplementedError

    def _submit(self, fn: Callable[[], object]) -> Future[object]:
        return self._pool.submit(fn)

    def submit_many(self, fn: Callable[[], object], n: int) -> None:
        futures = [self._submit(fn) for _ in range(n)]
        for future in futures:
            future.result(timeout=WAIT_S)

    def roundtrip(self, fn: Callable[[], object]) -> None:
        self._submit(fn).result(timeout=WAIT_S)

    def call(self, fn: Callable[[], object]) -> None:
        self.roundtrip(fn)

    def map(self, fn: Callable[[int], int], items: list[int]) -> list[int]:
        return list(self._pool.map(fn, items, timeout=WAIT_S, **self._map_options(len(items))))

    def _map_options(self, n_items: int) -> dict[str, int]:
        """Chunking for ``Executor.map``, whose default of one item per task is pathological."""
        return {"chunksize": _pool_default_chunksize(n_items, self._workers)}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _Memwise(_ExecutorAdapter):
    """``memwise.WorkerPool``; ``map`` batches on its own, so no chunk size is passed."""

    def _create(self, workers: int) -> Any:
        from memwise import WorkerPool

        return WorkerPool(workers=workers)

    def _map_options(self, n_items: int) -> dict[str, int]:
        return {}

    def call(self, fn: Callable[[], object]) -> None:
        self._pool.call(fn)


class _SubscribedMemwise(_Memwise):
    """``memwise.WorkerPool`` with one subscriber counting every event it is sent."""

    def _create(self, workers: int) -> Any:
        pool = super()._create(workers)
        self.events = 0
        pool.subscribe(self._count)
        return pool

    def _count(self, _event: object) -> None:
        self.events += 1


class _ProcessPoolExecutor(_ExecutorAdapter):
    """The standard library's executor; ``map`` gets ``multiprocessing.Pool``'s chunking."""

    def _create(self, workers: int) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=workers)


class _Loky(_ExecutorAdapter):
    """``loky.ProcessPoolExecutor``; ``map`` gets ``multiprocessing.Pool``'s chunking.

    The executor rather than ``get_reusable_executor``, whose process-wide singleton would carry
    workers over from one measurement to the next.
    """

    def _create(self, workers: int) -> Any:
        import loky

        return loky.ProcessPoolExecutor(max_workers=workers)


class _Pebble(_ExecutorAdapter):
    """``pebble.ProcessPool``: ``schedule`` (its documented call; ``submit`` is for asyncio) and
    ``map`` with ``multiprocessing.Pool``'s chunking, as its default chunk size is 1."""

    def _create(self, workers: int) -> Any:
        import pebble

        return pebble.ProcessPool(max_workers=workers)

    def _submit(self, fn: Callable[[], object]) -> Future[object]:
        return self._pool.schedule(fn)

    def map(self, fn: Callable[[int], int], items: list[int]) -> list[int]:
        chunksize = _pool_default_chunksize(len(items), self._workers)
        return list(self._pool.map(fn, items, chunksize=chunksize).result())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()


class _ApplyAsyncAdapter:
    """Pools with ``apply_async`` returning a result to ``get`` and a ``map`` that chunks itself."""

    def __init__(self) -> None:
        self._pool: Any = None

    def start(self, workers: int) -> None:
        self._pool = self._create(workers)

    def _create(self, workers: int) -> Any:
        raise NotImplementedError

    def submit_many(self, fn: Callable[[], object], n: int) -> None:
        results = [self._pool.apply_async(fn) for _ in range(n)]
        for result in results:
            result.get(timeout=WAIT_S)

    def roundtrip(self, fn: Callable[[], object]) -> None:
        self._pool.apply_async(fn).get(timeout=WAIT_S)

    def call(self, fn: Callable[[], object]) -> None:
        self._pool.apply(fn)

    def map(self, fn: Callable[[int], int], items: list[int]) -> list[int]:
        return list(self._pool.map(fn, items))


class _MultiprocessingPool(_ApplyAsyncAdapter):
    """``multiprocessing.Pool``; ``map`` keeps its default of about four chunks per worker."""

    def _create(self, workers: int) -> Any:
        import multiprocessing

        return multiprocessing.Pool(processes=workers)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()


class _Mpire(_ApplyAsyncAdapter):
    """``mpire.WorkerPool``, which has no ``submit``: ``apply_async`` stands in for it.

    ``keep_alive=True`` so workers outlive a ``map`` call, as every other pool's do, instead of
    being restarted (and their start-up timed) on the next call. ``map`` keeps its default
    chunking, 64 chunks per worker.
    """

    def _create(self, workers: int) -> Any:
        import mpire

        return mpire.WorkerPool(n_jobs=workers, keep_alive=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop_and_join()


SYSTEMS: dict[str, Callable[[], Adapter]] = {
    "memwise": _Memwise,
    "ProcessPoolExecutor": _ProcessPoolExecutor,
    "multiprocessing.Pool": _MultiprocessingPool,
    "loky": _Loky,
    "pebble": _Pebble,
    "mpire": _Mpire,
}


def run(systems: Sequence[str] | None = None, quick: bool = False) -> OverheadResult:
    """Measure ``systems`` (all by default) in this process; ``quick`` shrinks sizes ~10x.

    Sets the numpy thread variables to 1 in this process's environment, which the workers inherit.
    A system that cannot be imported or that fails is listed in ``skipped`` with the reason.
    """
    names = _check_names(systems)
    sizes = QUICK if quick else FULL
    for variable in _THREAD_VARIABLES:
        os.environ[variable] = "1"
    results, skipped = measure_systems(
        {name: functools.partial(_measure, SYSTEMS[name], sizes) for name in names}
    )
    # A target against a peer left out has no value; say why rather than drop the target.
    skipped |= {name: "not selected (--system)" for name in SYSTEMS if name not in names}
    if "memwise" in results:
        results["memwise"].update(_surface(sizes, results["memwise"]["submit_per_s"]))
    ratios = ratios_against(results, "memwise", METRICS)
    return {
        "benchmark": "overhead",
        "results": results,
        "skipped": skipped,
        "ratios": ratios,
        "targets": _targets(results.get("memwise", {}), ratios),
        "breakdown_us": breakdown(results["memwise"]["roundtrip_us"])
        if "memwise" in results
        else {},
    }


def print_table(result: OverheadResult, console: Console | None = None) -> None:
    """Print the figures, memwise ÷ each peer, the skipped systems, the targets, the stages."""
    console = console or Console()
    print_result(result, METRICS, "memwise", console)
    memwise = result["results"].get("memwise", {})
    if "submit_per_s_subscribed" in memwise:
        console.print(
            f"memwise submit/s with one event subscriber: {memwise['submit_per_s_subscribed']:,.0f}"
        )
    print_targets(result["targets"], console)
    if result["breakdown_us"]:
        console.print(_breakdown_table(result["breakdown_us"]))


def _breakdown_table(stages: dict[str, float]) -> Table:
    title = "memwise sequential round trip of a no-op, by stage (µs)"
    return stage_table(title, stages, "µs", ",.1f", STAGE_NOTES)


def _targets(memwise: Figures, ratios: dict[str, Figures]) -> dict[str, Target]:
    """Issues' targets on memwise's figures of this run; without them (memwise failed, or the
    peer a ratio needs was not measured) a target has no value and is not met."""
    return {
        "sequential round trip": at_most(memwise.get("call_us"), MAX_ROUNDTRIP_US, "µs"),
        "sequential round trip vs multiprocessing.Pool": at_most(
            ratios.get("multiprocessing.Pool", {}).get("call_us"),
            MAX_ROUNDTRIP_VS_MP,
            "x multiprocessing.Pool",
        ),
        "submit+result throughput vs pebble": at_least(
            ratios.get("pebble", {}).get("submit_per_s"), MIN_SUBMIT_VS_PEBBLE, "x pebble"
        ),
        "snapshot of an 8-worker pool, warm": at_most(
            memwise.get("snapshot_8_us"), MAX_SNAPSHOT_US, "µs"
        ),
        "events with no subscriber, share of a task's submit cost": at_most(
            memwise.get("events_idle_pct"), MAX_EVENTS_IDLE_PCT, "%"
        ),
    }


def _surface(sizes: Sizes, submit_per_s: float) -> Figures:
    """memwise's snapshot and event figures (see the module docstring)."""
    from memwise import WorkerPool
    from memwise.pool.subscribers import EventHub

    with WorkerPool(SNAPSHOT_WORKERS) as pool:
        pool.snapshot()  # fills the per-process caches
        snapshot_us = median_time(pool.snapshot, sizes.snapshots) * 1e6

    class Producer:  # the shape of the production check: ``self._hub.subscriptions``
        events = EventHub()

    producer = Producer()
    passes = 100_000

    def idle_sites() -> None:
        for _ in range(passes):
            if producer.events.subscriptions:
                raise AssertionError("nobody subscribed")

    site_seconds = best_time(idle_sites, 5) / passes
    idle_pct = 100.0 * EVENT_SITES_PER_TASK * site_seconds * submit_per_s

    with _started(_SubscribedMemwise, WORKERS) as adapter:
        subscribed = _submit_rate(adapter, sizes)
    return {
        "snapshot_8_us": snapshot_us,
        "events_idle_pct": idle_pct,
        "submit_per_s_subscribed": subscribed,
    }


def _check_names(systems: Sequence[str] | None) -> list[str]:
    if systems is None:
        return list(SYSTEMS)
    names = list(systems)
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    return names


def _measure(factory: Callable[[], Adapter], sizes: Sizes) -> Figures:
    with _started(factory, WORKERS) as pool:
        figures = {
            "submit_per_s": _submit_rate(pool, sizes),
            "roundtrip_us": _median_us(pool.roundtrip, sizes),
            "call_us": _median_us(pool.call, sizes),
            "map_per_s": _map_rate(pool, sizes),
        }
    figures["scaling_2v1"] = _cpu_rate(factory, 2, sizes) / _cpu_rate(factory, 1, sizes)
    return figures


@contextmanager
def _started(factory: Callable[[], Adapter], workers: int) -> Iterator[Adapter]:
    """A started pool whose every worker is up and has numpy imported; closed whatever happens."""
    pool = factory()
    try:
        pool.start(workers)
        # Tasks long enough that each worker takes some, including in pools that start lazily.
        pool.submit_many(numpy_work, 2 * workers)
        yield pool
    finally:
        pool.close()


def _submit_rate(pool: Adapter, sizes: Sizes) -> float:
    pool.submit_many(noop, sizes.submit_tasks // 10)
    seconds = best_time(lambda: pool.submit_many(noop, sizes.submit_tasks), sizes.submit_repeats)
    return sizes.submit_tasks / seconds


def _median_us(roundtrip: Callable[[Callable[[], object]], None], sizes: Sizes) -> float:
    """Median µs of ``roundtrip(noop)``, one at a time, after a warm-up."""
    for _ in range(sizes.roundtrips // 10):
        roundtrip(noop)
    return median_time(lambda: roundtrip(noop), sizes.roundtrips) * 1e6


def _map_rate(pool: Adapter, sizes: Sizes) -> float:
    items = list(range(sizes.map_items))
    # The warm-up also proves the map computes the right thing, so no shortcut is being timed.
    if pool.map(inc, items) != [inc(x) for x in items]:
        raise RuntimeError("map returned wrong results")
    return len(items) / best_time(lambda: pool.map(inc, items), sizes.map_repeats)


def _cpu_rate(factory: Callable[[], Adapter], workers: int, sizes: Sizes) -> float:
    with _started(factory, workers) as pool:
        seconds = best_time(
            lambda: pool.submit_many(numpy_work, sizes.cpu_tasks), sizes.cpu_repeats
        )
    return sizes.cpu_tasks / seconds
