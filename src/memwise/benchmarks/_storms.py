"""The experiments of ``memwise bench chaos`` (and of tests/chaos, at a small size).

Each starts what it attacks, injects faults under load, ends everything it started and returns
plain figures. A :class:`Killer` SIGKILLs busy workers at the times of a Poisson process; the
storms aim one at a pool's workers, an actor's process, a pipeline's process stage or the
workers computing data products.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from memwise.benchmarks import _faults
from memwise.errors import TaskTimeout, WorkerCrashed
from memwise.memory import private_memory

MiB = 1024 * 1024
WAIT_S = 120.0  # a healthy storm of the sizes used here ends far sooner: past it, a hang


def open_descriptors() -> int:
    """Descriptors open in this process now (Linux /proc; 0 where unknown)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class Killer:
    """A thread that SIGKILLs busy workers of ``pool`` at the times of a Poisson process."""

    def __init__(self, pool: Any, rate: float, seed: int = 0) -> None:
        self._pool = pool
        self._rate = rate
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self.kills = 0
        self._thread = threading.Thread(target=self._run, name="memwise-chaos-killer", daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def targets(self) -> list[int]:
        """The pids it may kill now: the pool's busy workers."""
        return [w.pid for w in self._pool.snapshot().workers if w.state == "busy" and w.pid]

    def _run(self) -> None:
        while not self._stop.wait(self._next_wait()):
            busy = self.targets()
            if not busy:
                continue
            try:
                os.kill(self._random.choice(busy), 9)
                self.kills += 1
            except ProcessLookupError:
                pass

    def _next_wait(self) -> float:
        # The first kill strikes at the first busy moment, so that even a short storm
        # injects at least one fault; the Poisson process takes over after it.
        return 0.01 if self.kills == 0 else self._random.expovariate(self._rate)


@dataclass
class StormFigures:
    """What one kill storm did and what it cost."""

    tasks: int
    completed: int  # with the right result
    wrong: int  # completed with a wrong result: must be 0
    crashed: int  # failed with WorkerCrashed (only without retries)
    other_errors: Counter[str] = field(default_factory=Counter)  # must be empty
    hung: int = 0  # futures not done within WAIT_S: must be 0
    kills: int = 0
    seconds: float = 0.0
    descriptors_grown: int = 0

    @property
    def lost(self) -> int:
        """Tasks that neither completed nor failed with the typed error they should."""
        return self.tasks - self.completed - self.crashed

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["other_errors"] = dict(self.other_errors)
        data["lost"] = self.lost
        data["tasks_per_s"] = self.tasks / self.seconds if self.seconds else 0.0
        return data


def kill_storm(
    *,
    tasks: int = 2000,
    rate: float = 10.0,
    retries: int = 3,
    array_bytes: int = 0,
    work_s: float = 0.002,
    workers: int = 2,
    seed: int = 0,
) -> StormFigures:
    """Run ``tasks`` tasks on a fresh pool while workers are killed at ``rate`` per second."""
    import numpy as np

    from memwise.pool.api import WorkerPool

    _warm_up(workers)
    descriptors = open_descriptors()
    base = np.arange(max(array_bytes // 8, 1), dtype=np.float64) if array_bytes else None
    futures: dict[Future[Any], int] = {}
    started = time.perf_counter()
    with WorkerPool(workers, retries=retries) as pool, Killer(pool, rate, seed) as killer:
        for i in range(tasks):
            if base is None:
                futures[pool.submit(_faults.checked, i, work_s)] = i
            else:
                futures[pool.submit(_faults.checked_array, base, i, work_s)] = i
        done, not_done = wait(futures, timeout=WAIT_S)
        for future in not_done:
            future.cancel()
        kills = killer.kills
    figures = StormFigures(tasks, 0, 0, 0, hung=len(not_done), kills=kills)
    figures.seconds = time.perf_counter() - started
    for future in done:
        error = future.exception()
        if error is None:
            expected = _faults.checksum(futures[future], base)
            if future.result() == expected:
                figures.completed += 1
            else:
                figures.wrong += 1
        elif isinstance(error, WorkerCrashed):
            figures.crashed += 1
        else:
            figures.other_errors[type(error).__name__] += 1
    figures.descriptors_grown = open_descriptors() - descriptors
    return figures


class ActorKiller(Killer):
    """A :class:`Killer` aimed at the process hosting an actor, once it has answered a call.

    A process killed again and again while it is still building its object is what the storm
    guard exists to stop (a constructor that cannot succeed), so storms spare starting
    processes, as they spare idle pool workers.
    """

    def __init__(self, actor: Any, rate: float, seed: int = 0) -> None:
        super().__init__(None, rate, seed)
        self._actor = actor
        self.answered: set[int] = set()  # pids that returned a call

    def targets(self) -> list[int]:
        pid = self._actor.pid
        return [pid] if pid in self.answered else []


def actor_storm(*, calls: int = 300, rate: float = 4.0, work_s: float = 0.005) -> dict[str, Any]:
    """Calls to one actor while its process is killed: each completes or fails alone."""
    from memwise.actors import spawn

    outcomes: Counter[str] = Counter()
    actor = spawn(_faults.Squarer, restarts=10 * calls)
    try:
        killer = ActorKiller(actor, rate)
        with killer:
            futures = [actor.call("work", i, work_s) for i in range(calls)]
            for future in futures:
                future.add_done_callback(lambda f: _note_answer(f, killer.answered))
            done = wait(futures, timeout=WAIT_S).done
            kills = killer.kills
        for i, future in enumerate(futures):
            if future not in done:
                outcomes["hung"] += 1
            elif future.exception() is None:
                outcomes["completed" if future.result()[1] == float(i * i) else "wrong"] += 1
            else:
                outcomes[type(future.exception()).__name__] += 1
        alive_after = actor.call("work", 3, 0.0).result(WAIT_S)[1] == 9.0
    finally:
        actor.close()
    return {"calls": calls, "kills": kills, "outcomes": dict(outcomes), "works_after": alive_after}


def _note_answer(future: Future[Any], answered: set[int]) -> None:
    if not future.cancelled() and future.exception() is None:
        answered.add(future.result()[0])


def pipeline_storm(*, items: int = 400, rate: float = 4.0) -> dict[str, Any]:
    """A pipeline with a process stage whose workers are killed: every item, in order."""
    from memwise.pipeline import Pipeline
    from memwise.pool.api import WorkerPool

    with WorkerPool(2, retries=8) as pool, Killer(pool, rate) as killer:
        with Pipeline(range(items)) as line:
            line.pipe(_faults.double_slowly, pool=pool).pipe(_faults.plus_one)
            results = list(line)
        kills = killer.kills
    expected = [2 * i + 1 for i in range(items)]
    return {
        "items": items,
        "kills": kills,
        "delivered": len(results),
        "in_order_and_right": results == expected,
    }


def data_storm(*, rate: float = 0.5, chunks: int = 8, records: int = 4000) -> dict[str, Any]:
    """Data products computed on workers that are killed: the same peaks as a quiet run."""
    import tempfile

    import numpy as np

    from memwise.data import Context
    from memwise.demos.waveform_chain import PLUGINS
    from memwise.pool.api import WorkerPool

    config = {"chunks": chunks, "records_per_chunk": records}
    with tempfile.TemporaryDirectory() as quiet_dir, tempfile.TemporaryDirectory() as storm_dir:
        with Context(quiet_dir, plugins=PLUGINS, config=config, workers=0) as quiet:
            expected = quiet.get_array("run", "peaks")
        with WorkerPool(2, retries=8) as pool, Killer(pool, rate) as killer:
            with Context(storm_dir, plugins=PLUGINS, config=config, pool=pool) as stormy:
                peaks = stormy.get_array("run", "peaks")
            kills = killer.kills
        same = peaks.dtype == expected.dtype and np.array_equal(peaks, expected)
    return {"kills": kills, "peaks": len(expected), "same_as_quiet_run": bool(same)}


def _warm_up(workers: int) -> None:
    """Start (and end) one pool first, so that process-wide helpers that live on (the
    forkserver, its pipes) are not counted as descriptors a storm leaked."""
    from memwise.pool.api import WorkerPool

    with WorkerPool(workers) as pool:
        pool.submit(_faults.square, 1).result(WAIT_S)


def poison(*, retries: int = 2, healthy: int = 200, workers: int = 2) -> dict[str, Any]:
    """One task that kills every worker it runs on, among ``healthy`` ordinary ones."""
    from memwise.pool.api import WorkerPool

    with WorkerPool(workers, retries=retries) as pool:
        bad = pool.submit(_faults.run_fault, "sigkill")
        good = [pool.submit(_faults.checked, i, 0.001) for i in range(healthy)]
        error = bad.exception(WAIT_S)
        results = [f.result(WAIT_S) for f in good]
        snapshot = pool.snapshot()
    return {
        "error": type(error).__name__ if error else None,
        "message": str(error) if error else "",
        "crashes": snapshot.restarts,
        "healthy_completed": sum(r == _faults.checksum(i, None) for i, r in enumerate(results)),
        "healthy": healthy,
        "pool_state": snapshot.state,
    }


SOAK_WORKERS = 2  # the soak pool's size: the count that must hold at the end


def soak(*, seconds: float = 60.0, warmup: float = 10.0, rate: float = 2.0) -> dict[str, Any]:
    """Mixed load for ``seconds``: private memory drift, descriptors and workers afterwards."""
    import numpy as np

    from memwise.pool.api import WorkerPool

    rng = random.Random(1)
    large = np.arange(2 * MiB // 8, dtype=np.float64)
    counts: Counter[str] = Counter()
    samples: list[tuple[float, int]] = []
    descriptors = None
    start = time.monotonic()
    with WorkerPool(SOAK_WORKERS, retries=3) as pool, Killer(pool, rate, seed=2) as killer:
        while (now := time.monotonic() - start) < seconds:
            batch: list[tuple[Future[Any], int, bool]] = []
            for i in range(50):
                roll = rng.random()
                if roll < 0.2:
                    batch.append((pool.submit(_faults.checked_array, large, i, 0.0), i, True))
                elif roll < 0.22:
                    hung = pool.options(timeout=0.2).submit(_faults.hang)
                    batch.append((hung, i, False))
                else:
                    batch.append((pool.submit(_faults.checked, i, 0.0005), i, False))
            for future, i, with_array in batch:
                try:
                    result = future.result(WAIT_S)
                except TaskTimeout:
                    counts["timed_out"] += 1
                    continue
                expected = _faults.checksum(i, large if with_array else None)
                counts["completed" if result == expected else "wrong"] += 1
            if now >= warmup:
                if descriptors is None:
                    descriptors = open_descriptors()
                samples.append((now, private_memory()))
        workers_alive = sum(1 for w in pool.snapshot().workers if w.pid)
        kills = killer.kills
    drift_per_min = _slope(samples) * 60 / MiB if len(samples) > 2 else 0.0
    return {
        "seconds": seconds,
        "tasks": sum(counts.values()),
        "completed": counts["completed"],
        "wrong": counts["wrong"],
        "timed_out": counts["timed_out"],
        "kills": kills,
        "private_drift_mib_per_min": drift_per_min,
        "descriptors_grown": open_descriptors() - (descriptors or open_descriptors()),
        "workers_alive_at_end": workers_alive,
    }


def leftovers() -> dict[str, int]:
    """Processes this program started that still run, and memwise segments it still holds."""
    import multiprocessing

    import psutil

    from memwise import shared

    helpers = {p.pid for p in multiprocessing.active_children()}
    shared.trim()
    strays = 0
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and child.pid not in helpers:
                cmd = " ".join(child.cmdline())
                if "forkserver" not in cmd and "resource_tracker" not in cmd:
                    strays += 1
        except psutil.NoSuchProcess:
            continue
    segments = len(shared.owned_segments() or ())
    return {"processes": strays, "segments": segments}


def _slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (time, bytes): bytes per second."""
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    num = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    den = sum((t - mean_t) ** 2 for t, _ in samples)
    return num / den if den else 0.0
