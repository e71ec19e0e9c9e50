"""The inspection line as users build it with other tools, measured like memwise's.

Each peer is a :class:`~memwise.demos._lines.Line`: it starts its processes once, on entry,
and runs the same three stages on the same frames each time it is asked, so that
:func:`~memwise.demos._lines.measure` warms every process up before timing fresh frames.
Workers: ``PROCESSES`` in all, two per heavy stage, or one pool of four shared by both where
the tool allows sharing; the cheap verdict runs in this process (in its own process for the
hand-written chain, as such chains are written). Queues are bounded by the same capacity where
the tool has such a bound. Frames are fresh arrays: these tools pickle frames through pipes.
Every worker process of every system starts with :func:`~memwise.demos._inspection.warm_up`
(as an initializer where the tool has one), so that all of them work with a warm heap.

Also here: :class:`MachineBound`, no pipeline at all but the serial loop in one process per
CPU on its own share of the frames, timed in turn with the serial loop in one process, several
times: what this machine can do at best, and how much that is over serial.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from memwise.demos._inspection import Verdict, inspect, load_scenes, warm_up
from memwise.demos._lines import STAGES, Clock, Line, Tagged, frames

__all__ = ["PEERS", "PROCESSES", "Bound", "MachineBound", "Timed"]

PROCESSES = 4  # worker processes per system: equal CPU share on a machine others also use
_HALF = PROCESSES // 2


def _in_order(results: Iterator[Tagged], indices: range) -> Iterator[Tagged]:
    """``results`` (of frames ``indices``, in any order) in frame order; early ones wait."""
    early: dict[int, Tagged] = {}
    for expected in indices:
        while expected not in early:
            result = next(results)
            early[result.value.index] = result
        yield early.pop(expected)


def _fed(put: Any, made: Iterator[Any]) -> threading.Thread:
    """A thread putting each of ``made`` with ``put`` (which waits while the line is full)."""

    def feed() -> None:
        for item in made:
            put(item)

    feeder = threading.Thread(target=feed, name="peer-feeder", daemon=True)
    feeder.start()
    return feeder


# -------------------------------------------------------------------- multiprocessing.Queue


def _queue_worker(fn: Any, inbox: Any, outbox: Any) -> None:
    warm_up()
    while (item := inbox.get()) is not None:
        outbox.put(fn(item))


class QueueChain(Line):
    """A hand-written chain: processes joined by bounded ``multiprocessing.Queue`` s."""

    serves = (_HALF, _HALF)

    def __enter__(self) -> QueueChain:
        context = multiprocessing.get_context("forkserver")
        self._counts = (_HALF, _HALF, 1)
        self._queues = [context.Queue(self.capacity) for _ in range(len(STAGES) + 1)]
        self._workers = [
            context.Process(
                target=_queue_worker, args=(fn, self._queues[i], self._queues[i + 1]), daemon=True
            )
            for i, (fn, n) in enumerate(zip(STAGES, self._counts, strict=True))
            for _ in range(n)
        ]
        for worker in self._workers:
            worker.start()
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        feeder = _fed(self._queues[0].put, frames(indices, self.scenes, clock))
        outbox = self._queues[-1]
        yield from _in_order(iter(outbox.get, None), indices)
        feeder.join()

    def __exit__(self, *exc_info: object) -> None:
        for i, n in enumerate(self._counts):  # one end mark per worker reading queue i
            for _ in range(n):
                self._queues[i].put(None)
        for worker in self._workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for channel in self._queues:
            channel.close()
            channel.join_thread()


# -------------------------------------------------------------------- pypeln


class Pypeln(Line):
    """``pypeln.process.map`` stages fed from a queue, unordered (its ordered mode collects
    every item first): one stream kept open across runs, so its processes stay warm."""

    serves = (_HALF, _HALF)

    def __enter__(self) -> Pypeln:
        try:
            import pypeln as pl
        except ModuleNotFoundError as exc:
            if exc.name != "pkg_resources":
                raise
            raise ImportError(
                "pypeln imports stopit, which imports pkg_resources; that module comes with "
                "setuptools, which this environment does not install"
            ) from exc

        # pypeln reads a plain iterable in a thread of this process, and only stops at its end.
        self._inbox: queue.Queue[Any] = queue.Queue(self.capacity)
        stage = pl.process.map(
            STAGES[0], iter(self._inbox.get, None), workers=_HALF, maxsize=self.capacity
        )
        stage = pl.process.map(STAGES[1], stage, workers=_HALF, maxsize=self.capacity)
        self._regions = iter(stage)
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        feeder = _fed(self._inbox.put, frames(indices, self.scenes, clock))
        yield from _in_order((STAGES[2](regions) for regions in self._regions), indices)
        feeder.join()

    def __exit__(self, *exc_info: object) -> None:
        self._inbox.put(None)
        for _ in self._regions:  # the end of the stream ends its processes
            pass


# -------------------------------------------------------------------- mpire


class Mpire(Line):
    """Two ``mpire.WorkerPool`` s chained by ``imap`` (ordered), the verdict in this process;
    ``keep_alive``: the workers stay up between runs."""

    serves = (_HALF, _HALF)

    def __enter__(self) -> Mpire:
        import mpire

        self._stack = contextlib.ExitStack()
        self._first, self._second = (
            self._stack.enter_context(
                mpire.WorkerPool(_HALF, start_method="forkserver", keep_alive=True)
            )
            for _ in range(2)
        )
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        # mpire unpacks tuple items into arguments: wrap each item in a 1-tuple.
        made = ((frame,) for frame in frames(indices, self.scenes, clock))
        masks = self._first.imap(
            STAGES[0], made, chunk_size=1, max_tasks_active=self.capacity, worker_init=warm_up
        )
        regions = self._second.imap(
            STAGES[1],
            ((mask,) for mask in masks),
            chunk_size=1,
            max_tasks_active=self.capacity,
            worker_init=warm_up,
        )
        for result in regions:
            yield STAGES[2](result)

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()


# -------------------------------------------------------------------- spdl


class Spdl(Line):
    """spdl's ``PipelineBuilder``, denoise and detect on one process executor, input order."""

    serves = (PROCESSES, PROCESSES)

    def __enter__(self) -> Spdl:
        context = multiprocessing.get_context("forkserver")
        self._executor = ProcessPoolExecutor(PROCESSES, mp_context=context, initializer=warm_up)
        return self

    def run(self, indices: range, clock: Clock) -> Iterator[Tagged]:
        from spdl.pipeline import PipelineBuilder

        builder: Any = PipelineBuilder()  # its generics cannot follow a chain of stages
        pipeline = (
            builder.add_source(frames(indices, self.scenes, clock))
            .pipe(STAGES[0], concurrency=PROCESSES, executor=self._executor, output_order="input")
            .pipe(STAGES[1], concurrency=PROCESSES, executor=self._executor, output_order="input")
            .pipe(STAGES[2])
            .add_sink(self.capacity)
            .build(num_threads=4)
        )
        with pipeline.auto_stop():
            yield from pipeline.get_iterator(timeout=600)

    def __exit__(self, *exc_info: object) -> None:
        self._executor.shutdown(cancel_futures=True)


PEERS: dict[str, type[Line]] = {
    "multiprocessing.Queue chain": QueueChain,
    "pypeln processes": Pypeln,
    "mpire chained imap": Mpire,
    "spdl process executor": Spdl,
}


# -------------------------------------------------------------------- the machine's bound

_scenes: list[np.ndarray] = []


def _load_scenes() -> None:
    _scenes[:] = load_scenes()
    warm_up()


def _serial_share(indices: range) -> tuple[int, float, list[Verdict]]:
    """This process's pid, the CPU seconds it took, and the verdicts of frames ``indices``."""
    start = time.process_time()
    verdicts = [inspect(frame) for frame in frames(indices, _scenes, Clock())]
    return os.getpid(), time.process_time() - start, verdicts


@dataclass(frozen=True)
class Timed:
    """One timed pass of the serial loop over the frames, in one process or in several."""

    frames_per_s: float
    cpu_ms: float  # CPU per frame, summed over the processes
    verdicts: list[Verdict]


@dataclass(frozen=True)
class Bound:
    """The serial loop alone and on every CPU at once, measured in turn, several times.

    Noise on a shared machine only ever slows a pass down, so the best pass of each is what
    the machine can do; the spread says how noisy this run was.
    """

    cpus: int
    serial: list[Timed]  # in the order run: serial, parallel, serial, parallel, ...
    parallel: list[Timed]
    warm: bool  # every process had run a frame before the first timed pass

    @staticmethod
    def _best(passes: list[Timed]) -> Timed:
        return max(passes, key=lambda timed: timed.frames_per_s)

    @staticmethod
    def _spread(passes: list[Timed]) -> float:
        """(best - worst) / best frames/s: 0 when every pass ran alike."""
        rates = [timed.frames_per_s for timed in passes]
        return (max(rates) - min(rates)) / max(rates)

    def figures(self) -> dict[str, float]:
        """The JSON figures: best frames/s of each, spreads, CPU per frame and its ratio."""
        serial, parallel = self._best(self.serial), self._best(self.parallel)
        # Median CPU per frame: CPU time barely depends on what else the machine runs.
        serial_cpu = statistics.median(timed.cpu_ms for timed in self.serial)
        parallel_cpu = statistics.median(timed.cpu_ms for timed in self.parallel)
        return {
            "cpus": float(self.cpus),
            "repeats": float(len(self.parallel)),
            "serial_frames_per_s": serial.frames_per_s,
            "serial_spread": self._spread(self.serial),
            "parallel_frames_per_s": parallel.frames_per_s,
            "parallel_spread": self._spread(self.parallel),
            "serial_cpu_ms": serial_cpu,
            "parallel_cpu_ms": parallel_cpu,
            # Above 1: the CPUs slow each other down when all are busy (shared caches,
            # memory bandwidth, the hypervisor).
            "cpu_slowdown": parallel_cpu / serial_cpu,
            # Of the CPUs, the share the best parallel pass had: 1 on an idle machine.
            "parallel_cpu_share": parallel.frames_per_s * parallel.cpu_ms / 1000 / self.cpus,
            "parallel_warm": float(self.warm),
        }

    def verdicts_agree(self, reference: list[Verdict]) -> bool:
        """Every pass, alone or parallel, gave exactly ``reference``'s verdicts."""
        return all(timed.verdicts == reference for timed in (*self.serial, *self.parallel))


def _timed(executor: ProcessPoolExecutor, shares: list[range], count: int) -> Timed:
    start = time.perf_counter()
    futures = [executor.submit(_serial_share, share) for share in shares]
    results = [future.result() for future in futures]
    seconds = time.perf_counter() - start
    verdicts = sorted((v for _, _, share in results for v in share), key=lambda v: v.index)
    cpu = sum(used for _, used, _ in results)
    return Timed(count / seconds, cpu * 1000 / count, verdicts)


class MachineBound:
    """The serial loop on ``count`` frames in one process, then in ``cpus`` processes (each on
    its share): one such pair per :meth:`measure`, :meth:`result` once done.

    No hand-over, no order, no parent in the way: no pipeline on these CPUs can beat the
    parallel passes. Pairs can be taken between the systems' runs, so that the load from the
    rest of the machine weighs on the bound as on the systems. Each pair runs in processes of
    its own, started and warmed for it (each runs warm-up frames until every one has) and
    ended after it: idle, they would count in the systems' memory. A frame costs the same
    CPU in both kinds of pass: the loop is the same code.
    """

    def __init__(self, count: int, cpus: int) -> None:
        self.count = count
        self.cpus = cpus
        self._serial: list[Timed] = []
        self._parallel: list[Timed] = []
        self._warm = True

    def measure(self) -> None:
        """One pass alone, then one on every CPU."""
        cpus, count = self.cpus, self.count
        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(cpus, mp_context=context, initializer=_load_scenes) as executor:
            warmed: set[int] = set()
            for round_ in range(8):
                first = count + round_ * cpus
                warm = [
                    executor.submit(_serial_share, range(n, n + 1))
                    for n in range(first, first + cpus)
                ]
                warmed.update(future.result()[0] for future in warm)
                if len(warmed) == cpus:
                    break
            self._warm = self._warm and len(warmed) == cpus
            shares = [range(k, count, cpus) for k in range(cpus)]
            self._serial.append(_timed(executor, [range(count)], count))
            self._parallel.append(_timed(executor, shares, count))

    def result(self) -> Bound:
        return Bound(self.cpus, list(self._serial), list(self._parallel), self._warm)
