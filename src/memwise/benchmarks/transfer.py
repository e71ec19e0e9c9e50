"""``memwise bench transfer``: a ``1 - a`` round trip on 48 MB of array data, per system.

Two inputs of 48 MB each: a flat float64 array and a 2000x2000x3 float32 image. One round trip
submits ``1 - a`` to a pool of two workers and waits for the result: the argument goes in, a
result of the same size comes back. The limit is the same ``1 - a`` in this process.

Systems, each through its natural API:

- ``memwise``: ``WorkerPool.submit(one_minus, a)`` with a plain array (copied into a slot);
- ``memwise (in place)``: as ``memwise (slot)``, and the task writes its result into
  ``memwise.shared.empty`` (``np.subtract(1, a, out=...)``), so it crosses back with no copy:
  the zero-copy path both ways;
- ``memwise (slot)``: the input made with ``memwise.shared.copy`` beforehand, so it travels
  as a handle, with no copy;
- ``ProcessPoolExecutor``, ``loky``, ``pebble``: ``submit``/``schedule`` and ``result()``;
- ``Ray`` (when installed): ``ray.get(f.remote(a))``, the natural form, which puts the
  argument into Ray's object store inside the timing on every call; ``Ray (put)`` puts it once,
  outside the timing, the counterpart of ``memwise (slot)``. Ray is started with
  ``ray.init(num_cpus=2, include_dashboard=False)`` and shut down afterwards.

Figures are medians of round trips after warm-up (first touches of fresh memory are not what is
measured), the two inputs timed in turns; every system's first result is checked against
``1 - a``. ``ratios`` is memwise's figure over each peer's, ``in-process`` included;
``slot_ratios`` the same for ``memwise (slot)``. ``breakdown_ms`` splits
memwise's 48 MB round trip into its stages: the CPU work of the transport replayed in this
process (copy in, receive, copy out, adopt, release), the compute measured inside a worker, and
the rest (messages, wake-ups, scheduling) as what remains of the measured round trip.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from rich.console import Console
from rich.table import Table

from memwise.benchmarks._harness import (
    BenchResult,
    Figures,
    Metric,
    Target,
    TargetedResult,
    at_most,
    median_time,
    print_result,
    print_targets,
    ratios_against,
    stage_table,
    time_call,
)
from memwise.benchmarks._tasks import one_minus, one_minus_in_slot, timed_one_minus

__all__ = ["METRICS", "SYSTEMS", "TransferResult", "print_table", "run"]

WORKERS = 2
ARRAY_SHAPE = (6_000_000,)  # float64: 48 MB
IMAGE_SHAPE = (2000, 2000, 3)  # float32: 48 MB
# A hung pool becomes a skipped system instead of a benchmark that never ends; a healthy 48 MB
# round trip takes well under a second, a first one (workers importing numpy) a few.
WAIT_S = 120.0
SUBJECT = "memwise"
SLOT_SUBJECT = "memwise (slot)"
IN_PROCESS = "in-process"
RAY = "Ray"
# The targets: memwise at most this many times the in-process time and Ray's (issue 4 asked
# for 2x and 0.6x; these are the tighter ones that followed).
TARGET_VS_IN_PROCESS = 1.5
TARGET_VS_RAY = 0.5

METRICS = (
    Metric("roundtrip_ms", "48 MB float64 ms", ",.1f", higher_is_better=False),
    Metric("image_roundtrip_ms", "2000x2000x3 float32 ms", ",.1f", higher_is_better=False),
)


class TransferResult(TargetedResult):
    """``BenchResult`` plus the in-process limits, memwise (slot)'s ratios and the breakdown."""

    in_process_ms: float
    image_in_process_ms: float
    slot_ratios: dict[str, Figures]
    breakdown_ms: dict[str, float]


@dataclass(frozen=True)
class Sizes:
    warmups: int  # round trips per input before timing
    samples: int  # timed round trips per input (median)


FULL = Sizes(warmups=12, samples=7)
QUICK = Sizes(warmups=1, samples=3)


class Inputs(NamedTuple):
    array: np.ndarray
    image: np.ndarray


def make_inputs() -> Inputs:
    rng = np.random.default_rng(0)
    return Inputs(rng.random(ARRAY_SHAPE), rng.random(IMAGE_SHAPE, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------------


def _as_is(array: np.ndarray) -> Any:
    return array


@dataclass(frozen=True)
class Adapter:
    """One system: ``call`` runs one round trip on what ``prepare`` (untimed) made of an input."""

    call: Callable[[Any], Any]
    prepare: Callable[[np.ndarray], Any] = _as_is


System = Callable[[], AbstractContextManager[Adapter]]


def _executor_adapter(
    pool: Any, prepare: Callable[[np.ndarray], Any] = _as_is, task: Callable[..., Any] = one_minus
) -> Adapter:
    return Adapter(lambda x: pool.submit(task, x).result(WAIT_S), prepare)


@contextmanager
def _memwise() -> Iterator[Adapter]:
    from memwise import WorkerPool

    with WorkerPool(WORKERS) as pool:
        yield _executor_adapter(pool)


@contextmanager
def _memwise_slot() -> Iterator[Adapter]:
    from memwise import WorkerPool, shared

    with WorkerPool(WORKERS) as pool:
        yield _executor_adapter(pool, prepare=shared.copy)


@contextmanager
def _memwise_in_place() -> Iterator[Adapter]:
    from memwise import WorkerPool, shared

    with WorkerPool(WORKERS) as pool:
        yield _executor_adapter(pool, prepare=shared.copy, task=one_minus_in_slot)


@contextmanager
def _process_pool_executor() -> Iterator[Adapter]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        yield _executor_adapter(pool)


@contextmanager
def _loky() -> Iterator[Adapter]:
    import loky

    # The executor, not get_reusable_executor: no workers carried over between systems.
    pool = loky.ProcessPoolExecutor(max_workers=WORKERS)
    try:
        yield _executor_adapter(pool)
    finally:
        pool.shutdown(wait=True)


@contextmanager
def _pebble() -> Iterator[Adapter]:
    import pebble

    pool = pebble.ProcessPool(max_workers=WORKERS)
    try:
        # ``schedule`` is pebble's documented call (its ``submit`` is for asyncio).
        yield Adapter(lambda x: pool.schedule(one_minus, args=(x,)).result(WAIT_S))
    finally:
        pool.close()
        pool.join()


@contextmanager
def _ray_session() -> Iterator[Any]:
    # Under ``uv run``, Ray starts its workers with ``uv run`` in a copy of the project, which
    # builds a fresh environment without the ``ray`` extra (workers then die on ``import ray``).
    # Workers of this very interpreter and environment are what the other systems get too.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    ray.init(
        num_cpus=WORKERS,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _ray() -> Iterator[Adapter]:
    with _ray_session() as ray:
        remote = ray.remote(one_minus)
        yield Adapter(lambda x: ray.get(remote.remote(x), timeout=WAIT_S))


@contextmanager
def _ray_put() -> Iterator[Adapter]:
    with _ray_session() as ray:
        remote = ray.remote(one_minus)
        yield Adapter(lambda x: ray.get(remote.remote(x), timeout=WAIT_S), prepare=ray.put)


SYSTEMS: dict[str, System] = {
    SUBJECT: _memwise,
    SLOT_SUBJECT: _memwise_slot,
    "memwise (in place)": _memwise_in_place,
    "ProcessPoolExecutor": _process_pool_executor,
    "loky": _loky,
    "pebble": _pebble,
    RAY: _ray,
    "Ray (put)": _ray_put,
}


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _median_ms(fn: Callable[[], object], samples: int) -> float:
    return median_time(fn, samples) * 1e3


def _check(result: Any, source: np.ndarray) -> None:
    """A system that returns the wrong thing must not get a figure."""
    if not np.array_equal(np.asarray(result), 1 - source):
        raise RuntimeError("the round trip returned a wrong result")


def _by_metric(inputs: Inputs) -> dict[str, np.ndarray]:
    return {"roundtrip_ms": inputs.array, "image_roundtrip_ms": inputs.image}


def _measure(system: System, inputs: Inputs, sizes: Sizes) -> Figures:
    sources = _by_metric(inputs)
    with system() as adapter:
        prepared = {key: adapter.prepare(source) for key, source in sources.items()}
        for key, source in sources.items():
            _check(adapter.call(prepared[key]), source)
        # Both inputs are warm before either is timed: stores that place each new object in
        # fresh memory (Ray's) would otherwise favour whichever input is timed second.
        for _ in range(sizes.warmups):
            for item in prepared.values():
                adapter.call(item)
        calls = {key: partial(adapter.call, item) for key, item in prepared.items()}
        return _interleaved_medians_ms(calls, sizes.samples)


def _interleaved_medians_ms(calls: Mapping[str, Callable[[], object]], samples: int) -> Figures:
    """Median ms of each call, timed in turns so that drifts (a store filling up, another
    process waking) weigh on every input alike rather than on whichever is timed first.

    A call's result is dropped inside its timing: memwise's slot goes back to its pool there.
    """
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(samples):
        for key, call in calls.items():
            times[key].append(time_call(call))
    return {key: statistics.median(seconds) * 1e3 for key, seconds in times.items()}


def _in_process(inputs: Inputs, sizes: Sizes) -> Figures:
    calls = {key: partial(one_minus, source) for key, source in _by_metric(inputs).items()}
    for _ in range(sizes.warmups):
        for call in calls.values():
            call()
    return _interleaved_medians_ms(calls, sizes.samples)


def targets(results: dict[str, Figures]) -> dict[str, Target]:
    """memwise's round trip over in-process and over Ray's, per input, against the targets."""
    found: dict[str, Target] = {}
    for subject in (SUBJECT, SLOT_SUBJECT):
        for peer, bound in ((IN_PROCESS, TARGET_VS_IN_PROCESS), (RAY, TARGET_VS_RAY)):
            for m in METRICS:
                # Without either system's figures (``skipped`` says why) the target stays, unmet.
                ratio = None
                if subject in results and peer in results:
                    ratio = results[subject][m.key] / results[peer][m.key]
                found[f"{subject} / {peer}, {m.header}"] = at_most(ratio, bound, f"x {peer}")
    return found


def run(quick: bool = False) -> TransferResult:
    """Measure every system in this process; ``quick`` takes fewer samples (same sizes).

    A system that cannot be imported or that fails is listed in ``skipped`` with the reason.
    """
    sizes = QUICK if quick else FULL
    inputs = make_inputs()
    in_process = _in_process(inputs, sizes)
    results: dict[str, Figures] = {}
    skipped: dict[str, str] = {}
    for name, system in SYSTEMS.items():
        try:
            results[name] = _measure(system, inputs, sizes)
        except ImportError as exc:
            skipped[name] = f"not installed: {exc}"
        # A peer that breaks must not take the other systems' figures down with it.
        except Exception as exc:
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
    with_limit = {**results, IN_PROCESS: in_process}
    return {
        "benchmark": "transfer",
        "results": results,
        "in_process_ms": in_process["roundtrip_ms"],
        "image_in_process_ms": in_process["image_roundtrip_ms"],
        "skipped": skipped,
        "ratios": ratios_against(with_limit, SUBJECT, METRICS),
        "slot_ratios": ratios_against(with_limit, SLOT_SUBJECT, METRICS),
        "targets": targets(with_limit),
        "breakdown_ms": breakdown(inputs.array, sizes) if SUBJECT in results else {},
    }


# --------------------------------------------------------------------------------------------
# Where memwise's time goes
# --------------------------------------------------------------------------------------------

# Stages of one round trip in the order they happen; "compute" runs in the worker.
REPLAYED = ("copy_in", "receive", "copy_out", "adopt", "release")


class _Laps:
    """Seconds between successive ``lap`` calls, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now


def _replay_once(array: np.ndarray, slots: Any) -> dict[str, float]:
    """The transport's CPU work for one ``1 - a`` round trip, done in this process.

    Parent and worker sides run here one after the other, with the same functions the pool
    uses, so what is left of a real round trip is messaging, wake-ups and scheduling.
    """
    from memwise import _oob, _wire, shared

    laps = _Laps()
    outgoing = _oob.Outgoing(_oob.DEFAULT_THRESHOLD, fallback=False)
    call: tuple[Any, ...] = (one_minus, (array,), {})
    payload = _wire.dumps(call, "the call", calls=True, buffer_callback=outgoing)
    laps.lap("copy_in")
    fn, args, kwargs = _wire.loads(payload, "the call", _oob.borrowed(tuple(outgoing.handles)))
    laps.lap("receive")
    result = fn(*args, **kwargs)
    del fn, args, kwargs  # the borrowed views: gone, as in the worker after a task
    laps.lap("compute")
    encoder = slots.encoder()
    data = _wire.dumps(result, "the result", buffer_callback=encoder)
    del result
    laps.lap("copy_out")
    value = _wire.loads(data, "the result", _oob.adopted(tuple(encoder.gifts)))
    laps.lap("adopt")
    del value  # its slot goes back to the pool, as when a caller drops a result
    outgoing.release()
    shared.take_returns()  # nobody to return the borrowed handles to in one process
    slots.stock(_oob.restock({array.nbytes: 1}, os.getpid()))
    laps.lap("release")
    return laps.seconds


def _replayed_ms(array: np.ndarray, sizes: Sizes) -> dict[str, float]:
    from memwise import _oob
    from memwise.shared._names import current_owner

    slots = _oob.WorkerSlots(current_owner(), _oob.DEFAULT_THRESHOLD)
    try:
        for _ in range(sizes.warmups):
            _replay_once(array, slots)
        runs = [_replay_once(array, slots) for _ in range(sizes.samples)]
    finally:
        slots.pool().close()
    return {stage: statistics.median(r[stage] for r in runs) * 1e3 for stage in runs[0]}


def _pool_ms(array: np.ndarray, sizes: Sizes) -> dict[str, float]:
    """Measured in a WorkerPool: the round trip, the compute inside it, a tiny round trip."""
    from memwise import WorkerPool

    tiny = np.ones(8)
    with WorkerPool(WORKERS) as pool:
        for _ in range(sizes.warmups):
            pool.submit(timed_one_minus, array).result(WAIT_S)
        computes, trips = [], []
        for _ in range(sizes.samples):
            start = time.perf_counter()
            seconds, _result = pool.submit(timed_one_minus, array).result(WAIT_S)
            del _result
            trips.append(time.perf_counter() - start)
            computes.append(seconds)
        tiny_ms = _median_ms(lambda: pool.submit(one_minus, tiny).result(WAIT_S), sizes.samples)
    return {
        "roundtrip": statistics.median(trips) * 1e3,
        "worker_compute": statistics.median(computes) * 1e3,
        "tiny_roundtrip": tiny_ms,
    }


def breakdown(array: np.ndarray, sizes: Sizes = FULL) -> dict[str, float]:
    """Median ms per stage of memwise's round trip on ``array``; see the module docstring.

    ``compute`` is ``1 - a`` replayed here, ``worker_compute`` the same measured in a worker;
    ``messaging`` is the measured round trip minus every stage (with the worker's compute).
    """
    stages = _replayed_ms(array, sizes)
    measured = _pool_ms(array, sizes)
    accounted = sum(stages[s] for s in REPLAYED) + measured["worker_compute"]
    return {**stages, **measured, "messaging": measured["roundtrip"] - accounted}


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def print_table(result: TransferResult, console: Console | None = None) -> None:
    """Figures, memwise ÷ each peer (in-process included), the targets and the breakdown."""
    console = console or Console()
    limit: Figures = {
        "roundtrip_ms": result["in_process_ms"],
        "image_roundtrip_ms": result["image_in_process_ms"],
    }
    shown: BenchResult = {
        "benchmark": result["benchmark"],
        "results": {**result["results"], IN_PROCESS: limit},  # the limit, as the last row
        "skipped": result["skipped"],
        "ratios": result["ratios"],
    }
    print_result(shown, METRICS, SUBJECT, console)
    print_targets(result["targets"], console)
    if result["breakdown_ms"]:
        console.print(_breakdown_table(result["breakdown_ms"]))


_STAGE_NOTES = {
    "copy_in": "parent: argument into a reused slot (pickle + memcpy)",
    "receive": "worker: views of the borrowed slot (unpickle)",
    "compute": "1 - a, replayed in this process",
    "copy_out": "worker: result into a restocked slot (pickle + memcpy)",
    "adopt": "parent: adopt the result slot (unpickle)",
    "release": "parent: free the slots, restock the worker",
    "worker_compute": "1 - a measured inside the worker",
    "messaging": "round trip - stages - worker compute: pipes, wake-ups, GC",
    "roundtrip": "measured round trip (timed_one_minus)",
    "tiny_roundtrip": "round trip of an 8-element array: the pool's floor",
}


def _breakdown_table(stages: dict[str, float]) -> Table:
    title = "memwise 48 MB round trip, by stage (median ms)"
    return stage_table(title, stages, "ms", ",.2f", _STAGE_NOTES)
