"""``memwise bench overhead --backend ray`` and ``bench transfer --backend ray``.

memwise-on-Ray (``WorkerPool(2, backend="ray")``) against plain Ray, each through its natural
API, all on one local cluster (2 CPUs, loopback) started once for the run:

- ``Ray tasks``: ``ray.get([f.remote(x) ...])``;
- ``Ray actors``: two actors, calls dealt round-robin, ``ray.get`` on the refs;
- ``ray.util.multiprocessing.Pool``: ``apply_async(...).get()`` and ``map``.

Overhead figures (no-op tasks): ``submit_per_s`` (a burst submitted, every result awaited;
best of N), ``roundtrip_us`` (one call at a time; median), ``map_per_s``. Transfer figures: the
median round trip of ``1 - a`` on 48 MB (a flat float64 array, a 2000x2000x3 float32 image),
the systems timed in turns so that drifts weigh on each alike.

Targets (the issue's): per-task overhead of memwise-on-Ray (1 / submit rate) at most 1.2x the
best plain-Ray figure; large arrays no slower than plain Ray tasks.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from rich.console import Console

from memwise.benchmarks._harness import (
    Figures,
    Metric,
    best_time,
    median_time,
    print_result,
    ratios_against,
    time_call,
)
from memwise.benchmarks._tasks import inc, noop, one_minus

__all__ = ["print_table", "run_overhead", "run_transfer"]

WORKERS = 2
WAIT_S = 300.0
SUBJECT = "memwise on Ray"
RAY_TASKS = "Ray tasks"
PLAIN = (RAY_TASKS, "Ray actors", "ray.util.multiprocessing.Pool")
OVERHEAD_TARGET = 1.2  # memwise's per-task time over the best plain-Ray one, at most
TRANSFER_TARGET = 1.0  # memwise's large-array round trip over plain Ray tasks', at most

OVERHEAD_METRICS = (
    Metric("submit_per_s", "submit/s", ",.0f"),
    Metric("roundtrip_us", "round trip µs", ",.0f", higher_is_better=False),
    Metric("map_per_s", "map items/s", ",.0f"),
)
TRANSFER_METRICS = (
    Metric("roundtrip_ms", "48 MB float64 ms", ",.1f", higher_is_better=False),
    Metric("image_roundtrip_ms", "2000x2000x3 float32 ms", ",.1f", higher_is_better=False),
)


@dataclass(frozen=True)
class Sizes:
    tasks: int
    repeats: int
    roundtrips: int
    map_items: int
    transfer_samples: int


FULL = Sizes(tasks=5_000, repeats=3, roundtrips=500, map_items=50_000, transfer_samples=9)
QUICK = Sizes(tasks=500, repeats=2, roundtrips=50, map_items=5_000, transfer_samples=3)


@dataclass(frozen=True)
class System:
    """One way to run calls on the cluster."""

    many: Callable[[Callable[..., Any], list[Any]], list[Any]]  # one call per item, all awaited
    one: Callable[[Callable[..., Any], Any], Any]
    map: Callable[[Callable[..., Any], list[Any]], list[Any]]


@contextmanager
def _cluster() -> Iterator[Any]:
    # memwise.ray first: it keeps Ray from rebuilding a ``uv run`` environment for workers.
    from memwise.ray import connect, ray

    connect(num_cpus=WORKERS)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _memwise() -> Iterator[System]:
    from memwise import WorkerPool

    with WorkerPool(WORKERS, backend="ray") as pool:

        def many(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
            futures = [pool.submit(fn, item) for item in items]
            return [f.result(WAIT_S) for f in futures]

        yield System(
            many,
            lambda fn, item: pool.submit(fn, item).result(WAIT_S),
            lambda fn, items: list(pool.map(fn, items, timeout=WAIT_S)),
        )


@contextmanager
def _ray_tasks() -> Iterator[System]:
    import ray

    remotes: dict[Any, Any] = {}

    def remote(fn: Callable[..., Any]) -> Any:
        if fn not in remotes:
            remotes[fn] = ray.remote(fn)
        return remotes[fn]

    def many(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        f = remote(fn)
        return list(ray.get([f.remote(item) for item in items], timeout=WAIT_S))

    def chunked(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        # A Ray task per item is what a Ray user writes; batching is left to memwise's map.
        size = max(1, len(items) // (8 * WORKERS))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        f = remote(_apply_all)
        return [x for chunk in ray.get([f.remote(fn, c) for c in chunks]) for x in chunk]

    yield System(many, lambda fn, item: ray.get(remote(fn).remote(item), timeout=WAIT_S), chunked)


def _apply_all(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
    return [fn(item) for item in items]


class _Caller:
    """A Ray actor that calls functions: the plain-actor way to run work."""

    def call(self, fn: Callable[..., Any], item: Any) -> Any:
        return fn(item)

    def call_all(self, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        return [fn(item) for item in items]


@contextmanager
def _ray_actors() -> Iterator[System]:
    import ray

    actors: list[Any] = [ray.remote(_Caller).remote() for _ in range(WORKERS)]
    turn = iter(range(1 << 62))

    def many(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        refs = [actors[i % WORKERS].call.remote(fn, x) for i, x in enumerate(items)]
        return list(ray.get(refs, timeout=WAIT_S))

    def one(fn: Callable[..., Any], item: Any) -> Any:
        return ray.get(actors[next(turn) % WORKERS].call.remote(fn, item), timeout=WAIT_S)

    def chunked(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        size = max(1, len(items) // (8 * WORKERS))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        refs = [actors[i % WORKERS].call_all.remote(fn, c) for i, c in enumerate(chunks)]
        return [x for chunk in ray.get(refs, timeout=WAIT_S) for x in chunk]

    try:
        yield System(many, one, chunked)
    finally:
        for actor in actors:
            ray.kill(actor)


@contextmanager
def _ray_pool() -> Iterator[System]:
    from ray.util.multiprocessing import Pool

    pool = Pool(processes=WORKERS)
    try:

        def many(fn: Callable[..., Any], items: list[Any]) -> list[Any]:
            results = [pool.apply_async(fn, (item,)) for item in items]
            return [r.get(timeout=WAIT_S) for r in results]

        yield System(
            many,
            lambda fn, item: pool.apply_async(fn, (item,)).get(timeout=WAIT_S),
            lambda fn, items: list(pool.map(fn, items)),
        )
    finally:
        pool.terminate()


SYSTEMS: dict[str, Callable[[], AbstractContextManager[System]]] = {
    SUBJECT: _memwise,
    RAY_TASKS: _ray_tasks,
    "Ray actors": _ray_actors,
    "ray.util.multiprocessing.Pool": _ray_pool,
}


def _noop(_item: Any) -> None:
    noop()


def _overhead(system: System, sizes: Sizes) -> Figures:
    items = list(range(sizes.tasks))
    system.many(_noop, items[: sizes.tasks // 5])  # warm-up: workers up, functions loaded
    submit = best_time(lambda: system.many(_noop, items), sizes.repeats)
    for _ in range(sizes.roundtrips // 10):
        system.one(_noop, 0)
    roundtrip = median_time(lambda: system.one(_noop, 0), sizes.roundtrips)
    numbers = list(range(sizes.map_items))
    if system.map(inc, numbers) != [inc(x) for x in numbers]:
        raise RuntimeError("map returned wrong results")
    mapped = best_time(lambda: system.map(inc, numbers), sizes.repeats)
    return {
        "submit_per_s": sizes.tasks / submit,
        "roundtrip_us": roundtrip * 1e6,
        "map_per_s": sizes.map_items / mapped,
    }


def _target(value: float, limit: float) -> dict[str, Any]:
    return {"value": round(value, 3), "target": f"<= {limit:g}", "met": value <= limit}


Measure = Callable[[ExitStack], tuple[dict[str, Figures], dict[str, str]]]


def _run(name: str, measure: Measure) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ExitStack() as stack:
        stack.enter_context(_cluster())
        results, skipped = measure(stack)
    return {"benchmark": name, "backend": "ray", "results": results, "skipped": skipped}


def run_overhead(quick: bool = False) -> dict[str, Any]:
    """Per-task overhead of memwise-on-Ray and plain Ray, on one local cluster."""
    sizes = QUICK if quick else FULL

    def measure(_: ExitStack) -> tuple[dict[str, Figures], dict[str, str]]:
        results: dict[str, Figures] = {}
        skipped: dict[str, str] = {}
        for name, system in SYSTEMS.items():
            try:
                with system() as started:
                    results[name] = _overhead(started, sizes)
            except Exception as exc:  # a peer that breaks must not take the others down
                skipped[name] = f"failed: {type(exc).__name__}: {exc}"
        return results, skipped

    result = _run("overhead", measure)
    results = result["results"]
    result["ratios"] = ratios_against(results, SUBJECT, OVERHEAD_METRICS)
    plain = [results[name]["submit_per_s"] for name in PLAIN if name in results]
    targets = {}
    if SUBJECT in results and plain:
        # Per-task time is the inverse of the rate: memwise's over the best plain figure.
        ratio = max(plain) / results[SUBJECT]["submit_per_s"]
        targets["task overhead vs best plain Ray (x)"] = _target(ratio, OVERHEAD_TARGET)
    result["targets"] = targets
    return result


def run_transfer(quick: bool = False) -> dict[str, Any]:
    """48 MB round trips through memwise-on-Ray and plain Ray, timed in turns."""
    import numpy as np

    sizes = QUICK if quick else FULL
    rng = np.random.default_rng(0)
    inputs: dict[str, Any] = {
        "roundtrip_ms": rng.random(6_000_000),
        "image_roundtrip_ms": rng.random((2000, 2000, 3), dtype=np.float32),
    }

    def measure(stack: ExitStack) -> tuple[dict[str, Figures], dict[str, str]]:
        started: dict[str, System] = {}
        skipped: dict[str, str] = {}
        for name, factory in SYSTEMS.items():
            try:
                started[name] = stack.enter_context(factory())
                for source in inputs.values():
                    if not np.array_equal(started[name].one(one_minus, source), 1 - source):
                        raise RuntimeError("the round trip returned a wrong result")
            except Exception as exc:
                started.pop(name, None)
                skipped[name] = f"failed: {type(exc).__name__}: {exc}"
        times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in inputs} for n in started}
        for sample in range(sizes.transfer_samples + 2):  # the first two rounds warm up
            for name, system in started.items():
                for key, source in inputs.items():
                    seconds = time_call(partial(system.one, one_minus, source))
                    if sample >= 2:
                        times[name][key].append(seconds)
        results = {
            name: {key: statistics.median(t) * 1e3 for key, t in by_key.items()}
            for name, by_key in times.items()
        }
        return results, skipped

    result = _run("transfer", measure)
    results = result["results"]
    result["ratios"] = ratios_against(results, SUBJECT, TRANSFER_METRICS)
    targets = {}
    if SUBJECT in results and RAY_TASKS in results:
        for metric in TRANSFER_METRICS:
            ratio = results[SUBJECT][metric.key] / results[RAY_TASKS][metric.key]
            targets[f"{metric.header} vs Ray tasks (x)"] = _target(ratio, TRANSFER_TARGET)
    result["targets"] = targets
    return result


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    """The figures, memwise-on-Ray over each plain-Ray system, and the targets."""
    console = console or Console()
    metrics = OVERHEAD_METRICS if result["benchmark"] == "overhead" else TRANSFER_METRICS
    print_result(result, metrics, SUBJECT, console)  # type: ignore[arg-type]
    for name, target in result["targets"].items():
        mark = "[green]met[/]" if target["met"] else "[red]missed[/]"
        console.print(f"{mark} {name}: {target['value']:.2f} (target {target['target']})")
