"""``memwise bench recycle``: keeping leaky workers' memory bounded, and what it costs.

Every task retains 3 MiB for good in a module-level list of its worker (a leak), on two workers.
Systems, each driven through its own documented setting:

- ``memwise``: ``Recycle(memory=limit)``: a worker whose private memory exceeds the limit after
  a task is replaced.
- ``memwise-norecycle``: the same pool without recycling: the throughput reference, and the
  memory an unchecked leak reaches.
- ``loky``: its ``ProcessPoolExecutor`` has no task-count or memory-limit option (loky 3.7's
  constructor takes ``max_workers, job_reducers, result_reducers, timeout, context,
  initializer, initargs, env``). Its one remedy is a built-in leak guard: after a task, at most
  once a second, a worker whose RSS has grown more than ``LOKY_MAX_MEMORY_LEAK_SIZE`` (default
  300 MB) over its size after its first task exits. That variable is set to the limit here,
  through the executor's ``env=``.
- ``pebble``: ``ProcessPool(max_tasks=limit // task bytes)``, a task count standing in for the
  memory limit. It gets the forkserver context memwise uses: a plainly forked worker would count
  its parent's copy-on-write pages as its own private memory.

Figures per system: ``peak_worker_mb``, the most private memory one worker held (the larger of
what a sampler thread saw every 20 ms and what the tasks measured in their worker before
returning); ``peak_total_mb``, all workers together at one sample; ``final_total_mb``, all
workers after the last result; ``recycles``; ``tasks_per_s`` over the leaking tasks;
``cpu_ms_per_task``, the CPU every process of the pool spent per leaking task (its own process,
workers, forkserver, and the workers that exited meanwhile, through their reaper; the sampler's
own CPU is apart, in ``sampler_cpu_ms_per_task``); ``cores_used`` and ``cores_spare`` (idle or
running niced processes meanwhile). Each run is a fresh pool, warmed up first; with repeats,
throughput (and the CPU figures) is the best run's and memory the worst.

``bound`` is the most throughput any pool recycling as often could keep here, from the CPU a
task costs without recycling and the least CPU a recycle costs, both measured in this run (see
:func:`memwise.benchmarks._recycle_cost.recycle_bound`); memwise's and each peer's throughput
is also given as a share of it.
"""

from __future__ import annotations

import functools
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console

from memwise.benchmarks._harness import (
    Figures,
    Metric,
    Target,
    TargetedResult,
    at_least,
    at_most,
    measure_systems,
    print_result,
    print_targets,
    ratios_against,
)
from memwise.benchmarks._recycle_cost import (
    cpu_between,
    recycle_bound,
    recycle_floor,
    spare_cpu,
    tree_cpu,
)
from memwise.benchmarks._tasks import retain
from memwise.memory import private_memory

__all__ = ["METRICS", "SYSTEMS", "RecycleResult", "print_table", "run"]

WORKERS = 2
MiB = 1024 * 1024
TASK_BYTES = 3 * MiB
SAMPLE_S = 0.02
# A hung pool fails its system instead of stalling the benchmark; far above any healthy wait.
WAIT_S = 300.0
# The target: recycling may cost at most this share of the throughput without it.
THROUGHPUT_TOLERANCE = 0.10

METRICS = (
    Metric("peak_worker_mb", "peak worker MiB", ",.1f", higher_is_better=False),
    Metric("peak_total_mb", "peak all MiB", ",.1f", higher_is_better=False),
    Metric("final_total_mb", "final all MiB", ",.1f", higher_is_better=False),
    Metric("recycles", "recycles", ",.0f", higher_is_better=False),
    Metric("tasks_per_s", "tasks/s", ",.0f"),
    Metric("cpu_ms_per_task", "CPU ms/task", ",.2f", higher_is_better=False),
)
# A ratio of recycle counts says nothing: the ratios table leaves that column out.
RATIO_METRICS = tuple(m for m in METRICS if m.key != "recycles")


class RecycleResult(TargetedResult):
    """``BenchResult`` plus the configuration the targets are checked against."""

    limit_bytes: int
    task_bytes: int
    bound: dict[str, float]


@dataclass(frozen=True)
class Sizes:
    tasks: int
    limit: int
    repeats: int


FULL = Sizes(tasks=300, limit=100 * MiB, repeats=3)
# Fewer tasks leak less, so a lower limit keeps recycling in the picture.
QUICK = Sizes(tasks=100, limit=60 * MiB, repeats=1)


class Pool(Protocol):
    """One library's pool behind the interface the measurement uses."""

    def start(self, limit: int) -> None: ...

    def submit(self, fn: Callable[[int], Any], arg: int) -> Future[Any]: ...

    def recycles(self, worker_pids: set[int]) -> int:
        """Workers replaced so far, given the pids of every worker that ran a task."""

    def close(self) -> None: ...


class _Memwise:
    def __init__(self, recycle: bool) -> None:
        self._recycle = recycle
        self._pool: Any = None

    def start(self, limit: int) -> None:
        from memwise import WorkerPool
        from memwise.pool.policies import Recycle

        self._pool = WorkerPool(WORKERS, recycle=Recycle(memory=limit) if self._recycle else None)

    def submit(self, fn: Callable[[int], Any], arg: int) -> Future[Any]:
        return self._pool.submit(fn, arg)

    def recycles(self, worker_pids: set[int]) -> int:
        return sum(self._pool.snapshot().recycles.values())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _Loky:
    def __init__(self) -> None:
        self._pool: Any = None

    def start(self, limit: int) -> None:
        import loky

        self._pool = loky.ProcessPoolExecutor(
            max_workers=WORKERS, env={"LOKY_MAX_MEMORY_LEAK_SIZE": str(limit)}
        )

    def submit(self, fn: Callable[[int], Any], arg: int) -> Future[Any]:
        return self._pool.submit(fn, arg)

    def recycles(self, worker_pids: set[int]) -> int:
        return len(worker_pids) - WORKERS

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class _Pebble:
    def __init__(self) -> None:
        self._pool: Any = None

    def start(self, limit: int) -> None:
        import pebble

        self._pool = pebble.ProcessPool(
            max_workers=WORKERS,
            max_tasks=max(1, limit // TASK_BYTES),
            context=multiprocessing.get_context("forkserver"),
        )

    def submit(self, fn: Callable[[int], Any], arg: int) -> Future[Any]:
        return self._pool.schedule(fn, args=(arg,))

    def recycles(self, worker_pids: set[int]) -> int:
        return len(worker_pids) - WORKERS

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()


SYSTEMS: dict[str, Callable[[], Pool]] = {
    "memwise": lambda: _Memwise(recycle=True),
    "memwise-norecycle": lambda: _Memwise(recycle=False),
    "loky": _Loky,
    "pebble": _Pebble,
}


def run(quick: bool = False) -> RecycleResult:
    """Measure every system in this process; ``quick`` runs fewer tasks under a lower limit.

    A system that cannot be imported or that fails is listed in ``skipped`` with the reason.
    """
    sizes = QUICK if quick else FULL
    # The floor of a recycle is measured before and after the systems (the least of both):
    # the load of a shared machine changes meanwhile, and only ever adds CPU.
    floors = [_floor(sizes)]
    results, skipped = measure_systems(
        {name: functools.partial(_measure, factory, sizes) for name, factory in SYSTEMS.items()}
    )
    floors.append(_floor(sizes))
    floor = {part: min(f[part] for f in floors) for part in floors[0]}
    bound = (
        recycle_bound(results, "memwise", "memwise-norecycle", sizes.tasks, floor)
        if "memwise" in results and "memwise-norecycle" in results
        else {}
    )
    return {
        "benchmark": "recycle",
        "results": results,
        "skipped": skipped,
        "ratios": ratios_against(results, "memwise", RATIO_METRICS),
        "targets": targets(results, sizes.limit, bound),
        "limit_bytes": sizes.limit,
        "task_bytes": TASK_BYTES,
        "bound": bound,
    }


def print_table(result: RecycleResult, console: Console | None = None) -> None:
    """Print the figures, memwise ÷ each peer, and whether memwise met the issue's targets."""
    console = console or Console()
    print_result(result, METRICS, "memwise", console)
    console.print(
        f"limit {result['limit_bytes'] / MiB:.0f} MiB, each task retains "
        f"{result['task_bytes'] / MiB:.0f} MiB, {WORKERS} workers"
    )
    bound = result["bound"]
    if bound:
        console.print(
            f"bound: a task costs {bound['task_cpu_ms']:.2f} ms of CPU without recycling, a "
            f"recycle at least {bound['recycle_floor_ms']:.1f} ms (start "
            f"{bound['recycle_floor_start_ms']:.1f}, exit {bound['recycle_floor_exit_ms']:.1f}); "
            f"{bound['recycles_per_task']:.3f} recycles per task leave at most "
            f"{bound['cpu_share_bound']:.2f}x the unrecycled throughput on saturated cores, "
            f"{bound['ratio_bound']:.2f}x with the {bound['cores_spare_norecycle']:.2f} cores "
            f"left spare next to the {bound['cores_used_norecycle']:.2f} used without recycling"
        )
    print_targets(result["targets"], console)


def _floor(sizes: Sizes) -> dict[str, float]:
    from memwise.pool.context import get_context

    return recycle_floor(get_context(None), sizes.limit, TASK_BYTES, rounds=3)


def targets(
    results: dict[str, Figures], limit: int, bound: dict[str, float] | None = None
) -> dict[str, Target]:
    """The issue's targets, from memwise's figures of this run (unmet, without a value, when
    memwise or ``memwise-norecycle`` has none: ``skipped`` says why)."""
    mine = results.get("memwise")
    unrecycled = results.get("memwise-norecycle")
    share = None
    if mine is not None and unrecycled is not None:
        share = mine["tasks_per_s"] / unrecycled["tasks_per_s"]
    return {
        "peak worker private memory, MiB (limit + one task)": at_most(
            None if mine is None else mine["peak_worker_mb"], (limit + TASK_BYTES) / MiB, "MiB"
        ),
        "throughput vs no recycling": at_least(
            share, 1 - THROUGHPUT_TOLERANCE, "x memwise-norecycle"
        ),
        # What of the above is within memwise's reach: the share of the most any pool could
        # keep at this recycle rate on this machine (see recycle_bound).
        "throughput vs its bound (recycle CPU floor, same run)": at_least(
            (bound or {}).get("memwise_vs_bound"), 1 - THROUGHPUT_TOLERANCE, "x bound"
        ),
    }


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    seconds: float
    cpu: float  # the pool's processes, this one included
    sampling: float  # the sampler thread's
    spare: float  # idle or niced on the machine meanwhile
    peak_worker: int
    peak_total: int
    final_total: int
    recycles: int


def _measure(factory: Callable[[], Pool], sizes: Sizes) -> Figures:
    runs = [_run_once(factory(), sizes) for _ in range(sizes.repeats)]
    best = min(runs, key=lambda r: r.seconds)  # CPU and cores figures: the throughput's run
    return {
        "peak_worker_mb": max(r.peak_worker for r in runs) / MiB,
        "peak_total_mb": max(r.peak_total for r in runs) / MiB,
        "final_total_mb": max(r.final_total for r in runs) / MiB,
        "recycles": max(r.recycles for r in runs),
        "tasks_per_s": sizes.tasks / min(r.seconds for r in runs),
        "cpu_ms_per_task": best.cpu / sizes.tasks * 1e3,
        "sampler_cpu_ms_per_task": best.sampling / sizes.tasks * 1e3,
        "cores_used": (best.cpu + best.sampling) / best.seconds,
        "cores_spare": best.spare / best.seconds,
    }


def _run_once(pool: Pool, sizes: Sizes) -> _Run:
    sampler = _Sampler()
    try:
        pool.start(sizes.limit)
        sampler.start()
        # Warm-up: workers import the task module before the clock starts; retain(0) leaks nothing.
        reports = _results(pool.submit(retain, 0) for _ in range(4 * WORKERS))
        cpu_before, sampling_before, spare_before = tree_cpu(), sampler.cpu, spare_cpu()
        start = time.perf_counter()
        leaks = _results(pool.submit(retain, TASK_BYTES) for _ in range(sizes.tasks))
        seconds = time.perf_counter() - start
        spare = spare_cpu() - spare_before
        sampling = sampler.cpu - sampling_before
        # The sampler's own CPU is the benchmark's, not the pool's: it is counted apart.
        cpu = cpu_between(cpu_before, tree_cpu()) - sampling
        sampler.stop()
        recycles = pool.recycles({pid for pid, _ in reports + leaks})
    finally:
        sampler.stop()
        pool.close()
    # What outlives the pool (the forkserver, resource trackers) was never one of its workers.
    samples = sampler.without(set(_descendants()))
    return _Run(
        seconds=seconds,
        cpu=cpu,
        sampling=sampling,
        spare=spare,
        peak_worker=max([max(s.values(), default=0) for s in samples] + [p for _, p in leaks]),
        peak_total=max(sum(s.values()) for s in samples),
        final_total=sum(samples[-1].values()),
        recycles=recycles,
    )


def _results(futures: Iterable[Future[Any]]) -> list[Any]:
    return [future.result(timeout=WAIT_S) for future in list(futures)]


class _Sampler:
    """The private memory of every descendant process, every ``SAMPLE_S``, in a thread.

    Worker pids come from the process tree rather than from each library's internals, so every
    system is measured the same way, including workers that are exiting after a recycle.
    """

    def __init__(self) -> None:
        self.samples: list[dict[int, int]] = []
        self.cpu = 0.0  # CPU seconds the sampling thread has spent
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recycle-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, ending with one last sample (the final memory); idempotent."""
        if self._stopped.is_set() or not self._thread.is_alive():
            return
        self._stopped.set()
        self._thread.join()
        self.samples.append(_sample())

    def without(self, pids: set[int]) -> list[dict[int, int]]:
        return [{pid: size for pid, size in s.items() if pid not in pids} for s in self.samples]

    def _loop(self) -> None:
        while not self._stopped.is_set():
            started = time.thread_time()
            self.samples.append(_sample())
            self.cpu += time.thread_time() - started
            self._stopped.wait(SAMPLE_S)


def _sample() -> dict[int, int]:
    sizes = {}
    for pid in _descendants():
        try:
            sizes[pid] = private_memory(pid)
        except (ProcessLookupError, PermissionError):
            pass  # exited between the listing and the reading
    return sizes


def _descendants() -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process().children(recursive=True)]
